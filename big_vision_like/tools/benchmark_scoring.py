"""Speed of the ImageNet scorecard: the offline scorer, and the evaluators' in-loop cost.

  python -m big_vision_like.tools.benchmark_scoring [--real_json PATH] \\
      [--num_examples 50000] [--num_classes 1000] [--variant Ti/16] \\
      [--image_size 224] [--eval_examples 512] [--batch 64] [--repeats 5] \\
      [--workdir DIR] [--skip_offline] [--skip_inloop]

Scoring must never be the reason not to evaluate often, so two things are
measured and printed as markdown tables:

1. Offline scorer speed. `tools/score_predictions` is a command people run
   on a full validation set, so it is timed end to end in a fresh process
   (interpreter start-up and imports included) on generated inputs of
   ImageNet's size: seeded random logits [50,000, 1000] (.npy) where the
   true class gets a random margin (so accuracy is neither ~0 nor 1), the
   50,000 `ILSVRC2012_val_*` file names in a shuffled order, and two label
   sources: the real ReaL file (`--real_json`) and a CSV of the original
   single labels (which also turns on calibration). With `--num_classes`
   other than 1000, labels and ReaL sets are folded to `id % num_classes`
   and written as a ReaL-format file, so the same code paths run at any
   size. A row of bare start-up + imports shows the fixed cost.

2. In-loop overhead. The `multilabel` (ReaL) and `classification`
   evaluators run a ViT over a small `imagenet2012_real` stand-in
   (`write_small_variant`, cached after a warm-up pass so JPEG decoding is
   out of every measurement). Their `run(params)` is compared with a bare
   pass over the SAME batches (the multilabel evaluator's own iterator, the
   same batch sharding) through a jitted predict_fn, blocking per batch.
   Overhead = evaluator time / bare time - 1, medians of `--repeats` passes
   after one warm-up pass of each (compilation excluded); passes are
   interleaved so drifts in machine load hit every row alike. The host-side
   scoring of the multilabel run (`score()` on its gathered arrays) is also
   timed alone, to split the run into collect + score.

   On a busy CPU, ending a tf.data eval iterator sometimes waits for
   tf.data's autotuning thread: the pass then ends at the thread's next
   wake-up (10 ms * (2^k - 1) after the iterator was made: 10.23 s, 20.47 s,
   ...), seconds late. Bare and evaluator passes share the iterator and the
   stall but get it at random, so the final next() of every pass is timed
   (`_EndTimer`, a pass-through wrapper) and the target is judged on the
   passes that did not stall. Medians of all passes, and this process's CPU
   time (all threads; idle waits and other users' load do not count), are
   shown next to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import numpy as np

# `bundled` imports only the standard library; jax, TensorFlow and our other
# modules are imported where needed, so that the table helpers (and their
# tests) do not pay for them.
from big_vision_like.data import bundled

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_REAL_JSON = bundled.real_json_path()
VAL_SIZE = 50_000
OFFLINE_TARGET_S = 10.0
INLOOP_TARGET = 0.05  # Relative overhead of the multilabel evaluator.
# decode_jpeg_and_central_crop's default: the central 87.5% (224 of 256).
_CROP_FRACTION = 0.875


# ------------------------------------------------------------ part 1: offline


@dataclasses.dataclass(frozen=True)
class OfflineInputs:
  """Paths of the generated scorer inputs and what they hold."""
  logits: str        # [num_examples, num_classes] float32 .npy
  names: str         # one file name per logits row, shuffled order
  real: str          # ReaL-format JSON (the real file, or folded)
  single: str        # CSV file_name,label of all 50,000 images
  num_examples: int
  num_classes: int
  real_note: str     # where the ReaL sets came from


@dataclasses.dataclass(frozen=True)
class OfflineCase:
  title: str
  flags: str                # for the table: what the command adds
  target_s: float | None
  metrics: tuple[str, ...]  # shown in the result column


OFFLINE_CASES = {
    "imports": OfflineCase("start-up + imports only", "python -c 'import ...score_predictions'",
                           None, ()),
    "real": OfflineCase("(a) ReaL labels", "--labels real.json", OFFLINE_TARGET_S,
                        ("real@1", "real@5", "num_counted")),
    "single": OfflineCase("(b) single labels: prec@k + calibration",
                          "--labels single.csv", OFFLINE_TARGET_S,
                          ("prec@1", "prec@5", "ece", "nll")),
    "real_map": OfflineCase("(c) ReaL + mAP", "--labels real.json --mean_ap", None,
                            ("real@1", "mAP")),
}


def _original_labels() -> np.ndarray:
  """Original label of each of the 50,000 validation images (file-name order)."""
  from big_vision_like.data import imagenet_variants  # pylint: disable=g-import-not-at-top

  index = {w: i for i, w in enumerate(imagenet_variants.class_wnids())}
  return np.array([index[w] for w in imagenet_variants.validation_wnids()], np.int32)


def write_offline_inputs(workdir: str, *, num_examples: int, num_classes: int,
                         real_json: str, seed: int = 0) -> OfflineInputs:
  """Writes the logits, file names and label files that the scorer is timed on."""
  from big_vision_like import label_sources  # pylint: disable=g-import-not-at-top

  if not 1 <= num_examples <= VAL_SIZE:
    raise ValueError(f"--num_examples must be in [1, {VAL_SIZE:,}] (the predictions are "
                     f"named after ImageNet validation images), got {num_examples}.")
  if num_classes < 2:
    raise ValueError(f"--num_classes must be >= 2, got {num_classes}.")
  if not os.path.exists(real_json):
    raise FileNotFoundError(f"--real_json {real_json} does not exist (the ReaL label file; "
                            f"the package ships it as {DEFAULT_REAL_JSON}).")
  real = label_sources.from_real_json(real_json)  # validates the file
  os.makedirs(workdir, exist_ok=True)
  label = _original_labels()
  real_path, note = real_json, f"ReaL sets from {real_json}"
  if num_classes != 1000:
    # Same set sizes and empty sets as the real file, ids folded into range.
    label = label % num_classes
    folded = [list(dict.fromkeys(int(c) % num_classes for c in row if c >= 0))
              for row in real.sets]
    real_path = os.path.join(workdir, f"real_folded_{num_classes}.json")
    with open(real_path, "w") as f:
      json.dump(folded, f)
    note = f"ReaL sets of {real_json} folded to id % {num_classes}"
  rng = np.random.default_rng(seed)
  # A random subset of the validation images, in a shuffled order: the
  # scorer must join on file names, not rely on any order.
  rows = rng.permutation(VAL_SIZE)[:num_examples]
  names_path = os.path.join(workdir, "names.txt")
  with open(names_path, "w") as f:
    f.write("".join(label_sources.real_file_name(int(i)) + "\n" for i in rows))
  single_path = os.path.join(workdir, "single.csv")
  with open(single_path, "w") as f:
    f.write("file_name,label\n" + "".join(
        f"{label_sources.real_file_name(i)},{label[i]}\n" for i in range(VAL_SIZE)))
  # Noise plus a margin on the true class, uniform in [0, 8): some rows are
  # confidently right, some hopelessly wrong (prec@1 ~ 0.5 at 1000 classes).
  logits = rng.standard_normal((num_examples, num_classes), dtype=np.float32)
  logits[np.arange(num_examples), label[rows]] += rng.uniform(
      0, 8, num_examples).astype(np.float32)
  logits_path = os.path.join(workdir, "logits.npy")
  np.save(logits_path, logits)
  return OfflineInputs(logits_path, names_path, real_path, single_path, num_examples,
                       num_classes, note)


def offline_command(case: str, inputs: OfflineInputs) -> list[str]:
  """The command line a user would type for `case`."""
  if case == "imports":
    return [sys.executable, "-c", "import big_vision_like.tools.score_predictions"]
  labels = inputs.single if case == "single" else inputs.real
  command = [sys.executable, "-m", "big_vision_like.tools.score_predictions",
             inputs.logits, "--file_names", inputs.names, "--labels", labels, "--json", "-"]
  if case == "real_map":
    command.append("--mean_ap")
  return command


def _run_timed(command: list[str]) -> tuple[float, str]:
  """Wall seconds of `command` in a fresh process, and its stdout."""
  start = time.perf_counter()
  proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - start
  if proc.returncode:
    raise RuntimeError(f"{' '.join(command)} failed (exit {proc.returncode}):\n"
                       f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
  return seconds, proc.stdout


def run_offline(inputs: OfflineInputs, repeats: int,
                log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
  """{case: {"times": [s, ...], "metrics": {...}}}, repeats interleaved."""
  results: dict[str, dict[str, Any]] = {c: {"times": []} for c in OFFLINE_CASES}
  for r in range(repeats):
    for case in OFFLINE_CASES:
      seconds, stdout = _run_timed(offline_command(case, inputs))
      results[case]["times"].append(seconds)
      if case != "imports":
        (metrics,) = json.loads(stdout).values()  # one model: the logits
        results[case]["metrics"] = metrics
      log(f"  offline {r + 1}/{repeats} {case}: {seconds:.2f} s")
  return results


def _cell_metric(name: str, value: float) -> str:
  if name.startswith("num_"):
    return f"{name} {int(value):,}"
  if name == "nll":
    return f"{name} {value:.3f}"
  return f"{name} {100 * value:.2f}%"


def format_offline_table(results: dict[str, dict[str, Any]], repeats: int) -> str:
  """One row per case: median and fastest wall time, the target, key metrics."""
  head = ("case", "command adds", f"wall s (median of {repeats})", "min s", "target",
          "result")
  rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for case, spec in OFFLINE_CASES.items():
    r = results.get(case)
    if r is None:
      continue
    median, best = statistics.median(r["times"]), min(r["times"])
    goal = ""
    if spec.target_s is not None:
      goal = f"< {spec.target_s:g} s ({'pass' if median < spec.target_s else 'FAIL'})"
    shown = ", ".join(_cell_metric(m, r["metrics"][m]) for m in spec.metrics
                      if m in r.get("metrics", {}))
    rows.append("| " + " | ".join([spec.title, f"`{spec.flags}`", f"{median:.2f}",
                                   f"{best:.2f}", goal, shown]) + " |")
  return "\n".join(rows)


# ------------------------------------------------------------ part 2: in-loop


INLOOP_ROWS = {
    "bare": "bare forward: jit(predict_fn), block per batch",
    "multilabel": "multilabel (ReaL) evaluator run()",
    "score": "of which score() on the host (timed alone)",
    "classification": "classification evaluator run()",
}
# A pass whose final next() (ending the eval iterator) takes longer than
# this waited for tf.data (see `_EndTimer`); normally it takes < 0.05 s.
STALL_S = 0.25


class _EndTimer:
  """An eval iterable that records how long each pass's final next() takes.

  The final next() ends the tf.data iterator. On a busy CPU it sometimes
  waits until tf.data's autotuning thread wakes up (10 ms * (2^k - 1) after
  the iterator was made: 10.23 s, 20.47 s, 40.95 s, ...), whatever consumes
  the batches. The bare pass and the evaluators share this stall but get it
  at random, so it is measured per pass to tell it from evaluator overhead.
  Batches pass through unchanged; other attributes are the wrapped ones.
  """

  def __init__(self, iterable):
    self._iterable = iterable
    self.last = float("nan")

  def __iter__(self):
    batches = iter(self._iterable)
    while True:
      start = time.perf_counter()
      try:
        batch = next(batches)
      except StopIteration:
        self.last = time.perf_counter() - start
        return
      yield batch

  def __len__(self) -> int:
    return len(self._iterable)

  def __getattr__(self, name: str):
    return getattr(self.__dict__["_iterable"], name)


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
  """(wall s, CPU s of this process, all threads) of one call."""
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - wall, time.process_time() - cpu


def run_inloop(data_dir: str, *, variant: str, image_size: int, eval_examples: int,
               batch_size: int, repeats: int, seed: int = 0,
               log: Callable[[str], None] = print) -> dict[str, Any]:
  """Times bare forward passes and evaluator runs.

  Returns {"wall": {row: [s]}, "cpu": {row: [s]}, "end": {row: [s]} (the
  final next() of each pass; not for "score"), "real": the multilabel
  metrics, ...}; rows are the keys of INLOOP_ROWS. The stand-in dataset is
  written under `data_dir` once per (size, examples, seed) and reused.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top

  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from big_vision_like import experiment  # pylint: disable=g-import-not-at-top
  from big_vision_like import registry  # pylint: disable=g-import-not-at-top
  from big_vision_like import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from big_vision_like.data import imagenet_variants  # pylint: disable=g-import-not-at-top
  from big_vision_like.data import input_pipeline  # pylint: disable=g-import-not-at-top

  # Written JPEGs are large enough that the central crop needs no upsampling.
  jpeg_size = math.ceil(image_size / _CROP_FRACTION)
  data_dir = os.path.join(data_dir, f"real_{eval_examples}_{jpeg_size}px_seed{seed}")
  if not os.path.isdir(os.path.join(data_dir, "imagenet2012_real")):
    imagenet_variants.write_small_variant(
        "imagenet2012_real", data_dir, seed=seed, image_size=jpeg_size,
        examples_per_split={"validation": eval_examples})
  config = ml_collections.ConfigDict(dict(
      model_name="vit", loss="softmax_xent", mesh=[("data", -1)], seed=seed,
      # Like configs/vit_i1k.py; a random (not zero) head so predictions vary.
      model=dict(variant=variant, num_classes=1000, pool_type="gap", posemb="sincos2d",
                 head_zeroinit=False),
      # Eval pp leaves uint8 images; the float conversion runs in predict_fn.
      device_value_range=(-1, 1)))
  exp = experiment.build(config, input_spec={
      "image": jax.ShapeDtypeStruct((image_size, image_size, 3), jnp.uint8)})
  mesh, axes = exp.mesh, exp.data_axes
  params = exp.init_params(jax.random.key(seed))
  predict_fn = exp.predict_fn
  data = dict(name="imagenet2012_real", split="validation", data_dir=data_dir)
  pp = f"decode_jpeg_and_central_crop({image_size})"
  common = dict(data=data, batch_size=batch_size, mesh=mesh, data_axes=axes, cache=True)
  multilabel = registry.EVALUATORS.get("multilabel")(
      predict_fn, pp=pp + "|keep('image', 'original_label', 'real_label')", name="real",
      **common)
  classification = registry.EVALUATORS.get("classification")(
      predict_fn, pp=pp + "|keep('image', 'original_label')", label_key="original_label",
      name="val", **common)
  for ev in (multilabel, classification):
    ev.collector.batches = _EndTimer(ev.collector.batches)

  # The bare pass: the multilabel evaluator's own batches and sharding.
  batches = multilabel.collector.batches
  sharding = multilabel.collector.sharding
  forward = jax.jit(predict_fn)

  def bare():
    for batch in batches:
      device, _ = input_pipeline.split_host_keys(batch)
      jax.block_until_ready(forward(params, sharding_lib.put_process_local_batch(
          device, sharding)))

  out: dict[str, Any] = {}
  # score() alone, on arrays gathered once: the host-side share of run().
  gathered = multilabel.collector.run(params)
  passes = {
      "bare": (bare, batches),
      "multilabel": (lambda: out.__setitem__("real", multilabel.run(params)), batches),
      "score": (lambda: multilabel.score(gathered), None),
      "classification": (lambda: out.__setitem__("val", classification.run(params)),
                         classification.collector.batches),
  }
  wall: dict[str, list[float]] = {row: [] for row in passes}
  cpu: dict[str, list[float]] = {row: [] for row in passes}
  end: dict[str, list[float]] = {row: [] for row, (_, t) in passes.items() if t}
  for name, (fn, _) in passes.items():  # Compiles, fills the caches.
    log(f"  in-loop warm-up {name}: {_timed(fn)[0]:.2f} s")
  for r in range(repeats):
    for name, (fn, timer) in passes.items():
      w, c = _timed(fn)
      wall[name].append(w)
      cpu[name].append(c)
      if timer is not None:
        end[name].append(timer.last)
    log(f"  in-loop {r + 1}/{repeats}: " + ", ".join(
        f"{name} {wall[name][-1]:.2f} s (CPU {cpu[name][-1]:.2f} s"
        + (f", end {end[name][-1]:.2f} s)" if name in end else ")") for name in passes))
  out.update(wall=wall, cpu=cpu, end=end, examples=eval_examples,
             num_batches=multilabel.collector.num_batches,
             params_millions=sum(x.size for x in jax.tree.leaves(params)) / 1e6)
  return out


