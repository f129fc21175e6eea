"""The run's final numbers as a small table in the workdir.

A newcomer who ran the main job should not need TensorBoard or a JSON
parser to learn how it went: `{workdir}/results.md` is a table to read (or
paste into a report) and `{workdir}/results.json` the same numbers for
scripts. Both are written by process 0 when training reaches its last step
(not on a preemption stop), atomically, next to pointers to what else the
run left behind (TensorBoard logs, prediction dumps, per-class tables).
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from etils import epath


def _fmt(value: float) -> str:
  if not math.isfinite(value):
    return str(value)
  return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"


def _write(path: epath.Path, text: str) -> None:
  tmp = path.parent / f".{path.name}.tmp"
  tmp.write_text(text)
  tmp.replace(path)


def write(workdir: str, metrics: Mapping[str, float], *, step: int,
          train_seconds: float) -> epath.Path:
  """Writes results.json and results.md; returns the path of results.md."""
  workdir = epath.Path(workdir)
  scalars = {k: float(v) for k, v in sorted(metrics.items())
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
  record: dict[str, Any] = {"step": step, "train_seconds": round(train_seconds, 1),
                            "metrics": scalars}
  _write(workdir / "results.json", json.dumps(record, indent=1) + "\n")

  minutes, seconds = divmod(int(round(train_seconds)), 60)
  lines = [f"# Results of {workdir.name}", "",
           f"Step {step:,}, {minutes} min {seconds} s of training "
           "(compilation, evaluations and checkpoints included).", "",
           "| metric | value |", "| --- | --- |"]
  lines += [f"| {k} | {_fmt(v)} |" for k, v in scalars.items()]
  lines += ["", "Also in this workdir:", "",
            f"- TensorBoard: `tensorboard --logdir {workdir / 'tensorboard'}` "
            "(scalars, pictures: first training batch, confusions, reliability)"]
  predictions = workdir / "predictions"
  if predictions.exists():
    lines.append(f"- prediction dumps: `{predictions}/NAME/step_*.npz`; re-score one with "
                 "`python -m big_vision_like.tools.score_predictions FILE`")
  if (workdir / "per_class").exists():
    lines.append(f"- per-class accuracies: `{workdir / 'per_class'}/NAME/step_*.json`")
  lines.append(f"- every evaluation as JSON lines: `{workdir / 'metrics.jsonl'}`")
  path = workdir / "results.md"
  _write(path, "\n".join(lines) + "\n")
  return path
