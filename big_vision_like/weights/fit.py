"""Loading converted weights into a model: big_vision's `model_load` semantics.

`fit(loaded, target, skip=...)` returns a tree shaped like `target` (the
model's freshly initialised params, possibly sharded jax arrays, or their
`ShapeDtypeStruct`s) holding the loaded values:

- parameters whose name fully matches a `skip` regex keep the target's value
  (e.g. `head/.*` for a new, zero-initialised classifier);
- a learned ViT position embedding of another grid size is resampled
  bilinearly to the target grid (as `scipy.ndimage.zoom(order=1)`, big_vision's
  rule), the class-token position is kept as is: fine-tuning at a new
  resolution just works;
- transformer blocks saved as a python loop (`encoderblock_0..n`) load into a
  scanned model (`encoderblock` with a leading depth axis) and back;
- attention kernels with merged heads ([width, heads*dim], as torch stores
  them) are split by the target's head count;
- anything else that does not fit is an error naming every missing,
  unexpected and mis-shaped parameter with its shapes; nothing is loaded
  silently half-way.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Sequence

import jax
import numpy as np
import scipy.ndimage

from big_vision_like import params as params_lib
from big_vision_like.weights import tree as tree_lib

logger = logging.getLogger(__name__)

_ATTN = re.compile(r"(^|.*/)MultiHeadDotProductAttention_\d+/(query|key|value|out)/(kernel|bias)$")


def _align_layout(loaded: Any, target: Any) -> Any:
  """Stacks/unstacks encoder blocks wherever the target uses the other layout."""
  if not isinstance(loaded, dict) or not isinstance(target, dict):
    return loaded
  if "encoderblock" in target and "encoderblock_0" in loaded:
    loaded = tree_lib.stack_blocks(loaded)
  elif "encoderblock_0" in target and "encoderblock" in loaded:
    loaded = tree_lib.unstack_blocks(loaded)
  return {k: _align_layout(v, target.get(k)) for k, v in loaded.items()}


def resample_posemb(old: np.ndarray, new_len: int, num_prefix: int = 0) -> np.ndarray:
  """[1, prefix + g*g, D] -> [1, prefix + G*G, D] by bilinear zoom of the grid.

  The first `num_prefix` positions (a class token's) are kept unchanged. The
  grid is zoomed with `scipy.ndimage.zoom(order=1)`, which maps the corner
  positions onto the new corners.
  """
  if old.ndim != 3 or old.shape[0] != 1:
    raise ValueError(f"position embedding of shape {old.shape}: expected [1, tokens, width]")
  prefix, grid = old[:, :num_prefix], old[0, num_prefix:]
  g_old, g_new = int(round(len(grid) ** 0.5)), int(round((new_len - num_prefix) ** 0.5))
  if g_old ** 2 != len(grid) or g_new ** 2 != new_len - num_prefix:
    raise ValueError(f"position embedding {old.shape} -> {new_len} tokens: only square "
                     f"grids can be resampled ({len(grid)} and {new_len - num_prefix} "
                     f"grid tokens after {num_prefix} class-token position(s))")
  grid = grid.reshape(g_old, g_old, -1).astype(np.float32)
  zoomed = scipy.ndimage.zoom(grid, (g_new / g_old, g_new / g_old, 1), order=1)
  return np.concatenate([prefix.astype(np.float32),
                         zoomed.reshape(1, g_new * g_new, -1)], axis=1)


def _place(value: np.ndarray, like: Any) -> Any:
  """`value` as the target leaf's dtype (and sharding, where it has one)."""
  value = np.asarray(value).astype(like.dtype)
  sharding = getattr(like, "sharding", None)
  if sharding is None or isinstance(like, np.ndarray):
    return value
  return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


def fit(loaded: dict[str, Any], target: Any, *, skip: Sequence[str] = (),
        source: str = "weights") -> Any:
  """`loaded` (nested dict of arrays) into the structure of `target`; see module doc."""
  skip_res = [re.compile(p) for p in skip]
  skipped = lambda name: any(r.fullmatch(name) for r in skip_res)
  target_plain = jax.tree.map(lambda x: x, target)
  loaded = _align_layout(loaded, _as_dict(target_plain))
  flat_loaded = tree_lib.flatten(loaded)
  target_leaves = params_lib.flatten_with_names(target)
  target_names = {n for n, _ in target_leaves}

  values, missing, mismatched, notes = {}, [], [], []
  for name, leaf in target_leaves:
    if skipped(name):
      continue
    if name not in flat_loaded:
      missing.append(f"{name} {tuple(leaf.shape)}")
      continue
    value = np.asarray(flat_loaded[name])
    want = tuple(leaf.shape)
    if value.shape != want:
      value = _adapt(name, value, want, target_names)
      if value is None:
        mismatched.append(f"{name}: {source} has {tuple(np.shape(flat_loaded[name]))}, "
                          f"the model {want}")
        continue
      notes.append(f"{name} {tuple(np.shape(flat_loaded[name]))} -> {want}")
    values[name] = value
  unexpected = [f"{n} {tuple(np.shape(v))}" for n, v in flat_loaded.items()
                if n not in target_names and not skipped(n)]

  problems = []
  if mismatched:
    problems.append("mis-shaped (a new head needs skip=['head/.*']):\n    "
                    + "\n    ".join(mismatched))
  if missing:
    problems.append(f"missing from {source}:\n    " + "\n    ".join(missing))
  if unexpected:
    problems.append(f"in {source} but not in the model:\n    " + "\n    ".join(unexpected))
  if problems:
    raise ValueError(f"cannot load {source} into the model:\n  " + "\n  ".join(problems))
  unused = [p for p, r in zip(skip, skip_res)
            if not any(r.fullmatch(n) for n in target_names | set(flat_loaded))]
  if unused:
    logger.warning("%s: skip regexes %s match no parameter", source, unused)
  for note in notes:
    logger.info("%s: adapted %s", source, note)
  return jax.tree_util.tree_map_with_path(
      lambda p, x: _place(values[n], x) if (n := params_lib.path_to_str(p)) in values else x,
      target)


def _as_dict(tree: Any) -> Any:
  if hasattr(tree, "items"):
    return {k: _as_dict(v) for k, v in tree.items()}
  return tree


def _adapt(name: str, value: np.ndarray, want: tuple[int, ...],
           target_names: set[str]) -> np.ndarray | None:
  """A loaded value reshaped/resampled to `want`, or None if it cannot fit."""
  if _ATTN.match(name) and value.size == int(np.prod(want)):
    # Merged heads: [D, H*K] -> [D, H, K], [H*K] -> [H, K], [H*K, D] -> [H, K, D].
    return value.reshape(want)
  if name.endswith("pos_embedding") and value.ndim == 3 and len(want) == 3 \
      and value.shape[2] == want[2]:
    parent = name[:-len("pos_embedding")]
    if f"{parent}embedding/kernel" not in target_names:
      return None  # a text tower's sequence positions: no grid to resample
    num_prefix = 1 if f"{parent}cls" in target_names else 0
    try:
      return resample_posemb(value, want[1], num_prefix)
    except ValueError:
      return None  # not a square grid either side: reported as mis-shaped
  return None
