#!/usr/bin/env bash
# Prepares ImageNet TFDS datasets from the ILSVRC-2012 tarballs, offline, in
# the project's virtualenv (set up by scripts/setup.sh if it is missing):
#   bash scripts/prepare_imagenet.sh --manual_dir DIR_WITH_TARBALLS \
#     --data_dir ~/tensorflow_datasets --datasets imagenet2012,imagenet2012_real
# (real.json comes from --manual_dir, --real_json PATH or, by default, the
# copy shipped in big_vision_like/data/resources/.)
# All arguments go to `python -m big_vision_like.data.prepare_imagenet`
# (--help lists them). Relative paths are relative to where you run this.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [ ! -x "$repo/.venv/bin/python" ]; then
  bash "$repo/scripts/setup.sh"
fi
exec "$repo/.venv/bin/python" -m big_vision_like.data.prepare_imagenet "$@"
