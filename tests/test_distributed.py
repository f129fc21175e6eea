"""Multi-process start-up, joint preemption and dead-peer detection.

The subprocess tests run the real trainer as 2 processes x 2 fake CPU
devices on localhost (tiny ViT, fashion_vit runlocal): SIGTERM to ONE process
must stop both after the same step with one joint checkpoint; SIGKILL of one
process must make the other exit non-zero within the heartbeat bound. The
settings logic (flags > BVL_* variables > --distributed) is tested in-process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from big_vision_like import distributed
from big_vision_like import config as config_lib
from tests.helpers import free_port, tiny_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {"BVL_COORDINATOR_ADDRESS": "localhost:1234", "BVL_NUM_PROCESSES": "2",
       "BVL_PROCESS_ID": "1"}


# ---------------------------------------------------------------- settings


def test_nothing_set_is_one_process():
  assert distributed.resolve(environ={}) is None
  # initialize() then leaves jax.distributed alone (this process stays single).
  assert distributed.initialize(environ={}) is None
  assert distributed.describe().startswith("Single process")


def test_flags_then_env_then_auto():
  assert distributed.resolve(environ=ENV) == distributed.Settings(
      "env", "localhost:1234", 2, 1)
  # Explicit settings win over the environment.
  assert distributed.resolve("10.0.0.1:8476", 4, 3, environ=ENV) == distributed.Settings(
      "flags", "10.0.0.1:8476", 4, 3)
  assert distributed.resolve(auto=True, environ={}) == distributed.Settings("auto")
  assert distributed.resolve(auto=True, environ=ENV).source == "env"
  # A complete SLURM job step is left to JAX's detection.
  slurm = {k: "1" for k in distributed.SLURM_ENV_VARS}
  assert distributed.resolve(auto=True, environ=slurm) == distributed.Settings("auto")
  # Without --distributed, SLURM variables alone do not make a multi-process run.
  assert distributed.resolve(environ=slurm) is None


@pytest.mark.parametrize("kwargs, environ, message", [
    (dict(num_processes=2), {},
     "go together: missing --coordinator_address, --process_id"),
    (dict(coordinator_address="localhost:1", num_processes=2), {},
     "missing --process_id"),
    ({}, {"BVL_NUM_PROCESSES": "2"},
     "BVL_NUM_PROCESSES set but BVL_COORDINATOR_ADDRESS, BVL_PROCESS_ID missing"),
    ({}, dict(ENV, BVL_PROCESS_ID=" "), "BVL_PROCESS_ID missing (or empty)"),
    ({}, dict(ENV, BVL_NUM_PROCESSES="two"), "BVL_NUM_PROCESSES='two' is not an integer"),
    ({}, dict(ENV, BVL_PROCESS_ID="2"), "BVL_PROCESS_ID=2 must be in [0, 2)"),
    ({}, dict(ENV, BVL_COORDINATOR_ADDRESS="localhost"),
     "BVL_COORDINATOR_ADDRESS='localhost' is not HOST:PORT"),
    (dict(coordinator_address="h:70000", num_processes=1, process_id=0), {},
     "--coordinator_address='h:70000' is not HOST:PORT"),
    (dict(coordinator_address="h:1", num_processes=0, process_id=0), {},
     "--num_processes=0 must be >= 1"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=-1), {},
     "--process_id=-1 must be in [0, 2)"),
    (dict(auto=True), {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_PROCID": "0"},
     "missing SLURM_STEP_NODELIST, SLURM_LOCALID (start the processes with `srun`"),
])
def test_partial_or_invalid_settings_name_the_culprit(kwargs, environ, message):
  with pytest.raises(distributed.DistributedSetupError) as e:
    distributed.resolve(**kwargs, environ=environ)
  assert message in str(e.value)


def test_bad_timeouts_fail_before_anything_starts():
  with pytest.raises(distributed.DistributedSetupError, match=r"--heartbeat_timeout_s=0 must"):
    distributed.initialize(heartbeat_timeout_s=0, environ=ENV)
  with pytest.raises(distributed.DistributedSetupError, match=r"--shutdown_timeout_s=1.5 must"):
    distributed.initialize(shutdown_timeout_s=1.5, environ={})


def test_cli_reports_partial_env(monkeypatch, capsys):
  monkeypatch.setenv("BVL_PROCESS_ID", "0")
  monkeypatch.delenv("BVL_COORDINATOR_ADDRESS", raising=False)
  monkeypatch.delenv("BVL_NUM_PROCESSES", raising=False)
  with pytest.raises(SystemExit):
    config_lib.parse_cli(["--config", "configs/fashion_vit.py:runlocal", "--workdir", "/tmp/x"])
  assert ("BVL_PROCESS_ID set but BVL_COORDINATOR_ADDRESS, BVL_NUM_PROCESSES missing"
          in capsys.readouterr().err)


def test_single_process_sigterm_is_a_local_flag():
  before = signal.getsignal(signal.SIGTERM)
  with distributed.PreemptionSync() as p:
    assert not p.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)  # the Python handler runs between bytecodes
    assert p.should_stop(2) and p.signalled_process == 0
  assert signal.getsignal(signal.SIGTERM) is before
  with pytest.raises(ValueError, match="lag must be >= 1"):
    distributed.PreemptionSync(lag=0)


# ------------------------------------------------------------ 2 processes


def _overrides(data_dir: str, total_steps: int) -> list[str]:
  return [f"--config.{o}" for o in tiny_overrides(
      data_dir, **{"evals.test.batch_size": 100}, total_steps=total_steps,
      log_training_steps=1, ckpt_steps=100_000)]


def _launch(workdir: str, data_dir: str, total_steps: int, *, use_env: bool,
            extra: tuple[str, ...] = ()) -> tuple[list[subprocess.Popen], list[str]]:
  """Two trainer processes; their output goes to files (never a full pipe)."""
  port = free_port()
  procs, logs = [], []
  for i in range(2):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    for k in distributed.BVL_ENV_VARS:
      env.pop(k, None)
    args = ["--config", "configs/fashion_vit.py:runlocal", "--workdir", workdir,
            *extra, *_overrides(data_dir, total_steps)]
    if use_env:
      env.update({distributed.COORDINATOR_ENV: f"localhost:{port}",
                  distributed.NUM_PROCESSES_ENV: "2", distributed.PROCESS_ID_ENV: str(i)})
    else:
      args += ["--coordinator_address", f"localhost:{port}", "--num_processes", "2",
               "--process_id", str(i)]
    logs.append(f"{workdir}.p{i}.log")
    with open(logs[-1], "w") as out:
      procs.append(subprocess.Popen(
          [sys.executable, "-m", "big_vision_like.train", *args], cwd=REPO, env=env,
          stdout=out, stderr=subprocess.STDOUT))
  return procs, logs


def _wait_for_steps(procs, logs, workdir: str, n: int, timeout: float = 400) -> int:
  """Blocks until process 0 has logged `n` training steps; returns the last one."""
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline:
    for p, log in zip(procs, logs):
      assert p.poll() is None, open(log).read()[-4000:]
    if os.path.exists(metrics):
      with open(metrics) as f:
        steps = [line for line in f if '"train/loss"' in line]
      if len(steps) >= n:
        return len(steps)
    time.sleep(0.2)
  for p in procs:
    p.kill()
  raise AssertionError(f"no {n} training steps within {timeout}s:\n" + open(logs[0]).read()[-4000:])


def _finish(procs, logs, timeout: float = 300) -> list[str]:
  out = []
  for p, log in zip(procs, logs):
    try:
      p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    out.append(open(log).read())
  return out


def test_sigterm_to_one_process_saves_the_same_step_everywhere(fashion_mnist_data_dir,
                                                               tmp_path):
  workdir = str(tmp_path / "run")
  # Started like launch_local does: only the BVL_* variables say who is who.
  procs, logs = _launch(workdir, fashion_mnist_data_dir, 100_000, use_env=True)
  logged = _wait_for_steps(procs, logs, workdir, 3)
  procs[1].send_signal(signal.SIGTERM)  # process 1 only
  texts = _finish(procs, logs)
  for i, (p, text) in enumerate(zip(procs, texts)):
    assert p.returncode == 0, f"process {i}:\n{text[-4000:]}"
    assert f"jax.distributed: process {i} of 2" in text and "(settings from env)" in text
  assert "SIGTERM received" in texts[1] and "SIGTERM received" not in texts[0]
  stops = [re.findall(r"Preemption: process 1 received SIGTERM; all 2 processes stop "
                      r"after step (\d+)", t) for t in texts]
  assert len(stops[0]) == 1 and stops[0] == stops[1], stops
  step = int(stops[0][0])
  assert logged <= step < 100_000
  # One joint checkpoint, of that step (orbax commits it only if every process wrote).
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(step)]
  for text in texts:
    assert f"Done: {{'step': {step}, 'preempted': True}}" in text

  # Restart (explicit flags this time): resumes from that step and finishes (a
  # shorter schedule than the first launch's 100,000 steps: said explicitly).
  procs, logs = _launch(workdir, fashion_mnist_data_dir, step + 2, use_env=False,
                        extra=("--config.allow_config_change=True",))
  texts = _finish(procs, logs)
  for i, (p, text) in enumerate(zip(procs, texts)):
    assert p.returncode == 0, f"process {i}:\n{text[-4000:]}"
    assert f"Resumed from step {step}" in text and "(settings from flags)" in text
    assert f"'step': {step + 2}, 'preempted': False" in text
  assert sorted(map(int, os.listdir(os.path.join(workdir, "checkpoints")))) == [step, step + 2]


def test_killed_peer_stops_the_survivor_in_bounded_time(fashion_mnist_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  heartbeat_s = 10
  procs, logs = _launch(workdir, fashion_mnist_data_dir, 100_000, use_env=False,
                        extra=(f"--heartbeat_timeout_s={heartbeat_s}",))
  _wait_for_steps(procs, logs, workdir, 2)
  procs[1].kill()  # SIGKILL: no goodbye, its heartbeats just stop
  t0 = time.time()
  try:
    procs[0].wait(timeout=heartbeat_s + 50)
  except subprocess.TimeoutExpired:
    procs[0].kill()
    raise AssertionError("process 0 still running 60 s after its peer died:\n" +
                         open(logs[0]).read()[-4000:])
  elapsed = time.time() - t0
  procs[1].wait()
  text = open(logs[0]).read()
  assert procs[0].returncode != 0, text[-4000:]
  # JAX's coordination service names the silent task (measured: 0.5-1x the timeout).
  assert re.search(r"tasks are unhealthy \(stopped sending heartbeats\):\s*1\b", text), \
      text[-4000:]
  assert "a peer silent for 10 s aborts every process" in text
  assert elapsed < heartbeat_s + 20, elapsed
