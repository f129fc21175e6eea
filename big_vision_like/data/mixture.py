"""Which source each example of a weighted training mixture comes from.

Position p of a mixed stream takes its example from source `choice(p)`, a
pure function of (seed, stream, p): uniform numbers drawn
statelessly in blocks of `BLOCK` positions, mapped through the cumulative
weights. Being a pure function of the position is what makes resuming cheap
and exact: `counts_before(P)` says how many examples each source gave up to
position P (computed in-graph in a few seconds even for billions of
positions), so every source stream restarts at its own offset without
reading anything.

In the global input order there is one mixed stream, the same on every
process (drawn as stream 0); in the per_process order each process has its
own (stream = process index).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from big_vision_like.data import tf_options

BLOCK = 4096
_SALT = 0x3A1C7  # Keeps mixture draws apart from shuffle and pp seeds.


def normalized_weights(weights: Sequence[float], names: Sequence[str]
                       ) -> np.ndarray:
  """Weights as probabilities; each must be a positive finite number."""
  w = np.asarray(weights, np.float64)
  bad = [f"{n}={x!r}" for n, x in zip(names, weights)
         if not (isinstance(x, (int, float)) and np.isfinite(x) and x > 0)]
  if bad:
    raise ValueError(f"Mixture weights must be positive numbers; got "
                     f"{', '.join(bad)}.")
  return w / w.sum()


class Choices:
  """The source index of every position of one mixed stream.

  `process_index` selects the stream: 0 for the global order's one stream,
  the process index for a per_process order stream.
  """

  def __init__(self, weights: np.ndarray, *, seed: int, process_index: int):
    self.num_sources = len(weights)
    # Boundaries between sources in [0, 1); the last one is implicit.
    self._bounds = tf.constant(np.cumsum(weights)[:-1], tf.float64)
    self._seed = tf.constant([seed ^ _SALT, process_index], tf.int64)

  def _block(self, block: tf.Tensor) -> tf.Tensor:
    """Sources of positions [block * BLOCK, (block + 1) * BLOCK), int64."""
    u = tf.random.stateless_uniform(
        [BLOCK], seed=tf.random.experimental.stateless_fold_in(
            self._seed, block), dtype=tf.float64)
    return tf.searchsorted(self._bounds, u, side="right", out_type=tf.int64)

  def dataset(self, start: int) -> tf.data.Dataset:
    """Infinite dataset of source indices from position `start` on."""
    first, skip = divmod(start, BLOCK)
    ds = tf.data.Dataset.range(first, np.iinfo(np.int64).max)
    return ds.map(self._block).unbatch().skip(skip)

  def positions_of(self, source: int, start: int) -> tf.data.Dataset:
    """Infinite dataset of the positions >= `start` that choose `source`."""
    ds = tf.data.Dataset.zip(
        tf.data.Dataset.range(start, np.iinfo(np.int64).max),
        self.dataset(start))
    plain = tf.autograph.experimental.do_not_convert
    ds = ds.filter(plain(lambda _, s: tf.equal(s, source)))
    return ds.map(plain(lambda p, _: p))

  def counts_before(self, position: int) -> np.ndarray:
    """How many of positions [0, position) each source provides."""
    full, rest = divmod(position, BLOCK)
    n = self.num_sources

    def count(block):
      return tf.math.bincount(self._block(block), minlength=n, maxlength=n,
                              dtype=tf.int64)
    total = tf_options.apply(tf.data.Dataset.range(full).map(
        count, num_parallel_calls=tf_options.parallelism())).reduce(
            tf.zeros([n], tf.int64), lambda a, b: a + b).numpy()
    if rest:
      tail = self._block(tf.constant(full, tf.int64))[:rest]
      total = total + tf.math.bincount(tail, minlength=n, maxlength=n,
                                       dtype=tf.int64).numpy()
    return total

  def locate(self, position: int) -> tuple[int, int]:
    """(source, how many earlier positions chose that source)."""
    source = int(self._block(tf.constant(position // BLOCK, tf.int64))
                 [position % BLOCK])
    return source, int(self.counts_before(position)[source])
