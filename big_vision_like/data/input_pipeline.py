"""tf.data pipelines that feed process-local numpy batches to the JAX loop.

Training: an infinite stream of batches whose order AND augmentation are pure
functions of (seed, position in the stream). Epoch `e` of a source is its
records shuffled with a seed derived from (seed, e); each example gets a
stateless `_seed` derived from (seed, source, stream position) that the
random pp ops consume. Resuming at `start_step` therefore skips whole epochs
arithmetically and the rest of the current epoch by reading (never decoding)
records, and yields exactly what an uninterrupted run would have yielded.

Two orders (`config.input.order`), which differ in who reads what:

- "global" (default): there is one stream, the same on every process, and
  the global batch of step k is its positions [k*B, (k+1)*B). Process p of P
  yields rows [p*B/P, (p+1)*B/P) of it, the rows that
  `jax.make_array_from_process_local_data` puts at those places of a batch
  sharded over the data axis. So the global batches (and the losses) do not
  depend on the process count, and a run can resume on another one. Cost:
  every process reads (not decodes) every record of the split, P times the
  I/O of the per_process order; each drops the other processes' rows before
  decoding, so decoding and pp, the expensive part, are not repeated. (With
  `cache=True` each process does cache, so decode once, the whole split.)
  With one process the stream is the per_process one.
- "per_process": each process reads only its own contiguous share of the
  split (`splits.process_share`), shuffles it and seeds augmentation by
  (seed, process, position). Least I/O on a big pod, but the data order
  depends on the process count.

A weighted mixture of several sources (`data=[{..., "weight": w}, ...]`)
runs one such stream per source (each with its own pp prefix, seeds and
shuffle) and picks the source of every position with `mixture.Choices`, a
pure function of the position, so resuming stays exact and cheap. In the
global order the choices do not depend on the process; every process reads
all sources and decodes only the records of its rows.

Evaluation: every example of the split exactly once across processes, in a
fixed order, padded to the same number of batches on every process with a
boolean `_mask` (True = real example). The dataset's `file_name` (if it has
one) is carried through to the batches even if the pp string drops it.

Bad records: image features are decoded inside our per-example map (not by
TFDS), after their stream position is known. A record that fails (corrupt
or truncated image, or a pp op that rejects it) stops the run with
`BadExampleError`, which names the record (file name, split slice) and the
op's error; with `skip_corrupt=True` such records are dropped and counted.
A process's batch then fills up from its next rows, so in the global order
the global batches no longer equal those of another process count. (They
still do with `cache=True` if the records fail in the cached pp prefix, e.g.
in decoding: such records are dropped while caching, on every process.)

tf.data runs on the CPU only; TensorFlow must not grab the accelerators that
JAX uses.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from big_vision_like.data import mixture as mixture_lib
from big_vision_like.data import splits as splits_lib
from big_vision_like.data import tf_options
from big_vision_like.data import tfds_source
from big_vision_like.pp import builder as pp_builder

try:  # Keep TensorFlow off the GPUs (it would pre-allocate their memory).
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF devices were already initialised elsewhere.
  pass

MASK_KEY = "_mask"
FILE_NAME_KEY = "file_name"
SKIPPED_KEY = "_skipped"  # Cumulative dropped records (skip_corrupt=True).
# Ops that need the encoded bytes instead of a decoded image.
_NEEDS_BYTES_OPS = ("decode_jpeg_and_inception_crop",
                    "decode_jpeg_and_central_crop")
_SHUFFLE_SALT = 0x5EED  # Keeps the shuffle seeds apart from the pp seeds.
_SOURCE_KEYS = {"name", "split", "data_dir", "weight", "pp"}
_MAX_REPORTED = 5  # Bad records named in one error message.
ORDERS = ("global", "per_process")  # Values of `order` (config.input.order).


class BadExampleError(RuntimeError):
  """A record could not be read or preprocessed (names the record)."""


# tf.data functions that are plain TF code: tracing them with autograph
# would only cost time (and warnings for several lambdas on one line).
_plain = tf.autograph.experimental.do_not_convert


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


def data_sources(data: Any) -> list[dict[str, Any]]:
  """Normalises `data` (one source dict, or a list of weighted ones).

  A source is `{"name", "split", "data_dir"?, "weight"?, "pp"?}`; `pp` is
  run before the common pp string (mixtures whose sources have different
  features rename/convert them there).
  """
  many = isinstance(data, (list, tuple))
  items = list(data) if many else [data]
  if not items:
    raise ValueError("input.data is an empty list of sources.")
  out = []
  for i, item in enumerate(items):
    where = f"input.data[{i}]" if many else "input.data"
    if not hasattr(item, "keys"):
      raise ValueError(f"{where} must be a dict like {{'name': "
                       f"'imagenet2012', 'split': 'train'}}, got {item!r}.")
    item = dict(item)
    unknown = sorted(set(item) - _SOURCE_KEYS)
    if unknown:
      raise ValueError(f"{where}: unknown key(s) {unknown}; known: "
                       f"{sorted(_SOURCE_KEYS)}.")
    for field in ("name", "split"):
      if not item.get(field):
        raise ValueError(f"{where} needs {field!r} (got keys {sorted(item)})"
                         f": e.g. {{'name': 'fashion_mnist', 'split': "
                         f"'train', 'data_dir': None}}.")
    if many and len(items) > 1 and "weight" not in item:
      raise ValueError(f"{where} ({item['name']}): every source of a "
                       f"mixture needs a 'weight'.")
    out.append(item)
  return out


def _label(source: dict) -> str:
  return f"{source['name']}:{source['split']}"


def train_examples(data: Any) -> int:
  """Global number of training examples (summed over a mixture's sources).

  This defines an epoch for `total_epochs` and other durations.
  """
  sources = data_sources(data)
  many = isinstance(data, (list, tuple))
  return sum(tfds_source.num_examples(s["name"], s["split"], s.get("data_dir"),
                                      key=_name_key(i if many else None))
             for i, s in enumerate(sources))


def _name_key(source_index: int | None) -> str:
  """The config key of a training source's dataset name, for messages."""
  return ("config.input.data.name" if source_index is None
          else f"config.input.data[{source_index}].name")


def _bytes_keys(pp: str, features) -> set[str]:
  keys = set()
  for op in pp_builder.parse_ops(pp):
    if op.name in _NEEDS_BYTES_OPS:
      keys.add(pp_builder.bound_arguments(op)["key"])
  return keys & set(features)


class _Records:
  """One source's raw records, with image features left encoded.

  TFDS would decode images while reading, before we know a record's stream
  position; we decode them in our own map instead, so that a bad image can
  be traced to its record.
  """

  def __init__(self, source: dict, share: splits_lib.Share, pp: str,
               builder: tfds.core.DatasetBuilder):
    self.source, self.share, self.builder = source, share, builder
    features = builder.info.features
    self.image_keys = [k for k, f in features.items()
                       if isinstance(f, tfds.features.Image)]
    keep_bytes = _bytes_keys(pp, features)
    self._decode_keys = [k for k in self.image_keys if k not in keep_bytes]
    # Ops that look examples up by name (soft labels) need one; a dataset
    # without names gets the evaluators' position names, `train_00042`.
    self._add_names = (FILE_NAME_KEY not in features
                       and pp_builder.reads_file_name(pp))

  def dataset(self, spec: str | None = None) -> tf.data.Dataset:
    """The share's records (or those of `spec`) in fixed TFDS order."""
    read_config = tfds.ReadConfig(try_autocache=False, skip_prefetch=True)
    decoders = {k: tfds.decode.SkipDecoding() for k in self.image_keys}
    ds = self.builder.as_dataset(split=spec or self.share.spec,
                                 shuffle_files=False, decoders=decoders or None,
                                 read_config=read_config)
    if self._add_names:
      names = splits_lib.record_names(
          splits_lib.resolve(self.builder, spec or self.share.spec))
      ds = tf.data.Dataset.zip(ds, tf.data.Dataset.from_tensor_slices(
          tf.constant(names, tf.string)))
      ds = ds.map(lambda ex, name: {**ex, FILE_NAME_KEY: name})
    return tf_options.apply(ds)

  def decode(self, example: dict) -> dict:
    """Decodes the image features the pp string wants decoded (as TFDS would)."""
    features = self.builder.info.features
    example = dict(example)
    for key in self._decode_keys:
      example[key] = features[key].decode_example(example[key])
    return example

  def describe(self, index: int, raw: dict | None) -> str:
    """"file_name 'x.JPEG' (record imagenet2012 train[5:6])"."""
    where = (f"record {self.source['name']} "
             f"{self.share.record_spec(index)}")
    name = None if raw is None else raw.get(FILE_NAME_KEY)
    if name is not None:
      name = name.decode() if isinstance(name, bytes) else str(name)
      return f"file_name {name!r} ({where})"
    return where


def _reproduce(fn: Callable[[dict], dict], raw: dict) -> str | None:
  """Runs `fn` eagerly on one raw record; the error message, or None."""
  try:
    fn({k: tf.convert_to_tensor(v) for k, v in raw.items()})
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:500]}"
  return None


