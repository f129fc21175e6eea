"""gs:// end to end: workdir and TFDS data dir in a bucket of a local GCS server.

The server is gcp-storage-emulator in a subprocess (tests/gcs_emulator.py);
every library reaches it over HTTP as it would reach GCS: TensorFlow's GCS
file system (tf.io.gfile, hence etils.epath, clu's TensorBoard writer, TFDS and
orbax's metadata), tensorstore (orbax's arrays) and google-cloud-storage
(orbax's bucket lookup). What the tests read back they read from the bucket,
and the run's files are checked against the emulator's own object listing.
"""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest
import tensorflow as tf
from etils import epath
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from big_vision_like import metrics as metrics_lib
from big_vision_like.data import fashion_mnist
from tests.gcs_emulator import running_emulator
from tests.helpers import tiny_overrides, write_fashion_mnist_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The running emulator (its env set in os.environ, hence in subprocesses)."""
  with running_emulator(tmp_path_factory.mktemp("gcs")) as emulator:
    yield emulator


@pytest.fixture(scope="module")
def gcs_data_dir(gcs, tmp_path_factory):
  """The tiny synthetic Fashion-MNIST (50 train, 23 test) as a TFDS data dir in the bucket."""
  root = tmp_path_factory.mktemp("tiny_fashion_mnist")
  local = fashion_mnist.prepare(str(root / "tfds"),
                                write_fashion_mnist_source(root / "source"))
  remote = gcs.url("tfds")
  for folder, _, files in tf.io.gfile.walk(local):
    for name in files:
      src = os.path.join(folder, name)
      dst = remote + "/" + os.path.relpath(src, local)
      tf.io.gfile.makedirs(os.path.dirname(dst))
      tf.io.gfile.copy(src, dst)
  assert "tfds/fashion_mnist/3.0.1/dataset_info.json" in gcs.objects("tfds/")
  return remote


def _read_object(gcs, name: str) -> bytes:
  """An object's bytes straight from the emulator (no TensorFlow, no cache)."""
  url = f"{gcs.endpoint}/{gcs.bucket}/{name}"
  with urllib.request.urlopen(url, timeout=30) as r:
    return r.read()


def _rows(text: str) -> list[dict]:
  return [json.loads(line) for line in text.splitlines()]


def _run(gcs, module: str, workdir: str, overrides: list[str]) -> tuple[str, str]:
  """(stdout, stdout + stderr) of a successful `python -m module`."""
  proc = subprocess.run(
      [sys.executable, "-m", module, "--config", "configs/fashion_vit.py:runlocal",
       "--workdir", workdir] + ["--config." + o for o in overrides],
      cwd=REPO, capture_output=True, text=True, timeout=400, check=False)
  assert proc.returncode == 0, (f"{module} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
                                f"\nThe emulator's last requests:\n{gcs.log_tail()}")
  return proc.stdout, proc.stdout + proc.stderr


