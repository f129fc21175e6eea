"""Label sources keyed by file name, and the join that matches them to predictions.

Three orders of the ImageNet validation set exist in the wild (file-name,
class-folder and TFDS order), so predictions and labels are always matched on
`file_name`, never on position. A `LabelSource` holds, per file name, any of:
the single label, a label set (ReaL, external multi-label files) and the
Shankar et al. fields (unclear set, is_problematic). It is loaded from

- the ReaL JSON (a list of 50,000 lists; entry i is ILSVRC2012_val_{i+1:08d}.JPEG;
  the package ships it: `data.bundled.real_json_path()`),
- a JSON object {file_name: id or [ids]} or a CSV with a `file_name` column
  and a `labels` (space/semicolon separated ids) or `label` column,
- a prepared TFDS dataset (`tfds:name[/config]:split`),
- a prediction dump of this codebase (its own labels).

Every problem (duplicate names, unknown names, wrong length, ids out of range)
is an error naming the file and the culprit.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Sequence

import numpy as np

from big_vision_like import scoring

REAL_LENGTH = 50_000


def real_file_name(i: int) -> str:
  """File name of the i-th (0-based) ImageNet validation image."""
  return f"ILSVRC2012_val_{i + 1:08d}.JPEG"


@dataclasses.dataclass
class LabelSource:
  file_name: np.ndarray                   # [M] str
  origin: str                             # where it came from, for messages
  label: np.ndarray | None = None         # [M] int: the single/original label
  sets: np.ndarray | None = None          # [M, L] int, -1 padded
  unclear: np.ndarray | None = None       # [M, L] (imagenet2012_multilabel)
  problematic: np.ndarray | None = None   # [M] bool (imagenet2012_multilabel)
  num_classes: int | None = None          # when the source says (TFDS ClassLabel)

  def __post_init__(self):
    self.file_name = np.asarray(self.file_name).astype(str)
    _check_unique(self.file_name, self.origin)

  @classmethod
  def from_sets(cls, names, origin: str, sets: np.ndarray) -> "LabelSource":
    """Label sets; when every set has exactly one label it is also `label`."""
    single = sets.shape[1] == 1 and (sets[:, 0] >= 0).all()
    return cls(names, origin, label=sets[:, 0].copy() if single else None, sets=sets)

  def take(self, index: np.ndarray) -> "LabelSource":
    def pick(a):
      return None if a is None else a[index]
    return LabelSource(self.file_name[index], self.origin, pick(self.label),
                       pick(self.sets), pick(self.unclear), pick(self.problematic),
                       self.num_classes)

  def max_id(self) -> int | None:
    """The largest class id in the labels, sets and unclear sets (None: no ids)."""
    ids = [int(a.max()) for a in (self.label, self.sets, self.unclear)
           if a is not None and a.size]
    return max(ids) if ids and max(ids) >= 0 else None

  def check_ids(self, num_classes: int) -> None:
    for what, ids in (("label", self.label), ("label set", self.sets),
                      ("unclear set", self.unclear)):
      if ids is not None:
        scoring.check_ids(ids, num_classes, f"{self.origin}: {what}")


def _check_unique(names: np.ndarray, origin: str) -> None:
  uniq, counts = np.unique(names, return_counts=True)
  if len(uniq) != len(names):
    dup = uniq[counts > 1]
    raise ValueError(f"{origin}: {len(dup)} file names occur more than once, "
                     f"e.g. {dup[:3].tolist()}")


def join(pred_names: np.ndarray, source: LabelSource, *, what: str = "predictions"
         ) -> np.ndarray:
  """Index into `source` for each prediction, matched on file name.

  Fails on duplicate prediction names and on names the source does not have.
  """
  pred_names = np.asarray(pred_names).astype(str)
  _check_unique(pred_names, what)
  order = np.argsort(source.file_name)
  sorted_names = source.file_name[order]
  pos = np.searchsorted(sorted_names, pred_names)
  pos = np.minimum(pos, len(sorted_names) - 1)
  found = sorted_names[pos] == pred_names if len(sorted_names) else np.zeros(
      len(pred_names), bool)
  if not found.all():
    missing = pred_names[~found]
    raise ValueError(f"{what}: {len(missing)} of {len(pred_names)} file names are "
                     f"not in the labels ({source.origin}), e.g. {missing[:3].tolist()}")
  return order[pos]


# --------------------------------------------------------------------------
# Loaders.


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None


def from_real_json(path: str, data=None) -> LabelSource:
  """The ReaL label file: a JSON list of 50,000 lists of class ids."""
  data = _read_json(path) if data is None else data
  if not isinstance(data, list) or not all(isinstance(x, list) for x in data):
    raise ValueError(f"{path}: a ReaL label file is a JSON list of lists")
  if len(data) != REAL_LENGTH:
    raise ValueError(f"{path}: a ReaL label file has {REAL_LENGTH:,} entries (one per "
                     f"validation image), this one has {len(data):,}")
  return LabelSource([real_file_name(i) for i in range(len(data))], path,
                     sets=scoring.pad_sets(data))


def _as_ids(value, where: str) -> list[int]:
  """Class ids from a JSON value or CSV cells: ints or digit strings only."""
  values = value if isinstance(value, list) else [value]
  ids = []
  for v in values:
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
      ids.append(v)
    elif isinstance(v, str) and v.strip().isdigit():
      ids.append(int(v))
    else:
      raise ValueError(f"{where}: labels must be class ids (integers >= 0), got {value!r}")
  return ids


def from_mapping_json(path: str, data=None) -> LabelSource:
  """{file_name: id | [ids]}; a bare id is a single label (a set of one)."""
  data = _read_json(path) if data is None else data
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a JSON object {{file_name: labels}}; a JSON "
                     f"list is only accepted as the ReaL file of {REAL_LENGTH:,} entries")
  names = list(data)
  sets = [_as_ids(data[n], f"{path}: entry {n!r}") for n in names]
  return LabelSource.from_sets(names, path, scoring.pad_sets(sets))


def from_csv(path: str) -> LabelSource:
  """CSV with columns file_name and labels ("3 17" or "3;17") or label."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows:
    raise ValueError(f"{path}: the CSV has no rows")
  cols = set(rows[0])
  column = "labels" if "labels" in cols else "label" if "label" in cols else None
  if "file_name" not in cols or column is None:
    raise ValueError(f"{path}: the CSV needs a 'file_name' column and a 'labels' or "
                     f"'label' column, it has {sorted(cols)}")
  sets = []
  for i, row in enumerate(rows):
    text = (row[column] or "").replace(";", " ").split()
    sets.append(_as_ids(text, f"{path}: row {i + 2} ({row['file_name']!r})"))
  return LabelSource.from_sets([r["file_name"] for r in rows], path, scoring.pad_sets(sets))


