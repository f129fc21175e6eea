"""Imports a folder of class sub-folders of images as a TFDS dataset.

Researchers often have their own data as `root/<class>/<image>.jpg` (or
`root/train/<class>/...`, `root/val/<class>/...`). Converting it once into a
standard TFDS dataset lets it flow through exactly the same `tfds` path,
input pipeline and evaluators as ImageNet, by name:

  python -m big_vision_like.data.image_folder --src DIR --name my_flowers \\
      --data_dir DIR [--val_fraction 0.1] [--skip_corrupt]

then `data=dict(name="my_flowers", split="train", data_dir=DIR)`.

Features: `image` (JPEG; JPEG files are stored byte-for-byte, other formats
are re-encoded as JPEG so that every pp op, including the fused
`decode_jpeg_and_inception_crop`, works), `label` (ClassLabel over the sorted
class folder names) and `file_name` (path relative to the source folder).
Every image is fully decoded before anything is written: a corrupt file fails
the import naming it (or is skipped and counted with `skip_corrupt`). The
result depends only on the folder's contents and the seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import warnings
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from big_vision_like.data import fashion_mnist
from big_vision_like.data import tf_options
from big_vision_like.data import tfds_writer

MODULE = "big_vision_like.data.image_folder"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Split folder names we recognise, and the TFDS split each one becomes.
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "validation",
                 "valid": "validation", "validation": "validation",
                 "test": "test"}
VERSION = "1.0.0"
TARGET_SHARD_BYTES = 128 << 20  # Default shard size when num_shards is None.
_JPEG_MAGIC = b"\xff\xd8\xff"


class ImageFolderError(ValueError):
  """The folder cannot be imported (layout, empty classes, corrupt files)."""


class IgnoredFilesWarning(UserWarning):
  """Files in the folder that are not images of a class were ignored."""


def command(name: str, data_dir: str, src: str = "DIR_OF_CLASS_FOLDERS"
            ) -> str:
  """The shell command that imports a folder as dataset `name`."""
  return (f"python -m {MODULE} --src {src} --name {name} "
          f"--data_dir {data_dir}")


@dataclasses.dataclass(frozen=True)
class _Image:
  path: str  # Absolute.
  relative: str  # To the source folder, "/"-separated: the `file_name`.
  class_name: str


def _is_image(filename: str) -> bool:
  return filename.lower().endswith(IMAGE_EXTENSIONS)


def _subdirs(path: str) -> list[str]:
  return sorted(e.name for e in os.scandir(path)
                if e.is_dir() and not e.name.startswith("."))


def _scan_classes(src: str, split_dir: str, ignored: list[str]
                  ) -> dict[str, list[_Image]]:
  """class name -> its images (recursively, sorted) under `split_dir`."""
  classes = {}
  for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
    if not entry.is_dir() or entry.name.startswith("."):
      ignored.append(os.path.relpath(entry.path, src))  # Stray files.
      continue
    images = []
    for root, dirs, files in os.walk(entry.path):
      dirs[:] = sorted(d for d in dirs if not d.startswith("."))
      for f in sorted(files):
        path = os.path.join(root, f)
        relative = os.path.relpath(path, src).replace(os.sep, "/")
        if f.startswith(".") or not _is_image(f):
          ignored.append(relative)  # .DS_Store, ._x.jpg, notes.txt, ...
        else:
          images.append(_Image(os.path.abspath(path), relative, entry.name))
    classes[entry.name] = images
  return classes


def _split_dirs(src: str, splits: Mapping[str, str] | None
                ) -> dict[str, str]:
  """TFDS split name -> folder holding that split's class folders."""
  if splits is not None:
    out = {}
    for split, folder in splits.items():
      path = os.path.join(src, folder)
      if not os.path.isdir(path):
        raise ImageFolderError(f"Split {split!r}: folder {path} does not "
                               f"exist.")
      out[split] = path
    return out
  top = _subdirs(src)
  named = [d for d in top if d.lower() in SPLIT_FOLDERS]
  if not named:
    return {"train": src}  # Flat: src/<class>/...
  if len(named) != len(top):
    raise ImageFolderError(
        f"{src} mixes split folders {named} with other folders "
        f"{sorted(set(top) - set(named))}. Use either split folders "
        f"(train/, val/, test/) each holding class folders, or only class "
        f"folders; or pass splits={{'train': 'train', ...}} explicitly.")
  out = {}
  for d in named:
    split = SPLIT_FOLDERS[d.lower()]
    if split in out:
      raise ImageFolderError(f"{src}: folders {os.path.basename(out[split])!r}"
                             f" and {d!r} both mean split {split!r}.")
    out[split] = os.path.join(src, d)
  return out


def _hold_out(images: list[_Image], fraction: float,
              rng: np.random.Generator) -> tuple[list[_Image], list[_Image]]:
  """Per class, moves round(fraction * n) images (at least 1, at most n-1)."""
  train, held = [], []
  by_class: dict[str, list[_Image]] = {}
  for image in images:
    by_class.setdefault(image.class_name, []).append(image)
  for class_name in sorted(by_class):
    members = by_class[class_name]
    k = min(max(1, round(fraction * len(members))), len(members) - 1)
    chosen = set(rng.permutation(len(members))[:k].tolist())
    for i, image in enumerate(members):
      (held if i in chosen else train).append(image)
  return train, held