@dataclasses.dataclass(frozen=True)
class _Rows:
  """The positions of a stream that this process preprocesses and yields.

  Rows [lo, lo + size) of every block of `batch` consecutive positions: in
  the global order `batch` is the global batch and the block is one step's
  global batch; in the per_process order the stream is the process's own
  and it takes everything (lo=0, size=batch).
  """
  batch: int
  lo: int
  size: int

  @property
  def everything(self) -> bool:
    return self.size == self.batch

  def owns(self, position: tf.Tensor) -> tf.Tensor:
    row = position % self.batch
    return tf.logical_and(row >= self.lo, row < self.lo + self.size)

  def of_step(self, step: int) -> range:
    """The positions of this process's batch `step` (no records dropped)."""
    first = step * self.batch + self.lo
    return range(first, first + self.size)


class _SourceStream:
  """An infinite, shuffled, preprocessed stream of one source's records.

  The records are share `share_index` of `share_count` of the split: this
  process's own share in the per_process order, the whole split (share 0 of
  1) in the global order. Stream position j (counted from epoch 0) is record
  `shuffle_e[j % n]` of epoch `e = j // n`, augmented with a seed derived
  from (seed, source, share_index, j).
  """

  def __init__(self, source: dict, pp: str, *, seed: int, source_index: int,
               num_sources: int, share_index: int, share_count: int,
               shuffle_buffer_size: int, cache: bool, num_parallel_calls: int,
               skip_corrupt: bool):
    self.source = source
    self.pp = f"{source['pp']}|{pp}" if source.get("pp") else pp
    builder = tfds_source.get_builder(
        source["name"], source.get("data_dir"),
        key=_name_key(source_index if num_sources > 1 else None))
    share = splits_lib.process_share(
        builder, source["split"], process_index=share_index,
        process_count=share_count, drop_remainder=True)
    if share.size == 0:
      raise ValueError(
          f"Data {_label(source)} gives process {share_index} of "
          f"{share_count} no training examples." if share_count > 1 else
          f"Data {_label(source)} has no training examples.")
    self.records = _Records(source, share, self.pp, builder)
    self.num_examples = sum(hi - lo for _, lo, hi in share.ranges)
    self.shuffle_buffer_size = shuffle_buffer_size
    self.num_parallel_calls = num_parallel_calls
    self.skip_corrupt = skip_corrupt
    # A single source keeps the seeds of the plain (non-mixture) pipeline.
    salt = 0 if num_sources == 1 else (source_index + 1) * 0x9E3779B1
    self._shuffle_seed = (seed ^ _SHUFFLE_SALT) + salt
    self._example_seed = tf.constant([seed + salt, share_index], tf.int64)
    self._full_fn = pp_builder.get_preprocess_fn(self.pp)

    records = self.records.dataset()
    self.n = share.size
    if cache:  # Decode etc. once; only the random rest runs every epoch.
      prefix_fn, self._epoch_fn, _ = pp_builder.split_deterministic_prefix(
          self.pp)
      prefix = lambda ex: prefix_fn(self.records.decode(ex))
      records = records.map(tf.autograph.experimental.do_not_convert(prefix),
                             num_parallel_calls)
      if skip_corrupt:
        records = records.ignore_errors(log_warning=True)
      records = records.cache()
      if skip_corrupt:  # Epoch arithmetic needs the true count.
        self.n = int(records.reduce(tf.constant(0, tf.int64),
                                    lambda c, _: c + 1).numpy())
        if self.n == 0:
          raise BadExampleError(f"Every record of {_label(source)} (this "
                                f"process's share) failed to preprocess.")
        if self.n < share.size:
          logging.warning("Input %s: skipped %d bad record(s) of %d while "
                          "caching (skip_corrupt=True).", _label(source),
                          share.size - self.n, share.size)
    else:
      self._epoch_fn = lambda ex: self._full_fn(self.records.decode(ex))
    self.cache = cache
    self._records = records

  def _epoch_seed(self, e: tf.Tensor) -> tf.Tensor:
    # A scalar hash of (seed, epoch). (Note stateless_fold_in(s, e) is the
    # pair [f(s), e], so its first entry alone would not depend on e.)
    return tf.random.stateless_uniform(
        [], seed=tf.stack([tf.constant(self._shuffle_seed, tf.int64), e]),
        minval=None, maxval=None, dtype=tf.int64)

  def _epoch(self, records: tf.data.Dataset, e: tf.Tensor) -> tf.data.Dataset:
    """(position, record) of epoch e; positions count from epoch 0."""
    # With only an op seed, tf.data pairs it with TF's fixed default graph
    # seed; calling tf.random.set_seed elsewhere would change the order.
    ds = records.shuffle(self.shuffle_buffer_size, seed=self._epoch_seed(e),
                         reshuffle_each_iteration=False)
    return ds.enumerate().map(lambda i, ex: (e * self.n + i, ex))

  def _preprocess(self, position: tf.Tensor, example: dict) -> dict:
    example = dict(example)
    example[pp_builder.SEED_KEY] = tf.random.experimental.stateless_fold_in(
        self._example_seed, position)
    return self._epoch_fn(example)

  def _positioned(self, start: int, stop: int | None = None) -> tf.data.Dataset:
    """(position, record) from stream position `start` on (to `stop`), not decoded.

    Whole epochs before `start` are skipped arithmetically, the rest of the
    first epoch by reading (not decoding) its records. With `stop`, nothing
    at or after it is read, so a run that ends on an epoch boundary never
    starts filling the next epoch's shuffle buffer (which deleting the
    iterator would wait for: ~50 s at the end of the main job).
    """
    start_epoch, skip = divmod(start, self.n)

    def epoch(e):
      ds = self._epoch(self._records, e)
      return ds.skip(tf.where(e == start_epoch, tf.constant(skip, tf.int64), 0))

    ds = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max).flat_map(epoch)
    return ds if stop is None else ds.take(stop - start)

  def dataset(self, start: int, rows: _Rows,
              positions: tf.data.Dataset | None = None,
              stop: int | None = None) -> tf.data.Dataset:
    """Preprocessed examples of the rows this process owns (infinite without `stop`).

    Args:
      start: the first source stream position.
      stop: the source stream position to end before (None: never end).
      rows: which positions of the (mixed) stream this process takes.
      positions: the mixed-stream position of every source position from
        `start` on (mixtures); None: they are the source positions.
    """
    ds = self._positioned(start, stop)
    if not rows.everything:  # Drop the other processes' rows BEFORE decoding.
      if positions is None:
        ds = ds.filter(_plain(lambda j, _: rows.owns(j)))
      else:
        ds = tf.data.Dataset.zip(ds, positions)
        ds = ds.filter(_plain(lambda _, g: rows.owns(g)))
        ds = ds.map(_plain(lambda item, _: item))
    fn = _plain(self._preprocess)
    if not self.skip_corrupt:
      return ds.map(fn, num_parallel_calls=self.num_parallel_calls)
    # About as many of the kept positions as one epoch gives this process.
    period = max(1, math.ceil(self.n * rows.size / rows.batch))
    return _skip_and_count(ds, fn, period, self.num_parallel_calls,
                           _label(self.source))

  def describe_position(self, position: int, limit: int = 1
                        ) -> list[tuple[str, str | None]]:
    """Replays positions [position, position + limit): failing records.

    Returns [(record description, error message)] for the records whose
    preprocessing fails when run again, eagerly, with their own seeds.
    """
    e, i = divmod(position, self.n)
    records = self._records
    if not self.cache:  # Keep the record index with the raw record.
      records = tf.data.Dataset.zip(tf.data.Dataset.range(self.n), records)
    ds = self._epoch(records, tf.constant(e, tf.int64)).skip(i).take(limit)
    found = []
    for p, item in ds:
      index, raw = (None, item) if self.cache else item
      error = _reproduce(lambda ex, p=p: self._preprocess(p, ex), raw)
      if error:
        raw_np = tfds.as_numpy(raw)
        where = (self.records.describe(int(index), raw_np) if index is not None
                 else f"stream position {int(p)} of {_label(self.source)}")
        found.append((where, error))
    return found

  def find_bad_records(self, limit: int = _MAX_REPORTED
                       ) -> list[tuple[str, str | None]]:
    """Scans the whole share for records whose decoding/pp fails."""
    prefix_fn, _, _ = pp_builder.split_deterministic_prefix(self.pp)
    check = tf.autograph.experimental.do_not_convert(
        lambda i, ex: (i, prefix_fn(self.records.decode(ex))))
    good = tf.data.Dataset.zip(tf.data.Dataset.range(self.records.share.size),
                               self.records.dataset())
    good = good.map(check, self.num_parallel_calls).ignore_errors()
    ok = {int(i) for i, _ in good.as_numpy_iterator()}
    bad = [i for i in range(self.records.share.size) if i not in ok][:limit]
    out = []
    for index in bad:
      raw = next(iter(self.records.dataset(
          self.records.share.record_spec(index))))
      error = _reproduce(lambda ex: prefix_fn(self.records.decode(ex)), raw)
      out.append((self.records.describe(index, tfds.as_numpy(raw)), error))
    return out


