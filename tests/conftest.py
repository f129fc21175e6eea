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


# The files that take longest, heaviest first (seconds of their slowest tests
# in one two-worker run, `--durations=60`, 2026-12-07: test_train 360,
# test_contrastive_train 263, test_reshard_restore 231, test_fewshot 183,
# test_distributed 171, test_scale_out 136, ...). With two workers and whole
# files per worker, a long file that starts last is run alone while the
# other worker idles; started first, it overlaps with the many short files.
_SLOWEST_FILES = (
    "test_train.py", "test_contrastive_train.py", "test_reshard_restore.py",
    "test_fewshot.py", "test_distributed.py", "test_scale_out.py",
    "test_mixup.py", "test_gcs.py", "test_benchmark_input.py",
    "test_sharding.py", "test_compile_cache.py", "test_fault_injection.py",
    "test_filter_pairs.py", "test_profiling.py", "test_watchdog.py",
    "test_precision.py", "test_input_pipeline.py")


def pytest_collection_modifyitems(items):
  """Puts the slowest files first (the order xdist hands files out in).

  scripts/run_tests.sh passes --no-loadscope-reorder: xdist would otherwise
  order files by their number of tests, which puts files of a few long
  multi-process tests last. The order of tests within a file is kept.
  """
  rank = {name: i for i, name in enumerate(_SLOWEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
