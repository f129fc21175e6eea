"""ImageNet class lists: the 1000 classes and the 200-class subsets A and R.

ImageNet-A and ImageNet-R use 200 of the 1000 ImageNet-1k classes. Scoring a
1000-way classifier on them means restricting its logits to those classes
before the argmax, and the `map_label` pp op converts labels between the two
numberings; both need the same lists, kept here.

Class ids are positions in TFDS's `imagenet2012` label list (WordNet ids in
sorted order, the usual ImageNet-1k numbering). That list is read from the
installed tensorflow-datasets package, not copied; the two 200-class lists
ship with this package as `resources/imagenet_{a,r}_wnids.txt`.
"""

from __future__ import annotations

import functools
import importlib.resources

from big_vision_like import registry

_TFDS_LABELS = "datasets/imagenet2012/labels.txt"


def _read_wnids(path, what: str, count: int) -> tuple[str, ...]:
  """One WordNet id per line; checks the count and uniqueness."""
  try:
    wnids = tuple(line.strip() for line in path.read_text().splitlines()
                  if line.strip())
  except OSError as e:
    raise RuntimeError(f"Cannot read the {what} class list {path}: {e}") from e
  if len(wnids) != count or len(set(wnids)) != count:
    raise RuntimeError(f"The {what} class list {path} should hold {count} "
                       f"distinct WordNet ids, it holds {len(wnids)} "
                       f"({len(set(wnids))} distinct).")
  return wnids


IMAGENET_WNIDS: tuple[str, ...] = _read_wnids(
    importlib.resources.files("tensorflow_datasets").joinpath(_TFDS_LABELS),
    "ImageNet-1k (tensorflow-datasets)", 1000)
_RESOURCES = importlib.resources.files("big_vision_like.data") / "resources"
IMAGENET_A_WNIDS: tuple[str, ...] = _read_wnids(
    _RESOURCES / "imagenet_a_wnids.txt", "ImageNet-A", 200)
IMAGENET_R_WNIDS: tuple[str, ...] = _read_wnids(
    _RESOURCES / "imagenet_r_wnids.txt", "ImageNet-R", 200)

SUBSETS: dict[str, tuple[str, ...]] = {
    "imagenet_a": IMAGENET_A_WNIDS,
    "imagenet_r": IMAGENET_R_WNIDS,
}
_INDEX = {wnid: i for i, wnid in enumerate(IMAGENET_WNIDS)}


def subset_indices(name: str) -> list[int]:
  """The ImageNet-1k ids of subset `name`'s classes, ascending.

  Position j in the list is the subset's class j (the subsets' own label
  order), so `logits[..., subset_indices("imagenet_a")]` gives ImageNet-A
  logits.
  """
  if name not in SUBSETS:
    raise ValueError(registry.unknown_name_message("ImageNet subset", name,
                                                   SUBSETS))
  missing = [w for w in SUBSETS[name] if w not in _INDEX]
  if missing:
    raise RuntimeError(f"{name} classes {missing[:5]} are not ImageNet-1k "
                       f"classes; is the resource file corrupted?")
  return [_INDEX[w] for w in SUBSETS[name]]


@functools.cache
def class_names() -> tuple[str, ...]:
  """Human-readable names of the 1000 classes, e.g. "tench, Tinca tinca".

  TFDS's `imagenet2012` labels are WordNet ids; the names come from the copy
  of the standard name list that tensorflow-datasets ships with its SI-Score
  dataset (same class order). Fails clearly if that copy is not there.
  """
  try:
    # pylint: disable-next=g-import-not-at-top
    from tensorflow_datasets.datasets.siscore import labels
    names = tuple(labels.IMAGENET_LABELS_LIST)
  except (ImportError, AttributeError) as e:
    raise RuntimeError(
        "This tensorflow-datasets version has no ImageNet class-name list "
        "(tensorflow_datasets.datasets.siscore.labels.IMAGENET_LABELS_LIST)."
    ) from e
  if len(names) != len(IMAGENET_WNIDS):
    raise RuntimeError(f"tensorflow-datasets' ImageNet class-name list has "
                       f"{len(names)} entries, not {len(IMAGENET_WNIDS)}.")
  return names