def _dummy(spec: tf.TensorSpec) -> tf.Tensor:
  """A cheap stand-in value of `spec` (unknown dims are 0)."""
  shape = [d or 0 for d in spec.shape]
  return (tf.fill(shape, "") if spec.dtype == tf.string
          else tf.zeros(shape, spec.dtype))


def _skip_and_count(ds: tf.data.Dataset, fn: Callable, period: int,
                    num_parallel_calls: int, label: str) -> tf.data.Dataset:
  """`ds.map(fn)` that drops the records `fn` fails on, adding `_skipped`.

  `ds` holds (position, record). A marker goes in after every `period`
  records and bypasses `fn`, so the counting below still sees elements when
  every record fails. Dropped records are found as gaps in the ordinals of
  the records that survive (`_count_dropped`).
  """
  out_spec = ds.map(fn).element_spec  # Traced only, for the markers' dummies.
  marker = (tf.constant(-1, tf.int64),
            tf.nest.map_structure(_dummy, ds.element_spec[1]))
  markers = tf.data.Dataset.from_tensors(marker).repeat()
  pattern = tf.data.Dataset.range(np.iinfo(np.int64).max).map(
      _plain(lambda i: tf.cast(i % (period + 1) == period, tf.int64)))
  ds = tf.data.Dataset.choose_from_datasets([ds, markers], pattern)

  def run(i, item):
    is_marker = i % (period + 1) == period
    ordinal = i - i // (period + 1)  # Of the record (a marker: of the next).
    example = tf.cond(is_marker,
                      lambda: tf.nest.map_structure(_dummy, out_spec),
                      lambda: fn(*item))
    return ordinal, is_marker, example

  ds = ds.enumerate().map(_plain(run), num_parallel_calls=num_parallel_calls)
  ds = ds.ignore_errors(log_warning=True)
  return _count_dropped(ds, 2 * period, label)