def _check_images(images: Sequence[_Image]) -> dict[str, str]:
  """Decodes every image (in parallel); returns path -> error of bad ones."""
  if not images:
    return {}
  paths = tf.constant([im.path for im in images])

  def decode(index, path):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                               expand_animations=False)
    return index, tf.shape(image)

  ds = tf.data.Dataset.from_tensor_slices(paths).enumerate()
  ds = ds.map(decode, num_parallel_calls=tf_options.parallelism(),
              deterministic=False)
  ds = tf_options.apply(ds.ignore_errors())
  ok = {int(i) for i, _ in ds.as_numpy_iterator()}
  errors = {}
  for index, image in enumerate(images):
    if index in ok:
      continue
    try:  # Decode again, eagerly, to report TensorFlow's own reason.
      data = tf.io.read_file(image.path)
      tf.io.decode_image(data, channels=3, expand_animations=False)
      errors[image.path] = "could not be decoded"
    except (tf.errors.OpError, ValueError) as e:
      errors[image.path] = str(getattr(e, "message", e)).strip()
  return errors


class _Examples:
  """A split's examples, loaded lazily in order (so writing streams)."""

  def __init__(self, images: Sequence[_Image], labels: Mapping[str, int],
               jpeg_quality: int):
    self._images = list(images)
    self._labels = labels
    self._quality = jpeg_quality

  def __len__(self) -> int:
    return len(self._images)

  def __iter__(self) -> Iterator[dict[str, Any]]:
    quality = self._quality

    def load(path):
      data = tf.io.read_file(path)
      is_jpeg = tf.strings.substr(data, 0, 3) == _JPEG_MAGIC
      return tf.cond(is_jpeg, lambda: data, lambda: tf.io.encode_jpeg(
          tf.io.decode_image(data, channels=3, expand_animations=False),
          quality=quality))

    paths = tf.data.Dataset.from_tensor_slices(
        tf.constant([im.path for im in self._images], tf.string))
    encoded = tf_options.apply(paths.map(
        load, num_parallel_calls=tf_options.parallelism()).prefetch(64))
    for image, data in zip(self._images, encoded.as_numpy_iterator()):
      yield {"image": data, "label": self._labels[image.class_name],
             "file_name": image.relative}


