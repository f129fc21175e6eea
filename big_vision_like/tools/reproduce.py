"""Re-measures every headline number of README.md and BENCHMARKS.md in one command.

  python -m big_vision_like.tools.reproduce               # everything (~45 min, 2 cores)
  python -m big_vision_like.tools.reproduce --only main,vit_s16
  python -m big_vision_like.tools.reproduce --list        # items, commands, recorded values

A number in a results table is only worth something if anyone can produce it
again. Each headline below names the command that produced it and the values
recorded in BENCHMARKS.md (copied here as the exact strings written there; a
test checks that BENCHMARKS.md still contains each of them, so the two cannot
drift apart silently). The tool runs each command in a fresh process, in a
fresh workdir under `--out`, reads the result back the way a user would (the
workdir's metrics.jsonl, the train log's timestamps, or the benchmark tool's
printed table) and prints one markdown table: recorded beside measured.

Times are training wall time: from the trainer's "Training N steps" line to its
"Done" line (compilation, evaluations and checkpoints included, set-up and
dataset preparation not). They depend on the machine and on whatever else runs
on it; accuracies of the deterministic Fashion-MNIST runs do not.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import subprocess
import sys
import time
from typing import Callable

Parsed = dict[str, float]


@dataclasses.dataclass(frozen=True)
class Headline:
  """One headline result: how to produce it and what BENCHMARKS.md records."""
  name: str
  what: str
  # argv; "{py}" is this interpreter, "{workdir}" this item's fresh workdir,
  # "{main_workdir}" the main job's workdir (for LiT, which starts from it).
  command: tuple[str, ...]
  # metric -> the value as written in BENCHMARKS.md.
  recorded: dict[str, str]
  parse: Callable[[str, str], Parsed]  # (workdir, output) -> metrics
  env: dict[str, str] = dataclasses.field(default_factory=dict)
  needs: tuple[str, ...] = ()


# ------------------------------------------------------------------ parsers

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _log_time(line: str) -> datetime.datetime | None:
  m = _LOG_TIME.match(line)
  return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f") if m else None


def training_seconds(output: str) -> float:
  """Seconds from the trainer's "Training N steps" log line to its "Done" line."""
  start = end = None
  for line in output.splitlines():
    if start is None and re.search(r"INFO Training \d+ steps", line):
      start = _log_time(line)
    elif " INFO Done:" in line:
      end = _log_time(line)
  if start is None or end is None:
    raise ValueError("the output has no 'Training N steps' ... 'Done:' log lines")
  return (end - start).total_seconds()


def last_metrics(workdir: str, keys: tuple[str, ...]) -> Parsed:
  """The newest value of each key in `workdir/metrics.jsonl`."""
  found: Parsed = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      found.update({k: float(row[k]) for k in keys if k in row})
  missing = [k for k in keys if k not in found]
  if missing:
    raise ValueError(f"{workdir}/metrics.jsonl has no {missing}")
  return found


def markdown_cell(output: str, row: str, column: str) -> float:
  """The number in the first column whose header starts with `column`, in the
  first markdown-table row whose first cell contains `row` (bold markers and
  units around the number ignored)."""
  header = None
  for line in output.splitlines():
    if not line.startswith("|"):
      header = None
      continue
    # Cells split on unescaped pipes (`\|` inside a cell is a literal one).
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:].removesuffix("|"))]
    if header is None:
      header = cells
      continue
    index = next((i for i, h in enumerate(header) if h.startswith(column)), None)
    if row in cells[0] and index is not None and index < len(cells):
      number = re.search(r"-?\d[\d,]*\.?\d*", cells[index])
      if number:
        return float(number.group(0).replace(",", ""))
  raise ValueError(f"no table row with {row!r} and a number in a column {column!r}")


def key_value(output: str, key: str) -> float:
  """`key   value` lines as tools/benchmark prints them."""
  m = re.search(rf"^{re.escape(key)}\s+(-?[\d.]+(?:e[-+]?\d+)?)\s*$", output, re.M)
  if not m:
    raise ValueError(f"no line '{key}  VALUE' in the output")
  return float(m.group(1))


def _training_run(*keys: str) -> Callable[[str, str], Parsed]:
  def parse(workdir: str, output: str) -> Parsed:
    return {**last_metrics(workdir, keys), "train_min": training_seconds(output) / 60}
  return parse


def _benchmark_step(workdir: str, output: str) -> Parsed:
  """tools/benchmark --baseline: our row of its table and the ratio line."""
  del workdir
  ratio = re.search(r"^ours/baseline \(img/s\): ([\d.]+)", output, re.M)
  if not ratio:
    raise ValueError("no 'ours/baseline (img/s): R' line in the output")
  return {"step_time_s": markdown_cell(output, "ours", "step time"),
          "mfu": markdown_cell(output, "ours", "MFU"),
          "ours_vs_baseline": float(ratio.group(1))}


