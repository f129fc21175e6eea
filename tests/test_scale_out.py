"""1 process x 8 devices and 2 processes x 4 devices train the same model.

The two runs use real processes: the 2-process one through the local
launcher (jax.distributed on localhost, configured from the environment).
The data order is a function of the global batch, not of the process
count, so both runs see the same global batches and must log the same
losses and end with the same parameters, up to the float reordering of
cross-process vs in-process reductions.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from big_vision_like import checkpoint as ckpt_lib
from tests.helpers import read_jsonl, tiny_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6


def _train_cmd(workdir, data_dir, **extra):
  return [sys.executable, "-m", "big_vision_like.train",
          "--config", "configs/fashion_vit.py:runlocal", "--workdir", workdir] + [
              f"--config.{o}" for o in tiny_overrides(
                  data_dir, total_steps=STEPS, log_training_steps=1, ckpt_steps=STEPS,
                  **extra)]


def _launch_two(cmd, env):
  return subprocess.run([sys.executable, "-m", "big_vision_like.tools.launch_local",
                         "--num_processes", "2", "--devices_per_process", "4",
                         "--grace_s", "30", "--", *cmd],
                        cwd=REPO, text=True, capture_output=True, timeout=600, env=env)


def _losses(workdir):
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return np.array([r["train/loss"] for r in rows if "train/loss" in r])


def _params(workdir):
  step_dir = os.path.join(workdir, "checkpoints", str(STEPS), "state")
  ocp = ckpt_lib.ocp
  checkpointer = ocp.PyTreeCheckpointer()
  meta = checkpointer.metadata(step_dir).item_metadata.tree
  # Read as host numpy arrays: this process has other devices than the writers.
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta["params"])
  tree = checkpointer.restore(step_dir, args=ocp.args.PyTreeRestore(
      item={"params": meta["params"]}, restore_args={"params": args}, partial_restore=True))
  return tree["params"]


@pytest.fixture(scope="module")
def one_process_run(fashion_mnist_data_dir, tmp_path_factory):
  """The reference: 1 process x 8 devices, data parallel. Returns (workdir, log)."""
  one = str(tmp_path_factory.mktemp("scale_out") / "one")
  r1 = subprocess.run(_train_cmd(one, fashion_mnist_data_dir), cwd=REPO, text=True,
                      capture_output=True, timeout=600,
                      env=dict(os.environ, JAX_PLATFORMS="cpu",
                               XLA_FLAGS="--xla_force_host_platform_device_count=8"))
  assert r1.returncode == 0, r1.stderr[-4000:]
  return one, r1.stderr + r1.stdout


def test_two_processes_match_one_process(fashion_mnist_data_dir, tmp_path, one_process_run):
  (one, log1), two = one_process_run, str(tmp_path / "two")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r2 = _launch_two(_train_cmd(two, fashion_mnist_data_dir), env)
  assert r2.returncode == 0, r2.stdout[-4000:]
  assert "Devices: 8 (cpu), mesh {'data': 8}, 2 processes" in r2.stdout
  assert "Devices: 8 (cpu), mesh {'data': 8}, 1 processes" in log1

  l1, l2 = _losses(one), _losses(two)
  assert len(l1) == len(l2) == STEPS
  # The losses move (it trains), and move identically in both runs.
  assert abs(l1[-1] - l1[0]) > 1e-3
  np.testing.assert_allclose(l2, l1, rtol=2e-5, atol=1e-6)
  p1, p2 = _params(one), _params(two)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5), p1, p2)


def test_two_processes_as_slices_of_a_hybrid_mesh(fashion_mnist_data_dir, tmp_path,
                                                  one_process_run):
  # Multi-slice layout: each process is one "slice" (the DCN axis "data"),
  # FSDP over its 4 devices (the ICI axis "fsdp"), logical sharding rules.
  # Same global batches as data parallelism, so the same losses as 1 x 8.
  (one, _), hybrid = one_process_run, str(tmp_path / "hybrid")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r2 = _launch_two(_train_cmd(
      hybrid, fashion_mnist_data_dir, mesh="[('data',1),('fsdp',-1)]", mesh_dcn="[('data',2)]",
      sharding_rules="[('embed','fsdp')]"), env)
  assert r2.returncode == 0, r2.stdout[-4000:]
  assert "Devices: 8 (cpu), mesh {'data': 2, 'fsdp': 4}, 2 processes" in r2.stdout
  # FSDP really splits the params: 1/4 of the largest ones per device.
  memory = next(line for line in r2.stdout.splitlines() if "Memory: params:" in line)
  assert "per device (max over 4)" in memory  # each process measures its 4 devices
  np.testing.assert_allclose(_losses(hybrid), _losses(one), rtol=2e-5, atol=1e-6)
