"""Which library wrote a weight file, and its params in our layout.

`import_weights(path)` reads a file (`files.read`), detects its format from
its key names and converts it: the result names our model, the fields the
tensors determine, and the params as a nested dict of numpy arrays, ready for
`fit` into a model built from (zoo or config) fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from big_vision_like.weights import big_vision, files, open_clip, timm

FORMATS = ("timm_vit", "timm_resnetv2", "open_clip", "big_vision", "bit")


@dataclasses.dataclass
class Imported:
  format: str
  model: str  # our registry name: "vit", "resnet", "two_tower"
  fields: dict[str, Any]  # model fields the tensors determine
  params: dict[str, Any]  # nested dict of numpy arrays, our names


def detect(flat: dict[str, np.ndarray]) -> str:
  """The format of a flat state dict, from its key names."""
  keys = set(flat)
  if "patch_embed.proj.weight" in keys:
    return "timm_vit"
  if "stem.conv.weight" in keys and any(k.startswith("stages.") for k in keys):
    return "timm_resnetv2"
  if any(k.startswith("visual.") for k in keys) and "token_embedding.weight" in keys:
    return "open_clip"
  if big_vision.is_bit(flat):
    return "bit"
  if any("/" in k for k in keys):
    return "big_vision"
  raise ValueError("unrecognised weight layout (not timm ViT/ResNetV2, open_clip CLIP or "
                   f"a big_vision .npz); first keys: {sorted(keys)[:8]}")


def to_ours(flat: dict[str, np.ndarray], fmt: str | None = None) -> Imported:
  fmt = fmt or detect(flat)
  if fmt == "timm_vit":
    out = timm.vit_to_ours(flat)
  elif fmt == "timm_resnetv2":
    out = timm.resnetv2_to_ours(flat)
  elif fmt == "open_clip":
    out = open_clip.to_ours(flat)
  elif fmt == "big_vision":
    out = big_vision.to_ours(flat)
  elif fmt == "bit":
    out = big_vision.bit_to_ours(flat)
  else:
    raise ValueError(f"weight format {fmt!r} is unknown; known: {', '.join(FORMATS)}")
  return Imported(fmt, *out)


def import_weights(path: str, fmt: str | None = None, subtree: str | None = None) -> Imported:
  """Reads and converts `path`; `subtree` ("img") keeps one part of a model."""
  flat = files.read(path)
  try:
    imported = to_ours(flat, fmt)
  except (KeyError, ValueError) as e:
    raise ValueError(f"{path}: {e}") from None
  if subtree:
    if subtree not in imported.params:
      raise ValueError(f"{path}: has no part {subtree!r} (it has {sorted(imported.params)})")
    key = {"img": "image", "txt": "text"}.get(subtree)
    imported = Imported(imported.format,
                        imported.fields.get(f"{key}_model", subtree),
                        dict(imported.fields.get(key) or {}), imported.params[subtree])
  return imported


def export(params: Any, model: str, fields: dict, fmt: str) -> dict[str, np.ndarray]:
  """Our params -> a flat dict in format `fmt` (see FORMATS)."""
  params = _numpy_tree(params)
  if fmt == "timm":
    fmt = {"vit": "timm_vit", "resnet": "timm_resnetv2"}.get(model, fmt)
  if fmt == "timm_vit" and model == "vit":
    return timm.vit_from_ours(params, fields)
  if fmt == "timm_resnetv2" and model == "resnet":
    return timm.resnetv2_from_ours(params, fields)
  if fmt == "open_clip" and model == "two_tower":
    return open_clip.from_ours(params, fields)
  if fmt == "big_vision" and model == "resnet":
    fmt = "bit"
  if fmt == "bit" and model == "resnet":
    return big_vision.bit_from_ours(params)
  if fmt == "big_vision":
    return big_vision.from_ours(params, model)
  raise ValueError(f"cannot export a {model!r} model as {fmt!r}: timm takes vit/resnet, "
                   "open_clip a two_tower, big_vision a vit, resnet (BiT layout) or two_tower")


def _numpy_tree(tree: Any) -> Any:
  if hasattr(tree, "items"):
    return {k: _numpy_tree(v) for k, v in tree.items()}
  return np.asarray(tree)
