"""The ImageNet variants we evaluate on, by TFDS name, and small stand-ins.

One table (`VARIANTS`) says, for every ImageNet-family dataset a config may
name, which TFDS dataset/config it is, its splits and their real sizes, which
feature holds the label(s), the format of its `file_name`s and how it is
prepared (from the ILSVRC tarballs with `prepare_imagenet`, or downloaded by
`tfds build`). Configs, evaluators and the preparation tools read it instead
of repeating these facts.

`write_small_variant` writes a few examples of any variant into a TFDS data
dir under the real builder's name, config, version, features and split
names, with plausible values (file names in the dataset's own format, ReaL
sets that are sometimes empty, problematic multilabel images, ImageNet-A/R
labels from their 200 classes). `tfds.builder(name, data_dir=...)` then
returns TFDS's own builder class reading them, so tests and benchmarks run
the exact code path of the real datasets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import zlib
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from big_vision_like import registry
from big_vision_like.data import imagenet_classes
from big_vision_like.data import tfds_writer

NUM_CLASSES = 1000
# The conventional ImageNet-1k training split and the held-out "minival" used
# for model selection (the official validation set is kept for reporting).
# With TFDS's rounding of percent boundaries these are 1,268,355 and 12,812 of
# the 1,281,167 training images.
TRAIN_SPLIT = "train[:99%]"
MINIVAL_SPLIT = "train[99%:]"

# How a variant is prepared in a data dir.
PREPARED_FROM_ILSVRC = "ilsvrc"  # big_vision_like.data.prepare_imagenet
PREPARED_BY_TFDS_BUILD = "tfds_build"  # tfds build NAME (downloads the data)


@dataclasses.dataclass(frozen=True)
class Variant:
  """One ImageNet variant as TFDS stores it.

  Attributes:
    name: the TFDS name a config uses, with the config if any
      ("imagenet_v2/matched-frequency").
    splits: split name -> number of examples in the real dataset.
    label_key: the feature an evaluator reads the label(s) from.
    multi_label: whether `label_key` holds a set of labels (a
      `Sequence(ClassLabel)`; may be empty) instead of one class id.
    fields: the features besides `image`, as TFDS names them.
    file_name_example: a real `file_name` value (the join key with external
      label or prediction files: never join on position).
    prepared: `PREPARED_FROM_ILSVRC` or `PREPARED_BY_TFDS_BUILD`.
    class_subset: for ImageNet-A/-R, the name of the 200-class subset that
      logits are restricted to before the argmax (see `imagenet_classes`).
    notes: what is special about it, for people reading the table.
  """

  name: str
  splits: Mapping[str, int]
  label_key: str
  multi_label: bool
  fields: tuple[str, ...]
  file_name_example: str
  prepared: str
  class_subset: str | None = None
  notes: str = ""

  @property
  def tfds_name(self) -> str:
    """The TFDS dataset name without the config ("imagenet_v2")."""
    return self.name.split("/")[0]

  @property
  def config(self) -> str | None:
    """The TFDS builder config ("matched-frequency"), or None."""
    return self.name.split("/")[1] if "/" in self.name else None

  @property
  def num_classes(self) -> int:
    """Logits are always over the 1000 ImageNet classes."""
    return NUM_CLASSES

  @property
  def default_split(self) -> str:
    """The split one evaluates on ("validation" or "test")."""
    return "validation" if "validation" in self.splits else "test"

  def label_pp(self, key_result: str = "labels") -> str:
    """pp ops that turn this variant's label(s) into a one-/multi-hot vector."""
    return (f"onehot({NUM_CLASSES}, key='{self.label_key}', "
            f"key_result='{key_result}')")

  def data(self, split: str | None = None,
           data_dir: str | None = None) -> dict[str, Any]:
    """The `data=dict(...)` block of a config for this variant."""
    return dict(name=self.name, split=split or self.default_split,
                data_dir=data_dir)


