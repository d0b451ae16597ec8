#!/usr/bin/env bash
# The test suite: unit + e2e tests, then the curated notebooks under nbmake, from the installed wheel.
#
# The notebooks run as a learner's would after `pip install "forge-kit[notebook]"`: the wheel is built
# here, installed into a fresh virtual environment outside the checkout (--system-site-packages reuses
# torch & co. offline; --no-index makes pip check every declared requirement against them), and nbmake
# runs every notebook in a kernel of that environment. FORGE_NOTEBOOK_CI=1 gives each notebook its tiny
# settings (a few steps, few rows, short answers): the whole set has a 15-minute budget on 2 cores.
# FORGE_TEST_NOTEBOOKS=0 skips the notebook part (e.g. while iterating on unit tests), =only runs just it;
# FORGE_NOTEBOOKS="notebooks/00_quickstart_board.ipynb ..." picks notebooks (default: all of notebooks/).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
[ "${FORGE_TEST_NOTEBOOKS:-1}" = "only" ] || python3 -m pytest tests -q --durations=40 "$@"

[ "${FORGE_TEST_NOTEBOOKS:-1}" = "0" ] && { echo "notebooks skipped (FORGE_TEST_NOTEBOOKS=0)"; exit 0; }
export FORGE_NOTEBOOK_CI=1
export FORGE_HOME=${FORGE_HOME:-$ROOT/.pytest_cache/forge-home}   # the test suite's converted default model
export HF_HUB_OFFLINE=1
NBENV=$(mktemp -d "${TMPDIR:-/tmp}/forge-notebooks.XXXXXX")
trap 'rm -rf "$NBENV"' EXIT
python3 -m build --no-isolation --wheel --outdir "$NBENV/dist" . > "$NBENV/build.log" 2>&1 ||
    { cat "$NBENV/build.log"; exit 1; }
WHEEL=$(ls "$NBENV"/dist/forge_kit-*.whl)
python3 -m venv --system-site-packages --without-pip "$NBENV/venv"
PY="$NBENV/venv/bin/python"
"$PY" -m pip install -q --no-index --disable-pip-version-check --no-warn-conflicts "$WHEEL[notebook]"
# the kernel nbmake starts: this environment's Python, found through JUPYTER_PATH only
mkdir -p "$NBENV/venv/share/jupyter/kernels/forge-wheel"
printf '{"argv": ["%s", "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "forge-wheel", "language": "python"}\n' \
    "$PY" > "$NBENV/venv/share/jupyter/kernels/forge-wheel/kernel.json"
# that kernel's `import kit` is the wheel's copy, not this checkout's (the kernel starts in notebooks/)
(cd notebooks && "$PY" -c "import kit, sys; assert kit.__file__.startswith(sys.prefix), kit.__file__; print('notebooks use', kit.__file__)")
export FORGE_KIT_SOURCE="$WHEEL"   # what the install cell would install; it finds everything and prints "ready"
# shellcheck disable=SC2086  # FORGE_NOTEBOOKS is a list of paths
JUPYTER_PATH="$NBENV/venv/share/jupyter" "$PY" -m pytest ${FORGE_NOTEBOOKS:-notebooks} --nbmake --nbmake-kernel=forge-wheel \
    --nbmake-timeout=600 -p no:cacheprovider -q --durations=0 "$@"
