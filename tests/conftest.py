"""Shared pytest fixtures for the whole test suite."""

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
