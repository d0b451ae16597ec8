#!/usr/bin/env bash
# The test suite: unit + e2e tests, then the curated notebooks under nbmake with short runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export FORGE_NOTEBOOK_STEPS=${FORGE_NOTEBOOK_STEPS:-3}
python3 -m pytest tests notebooks --nbmake --nbmake-timeout=600 -q --durations=40 "$@"
