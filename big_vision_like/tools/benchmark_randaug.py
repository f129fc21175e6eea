"""RandAugment's own CPU cost per image, with and without its speed-ups.

  python -m big_vision_like.tools.benchmark_randaug [--rounds 30]

`benchmark_input` compares whole pipelines in fresh processes, best run
against best run; on a shared 2-core machine its RandAugment ratio moved by
more than a change to randaug could (0.58-1.11 between repeats of one run).
This tool answers the narrower question "did randaug get cheaper?": it
builds, in one process, the train pipeline (JPEG decode + inception crop +
flip) without randaug and with `randaug(2, 15)` in three forms, each set
while the pipeline is traced:

- "lowered Case": the drawn op's Case op lowered to Switch/Merge (what
  tf.switch_case gives in tf.data),
- "functional Case, gather lookup": one functional Case op
  (`randaug.run_drawn_op`), Equalize's lookup by TF's gather,
- "functional Case, XLA lookup (now)": also Equalize's lookup compiled by
  XLA (`randaug.equalize`), what `randaug` runs for fixed-size images.

Each pipeline gets ONE iterator, made and warmed up before any timing:
making an iterator instantiates the map function, grappler passes over all
32 branch functions included (~0.4 s for randaug(2, 15) here), which a
real training run pays once. (The tool's first version made a new iterator
per timing and so counted that start-up in every timing.) The pipelines
are then timed in turn, round after round, so that a load on the machine hits all alike. It
prints CPU ms per image (median and range over the rounds), randaug's own
cost (each round's difference to the pipeline without it), and for each
older form, in how many rounds the current one was cheaper.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from big_vision_like.data import tf_options
from big_vision_like.pp import randaug
from big_vision_like.pp.builder import get_preprocess_fn
from big_vision_like.tools.benchmark_input import natural_image

CROP_PP = "decode_jpeg_and_inception_crop(224)|flip_lr"
RANDAUG_PP = "decode_jpeg_and_inception_crop(224)|flip_lr|randaug(2, 15)"
BASE = "without randaug"
NOW = "functional Case, XLA lookup (now)"
# name: (pp, Case kept functional, Equalize's lookup by XLA).
VARIANTS = {
    BASE: (CROP_PP, True, True),
    "lowered Case": (RANDAUG_PP, False, True),
    "functional Case, gather lookup": (RANDAUG_PP, True, False),
    NOW: (RANDAUG_PP, True, True),
}


def make_jpegs(count: int, seed: int = 0) -> list[bytes]:
  """`count` 375x500 JPEGs (quality 90) of `benchmark_input`'s ImageNet-like
  images."""
  rng = np.random.default_rng(seed)
  return [tf.io.encode_jpeg(natural_image(rng, 375, 500), quality=90).numpy()
          for _ in range(count)]


def _iterator(jpegs: Sequence[bytes], pp: str, functional: bool,
              xla_lookup: bool, batch: int) -> Iterator[tf.Tensor]:
  """An endless iterator of the pp over the JPEGs, randaug set as asked."""
  # pylint: disable=protected-access
  was = randaug._CASE_CAN_STAY_FUNCTIONAL, randaug._XLA_LOOKUP
  # The choices are made while the pp is traced (by tf.data, in `map`).
  randaug._CASE_CAN_STAY_FUNCTIONAL = functional and was[0]
  randaug._XLA_LOOKUP = xla_lookup and was[1]
  try:
    fn = get_preprocess_fn(pp)
    seed_b = tf.constant(5, tf.int64)
    ds = tf.data.Dataset.from_tensor_slices(list(jpegs)).repeat().enumerate(
        ).map(lambda i, b: fn({"image": b, "_seed": tf.stack([i, seed_b])}
                              )["image"],
              num_parallel_calls=_threads(), deterministic=True)
  finally:
    randaug._CASE_CAN_STAY_FUNCTIONAL, randaug._XLA_LOOKUP = was
  # pylint: enable=protected-access
  # No map-and-batch fusion: the fused op computes a whole batch ahead, so
  # after a timing it would go on working (on the CPU clock of the NEXT
  # pipeline timed) for up to `batch` images. The parallel map alone keeps
  # at most `_threads()` images in flight. Otherwise our pipelines' options
  # (no autotuner thread).
  options = tf_options.options()
  options.experimental_optimization.map_and_batch_fusion = False
  return iter(ds.batch(batch).with_options(options))


def _threads() -> int:
  # As many map threads as our input pipelines use (the CPUs this process
  # may run on).
  return tf_options.parallelism()


def _cpu_ms_per_image(batches: Iterator[tf.Tensor], count: int) -> float:
  start, images = time.process_time(), 0
  for _ in range(count):
    images += int(next(batches).shape[0])
  return (time.process_time() - start) / images * 1e3


def run(rounds: int, images: int, batches: int, batch: int, warmup: int
        ) -> dict[str, list[float]]:
  """{variant: CPU ms per image in each round}, after `warmup` batches."""
  jpegs = make_jpegs(images)
  iterators = {name: _iterator(jpegs, pp, functional, xla, batch)
               for name, (pp, functional, xla) in VARIANTS.items()}
  for it in iterators.values():  # Instantiates, compiles, warms up.
    _cpu_ms_per_image(it, warmup)
  times: dict[str, list[float]] = {name: [] for name in iterators}
  for _ in range(rounds):
    for name, it in iterators.items():
      times[name].append(_cpu_ms_per_image(it, batches))
  return times


def format_report(times: dict[str, list[float]]) -> str:
  """The table of `run`'s result, and the per-round comparisons."""
  base = times[BASE]
  rows = ["| pipeline | CPU ms/img (median) | min-max | randaug's own "
          "(median of per-round differences) |", "| --- | --- | --- | --- |"]
  for name, values in times.items():
    own = "" if name == BASE else (
        f"{statistics.median(v - b for v, b in zip(values, base)):.3f}")
    rows.append(f"| {name} | {statistics.median(values):.3f} | "
                f"{min(values):.3f}-{max(values):.3f} | {own} |")
  now = times[NOW]
  rows.append("")
  for name, values in times.items():
    if name in (BASE, NOW):
      continue
    ratios = [a / b for a, b in zip(values, now)]
    wins = sum(b < a for a, b in zip(values, now))
    rows.append(f"{name} / now per round: median "
                f"{statistics.median(ratios):.3f}; now cheaper in {wins} of "
                f"{len(ratios)} rounds")
  return "\n".join(rows)


