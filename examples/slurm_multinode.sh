#!/bin/bash
# Multi-node training with SLURM: one `forge train` per node; each starts its GPU workers with torchrun
# (kit.launch.worker_argv), all meeting at the first node (c10d rendezvous).
# Submit with: sbatch examples/slurm_multinode.sh my_config.yaml /shared/runs/my-run
#SBATCH --job-name=forge-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one launcher per node; it starts the GPU workers
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=12:00:00
set -euo pipefail
CONFIG=${1:?usage: sbatch slurm_multinode.sh CONFIG.yaml SHARED_RUN_DIR}
RUN_DIR=${2:?usage: sbatch slurm_multinode.sh CONFIG.yaml SHARED_RUN_DIR}
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-8}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=${PORT:-29500}
# The run directory is on a shared file system: every rank writes its checkpoint shards there, rank 0
# the event stream (follow it with `kit.open_run(RUN_DIR)` or the Board). The config sets
# train.distributed (fsdp, or deepspeed with train.distributed_config=zero3).
# Equivalent torchrun line per node:
#   python -m torch.distributed.run --nproc_per_node=$GPUS_PER_NODE --nnodes=$SLURM_NNODES \
#     --rdzv_backend=c10d --rdzv_endpoint=$HEAD:$PORT -m kit.cli train <run dir>/launch.yaml
srun forge train "$CONFIG" "train.output_dir=$RUN_DIR" \
  --nproc "$GPUS_PER_NODE" \
  --nnodes "$SLURM_NNODES" \
  --node-rank "$SLURM_NODEID" \
  --rdzv-endpoint "$HEAD:$PORT"
