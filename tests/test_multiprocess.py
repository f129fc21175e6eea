"""Two real processes (jax.distributed on localhost), two CPU devices each.

Checks what multi-host runs rely on: each process reads its own disjoint
share of the training data, the global batch is assembled from the process-
local halves, only process 0 writes metrics/config, checkpoints are written
jointly, and the evaluator still counts every test example exactly once.
"""

import os
import subprocess
import sys

import numpy as np

from tests.helpers import free_port, read_jsonl, tiny_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_processes_train_with_disjoint_data(fashion_mnist_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  port = free_port()
  overrides = tiny_overrides(
      fashion_mnist_data_dir, total_steps=6, log_training_steps=1, ckpt_steps=3,
      **{"evals.test.batch_size": 30})  # rounded up to 32 for 4 devices
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "big_vision_like.train",
       "--config", "configs/fashion_vit.py:runlocal", "--workdir", workdir,
       "--coordinator_address", f"localhost:{port}", "--num_processes", "2",
       "--process_id", str(i)] + [f"--config.{o}" for o in overrides],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  logs = [p.communicate(timeout=420)[0] for p in procs]
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f"process {i}:\n{log[-4000:]}"
  assert "Devices: 4 (cpu), mesh {'data': 4}, 2 processes" in logs[0]
  assert "[p1]" in logs[1]  # log lines say which process speaks

  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert len(losses) == 6 and np.all(np.isfinite(losses))
  final_eval = [r for r in rows if "test/prec@1" in r][-1]
  assert final_eval["test/num_examples"] == 1000
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]