def from_tfds(spec: str, data_dir: str | None = None) -> LabelSource:
  """`name[/config]:split` of a prepared TFDS dataset (images are not decoded)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from big_vision_like.data import tfds_source  # pylint: disable=g-import-not-at-top

  name, _, split = spec.partition(":")
  split = split or "validation"
  builder = tfds_source.get_builder(name, data_dir)
  features = builder.info.features
  if "file_name" not in features:
    raise ValueError(f"tfds:{name}: the dataset has no file_name feature to join on")
  decoders = {k: tfds.decode.SkipDecoding() for k, f in features.items()
              if isinstance(f, tfds.features.Image)}
  ds = builder.as_dataset(split=split, decoders=decoders)
  keep = [k for k in ("file_name", "label", "original_label", "real_label",
                      "correct_multi_labels", "unclear_multi_labels", "is_problematic")
          if k in features]
  ds = ds.map(lambda ex: {k: ex[k] for k in keep})
  cols: dict[str, list] = {k: [] for k in keep}
  for ex in ds.as_numpy_iterator():
    for k in keep:
      cols[k].append(ex[k])
  origin = f"tfds:{name}:{split}"
  single = cols.get("label", cols.get("original_label"))
  src = LabelSource([n.decode() for n in cols["file_name"]], origin,
                    label=None if single is None else np.asarray(single, np.int32))
  for key in ("label", "original_label"):
    if key in features and isinstance(features[key], tfds.features.ClassLabel):
      src.num_classes = int(features[key].num_classes)
      break
  if "real_label" in cols:
    src.sets = scoring.pad_sets([list(x) for x in cols["real_label"]])
  if "correct_multi_labels" in cols:
    src.sets = scoring.pad_sets([list(x) for x in cols["correct_multi_labels"]])
    src.unclear = scoring.pad_sets([list(x) for x in cols["unclear_multi_labels"]])
    src.problematic = np.asarray(cols["is_problematic"], bool)
  return src


def load(spec: str, *, data_dir: str | None = None) -> LabelSource:
  """A label source from `tfds:...`, a .json (ReaL list or mapping) or a .csv."""
  if spec.startswith("tfds:"):
    return from_tfds(spec[len("tfds:"):], data_dir)
  if not os.path.exists(spec):
    raise FileNotFoundError(f"label file {spec} does not exist")
  if spec.endswith(".csv"):
    return from_csv(spec)
  if spec.endswith(".json"):
    data = _read_json(spec)
    return (from_real_json(spec, data) if isinstance(data, list)
            else from_mapping_json(spec, data))
  raise ValueError(f"label source {spec!r}: use tfds:name:split, a .json or a .csv")



# Keys of a prediction dump / gathered eval arrays that carry labels.
SINGLE_KEYS = ("label", "original_label", "labels")
SET_KEYS = ("real_label", "correct_multi_labels")


def from_arrays(arrays: dict[str, np.ndarray], origin: str, *,
                label_key: str | None = None, set_key: str | None = None
                ) -> LabelSource:
  """The labels held in gathered eval arrays or a dump, by their TFDS names.

  `label_key` (default: `label` or `original_label`) is the single label;
  an int [N] array, or a one-hot/multi-hot [N, C] vector whose positives
  become a set. `set_key` (default: `real_label` or `correct_multi_labels`)
  is a -1 padded set; "" means none. `correct_multi_labels` brings `unclear_multi_labels`
  and `is_problematic` along (imagenet2012_multilabel).
  """
  if "file_name" in arrays:
    names = arrays["file_name"]
  else:  # No names (e.g. MNIST-like data): positions are the only key.
    names = np.array([f"#{i}" for i in range(len(arrays["topk_ids"]))])
  src = LabelSource(names, origin)
  if label_key is None:
    label_key = next((k for k in SINGLE_KEYS if k in arrays), "")
  if label_key:
    if label_key not in arrays:
      raise KeyError(f"{origin}: no {label_key!r} (has {sorted(arrays)})")
    value = np.asarray(arrays[label_key])
    if value.ndim == 2 and value.dtype.kind == "f":
      src.num_classes = int(value.shape[1])
      src.sets = scoring.sets_from_vectors(value)
      if (scoring.set_sizes(src.sets) == 1).all():
        src.label = src.sets[:, 0].copy()
    elif value.ndim == 1:
      src.label = value.astype(np.int32)
    else:
      raise ValueError(f"{origin}: {label_key!r} must be class ids [N] or label "
                       f"vectors [N, C], got shape {value.shape}")
  if set_key is None:
    set_key = next((k for k in SET_KEYS if k in arrays), "")
  if set_key:
    if set_key not in arrays:
      raise KeyError(f"{origin}: no {set_key!r} (has {sorted(arrays)})")
    src.sets = np.asarray(arrays[set_key]).astype(np.int32).reshape(len(names), -1)
    if set_key == "correct_multi_labels":
      missing = [k for k in ("unclear_multi_labels", "is_problematic") if k not in arrays]
      if missing:
        raise KeyError(f"{origin}: correct_multi_labels comes with {missing}, which are "
                       f"missing (has {sorted(arrays)})")
      src.unclear = np.asarray(arrays["unclear_multi_labels"]).astype(np.int32)
      src.problematic = np.asarray(arrays["is_problematic"]).astype(bool)
  return src


def resolve_class_subset(subset: str | Sequence[int] | None) -> list[int] | None:
  """`"imagenet_a"`/`"imagenet_r"` or explicit class ids -> ids (or None)."""
  if subset is None:
    return None
  if isinstance(subset, str):
    from big_vision_like.data import imagenet_classes  # pylint: disable=g-import-not-at-top
    return imagenet_classes.subset_indices(subset)
  ids = [int(i) for i in subset]
  if len(set(ids)) != len(ids):
    raise ValueError(f"class_subset has repeated ids: {ids}")
  return ids
