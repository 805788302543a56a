#!/usr/bin/env bash
# Per-frame StreamFormer features of a whole video corpus as a SLURM job array: task k of the array takes the
# videos k, k+N, k+2N, ... of the list (`--shard k/N`), so the tasks share nothing but the output directory.
# Each video's archive is written atomically; a resubmitted (or requeued) array skips the videos already done.
# Failed videos (unreadable, corrupt) are skipped and listed in OUT_DIR/report.json (merged over the tasks);
# a task that had failed videos exits with status 1. OUT_DIR must be on a filesystem every node sees.
#
#   CKPT=/shared/streamformer VIDEOS='/shared/k400/train/**/*.mp4' OUT_DIR=/shared/k400_feats \
#     EXTRACT_ARGS="--fps 4 --no-tokens --slots 16" sbatch --array=0-31 scripts/extract_slurm.sh
#
#SBATCH --job-name=sf-extract
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --output=%x-%A_%a.out
set -euo pipefail

CKPT=${CKPT:?set CKPT (checkpoint directory)}
VIDEOS=${VIDEOS:?set VIDEOS (a directory, a glob pattern or a text file of paths)}
OUT_DIR=${OUT_DIR:?set OUT_DIR (shared by all tasks)}
EXTRACT_ARGS=${EXTRACT_ARGS:-}
VENV=${VENV:-$PWD/.venv}  # made once with: python -m venv .venv && .venv/bin/pip install -e . 'jax[cuda12]==0.10.2'

# Array indices may not start at 0 (--array=1-32): the share is the position within the array.
index=$(( ${SLURM_ARRAY_TASK_ID:-0} - ${SLURM_ARRAY_TASK_MIN:-0} ))
count=${SLURM_ARRAY_TASK_COUNT:-1}
# Decoding runs in background threads: give them the task's CPU cores.
"$VENV/bin/python" -m streamformer_jax.extract --checkpoint "$CKPT" --videos "$VIDEOS" --out "$OUT_DIR" \
  --shard "$index/$count" --workers "${SLURM_CPUS_PER_TASK:-4}" --distributed no --no-progress $EXTRACT_ARGS
