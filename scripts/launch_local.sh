#!/usr/bin/env bash
# N training processes on this machine, wired for jax.distributed (what the
# multi-process tests use). Example, 2 processes x 4 fake CPU devices:
#   bash scripts/launch_local.sh --num_processes 2 --devices_per_process 4 -- \
#     --config configs/fashion_vit.py --workdir workdirs/fashion_vit_2proc
# Everything after `--` goes to big_vision_like.train (run `python -m
# big_vision_like.tools.launch_local` directly to launch another command).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
args=()
while [[ $# -gt 0 && "$1" != "--" ]]; do args+=("$1"); shift; done
[[ $# -gt 0 ]] && shift  # the `--`
exec "$PY" -m big_vision_like.tools.launch_local "${args[@]}" -- \
  "$PY" -m big_vision_like.train "$@"