_IMAGENET_SINGLE = ("label", "file_name")
_ALL = [
    Variant(
        name="imagenet2012",
        splits={"train": 1_281_167, "validation": 50_000},
        label_key="label", multi_label=False, fields=_IMAGENET_SINGLE,
        file_name_example="n01440764_10026.JPEG",
        prepared=PREPARED_FROM_ILSVRC,
        notes=(f"ILSVRC-2012. Train on {TRAIN_SPLIT!r}, select models on "
               f"{MINIVAL_SPLIT!r} (minival), report on 'validation' "
               f"(file names ILSVRC2012_val_00000001.JPEG ...). A 'test' "
               f"split (100,000 images, label -1) exists only when the test "
               f"tarball was given.")),
    Variant(
        name="imagenet2012_real",
        splits={"validation": 50_000},
        label_key="real_label", multi_label=True,
        fields=("original_label", "real_label", "file_name"),
        file_name_example="ILSVRC2012_val_00000001.JPEG",
        prepared=PREPARED_FROM_ILSVRC,
        notes=("ImageNet validation images with the ReaL label sets (Beyer "
               "et al. 2020). 3,163 sets are empty: those images are left "
               "out of real@k (46,837 count).")),
    Variant(
        name="imagenet2012_multilabel",
        splits={"validation": 20_000, "imagenet_m": 68},
        label_key="correct_multi_labels", multi_label=True,
        fields=("original_label", "correct_multi_labels",
                "unclear_multi_labels", "wrong_multi_labels",
                "is_problematic", "file_name"),
        file_name_example="ILSVRC2012_val_00000002.JPEG",
        prepared=PREPARED_FROM_ILSVRC,
        notes=("Multi-label annotations of 20,000 validation images "
               "(Shankar et al. 2020): skip is_problematic images; a top-1 "
               "prediction is right if it is in correct or unclear. "
               "'imagenet_m' is the 68-image ImageNet-M slice.")),
    *[Variant(
        name=f"imagenet_v2/{config}",
        splits={"test": 10_000},
        label_key="label", multi_label=False, fields=_IMAGENET_SINGLE,
        file_name_example="0/7e0a3b3d4f4c1d0e2b3c4a5f6e7d8c9b0a1b2c3d.jpeg",
        prepared=PREPARED_BY_TFDS_BUILD,
        notes=f"ImageNetV2 ({config}), all 1000 classes.")
      for config in ("matched-frequency", "threshold-0.7", "topimages")],
    Variant(
        name="imagenet_a",
        splits={"test": 7_500},
        label_key="label", multi_label=False, fields=_IMAGENET_SINGLE,
        file_name_example="0.000116_digital clock _ digital clock_0.865662.jpg",
        prepared=PREPARED_BY_TFDS_BUILD, class_subset="imagenet_a",
        notes=("Natural adversarial examples; 200 classes: restrict the "
               "logits to them before the argmax.")),
    Variant(
        name="imagenet_r",
        splits={"test": 30_000},
        label_key="label", multi_label=False, fields=_IMAGENET_SINGLE,
        file_name_example="n01443537/art_0.jpg",
        prepared=PREPARED_BY_TFDS_BUILD, class_subset="imagenet_r",
        notes=("Renditions (art, cartoons, ...); 200 classes: restrict the "
               "logits to them before the argmax.")),
    Variant(
        name="imagenet_sketch",
        splits={"test": 50_889},
        label_key="label", multi_label=False, fields=_IMAGENET_SINGLE,
        file_name_example="n01440764/sketch_0.JPEG",
        prepared=PREPARED_BY_TFDS_BUILD,
        notes="Black-and-white sketches, all 1000 classes."),
]
VARIANTS: dict[str, Variant] = {v.name: v for v in _ALL}
# The variants `prepare_imagenet` builds from the ILSVRC tarballs.
ILSVRC_VARIANTS = tuple(v.name for v in _ALL
                        if v.prepared == PREPARED_FROM_ILSVRC)


def get(name: str) -> Variant:
  """The variant called `name` (a version suffix ":1.0.0" is ignored)."""
  key = name.split(":")[0].strip()
  if key not in VARIANTS:
    raise registry.UnknownNameError(
        registry.unknown_name_message("ImageNet variant", key, VARIANTS))
  return VARIANTS[key]


# --------------------------------------------------------- small stand-ins


def _imagenet_file(relative: str) -> str:
  return os.fspath(tfds.core.tfds_path(
      os.path.join("datasets", "imagenet2012", relative)))


def class_wnids() -> list[str]:
  """The 1000 WordNet ids in TFDS label order (label i = wnids[i])."""
  return list(imagenet_classes.IMAGENET_WNIDS)


def validation_wnids() -> list[str]:
  """The wnid of `ILSVRC2012_val_{i+1:08d}.JPEG` at index i (50,000)."""
  with tf.io.gfile.GFile(_imagenet_file("validation_labels.txt")) as f:
    return f.read().split()


def subset_label_ids(class_subset: str) -> list[int]:
  """Label ids of a 200-class subset ("imagenet_a" / "imagenet_r")."""
  return imagenet_classes.subset_indices(class_subset)


