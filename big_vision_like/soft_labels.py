"""Soft and localized training targets keyed by file name (ReLabel's label maps).

Re-labeling ImageNet (Yun et al. 2021) trains on a teacher's dense
predictions: for every training image a small grid of cells, each holding the
teacher's top-k classes with their scores, and the target of a random crop is
the map pooled over the crop's box ("LabelPooling"). A global soft label (a
teacher's prediction for the whole image, a ReaL-style label set) is the same
thing with a 1x1 grid, so one format and one pp op (`pp/ops_soft_labels.py`)
serve both.

The label-map file (.npz, never pickled):

  file_name   [N] str        the key; joined on, never on position
  ids         [N, gh, gw, k] int32, class ids of each cell's top-k
  scores      [N, gh, gw, k] float32, their probabilities (>= 0; a cell's
                             scores sum to <= 1, the top-k truncation drops
                             the rest)
  num_classes []             int
  meta_*      anything numeric or str (provenance: model, step, method)

Cell (i, j) covers rows [i/gh, (i+1)/gh) and columns [j/gw, (j+1)/gw) of the
image in fractions of its height and width. `tools/make_label_maps` writes
these files from a trained model of ours.

Pooling (`pool`). The map is taken as piecewise constant over its cells; the
target of a box is the integral of the map over the box, normalised to sum
1: each cell weighs by the area it shares with the box. ReLabel samples the
map bilinearly with RoIAlign and applies a softmax to the pooled top-k
logits. We average probabilities instead: the result is the class
distribution of a uniformly random pixel of the crop, needs no guess for the
classes outside each cell's top-k, and can be computed by hand, which the
tests do.

Other sources `load` turns into 1x1 maps: a prediction dump of this
codebase with logits (softmax at `temperature`), and label sets (JSON/CSV
read by `label_sources`, e.g. ReaL), uniform over each set.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

FORMAT_KEYS = ("file_name", "ids", "scores", "num_classes")
# tf.data functions capture the arrays as graph constants, which the 2 GB
# protobuf limit bounds; stay clearly below it.
MAX_TABLE_BYTES = 1_500_000_000


@dataclasses.dataclass
class LabelMaps:
  """Per-image label maps; a 1x1 grid is a global soft label."""
  file_name: np.ndarray   # [N] str
  ids: np.ndarray         # [N, gh, gw, k] int32
  scores: np.ndarray      # [N, gh, gw, k] float32
  num_classes: int
  origin: str
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.file_name = np.asarray(self.file_name).astype(str)
    self.ids = np.asarray(self.ids)
    self.scores = np.asarray(self.scores)
    self.validate()

  @property
  def grid(self) -> tuple[int, int]:
    return int(self.ids.shape[1]), int(self.ids.shape[2])

  def validate(self) -> None:
    where = self.origin
    n = len(self.file_name)
    if self.ids.ndim != 4 or self.scores.shape != self.ids.shape or self.ids.shape[0] != n:
      raise ValueError(f"{where}: ids and scores must both have shape [N, gh, gw, k] with "
                       f"N = {n} file names; got ids {self.ids.shape}, scores "
                       f"{self.scores.shape}")
    if self.ids.dtype.kind not in "iu":
      raise ValueError(f"{where}: ids must be integers, got {self.ids.dtype}")
    if self.num_classes < 1:
      raise ValueError(f"{where}: num_classes must be >= 1, got {self.num_classes}")
    if n and (self.ids.min() < 0 or self.ids.max() >= self.num_classes):
      bad = np.flatnonzero(((self.ids < 0) | (self.ids >= self.num_classes))
                           .reshape(n, -1).any(1))[0]
      raise ValueError(f"{where}: {str(self.file_name[bad])!r} has class ids outside "
                       f"[0, {self.num_classes}): "
                       f"{sorted({int(i) for i in self.ids[bad].ravel()})}")
    if not np.isfinite(self.scores).all() or (self.scores < 0).any():
      bad = np.flatnonzero((~np.isfinite(self.scores) | (self.scores < 0))
                           .reshape(n, -1).any(1))[0]
      raise ValueError(f"{where}: {str(self.file_name[bad])!r} has negative or non-finite "
                       f"scores; scores are probabilities")
    mass = self.scores.sum(-1)
    if n and (mass > 1 + 1e-3).any():
      bad = int(np.flatnonzero((mass > 1 + 1e-3).reshape(n, -1).any(1))[0])
      raise ValueError(f"{where}: a cell of {str(self.file_name[bad])!r} has scores summing to "
                       f"{mass[bad].max():.4f} > 1; scores are probabilities (softmax the "
                       f"logits first)")
    empty = (mass <= 0).all(axis=(1, 2)) if n else np.zeros(0, bool)
    if empty.any():
      raise ValueError(f"{where}: {int(empty.sum())} images have no label mass at all, "
                       f"e.g. {self.file_name[empty][:3].tolist()}; drop them from the file")
    uniq, counts = np.unique(self.file_name, return_counts=True)
    if len(uniq) != n:
      raise ValueError(f"{where}: {int((counts > 1).sum())} file names occur more than "
                       f"once, e.g. {uniq[counts > 1][:3].tolist()}")

  def nbytes(self) -> int:
    return int(self.ids.nbytes + self.scores.nbytes + self.file_name.nbytes)


def save(path: str, maps: LabelMaps) -> None:
  """Writes the .npz format above (atomically: a temp file, then a rename)."""
  tmp = f"{path}.tmp-{os.getpid()}.npz"
  meta = {}
  for k, v in maps.meta.items():
    value = np.asarray(v)
    if value.dtype.kind not in "biufU":  # load() never unpickles objects
      raise ValueError(f"{path}: meta {k!r} = {v!r} is not a number or a string")
    meta[f"meta_{k}"] = value
  np.savez(tmp, file_name=maps.file_name.astype(str), ids=maps.ids.astype(np.int32),
           scores=maps.scores.astype(np.float32), num_classes=np.int64(maps.num_classes),
           **meta)
  os.replace(tmp, path)


def from_probabilities(names: np.ndarray, probs: np.ndarray, origin: str,
                       topk: int | None = None) -> LabelMaps:
  """1x1 maps from [N, C] (or dense [N, gh, gw, C]) probabilities, top-k per cell."""
  probs = np.asarray(probs, np.float32)
  if probs.ndim == 2:
    probs = probs[:, None, None, :]
  num_classes = probs.shape[-1]
  k = num_classes if topk is None else min(int(topk), num_classes)
  # Stable descending order; ties to the lower class id, as jax.lax.top_k.
  ids = np.argsort(-probs, axis=-1, kind="stable")[..., :k].astype(np.int32)
  scores = np.take_along_axis(probs, ids, axis=-1)
  return LabelMaps(names, ids, scores, num_classes, origin)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
  """Row-wise softmax(logits / temperature) in float64."""
  z = np.asarray(logits, np.float64) / temperature
  z = np.exp(z - z.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


def _from_npz(path: str, arrays: dict[str, np.ndarray], temperature: float,
              topk: int | None) -> LabelMaps:
  from big_vision_like.tools import score_predictions  # pylint: disable=g-import-not-at-top
  if "file_name" not in arrays:
    raise ValueError(f"{path}: no `file_name` array to join on (it has: "
                     f"{score_predictions._describe(arrays)})")  # pylint: disable=protected-access
  if "ids" in arrays and "scores" in arrays:  # Our label-map format.
    if "num_classes" not in arrays:
      raise ValueError(f"{path}: a label-map file needs `num_classes` (has "
                       f"{sorted(arrays)})")
    meta = {k[len("meta_"):]: v.item() if v.ndim == 0 else v
            for k, v in arrays.items() if k.startswith("meta_")}
    return LabelMaps(arrays["file_name"], arrays["ids"], arrays["scores"],
                     int(arrays["num_classes"]), path, meta)
  if "logits" in arrays:  # A prediction dump with logits: the teacher's softmax.
    logits = arrays["logits"]
    if logits.ndim != 2 or logits.shape[0] != len(arrays["file_name"]):
      raise ValueError(f"{path}: `logits` must be [N, C] with N = "
                       f"{len(arrays['file_name'])} file names, got {logits.shape}")
    return from_probabilities(arrays["file_name"], softmax(logits, temperature), path, topk)
  raise ValueError(f"{path}: neither a label-map file (file_name, ids, scores, "
                   f"num_classes) nor a prediction dump with `logits` (evaluators write "
                   f"them with save_logits=True); it has: "
                   f"{score_predictions._describe(arrays)}")  # pylint: disable=protected-access


def _from_sets(path: str) -> LabelMaps:
  from big_vision_like import label_sources  # pylint: disable=g-import-not-at-top
  src = label_sources.load(path)
  sets = src.sets if src.sets is not None else src.label[:, None]
  sizes = (sets >= 0).sum(1)
  if (sizes == 0).any():
    raise ValueError(f"{path}: {int((sizes == 0).sum())} images have an empty label set, "
                     f"e.g. {src.file_name[sizes == 0][:3].tolist()}; a training target "
                     f"needs at least one label (drop them from the file)")
  valid = sets >= 0
  ids = np.where(valid, sets, 0).astype(np.int32)
  scores = np.where(valid, 1.0 / sizes[:, None], 0.0).astype(np.float32)
  num_classes = src.num_classes or int(sets.max()) + 1
  return LabelMaps(src.file_name, ids[:, None, None, :], scores[:, None, None, :],
                   num_classes, path)


def load(path: str, *, num_classes: int | None = None, temperature: float = 1.0,
         topk: int | None = None) -> LabelMaps:
  """Label maps from a label-map .npz, a prediction dump, or a JSON/CSV label-set file.

  `num_classes`, when given, must agree with the file (label sets take it as
  their class count). `temperature` and `topk` apply to dumps' logits.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"soft-label file {path} does not exist")
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  if path.endswith((".json", ".csv")):
    maps = _from_sets(path)
    if num_classes is not None:
      if maps.num_classes > num_classes:
        raise ValueError(f"{path}: class ids go up to {maps.num_classes - 1}, beyond "
                         f"num_classes={num_classes}")
      maps.num_classes = num_classes
  else:
    from big_vision_like.tools import score_predictions  # pylint: disable=g-import-not-at-top
    arrays, fmt = score_predictions.load_arrays(path, "soft-label file")
    if fmt != "npz":
      raise ValueError(f"{path}: a soft-label file is an .npz (label maps or a "
                       f"prediction dump), or a .json/.csv of label sets")
    maps = _from_npz(path, arrays, temperature, topk)
  if num_classes is not None and maps.num_classes != num_classes:
    raise ValueError(f"{path}: the file has {maps.num_classes} classes, the pp op says "
                     f"num_classes={num_classes}")
  if maps.nbytes() > MAX_TABLE_BYTES:
    raise ValueError(f"{path}: {maps.nbytes() / 1e9:.1f} GB of label maps do not fit a "
                     f"tf.data graph constant (limit {MAX_TABLE_BYTES / 1e9:.1f} GB); "
                     f"write fewer classes per cell (make_label_maps --topk) or a "
                     f"coarser grid")
  return maps


