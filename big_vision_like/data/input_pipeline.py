"""tf.data pipelines that feed process-local numpy batches to the JAX loop.

Training: an infinite stream of batches whose order AND augmentation are pure
functions of (seed, position in the stream). Epoch `e` is the process's share
of the split shuffled with a seed derived from (seed, e); each example gets a
stateless `_seed` derived from (seed, process, stream position) that the
random pp ops consume. Resuming at `start_step` therefore skips whole epochs
arithmetically and the rest of the current epoch before any preprocessing,
and yields exactly what an uninterrupted run would have yielded from there.

Evaluation: every example of the split exactly once across processes, in a
fixed order, padded to the same number of batches on every process with a
boolean `_mask` (True = real example).

tf.data runs on the CPU only; TensorFlow must not grab the accelerators that
JAX uses.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from big_vision_like.data import tfds_source
from big_vision_like.pp import builder as pp_builder

try:  # Keep TensorFlow off the GPUs (it would pre-allocate their memory).
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF devices were already initialised elsewhere.
  pass

MASK_KEY = "_mask"
# Ops that need the encoded bytes (for `decode`, TFDS's own decoding is as
# good and keeps static shapes, and `decode` accepts decoded images).
_NEEDS_BYTES_OPS = ("decode_jpeg_and_inception_crop",)
_SHUFFLE_SALT = 0x5EED  # Keeps the shuffle seeds apart from the pp seeds.


def _data_fields(data: dict) -> tuple[str, str, str | None]:
  for field in ("name", "split"):
    if not data.get(field):
      raise ValueError(f"Data config needs {field!r} (got keys "
                       f"{sorted(data)}): e.g. {{'name': 'fashion_mnist', "
                       f"'split': 'train', 'data_dir': None}}.")
  return data["name"], data["split"], data.get("data_dir")


def _processes(process_index: int | None, process_count: int | None
               ) -> tuple[int, int]:
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise ValueError(f"process_index {index} is not in [0, {count}).")
  return index, count


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  """The per-process batch size; the global one must split evenly."""
  if (not isinstance(global_batch_size, int) or global_batch_size <= 0
      or global_batch_size % process_count):
    raise ValueError(
        f"input.batch_size={global_batch_size!r} must be a positive multiple "
        f"of the number of processes ({process_count}).")
  return global_batch_size // process_count


def process_split(split: str, *, process_index: int, process_count: int,
                  drop_remainder: bool) -> Any:
  """This process's disjoint share of `split` (a TFDS split argument).

  With `drop_remainder=False`, shares differ by at most one example (the
  first ones are larger); with True all shares are equal and up to
  `process_count - 1` examples are left out.
  """
  return tfds.even_splits(split, n=process_count,
                          drop_remainder=drop_remainder)[process_index]


def _split_size(builder, split: Any) -> int:
  try:
    return int(builder.info.splits[split].num_examples)
  except (KeyError, ValueError) as e:
    raise ValueError(f"Dataset {builder.info.full_name!r}: bad split "
                     f"{split!r}: {e}") from e


def _decoders(builder, pp: str) -> dict[str, Any] | None:
  """Keeps images encoded for pp ops that decode the bytes themselves."""
  skip = {}
  for op in pp_builder.parse_ops(pp):
    if op.name in _NEEDS_BYTES_OPS:
      key = pp_builder.bound_arguments(op)["key"]
      features = builder.info.features
      if key in features and isinstance(features[key], tfds.features.Image):
        skip[key] = tfds.decode.SkipDecoding()
  return skip or None


def _read(builder, split: Any, pp: str) -> tf.data.Dataset:
  """The split's records in TFDS's fixed order (no file shuffling)."""
  read_config = tfds.ReadConfig(try_autocache=False, skip_prefetch=True)
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders=_decoders(builder, pp),
                          read_config=read_config)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def train_examples(data: dict) -> int:
  """Global number of examples in the training split (defines an epoch)."""
  name, split, data_dir = _data_fields(data)
  return tfds_source.num_examples(name, split, data_dir)


class TrainIterator:
  """Infinite iterator of process-local numpy batches (see module doc)."""

  def __init__(self, ds: tf.data.Dataset, *, num_examples: int,
               examples_per_process: int, local_batch_size: int,
               start_step: int):
    self.num_examples = num_examples  # Global split size.
    self.examples_per_process = examples_per_process  # One epoch, this process.
    self.local_batch_size = local_batch_size
    self.start_step = start_step
    self.element_spec = ds.element_spec
    self._it = iter(tfds.as_numpy(ds))

  def __iter__(self) -> "TrainIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._it)


def make_train_iterator(
    data: dict, pp: str, global_batch_size: int, *, seed: int,
    start_step: int = 0, shuffle_buffer_size: int = 50_000,
    cache: bool = False, prefetch: int = 2,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    process_index: int | None = None, process_count: int | None = None,
) -> TrainIterator:
  """Infinite, reshuffled, augmented training batches for this process.

  Args:
    data: `{"name": tfds name, "split": split, "data_dir": None or dir}`.
    pp: the pp string; random ops get a per-example seed.
    global_batch_size: examples per step over all processes; each process
      yields `global_batch_size // process_count` of them.
    seed: the global data seed. Order and augmentation depend only on it.
    start_step: first step to yield (resume): batch k of this iterator is
      batch `start_step + k` of an uninterrupted one.
    shuffle_buffer_size: tf.data shuffle buffer (examples).
    cache: keep the decoded, not yet augmented records (the output of the pp
      ops before the first random one) in memory.
    prefetch: batches to prefetch.
    num_parallel_calls: parallelism of the pp map.
    process_index, process_count: default to JAX's; override for tests.
  """
  name, split, data_dir = _data_fields(data)
  index, count = _processes(process_index, process_count)
  batch = local_batch_size(global_batch_size, count)
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}.")
  builder = tfds_source.get_builder(name, data_dir)
  share = process_split(split, process_index=index, process_count=count,
                        drop_remainder=True)
  n_local = _split_size(builder, share)
  if n_local == 0:
    raise ValueError(f"Data {name!r} split {split!r} gives process {index} of "
                     f"{count} no training examples.")
  prefix_fn, rest_fn, _ = pp_builder.split_deterministic_prefix(pp)

  records = _read(builder, share, pp)
  if cache:  # Decode etc. once; only the random rest runs every epoch.
    records = records.map(tf.autograph.experimental.do_not_convert(prefix_fn),
                          num_parallel_calls).cache()
    per_epoch_fn = rest_fn
  else:
    per_epoch_fn = pp_builder.get_preprocess_fn(pp)

  start_epoch, skip_in_epoch = divmod(start_step * batch, n_local)
  example_seed = tf.constant([seed, index], tf.int64)

  def epoch(e):
    # A scalar hash of (seed, epoch). (Note stateless_fold_in(s, e) is the
    # pair [f(s), e], so its first entry alone would not depend on e.)
    shuffle_seed = tf.random.stateless_uniform(
        [], seed=tf.stack([tf.constant(seed ^ _SHUFFLE_SALT, tf.int64), e]),
        minval=None, maxval=None, dtype=tf.int64)
    # With only an op seed, tf.data pairs it with TF's fixed default graph
    # seed; calling tf.random.set_seed elsewhere would change the order.
    ds = records.shuffle(shuffle_buffer_size, seed=shuffle_seed,
                         reshuffle_each_iteration=False)
    ds = ds.enumerate()  # Position within the epoch.
    skip = tf.where(e == start_epoch, tf.constant(skip_in_epoch, tf.int64), 0)
    return ds.skip(skip).map(lambda i, ex: (e * n_local + i, ex))

  # Without autograph, pp errors surface as our own PPError (not wrapped in a
  # StagingError); pp ops are plain tf code and need no conversion.
  @tf.autograph.experimental.do_not_convert
  def preprocess(position, example):
    example = dict(example)
    example[pp_builder.SEED_KEY] = tf.random.experimental.stateless_fold_in(
        example_seed, position)
    return per_epoch_fn(example)

  ds = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max)
  ds = ds.flat_map(epoch)
  ds = ds.map(preprocess, num_parallel_calls=num_parallel_calls)
  ds = ds.batch(batch, drop_remainder=True).prefetch(prefetch)
  return TrainIterator(ds, num_examples=_split_size(builder, split),
                       examples_per_process=n_local, local_batch_size=batch,
                       start_step=start_step)


def _zeros_like_spec(spec: tf.TensorSpec, key: str) -> tf.Tensor:
  if not spec.shape.is_fully_defined():
    raise ValueError(
        f"Eval pp output {key!r} has shape {spec.shape}; evaluation batches "
        f"are padded, so every key needs a fixed shape (resize/crop images, "
        f"or drop/keep keys).")
  if spec.dtype == tf.string:
    return tf.fill(spec.shape, "")
  return tf.zeros(spec.shape, spec.dtype)


class EvalIterable:
  """Re-iterable fixed-order eval batches; `len()` is the batch count."""

  def __init__(self, ds: tf.data.Dataset, num_batches: int,
               num_examples: int):
    self._ds = ds
    self.num_batches = num_batches
    self.num_examples = num_examples  # Real examples on this process.
    self.element_spec = ds.element_spec

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return iter(tfds.as_numpy(self._ds))


def make_eval_iterator(
    data: dict, pp: str, global_batch_size: int, *, cache: bool = True,
    prefetch: int = 2, num_parallel_calls: int = tf.data.AUTOTUNE,
    process_index: int | None = None, process_count: int | None = None,
) -> tuple[EvalIterable, int]:
  """Every example of the split once (over all processes), padded batches.

  Returns `(iterable, num_batches)`; `num_batches` is the same on every
  process (from the largest share); padding examples are zeros with
  `_mask=False`. `cache=True` keeps the preprocessed examples in memory after
  the first pass: fine for small sets, too big for ImageNet-size ones.
  """
  name, split, data_dir = _data_fields(data)
  index, count = _processes(process_index, process_count)
  batch = local_batch_size(global_batch_size, count)
  builder = tfds_source.get_builder(name, data_dir)
  shares = [process_split(split, process_index=i, process_count=count,
                          drop_remainder=False) for i in range(count)]
  sizes = [_split_size(builder, s) for s in shares]
  if max(sizes) == 0:
    raise ValueError(f"Data {name!r} split {split!r} is empty.")
  num_batches = math.ceil(max(sizes) / batch)
  prefix_fn, _, is_random = pp_builder.split_deterministic_prefix(pp)
  if is_random:
    first = next(op for op in pp_builder.parse_ops(pp)
                 if pp_builder.is_random(op))
    raise pp_builder.PPError(
        f"Eval pp op {first.index} {first.token!r} is random and needs a "
        f"per-example seed; evaluation must be deterministic: {pp!r}")
  preprocess = pp_builder.get_preprocess_fn(pp)

  @tf.autograph.experimental.do_not_convert
  def with_mask(example):
    example = preprocess(example)
    if MASK_KEY in example:
      raise ValueError(f"The eval pp output already has a {MASK_KEY!r} key.")
    return {**example, MASK_KEY: tf.constant(True)}

  ds = _read(builder, shares[index], pp).map(with_mask, num_parallel_calls)
  if cache:
    ds = ds.cache()
  padding = {k: _zeros_like_spec(spec, k)
             for k, spec in ds.element_spec.items()}
  padding[MASK_KEY] = tf.constant(False)
  num_padding = num_batches * batch - sizes[index]
  if num_padding:
    ds = ds.concatenate(
        tf.data.Dataset.from_tensors(padding).repeat(num_padding))
  ds = ds.batch(batch, drop_remainder=True).prefetch(prefetch)
  return EvalIterable(ds, num_batches, sizes[index]), num_batches