def main(argv: Sequence[str] | None = None,
         out: Callable[[str], None] = print) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=30)
  parser.add_argument("--images", type=int, default=256,
                      help="distinct JPEGs generated in memory")
  parser.add_argument("--batches", type=int, default=8,
                      help="batches per timing (new seeds each)")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--warmup", type=int, default=8,
                      help="batches per pipeline before the first timing")
  args = parser.parse_args(argv)
  if min(args.rounds, args.images, args.batches, args.batch,
         args.warmup) < 1:
    parser.error("--rounds, --images, --batches, --batch and --warmup must "
                 "be >= 1")
  if not randaug._CASE_CAN_STAY_FUNCTIONAL:  # pylint: disable=protected-access
    parser.error("this TensorFlow has no functional Case builder "
                 "(cond_v2.indexed_case with lower_using_switch_merge): "
                 "randaug runs lowered; there is nothing to compare")
  times = run(args.rounds, args.images, args.batches, args.batch,
              args.warmup)
  out(f"{args.images} JPEGs, {args.batches} batches of {args.batch} per "
      f"timing from one iterator per pipeline ({args.warmup} warm-up "
      f"batches), {_threads()} map threads, {args.rounds} rounds (the "
      f"pipelines in turn); pp with randaug: `{RANDAUG_PP}`\n")
  out(format_report(times))
  return 0


if __name__ == "__main__":
  sys.exit(main())
