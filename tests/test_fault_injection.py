"""The kill -9 fault-injection tool, run for real in its --quick mode.

The quick run SIGKILLs a tiny training run 3 times (one kill inside an
asynchronous checkpoint write) and checks that every restart resumed from
the newest complete checkpoint and that the final state is bitwise the
uninterrupted run's. Takes ~1-1.5 min on 2 CPU cores (5 training launches).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np

from big_vision_like.tools import fault_injection

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_run_resumes_exactly(tmp_path, fashion_mnist_data_dir):
  proc = subprocess.run(
      [sys.executable, "-m", "big_vision_like.tools.fault_injection", "--quick",
       "--seed", "0", "--workdir", str(tmp_path), "--data_dir", fashion_mnist_data_dir],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  out = proc.stdout
  assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
  rows = [l for l in out.splitlines() if re.match(r"\| \d+ \|", l)]
  assert len(rows) == 3, out
  cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
  # The seeded plan: one kill per kind of moment.
  assert sorted(c[1] for c in cells) == ["ckpt_write", "startup", "training"]
  for c in cells:
    last_step, newest, resumed, lost = int(c[4]), int(c[5]), int(c[6]), int(c[7])
    assert resumed == newest  # the newest COMPLETE checkpoint
    assert resumed % 3 == 0 and lost == max(last_step - resumed, 0)
  # The kill aimed at a checkpoint write hit an uncommitted one, whose step
  # was trained but never became a checkpoint: resumed from the one before.
  ckpt_kill = next(c for c in cells if c[1] == "ckpt_write")
  m = re.fullmatch(r"writing ckpt (\d+) \(uncommitted\)", ckpt_kill[3])
  assert m, ckpt_kill
  assert int(ckpt_kill[6]) == int(m.group(1)) - 3
  assert "Final step: 15 of 15; state bitwise identical to the uninterrupted " \
         "run: yes." in out
  # Restarts cleaned up the killed write's temporary directory.
  names = os.listdir(tmp_path / "killed" / "checkpoints")
  assert not [n for n in names if fault_injection.TMP_SUFFIX in n], names
  assert fault_injection.complete_steps(str(tmp_path / "killed" / "checkpoints"))[-1] == 15


def test_compare_states_finds_a_single_flipped_bit():
  a = {"params/w": np.arange(6, dtype=np.float32).reshape(2, 3),
       "opt/count": np.array(3, np.int32)}
  b = {k: v.copy() for k, v in a.items()}
  assert fault_injection.compare_states(a, b) == []
  b["params/w"].view(np.uint32)[1, 2] ^= 1  # 5.0 -> 5.0000005
  assert fault_injection.compare_states(a, b) == ["params/w"]
  # -0.0 == 0.0 numerically, but not bitwise: a resumed run must match bits.
  c = {"x": np.array([0.0], np.float32)}
  assert fault_injection.compare_states(c, {"x": np.array([-0.0], np.float32)}) == ["x"]
  assert fault_injection.compare_states(c, {"y": c["x"]}) == ["x", "y"]


def test_moment_plan_always_includes_a_checkpoint_write():
  import random
  for n in (1, 3, 10):
    plan = fault_injection._choose_moments(n, random.Random(0))
    assert len(plan) == n and "ckpt_write" in plan
    assert plan.count("ckpt_write") >= max(n // 3, 1)
  assert set(fault_injection._choose_moments(3, random.Random(5))) == set(
      fault_injection.MOMENTS)