def _stall_free(result: dict[str, Any], row: str) -> list[float]:
  """Wall times of the passes of `row` that did not stall at the end."""
  ends = result["end"].get(row)
  if ends is None:
    return list(result["wall"][row])
  return [w for w, e in zip(result["wall"][row], ends) if not e > STALL_S]


def _ratio(value: float | None, base: float | None) -> float | None:
  return None if value is None or not base else value / base


def _median(values: Sequence[float]) -> float | None:
  return statistics.median(values) if values else None


def overheads(result: dict[str, Any]) -> dict[str, dict[str, float | None]]:
  """{"wall"|"stall_free"|"cpu": {row: median / bare median - 1}}.

  For the `score` row the value is a share of the bare pass (score() is
  part of the multilabel run, not a run of its own); None where a row has
  no stall-free pass.
  """
  medians = {
      "wall": {row: _median(t) for row, t in result["wall"].items()},
      "stall_free": {row: _median(_stall_free(result, row)) for row in result["wall"]},
      "cpu": {row: _median(t) for row, t in result["cpu"].items()},
  }
  out: dict[str, dict[str, float | None]] = {}
  for kind, m in medians.items():
    out[kind] = {}
    for row in m:
      if row == "bare":
        continue
      ratio = _ratio(m[row], m["bare"])
      if ratio is not None and row != "score":
        ratio -= 1
      out[kind][row] = ratio
  return out


