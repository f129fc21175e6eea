"""A small BiT ResNet (pre-activation v2, GroupNorm + weight standardisation) on Fashion-MNIST.

  python -m big_vision_like.train --config configs/fashion_resnet.py --workdir DIR

Arguments: epochs, batch, depth, width, runlocal.
"""

import ml_collections

from big_vision_like.config import parse_arg

TRAIN_PP = ("decode(1)|random_crop(28, pad=2)|flip_lr|value_range(-1, 1)"
            "|onehot(10, key='label', key_result='labels')")
EVAL_PP = "decode(1)|value_range(-1, 1)|onehot(10, key='label', key_result='labels')"


def get_config(arg=None):
  arg = parse_arg(arg, epochs=5, batch=128, depth=26, width=0.5, runlocal=False)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_epochs = arg.epochs
  config.input = dict(
      data=dict(name="fashion_mnist", split="train", data_dir=None),
      pp=TRAIN_PP, batch_size=arg.batch, shuffle_buffer_size=60_000, cache=True)

  # "small" stem: 3x3 stride-1 conv and no max-pool, so 28x28 inputs are not
  # reduced to 7x7 before the first block.
  config.model_name = "resnet"
  config.model = dict(depth=arg.depth, width=arg.width, stem="small", num_classes=10)
  config.loss = "softmax_xent"

  config.optax_name = "sgd"
  config.optax = dict(momentum=0.9, nesterov=True)
  config.lr = 0.1
  config.wd = 5e-5
  config.schedule = dict(warmup_epochs=0.5, decay_type="cosine")
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
