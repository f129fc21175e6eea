"""ReLabel on Fashion-MNIST: a student trained on a teacher's label maps.

  # 1. A teacher (the main job) and its label maps on the training split:
  bash scripts/run_main.sh
  python -m big_vision_like.tools.make_label_maps --workdir workdirs/fashion_vit \\
      --out workdirs/fashion_vit/label_maps_train.npz
  # 2. Students, same recipe and budget, different targets:
  python -m big_vision_like.train --config configs/fashion_relabel.py:targets=maps \\
      --workdir workdirs/relabel_maps
  python -m big_vision_like.train --config configs/fashion_relabel.py:targets=hard \\
      --workdir workdirs/relabel_hard

Arguments: targets (hard: the dataset's one-hot label with the main job's
smoothing 0.1; global: the teacher's map pooled over the whole image, i.e.
its soft label; maps: LabelPooling over each random crop's box), label_maps
(the file of step 1), area_min (percent of the image a crop keeps at least),
mix (none, mixup, cutmix), epochs, batch, runlocal.

The model, optimizer and evaluators are the main job's (configs/fashion_vit.py);
only the training pp changes: an inception crop (which records its window for
LabelPooling), a flip, then the targets.
"""

import os

from big_vision_like import config as config_lib
from big_vision_like.config import parse_arg

_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fashion_vit.py")
TARGETS = ("hard", "global", "maps")
MIXES = {"none": None, "mixup": dict(mixup_alpha=0.2),
         "cutmix": dict(cutmix_alpha=1.0)}


def get_config(arg=None):
  arg = parse_arg(arg, targets="maps", label_maps="workdirs/fashion_vit/label_maps_train.npz",
                  area_min=25, mix="none", epochs=3, batch=128, runlocal=False)
  if arg.targets not in TARGETS:
    raise config_lib.ConfigError(f"configs/fashion_relabel.py: targets={arg.targets!r} is "
                                 f"not one of {TARGETS}")
  if arg.mix not in MIXES:
    raise config_lib.ConfigError(f"configs/fashion_relabel.py: mix={arg.mix!r} is not one "
                                 f"of {sorted(MIXES)}")
  config = config_lib.load_config(f"{_BASE}:epochs={arg.epochs},batch={arg.batch},"
                                  f"runlocal={arg.runlocal}")
  box = ", box_key='crop_box'" if arg.targets == "maps" else ""
  crop = f"decode(1)|inception_crop(28, area_min={arg.area_min}{box})|flip_lr|value_range(-1, 1)"
  target = {
      "hard": "onehot(10, key='label', key_result='labels', smoothing=0.1)",
      "global": f"soft_labels('{arg.label_maps}', 10)",
      "maps": f"label_pooling('{arg.label_maps}', 10)",
  }[arg.targets]
  config.input.pp = f"{crop}|{target}"
  if MIXES[arg.mix] is not None:
    config.mixup = dict(MIXES[arg.mix])
  return config