def format_inloop_table(result: dict[str, Any], repeats: int) -> str:
  """Wall (all passes and stall-free ones) and CPU time; overheads vs bare."""
  over = overheads(result)
  head = ("measurement", f"wall s / pass (median of {repeats})", "overhead",
          f"passes ending in a stall (> {STALL_S} s)", "wall s, stall-free (median)",
          "overhead, stall-free", "ms / image, stall-free", "CPU s / pass (median)",
          "overhead (CPU)", f"target: stall-free < {100 * INLOOP_TARGET:g}%")
  rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]

  def share(row: str, value: float | None) -> str:
    if value is None:
      return "n/a" if row != "bare" else ""
    return f"{100 * value:.2f}% of bare" if row == "score" else f"{100 * value:+.1f}%"

  for row, title in INLOOP_ROWS.items():
    if row not in result["wall"]:
      continue
    free = _median(_stall_free(result, row))
    ends = result["end"].get(row)
    stalls = ""
    if ends is not None:
      stalled = [e for e in ends if e > STALL_S]
      stalls = f"{len(stalled)} of {len(ends)}" + (
          f" (up to {max(stalled):.1f} s)" if stalled else "")
    goal = ""
    if row == "multilabel":
      value = over["stall_free"][row]
      goal = "n/a" if value is None else (
          "pass" if value < INLOOP_TARGET else "FAIL")
    rows.append("| " + " | ".join([
        title, f"{_median(result['wall'][row]):.3f}", share(row, over["wall"].get(row)),
        stalls, "n/a" if free is None else f"{free:.3f}",
        share(row, over["stall_free"].get(row)),
        "n/a" if free is None else f"{1e3 * free / result['examples']:.2f}",
        f"{_median(result['cpu'][row]):.3f}", share(row, over["cpu"].get(row)),
        goal]) + " |")
  return "\n".join(rows)


