"""Durations in any unit: `_steps`, `_epochs`, `_examples` or `_percent`.

A config says `total_epochs=90`, `log_training_steps=50`, `ckpt_percent=10` or
`warmup_examples=1_000_000`; everything is turned into a number of steps here.
Setting the same duration in two units is an error (which one would win?).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

UNITS = ("steps", "epochs", "examples", "percent")


def _get(config: Any, key: str) -> Any:
  if isinstance(config, Mapping):
    return config.get(key)
  return getattr(config, key, None) if key in config else None


def which_set(config: Any, prefix: str) -> list[str]:
  """The `{prefix}_{unit}` keys that are set (not None) in `config`."""
  return [f"{prefix}_{u}" for u in UNITS if _get(config, f"{prefix}_{u}") is not None]


def to_steps(config: Any, prefix: str, *, batch_size: int,
             num_examples: int | None = None, total_steps: int | None = None,
             default: int | None = None, where: str = "config") -> int | None:
  """Resolves `{prefix}_{steps|epochs|examples|percent}` into a step count.

  Args:
    config: a ConfigDict or mapping holding the keys.
    prefix: e.g. "total", "log_training", "ckpt", "warmup".
    batch_size: global batch size (examples per step).
    num_examples: examples per epoch; needed for `_epochs`.
    total_steps: needed for `_percent`.
    default: returned when no unit is set.
    where: prefix for error messages (e.g. "config.evals.val").
  Returns:
    The number of steps (at least 1 for a positive duration), or `default`.
  """
  keys = which_set(config, prefix)
  if not keys:
    return default
  if len(keys) > 1:
    raise ValueError(f"{where}: set only one of {', '.join(keys)}")
  key = keys[0]
  value = _get(config, key)
  unit = key[len(prefix) + 1:]
  if not isinstance(value, (int, float)) or value < 0:
    raise ValueError(f"{where}.{key} must be a non-negative number, got {value!r}")
  if unit == "steps":
    steps = value
  elif unit == "examples":
    steps = value / batch_size
  elif unit == "epochs":
    if not num_examples:
      raise ValueError(f"{where}.{key}: the dataset size is unknown, so epochs "
                       "cannot be converted to steps; use _steps instead")
    steps = value * num_examples / batch_size
  else:  # percent
    if total_steps is None:
      raise ValueError(f"{where}.{key}: percent needs the total number of steps")
    steps = value / 100 * total_steps
  if value == 0:
    return 0
  return max(1, int(math.ceil(steps - 1e-9)))
