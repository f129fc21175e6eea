"""Helpers shared by the tests; shared pytest fixtures live in conftest.py.

Import them one way everywhere, in test modules and in the scripts the tests
start with `python -c` and cwd = the repository root alike (a script run
from a file needs PYTHONPATH=<repo root> for it):

    from tests.helpers import free_port, tiny_config

(`tests/__init__.py` makes this work under a bare `pytest` too.)
Test modules never import from each other: what two of them (or a test and
its subprocess) need goes here. Importing this module stays cheap: TensorFlow,
TFDS and big_vision_like are imported inside the functions that use them, so
a test module may still set XLA_FLAGS before anything initialises jax.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import socket
import struct

import numpy as np
import pytest

# ------------------------------------------------------------------ processes


def free_port() -> int:
  """A localhost TCP port nobody listens on right now (for a coordinator)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


# ------------------------------------------------- tiny fashion_vit training

TINY_MODEL = dict(depth=1, width=32, mlp_dim=64, num_heads=2)


def tiny_overrides(data_dir, **extra):
  """`--config.` overrides (without the prefix) for a tiny, fast run."""
  items = dict(**{f"model.{k}": v for k, v in TINY_MODEL.items()},
               **{"input.data.data_dir": data_dir, "evals.test.data.data_dir": data_dir,
                  "input.batch_size": 32, "input.shuffle_buffer_size": 1000},
               **extra)
  return [f"{k}={v}" for k, v in items.items()]


def tiny_config(data_dir, **extra):
  """The runlocal config with a tiny model; `extra` may also add keys (a.b=v)."""
  from big_vision_like import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config("configs/fashion_vit.py:runlocal",
                                  tiny_overrides(data_dir))
  for key, value in extra.items():
    *parents, last = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    with node.ignore_type():
      node[last] = value
  return config


def read_jsonl(path):
  """The rows of a JSON-lines file (e.g. a workdir's metrics.jsonl)."""
  with open(path) as f:
    return [json.loads(line) for line in f]


# ------------------------------------------------------ datasets written here

# The tiny synthetic Fashion-MNIST: 50 train and 23 test images whose pixels
# all equal the image's id, label = id % 10.
TINY_TRAIN_IDS, TINY_TEST_IDS = np.arange(50), np.arange(100, 123)


def write_idx(source_dir, prefix, images, labels):
  """Writes gzipped idx3/idx1 files like the official Fashion-MNIST ones."""
  os.makedirs(source_dir, exist_ok=True)
  n = len(images)
  with gzip.open(os.path.join(source_dir, f"{prefix}-images-idx3-ubyte.gz"),
                 "wb") as f:
    f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
  with gzip.open(os.path.join(source_dir, f"{prefix}-labels-idx1-ubyte.gz"),
                 "wb") as f:
    f.write(struct.pack(">II", 0x801, n) + labels.astype(np.uint8).tobytes())


def id_images(ids):
  """28x28x1 images whose every pixel is the example's id."""
  return np.stack([np.full((28, 28, 1), i, np.uint8) for i in ids])


def write_fashion_mnist_source(source_dir, train_ids=TINY_TRAIN_IDS,
                               test_ids=TINY_TEST_IDS) -> str:
  """Fashion-MNIST source files (train, t10k) of `id_images`, label = id % 10.

  By default the tiny synthetic Fashion-MNIST (`TINY_TRAIN_IDS`,
  `TINY_TEST_IDS`). Returns `source_dir` as a str.
  """
  for prefix, ids in (("train", train_ids), ("t10k", test_ids)):
    ids = np.asarray(ids)
    write_idx(source_dir, prefix, id_images(ids), ids % 10)
  return str(source_dir)


def write_tfds(data_dir, name, splits, features, **kw) -> dict:
  """Writes a small real TFDS dataset (`tfds_writer.write_dataset`).

  Returns its input `data` dict; the split is the first of `splits`.
  """
  from big_vision_like.data import tfds_writer  # pylint: disable=g-import-not-at-top
  tfds_writer.write_dataset(name, str(data_dir), splits, features=features, **kw)
  return {"name": name, "split": next(iter(splits)), "data_dir": str(data_dir)}


def corrupt_records(data_dir, name, split, bad: dict[int, bytes]):
  """Replaces the image bytes of records (index within the split)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(os.path.join(
      str(data_dir), name, "1.0.0", f"{name}-{split}.tfrecord-*")))
  index = 0
  for path in files:
    records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    out = []
    for record in records:
      if index in bad:
        example = tf.train.Example.FromString(record)
        example.features.feature["image"].bytes_list.value[0] = bad[index]
        record = example.SerializeToString()
      out.append(record)
      index += 1
    with tf.io.TFRecordWriter(path) as w:
      for record in out:
        w.write(record)


def write_imagenet_variants(data_dir, examples_per_split: dict, **kw) -> str:
  """Small ImageNet variants (`write_small_variant`) in one data dir.

  `examples_per_split`: variant name -> its `examples_per_split`; `kw` goes
  to every `write_small_variant` call. Returns `data_dir` as a str.
  """
  from big_vision_like.data import imagenet_variants  # pylint: disable=g-import-not-at-top
  for name, counts in examples_per_split.items():
    imagenet_variants.write_small_variant(name, str(data_dir),
                                          examples_per_split=counts, **kw)
  return str(data_dir)


# ---------------------------------------------------------------- assertions


def assert_batches_equal(a, b):
  """Two lists of batches (dicts of arrays) are equal, key by key."""
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def assert_pp_error(call, fragments):
  """`call()` raises a PPError whose message holds every one of `fragments`."""
  from big_vision_like.pp.builder import PPError  # pylint: disable=g-import-not-at-top
  with pytest.raises(PPError) as e:
    call()
  for fragment in fragments:
    assert fragment in str(e.value)


# ------------------------------------- a linear "model" over Fashion-MNIST

# Its logits are recomputable with numpy from `tfds.load`, independently of
# our input pipeline, batching, padding and sharding (test_evaluators, also
# in the 8-device subprocess that test starts).
PIXEL_PP = "decode(1)|value_range(0, 1)|onehot(10, key='label', key_result='labels')"


def pixel_projection():
  """The fixed (28 * 28, 10) weights of the linear model."""
  return np.random.default_rng(0).normal(size=(28 * 28, 10)).astype(np.float32)


def pixel_predict(params, batch):
  """Logits: the flattened pixels times `params["w"]`."""
  return batch["image"].reshape(batch["image"].shape[0], -1) @ params["w"]
