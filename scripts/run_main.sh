#!/usr/bin/env bash
# The main job: set up, then train the default ViT on the embedded Fashion-MNIST
# (prepared into a TFDS dataset on first use) and evaluate it on the test split.
# Extra arguments are passed to big_vision_like.train (e.g. --config.total_epochs=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# On a CPU host, one XLA device per core (the largest power of two <= cores, so
# it divides the batch): data parallelism over the cores runs this small model
# ~15% faster than one device using all cores for each op.
devices=1; while [ $((devices * 2)) -le "$(nproc)" ]; do devices=$((devices * 2)); done
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=$devices}"
exec .venv/bin/python -m big_vision_like.train \
  --config configs/fashion_vit.py --workdir "${WORKDIR:-workdirs/fashion_vit}" "$@"
