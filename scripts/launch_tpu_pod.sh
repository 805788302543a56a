#!/usr/bin/env bash
# Launch (and keep alive) StreamFormer training on a Cloud TPU VM slice. Every worker runs one process;
# jax.distributed discovers the pod by itself. Re-running `start` (or `watch`) after a preemption resumes from the
# latest checkpoint in WORKDIR, which therefore must be storage every worker sees (a Filestore NFS share or a
# gcsfuse mount of a bucket, mounted at the same path on every worker).
#
# Usage:
#   scripts/launch_tpu_pod.sh create   # create the slice if it does not exist (reuses an existing one)
#   scripts/launch_tpu_pod.sh install  # copy this checkout to every worker, make a venv, pip install
#   scripts/launch_tpu_pod.sh start    # start training on all workers (resumes if WORKDIR has checkpoints)
#   scripts/launch_tpu_pod.sh status   # slice state + last lines of each worker's log
#   scripts/launch_tpu_pod.sh watch    # loop: if the slice was preempted, recreate, reinstall and restart
#   scripts/launch_tpu_pod.sh stop     # SIGTERM to the training processes: they checkpoint one step and exit
#                                      # (a running `watch` restarts them: stop it first)
#   scripts/launch_tpu_pod.sh extract  # feature extraction of a video corpus over all workers (below)
#
# Settings (environment):
#   TPU_NAME=sf-v5p-64  ZONE=us-east5-a  ACCELERATOR=v5p-64  PROJECT=my-project (optional)
#   RUNTIME=v2-alpha-tpuv5  SPOT=1 (preemptible capacity)  WORKDIR=/mnt/shared/sf_pretrain
#   CONFIG=configs/pretrain_multitask.py  EXTRA_ARGS="--config.data_dir=/mnt/shared/records --config.model.init=/mnt/shared/siglip_init"
#   SETUP_CMD="sudo mount ... /mnt/shared"  (run on every worker before training, e.g. to mount the shared storage)
#
# Example (v5p-64 = 32 chips = 8 hosts; 896 clips per step = micro-batch 128 x 7):
#   TPU_NAME=sf-pretrain ZONE=us-east5-a ACCELERATOR=v5p-64 SPOT=1 WORKDIR=/mnt/shared/sf_pretrain \
#   EXTRA_ARGS="--config.data_dir=/mnt/shared/records --config.model.init=/mnt/shared/siglip" \
#     bash -c 'scripts/launch_tpu_pod.sh create && scripts/launch_tpu_pod.sh install && scripts/launch_tpu_pod.sh watch'
#
# Feature extraction over the pod (`extract`): every worker runs `python -m streamformer_jax.extract --videos`;
# jax.distributed gives each process a disjoint share of the list (process index / count), and each process
# splits its pool of slots over its local chips. Rerunning `extract` (after a preemption, say) skips the videos
# whose archive exists; failed videos are listed in $OUT_DIR/report.json. VIDEOS and OUT_DIR must be paths every
# worker sees (e.g. a gcsfuse mount). Example (v5p-32 = 4 hosts x 4 chips, 8 slots per chip):
#   TPU_NAME=sf-extract ZONE=us-east5-a ACCELERATOR=v5p-32 \
#   CKPT=/mnt/shared/streamformer VIDEOS='/mnt/shared/k400/train/**/*.mp4' OUT_DIR=/mnt/shared/k400_feats \
#   EXTRACT_ARGS="--fps 4 --no-tokens --slots 32 --dtype bfloat16" \
#     bash -c 'scripts/launch_tpu_pod.sh create && scripts/launch_tpu_pod.sh install && scripts/launch_tpu_pod.sh extract'
set -euo pipefail

TPU_NAME=${TPU_NAME:?set TPU_NAME}
ZONE=${ZONE:?set ZONE}
ACCELERATOR=${ACCELERATOR:-v5p-8}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5}
WORKDIR=${WORKDIR:-}  # training only (start / watch)
CONFIG=${CONFIG:-configs/pretrain_multitask.py}
EXTRA_ARGS=${EXTRA_ARGS:-}
SETUP_CMD=${SETUP_CMD:-true}
REMOTE_DIR=${REMOTE_DIR:-streamformer_jax}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}

