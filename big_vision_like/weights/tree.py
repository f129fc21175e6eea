"""Nested parameter dicts <-> flat "/"-joined names, and layout fix-ups.

Converters work on plain nested dicts of numpy arrays; these helpers are the
shared vocabulary (no jax needed).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np


def nest(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
  """{"a/b": x} -> {"a": {"b": x}}; a name that is both a leaf and a prefix fails."""
  out: dict[str, Any] = {}
  for name, value in flat.items():
    node = out
    *parents, leaf = name.split(sep)
    for p in parents:
      node = node.setdefault(p, {})
      if not isinstance(node, dict):
        raise ValueError(f"weights: {name!r} is below a leaf named {p!r}")
    if leaf in node:
      raise ValueError(f"weights: {name!r} appears twice")
    node[leaf] = value
  return out


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": x}} -> {"a/b": x} (dicts only; leaves are anything else)."""
  out: dict[str, Any] = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, name + "/"))
    else:
      out[name] = v
  return out


_INDEXED = re.compile(r"^(.*)_(\d+)$")


def renumber_modules(tree: dict[str, Any]) -> dict[str, Any]:
  """Auto-named modules numbered per class from 0, at every level.

  Pre-linen flax numbered children across all classes (the original ViT
  checkpoints have LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2,
  MlpBlock_3); linen numbers each class separately (LayerNorm_0,
  MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0). Names other than
  CamelCase `Name_N` (e.g. encoderblock_3, Dense_0 kept in order) are kept.
  """
  if not isinstance(tree, dict):
    return tree
  groups: dict[str, list[tuple[int, str]]] = {}
  for k in tree:
    m = _INDEXED.match(k)
    if m and m.group(1)[:1].isupper():
      groups.setdefault(m.group(1), []).append((int(m.group(2)), k))
  rename = {}
  for base, members in groups.items():
    for new_i, (_, old) in enumerate(sorted(members)):
      rename[old] = f"{base}_{new_i}"
  return {rename.get(k, k): renumber_modules(v) for k, v in tree.items()}


def stack_blocks(encoder: dict[str, Any]) -> dict[str, Any]:
  """encoderblock_{0..n-1} -> one "encoderblock" with a leading depth axis."""
  blocks = sorted((int(k.rsplit("_", 1)[1]), k) for k in encoder
                  if re.fullmatch(r"encoderblock_\d+", k))
  if not blocks:
    return encoder
  if [i for i, _ in blocks] != list(range(len(blocks))):
    raise ValueError(f"weights: encoder blocks are not numbered 0..{len(blocks) - 1}: "
                     f"{[k for _, k in blocks]}")
  flats = [flatten(encoder[k]) for _, k in blocks]
  names = set(flats[0])
  for (_, k), f in zip(blocks, flats):
    if set(f) != names:
      raise ValueError(f"weights: {k} has different parameters than encoderblock_0: "
                       f"{sorted(set(f) ^ names)}")
  out = {k: v for k, v in encoder.items() if not re.fullmatch(r"encoderblock_\d+", k)}
  out["encoderblock"] = nest({n: np.stack([f[n] for f in flats]) for n in sorted(names)})
  return out


def unstack_blocks(encoder: dict[str, Any]) -> dict[str, Any]:
  """The inverse of `stack_blocks`."""
  if "encoderblock" not in encoder:
    return encoder
  flat = flatten(encoder["encoderblock"])
  depths = {v.shape[0] for v in flat.values()}
  if len(depths) != 1:
    raise ValueError(f"weights: stacked encoderblock params disagree on depth: {depths}")
  out = {k: v for k, v in encoder.items() if k != "encoderblock"}
  for i in range(depths.pop()):
    out[f"encoderblock_{i}"] = nest({n: v[i] for n, v in flat.items()})
  return out


def unstack_blocks_in(params: dict[str, Any]) -> dict[str, Any]:
  """A copy of `params` with every scanned encoder (at any depth) unstacked."""
  if not isinstance(params, dict):
    return params
  out = {k: unstack_blocks_in(v) for k, v in params.items()}
  return unstack_blocks(out) if "encoderblock" in out else out
