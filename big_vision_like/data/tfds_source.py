"""Datasets by TFDS name, with a clear message when one is not prepared yet.

Every dataset, from the embedded Fashion-MNIST to ImageNet, is read through a
`tfds.core.DatasetBuilder`. There is no network on most of our machines, so we
never let TFDS try to download: a dataset that is not in the data dir fails
with the exact command that prepares it: `prepare_imagenet` for the ImageNet
datasets made from the ILSVRC tarballs, `image_folder` for a name TFDS does
not know (a user's own dataset), `tfds build` for everything else.
Fashion-MNIST is the exception: it is prepared automatically from Debian's
local files (see `fashion_mnist.py`), and so is its captioned image-text
version `fashion_mnist_captions` (see `fashion_captions.py`).
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from big_vision_like import errors
from big_vision_like.data import fashion_captions
from big_vision_like.data import fashion_mnist
from big_vision_like.data import image_folder
from big_vision_like.data import imagenet_variants
from big_vision_like.data import prepare_imagenet


class DatasetNotPreparedError(FileNotFoundError):
  """The TFDS dataset is not in the data dir (and cannot be made here)."""


class UnknownDatasetError(ValueError):
  """Neither a registered TFDS builder nor a dataset in the data dir."""


def _base_name(name: str) -> str:
  """"imagenet_v2/topimages:3.0.0" -> "imagenet_v2"."""
  return name.split("/")[0].split(":")[0].strip()


def _resolve_data_dir(data_dir: str | None) -> str:
  return os.path.expanduser(data_dir or fashion_mnist.default_data_dir())


def _prepare_command(name: str, data_dir: str, builder) -> str:
  """The shell command a user runs to prepare `name` into `data_dir`."""
  command = f"tfds build {name} --data_dir {data_dir}"
  if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
    command += f" --manual_dir {os.path.join(data_dir, 'downloads', 'manual')}"
  return command


def _not_prepared_message(name: str, data_dir: str, builder) -> str:
  msg = (f"TFDS dataset {name!r} is not prepared in data_dir={data_dir} "
         f"(looked for {builder.data_dir}).")
  base = _base_name(name)
  if base in imagenet_variants.ILSVRC_VARIANTS:
    return (f"{msg} Prepare it from the ILSVRC-2012 tarballs (no network "
            f"needed) with:\n  "
            f"{prepare_imagenet.command(data_dir, [base])}\n"
            f"(or `bash scripts/prepare_imagenet.sh` with the same "
            f"arguments). It needs:\n{prepare_imagenet.describe_needs(base)}")
  msg += (f" Prepare it with:\n  {_prepare_command(name, data_dir, builder)}"
          f"\n(`tfds build` downloads the data: run it where there is "
          f"network, then copy {builder.data_dir} here.)")
  if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
    msg += ("\nThis dataset needs a manual download first:\n"
            f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  return msg


def _unknown_message(name: str, data_dir: str, key: str | None) -> str:
  """An unknown name: maybe a typo, maybe a user dataset not imported yet.

  A few lines: the culprit (`key`), close names, and the import command for
  a folder of images; never the ~450 names TFDS knows.
  """
  base = _base_name(name)
  local = []  # Datasets (e.g. imported image folders) already in data_dir.
  if os.path.isdir(data_dir):
    local = [d for d in os.listdir(data_dir)
             if os.path.isdir(os.path.join(data_dir, d)) and d != "downloads"
             and not d.startswith(".")]
  known = set(tfds.list_builders(with_community_datasets=False)) | set(local)
  culprit = f"{key}={name!r}: " if key else ""
  return (f"{culprit}{errors.unknown_name_message('TFDS dataset', base, known, limit=5)}"
          f" It is neither registered with TFDS nor prepared in data_dir={data_dir}. "
          f"If it is your own folder of class sub-folders of images, import it with:\n  "
          f"{image_folder.command(base, data_dir)}")


def get_builder(name: str, data_dir: str | None = None, *, key: str | None = None
                ) -> tfds.core.DatasetBuilder:
  """Returns the prepared TFDS builder for `name` ("ds", "ds/config:1.0.0").

  Fashion-MNIST and `fashion_mnist_captions` are prepared on first use from
  the local idx files; any other dataset that is missing raises
  `DatasetNotPreparedError` with the command that prepares it. An unknown
  name raises `UnknownDatasetError`, a short message that starts with `key`
  (the config key that holds the name, e.g. "config.input.data.name").
  """
  data_dir = _resolve_data_dir(data_dir)
  if _base_name(name) == fashion_mnist.NAME:
    fashion_mnist.prepare(data_dir)
  elif _base_name(name) == fashion_captions.NAME:  # Image-text; built from it.
    fashion_captions.prepare(data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    # `from None`: TFDS's own error lists every dataset it knows.
    raise UnknownDatasetError(_unknown_message(name, data_dir, key)) from None
  if not builder.is_prepared():
    raise DatasetNotPreparedError(
        _not_prepared_message(name, data_dir, builder))
  return builder


def num_examples(name: str, split: str, data_dir: str | None = None, *,
                 key: str | None = None) -> int:
  """Number of examples in `split` (sub-splits like "train[:90%]" work).

  `key` names the config key of `name` in an unknown-dataset error.
  """
  builder = get_builder(name, data_dir, key=key)
  try:
    return int(builder.info.splits[split].num_examples)
  except (KeyError, ValueError) as e:
    raise ValueError(
        f"Dataset {name!r} has no split {split!r}; its splits are "
        f"{sorted(builder.info.splits.keys())}: {e}") from e
