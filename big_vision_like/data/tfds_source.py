"""Datasets by TFDS name, with a clear message when one is not prepared yet.

Every dataset, from the embedded Fashion-MNIST to ImageNet, is read through a
`tfds.core.DatasetBuilder`. There is no network on most of our machines, so we
never let TFDS try to download: a dataset that is not in the data dir fails
with the exact command that prepares it. Fashion-MNIST is the exception: it is
prepared automatically from Debian's local files (see `fashion_mnist.py`).
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from big_vision_like import registry
from big_vision_like.data import fashion_mnist


class DatasetNotPreparedError(FileNotFoundError):
  """The TFDS dataset is not in the data dir (and cannot be made here)."""


class UnknownDatasetError(ValueError):
  """No TFDS builder has this name."""


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


def get_builder(name: str, data_dir: str | None = None
                ) -> tfds.core.DatasetBuilder:
  """Returns the prepared TFDS builder for `name` ("ds", "ds/config:1.0.0").

  Fashion-MNIST is prepared on first use from the local idx files; any other
  dataset that is missing raises `DatasetNotPreparedError` with the command
  that prepares it.
  """
  data_dir = _resolve_data_dir(data_dir)
  if _base_name(name) == fashion_mnist.NAME:
    fashion_mnist.prepare(data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    msg = registry.unknown_name_message(
        "TFDS dataset", _base_name(name), tfds.list_builders())
    raise UnknownDatasetError(f"{msg} (data_dir={data_dir})") from e
  if not builder.is_prepared():
    msg = (f"TFDS dataset {name!r} is not prepared in data_dir={data_dir} "
           f"(looked for {builder.data_dir}). Prepare it with:\n  "
           f"{_prepare_command(name, data_dir, builder)}")
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
      msg += ("\nThis dataset needs a manual download first:\n"
              f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    raise DatasetNotPreparedError(msg)
  return builder


def num_examples(name: str, split: str, data_dir: str | None = None) -> int:
  """Number of examples in `split` (sub-splits like "train[:90%]" work)."""
  builder = get_builder(name, data_dir)
  try:
    return int(builder.info.splits[split].num_examples)
  except (KeyError, ValueError) as e:
    raise ValueError(
        f"Dataset {name!r} has no split {split!r}; its splits are "
        f"{sorted(builder.info.splits.keys())}: {e}") from e
