#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (single- or multi-host) with gcloud.
#
#   NAME=vit-b16 ZONE=us-central2-b TYPE=v4-32 \
#     bash scripts/launch_tpu_vm.sh all configs/vit_i1k.py:variant=B/16 gs://BUCKET/vit_b16
#
# Steps (run one at a time, or `all` for create+setup+train+logs):
#   create              create the TPU VM slice (spot with SPOT=1)
#   setup               copy this repository to every worker, install it
#   train CONFIG WORKDIR [--config.x=y ...]
#                       start training on every worker (in the background,
#                       log in ~/train.log on each worker)
#   logs                tail worker 0's log (WORKER=i for another)
#   stop                send SIGTERM to training on every worker: all save the
#                       same step and exit; `train` again resumes from it
#   delete              delete the slice
# Environment: NAME, ZONE, TYPE (accelerator type), VERSION (runtime, default
# tpu-ubuntu2204-base), PROJECT (optional), SPOT=1, DRY_RUN=1 (print the
# gcloud commands instead of running them).
#
# Every worker runs the same command; `--distributed` lets jax.distributed
# find the slice's workers on its own (Cloud TPU metadata). The workdir must
# be on gs:// so that all workers see it: each writes its own checkpoint
# shards, worker 0 writes the metrics and TensorBoard files. Data: point the
# config's data_dir at a gs:// TFDS directory (e.g. configs/vit_i1k.py:data_dir=gs://...).
set -euo pipefail
cd "$(dirname "$0")/.."

STEP=${1:?usage: launch_tpu_vm.sh create|setup|train|logs|stop|delete|all [CONFIG WORKDIR ...]}
shift
NAME=${NAME:?set NAME (the TPU VM name)}
ZONE=${ZONE:?set ZONE (e.g. us-central2-b)}
TYPE=${TYPE:-v4-8}
VERSION=${VERSION:-tpu-ubuntu2204-base}
REMOTE_DIR=big_vision_like

gcloud_cmd() {
  local cmd=(gcloud compute tpus tpu-vm "$@" --zone "$ZONE")
  [[ -n "${PROJECT:-}" ]] && cmd+=(--project "$PROJECT")
  if [[ -n "${DRY_RUN:-}" ]]; then
    local out=() arg
    for arg in "${cmd[@]}"; do
      if [[ "$arg" =~ ^[][A-Za-z0-9_./:=@,+-]+$ ]]; then out+=("$arg"); else out+=("${arg@Q}"); fi
    done
    echo "${out[*]}"
  else
    "${cmd[@]}"
  fi
}

on_workers() {  # on_workers WORKER COMMAND: run COMMAND over ssh on WORKER (all|i)
  gcloud_cmd ssh "$NAME" --worker="$1" --command "$2"
}

create() {
  local extra=()
  [[ -n "${SPOT:-}" ]] && extra+=(--spot)
  gcloud_cmd create "$NAME" --accelerator-type "$TYPE" --version "$VERSION" "${extra[@]}"
}

setup() {
  # Ship the working tree as it is (no need to push first); skip build outputs.
  local tarball
  tarball=$(mktemp /tmp/big_vision_like.XXXXXX.tar.gz)
  tar --exclude=.venv --exclude=workdirs --exclude=.git -czf "$tarball" .
  gcloud_cmd scp "$tarball" "$NAME:~/big_vision_like.tar.gz" --worker=all
  rm -f "$tarball"
  # setup.sh installs the TPU build of the pinned JAX (requirements-tpu.txt)
  # and checks that JAX sees the TPU; on a multi-host slice all workers run it
  # at once (--worker=all), as JAX's TPU start-up needs. No Fashion-MNIST apt step.
  on_workers all "set -e; mkdir -p ~/$REMOTE_DIR && tar -xzf ~/big_vision_like.tar.gz -C ~/$REMOTE_DIR \
    && cd ~/$REMOTE_DIR && ACCELERATOR=tpu SKIP_APT=1 bash scripts/setup.sh"
}

train() {
  local config=${1:?train needs CONFIG WORKDIR}
  local workdir=${2:?train needs CONFIG WORKDIR}
  shift 2
  if [[ "$workdir" != gs://* ]]; then
    echo "launch_tpu_vm.sh: WORKDIR must be on gs:// (all workers share it), got $workdir" >&2
    exit 2
  fi
  local args
  args=$(printf '%q ' --config "$config" --workdir "$workdir" "$@")
  # nohup + setsid: training survives the ssh session; SIGTERM from `stop`
  # (or a maintenance event) reaches the python process itself.
  # BVL_PLATFORM=tpu: a worker whose JAX sees no TPU fails at start-up.
  on_workers all "cd ~/$REMOTE_DIR && BVL_PLATFORM=tpu setsid nohup .venv/bin/python \
    -m big_vision_like.train --distributed $args > ~/train.log 2>&1 < /dev/null &"
}

logs() {
  on_workers "${WORKER:-0}" "tail -n 100 -F ~/train.log"
}

stop() {
  on_workers all "pkill -TERM -f 'big_vision_like.train' || true"
}

delete() {
  gcloud_cmd delete "$NAME" --quiet
}

case "$STEP" in
  create) create ;;
  setup) setup ;;
  train) train "$@" ;;
  logs) logs ;;
  stop) stop ;;
  delete) delete ;;
  all) create; setup; train "$@"; logs ;;
  *) echo "unknown step $STEP (create|setup|train|logs|stop|delete|all)" >&2; exit 2 ;;
esac
