#!/usr/bin/env bash
# The main job: set up, then train the default ViT on the embedded Fashion-MNIST
# (prepared into a TFDS dataset on first use) and evaluate it on the test split.
# Extra arguments are passed to big_vision_like.train (e.g. --config.total_epochs=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m big_vision_like.train \
  --config configs/fashion_vit.py --workdir "${WORKDIR:-workdirs/fashion_vit}" "$@"
