#!/usr/bin/env bash
# StreamFormer training on a SLURM GPU cluster: one process per node, all GPUs of the node per process.
# jax.distributed.initialize() reads the SLURM environment (config.distributed.initialize=auto detects a
# multi-task step). Submit with sbatch; requeued or resubmitted jobs resume from WORKDIR/checkpoints.
#
#   WORKDIR=/shared/runs/sf_pretrain sbatch scripts/launch_slurm.sh
#   WORKDIR=/shared/runs/sf_k400 CONFIG=configs/finetune_k400.py \
#     EXTRA_ARGS="--config.data_dir=/shared/records --config.model.init=/shared/runs/sf_pretrain/export" \
#     sbatch --nodes=2 scripts/launch_slurm.sh
#
# Preemption / time limit: `--signal=TERM@120` sends SIGTERM to every task two minutes before the end; all
# processes stop after the same step, that step is checkpointed and process 0 prints
# `finished: step S/N (preempted)`. The script then requeues the job (`scontrol requeue`; `--requeue` allows it,
# and lets SLURM requeue jobs it preempts itself), and the requeued job resumes from the checkpoint. A run that
# reaches total_steps prints `(done)` and is not requeued. WORKDIR must be on a filesystem every node sees.
#
# Feature extraction of a video corpus as a SLURM array (one share of the list per task): scripts/extract_slurm.sh.
#
#SBATCH --job-name=streamformer
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail

WORKDIR=${WORKDIR:?set WORKDIR (shared by all nodes)}
CONFIG=${CONFIG:-configs/pretrain_multitask.py}
EXTRA_ARGS=${EXTRA_ARGS:-}
VENV=${VENV:-$PWD/.venv}  # made once with: python -m venv .venv && .venv/bin/pip install -e . 'jax[cuda12]==0.10.2'

mkdir -p "$WORKDIR"
# Data loading runs in grain worker processes: leave most CPU cores to them.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
log="$WORKDIR/slurm-${SLURM_JOB_ID:-local}-${SLURM_RESTART_COUNT:-0}.log"  # this attempt's output
srun --kill-on-bad-exit=1 "$VENV/bin/python" -m streamformer_jax.train --config "$CONFIG" --workdir "$WORKDIR" \
  --config.compilation_cache_dir="$WORKDIR/jax_cache" --config.progress_bar=False $EXTRA_ARGS 2>&1 | tee "$log"
if grep -q '^finished: step .* (preempted)' "$log" && [[ -n "${SLURM_JOB_ID:-}" ]]; then
  echo "stopped by SIGTERM after a checkpoint: requeueing job $SLURM_JOB_ID to resume"
  scontrol requeue "$SLURM_JOB_ID"
fi