gtpu() { gcloud compute tpus tpu-vm "$@" --zone="$ZONE" $PROJECT_FLAG; }
on_all() { gtpu ssh "$TPU_NAME" --worker=all --command="$1"; }
on_worker0() { gtpu ssh "$TPU_NAME" --worker=0 --command="$1"; }
state() { gtpu describe "$TPU_NAME" --format='value(state)' 2>/dev/null || echo MISSING; }

create() {
  local s; s=$(state)
  if [[ "$s" == "READY" ]]; then echo "reusing $TPU_NAME ($ACCELERATOR)"; return; fi
  if [[ "$s" != "MISSING" ]]; then echo "$TPU_NAME is $s: deleting it"; gtpu delete "$TPU_NAME" --quiet; fi
  gtpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME" ${SPOT:+--spot}
}

install() {
  # Ship this checkout (no git credentials needed on the workers), then install the pinned stack + libtpu.
  tar --exclude=.venv --exclude=.git -czf /tmp/sf_src.tgz .
  gtpu scp /tmp/sf_src.tgz "$TPU_NAME":/tmp/sf_src.tgz --worker=all
  on_all "mkdir -p ~/$REMOTE_DIR && tar -xzf /tmp/sf_src.tgz -C ~/$REMOTE_DIR && cd ~/$REMOTE_DIR && \
    python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]==0.10.2' && $SETUP_CMD"
}

start() {
  : "${WORKDIR:?set WORKDIR (shared by all workers)}"
  # Same command on every worker; jax.distributed.initialize() finds the pod (config.distributed.initialize=auto).
  on_all "cd ~/$REMOTE_DIR && $SETUP_CMD && mkdir -p $WORKDIR && \
    nohup .venv/bin/python -m streamformer_jax.train --config $CONFIG --workdir $WORKDIR \
      --config.distributed.initialize=yes --config.compilation_cache_dir=$WORKDIR/jax_cache $EXTRA_ARGS > ~/train.log 2>&1 & echo \$! > ~/train.pid"
  echo "started; logs: scripts/launch_tpu_pod.sh status; metrics: $WORKDIR/metrics.jsonl"
}

status() {
  echo "slice: $(state)"
  on_all "tail -n 3 ~/train.log || true" || true
}

stop() { on_all "test -f ~/train.pid && kill -TERM \$(cat ~/train.pid) || true"; }

watch() {
  # Restart after preemption: the new processes resume from the latest complete checkpoint in WORKDIR.
  start
  while true; do
    sleep "${WATCH_INTERVAL:-300}"
    s=$(state)
    if [[ "$s" == "READY" ]]; then
      if on_all "test -f ~/train.pid && kill -0 \$(cat ~/train.pid)" 2>/dev/null; then continue; fi
      # Process 0 (worker 0) ends with "finished: step N/N (done)"; "(preempted)" (SIGTERM: a checkpoint was
      # saved) or no line (crash) means restart and resume.
      if on_worker0 "grep -q '^finished: step .* (done)' ~/train.log" 2>/dev/null; then
        echo "training finished"; return
      fi
      echo "training processes gone (preemption, SIGTERM or crash): restarting"; start
    else
      echo "slice state $s: recreating"; create; install; start
    fi
  done
}

extract() {
  local ckpt=${CKPT:?set CKPT (checkpoint directory)} videos=${VIDEOS:?set VIDEOS (directory, glob or list file)}
  local out=${OUT_DIR:?set OUT_DIR (shared by all workers)}
  # Foreground on every worker: returns when all shares are done (status 1 on a worker that had failed videos).
  on_all "cd ~/$REMOTE_DIR && $SETUP_CMD && .venv/bin/python -m streamformer_jax.extract --checkpoint $ckpt \
    --videos '$videos' --out $out --distributed yes --devices all --no-progress ${EXTRACT_ARGS:-} \
    2>&1 | tee ~/extract.log"
}

"${1:?usage: $0 create|install|start|status|watch|stop|extract}"