def stall_note(result: dict[str, Any]) -> str:
  """One line: how many passes ended in a tf.data stall, and how long."""
  ends = [e for row in result["end"].values() for e in row]
  stalled = [e for e in ends if e > STALL_S]
  if not stalled:
    return (f"No pass ended in a stall: the eval iterator's final next() took at most "
            f"{max(ends, default=0.0):.3f} s.")
  return (f"{len(stalled)} of {len(ends)} timed passes ended in a stall: the eval "
          f"iterator's final next() (ending the tf.data iterator) took "
          f"{min(stalled):.1f} to {max(stalled):.1f} s; the other passes' took at most "
          f"{max([e for e in ends if e <= STALL_S], default=0.0):.3f} s.")


# ------------------------------------------------------------------- driver


def machine_line() -> str:
  import jax  # pylint: disable=g-import-not-at-top

  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
  return (f"machine: {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), "
          f"jax {jax.__version__} {jax.default_backend()}: {len(devices)} x "
          f"{'/'.join(kinds)}; load average {load}")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m big_vision_like.tools.benchmark_scoring",
      description=__doc__.split("\n")[0])
  parser.add_argument("--real_json", default=DEFAULT_REAL_JSON,
                      help="the ReaL label file (default: the copy shipped with the "
                           "package, big_vision_like/data/resources/real.json)")
  parser.add_argument("--num_examples", type=int, default=VAL_SIZE,
                      help="offline: rows of the logits (<= 50,000)")
  parser.add_argument("--num_classes", type=int, default=1000,
                      help="offline: columns of the logits (labels folded if not 1000)")
  parser.add_argument("--variant", default="Ti/16", help="in-loop: ViT variant")
  parser.add_argument("--image_size", type=int, default=224, help="in-loop: model input")
  parser.add_argument("--eval_examples", type=int, default=512,
                      help="in-loop: validation examples of the stand-in")
  parser.add_argument("--batch", type=int, default=64, help="in-loop: eval batch size")
  parser.add_argument("--repeats", type=int, default=5,
                      help="timed runs of every row (interleaved); tables show the median")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default=None,
                      help="where to write the inputs (default: a temporary dir, removed)")
  parser.add_argument("--skip_offline", action="store_true")
  parser.add_argument("--skip_inloop", action="store_true")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  for flag in ("num_examples", "num_classes", "image_size", "eval_examples", "batch",
               "repeats"):
    if getattr(args, flag) < 1:
      parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}.")
  if args.skip_offline and args.skip_inloop:
    parser.error("--skip_offline and --skip_inloop together leave nothing to measure.")
  if not args.skip_inloop:
    from big_vision_like.models import vit  # pylint: disable=g-import-not-at-top
    try:
      vit.parse_variant(args.variant)
    except ValueError as e:
      parser.error(f"--variant: {e}")
  with tempfile.TemporaryDirectory(prefix="bvl_benchmark_scoring_") as tmp:
    workdir = args.workdir or tmp
    sections = []
    if not args.skip_offline:
      try:
        inputs = write_offline_inputs(os.path.join(workdir, "offline"),
                                      num_examples=args.num_examples,
                                      num_classes=args.num_classes,
                                      real_json=args.real_json, seed=args.seed)
      except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
      print(f"offline inputs: logits [{inputs.num_examples:,}, {inputs.num_classes:,}] "
            f"float32 ({os.path.getsize(inputs.logits) / 2**20:.0f} MiB .npy), "
            f"{inputs.num_examples:,} shuffled file names; {inputs.real_note}", flush=True)
      offline = run_offline(inputs, args.repeats,
                            log=lambda s: print(s, flush=True))
      sections.append(
          f"### Offline scorer speed (fresh process each, start-up and imports "
          f"included)\n\nlogits [{inputs.num_examples:,}, {inputs.num_classes:,}] float32 "
          f".npy, names in shuffled order; {inputs.real_note}. Each case runs `python -m "
          f"big_vision_like.tools.score_predictions logits.npy --file_names names.txt "
          f"--json -` plus the flags shown.\n\n"
          + format_offline_table(offline, args.repeats))
    if not args.skip_inloop:
      inloop = run_inloop(os.path.join(workdir, "tfds"), variant=args.variant,
                          image_size=args.image_size, eval_examples=args.eval_examples,
                          batch_size=args.batch, repeats=args.repeats, seed=args.seed,
                          log=lambda s: print(s, flush=True))
      real = inloop["real"]
      sections.append(
          f"### In-loop overhead (compile and decode excluded)\n\n"
          f"ViT-{args.variant} ({inloop['params_millions']:.1f} M params, random init) at "
          f"{args.image_size}px on an imagenet2012_real stand-in of "
          f"{inloop['examples']:,} validation images (cached), batch {args.batch} "
          f"({inloop['num_batches']} batches); real@1 {100 * real['real@1']:.2f}% of "
          f"{int(real['num_counted'])} counted\n\n"
          + format_inloop_table(inloop, args.repeats) + "\n\n" + stall_note(inloop))
  print(f"\n{machine_line()}\n")
  print("\n\n".join(sections))
  return 0


if __name__ == "__main__":
  sys.exit(main())
