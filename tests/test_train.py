"""End-to-end training on the real (prepared) Fashion-MNIST: outputs, resume, evals, errors.

Each run uses a tiny ViT so that the whole file stays fast on two CPU cores.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from big_vision_like import checkpoint as ckpt_lib
from big_vision_like import config as config_lib
from big_vision_like import eval as eval_lib
from big_vision_like import train as train_lib
from tests.helpers import read_jsonl, tiny_config, tiny_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_writes_everything_and_eval_cli_agrees(fashion_mnist_data_dir, tmp_path):
  config = tiny_config(fashion_mnist_data_dir)
  workdir = str(tmp_path / "run")
  out = train_lib.train(config, workdir)
  assert out["step"] == 20 and not out["preempted"]

  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["model"]["width"] == 32 and saved["total_steps"] == 20

  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [5, 10, 15, 20]
  for key in ("train/lr", "train/grad_norm", "perf/img_per_sec",
              "perf/img_per_sec_per_core", "perf/eta_hours", "perf/mfu"):
    assert key in train_rows[-1], key
  assert 0 < train_rows[-1]["perf/mfu"] < 1
  evals = [r for r in rows if "test/prec@1" in r]
  assert evals[-1]["step"] == 20 and evals[-1]["test/num_examples"] == 1000

  # TensorBoard's own reader sees the same scalars.
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"))
  acc.Reload()
  tags = acc.Tags()["tensors"]  # TF2 summaries store scalars as tensors
  assert "train/loss" in tags and "test/prec@1" in tags and "perf/mfu" in tags
  tb_loss = {e.step: float(tensor_util.make_ndarray(e.tensor_proto))
             for e in acc.Tensors("train/loss")}
  assert tb_loss[20] == pytest.approx(train_rows[-1]["train/loss"], rel=1e-6)

  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  assert ckpt.latest_step() == 20
  ckpt.close()

  # Evaluating the checkpoint without training gives the same numbers, both
  # in-process and through the command line.
  results = eval_lib.evaluate(config, workdir)
  assert results["step"] == 20
  assert results["test/prec@1"] == pytest.approx(out["test/prec@1"], abs=1e-7)
  assert results["test/loss"] == pytest.approx(out["test/loss"], rel=1e-5)
  proc = subprocess.run(
      [sys.executable, "-m", "big_vision_like.eval", "--config",
       "configs/fashion_vit.py:runlocal", "--workdir", workdir]
      + ["--config." + o for o in tiny_overrides(fashion_mnist_data_dir)],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  cli = json.loads(proc.stdout[proc.stdout.index("{"):])
  assert cli["step"] == 20
  assert cli["test/prec@1"] == pytest.approx(out["test/prec@1"], abs=1e-7)
  # eval.py never touches the training data (the checkpoint records the
  # model's input shapes), so it works where only the eval data exists.
  config.input.data = dict(name="no_such_dataset", split="train")
  assert eval_lib.evaluate(config, workdir)["test/prec@1"] == results["test/prec@1"]
  # A training pp without a fixed output size cannot define the model's input.
  config = tiny_config(fashion_mnist_data_dir)
  config.input.pp = ("decode(1)|inception_crop|value_range(-1, 1)"
                     "|onehot(10, key='label', key_result='labels')")
  with pytest.raises(ValueError, match=r"config\.input\.pp gives 'image' of unknown shape"):
    train_lib.train(config, str(tmp_path / "bad_pp"))


def test_eval_without_checkpoint_fails_clearly(fashion_mnist_data_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="No checkpoint in .*train first"):
    eval_lib.evaluate(tiny_config(fashion_mnist_data_dir), str(tmp_path / "empty"))


def test_model_init_loads_all_but_the_skipped_head(fashion_mnist_data_dir, tmp_path):
  source = str(tmp_path / "source")
  train_lib.train(tiny_config(fashion_mnist_data_dir, total_steps=10), source)
  trained = _params_of(source, tiny_config(fashion_mnist_data_dir, total_steps=10), 10)
  # lr 0: after one step the params are exactly what initialisation produced.
  config = tiny_config(fashion_mnist_data_dir, total_steps=1, lr=0.0, wd=0.0,
                       model_init=source, model_init_skip=["head/.*"])
  config.schedule = dict(warmup_steps=0, decay_type="constant")
  out = train_lib.train(config, str(tmp_path / "target"))
  got = jax.tree.map(np.asarray, out["state"]["params"])
  for name in got:
    if name == "head":
      np.testing.assert_array_equal(got["head"]["kernel"], 0)  # fresh zero-init head
      assert np.abs(trained["head"]["kernel"]).sum() > 0
    else:
      jax.tree.map(np.testing.assert_array_equal, got[name], trained[name])


def _params_of(workdir, config, step):
  """Final params as numpy, restored from the run's checkpoint at `step`."""
  out = train_lib.train(config, workdir)  # already finished: restores and returns
  assert out["step"] == step
  return jax.tree.map(np.asarray, out["state"]["params"])