def test_train_resume_and_eval_in_a_bucket(gcs, gcs_data_dir):
  workdir = gcs.url("runs", "tiny")
  overrides = tiny_overrides(gcs_data_dir, total_steps=6, log_training_steps=2,
                             ckpt_steps=2, **{"evals.test.data.split": "test"})
  _, first = _run(gcs, "big_vision_like.train", workdir, overrides)
  assert "Resumed" not in first
  # The compilation cache is in the bucket too (the default: the workdir's).
  assert f"compilation cache: {workdir}/compilation_cache (0 entries)" in first, first[-3000:]
  assert any(n.startswith("runs/tiny/compilation_cache/jit_step_fn-")
             for n in gcs.objects("runs/tiny/compilation_cache/"))
  # As if the job had been killed right after saving step 4: the same command
  # resumes from the newest checkpoint left in the bucket.
  names = gcs.objects("runs/tiny/checkpoints/")
  assert {n.split("/")[3] for n in names} >= {"4", "6"}, names
  tf.io.gfile.rmtree(workdir + "/checkpoints/6")
  assert not [n for n in gcs.objects("runs/tiny/checkpoints/6/") if not n.endswith("/")]
  _, second = _run(gcs, "big_vision_like.train", workdir, overrides)
  assert "Resumed from step 4" in second, second[-3000:]
  assert "the train step was loaded from the cache" in second, second[-3000:]
  cli, cli_log = _run(gcs, "big_vision_like.eval", workdir, overrides)
  assert re.search(r"this evaluation: [1-9]\d* programs loaded", cli_log), cli_log[-3000:]
  evaluated = json.loads(cli[cli.index("{"):])
  assert evaluated["step"] == 6 and evaluated["test/num_examples"] == 23

  # Everything is in the bucket, nothing landed in a local "gs:" folder.
  names = gcs.objects("runs/tiny/")
  for name in ("config.json", "metrics.jsonl", "checkpoints/6/_CHECKPOINT_METADATA"):
    assert f"runs/tiny/{name}" in names, names
  assert any(n.startswith("runs/tiny/checkpoints/6/state/") for n in names), names
  assert any(n.startswith("runs/tiny/tensorboard/events.out.tfevents.") for n in names), names
  assert not os.path.exists(os.path.join(REPO, "gs:"))

  # metrics.jsonl: both runs and the eval CLI, read from the bucket two ways.
  raw = _read_object(gcs, "runs/tiny/metrics.jsonl").decode()
  with tf.io.gfile.GFile(workdir + "/metrics.jsonl") as f:
    assert f.read() == raw
  rows = _rows(raw)
  assert [r["step"] for r in rows if "train/loss" in r] == [2, 4, 6, 6]  # 6 again after resuming
  evals = [r for r in rows if "test/prec@1" in r]
  assert [r["step"] for r in evals] == [3, 6, 6, 6]  # log_percent=50: 3, 6; resumed: 6; the CLI
  # The resumed run retrained steps 5-6 exactly; the eval CLI agrees with it.
  assert evals[1]["test/prec@1"] == evals[2]["test/prec@1"] == evals[3]["test/prec@1"]

  # TensorBoard's own reader, on the gs:// directory.
  acc = event_accumulator.EventAccumulator(workdir + "/tensorboard")
  acc.Reload()
  assert {"train/loss", "test/prec@1", "perf/img_per_sec"} <= set(acc.Tags()["tensors"])
  tb_loss = {e.step: float(tensor_util.make_ndarray(e.tensor_proto))
             for e in acc.Tensors("train/loss")}
  train_rows = {r["step"]: r for r in rows if "train/loss" in r}
  assert sorted(tb_loss) == [2, 4, 6]
  assert tb_loss[6] == pytest.approx(train_rows[6]["train/loss"], rel=1e-6)


def test_metrics_jsonl_is_buffered_for_a_bucket(gcs):
  name = "buffered/metrics.jsonl"
  writer = metrics_lib.MetricWriter(gcs.url("buffered"), is_main=True,
                                    remote_flush_s=3600)
  for step in range(1, 6):
    writer.write_scalars(step, {"train/loss": 1.0 / step})
  time.sleep(1)  # the writer thread had time to write, had it wanted to
  assert name not in gcs.objects("buffered/")
  writer.flush()
  assert [r["step"] for r in _rows(_read_object(gcs, name).decode())] == [1, 2, 3, 4, 5]
  writer.write_scalars(6, {"train/loss": 0.1})
  writer.close()
  rows = _rows(_read_object(gcs, name).decode())
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert rows[-1]["train/loss"] == pytest.approx(0.1)

  # A process that dies of an exception still writes its buffered rows (atexit).
  crash = ("from big_vision_like import metrics\n"
           f"w = metrics.MetricWriter({gcs.url('crashed')!r}, is_main=True)\n"
           "w.write_scalars(7, {'train/loss': 0.5})\n"
           "raise RuntimeError('the run failed')\n")
  proc = subprocess.run([sys.executable, "-c", crash], cwd=REPO, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 1 and "the run failed" in proc.stderr, proc.stderr[-3000:]
  assert _rows(_read_object(gcs, "crashed/metrics.jsonl").decode()) == [
      {"step": 7, "train/loss": 0.5}]

  # After remote_flush_s the background thread writes without being asked.
  timed = metrics_lib.JsonlWriter(epath.Path(gcs.url("timed.jsonl")), buffer_s=0.5)
  timed.append({"step": 1})
  deadline = time.time() + 30
  while "timed.jsonl" not in gcs.objects("timed") and time.time() < deadline:
    time.sleep(0.2)
  assert _rows(_read_object(gcs, "timed.jsonl").decode()) == [{"step": 1}]
  timed.close()


def test_metrics_write_errors_reach_the_caller(gcs, tmp_path):
  missing = metrics_lib.JsonlWriter(epath.Path("gs://no-such-bucket-here/m.jsonl"), buffer_s=0)
  missing.append({"step": 1})
  with pytest.raises(metrics_lib.MetricsWriteError, match="no-such-bucket-here"):
    missing.flush()
  with pytest.raises(metrics_lib.MetricsWriteError):
    missing.append({"step": 2})
  with pytest.raises(metrics_lib.MetricsWriteError):
    missing.close()

  (tmp_path / "metrics.jsonl").mkdir()  # a directory where the file should be
  local = metrics_lib.MetricWriter(str(tmp_path), is_main=True)
  local.write_scalars(1, {"train/loss": 1.0})
  with pytest.raises(metrics_lib.MetricsWriteError, match="IsADirectoryError"):
    local.close()