def _input_ratios(workdir: str, output: str) -> Parsed:
  del workdir
  # The plain train row comes first; "+ randaug" is the row after it.
  return {"train_vs_bare": markdown_cell(output, "ours: make_train_iterator", "vs bare"),
          "randaug_vs_bare": markdown_cell(output, "ours: make_train_iterator + randaug",
                                           "vs bare"),
          "eval_vs_bare": markdown_cell(output, "ours: make_eval_iterator", "vs bare")}


def _scorer(workdir: str, output: str) -> Parsed:
  del workdir
  return {"real_s": markdown_cell(output, "(a) ReaL", "wall s"),
          "single_s": markdown_cell(output, "(b) single labels", "wall s")}


# ------------------------------------------------------------------ the headlines

_TWO_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}

HEADLINES: tuple[Headline, ...] = (
    Headline(
        "main", "main job: configs/fashion_vit.py as README runs it",
        ("bash", "scripts/run_main.sh"),
        {"test/prec@1": "0.9017", "train_min": "4 min 15 s"},
        _training_run("test/prec@1"), env={"WORKDIR": "{workdir}"}),
    Headline(
        "resnet", "configs/fashion_resnet.py, 2 XLA CPU devices",
        ("{py}", "-m", "big_vision_like.train", "--config", "configs/fashion_resnet.py",
         "--workdir", "{workdir}"),
        {"test/prec@1": "0.9154", "train_min": "10 min 12 s"},
        _training_run("test/prec@1"), env=_TWO_DEVICES),
    Headline(
        "contrastive", "configs/fashion_contrastive.py (SigLIP from scratch), 2 devices",
        ("{py}", "-m", "big_vision_like.train", "--config", "configs/fashion_contrastive.py",
         "--workdir", "{workdir}"),
        {"zeroshot/prec@1": "0.8882", "zeroshot_zpe/prec@1": "0.8886",
         "train_min": "6 min 40 s"},
        _training_run("zeroshot/prec@1", "zeroshot_zpe/prec@1"), env=_TWO_DEVICES),
    Headline(
        "lit", "configs/fashion_lit.py from the main job's model, 2 devices",
        ("{py}", "-m", "big_vision_like.train", "--config",
         "configs/fashion_lit.py:init={main_workdir}", "--workdir", "{workdir}"),
        {"zeroshot/prec@1": "0.9011", "zeroshot_zpe/prec@1": "0.9012",
         "train_min": "1 min 58 s"},
        _training_run("zeroshot/prec@1", "zeroshot_zpe/prec@1"), env=_TWO_DEVICES,
        needs=("main",)),
    Headline(
        "vit_s16", "ViT-S/16 train step vs the plain flax/optax step, 224 px, batch 32, f32, "
        "2 devices",
        ("{py}", "-m", "big_vision_like.tools.benchmark", "--config",
         "configs/vit_i1k.py:variant=S/16", "--batch", "32", "--baseline", "--steps", "3",
         "--rounds", "3"),
        {"step_time_s": "6.571 s", "mfu": "0.6945", "ours_vs_baseline": "1.020"},
        _benchmark_step, env=_TWO_DEVICES),
    Headline(
        "vit_s16_mixed", "ViT-S/16 train step, bf16 operands with float32 matmul results "
        "(model.dtype_mm_out), vs the plain float32 step; a CPU with AVX512_BF16, 2 devices",
        ("{py}", "-m", "big_vision_like.tools.benchmark", "--config",
         "configs/vit_i1k.py:variant=S/16", "--batch", "32", "--baseline", "--steps", "3",
         "--rounds", "3", "--baseline_dtype", "float32", "--config.model.dtype_mm=bfloat16",
         "--config.model.dtype_mm_out=float32"),
        {"step_time_s": "4.133 s", "mfu": "0.5457", "ours_vs_baseline": "1.516"},
        _benchmark_step, env=_TWO_DEVICES),
    Headline(
        "input", "ImageNet-style input pipelines vs bare decode+resize",
        ("{py}", "-m", "big_vision_like.tools.benchmark_input", "--repeats", "3"),
        {"train_vs_bare": "1.28", "randaug_vs_bare": "0.87", "eval_vs_bare": "1.19"},
        _input_ratios),
    Headline(
        "scorer", "offline scorer on 50,000 x 1000 logits (median of 5 processes)",
        ("{py}", "-m", "big_vision_like.tools.benchmark_scoring", "--skip_inloop"),
        {"real_s": "1.22", "single_s": "2.35"},
        _scorer),
)
BY_NAME = {h.name: h for h in HEADLINES}


