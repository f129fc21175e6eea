"""Fine-tune a pretrained model on a new dataset (big_vision's transfer recipe).

  python -m big_vision_like.train --workdir DIR --config \\
    'configs/transfer.py:init=zoo:vit_base_patch16_224.augreg2_in21k_ft_in1k,dataset=oxford_iiit_pet,classes=37,res=384'
  python -m big_vision_like.train --workdir DIR --config \\
    'configs/transfer.py:init=/path/to/workdir,dataset=fashion_mnist,classes=10,res=28,channels=1'

From any zoo name (`zoo:NAME` or `zoo:NAME=PATH` for a local file) or a
training workdir (its config.json gives the architecture): a new zero-
initialised head of `classes` outputs (the old head is not loaded), an
optional new resolution `res` (a learned position embedding is resampled to
the new grid), SGD with momentum 0.9, no weight decay, gradient clipping at
norm 1, a short warm-up then cosine decay. Every eval of `steps // 5` steps.

Arguments: init (required), dataset, train_split, test_split, classes, res,
channels (1 for grayscale datasets and models), steps, batch, lr, data_dir.
"""

import json
import os

import ml_collections

from big_vision_like.config import parse_arg


def _model_from_init(init: str) -> tuple[str, dict]:
  if init.startswith("zoo:"):
    from big_vision_like import zoo  # (configs stay importable without the zoo deps)
    name, _ = zoo.parse_spec(init)
    cfg = zoo.model_config(zoo.get(name))
    return cfg.model_name, cfg.model.to_dict()
  path = os.path.join(init, "config.json")
  if not os.path.exists(path):
    raise ValueError(f"configs/transfer.py: init={init!r} is neither 'zoo:NAME' nor a "
                     f"training workdir with a config.json")
  with open(path) as f:
    cfg = json.load(f)
  return cfg["model_name"], dict(cfg.get("model") or {})


def get_config(arg=None):
  arg = parse_arg(arg, init="", dataset="fashion_mnist", train_split="train",
                  test_split="test", classes=10, res=224, channels=3, steps=500, batch=128,
                  lr=0.01, data_dir="")
  if not arg.init:
    raise ValueError("configs/transfer.py needs init=zoo:NAME[=PATH] or init=WORKDIR")
  model_name, model = _model_from_init(arg.init)
  if model_name == "two_tower":
    raise ValueError("configs/transfer.py fine-tunes classifiers; for a two-tower init use "
                     "model_init={'img': ...} in an image-text config (LiT)")
  model.update(num_classes=arg.classes, head_zeroinit=True)
  data_dir = arg.data_dir or None

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = arg.steps
  decode = f"decode({arg.channels})"
  config.input = dict(
      data=dict(name=arg.dataset, split=arg.train_split, data_dir=data_dir),
      pp=(f"{decode}|inception_crop({arg.res}, area_min=50)|flip_lr|value_range(-1, 1)"
          f"|onehot({arg.classes}, key='label', key_result='labels')"),
      batch_size=arg.batch, shuffle_buffer_size=25_000)
  config.model_name = model_name
  config.model = model
  config.model_init = arg.init
  config.model_init_skip = ["head/.*"]
  config.loss = "softmax_xent"

  config.optax_name = "sgd"
  config.optax = dict(momentum=0.9)
  config.lr = arg.lr
  config.wd = 0.0
  config.schedule = dict(warmup_steps=max(arg.steps // 20, 1), decay_type="cosine")
  config.grad_clip_norm = 1.0

  config.log_training_steps = max(arg.steps // 20, 1)
  config.ckpt_steps = max(arg.steps // 5, 1)
  config.evals = dict(test=dict(
      type="classification", data=dict(name=arg.dataset, split=arg.test_split,
                                       data_dir=data_dir),
      pp=(f"{decode}|resize({arg.res})|value_range(-1, 1)"
          f"|onehot({arg.classes}, key='label', key_result='labels')"),
      batch_size=arg.batch, log_steps=max(arg.steps // 5, 1)))
  return config
