"""The main job: a small ViT on the embedded Fashion-MNIST, on one CPU.

  python -m big_vision_like.train --config configs/fashion_vit.py --workdir DIR

Arguments (`configs/fashion_vit.py:epochs=3,batch=256`): epochs, batch, runlocal
(a few steps, for smoke tests).
"""

import ml_collections

from big_vision_like.config import parse_arg

# Only flips: in a 10-minute budget the model underfits, and random crops
# slowed convergence more than they regularised.
TRAIN_PP = ("decode(1)|flip_lr|value_range(-1, 1)"
            "|onehot(10, key='label', key_result='labels')")
EVAL_PP = "decode(1)|value_range(-1, 1)|onehot(10, key='label', key_result='labels')"


def get_config(arg=None):
  arg = parse_arg(arg, epochs=8, batch=256, runlocal=False)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_epochs = arg.epochs

  config.input = dict(
      data=dict(name="fashion_mnist", split="train", data_dir=None),
      pp=TRAIN_PP, batch_size=arg.batch, shuffle_buffer_size=60_000, cache=True)

  # A ViT with a convolutional stem (Xiao et al. 2021, "Early convolutions
  # help transformers see better"): three 3x3 stride-2 convs take 28x28 to a
  # 4x4 grid, each position one token (patch_size=1), then 6 blocks of width
  # 128. Measured on 2 CPU cores: 16 tokens from 7x7 patchify reach 0.803
  # test accuracy after 3 epochs, the conv stem 0.844 at the same point, for
  # ~20% more time per step; 4x4 patches (49 tokens) at width 64 cost more
  # and learned slower still. Fixed sincos position embeddings and GAP.
  config.model_name = "vit"
  config.model = dict(variant="Ti/1", width=128, depth=6, mlp_dim=256, num_heads=4,
                      conv_stem=(32, 64, 128), num_classes=10, pool_type="gap",
                      posemb="sincos2d")
  config.loss = "softmax_xent"

  config.optax_name = "adamw"
  config.optax = dict(b2=0.99)
  config.lr = 2e-3
  config.wd = 1e-4  # decoupled: params shrink by wd x (lr schedule / peak lr) per step
  config.schedule = dict(warmup_epochs=1, decay_type="cosine")
  config.grad_clip_norm = 1.0

  config.mesh = [("data", -1)]
  config.log_training_steps = 100
  config.ckpt_epochs = 1
  config.evals = dict(test=dict(type="classification",
                                data=dict(name="fashion_mnist", split="test", data_dir=None),
                                pp=EVAL_PP, batch_size=500, log_percent=50))

  if arg.runlocal:
    config.total_epochs = None
    config.total_steps = 20
    config.schedule = dict(warmup_steps=2, decay_type="cosine")
    config.log_training_steps = 5
    config.ckpt_epochs = None
    config.ckpt_steps = 10
    config.evals.test.data.split = "test[:1000]"
  return config
