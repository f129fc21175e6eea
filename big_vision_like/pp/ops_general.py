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
def get_onehot(depth: int, key: str = "label", key_result: str | None = None,
               multi: bool = True, on: float = 1.0, off: float = 0.0,
               smoothing: float = 0.0) -> Callable[[Example], Example]:
  """One-hot (float32) encodes integer labels.

  A scalar label gives `[depth]`. A label vector (or RaggedTensor) gives a
  multi-hot `[depth]` if `multi` (entries < 0 are padding and ignored),
  otherwise one one-hot row per entry. `smoothing=s` sets on=1-s+s/depth and
  off=s/depth (label smoothing); it cannot be combined with explicit on/off.
  Labels outside [0, depth) fail at run time instead of giving zero rows.
  """
  if not isinstance(depth, int) or depth <= 0:
    raise ValueError(f"onehot: depth must be a positive int, got {depth!r}.")
  if not 0.0 <= smoothing < 1.0:
    raise ValueError(f"onehot: smoothing must be in [0, 1), got {smoothing}.")
  if smoothing:
    if (on, off) != (1.0, 0.0):
      raise ValueError("onehot: give either smoothing or on/off, not both.")
    on, off = 1.0 - smoothing + smoothing / depth, smoothing / depth
  key_result = key_result or key

  def onehot(data):
    _require(data, "onehot", key)
    labels = data[key]
    if isinstance(labels, tf.RaggedTensor):
      labels = labels.flat_values
    labels = tf.convert_to_tensor(labels)
    if not labels.dtype.is_integer:
      raise ValueError(f"onehot: {key!r} must hold integer labels, got "
                       f"{labels.dtype.name}.")
    if labels.shape.rank is None:
      raise ValueError(f"onehot: {key!r} has unknown rank.")
    labels = tf.cast(labels, tf.int32)
    as_multi_hot = multi and labels.shape.rank >= 1
    lowest = -tf.int32.max if as_multi_hot else 0  # Multi-hot: <0 = padding.
    checks = [
        tf.debugging.assert_less(
            labels, depth, message=f"pp op onehot: a {key!r} label >= {depth}"),
        tf.debugging.assert_greater_equal(
            labels, lowest, message=f"pp op onehot: a {key!r} label is < 0"),
    ]
    with tf.control_dependencies(checks):
      labels = tf.identity(labels)
    if as_multi_hot:
      # -1 padding gives an all-zero one-hot row, so it drops out of the max.
      flat = tf.reshape(labels, [-1])
      hot = tf.reduce_max(
          tf.concat([tf.one_hot(flat, depth), tf.zeros([1, depth])], 0), 0)
    else:
      hot = tf.one_hot(labels, depth)
    return {**data, key_result: off + (on - off) * hot}
  return onehot
