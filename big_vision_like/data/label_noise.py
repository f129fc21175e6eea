"""Copies of a TFDS classification dataset with a known fraction of labels flipped.

Why: a label-error finder (tools/find_label_errors) can only be scored on
data whose errors are known. This module writes a copy of an image/label
dataset (Fashion-MNIST by default) in which an exact, documented fraction of
one split's labels is replaced, and a JSON file listing every flipped example
with its original and new label: the ground truth for precision and recall.

What the copy holds: the features `image` (the source's encoded bytes, not
re-encoded), `label` (same class names) and `file_name` = "{split}_{index:05d}",
`index` being the record's position in `tfds.load(name, split=split)` (the
convention of `fashion_captions`, and the name the evaluators give a record
of a dataset without file names); other source features are dropped.
`fraction=0` writes a plain copy with file names.

Noise modes (`fraction` is of ALL examples of each noisy split: exactly
`round(fraction * N)` labels change):
  - "uniform": examples drawn uniformly; each new label is drawn uniformly
    from the other `num_classes - 1` classes (so every drawn label changes).
  - "pairs": examples drawn uniformly among those whose class has a
    confusable partner (`PAIRS`, e.g. shirt <-> T-shirt), each label replaced
    by its partner. Fails if fewer such examples exist than flips asked for.

Everything depends only on (source records, mode, fraction, seed, split): the
same arguments give the same copy on every machine.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from big_vision_like.data import fashion_mnist
from big_vision_like.data import tfds_source
from big_vision_like.data import tfds_writer

MODES = ("uniform", "pairs")
VERSION = "1.0.0"
# Confusable class pairs per dataset (ids). Fashion-MNIST: T-shirt/top(0) <->
# shirt(6), pullover(2) <-> coat(4), sneaker(7) <-> ankle boot(9).
PAIRS: dict[str, tuple[tuple[int, int], ...]] = {
    "fashion_mnist": ((0, 6), (2, 4), (7, 9)),
}


def file_name(split: str, index: int) -> str:
  """The name of record `index` of `split` in a copy: "train_00042"."""
  return f"{split}_{index:05d}"


def partner_map(pairs: Sequence[tuple[int, int]], num_classes: int) -> np.ndarray:
  """[num_classes] int: each class's partner, -1 for classes without one."""
  partner = np.full(num_classes, -1, np.int64)
  for a, b in pairs:
    for x, y in ((a, b), (b, a)):
      if not 0 <= x < num_classes or partner[x] not in (-1, y):
        raise ValueError(f"confusable pairs {list(pairs)}: class {x} is out of range "
                         f"[0, {num_classes}) or in two pairs")
      partner[x] = y
  return partner


def flip_labels(labels: np.ndarray, *, fraction: float, mode: str, num_classes: int,
                seed: int, pairs: Sequence[tuple[int, int]] = (),
                salt: str = "") -> tuple[np.ndarray, np.ndarray]:
  """(new labels, indices of the flipped examples, sorted): see the module docstring.

  `salt` (e.g. the split name) makes the draw differ between splits.
  """
  labels = np.asarray(labels, np.int64)
  if mode not in MODES:
    raise ValueError(f"noise mode {mode!r}: use one of {MODES}")
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"noise fraction {fraction} is not in [0, 1]")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must be in [0, {num_classes}), got {labels.min()}..{labels.max()}")
  count = int(round(fraction * len(labels)))
  rng = np.random.default_rng([seed, zlib.crc32(salt.encode())])
  new = labels.copy()
  if mode == "uniform":
    chosen = np.sort(rng.choice(len(labels), size=count, replace=False))
    # An offset in 1..C-1 added modulo C: uniform over the other classes.
    new[chosen] = (labels[chosen] + rng.integers(1, num_classes, size=count)) % num_classes
  else:
    if not pairs:
      raise ValueError("noise mode 'pairs' needs confusable class pairs")
    partner = partner_map(pairs, num_classes)
    eligible = np.flatnonzero(partner[labels] >= 0)
    if count > len(eligible):
      raise ValueError(f"noise mode 'pairs': {count} flips asked for, but only "
                       f"{len(eligible)} of {len(labels)} examples are in a pair "
                       f"{list(pairs)}")
    chosen = np.sort(rng.choice(eligible, size=count, replace=False))
    new[chosen] = partner[labels[chosen]]
  return new, chosen


