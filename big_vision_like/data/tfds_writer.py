"""Writes real TFDS datasets from Python examples.

Three users: tests and benchmarks that need small datasets with the exact
features and splits of the real ImageNet variants (written under the real
builder's name, version and config, so `tfds.builder("imagenet2012_real")`
reads them with TFDS's own code); the image-folder importer (a user's own
dataset under a new name); and anyone who wants a quick TFDS dataset.

The files are ordinary TFDS files: sharded TFRecords named like TFDS names
them, plus `dataset_info.json`/`features.json` written by
`tfds.folder_dataset.write_metadata`, which also counts the examples of every
split. Nothing is mocked: reading goes through `tfds.builder(...).as_dataset`.
"""

from __future__ import annotations

import collections.abc
import contextlib
import os
from typing import Any, Iterable, Mapping

import tensorflow as tf
import tensorflow_datasets as tfds

Example = Mapping[str, Any]


def _dataset_dir(data_dir: str, name: str, config: str | None,
                 version: str) -> str:
  parts = [data_dir, name] + ([config] if config else []) + [version]
  return os.path.join(*parts)


def _write_split(dataset_dir: str, name: str, split: str,
                 features: tfds.features.FeaturesDict,
                 examples: Iterable[Example], num_shards: int) -> int:
  """Writes `examples` as `num_shards` contiguous blocks of TFRecords.

  An `examples` with a `len()` (e.g. a lazy sequence over image files) is
  streamed to disk one example at a time; any other iterable is first
  collected to count it. Files of a failed write are removed.
  """
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}.")
  if not isinstance(examples, collections.abc.Sized):
    examples = list(examples)
  total = len(examples)
  paths = [os.path.join(
      dataset_dir, f"{name}-{split}.tfrecord-{i:05d}-of-{num_shards:05d}")
           for i in range(num_shards)]
  # Shard i holds a contiguous block, so TFDS's file order is example order.
  per_shard = max(1, -(-total // num_shards))
  count = 0
  try:
    with contextlib.ExitStack() as stack:
      writers = [stack.enter_context(tf.io.TFRecordWriter(p)) for p in paths]
      for index, example in enumerate(examples):
        try:
          record = features.serialize_example(example)
        except Exception as e:  # TFDS raises many types; add which example.
          raise ValueError(f"Cannot encode example {index} of split "
                           f"{split!r} of {name!r}: {e}") from e
        writers[min(index // per_shard, num_shards - 1)].write(record)
        count += 1
    if count != total:
      raise ValueError(f"Split {split!r} of {name!r}: len() said {total} "
                       f"examples, iterating gave {count}.")
  except BaseException:
    for path in paths:
      if tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)
    raise
  return count


def write_dataset(name: str, data_dir: str,
                  splits: Mapping[str, Iterable[Example]], *,
                  features: tfds.features.FeaturesDict,
                  version: str = "1.0.0", config: str | None = None,
                  num_shards: int = 1, description: str | None = None,
                  homepage: str | None = None) -> str:
  """Writes a TFDS dataset `name[/config]:version` into `data_dir`.

  Args:
    name: dataset name (a registered TFDS name or a new one).
    data_dir: the TFDS data dir (the dataset goes to
      `data_dir/name[/config]/version`).
    splits: split name -> iterable of examples in the features' Python
      format (numpy images, ints, strings, lists for sequences).
    features: the `tfds.features.FeaturesDict` of the examples.
    version, config: written into the directory layout and metadata.
    num_shards: TFRecord files per split.
    description, homepage: stored in dataset_info.json.

  Returns:
    The dataset directory.
  """
  if not splits:
    raise ValueError(f"write_dataset({name!r}): no splits given.")
  dataset_dir = _dataset_dir(data_dir, name, config, version)
  if tf.io.gfile.exists(os.path.join(dataset_dir, "dataset_info.json")):
    raise FileExistsError(f"A TFDS dataset already exists in {dataset_dir}; "
                          f"remove it first.")
  tf.io.gfile.makedirs(dataset_dir)
  try:
    for split, examples in splits.items():
      _write_split(dataset_dir, name, split, features, examples, num_shards)
  except BaseException:
    # No dataset_info.json yet, so every record file here is ours: leave no
    # half-written splits for a later write to mix with.
    for path in tf.io.gfile.glob(os.path.join(
        dataset_dir, f"{name}-*.tfrecord-*")):
      tf.io.gfile.remove(path)
    raise
  info = {}
  if description:
    info["description"] = description
  if homepage:
    info["homepage"] = homepage
  # Reads the files back to count examples per split (and checks them).
  tfds.folder_dataset.write_metadata(
      data_dir=dataset_dir, features=features, split_infos=None,
      version=version, check_data=True, **info)
  return dataset_dir


def registered_builder_info(name: str) -> tfds.core.DatasetInfo:
  """The DatasetInfo (features, version, config) of a registered TFDS name.

  `name` may include a config ("imagenet_v2/topimages"). Nothing is read or
  downloaded: the info comes from the builder's code in the tfds package.
  """
  # A data dir that cannot exist: we only want the builder's code-defined info.
  builder = tfds.builder(name, data_dir=os.path.join(
      os.sep, "nonexistent-bvl-data-dir"))
  return builder.info


def write_like_registered(name: str, data_dir: str,
                          splits: Mapping[str, Iterable[Example]], *,
                          num_shards: int = 1) -> str:
  """Writes examples as the registered TFDS dataset `name` would store them.

  Same name, config, version and features as the real builder, so that
  `tfds.builder(name, data_dir=data_dir)` returns the real builder class and
  reads these files. For tests and benchmarks: a small ImageNet variant with
  the real features and splits.
  """
  info = registered_builder_info(name)
  base = name.split(":")[0]
  config = base.split("/")[1] if "/" in base else None
  expected = set(info.splits.keys()) if info.splits else None
  unknown = set(splits) - expected if expected else set()
  if unknown:
    raise ValueError(f"{name!r} has splits {sorted(expected)}; "
                     f"got unknown {sorted(unknown)}.")
  return write_dataset(
      base.split("/")[0], data_dir, splits, features=info.features,
      version=str(info.version), config=config, num_shards=num_shards,
      description=f"Small stand-in for {name}, written by big_vision_like.")
