"""The tiny runlocal config plus `hang_after`, a pp op that hangs (test_watchdog).

A config file is Python, so it can register a pp op of its own: loading it
(`--config tests/watchdog_hang_config.py`) registers `hang_after` in
`registry.PP_OPS` before the config is checked. test_watchdog puts the op at
the end of a train or eval pp string to hang a real input pipeline.
"""

import itertools
import time

import jax
import tensorflow as tf

from big_vision_like import config as config_lib
from big_vision_like.registry import PP_OPS


def sleep_forever_in_pp():
  """What a stalled input pipeline looks like: a worker that never returns."""
  while True:
    time.sleep(0.5)


@PP_OPS.register("hang_after")
def get_hang_after(n: int = 0, process: int | None = None):
  """Passes `n` examples (of this process) through, then blocks forever.

  With `process` set, only that process (jax.process_index()) hangs.
  """
  hangs = process is None or jax.process_index() == process
  count = itertools.count()

  def passthrough(label):
    if hangs and next(count) >= n:
      sleep_forever_in_pp()
    return label

  def hang_after(data):
    label = tf.numpy_function(passthrough, [data["label"]], data["label"].dtype,
                              stateful=True)
    label.set_shape(data["label"].shape)
    return {**data, "label": label}
  return hang_after


def get_config(arg=None):
  return config_lib.load_config(f"configs/fashion_vit.py:{arg or 'runlocal'}")