def _count_dropped(ds: tf.data.Dataset, limit: int,
                   label: str) -> tf.data.Dataset:
  """Adds `_skipped`: records dropped just before each example.

  `ds` holds (ordinal, is_marker, example) with the failed ordinals missing
  and markers in between; summing `_skipped` over the stream counts every
  dropped record once. `limit` failures in a row is an error (otherwise a pp
  string that fails on everything would spin forever). With `limit` twice a
  process's epoch that cannot happen while one record per epoch survives in
  the per_process order; in the global order a process sees a random part
  of each epoch, so it needs nearly all records to fail.
  """
  def step(state, item):
    prev, pending = state
    ordinal, is_marker, example = item
    dropped = pending + ordinal - prev - 1  # Failures since the last kept.
    check = tf.debugging.Assert(
        tf.logical_or(tf.logical_not(is_marker), dropped < limit),
        [f"{limit} records of {label} in a row (two epochs' worth for this "
         f"process) failed to preprocess (skip_corrupt=True); the logged "
         f"warnings say why. Failures in a row:", dropped])
    with tf.control_dependencies([check]):
      example = {**example, SKIPPED_KEY: tf.identity(dropped)}
    new_state = (tf.where(is_marker, ordinal - 1, ordinal),
                 tf.where(is_marker, dropped, tf.constant(0, tf.int64)))
    return new_state, (is_marker, example)

  start = (tf.constant(-1, tf.int64), tf.constant(0, tf.int64))
  ds = ds.scan(start, _plain(step))
  ds = ds.filter(_plain(lambda is_marker, _: tf.logical_not(is_marker)))
  return ds.map(_plain(lambda _, example: example))


