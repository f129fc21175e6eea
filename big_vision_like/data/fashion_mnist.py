"""Fashion-MNIST as a standard TFDS dataset, built offline from Debian's files.

The machines this code runs on often have no network, but we still want one
real dataset that flows through exactly the same `tfds` code path as ImageNet.
Debian's `dataset-fashion-mnist` package ships the original idx files; this
module writes them into a TFDS data dir under the name, version, features and
splits of TFDS's own `fashion_mnist` builder, so that a plain
`tfds.load("fashion_mnist", data_dir=...)` (the official builder class) reads it
without ever trying to download anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import io
import logging
import os
import struct
import time
import zlib

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist as tfds_mnist

NAME = "fashion_mnist"
DEFAULT_SOURCE_DIR = "/usr/share/datasets/fashion-mnist"
SOURCE_DIR_ENV = "BVL_FASHION_MNIST_DIR"
SOURCE_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
NUM_CLASSES = 10
IMAGE_SIDE = 28
# idx magic numbers: 0x08 = unsigned byte data, last byte = number of dims.
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801


class SourceFilesMissingError(FileNotFoundError):
  """The Fashion-MNIST idx files are not installed."""


class CorruptSourceFileError(ValueError):
  """An idx file is truncated, not gzip, or has an unexpected header."""


def default_data_dir() -> str:
  """TFDS's default data dir: `$TFDS_DATA_DIR` or `~/tensorflow_datasets`."""
  return os.path.expanduser(tfds.core.constants.get_default_data_dir())


def default_source_dir() -> str:
  """`$BVL_FASHION_MNIST_DIR` or the Debian package's install location."""
  return os.environ.get(SOURCE_DIR_ENV) or DEFAULT_SOURCE_DIR


def _read_gz(path: str) -> bytes:
  try:
    with gzip.open(path, "rb") as f:
      return f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise CorruptSourceFileError(
        f"Fashion-MNIST source file {path} is unreadable (truncated or not "
        f"gzip): {e}") from e


def read_idx_images(path: str) -> np.ndarray:
  """Reads a gzipped idx3 image file into a uint8 array [N, 28, 28, 1]."""
  buf = _read_gz(path)
  if len(buf) < 16:
    raise CorruptSourceFileError(
        f"Fashion-MNIST source file {path} is too short for an idx3 header "
        f"({len(buf)} bytes).")
  magic, n, rows, cols = struct.unpack(">IIII", buf[:16])
  if magic != _IMAGES_MAGIC or (rows, cols) != (IMAGE_SIDE, IMAGE_SIDE):
    raise CorruptSourceFileError(
        f"Fashion-MNIST source file {path} is not an idx3 file of 28x28 "
        f"uint8 images (magic={magic:#010x}, rows={rows}, cols={cols}).")
  expected = 16 + n * rows * cols
  if len(buf) != expected:
    raise CorruptSourceFileError(
        f"Fashion-MNIST source file {path} has {len(buf)} bytes of data, but "
        f"its header promises {n} images ({expected} bytes): truncated?")
  images = np.frombuffer(buf, dtype=np.uint8, offset=16)
  return images.reshape(n, rows, cols, 1)


def read_idx_labels(path: str) -> np.ndarray:
  """Reads a gzipped idx1 label file into an int64 array [N]."""
  buf = _read_gz(path)
  if len(buf) < 8:
    raise CorruptSourceFileError(
        f"Fashion-MNIST source file {path} is too short for an idx1 header "
        f"({len(buf)} bytes).")
  magic, n = struct.unpack(">II", buf[:8])
  if magic != _LABELS_MAGIC:
    raise CorruptSourceFileError(
        f"Fashion-MNIST source file {path} is not an idx1 label file "
        f"(magic={magic:#010x}).")
  if len(buf) != 8 + n:
    raise CorruptSourceFileError(
        f"Fashion-MNIST source file {path} has {len(buf) - 8} labels, but its "
        f"header promises {n}: truncated?")
  labels = np.frombuffer(buf, dtype=np.uint8, offset=8).astype(np.int64)
  if labels.size and labels.max() >= NUM_CLASSES:
    raise CorruptSourceFileError(
        f"Fashion-MNIST source file {path} has label {labels.max()} outside "
        f"[0, {NUM_CLASSES}).")
  return labels


