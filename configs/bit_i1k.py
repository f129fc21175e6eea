"""BiT-R50x1 (pre-activation ResNet v2, GroupNorm + weight standardisation) on ImageNet-1k.

  python -m big_vision_like.train --config configs/bit_i1k.py --workdir gs://...
  python -m big_vision_like.train --config configs/bit_i1k.py:runlocal --workdir /tmp/x

Upstream-style supervised training as in "Big Transfer (BiT)" (Kolesnikov et
al. 2020): SGD with momentum 0.9, base lr 0.1 per 256 examples scaled
linearly with the batch (batch 4096 -> 1.6), weight decay 1e-4, 90 epochs
with a short warmup and cosine decay here (the paper steps the lr down), inception crop + flip.
`evals=val+real` keeps only the named scorecard evals (default: all).
"""

import ml_collections

from big_vision_like import scorecard
from big_vision_like.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, depth=50, width=1, batch=4096, epochs=90, runlocal=False,
                  data_dir="", evals="")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_epochs = arg.epochs
  data_dir = arg.data_dir or None
  config.input = dict(
      data=dict(name="imagenet2012", split="train[:99%]", data_dir=data_dir),
      # The crop as this config always had it (aspect ratios up to 4/3, 32
      # tries, resize rounded); big_vision's defaults differ slightly (up to
      # 1.33, 100 tries, truncated): see README "big_vision pp strings".
      pp=("decode_jpeg_and_inception_crop(224, ratio_max=1.3333333333333333, "
          "max_attempts=32, rounding='round')|flip_lr"
          "|onehot(1000, key='label', key_result='labels')"),
      batch_size=arg.batch, shuffle_buffer_size=250_000, cache=False,
      # Each host reads only its 1/P share of the records (on a pod, "global"
      # would make every host read the whole dataset); the data order then
      # depends on the process count.
      order="per_process")

  config.model_name = "resnet"
  config.model = dict(depth=arg.depth, width=arg.width, stem="imagenet", num_classes=1000)
  config.loss = "softmax_xent"
  # pp leaves uint8 images; they become [-1, 1] floats on the device (4x less
  # host work and host-to-device traffic than value_range in the pp string).
  config.device_value_range = (-1, 1)

  config.optax_name = "sgd"
  config.optax = dict(momentum=0.9)
  config.lr = 0.1 * arg.batch / 256
  config.wd = 1e-4
  config.schedule = dict(warmup_epochs=5, decay_type="cosine")

  config.mesh = [("data", -1)]
  config.log_training_steps = 50
  config.ckpt_steps = 1000
  config.keep_ckpt_steps = 10_000
  # The full ImageNet scorecard (val, minival, ReaL, multilabel, ImageNet-M,
  # v2 x3, A, R, Sketch, calibration); datasets not prepared fail at start-up
  # with the command that prepares them. The 224/256 central crop decodes only
  # the crop (same view as decode|resize_small(256)|central_crop(224)).
  config.evals = scorecard.imagenet(
      pp_image="decode_jpeg_and_central_crop(224)", data_dir=data_dir,
      include=scorecard.select(arg.evals,
                               ("val", "minival") if arg.runlocal else scorecard.NAMES),
      log_steps=2500)
  if arg.runlocal:
    config.total_epochs = None
    config.total_steps = 10
    config.input.batch_size = 8
    config.input.shuffle_buffer_size = 100
    config.schedule = dict(warmup_steps=2, decay_type="cosine")
    config.log_training_steps = 2
    config.ckpt_steps = 5
    config.keep_ckpt_steps = None
    for ev in config.evals.values():
      ev.log_steps = 5
      ev.batch_size = 8
    if "val" in config.evals:
      config.evals.val.data.split = "validation[:16]"
  return config
