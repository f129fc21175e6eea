"""ViT on ImageNet-1k from scratch: S/16 (90 epochs, batch 1024) and B/16 (300 epochs, batch 4096).

  python -m big_vision_like.train --config configs/vit_i1k.py:variant=S/16 --workdir gs://...
  python -m big_vision_like.train --config configs/vit_i1k.py:variant=B/16 --workdir gs://...
  python -m big_vision_like.train --config configs/vit_i1k.py:runlocal --workdir /tmp/x

The S/16 recipe follows "Better plain ViT baselines for ImageNet-1k" (Beyer et
al. 2022): global average pooling, fixed 2-d sincos position embeddings, batch
1024, Adam(b2=0.999) with decoupled weight decay 1e-4, 10k warmup steps and
cosine decay, inception crop + flip + RandAugment(2, 10) and mixup with
Beta(0.2, 0.2) on the whole batch. B/16 uses the longer 300-epoch schedule at
batch 4096 with stochastic depth 0.1 and the stronger AugReg-style
augmentation RandAugment(2, 15) + mixup Beta(0.5, 0.5). `randaug` follows the
original TF RandAugment magnitude convention (as big_vision does).
`runlocal` keeps the data and model family but shrinks batch, steps and evals.
`sharding=dp|fsdp|fsdp_tp` picks the layout (default dp; fsdp splits params
and optimizer state over all devices, fsdp_tp adds 2-way tensor parallelism
over heads and MLP; see README "Scale-out"). `evals=val+real` keeps only the
named scorecard evals (default: all of them; `runlocal`: val+minival).
"""

import ml_collections

from big_vision_like import scorecard
from big_vision_like import sharding
from big_vision_like.config import parse_arg

RECIPES = {
    "S/16": dict(epochs=90, batch=1024, lr=1e-3, wd=1e-4, drop_path=0.0,
                 randaug=(2, 10), mixup=0.2),
    "B/16": dict(epochs=300, batch=4096, lr=1e-3, wd=1e-4, drop_path=0.1,
                 randaug=(2, 15), mixup=0.5),
}


def get_config(arg=None):
  arg = parse_arg(arg, variant="S/16", runlocal=False, data_dir="", sharding="dp",
                  evals="")
  if arg.variant not in RECIPES:
    raise ValueError(f"configs/vit_i1k.py: variant must be one of {sorted(RECIPES)}, "
                     f"got {arg.variant!r}")
  recipe = RECIPES[arg.variant]
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_epochs = recipe["epochs"]
  data_dir = arg.data_dir or None

  config.input = dict(
      data=dict(name="imagenet2012", split="train[:99%]", data_dir=data_dir),
      # The crop as this config always had it (aspect ratios up to 4/3, 32
      # tries, resize rounded); big_vision's defaults differ slightly (up to
      # 1.33, 100 tries, truncated): see README "big_vision pp strings".
      pp=("decode_jpeg_and_inception_crop(224, ratio_max=1.3333333333333333, "
          "max_attempts=32, rounding='round')|flip_lr"
          f"|randaug{recipe['randaug']}"
          "|onehot(1000, key='label', key_result='labels')"),
      batch_size=recipe["batch"], shuffle_buffer_size=250_000, cache=False,
      # Each host reads only its 1/P share of the records (on a pod, "global"
      # would make every host read the whole dataset); the data order then
      # depends on the process count.
      order="per_process")

  config.model_name = "vit"
  config.model = dict(variant=arg.variant, num_classes=1000, pool_type="gap",
                      posemb="sincos2d", rep_size=False, drop_path=recipe["drop_path"])
  config.loss = "softmax_xent"
  # pp leaves uint8 images; they become [-1, 1] floats on the device (4x less
  # host work and host-to-device traffic than value_range in the pp string).
  config.device_value_range = (-1, 1)
  config.mixup = dict(mixup_alpha=recipe["mixup"], mode="batch")

  config.optax_name = "adam"
  config.optax = dict(b1=0.9, b2=0.999)
  config.lr = recipe["lr"]
  config.wd = recipe["wd"]
  config.schedule = dict(warmup_steps=10_000, decay_type="cosine")
  config.grad_clip_norm = 1.0

  config.update(sharding.layout(arg.sharding))
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
    config.schedule.warmup_steps = 2
    config.log_training_steps = 2
    config.ckpt_steps = 5
    config.keep_ckpt_steps = None
    for ev in config.evals.values():
      ev.log_steps = 5
      ev.batch_size = 8
    if "val" in config.evals:
      config.evals.val.data.split = "validation[:16]"
  return config