def _source_paths(source_dir: str) -> dict[str, tuple[str, str]]:
  """Full paths of the four idx files; fails with the install hint."""
  paths = {split: tuple(os.path.join(source_dir, f) for f in files)
           for split, files in SOURCE_FILES.items()}
  missing = [p for pair in paths.values() for p in pair
             if not os.path.exists(p)]
  if missing:
    raise SourceFilesMissingError(
        f"Fashion-MNIST source files not found: {', '.join(missing)}. Install "
        f"them with `apt-get install dataset-fashion-mnist` (files land in "
        f"{DEFAULT_SOURCE_DIR}) or point ${SOURCE_DIR_ENV} at a directory "
        f"holding {', '.join(sum(SOURCE_FILES.values(), ()))}.")
  return paths


class _LocalFashionMNIST(tfds_mnist.FashionMNIST, skip_registration=True):
  """The official builder (same name, version, features) fed from local files.

  Only `_split_generators` differs: instead of downloading, it reads the idx
  files from `source_dir`. Everything written to disk is therefore what the
  official `FashionMNIST` builder expects to read.
  """

  name = NAME
  # No checksums file to look up: nothing is downloaded. (Also sidesteps a
  # tfds code path that needs the optional `importlib_resources` package.)
  code_path = None

  def __init__(self, *, source_dir: str, **kwargs):
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    generators = {}
    for split, (images_path, labels_path) in _source_paths(
        self._source_dir).items():
      images = read_idx_images(images_path)
      labels = read_idx_labels(labels_path)
      if len(images) != len(labels):
        raise CorruptSourceFileError(
            f"Fashion-MNIST {split}: {images_path} has {len(images)} images "
            f"but {labels_path} has {len(labels)} labels.")
      generators[split] = self._generate_from_arrays(images, labels)
    return generators

  def _generate_from_arrays(self, images, labels):
    # Keys are the positions in the idx file, like the official builder.
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {"image": image, "label": label}


@contextlib.contextmanager
def _file_lock(path: str):
  """Exclusive inter-process lock, so parallel processes prepare only once."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def is_prepared(data_dir: str | None = None) -> bool:
  """Whether `fashion_mnist` (official version) is already in `data_dir`."""
  data_dir = os.path.expanduser(data_dir or default_data_dir())
  return tfds.builder(NAME, data_dir=data_dir).is_prepared()


def prepare(data_dir: str | None = None, source_dir: str | None = None) -> str:
  """Writes the TFDS `fashion_mnist` dataset from local idx files.

  Args:
    data_dir: TFDS data dir to write to (default: TFDS's default data dir).
    source_dir: directory with the four `*-ubyte.gz` files (default:
      `$BVL_FASHION_MNIST_DIR` or /usr/share/datasets/fashion-mnist).

  Returns:
    The data dir, ready for `tfds.load("fashion_mnist", data_dir=...)`.
    Does nothing if the dataset is already prepared there.
  """
  data_dir = os.path.expanduser(data_dir or default_data_dir())
  source_dir = source_dir or default_source_dir()
  if is_prepared(data_dir):
    return data_dir
  with _file_lock(os.path.join(data_dir, f".{NAME}.prepare.lock")):
    if is_prepared(data_dir):  # Another process did it while we waited.
      return data_dir
    _source_paths(source_dir)  # Fail with the install hint before any work.
    builder = _LocalFashionMNIST(source_dir=source_dir, data_dir=data_dir)
    logging.info("Preparing TFDS %s in %s from %s (first use only)...", NAME, data_dir,
                 source_dir)
    start = time.perf_counter()
    with quiet_tfds():
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(
              try_download_gcs=False,
              compute_stats=tfds.download.ComputeStatsMode.SKIP))
    logging.info("Prepared %s (70,000 images) in %.0f s.", NAME, time.perf_counter() - start)
  return data_dir


@contextlib.contextmanager
def quiet_tfds():
  """TFDS's progress bars and "Downloading and preparing" prints, silenced.

  They are written straight to the terminal (stdout and tqdm), dozens of
  lines in a log file; callers log one line before and after instead.
  """
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
  was_active = tqdm_utils._active  # pylint: disable=protected-access
  tfds.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tfds.display_progress_bar(was_active)
