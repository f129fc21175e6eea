"""Shared pytest fixtures for the whole test suite."""

import os
import tempfile

import pytest

from big_vision_like.data import fashion_mnist


@pytest.fixture(scope="session")
def fashion_mnist_data_dir(tmp_path_factory) -> str:
  """A TFDS data dir holding the real Fashion-MNIST (prepared once per session).

  Built from Debian's `dataset-fashion-mnist` files (about 20 s on 2 cores).
  Fails with the `apt-get install dataset-fashion-mnist` hint if they are
  missing (or set BVL_FASHION_MNIST_DIR).
  """
  return fashion_mnist.prepare(str(tmp_path_factory.mktemp("tfds_data")))


@pytest.fixture(scope="session", autouse=True)
def _session_tempdir(tmp_path_factory):
  """Every temp file of the session (ours, TFDS's, subprocesses') in one dir.

  TFDS leaks an empty `tmp*tfds` directory each time a builder is made for a
  dataset that is not prepared yet (`DatasetInfo.initialize_from_bucket`);
  the suite makes hundreds. Pointing `tempfile` and TMPDIR at a pytest temp
  dir keeps /tmp clean: pytest prunes its old base dirs.
  """
  path = str(tmp_path_factory.mktemp("tempfile"))
  old_tempdir, old_env = tempfile.tempdir, os.environ.get("TMPDIR")
  tempfile.tempdir = path
  os.environ["TMPDIR"] = path
  yield path
  tempfile.tempdir = old_tempdir
  if old_env is None:
    os.environ.pop("TMPDIR", None)
  else:
    os.environ["TMPDIR"] = old_env
