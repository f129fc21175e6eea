"""Preprocessing ops that work on any feature: key plumbing and labels.

Each op is a factory registered in `registry.PP_OPS`; its arguments come from
the pp string and it returns a function on one example dict of tf tensors.
Problems that can be seen at trace time (a missing key, a label of the wrong
rank) raise `ValueError`; the pp builder adds the op's token to the message.
"""

from __future__ import annotations

from typing import Any, Callable

import tensorflow as tf

from big_vision_like.registry import PP_OPS

Example = dict[str, Any]


def _require(data: Example, op: str, *keys: str) -> None:
  missing = [k for k in keys if k not in data]
  if missing:
    available = sorted(k for k in data if not k.startswith("_"))
    raise ValueError(f"{op}: key(s) {missing} not in the example; available "
                     f"keys: {available}.")


@PP_OPS.register("keep")
def get_keep(*keys: str) -> Callable[[Example], Example]:
  """Keeps only the given keys (all must exist) and drops the rest."""
  if not keys:
    raise ValueError("keep needs at least one key.")

  def keep(data):
    _require(data, "keep", *keys)
    return {k: data[k] for k in keys}
  return keep


@PP_OPS.register("drop")
def get_drop(*keys: str) -> Callable[[Example], Example]:
  """Removes the given keys (all must exist)."""

  def drop(data):
    _require(data, "drop", *keys)
    return {k: v for k, v in data.items() if k not in keys}
  return drop


@PP_OPS.register("rename")
def get_rename(**new_to_old: str) -> Callable[[Example], Example]:
  """Renames keys: `rename(labels="label")` moves "label" to "labels"."""
  if not new_to_old:
    raise ValueError("rename needs at least one new=old pair.")

  def rename(data):
    _require(data, "rename", *new_to_old.values())
    olds = set(new_to_old.values())
    clobbered = [n for n in new_to_old if n in data and n not in olds]
    if clobbered:
      raise ValueError(f"rename: target key(s) {clobbered} already exist; "
                       f"drop them first.")
    out = {k: v for k, v in data.items() if k not in olds}
    out.update({new: data[old] for new, old in new_to_old.items()})
    return out
  return rename


@PP_OPS.register("copy")
def get_copy(inkey: str, outkey: str) -> Callable[[Example], Example]:
  """Copies `data[inkey]` to `data[outkey]` (overwriting it)."""

  def copy(data):
    _require(data, "copy", inkey)
    return {**data, outkey: data[inkey]}
  return copy