def features_for(class_names: Sequence[str]) -> tfds.features.FeaturesDict:
  """The features of an imported image folder."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3),
                                   encoding_format="jpeg"),
      "label": tfds.features.ClassLabel(names=list(class_names)),
      "file_name": tfds.features.Text(),
  })


def prepare_image_folder(src_dir: str, name: str, data_dir: str, *,
                         splits: Mapping[str, str] | None = None,
                         val_fraction: float = 0.0, seed: int = 0,
                         num_shards: int | None = None,
                         skip_corrupt: bool = False,
                         jpeg_quality: int = 95,
                         log=print) -> dict[str, int]:
  """Writes the image folder `src_dir` as TFDS dataset `name` in `data_dir`.

  Args:
    src_dir: `src_dir/<class>/**/<image>` or `src_dir/<split>/<class>/...`
      with split folders train/, val/ (-> "validation"), test/.
    name: the new dataset's name (a valid TFDS name, not a registered one).
    data_dir: TFDS data dir; the dataset goes to `data_dir/name/1.0.0`.
    splits: TFDS split name -> folder under `src_dir` holding its class
      folders; None detects the layout.
    val_fraction: with no validation folder, move this fraction of each
      class's training images (seeded) into a "validation" split.
    seed: the held-out choice and the example order of every split (images
      are shuffled so the tfrecords are not sorted by class).
    num_shards: TFRecord files per split (default: ~128 MiB each).
    skip_corrupt: skip (and count) images that do not decode instead of
      failing.
    jpeg_quality: quality of non-JPEG images re-encoded as JPEG.
    log: where progress lines go.

  Returns:
    split -> number of examples written.
  """
  src_dir = os.path.abspath(os.path.expanduser(src_dir))
  if not os.path.isdir(src_dir):
    raise ImageFolderError(f"--src {src_dir} is not a directory.")
  if not tfds.core.naming.is_valid_dataset_name(name):
    raise ImageFolderError(f"Dataset name {name!r} is not valid for TFDS "
                           f"(use lower_case_with_underscores).")
  if name in tfds.list_builders():
    raise ImageFolderError(f"{name!r} is a registered TFDS dataset; pick "
                           f"another name for your folder.")
  existing = os.path.join(data_dir, name, VERSION, "dataset_info.json")
  if tf.io.gfile.exists(existing):
    raise FileExistsError(f"Dataset {name!r} already exists in {data_dir} "
                          f"({os.path.dirname(existing)}); remove it or pick "
                          f"another name.")
  if not 0.0 <= val_fraction < 1.0:
    raise ImageFolderError(f"val_fraction must be in [0, 1), got "
                           f"{val_fraction}.")

  ignored: list[str] = []
  split_dirs = _split_dirs(src_dir, splits)
  if src_dir not in split_dirs.values():  # Stray files next to split folders.
    ignored += sorted(e.name for e in os.scandir(src_dir) if not e.is_dir())
  per_split = {split: _scan_classes(src_dir, folder, ignored)
               for split, folder in split_dirs.items()}
  empty = [os.path.join(folder, c) for split, folder in split_dirs.items()
           for c, ims in per_split[split].items() if not ims]
  if empty:
    raise ImageFolderError(
        f"Class folder(s) with no {'/'.join(IMAGE_EXTENSIONS)} images: "
        f"{', '.join(empty)}. Remove them or add images.")
  class_names = sorted({c for classes in per_split.values() for c in classes})
  if not class_names:
    raise ImageFolderError(
        f"No class folders in {src_dir}: expected {src_dir}/<class>/<image>"
        f" (or {src_dir}/train/<class>/<image>, .../val/...).")
  if ignored:
    shown = ", ".join(ignored[:20]) + (" ..." if len(ignored) > 20 else "")
    warnings.warn(f"Ignored {len(ignored)} file(s) in {src_dir} that are not "
                  f"images in a class folder: {shown}", IgnoredFilesWarning,
                  stacklevel=2)

  rng = np.random.default_rng(seed)
  images = {split: [im for c in sorted(classes) for im in classes[c]]
            for split, classes in per_split.items()}
  if val_fraction:
    if "validation" in images:
      raise ImageFolderError(
          f"{src_dir} already has a validation folder; val_fraction="
          f"{val_fraction} would make a second one.")
    if "train" not in images:
      raise ImageFolderError("val_fraction needs a train split.")
    images["train"], images["validation"] = _hold_out(
        images["train"], val_fraction, rng)

  errors = _check_images([im for split in images.values() for im in split])
  if errors:
    listing = "\n  ".join(f"{p}: {e}" for p, e in sorted(errors.items()))
    if not skip_corrupt:
      raise ImageFolderError(
          f"{len(errors)} image file(s) cannot be decoded (pass "
          f"--skip_corrupt to leave them out):\n  {listing}")
    warnings.warn(f"Skipped {len(errors)} corrupt image(s):\n  {listing}",
                  IgnoredFilesWarning, stacklevel=2)
    images = {s: [im for im in ims if im.path not in errors]
              for s, ims in images.items()}

  labels = {c: i for i, c in enumerate(class_names)}
  examples = {}
  for split in sorted(images):
    order = rng.permutation(len(images[split]))
    examples[split] = _Examples([images[split][i] for i in order], labels,
                                jpeg_quality)
    if not len(examples[split]):
      raise ImageFolderError(f"Split {split!r} has no usable images.")
  if num_shards is None:
    total_bytes = sum(os.path.getsize(im.path) for ims in images.values()
                      for im in ims)
    largest = max(len(ims) for ims in images.values())
    share = total_bytes / sum(len(ims) for ims in images.values())
    num_shards = max(1, math.ceil(largest * share / TARGET_SHARD_BYTES))
  # A shard per example at most (TFDS dislikes empty shards).
  shards = max(1, min(num_shards, min(len(e) for e in examples.values())))
  dataset_dir = tfds_writer.write_dataset(
      name, data_dir, examples, features=features_for(class_names),
      version=VERSION, num_shards=shards,
      description=f"Image folder {src_dir}, imported by {MODULE}.")
  counts = {split: len(e) for split, e in examples.items()}
  log(f"{name}: wrote {dataset_dir} with {len(class_names)} classes; "
      + ", ".join(f"{s}={n:,}" for s, n in counts.items())
      + (f"; skipped {len(errors)} corrupt" if errors else ""))
  return counts


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog=f"python -m {MODULE}",
      description="Import a folder of class sub-folders of images (JPEG/PNG) "
                  "as a TFDS dataset.")
  parser.add_argument("--src", required=True,
                      help="SRC/<class>/<image> or SRC/{train,val,test}/"
                           "<class>/<image>")
  parser.add_argument("--name", required=True, help="new dataset name")
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data dir (default: $TFDS_DATA_DIR or "
                           "~/tensorflow_datasets)")
  parser.add_argument("--val_fraction", type=float, default=0.0,
                      help="hold out this fraction of each class as "
                           "'validation' (when there is no val/ folder)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num_shards", type=int, default=None)
  parser.add_argument("--skip_corrupt", action="store_true",
                      help="skip images that do not decode (default: fail)")
  args = parser.parse_args(argv)
  data_dir = args.data_dir
  if data_dir is None:
    data_dir = fashion_mnist.default_data_dir()
  try:
    prepare_image_folder(args.src, args.name, data_dir,
                         val_fraction=args.val_fraction, seed=args.seed,
                         num_shards=args.num_shards,
                         skip_corrupt=args.skip_corrupt)
  except (ImageFolderError, FileExistsError) as e:
    print(f"image_folder: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