@pytest.mark.parametrize("newest", ["missing", "truncated"])
def test_resumed_run_ends_with_identical_params(fashion_mnist_data_dir, tmp_path, caplog,
                                                newest):
  # Dropout and random augmentation are on, so data order, augmentation and rng
  # streams must all be resumed exactly for the params to match bit for bit.
  extra = {"model.dropout": 0.1, "evals.test.log_percent": 100}
  config = tiny_config(fashion_mnist_data_dir, **extra)
  full = str(tmp_path / "full")
  train_lib.train(config, full)
  # Interrupt: the same run, minus everything after its step-10 checkpoint;
  # or with a damaged step-20 checkpoint, which restore skips (falling back
  # to step 10, whose data position the input must then also restart from).
  part = str(tmp_path / "part")
  shutil.copytree(full, part)
  step20 = os.path.join(part, "checkpoints", "20")
  if newest == "missing":
    shutil.rmtree(step20)
  else:
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step20, "state"))
             for f in fs if os.path.basename(d) == "d"]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:
      f.truncate(os.path.getsize(biggest) // 2)
  with caplog.at_level("WARNING"):
    out = train_lib.train(tiny_config(fashion_mnist_data_dir, **extra), part)
  assert out["step"] == 20
  if newest == "truncated":
    assert any(step20 in r.getMessage() for r in caplog.records), caplog.text
  resumed = jax.tree.map(np.asarray, out["state"]["params"])
  uninterrupted = _params_of(full, config, 20)
  jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)
  losses = lambda w: {r["step"]: r["train/loss"]
                      for r in read_jsonl(os.path.join(w, "metrics.jsonl"))
                      if "train/loss" in r}
  assert losses(part)[15] == losses(full)[15]
  assert losses(part)[20] == losses(full)[20]


def _run_cli(args, env_extra=None, **kw):
  env = dict(os.environ, **(env_extra or {}))
  return subprocess.Popen([sys.executable, "-m", "big_vision_like.train", *args],
                          cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kw)


def test_sigterm_saves_and_resumes(fashion_mnist_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  args = ["--config", "configs/fashion_vit.py:runlocal", "--workdir", workdir]
  overrides = tiny_overrides(fashion_mnist_data_dir, total_steps=100_000,
                             log_training_steps=1, ckpt_steps=100_000)
  proc = _run_cli(args + ["--config." + o for o in overrides])
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics) and len(read_jsonl(metrics)) >= 3:
      break
    time.sleep(0.5)
  assert proc.poll() is None, proc.stdout.read()
  proc.send_signal(signal.SIGTERM)
  log, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, log
  assert "SIGTERM" in log
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  saved = ckpt.latest_step()
  ckpt.close()
  assert saved is not None and 3 <= saved < 100_000
  last_logged = max(r["step"] for r in read_jsonl(metrics))
  assert saved >= last_logged

  # Same workdir again: resumes from the saved step, not from scratch.
  config = config_lib.load_config(
      "configs/fashion_vit.py:runlocal",
      # (a shorter schedule than the first leg's 100,000 steps: said explicitly)
      tiny_overrides(fashion_mnist_data_dir, total_steps=saved + 3, log_training_steps=1,
                     allow_config_change=True))
  out = train_lib.train(config, workdir)
  assert out["step"] == saved + 3
  steps = [r["step"] for r in read_jsonl(metrics) if "train/loss" in r]
  assert steps[-3:] == [saved + 1, saved + 2, saved + 3]