class TrainIterator:
  """Infinite iterator of process-local numpy batches (see module doc)."""

  def __init__(self, ds: tf.data.Dataset, *, streams: list[_SourceStream],
               choices: mixture_lib.Choices | None, rows: _Rows, order: str,
               num_examples: int, examples_per_process: int,
               local_batch_size: int, start_step: int, skip_corrupt: bool):
    self.num_examples = num_examples  # Global split size (all sources).
    # One epoch's examples on this process (rounded down in global order).
    self.examples_per_process = examples_per_process
    self.local_batch_size = local_batch_size
    self.order = order
    self.start_step = start_step
    self.skip_corrupt = skip_corrupt
    self.skipped = 0  # Records dropped since start (skip_corrupt=True).
    self._streams, self._choices, self._rows = streams, choices, rows
    self.dataset = ds  # The batched tf.data pipeline (its options, its graph).
    spec = dict(ds.element_spec)
    spec.pop(SKIPPED_KEY, None)
    self.element_spec = spec
    self._it = iter(tfds.as_numpy(ds))
    self._batches = 0
    self._ahead: threading.Thread | None = None
    self._ahead_result: tuple[Any, BaseException | None] = (None, None)

  def __iter__(self) -> "TrainIterator":
    return self

  def read_ahead(self) -> None:
    """Starts reading the first batch in a background thread.

    The first batch waits for the shuffle buffer to fill, which with a
    buffer the size of the split means running the cached prefix of the pp
    over the whole split (about 20 s for the contrastive default: decode and
    tokenize 60,000 examples). Started before the model is initialised and
    the train step compiles, that work overlaps with them instead of
    following them. The next `next()` returns this batch (or raises its
    error); the order of batches does not change. No-op once reading began.
    """
    if self._ahead is not None or self._batches:
      return

    def read():
      try:
        self._ahead_result = (self._read(), None)
      except BaseException as e:  # pylint: disable=broad-except
        self._ahead_result = (None, e)  # Raised by the next `next()`.

    self._ahead = threading.Thread(target=read, name="train-input-read-ahead",
                                   daemon=True)
    self._ahead.start()

  def close(self) -> None:
    """Waits for a read-ahead in flight (e.g. before dropping this iterator)."""
    if self._ahead is not None:
      self._ahead.join()

  def __next__(self) -> dict[str, np.ndarray]:
    if self._ahead is not None:
      self._ahead.join()
      (batch, error), self._ahead = self._ahead_result, None
      self._ahead_result = (None, None)
      if error is not None:
        raise error
      return batch
    return self._read()

  def _read(self) -> dict[str, np.ndarray]:
    try:
      batch = next(self._it)
    except tf.errors.OpError as e:
      raise self._bad_example_error(e) from e
    self._batches += 1
    if SKIPPED_KEY in batch:
      self._count_skipped(batch.pop(SKIPPED_KEY))
    return batch

  def _count_skipped(self, dropped: np.ndarray) -> None:
    new = int(np.sum(dropped))
    if new:
      self.skipped += new
      logging.warning("Input: skipped %d bad record(s), %d so far "
                      "(skip_corrupt=True; TF's warnings above say why).",
                      new, self.skipped)

  def _bad_example_error(self, error: tf.errors.OpError) -> BadExampleError:
    """Finds the record behind `error` by replaying the failed batch."""
    found = []
    try:
      for position in self._rows.of_step(self.start_step + self._batches):
        if self._choices is None:
          stream, local = self._streams[0], position
        else:
          # Source positions are absolute, like the mixture's.
          source, local = self._choices.locate(position)
          stream = self._streams[source]
        found += stream.describe_position(local)
        if len(found) >= _MAX_REPORTED:
          break
      if not found:  # E.g. a cached prefix failed: scan the records.
        for stream in self._streams:
          found += stream.find_bad_records()
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("Could not locate the bad record: %s", e)
    return _error_message(error, found, self.skip_corrupt)