def smooth_jpeg(rng: np.random.Generator, size: int, quality: int = 90
                ) -> bytes:
  """A random but smooth RGB JPEG, `size` pixels on its short side.

  A coarse random colour grid upsampled bilinearly looks more like a photo
  to JPEG (and costs less to decode) than pixel noise. The aspect ratio
  varies (3:4 to 4:3) so resize/crop ops see non-square images.
  """
  long_side = int(round(size * rng.uniform(1.0, 4 / 3)))
  hw = (size, long_side) if rng.random() < 0.5 else (long_side, size)
  grid = rng.integers(0, 256, size=(1, 4, 4, 3)).astype(np.float32)
  image = tf.image.resize(grid, hw, method="bilinear", antialias=False)[0]
  image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  return tf.io.encode_jpeg(image, quality=quality).numpy()


def _rng(seed: int, name: str, split: str) -> np.random.Generator:
  # Independent, reproducible streams per (seed, variant, split).
  return np.random.default_rng(
      [seed, zlib.crc32(name.encode()), zlib.crc32(split.encode())])


def _other_label(rng: np.random.Generator, *exclude: int) -> int:
  while True:
    label = int(rng.integers(NUM_CLASSES))
    if label not in exclude:
      return label


def _val_index(rng: np.random.Generator, n: int, split: str) -> np.ndarray:
  """Distinct, sorted 0-based validation image indices."""
  if n > 50_000:
    raise ValueError(f"Split {split!r} draws from the 50,000 ImageNet "
                     f"validation images; asked for {n}.")
  return np.sort(rng.choice(50_000, size=n, replace=False))


def _val_name(index: int) -> str:
  return f"ILSVRC2012_val_{index + 1:08d}.JPEG"


# Each generator yields (features dict) for one split of one variant; `i` is
# the position, so tiny splits still contain the interesting cases.

def _imagenet2012(rng, n, split, size):
  wnids = class_wnids()
  if split == "train":
    for i in range(n):
      label = int(rng.integers(NUM_CLASSES))
      number = 10 * i + int(rng.integers(10))  # Unique, not consecutive.
      yield {"image": smooth_jpeg(rng, size), "label": label,
             "file_name": f"{wnids[label]}_{number}.JPEG"}
  else:  # validation: the real label of each file name.
    val_wnids = validation_wnids()
    index = {w: k for k, w in enumerate(wnids)}
    for k in range(n):
      yield {"image": smooth_jpeg(rng, size), "label": index[val_wnids[k]],
             "file_name": _val_name(k)}


def _imagenet2012_real(rng, n, split, size):
  del split
  wnids = class_wnids()
  index = {w: k for k, w in enumerate(wnids)}
  val_wnids = validation_wnids()
  for k in range(n):
    original = index[val_wnids[k]]
    # Like the real file: some sets are empty (image 1's is), most hold the
    # original label, some add a second label, some replace it.
    kind = k % 5
    if kind == 0:
      real = []
    elif kind == 1:
      real = [original, _other_label(rng, original)]
    elif kind == 2:
      real = [_other_label(rng, original)]
    else:
      real = [original]
    yield {"image": smooth_jpeg(rng, size), "original_label": original,
           "real_label": real, "file_name": _val_name(k)}


def _imagenet2012_multilabel(rng, n, split, size):
  wnids = class_wnids()
  index = {w: k for k, w in enumerate(wnids)}
  val_wnids = validation_wnids()
  for i, k in enumerate(_val_index(rng, n, split)):
    original = index[val_wnids[k]]
    other = _other_label(rng, original)
    third = _other_label(rng, original, other)
    kind = i % 7
    correct = {0: [original], 1: [original, other], 2: [other],
               3: [original], 4: [], 5: [original], 6: [original, other]}[kind]
    unclear = [third] if kind in (2, 4, 5) else []
    wrong = [third] if kind in (0, 1, 3) else [other] if kind == 5 else []
    # ImageNet-M images are all annotated, none problematic.
    problematic = split == "validation" and kind == 3
    yield {"image": smooth_jpeg(rng, size), "original_label": original,
           "correct_multi_labels": correct, "unclear_multi_labels": unclear,
           "wrong_multi_labels": wrong, "is_problematic": problematic,
           "file_name": _val_name(int(k))}


def _imagenet_v2(rng, n, split, size):
  for i in range(n):
    label = int(rng.integers(NUM_CLASSES))
    digest = hashlib.sha1(f"{split}/{i}/{rng.random()}".encode()).hexdigest()
    yield {"image": smooth_jpeg(rng, size), "label": label,
           "file_name": f"{label}/{digest}.jpeg"}


