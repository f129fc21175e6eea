"""LiT on Fashion-MNIST captions: a locked image tower from the supervised main job.

  bash scripts/run_main.sh      # the supervised ViT, in workdirs/fashion_vit
  python -m big_vision_like.train --config configs/fashion_lit.py --workdir DIR
  python -m big_vision_like.train --config configs/fashion_lit.py:init=OTHER_WORKDIR ...

"Locked-image Tuning" (Zhai et al. 2022): the image tower is initialised
from a supervised checkpoint of this codebase and frozen entirely (its new
projection to the shared embedding stays at its random init, as in the
paper); only the text tower (and t, b) learn to match it. The checkpoint's
10-class head is not loaded (`model_init_skip`). Zero-shot evaluation uses
held-out prompts, as in configs/fashion_contrastive.py.

Arguments: init (workdir or checkpoint of a `configs/fashion_vit.py` run),
epochs, batch, loss, runlocal.
"""

import os

import ml_collections

from big_vision_like import config as config_lib
from big_vision_like.config import parse_arg

_HERE = os.path.dirname(os.path.abspath(__file__))
_BASE = os.path.join(_HERE, "fashion_contrastive.py")


def get_config(arg=None):
  arg = parse_arg(arg, init="workdirs/fashion_vit", epochs=2, batch=256, loss="siglip",
                  runlocal=False)
  config = config_lib.load_config(f"{_BASE}:loss={arg.loss},epochs={arg.epochs},"
                                  f"batch={arg.batch},runlocal={arg.runlocal}")
  # The image tower (from the base config) is the main job's model without
  # its head, whatever configs/fashion_vit.py makes it, so its checkpoint fits.
  config.model_init = ml_collections.ConfigDict({"img": arg.init})
  config.model_init_skip = ["img/head/.*"]
  config.frozen = ["img/.*"]
  # Only the text tower trains: no image augmentation needed, a higher lr.
  config.input.pp = config.input.pp.replace("|flip_lr", "")
  config.lr = 3e-3
  config.evals.zeroshot.log_percent = 50
  return config
