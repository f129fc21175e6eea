"""A run checkpointed by 2 processes x 4 devices resumes in 1 process x 8, and back.

Real `python -m big_vision_like.train` subprocesses (jax.distributed on
localhost, fake CPU devices). The first leg also changes the mesh: its state
is FSDP-sharded over 8 devices and the resumed leg replicates it (and the
reverse), so orbax has to reshard every array on restore.

What makes the restore exact and checkable: every checkpoint stores a
checksum of each array, computed on the devices from the in-memory state at
save time, and `Checkpointer.restore` recomputes them on the new layout and
fails on any difference. The test process reads the saved step independently
(numpy, one device) and checks it against those checksums and against the
resumed run's own copy of that step.

Data order still depends on the process count (being fixed elsewhere), so
losses are not compared across legs; only the restore and the continuation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from big_vision_like import checkpoint
from big_vision_like.tools import fault_injection
from tests.helpers import free_port, read_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FSDP = {"mesh": '[("data",1),("fsdp",-1)]',
        "sharding_strategy": '[(".*","fsdp(min_size_mb=0)")]'}
REPLICATED = {"mesh": '[("data",-1)]', "sharding_strategy": '[(".*","replicate")]'}


def _train(workdir, data_dir, *, processes: int, devices_each: int,
           total_steps: int, layout: dict, **extra) -> list[str]:
  overrides = dict(fault_injection.TINY_OVERRIDES, total_steps=total_steps,
                   ckpt_steps=2, **layout, **extra)
  overrides["input.data.data_dir"] = data_dir
  cmd = [sys.executable, "-m", "big_vision_like.train", "--config",
         "configs/fashion_vit.py:runlocal", "--workdir", str(workdir)]
  cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_each}")
  port = free_port()
  extra = lambda i: ([] if processes == 1 else [
      "--coordinator_address", f"localhost:{port}", "--num_processes",
      str(processes), "--process_id", str(i)])
  procs = [subprocess.Popen(cmd + extra(i), cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(processes)]
  logs = [p.communicate(timeout=420)[0] for p in procs]
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f"process {i}:\n{log[-4000:]}"
  return logs


def _check_against_saved_checksums(step_dir) -> dict[str, np.ndarray]:
  """Reads a step on one device; its arrays match the writer's checksums."""
  arrays = fault_injection.read_state(str(step_dir))
  saved = json.loads((step_dir / "checksums" / "metadata").read_text())
  assert sorted(saved) == sorted(arrays)
  assert checkpoint.array_checksums(arrays) == saved
  return arrays


def _leg(processes: int, layout: dict, mesh_shape: dict) -> dict:
  """One launch: processes x (8 / processes) devices, a mesh + sharding."""
  return dict(processes=processes, devices_each=8 // processes, layout=layout,
              mesh_shape=mesh_shape)


def _launch(workdir, data_dir, leg: dict, total_steps: int, **extra) -> str:
  logs = _train(workdir, data_dir, total_steps=total_steps,
                processes=leg["processes"], devices_each=leg["devices_each"],
                layout=leg["layout"], **extra)
  assert (f"Devices: 8 (cpu), mesh {leg['mesh_shape']}, "
          f"{leg['processes']} processes") in logs[0]
  return logs[0]


def _resume_and_compare(tmp_path, data_dir, first: dict, second: dict):
  workdir = tmp_path / "run"
  _launch(workdir, data_dir, first, total_steps=4)
  ckpt_dir = workdir / "checkpoints"
  with checkpoint.Checkpointer(str(ckpt_dir), read_only=True) as ckpt:
    assert ckpt.all_steps() == [2, 4]
  saved4 = _check_against_saved_checksums(ckpt_dir / "4")
  assert any(n.startswith("opt/") for n in saved4)  # optimizer state too

  # Another mesh and sharding may resume as they are; a longer run changes the
  # schedule, which a resume must be told is intended.
  log = _launch(workdir, data_dir, second, total_steps=8, allow_config_change=True)
  # Resumed from the other layout's step 4 (its checksums verified on the
  # new shardings inside restore), no fallback, and trained on to step 8.
  assert "Resumed from step 4" in log
  assert "Could not restore" not in log and "Traceback" not in log
  assert "step 5/8" in log and "step 8/8" in log and "step 4/8" not in log
  with checkpoint.Checkpointer(str(ckpt_dir), read_only=True) as ckpt:
    assert ckpt.all_steps() == [4, 6, 8]
  # The resumed leg left step 4 alone: still the first leg's exact arrays.
  again = _check_against_saved_checksums(ckpt_dir / "4")
  assert fault_injection.compare_states(saved4, again) == []
  final = _check_against_saved_checksums(ckpt_dir / "8")
  # Training went on: every param moved away from step 4.
  params = [n for n in final if n.startswith("params/")]
  assert params and all(not np.array_equal(final[n], saved4[n]) for n in params)
  rows = read_jsonl(workdir / "metrics.jsonl")
  steps = [r["step"] for r in rows if "train/loss" in r]
  assert steps == list(range(1, 9)), steps


def test_2x4_fsdp_save_resumes_in_1x8_replicated(tmp_path, fashion_mnist_data_dir):
  _resume_and_compare(tmp_path, fashion_mnist_data_dir,
                      _leg(2, FSDP, {"data": 1, "fsdp": 8}),
                      _leg(1, REPLICATED, {"data": 8}))


def test_1x8_fsdp_save_resumes_in_2x4_replicated(tmp_path, fashion_mnist_data_dir):
  _resume_and_compare(tmp_path, fashion_mnist_data_dir,
                      _leg(1, FSDP, {"data": 1, "fsdp": 8}),
                      _leg(2, REPLICATED, {"data": 8}))


def test_a_step_one_process_cannot_read_is_dropped_by_all(tmp_path, fashion_mnist_data_dir):
  # FSDP over 2 processes: each reads back the shards it wrote itself. Damage only
  # process 1's files of step 4: process 0 could read its part, but all processes
  # must agree on one step, so both fall back to step 2 and train on from there.
  workdir = tmp_path / "run"
  leg = _leg(2, FSDP, {"data": 1, "fsdp": 8})
  _launch(workdir, fashion_mnist_data_dir, leg, total_steps=4)
  files = sorted((workdir / "checkpoints" / "4" / "state" / "ocdbt.process_1" / "d").iterdir())
  assert files
  for f in files:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  logs = _train(workdir, fashion_mnist_data_dir, total_steps=4, processes=2,
                devices_each=4, layout=FSDP)
  for log in logs:
    assert "could not read their part" in log and "process(es) [1] of 2" in log, log[-3000:]
    assert "Resumed from step 2" in log and "Traceback" not in log
  assert "step 4/4" in logs[0]
  with checkpoint.Checkpointer(str(workdir / "checkpoints"), read_only=True) as ckpt:
    assert ckpt.all_steps() == [2, 4]
  _check_against_saved_checksums(workdir / "checkpoints" / "4")  # written again, whole