def recorded_number(text: str) -> float:
  """'9 min 25 s' -> 9.4167 (minutes); '5.20 s' -> 5.2; '0.9101' -> 0.9101."""
  m = re.fullmatch(r"(\d+) min (\d+) s", text)
  if m:
    return int(m.group(1)) + int(m.group(2)) / 60
  return float(re.match(r"-?[\d.]+", text).group(0))


def _format(metric: str, value: float) -> str:
  if metric == "train_min":
    minutes, seconds = divmod(round(value * 60), 60)
    return f"{minutes} min {seconds:02d} s"
  return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"


def _substitute(text: str, values: dict[str, str]) -> str:
  for k, v in values.items():
    text = text.replace("{" + k + "}", v)
  return text


def run(headline: Headline, out_dir: str, workdirs: dict[str, str]) -> tuple[Parsed, str]:
  """Runs one headline's command; returns (measured metrics, the command line)."""
  workdir = os.path.join(out_dir, headline.name)
  values = {"py": sys.executable, "workdir": workdir,
            "main_workdir": workdirs.get("main", "workdirs/fashion_vit")}
  argv = [_substitute(a, values) for a in headline.command]
  env = {**os.environ, **{k: _substitute(v, values) for k, v in headline.env.items()}}
  shown = " ".join(f"{k}={_substitute(v, values)}" for k, v in headline.env.items())
  shown = (shown + " " if shown else "") + " ".join(argv)
  log_path = os.path.join(out_dir, headline.name + ".log")
  print(f"[{headline.name}] {shown}\n  (log: {log_path})", flush=True)
  t0 = time.time()
  with open(log_path, "w") as log:
    proc = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
  with open(log_path) as f:
    output = f.read()
  if proc.returncode:
    tail = "\n".join(output.splitlines()[-15:])
    raise RuntimeError(f"[{headline.name}] exited with {proc.returncode}; last lines of "
                       f"{log_path}:\n{tail}")
  workdirs[headline.name] = workdir
  measured = headline.parse(workdir, output)
  print(f"  done in {time.time() - t0:.0f} s: {measured}", flush=True)
  return measured, shown


def table(rows: list[tuple[Headline, Parsed | str, str]]) -> str:
  """Markdown: item | metric | recorded | measured | ratio | command."""
  lines = ["| item | metric | recorded (BENCHMARKS.md) | measured | measured / recorded "
           "| command |", "| --- | --- | --- | --- | --- | --- |"]
  for headline, measured, command in rows:
    for metric, recorded in headline.recorded.items():
      if isinstance(measured, str):  # The run failed: say so on every row.
        value, ratio = measured, ""
      else:
        value = _format(metric, measured[metric])
        ratio = f"{measured[metric] / recorded_number(recorded):.3f}"
      lines.append(f"| {headline.name} | {metric} | {recorded} | {value} | {ratio} "
                   f"| `{command}` |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default=",".join(BY_NAME),
                      help="comma-separated items (default: all): " + ", ".join(BY_NAME))
  parser.add_argument("--out", default=None,
                      help="directory for workdirs and logs (default: a new one in /tmp)")
  parser.add_argument("--list", action="store_true", help="print the items and exit")
  args = parser.parse_args(argv)
  names = [n.strip() for n in args.only.split(",") if n.strip()]
  unknown = [n for n in names if n not in BY_NAME]
  if unknown:
    parser.error(f"--only: unknown item(s) {unknown}; known: {sorted(BY_NAME)}")
  if args.list:
    for h in HEADLINES:
      print(f"{h.name:12s} {h.what}\n{'':12s} {' '.join(h.command)}\n{'':12s} "
            f"recorded: {h.recorded}")
    return 0
  out_dir = args.out or os.path.join(
      "/tmp", "bvl_reproduce_" + datetime.datetime.now().strftime("%Y%m%d_%H%M%S"))
  os.makedirs(out_dir, exist_ok=True)
  workdirs: dict[str, str] = {}
  rows, failed = [], False
  for name in names:
    headline = BY_NAME[name]
    missing = [n for n in headline.needs if n not in names]
    if missing and not os.path.isdir("workdirs/fashion_vit"):
      print(f"[{name}] needs {missing} (or an existing workdirs/fashion_vit); add it to "
            "--only", file=sys.stderr)
      rows.append((headline, "not run", ""))
      failed = True
      continue
    try:
      measured, command = run(headline, out_dir, workdirs)
      rows.append((headline, measured, command))
    except (RuntimeError, ValueError, OSError) as e:
      print(e, file=sys.stderr)
      rows.append((headline, "FAILED", ""))
      failed = True
  result = table(rows)
  print("\n" + result)
  with open(os.path.join(out_dir, "reproduce.md"), "w") as f:
    f.write(result + "\n")
  print(f"\n(table also in {out_dir}/reproduce.md)")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
