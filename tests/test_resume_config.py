"""Resuming never misleads: changed configs, another model, damage, read-only workdirs.

One tiny finished run (4 steps, checkpoints at 2 and 4) is made once and
copied per test; each test re-runs train/eval on its copy as a user would.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from big_vision_like import checkpoint, errors
from big_vision_like import eval as eval_lib
from big_vision_like import train as train_lib
from tests.helpers import read_jsonl, tiny_config, tiny_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = dict(total_steps=4, ckpt_steps=2, log_training_steps=2)


@pytest.fixture(scope="module")
def finished_run(fashion_mnist_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("resume") / "run")
  train_lib.train(tiny_config(fashion_mnist_data_dir, **RUN), workdir)
  return workdir


@pytest.fixture()
def run(finished_run, tmp_path):
  copy = str(tmp_path / "run")
  shutil.copytree(finished_run, copy)
  return copy


def _listing(workdir):
  return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


def test_changed_training_keys_are_refused_and_nothing_is_touched(
    fashion_mnist_data_dir, run):
  before = open(os.path.join(run, "config.json")).read()
  steps = _listing(run)
  config = tiny_config(fashion_mnist_data_dir, **RUN, loss="sigmoid_xent", lr=0.5)
  with pytest.raises(errors.ConfigError) as e:
    train_lib.train(config, run)
  msg = str(e.value)
  assert "loss: 'softmax_xent' -> 'sigmoid_xent'" in msg and "lr: " in msg, msg
  assert "allow_config_change" in msg and "evals" not in msg
  assert open(os.path.join(run, "config.json")).read() == before
  assert _listing(run) == steps


def test_safe_keys_pass_and_every_start_is_kept(fashion_mnist_data_dir, run, caplog,
                                                tmp_path):
  shared_cache = str(tmp_path / "shared_cache")
  config = tiny_config(fashion_mnist_data_dir, **{**RUN, "log_training_steps": 1,
                                                  "evals.test.log_percent": 50,
                                                  "compilation_cache": shared_cache})
  with caplog.at_level("INFO"):
    out = train_lib.train(config, run)  # finished: restores step 4 and returns
  assert out["step"] == 4
  assert "log_training_steps: 2 -> 1" in caplog.text
  assert f"compilation_cache: None -> {shared_cache!r}" in caplog.text
  history = sorted(os.listdir(os.path.join(run, "configs")))
  assert len(history) == 2 and history[0].startswith("start_00000000_")
  assert history[1].startswith("start_00000004_")
  first = json.loads(open(os.path.join(run, "configs", history[0])).read())
  assert first["log_training_steps"] == 2
  assert json.loads(open(os.path.join(run, "config.json")).read())["log_training_steps"] == 1


def test_another_model_is_named_never_taken_for_damage(fashion_mnist_data_dir, run):
  steps = _listing(run)
  config = tiny_config(fashion_mnist_data_dir, **RUN, **{"model.depth": 2})
  with pytest.raises(errors.ConfigError, match=r"model\.depth: 1 -> 2"):
    train_lib.train(config, run)
  # Said explicitly: the run goes on, but a checkpoint of another model is an error
  # naming the parameters and both shapes, and no step is set aside as damaged.
  config = tiny_config(fashion_mnist_data_dir, **RUN, **{"model.depth": 2,
                                                         "allow_config_change": True})
  with pytest.raises(checkpoint.CheckpointMismatchError) as e:
    train_lib.train(config, run)
  assert "params/Transformer/encoderblock_1/" in str(e.value)
  assert "not in the checkpoint" in str(e.value) and "the files are fine" in str(e.value)
  config = tiny_config(fashion_mnist_data_dir, **RUN, **{"model.mlp_dim": 128,
                                                         "allow_config_change": True})
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"params/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel: "
                           r"checkpoint \(32, 64\) vs model \(32, 128\)"):
    train_lib.train(config, run)
  assert _listing(run) == steps


def test_cli_refusal_names_the_keys(fashion_mnist_data_dir, run):
  args = [f"--config.{o}" for o in tiny_overrides(fashion_mnist_data_dir)]
  args += [f"--config.{k}={v}" for k, v in RUN.items()]
  proc = subprocess.run(
      [sys.executable, "-m", "big_vision_like.train", "--config",
       "configs/fashion_vit.py:runlocal", "--workdir", run, *args,
       "--config.loss", "sigmoid_xent", "--config.lr=0.5"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode != 0
  assert "these keys differ" in proc.stderr and "loss:" in proc.stderr, proc.stderr[-3000:]
  assert "Resumed from step" not in proc.stderr


def _damage_newest(run):
  step_dir = os.path.join(run, "checkpoints", "4")
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state"))
           for f in fs if os.path.basename(d) == "d"]
  for f in files:  # every data file: whatever the params live in is damaged
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 2)
  return step_dir


def test_eval_falls_back_like_training(fashion_mnist_data_dir, run, caplog):
  step_dir = _damage_newest(run)
  # The damaged step's pending reads report to a closed event loop (hundreds of
  # tracebacks through sys.unraisablehook before): none may get through.
  unraisable, previous = [], sys.unraisablehook
  sys.unraisablehook = lambda u: unraisable.append(u.exc_value)
  try:
    with caplog.at_level("WARNING"):
      out = eval_lib.evaluate(tiny_config(fashion_mnist_data_dir, **RUN), run)
      gc.collect()
      time.sleep(1.0)
  finally:
    sys.unraisablehook = previous
  assert not [e for e in unraisable if "Event loop is closed" in str(e)], unraisable[:3]
  assert "Task exception was never retrieved" not in caplog.text
  assert out["step"] == 2 and 0 <= out["test/prec@1"] <= 1
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert any(step_dir in w and "falling back" in w for w in warnings), warnings
  assert not any("read only" in w or "Metadata file" in w for w in warnings), warnings
  assert "4" in _listing(run)  # eval is read-only: the damaged step stays for training


def _immutable(path, on):
  flag = "+i" if on else "-i"
  return subprocess.run(["chattr", "-R", flag, path], capture_output=True).returncode == 0


def test_eval_of_a_read_only_workdir_prints_and_can_write_elsewhere(
    fashion_mnist_data_dir, run, tmp_path):
  if os.geteuid() != 0:
    os.chmod(run, 0o555)
  elif not _immutable(run, True):
    pytest.skip("root cannot make a read-only directory on this file system (chattr)")
  try:
    config = tiny_config(fashion_mnist_data_dir, **RUN)
    out = eval_lib.evaluate(config, run)
    assert out["step"] == 4 and "test/prec@1" in out
    elsewhere = str(tmp_path / "results")
    again = eval_lib.evaluate(config, run, results_dir=elsewhere)
    assert again["test/prec@1"] == out["test/prec@1"]
  finally:
    if os.geteuid() == 0:
      _immutable(run, False)
    else:
      os.chmod(run, 0o755)
  rows = read_jsonl(os.path.join(elsewhere, "metrics.jsonl"))
  assert rows[-1]["step"] == 4 and rows[-1]["test/prec@1"] == out["test/prec@1"]
  assert os.listdir(os.path.join(elsewhere, "tensorboard"))