def test_one_and_eight_devices_give_the_same_losses(fashion_mnist_data_dir, tmp_path):
  losses = {}
  for n in (1, 8):
    workdir = str(tmp_path / f"dev{n}")
    overrides = tiny_overrides(fashion_mnist_data_dir, log_training_steps=1,
                               total_steps=8)
    proc = _run_cli(["--config", "configs/fashion_vit.py:runlocal", "--workdir", workdir]
                    + ["--config." + o for o in overrides],
                    env_extra={"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"})
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    assert f"Devices: {n} " in log
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    losses[n] = [r["train/loss"] for r in rows if "train/loss" in r]
    evals = [r for r in rows if "test/prec@1" in r]
    losses[n].append(evals[-1]["test/prec@1"])
  assert len(losses[1]) == 9
  np.testing.assert_allclose(losses[1], losses[8], rtol=2e-5)
  # Training actually moved the loss.
  assert losses[1][7] != losses[1][0]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(fashion_mnist_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  train_lib.train(tiny_config(fashion_mnist_data_dir, total_steps=10), workdir)
  # Resume with pixels scaled to ~3e38: the patch embedding overflows -> NaN loss.
  bad = tiny_config(fashion_mnist_data_dir, total_steps=20)
  bad.input.pp = ("decode(1)|value_range(-3e38, 3e38)"
                  "|onehot(10, key='label', key_result='labels')")
  bad.allow_config_change = True  # another pp and length on purpose
  with pytest.raises(train_lib.NonFiniteLossError, match=r"step 1[1-5].*step 10"):
    train_lib.train(bad, workdir)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  assert ckpt.all_steps() == [5, 10] or ckpt.latest_step() == 10
  ckpt.close()


def test_gradient_accumulation_matches_full_batch(fashion_mnist_data_dir, tmp_path):
  extra = {"total_steps": 3, "evals.test.log_percent": 100}
  full = train_lib.train(tiny_config(fashion_mnist_data_dir, **extra), str(tmp_path / "a"))
  accum = train_lib.train(tiny_config(fashion_mnist_data_dir, grad_accum_steps=4, **extra),
                          str(tmp_path / "b"))
  # Summation order differs (4 micro-batches vs one batch); after 3 Adam steps
  # that is a few 1e-6 on params of ~1e-2. A wrong accumulation would be off
  # by about a step (lr 2e-3).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               jax.tree.map(np.asarray, full["state"]["params"]),
               jax.tree.map(np.asarray, accum["state"]["params"]))


def test_batch_not_divisible_by_devices_names_key(fashion_mnist_data_dir, tmp_path):
  config = tiny_config(fashion_mnist_data_dir, grad_accum_steps=3)
  with pytest.raises(config_lib.ConfigError, match="batch_size=32.*grad_accum_steps=3"):
    train_lib.train(config, str(tmp_path / "run"))


def test_uint8_batches_normalised_on_device_match_host_value_range(
    fashion_mnist_data_dir, tmp_path):
  """pp ending in uint8 + config.device_value_range == value_range on the host."""
  from big_vision_like.config import ConfigError
  host = tiny_config(fashion_mnist_data_dir, total_steps=3, log_training_steps=1)
  device = tiny_config(fashion_mnist_data_dir, total_steps=3, log_training_steps=1)
  device.input.pp = device.input.pp.replace("|value_range(-1, 1)", "")
  device.evals.test.pp = device.evals.test.pp.replace("|value_range(-1, 1)", "")
  assert "value_range" not in device.input.pp + device.evals.test.pp
  with pytest.raises(ConfigError, match="uint8 images.*device_value_range"):
    train_lib.train(device, str(tmp_path / "missing"))
  with device.ignore_type():
    device.device_value_range = (-1, 1)
  a = train_lib.train(host, str(tmp_path / "host"))
  b = train_lib.train(device, str(tmp_path / "device"))
  losses = lambda run: [r["train/loss"] for r in read_jsonl(tmp_path / run / "metrics.jsonl")
                        if "train/loss" in r]
  np.testing.assert_allclose(losses("device"), losses("host"), rtol=1e-6)
  assert b["test/prec@1"] == pytest.approx(a["test/prec@1"], abs=1e-6)
  with device.ignore_type():
    device.device_value_range = (1, 1)
  with pytest.raises(ConfigError, match="device_value_range must be"):
    config_lib.validate(device)