_A_NAMES = ("digital clock", "balloon", "chameleon", "box turtle", "jellyfish",
            "volcano", "goldfish", "umbrella", "mushroom", "ladybug")
_R_STYLES = ("art", "cartoon", "deviantart", "embroidery", "graffiti",
             "graphic", "misc", "origami", "painting", "sculpture", "sketch",
             "sticker", "tattoo", "toy", "videogame")


def _imagenet_a(rng, n, split, size):
  del split
  subset = subset_label_ids("imagenet_a")
  for i in range(n):
    label = int(rng.choice(subset))
    a, b = rng.choice(_A_NAMES, size=2)
    # "<prob>_<name> _ <name>_<confidence>.jpg"; the position makes it unique.
    yield {"image": smooth_jpeg(rng, size), "label": label,
           "file_name": f"{(i + 1) / 1e6:.6f}_{a} _ {b}_"
                        f"{rng.uniform(0.2, 1.0):.7f}.jpg"}


def _imagenet_r(rng, n, split, size):
  del split
  wnids = class_wnids()
  subset = subset_label_ids("imagenet_r")
  for i in range(n):
    label = int(rng.choice(subset))
    style = _R_STYLES[i % len(_R_STYLES)]
    yield {"image": smooth_jpeg(rng, size), "label": label,
           "file_name": f"{wnids[label]}/{style}_{i}.jpg"}


def _imagenet_sketch(rng, n, split, size):
  del split
  wnids = class_wnids()
  for i in range(n):
    label = int(rng.integers(NUM_CLASSES))
    yield {"image": smooth_jpeg(rng, size), "label": label,
           "file_name": f"{wnids[label]}/sketch_{i}.JPEG"}


_GENERATORS: dict[str, Callable[..., Iterator[dict[str, Any]]]] = {
    "imagenet2012": _imagenet2012,
    "imagenet2012_real": _imagenet2012_real,
    "imagenet2012_multilabel": _imagenet2012_multilabel,
    "imagenet_v2": _imagenet_v2,
    "imagenet_a": _imagenet_a,
    "imagenet_r": _imagenet_r,
    "imagenet_sketch": _imagenet_sketch,
}


def write_small_variant(name: str, data_dir: str, *,
                        examples_per_split: int | Mapping[str, int] = 16,
                        image_size: int = 32, seed: int = 0,
                        num_shards: int = 1) -> str:
  """Writes a small stand-in of ImageNet variant `name` into `data_dir`.

  The examples carry the real builder's features and split names (see
  `VARIANTS`), so `tfds.builder(name, data_dir=data_dir)` returns TFDS's own
  builder reading them. Values are plausible and deterministic in `seed`:
  validation images get the real label of their file name, ReaL sets (every
  5th one empty, starting with image 1's, like in real.json), multilabel
  sets with `is_problematic` rows, ImageNet-A/R labels from their 200
  classes, smooth random JPEGs `image_size` pixels on the short side.

  Args:
    name: a key of `VARIANTS` ("imagenet_v2/topimages").
    data_dir: the TFDS data dir to write to.
    examples_per_split: one count for every split, or split -> count (only
      the splits named are written).
    image_size: short side of the images.
    seed: makes the labels, file names and pixels.
    num_shards: TFRecord files per split.

  Returns:
    The dataset directory (`data_dir/name[/config]/version`).
  """
  variant = get(name)
  if isinstance(examples_per_split, Mapping):
    counts = dict(examples_per_split)
    unknown = set(counts) - set(variant.splits)
    if unknown:
      raise ValueError(f"{name!r} has splits {sorted(variant.splits)}; got "
                       f"unknown {sorted(unknown)} in examples_per_split.")
  else:
    counts = {split: examples_per_split for split in variant.splits}
  for split, n in counts.items():
    if not isinstance(n, int) or n < 1:
      raise ValueError(f"examples_per_split[{split!r}] must be a positive "
                       f"int, got {n!r}.")
    if n > variant.splits[split]:
      raise ValueError(f"{name!r} split {split!r} has {variant.splits[split]} "
                       f"examples in the real dataset; asked for {n}.")
  if not isinstance(image_size, int) or image_size < 8:
    raise ValueError(f"image_size must be an int >= 8, got {image_size!r}.")
  generate = _GENERATORS[variant.tfds_name]
  splits = {split: list(generate(_rng(seed, name, split), n, split,
                                 image_size))
            for split, n in counts.items()}
  return tfds_writer.write_like_registered(name, data_dir, splits,
                                           num_shards=num_shards)
