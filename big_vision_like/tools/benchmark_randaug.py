"""RandAugment's own CPU cost per image, with its drawn op run two ways.

  python -m big_vision_like.tools.benchmark_randaug [--rounds 30]

`benchmark_input` compares whole pipelines in fresh processes, best run
against best run; on a shared 2-core machine its RandAugment ratio moved by
more than a change to randaug could (0.58-1.11 between repeats of one run).
This tool answers the narrower question "did randaug get cheaper?": it
builds, in one process, the train pipeline (JPEG decode + inception crop +
flip) without randaug and with `randaug(2, 15)` whose drawn op runs as

- "lowered": a Case op lowered to Switch/Merge (what tf.switch_case gives),
- "functional": one functional Case op (what `randaug.run_drawn_op` does),

then times them in turn, round after round, so that a load on the machine
hits all three alike. It prints CPU ms per image (median and range over the
rounds), randaug's own cost (each round's difference to the pipeline
without it) and in how many rounds each variant was the cheaper one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from big_vision_like.pp import randaug
from big_vision_like.pp.builder import get_preprocess_fn
from big_vision_like.tools.benchmark_input import natural_image

CROP_PP = "decode_jpeg_and_inception_crop(224)|flip_lr|value_range(-1, 1)"
RANDAUG_PP = ("decode_jpeg_and_inception_crop(224)|flip_lr|randaug(2, 15)|"
              "value_range(-1, 1)")


def make_jpegs(count: int, seed: int = 0) -> list[bytes]:
  """`count` 375x500 JPEGs (quality 90) of `benchmark_input`'s ImageNet-like
  images."""
  rng = np.random.default_rng(seed)
  return [tf.io.encode_jpeg(natural_image(rng, 375, 500), quality=90).numpy()
          for _ in range(count)]


def _pipeline(jpegs: Sequence[bytes], pp: str, functional: bool,
              passes: int, batch: int) -> tf.data.Dataset:
  """The pp over the JPEGs, `passes` times, with randaug's Case as asked."""
  was = randaug._CASE_CAN_STAY_FUNCTIONAL  # pylint: disable=protected-access
  # The choice is made while the pp is traced (by tf.data, in `map`).
  randaug._CASE_CAN_STAY_FUNCTIONAL = functional and was  # pylint: disable=protected-access
  try:
    fn = get_preprocess_fn(pp)
    seed_b = tf.constant(5, tf.int64)
    ds = tf.data.Dataset.from_tensor_slices(list(jpegs)).repeat(
        passes).enumerate().map(
            lambda i, b: fn({"image": b, "_seed": tf.stack([i, seed_b])}
                            )["image"],
            num_parallel_calls=_threads(), deterministic=True)
  finally:
    randaug._CASE_CAN_STAY_FUNCTIONAL = was  # pylint: disable=protected-access
  return ds.batch(batch)


def _threads() -> int:
  # As many map threads as cores, like the pipelines `benchmark_input` times.
  return len(os.sched_getaffinity(0))


def _cpu_ms_per_image(ds: tf.data.Dataset) -> float:
  start, images = time.process_time(), 0
  for batch in ds:
    images += int(batch.shape[0])
  return (time.process_time() - start) / images * 1e3


def run(rounds: int, images: int, passes: int, batch: int
        ) -> dict[str, list[float]]:
  """{variant: CPU ms per image in each round}; one warm-up pass first."""
  jpegs = make_jpegs(images)
  variants = {
      "without randaug": _pipeline(jpegs, CROP_PP, True, passes, batch),
      "lowered": _pipeline(jpegs, RANDAUG_PP, False, passes, batch),
      "functional": _pipeline(jpegs, RANDAUG_PP, True, passes, batch),
  }
  for ds in variants.values():  # Traces and warms up every pipeline.
    _cpu_ms_per_image(ds)
  times: dict[str, list[float]] = {name: [] for name in variants}
  for _ in range(rounds):
    for name, ds in variants.items():
      times[name].append(_cpu_ms_per_image(ds))
  return times


def format_report(times: dict[str, list[float]]) -> str:
  """The table of `run`'s result, and the per-round comparison."""
  base = times["without randaug"]
  rows = ["| pipeline | CPU ms/img (median) | min-max | randaug's own "
          "(median of per-round differences) |", "| --- | --- | --- | --- |"]
  for name, values in times.items():
    own = "" if name == "without randaug" else (
        f"{statistics.median(v - b for v, b in zip(values, base)):.3f}")
    rows.append(f"| {name} | {statistics.median(values):.3f} | "
                f"{min(values):.3f}-{max(values):.3f} | {own} |")
  lowered, functional = times["lowered"], times["functional"]
  ratios = [a / b for a, b in zip(lowered, functional)]
  wins = sum(b < a for a, b in zip(lowered, functional))
  rows.append(f"\nlowered / functional per round: median "
              f"{statistics.median(ratios):.3f}; functional cheaper in "
              f"{wins} of {len(ratios)} rounds")
  return "\n".join(rows)


def main(argv: Sequence[str] | None = None,
         out: Callable[[str], None] = print) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=30)
  parser.add_argument("--images", type=int, default=256,
                      help="distinct JPEGs generated in memory")
  parser.add_argument("--passes", type=int, default=4,
                      help="passes over them per timing (new seeds each)")
  parser.add_argument("--batch", type=int, default=64)
  args = parser.parse_args(argv)
  if min(args.rounds, args.images, args.passes, args.batch) < 1:
    parser.error("--rounds, --images, --passes and --batch must be >= 1")
  if not randaug._CASE_CAN_STAY_FUNCTIONAL:  # pylint: disable=protected-access
    parser.error("this TensorFlow has no functional Case builder "
                 "(cond_v2.indexed_case with lower_using_switch_merge): "
                 "randaug runs lowered; there is nothing to compare")
  times = run(args.rounds, args.images, args.passes, args.batch)
  out(f"{args.images} JPEGs x {args.passes} passes per timing, batch "
      f"{args.batch}, {_threads()} map threads, {args.rounds} rounds "
      f"(the three pipelines in turn); pp with randaug: `{RANDAUG_PP}`\n")
  out(format_report(times))
  return 0


if __name__ == "__main__":
  sys.exit(main())