def _error_message(error: tf.errors.OpError,
                   found: Sequence[tuple[str, str | None]],
                   skip_corrupt: bool = False) -> BadExampleError:
  tf_message = str(error.message if hasattr(error, "message") else error)
  tf_message = tf_message.strip().splitlines()[0][:500]
  if not found:
    return BadExampleError(f"Reading or preprocessing the input failed: "
                           f"{tf_message}")
  lines = [f"  {where}: {why or tf_message}" for where, why in found]
  if skip_corrupt:
    return BadExampleError(
        "With input.skip_corrupt=True, two epochs' worth of records failed "
        "in a row (every record fails, or nearly), so the pp string (not the "
        "data) is the likely culprit. For example:\n"
        + "\n".join(lines))
  return BadExampleError(
      "Bad input record(s) (corrupt/truncated image, or a pp op rejected "
      "it); fix or remove them, or set input.skip_corrupt=True to skip "
      "and count them:\n" + "\n".join(lines))


def make_train_iterator(
    data: Any, pp: str, global_batch_size: int, *, seed: int,
    start_step: int = 0, shuffle_buffer_size: int = 50_000,
    cache: bool = False, prefetch: int = 2,
    num_parallel_calls: int | None = None,
    process_index: int | None = None, process_count: int | None = None,
    skip_corrupt: bool = False, order: str = "global",
    num_steps: int | None = None,
) -> TrainIterator:
  """Reshuffled, augmented training batches for this process (infinite by default).

  Args:
    data: `{"name": tfds name, "split": split, "data_dir": None or dir}`, or
      a list of such dicts with a `"weight"` each (a mixture; each may have
      its own `"pp"` that runs before `pp`).
    pp: the pp string; random ops get a per-example seed.
    global_batch_size: examples per step over all processes; each process
      yields `global_batch_size // process_count` of them.
    seed: the global data seed. Order and augmentation depend only on it
      (and, in the per_process order, on the process).
    start_step: first step to yield (resume): batch k of this iterator is
      batch `start_step + k` of an uninterrupted one.
    shuffle_buffer_size: tf.data shuffle buffer (examples, per source).
    cache: keep the decoded, not yet augmented records (the output of the pp
      ops before the first random one) in memory. In the global order every
      process caches (so decodes once) the whole split.
    prefetch: batches to prefetch.
    num_parallel_calls: parallelism of the pp map (None: the CPUs this
      process may use; the pipeline runs without tf.data's autotuner, see
      `tf_options`).
    process_index, process_count: default to JAX's; override for tests.
    skip_corrupt: drop (and count, in `.skipped`) records that fail to
      decode or preprocess instead of failing with `BadExampleError`.
    order: `config.input.order`. "global" (default): step k's global batch
      is the same for any number of processes; process p yields its rows
      [p * B/P, (p + 1) * B/P). "per_process": each process reads and
      shuffles only its own contiguous share (least I/O; the data order
      depends on the process count). See the module doc.
    num_steps: the number of batches to yield (None: endless). Records past
      the last of them are never read, decoded or shuffled (unless
      skip_corrupt, which needs an open end).
  """
  if order not in ORDERS:
    raise ValueError(f"input.order={order!r} is not one of {ORDERS}.")
  num_parallel_calls = tf_options.resolve_parallelism(num_parallel_calls)
  sources = data_sources(data)
  index, count = _processes(process_index, process_count)
  batch = local_batch_size(global_batch_size, count)
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}.")
  if order == "global":
    # Every process runs the same (whole-split) streams and keeps its rows.
    share_index, share_count = 0, 1
    rows = _Rows(global_batch_size, index * batch, batch)
  else:
    share_index, share_count = index, count
    rows = _Rows(batch, 0, batch)
  streams = [
      _SourceStream(s, pp, seed=seed, source_index=i,
                    num_sources=len(sources), share_index=share_index,
                    share_count=share_count,
                    shuffle_buffer_size=shuffle_buffer_size, cache=cache,
                    num_parallel_calls=num_parallel_calls,
                    skip_corrupt=skip_corrupt)
      for i, s in enumerate(sources)]
  start = start_step * rows.batch  # First position of the (mixed) stream.
  # With skip_corrupt, dropped records are replaced by later ones: no end.
  end = None if num_steps is None or skip_corrupt else (start_step + num_steps) * rows.batch
  if len(streams) == 1:
    choices = None
    ds = streams[0].dataset(start, rows, stop=end)
  else:
    weights = mixture_lib.normalized_weights(
        [s["weight"] for s in sources], [_label(s) for s in sources])
    choices = mixture_lib.Choices(weights, seed=seed,
                                  process_index=share_index)
    offsets = [int(c) for c in choices.counts_before(start)]
    stops = ([None] * len(streams) if end is None
             else [int(c) for c in choices.counts_before(end)])
    parts = [st.dataset(o, rows, None if rows.everything
                        else choices.positions_of(i, start), stop=stop)
             for i, (st, o, stop) in enumerate(zip(streams, offsets, stops))]
    _check_same_structure(parts, sources)
    selector = choices.dataset(start)
    if not rows.everything:  # The sources of this process's rows only.
      selector = tf.data.Dataset.zip(
          tf.data.Dataset.range(start, np.iinfo(np.int64).max), selector)
      selector = selector.filter(_plain(lambda g, _: rows.owns(g)))
      selector = selector.map(_plain(lambda _, source: source))
    ds = tf.data.Dataset.choose_from_datasets(parts, selector)
  ds = tf_options.apply(ds.batch(batch, drop_remainder=True).prefetch(prefetch))
  return TrainIterator(
      ds, streams=streams, choices=choices, rows=rows, order=order,
      num_examples=sum(st.num_examples for st in streams),
      examples_per_process=sum(st.n for st in streams) * batch // rows.batch,
      local_batch_size=batch, start_step=start_step,
      skip_corrupt=skip_corrupt)


