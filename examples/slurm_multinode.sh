#!/bin/bash
# Multi-node training with SLURM: one torchrun per node, all meeting at the first node (c10d rendezvous).
# Submit with: sbatch examples/slurm_multinode.sh my_config.yaml
#SBATCH --job-name=forge-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one torchrun per node; it starts the GPU workers
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=12:00:00
set -euo pipefail
CONFIG=${1:?usage: sbatch slurm_multinode.sh CONFIG.yaml}
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-8}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=${PORT:-29500}
# The config sets train.output_dir on a shared file system (every rank writes checkpoints there,
# rank 0 the event stream) and train.distributed (fsdp, or deepspeed with distributed_config=zero3).
srun python -m torch.distributed.run \
  --nproc_per_node="$GPUS_PER_NODE" \
  --nnodes="$SLURM_NNODES" \
  --rdzv_backend=c10d \
  --rdzv_endpoint="$HEAD:$PORT" \
  -m kit.cli train "$CONFIG"