def cell_weights(box: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """[gh, gw] area of each cell inside box [ymin, xmin, ymax, xmax] (fractions)."""
  gh, gw = grid
  ymin, xmin, ymax, xmax = (float(v) for v in np.clip(box, 0.0, 1.0))
  ys, xs = np.linspace(0, 1, gh + 1), np.linspace(0, 1, gw + 1)
  dy = np.clip(np.minimum(ymax, ys[1:]) - np.maximum(ymin, ys[:-1]), 0, None)
  dx = np.clip(np.minimum(xmax, xs[1:]) - np.maximum(xmin, xs[:-1]), 0, None)
  return np.outer(dy, dx)


def pool(ids: np.ndarray, scores: np.ndarray, box: np.ndarray | None,
         num_classes: int) -> np.ndarray:
  """The [C] target of one image's map ([gh, gw, k]) over `box` (None: whole image).

  The numpy statement of the definition in the module docstring; the pp op
  computes the same in TensorFlow.
  """
  gh, gw, _ = ids.shape
  w = cell_weights(np.array([0, 0, 1, 1.0]) if box is None else np.asarray(box), (gh, gw))
  dense = np.zeros(num_classes, np.float64)
  np.add.at(dense, ids.ravel(), (scores * w[..., None]).ravel())
  total = dense.sum()
  if total <= 0:
    raise ValueError(f"box {box} covers no label mass of the map")
  return dense / total