@PP_OPS.register("onehot")
def get_onehot(depth: int, key: str = "labels", key_result: str | None = None,
               multi: bool = True, on: float = 1.0, off: float = 0.0,
               smoothing: float = 0.0) -> Callable[[Example], Example]:
  """One-hot (float32) encodes integer labels, as big_vision's `onehot`.

  A scalar label gives `[depth]` (`tf.one_hot(label, depth, on, off)`). A
  label vector (or RaggedTensor) gives a multi-hot `[depth]` if `multi`
  (`hot * (on - off) + off`), otherwise one one-hot row per entry.
  `key` defaults to "labels" as in big_vision; ours only: when the example has
  no "labels" but a "label" (TFDS' name), that default reads and writes
  "label" (as our pp strings always did). Also ours only: entries < 0 in a
  multi-hot label set are padding and ignored, labels outside [0, depth)
  fail at run time (big_vision gives zero rows or fails), and
  `smoothing=s` sets on=1-s+s/depth and off=s/depth (label smoothing); it
  cannot be combined with explicit on/off.
  """
  if not isinstance(depth, int) or depth <= 0:
    raise ValueError(f"onehot: depth must be a positive int, got {depth!r}.")
  if not 0.0 <= smoothing < 1.0:
    raise ValueError(f"onehot: smoothing must be in [0, 1), got {smoothing}.")
  if smoothing:
    if (on, off) != (1.0, 0.0):
      raise ValueError("onehot: give either smoothing or on/off, not both.")
    on, off = 1.0 - smoothing + smoothing / depth, smoothing / depth

  def onehot(data):
    src = key
    if key == "labels" and key not in data and "label" in data:
      src = "label"
    _require(data, "onehot", src)
    labels = data[src]
    if isinstance(labels, tf.RaggedTensor):
      labels = labels.flat_values
    labels = tf.convert_to_tensor(labels)
    if not labels.dtype.is_integer:
      raise ValueError(f"onehot: {src!r} must hold integer labels, got "
                       f"{labels.dtype.name}.")
    if labels.shape.rank is None:
      raise ValueError(f"onehot: {src!r} has unknown rank.")
    labels = tf.cast(labels, tf.int32)
    as_multi_hot = multi and labels.shape.rank >= 1
    lowest = -tf.int32.max if as_multi_hot else 0  # Multi-hot: <0 = padding.
    # One check (not two assert ops): this runs per example on the hot path.
    in_range = tf.reduce_all((labels < depth) & (labels >= lowest))
    check = tf.debugging.Assert(in_range, [
        f"pp op onehot: a {src!r} label is outside [0, {depth}):", labels])
    with tf.control_dependencies([check]):
      labels = tf.identity(labels)
    if as_multi_hot:
      # -1 padding gives an all-zero one-hot row, so it drops out of the max.
      flat = tf.reshape(labels, [-1])
      hot = tf.reduce_max(
          tf.concat([tf.one_hot(flat, depth), tf.zeros([1, depth])], 0), 0)
      # big_vision's arithmetic, so that the float32 values agree exactly.
      result = hot * (on - off) + off
    else:
      result = tf.one_hot(labels, depth, on_value=float(on),
                          off_value=float(off), dtype=tf.float32)
    return {**data, key_result or src: result}
  return onehot


def _static_dims(shape: Any, op: str) -> tuple[int | None, ...]:
  """A pp-string shape as a tuple of ints >= 0 and Nones."""
  if isinstance(shape, int) and not isinstance(shape, bool):
    shape = (shape,)
  if not isinstance(shape, (tuple, list)) or not all(
      d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
      for d in shape):
    raise ValueError(f"{op}: shape must be a tuple of ints >= 0 or None "
                     f"(= keep that dimension), got {shape!r}.")
  return tuple(shape)


def _fill_value(value: Any, dtype: tf.DType, key: str,
                op: str) -> tf.Tensor:
  try:
    return tf.constant(value, dtype)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{op}: pad_value {value!r} does not fit {key!r} of "
                     f"dtype {dtype.name}.") from e


_PAD_WHERE = ("after", "before", "both")