def _check_same_structure(parts: list[tf.data.Dataset],
                          sources: list[dict]) -> None:
  specs = [p.element_spec for p in parts]
  for source, spec in zip(sources[1:], specs[1:]):
    same_keys = set(spec) == set(specs[0])
    if not same_keys or any(
        spec[k].dtype != specs[0][k].dtype
        or not spec[k].shape.is_compatible_with(specs[0][k].shape)
        for k in spec):
      raise ValueError(
          f"Mixture sources must give the same keys, dtypes and shapes after "
          f"pp; {_label(sources[0])} gives {_describe_spec(specs[0])} but "
          f"{_label(source)} gives {_describe_spec(spec)}. Give the sources "
          f"their own 'pp' to rename/convert features.")


def _describe_spec(spec: dict) -> str:
  return "{" + ", ".join(f"{k}: {v.dtype.name}{v.shape}"
                         for k, v in sorted(spec.items())) + "}"


def _zeros_like_spec(spec: tf.TensorSpec, key: str) -> tf.Tensor:
  if not spec.shape.is_fully_defined():
    raise ValueError(
        f"Eval pp output {key!r} has shape {spec.shape}; evaluation batches "
        f"are padded, so every key needs a fixed shape (resize/crop images, "
        f"or drop/keep keys).")
  if spec.dtype == tf.string:
    return tf.fill(spec.shape, "")
  return tf.zeros(spec.shape, spec.dtype)


@dataclasses.dataclass
class _EvalPlan:
  records: _Records
  fn: Callable[[dict], dict]


class EvalIterable:
  """Re-iterable fixed-order eval batches; `len()` is the batch count.

  After a full pass, `skipped` is the number of this process's records that
  were dropped as bad (only with `skip_corrupt=True`).
  """

  def __init__(self, ds: tf.data.Dataset, num_batches: int,
               num_examples: int, plan: _EvalPlan, skip_corrupt: bool):
    self.dataset = ds  # The batched tf.data pipeline (its options, its graph).
    self.num_batches = num_batches
    self.num_examples = num_examples  # Real examples on this process.
    self.element_spec = ds.element_spec
    self.skipped = 0
    self._plan = plan
    self._skip_corrupt = skip_corrupt
    self._it = None
    self._pos = 0

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    # One repeating iterator serves every pass: a pass takes exactly
    # `num_batches` batches and never asks the dataset for its end, so a pass
    # neither rebuilds the iterator nor tears it down. (With tf.data's
    # autotuner, now off (`tf_options`), each teardown waited for its thread:
    # 5-6 s at the end of 4 of 5 eval passes on a busy host.)
    if self._it is None:
      self._it, self._pos = iter(tfds.as_numpy(self.dataset.repeat())), 0
    if self._pos:  # A previous pass stopped early: realign to a pass boundary.
      for _ in range(self.num_batches - self._pos):
        next(self._it)
      self._pos = 0
    seen = 0
    for _ in range(self.num_batches):
      try:
        batch = next(self._it)
      except tf.errors.OpError as e:
        self._it = None
        raise self._bad_example_error(e) from e
      self._pos = (self._pos + 1) % self.num_batches
      seen += int(batch[MASK_KEY].sum())
      yield batch
    self.skipped = self.num_examples - seen
    if self.skipped:
      logging.warning("Eval input: skipped %d bad record(s) of %d "
                      "(skip_corrupt=True).", self.skipped, self.num_examples)

  def _bad_example_error(self, error: tf.errors.OpError) -> BadExampleError:
    """Scans this process's records for the ones that fail."""
    records, found = self._plan.records, []
    try:
      check = tf.autograph.experimental.do_not_convert(
          lambda i, ex: (i, self._plan.fn(ex)))
      ds = tf.data.Dataset.zip(tf.data.Dataset.range(records.share.size),
                               records.dataset())
      ok = {int(i) for i, _ in ds.map(check, tf_options.parallelism())
            .ignore_errors().as_numpy_iterator()}
      for index in [i for i in range(records.share.size)
                    if i not in ok][:_MAX_REPORTED]:
        raw = next(iter(records.dataset(records.share.record_spec(index))))
        found.append((records.describe(index, tfds.as_numpy(raw)),
                      _reproduce(self._plan.fn, raw)))
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("Could not locate the bad record: %s", e)
    return _error_message(error, found)


