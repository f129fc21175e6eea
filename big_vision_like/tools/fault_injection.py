"""Kill -9 a training run at random moments and check that resuming loses nothing.

  python -m big_vision_like.tools.fault_injection --kills 10 [--seed 0] \
      [--total_steps 60] [--ckpt_steps 5] [--workdir DIR] [--data_dir DIR]
  python -m big_vision_like.tools.fault_injection --quick   # 3 kills, tiny run

train.py promises that a resumed run is the uninterrupted run: data order
and rngs are functions of the step, and checkpoints are committed
atomically. This tool tests the promise end to end with real processes:

1. A reference run of `python -m big_vision_like.train` (a tiny ViT on
   Fashion-MNIST, `configs/fashion_vit.py:runlocal` shrunk further, async
   checkpoints every `--ckpt_steps`) trains uninterrupted to `total_steps`.
2. A second run in a fresh workdir is SIGKILLed `--kills` times and restarted
   after each kill until it finishes. Each kill picks (seeded) one moment:
   during start-up, after a random training step, or while a checkpoint is
   being written (as soon as its `{step}.orbax-checkpoint-tmp` directory
   appears, i.e. inside orbax's asynchronous write).
3. Checks: after each kill the restart resumed from the newest COMPLETE
   checkpoint on disk (found from the commit markers, read right after the
   kill), the final checkpoint is step `total_steps`, and its whole state
   (params and optimizer state) is bitwise identical to the reference's.
   Equality with the reference also proves that no step was trained twice
   into the result. Steps re-done after each kill (work lost) are reported.

Prints a table of the kills and a summary; exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import queue
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TMP_SUFFIX = ".orbax-checkpoint-tmp"

# Small enough that one run is mostly start-up (~10 s on 2 CPU cores).
TINY_OVERRIDES = {
    "model.depth": 1, "model.width": 32, "model.mlp_dim": 64, "model.num_heads": 2,
    "input.batch_size": 32, "input.shuffle_buffer_size": 1000,
    "log_training_steps": 1, "evals": "{}",
}

_STEP_LINE = re.compile(r"\] step (\d+)/(\d+) ")
_RESUMED = re.compile(r"Training \d+ steps of batch \d+ .* from step (\d+)\.")

MOMENTS = ("startup", "training", "ckpt_write")


@dataclasses.dataclass
class Kill:
  """One interrupted run and what the next run made of it."""
  moment: str               # what we aimed at
  killed_after_s: float     # seconds after the launch
  last_step: int            # newest training step logged before the kill
  happening: str = ""       # what was on disk / in the log at the kill
  newest_complete: int = 0  # newest complete checkpoint right after the kill
  resumed_from: int | None = None  # from the next run's log

  @property
  def steps_lost(self) -> int | None:
    if self.resumed_from is None:
      return None
    return max(self.last_step - self.resumed_from, 0)


def train_command(workdir: str, total_steps: int, ckpt_steps: int,
                  data_dir: str) -> list[str]:
  overrides = dict(TINY_OVERRIDES, total_steps=total_steps, ckpt_steps=ckpt_steps)
  overrides["input.data.data_dir"] = data_dir
  return ([sys.executable, "-m", "big_vision_like.train",
           "--config", "configs/fashion_vit.py:runlocal", "--workdir", workdir] +
          [f"--config.{k}={v}" for k, v in overrides.items()])


def _env() -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one device, whatever the caller's shell says
  return env


class Run:
  """A training subprocess whose output lines are read in the background."""

  def __init__(self, cmd: list[str], log_path: str):
    self.start = time.monotonic()
    self.log = open(log_path, "w")
    self.proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    self.lines: queue.Queue[str] = queue.Queue()
    self.last_step = 0
    self.resumed_from: int | None = None
    self.text: list[str] = []
    threading.Thread(target=self._pump, daemon=True).start()

  def _pump(self) -> None:
    for line in self.proc.stdout:
      self.log.write(line)
      self.lines.put(line)
    self.lines.put("")  # EOF

  def next_line(self, timeout: float) -> str | None:
    """The next output line; "" at EOF; None if none came within timeout."""
    try:
      line = self.lines.get(timeout=timeout)
    except queue.Empty:
      return None
    self.text.append(line)
    if m := _STEP_LINE.search(line):
      self.last_step = max(self.last_step, int(m.group(1)))
    if m := _RESUMED.search(line):
      self.resumed_from = int(m.group(1))
    return line

  def drain(self) -> None:
    while self.next_line(timeout=30) not in ("", None):
      pass

  def kill(self) -> float:
    self.proc.kill()  # SIGKILL
    elapsed = time.monotonic() - self.start
    self.proc.wait()
    return elapsed

  def wait(self, timeout: float) -> int:
    rc = self.proc.wait(timeout=timeout)
    self.drain()
    self.log.close()
    return rc


def complete_steps(ckpt_dir: str) -> list[int]:
  """Steps on disk that are completely committed (same rule as checkpoint.py)."""
  from big_vision_like import checkpoint  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(n) for n in os.listdir(ckpt_dir)
                if n.isdigit() and checkpoint.step_problem(os.path.join(ckpt_dir, n)) is None)


def _tmp_steps(ckpt_dir: str) -> list[int]:
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(n.split(".")[0]) for n in os.listdir(ckpt_dir) if TMP_SUFFIX in n)


def _started(run: Run) -> int:
  """The step this run resumed from (a large number while not known yet)."""
  return run.resumed_from if run.resumed_from is not None else 2**62


def run_and_kill(run: Run, moment: str, rng: random.Random, ckpt_dir: str,
                 total_steps: int, ckpt_steps: int) -> Kill | None:
  """Waits for the chosen moment and SIGKILLs; None if the run ended first."""
  if moment == "startup":
    # Somewhere before the first step is logged (imports, data, compile).
    deadline = time.monotonic() + rng.uniform(1.0, 8.0)
    while time.monotonic() < deadline:
      line = run.next_line(timeout=0.01)
      if line == "" or (line and _STEP_LINE.search(line)):
        break
  elif moment == "training":
    # A random number of steps after this run's first one.
    extra, target = rng.randint(0, max(total_steps // 2, 2)), None
    while target is None or run.last_step < min(target, total_steps - 1):
      line = run.next_line(timeout=300)
      if line in ("", None):
        break
      if target is None and run.last_step:
        target = run.last_step + extra
    time.sleep(rng.uniform(0, 0.02))
  else:  # ckpt_write: inside the asynchronous write of the next checkpoint.
    # Only this run's own writes count: a killed run's tmp dir stays until the
    # next run's Checkpointer removes it at start-up.
    # Skip 0-2 checkpoints first so that not every kill hits the first one.
    skip = rng.randint(0, 2) * ckpt_steps
    seen_tmp = False
    while True:
      if run.last_step and [s for s in _tmp_steps(ckpt_dir)
                            if s > _started(run) + skip]:
        seen_tmp = True
        break
      line = run.next_line(timeout=0.0005)
      if line == "" or run.last_step >= total_steps:
        break
    if seen_tmp:
      time.sleep(rng.uniform(0, 0.003))
  if run.proc.poll() is not None:
    return None
  elapsed = run.kill()
  # Read what was logged before the kill.
  while run.next_line(timeout=1) not in ("", None):
    pass
  run.log.close()
  kill = Kill(moment=moment, killed_after_s=elapsed, last_step=run.last_step)
  complete = complete_steps(ckpt_dir)
  kill.newest_complete = complete[-1] if complete else 0
  tmp = [s for s in _tmp_steps(ckpt_dir) if s > _started(run)]
  if tmp and run.last_step:
    kill.happening = f"writing ckpt {tmp[-1]} (uncommitted)"
  elif not any(_STEP_LINE.search(l) for l in run.text):
    kill.happening = "start-up (no step yet)"
  else:
    kill.happening = f"training after step {run.last_step}"
  return kill


def read_state(step_dir: str) -> dict[str, np.ndarray]:
  """All arrays of a checkpoint step as numpy, by "/"-joined name."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from big_vision_like import params as params_lib  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax chatter on every read
  item = os.path.join(step_dir, "state")
  checkpointer = ocp.PyTreeCheckpointer()
  meta = checkpointer.metadata(item).item_metadata.tree
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
  tree = checkpointer.restore(item, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  return dict(params_lib.flatten_with_names(tree))


def compare_states(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
  """Names of leaves that are not bitwise identical (or missing on one side)."""
  bad = sorted(set(a) ^ set(b))
  for name in sorted(set(a) & set(b)):
    x, y = np.asarray(a[name]), np.asarray(b[name])
    if x.shape != y.shape or x.dtype != y.dtype or x.tobytes() != y.tobytes():
      bad.append(name)
  return bad


def _choose_moments(n: int, rng: random.Random) -> list[str]:
  """At least a third of the kills hit a checkpoint write; all kinds appear."""
  fixed = ["ckpt_write", "training", "startup"][:n]
  n_ckpt = max(n // 3, 1) - fixed.count("ckpt_write")
  rest = ["ckpt_write"] * max(n_ckpt, 0)
  rest += [rng.choice(MOMENTS) for _ in range(n - len(fixed) - len(rest))]
  moments = fixed + rest
  rng.shuffle(moments)
  return moments


def run_experiment(*, kills: int, seed: int, total_steps: int, ckpt_steps: int,
                   workdir: str, data_dir: str, out=sys.stdout) -> dict[str, Any]:
  """Runs reference + killed runs; returns a summary (`ok` says if all held)."""
  say = lambda *a: print(*a, file=out, flush=True)
  t0 = time.monotonic()
  ref_dir, test_dir = os.path.join(workdir, "reference"), os.path.join(workdir, "killed")
  for d in (ref_dir, test_dir):
    shutil.rmtree(d, ignore_errors=True)
  os.makedirs(workdir, exist_ok=True)

  say(f"Reference run: {total_steps} steps, async checkpoint every {ckpt_steps}.")
  ref = Run(train_command(ref_dir, total_steps, ckpt_steps, data_dir),
            os.path.join(workdir, "reference.log"))
  if ref.wait(timeout=900):
    raise RuntimeError("reference run failed:\n" + "".join(ref.text[-40:]))
  ref_time = time.monotonic() - t0

  rng = random.Random(seed)
  moments = _choose_moments(kills, rng)
  ckpt_dir = os.path.join(test_dir, "checkpoints")
  records: list[Kill] = []
  problems: list[str] = []
  attempt = 0
  t1 = time.monotonic()
  pending = list(moments)
  while True:
    attempt += 1
    run = Run(train_command(test_dir, total_steps, ckpt_steps, data_dir),
              os.path.join(workdir, f"killed_{attempt:02d}.log"))
    record = None
    if pending:
      record = run_and_kill(run, pending[0], rng, ckpt_dir, total_steps, ckpt_steps)
      if record is None:  # finished before the chosen moment: nothing to kill
        problems.append(f"run {attempt} finished before its '{pending[0]}' kill; "
                        "use more --total_steps")
    if record is None:
      rc = run.wait(timeout=900)
      if rc:
        problems.append(f"final run exited with {rc}")
        say("".join(run.text[-40:]))
    # Where this run started tells what the kills before it led to (a run
    # killed during start-up may not have said it yet).
    if run.resumed_from is not None:
      for k in records:
        if k.resumed_from is None:
          k.resumed_from = run.resumed_from
    if record is None:
      break
    pending.pop(0)
    records.append(record)
    say(f"  kill {len(records)}: {record.moment:10s} at {record.killed_after_s:5.1f}s, "
        f"{record.happening}")
  killed_time = time.monotonic() - t1

  # Every restart must start from the newest complete checkpoint.
  for i, k in enumerate(records, 1):
    if k.resumed_from is None:
      problems.append(f"kill {i}: the next run never said where it resumed from")
    elif k.resumed_from != k.newest_complete:
      problems.append(f"kill {i}: resumed from step {k.resumed_from}, but the newest "
                      f"complete checkpoint was {k.newest_complete}")

  final_ref, final_test = complete_steps(os.path.join(ref_dir, "checkpoints")), \
      complete_steps(ckpt_dir)
  identical = False
  if not final_test or final_test[-1] != total_steps:
    problems.append(f"killed run's newest checkpoint is {final_test[-1:]}, not "
                    f"step {total_steps}")
  elif not final_ref or final_ref[-1] != total_steps:
    problems.append(f"reference run's newest checkpoint is {final_ref[-1:]}")
  else:
    a = read_state(os.path.join(ref_dir, "checkpoints", str(total_steps)))
    b = read_state(os.path.join(ckpt_dir, str(total_steps)))
    bad = compare_states(a, b)
    identical = not bad
    if bad:
      problems.append(f"final state differs from the reference in {len(bad)} of "
                      f"{len(a)} arrays, e.g. {bad[:5]}")

  # The table.
  say("")
  say("| # | aimed at | killed at (s) | what was happening | last step | newest "
      "complete ckpt | resumed from | steps lost |")
  say("|---|---|---|---|---|---|---|---|")
  for i, k in enumerate(records, 1):
    say(f"| {i} | {k.moment} | {k.killed_after_s:.1f} | {k.happening} | {k.last_step} | "
        f"{k.newest_complete} | {k.resumed_from} | {k.steps_lost} |")
  lost = [k.steps_lost for k in records if k.steps_lost is not None]
  during_write = sum("uncommitted" in k.happening for k in records)
  summary = {
      "kills": len(records), "kills_during_ckpt_write": during_write,
      "resumed_from": [k.resumed_from for k in records],
      "steps_lost_total": sum(lost), "restarts": attempt - 1,
      "identical": identical, "final_step": final_test[-1] if final_test else None,
      "reference_s": round(ref_time, 1), "killed_runs_s": round(killed_time, 1),
      "total_s": round(time.monotonic() - t0, 1), "problems": problems,
      "ok": not problems,
  }
  say("")
  say(f"Kills: {len(records)} ({during_write} during an uncommitted checkpoint write), "
      f"restarts: {attempt - 1}, steps re-done in total: {sum(lost)}.")
  say(f"Final step: {summary['final_step']} of {total_steps}; state bitwise identical "
      f"to the uninterrupted run: {'yes' if identical else 'NO'}.")
  say(f"Time: reference {ref_time:.0f}s, killed runs {killed_time:.0f}s, total "
      f"{summary['total_s']:.0f}s. Logs in {workdir}.")
  for p in problems:
    say(f"PROBLEM: {p}")
  return summary


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--kills", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--total_steps", type=int, default=60)
  parser.add_argument("--ckpt_steps", type=int, default=5)
  parser.add_argument("--quick", action="store_true",
                      help="3 kills of a 15-step run (for tests)")
  parser.add_argument("--workdir", default=None,
                      help="where runs and logs go (default: a new temp dir)")
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data dir with fashion_mnist (prepared if missing)")
  args = parser.parse_args(argv)
  if args.quick:
    args.kills, args.total_steps, args.ckpt_steps = 3, 15, 3
  if args.kills < 0 or args.total_steps < 2 or args.ckpt_steps < 1:
    parser.error("need --kills >= 0, --total_steps >= 2, --ckpt_steps >= 1")
  from big_vision_like.data import fashion_mnist  # pylint: disable=g-import-not-at-top
  data_dir = fashion_mnist.prepare(args.data_dir)
  workdir = args.workdir or tempfile.mkdtemp(prefix="fault_injection_")
  summary = run_experiment(kills=args.kills, seed=args.seed, total_steps=args.total_steps,
                           ckpt_steps=args.ckpt_steps, workdir=workdir, data_dir=data_dir)
  return 0 if summary["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())