@PP_OPS.register("pad_to_shape")
def get_pad_to_shape(shape: Any, pad_value: Any = 0, where: str = "after",
                     key: str = "image", key_result: str | None = None,
                     inkey: str | None = None, outkey: str | None = None
                     ) -> Callable[[Example], Example]:
  """Pads `data[key]` with `pad_value` up to a static `shape`, as big_vision.

  `shape` has one entry per dimension; `None` leaves that dimension as it
  is. The result has that static shape, so variable-length features (label
  sets, tokens, boxes) can be batched. `where` puts the padding "after" the
  values, "before" them, or splits it ("both": the extra one after). As in
  big_vision the key defaults to "image", and `inkey`/`outkey` may name the
  input and output separately. Ours only: `key_result` (= `outkey`), a
  RaggedTensor is first made dense with `pad_value`, and a tensor LARGER
  than `shape` in some dimension fails (nothing is cut off silently).
  """
  dims = _static_dims(shape, "pad_to_shape")
  if where not in _PAD_WHERE:
    raise ValueError(f"pad_to_shape: where must be one of {_PAD_WHERE}, got "
                     f"{where!r}.")
  if key_result and outkey and key_result != outkey:
    raise ValueError(f"pad_to_shape: give key_result or outkey, not both "
                     f"({key_result!r}, {outkey!r}).")
  if key != "image":  # big_vision: `key` names both input and output.
    inkey, outkey = key, key_result or key
  else:
    inkey, outkey = inkey or key, key_result or outkey or key
  key = inkey

  def pad_to_shape(data):
    _require(data, "pad_to_shape", key)
    value = data[key]
    dtype = value.dtype if isinstance(value, tf.RaggedTensor) else (
        tf.convert_to_tensor(value).dtype)
    fill = _fill_value(pad_value, dtype, key, "pad_to_shape")
    if isinstance(value, tf.RaggedTensor):
      value = value.to_tensor(default_value=fill)
    value = tf.convert_to_tensor(value)
    if value.shape.rank != len(dims):
      raise ValueError(f"pad_to_shape: {key!r} has shape {value.shape} "
                       f"(rank {value.shape.rank}), but the wanted shape "
                       f"{dims} has rank {len(dims)}.")
    too_large = [(have, want) for have, want in zip(value.shape, dims)
                 if have is not None and want is not None and have > want]
    if too_large:
      raise ValueError(f"pad_to_shape: {key!r} has shape {value.shape}, "
                       f"larger than the wanted shape {dims}.")
    actual = tf.shape(value)
    wanted = tf.stack([actual[i] if d is None else d
                       for i, d in enumerate(dims)]) if dims else actual
    check = tf.debugging.Assert(
        tf.reduce_all(actual <= wanted),
        # (Assert escapes quotes in its strings, so key= instead of repr.)
        [f"pp op pad_to_shape: key={key} has shape", actual,
         f"which is larger than the wanted shape {dims}"])
    with tf.control_dependencies([check]):
      extra = wanted - actual
    before = {"after": tf.zeros_like(extra), "before": extra,
              "both": extra // 2}[where]
    padded = tf.pad(value, tf.stack([before, extra - before], axis=1),
                    constant_values=fill)
    padded.set_shape([value.shape[i] if d is None else d
                      for i, d in enumerate(dims)])
    return {**data, outkey: padded}
  return pad_to_shape


_MAX_LABEL = 1_000_000
# Named label maps of `map_label`: a 200-class subset of ImageNet-1k.
_SUBSET_MAPS = {"imagenet_a": "imagenet_a", "imagenet_r": "imagenet_r",
                "imagenet_a_to_1k": "imagenet_a",
                "imagenet_r_to_1k": "imagenet_r"}


def _label_table(mapping: Any) -> dict[int, int | None]:
  """`map_label`'s mapping argument as {old id: new id or None}."""
  if isinstance(mapping, str):
    if mapping not in _SUBSET_MAPS:
      raise ValueError(f"map_label: unknown named mapping {mapping!r}; known: "
                       f"{sorted(_SUBSET_MAPS)} (or give a dict or list).")
    # Imported here: it reads the class lists from package files.
    from big_vision_like.data import imagenet_classes  # pylint: disable=g-import-not-at-top
    ids = imagenet_classes.subset_indices(_SUBSET_MAPS[mapping])
    if mapping.endswith("_to_1k"):
      return dict(enumerate(ids))
    return {old: new for new, old in enumerate(ids)}
  if isinstance(mapping, (list, tuple)):
    table = dict(enumerate(mapping))
  elif isinstance(mapping, dict):
    table = dict(mapping)
  else:
    raise ValueError(f"map_label: mapping must be a dict {{old: new}}, a list "
                     f"indexed by old id, or a name in {sorted(_SUBSET_MAPS)}; "
                     f"got {mapping!r}.")
  if not table:
    raise ValueError("map_label: the mapping is empty.")

  def is_id(x):
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0
  bad = [(k, v) for k, v in table.items()
         if not is_id(k) or not (v is None or is_id(v))]
  if bad:
    raise ValueError(f"map_label: old and new labels must be ints >= 0 (new "
                     f"may be None = unknown); bad entries (old, new): "
                     f"{bad[:5]}.")
  if max(table) >= _MAX_LABEL:
    raise ValueError(f"map_label: old labels must be < {_MAX_LABEL:,} (the "
                     f"map is a dense table), got {max(table)}.")
  return table


@PP_OPS.register("map_label")
def get_map_label(mapping: Any, key: str = "label",
                  key_result: str | None = None, unknown: int | None = -1,
                  drop_unknown: bool = False) -> Callable[[Example], Example]:
  """Maps integer labels through a table, elementwise.

  `mapping` is a dict `{old: new}`, a list (`new = mapping[old]`; None
  entries have no mapping), or a built-in name:
    "imagenet_a", "imagenet_r": ImageNet-1k id -> index 0..199 of the class
      in the 200-class subset (ImageNet-A / ImageNet-R label order);
    "imagenet_a_to_1k", "imagenet_r_to_1k": the inverse.
  Works on a scalar label, a label vector and a RaggedTensor of label sets.
  A label without a mapping becomes `unknown` (default -1, which `onehot`
  treats as padding, so such entries drop out of a multi-hot target); with
  `unknown=None` it fails at run time instead, naming the labels. Negative
  labels are padding and pass through unchanged. `drop_unknown=True`
  removes unmapped entries from a 1-D label set or a RaggedTensor (the
  result's length varies).
  """
  table = _label_table(mapping)
  if unknown is not None and (isinstance(unknown, bool)
                              or not isinstance(unknown, int)):
    raise ValueError(f"map_label: unknown must be an int or None, got "
                     f"{unknown!r}.")
  if drop_unknown and unknown is None:
    raise ValueError("map_label: give drop_unknown=True or unknown=None "
                     "(fail on unmapped labels), not both.")
  key_result = key_result or key
  size = max(table) + 1
  new_ids = [0] * size
  known = [False] * size
  for old, new in table.items():
    if new is not None:
      new_ids[old], known[old] = new, True
  name = mapping if isinstance(mapping, str) else "the given mapping"

  def lookup(labels):
    if not labels.dtype.is_integer:
      raise ValueError(f"map_label: {key!r} must hold integer labels, got "
                       f"{labels.dtype.name}.")
    ids = tf.cast(labels, tf.int64)
    index = tf.clip_by_value(ids, 0, size - 1)
    mapped = tf.gather(tf.constant(new_ids, tf.int64), index)
    has = tf.gather(tf.constant(known), index) & (ids >= 0) & (ids < size)
    padding = ids < 0
    if unknown is None:
      check = tf.debugging.Assert(
          tf.reduce_all(has | padding),
          [f"pp op map_label: key={key} has label(s) without an entry in "
           f"{name}:",
           tf.boolean_mask(tf.reshape(ids, [-1]),
                           tf.reshape(~(has | padding), [-1]))])
      with tf.control_dependencies([check]):
        mapped = tf.identity(mapped)
    fallback = tf.where(padding, ids, -1 if unknown is None else unknown)
    return tf.cast(tf.where(has, mapped, fallback), labels.dtype), has | padding

  def map_label(data):
    _require(data, "map_label", key)
    labels = data[key]
    if isinstance(labels, tf.RaggedTensor):
      out, keep = lookup(labels.flat_values)
      out = labels.with_flat_values(out)
      if drop_unknown:
        out = tf.ragged.boolean_mask(out, labels.with_flat_values(keep))
      return {**data, key_result: out}
    labels = tf.convert_to_tensor(labels)
    out, keep = lookup(labels)
    if drop_unknown:
      if labels.shape.rank != 1:
        raise ValueError(f"map_label: drop_unknown needs a 1-D label set or "
                         f"a RaggedTensor, {key!r} has shape {labels.shape}.")
      out = tf.boolean_mask(out, keep)
    return {**data, key_result: out}
  return map_label