def make_eval_iterator(
    data: dict, pp: str, global_batch_size: int, *, cache: bool = True,
    prefetch: int = 2, num_parallel_calls: int | None = None,
    process_index: int | None = None, process_count: int | None = None,
    skip_corrupt: bool = False,
) -> tuple[EvalIterable, int]:
  """Every example of the split once (over all processes), padded batches.

  Returns `(iterable, num_batches)`; `num_batches` is the same on every
  process (from the largest share); padding examples are zeros with
  `_mask=False`. `cache=True` keeps the preprocessed examples in memory after
  the first pass: fine for small sets, too big for ImageNet-size ones. Every
  batch has a `file_name` (padding: ""): the dataset's own feature, or for a
  dataset without one (e.g. TFDS fashion_mnist) the record's position in its
  split, "test_00042" (`Share.record_names`; the names
  `fashion_mnist_captions` gives the same images), so that prediction dumps
  of any dataset can be joined to labels and re-scored.
  `skip_corrupt=True` drops records that fail (they are not counted; the
  iterable's `skipped` says how many) instead of raising `BadExampleError`.
  """
  if isinstance(data, (list, tuple)):
    raise ValueError(f"Eval data must be one source dict, got a list of "
                     f"{len(data)}: {data!r}.")
  (source,) = data_sources(data)
  if source.get("weight") is not None or source.get("pp"):
    raise ValueError(f"Eval data {_label(source)}: 'weight' and per-source "
                     f"'pp' are for training mixtures only.")
  index, count = _processes(process_index, process_count)
  batch = local_batch_size(global_batch_size, count)
  # The evaluator's `data`; make_evaluators prefixes "config.evals.NAME: ".
  builder = tfds_source.get_builder(source["name"], source.get("data_dir"), key="data.name")
  shares = [splits_lib.process_share(builder, source["split"],
                                     process_index=i, process_count=count,
                                     drop_remainder=False)
            for i in range(count)]
  sizes = [s.size for s in shares]
  if max(sizes) == 0:
    raise ValueError(f"Data {_label(source)} is empty.")
  num_batches = math.ceil(max(sizes) / batch)
  _, _, is_random = pp_builder.split_deterministic_prefix(pp)
  if is_random:
    first = next(op for op in pp_builder.parse_ops(pp)
                 if pp_builder.is_random(op))
    raise pp_builder.PPError(
        f"Eval pp op {first.index} {first.token!r} is random and needs a "
        f"per-example seed; evaluation must be deterministic: {pp!r}")
  preprocess = pp_builder.get_preprocess_fn(pp)
  records = _Records(source, shares[index], pp, builder)
  has_file_name = FILE_NAME_KEY in builder.info.features

  def fn(example):
    out = preprocess(records.decode(example))
    if FILE_NAME_KEY in example and FILE_NAME_KEY not in out:
      out[FILE_NAME_KEY] = example[FILE_NAME_KEY]
    return out

  @tf.autograph.experimental.do_not_convert
  def with_mask(example):
    example = fn(example)
    if MASK_KEY in example:
      raise ValueError(f"The eval pp output already has a {MASK_KEY!r} key.")
    return {**example, MASK_KEY: tf.constant(True)}

  ds = records.dataset()
  if not has_file_name:
    names = tf.data.Dataset.from_tensor_slices(
        tf.constant(shares[index].record_names() or [""], tf.string))
    ds = tf.data.Dataset.zip(ds, names.take(shares[index].size)).map(
        lambda example, name: {**example, FILE_NAME_KEY: name})
  ds = ds.map(with_mask, tf_options.resolve_parallelism(num_parallel_calls))
  if skip_corrupt:
    ds = ds.ignore_errors(log_warning=True)
  if cache:
    ds = ds.cache()
  padding = {k: _zeros_like_spec(spec, k)
             for k, spec in ds.element_spec.items()}
  padding[MASK_KEY] = tf.constant(False)
  # Pad to the same number of batches everywhere (also after skipped records).
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
  ds = ds.take(num_batches * batch)
  ds = tf_options.apply(ds.batch(batch, drop_remainder=True).prefetch(prefetch))
  iterable = EvalIterable(ds, num_batches, sizes[index],
                          _EvalPlan(records, fn), skip_corrupt)
  return iterable, num_batches


def split_host_keys(batch: dict[str, np.ndarray]
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """(device part, host part): strings like `file_name` stay on the host."""
  device, host = {}, {}
  for k, v in batch.items():
    (host if v.dtype.kind in "OSU" else device)[k] = v
  return device, host