def _read_split(builder: tfds.core.DatasetBuilder, split: str) -> tuple[list, np.ndarray]:
  """(encoded images, labels) in `tfds.load` order, images not decoded."""
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  images, labels = [], []
  for batch in tfds.as_numpy(ds.map(lambda ex: {"image": ex["image"],
                                                "label": ex["label"]}).batch(8192)):
    images.extend(batch["image"].tolist())
    labels.append(batch["label"])
  return images, (np.concatenate(labels).astype(np.int64) if labels else
                  np.zeros((0,), np.int64))


class _Examples:
  """A split's examples for `tfds_writer` (Sized, so it streams)."""

  def __init__(self, split: str, images: list, labels: np.ndarray):
    self.split, self.images, self.labels = split, images, labels

  def __len__(self) -> int:
    return len(self.labels)

  def __iter__(self):
    for i, (image, label) in enumerate(zip(self.images, self.labels.tolist())):
      yield {"image": image, "label": label, "file_name": file_name(self.split, i)}


def write_noisy_copy(name: str, out_name: str, *, fraction: float, mode: str = "uniform",
                     seed: int = 0, noisy_splits: Sequence[str] = ("train",),
                     data_dir: str | None = None, out_data_dir: str | None = None,
                     pairs: Sequence[tuple[int, int]] | None = None,
                     flips_json: str | None = None) -> dict:
  """Writes TFDS dataset `out_name` (every split of `name`, labels of `noisy_splits` flipped).

  Args:
    name: the source TFDS dataset (features `image` and a ClassLabel `label`).
    out_name: the copy's name, written to `out_data_dir/out_name/1.0.0`.
    fraction, mode, seed: see the module docstring.
    pairs: confusable pairs for mode "pairs" (default: `PAIRS[name]`).
    flips_json: where the list of flips goes (default:
      `{out_data_dir}/{out_name}_flips.json`).

  Returns:
    The JSON written: {"dataset", "source", "mode", "fraction", "seed",
    "splits": {split: {"num_examples", "num_flipped"}}, "flipped":
    [{"file_name", "original_label", "label"}, ...]}.
  """
  builder = tfds_source.get_builder(name, data_dir)
  data_dir = os.path.expanduser(data_dir or fashion_mnist.default_data_dir())
  out_data_dir = os.path.expanduser(out_data_dir or data_dir)
  features = builder.info.features
  for key in ("image", "label"):
    if key not in features:
      raise ValueError(f"dataset {name!r} has no {key!r} feature (it has "
                       f"{sorted(features)}); a noisy copy needs image and label")
  if not isinstance(features["label"], tfds.features.ClassLabel):
    raise ValueError(f"dataset {name!r}: 'label' is {type(features['label']).__name__}, "
                     f"not a ClassLabel")
  num_classes = features["label"].num_classes
  if pairs is None:
    pairs = PAIRS.get(name.split(":")[0].split("/")[0], ())
  unknown = sorted(set(noisy_splits) - set(builder.info.splits.keys()))
  if unknown:
    raise ValueError(f"dataset {name!r} has no split {unknown[0]!r} (splits: "
                     f"{sorted(builder.info.splits.keys())})")
  splits, flipped, counts = {}, [], {}
  for split in builder.info.splits.keys():
    images, labels = _read_split(builder, split)
    new, chosen = labels, np.zeros((0,), np.int64)
    if split in noisy_splits:
      new, chosen = flip_labels(labels, fraction=fraction, mode=mode,
                                num_classes=num_classes, seed=seed, pairs=pairs, salt=split)
    flipped += [{"file_name": file_name(split, int(i)), "original_label": int(labels[i]),
                 "label": int(new[i])} for i in chosen]
    counts[split] = {"num_examples": len(labels), "num_flipped": len(chosen)}
    splits[split] = _Examples(split, images, new)
  out_features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=features["image"].shape,
                                   encoding_format=features["image"].encoding_format),
      "label": tfds.features.ClassLabel(names=features["label"].names),
      "file_name": tfds.features.Text(),
  })
  summary = {"dataset": out_name, "source": name, "mode": mode, "fraction": fraction,
             "seed": seed, "pairs": [list(p) for p in pairs] if mode == "pairs" else [],
             "class_names": list(features["label"].names), "splits": counts,
             "flipped": flipped}
  tfds_writer.write_dataset(
      out_name, out_data_dir, splits, features=out_features, version=VERSION,
      description=(f"{name} with {fraction:g} of the labels of {list(noisy_splits)} "
                   f"flipped ({mode}, seed {seed}); file_name = split_index. Written by "
                   f"big_vision_like.data.label_noise."))
  flips_json = flips_json or os.path.join(out_data_dir, f"{out_name}_flips.json")
  with tf.io.gfile.GFile(flips_json, "w") as f:
    f.write(json.dumps(summary, indent=1))
  return summary
