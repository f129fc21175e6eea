"""RandAugment keeps its outputs and its distribution across the speed-up.

`big_vision_like/pp/randaug.py` was rewritten for throughput (unrolled
layers instead of a tf.while_loop, cheaper Sharpness / Equalize /
AutoContrast / Color / Contrast). Two things must not have changed:

- the outputs: tests/fixtures/randaug/golden.json holds the SHA-256 of what
  the previous implementation (loaded from git by make_golden.py there) gave
  for fixed images and seeds, for `randaug` and for `apply_op` of every op at
  several magnitudes; the current code must give the same bytes;
- the distribution: over many seeds, each layer draws each of the ops with
  frequency 1/len(ops) (within a binomial tolerance), a random sign of 1/2,
  and a uniform position; and `randaug`'s output is exactly the chain of the
  drawn ops at the configured magnitude.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from big_vision_like.pp import randaug as ra

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "randaug"


@functools.lru_cache(maxsize=None)
def _golden_module():
  spec = importlib.util.spec_from_file_location(
      "randaug_make_golden", FIXTURES / "make_golden.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_outputs_equal_the_previous_implementation_bit_for_bit():
  golden = json.loads((FIXTURES / "golden.json").read_text())["cases"]
  current = _golden_module().cases(ra)
  assert sorted(current) == sorted(golden)
  changed = [case for case in golden if current[case] != golden[case]]
  assert not changed, (f"{len(changed)} of {len(golden)} outputs differ from "
                       f"the previous implementation's, e.g. {changed[:5]}")


def _draws(num_seeds: int, num_layers: int, num_ops: int
           ) -> tuple[np.ndarray, np.ndarray]:
  """layer_draws for seeds (i, 3), i < num_seeds, as [N, L] and [N, L, 3]."""
  ds = tf.data.Dataset.range(num_seeds).map(
      lambda i: ra.layer_draws(tf.stack([i, tf.constant(3, tf.int64)]),
                               num_layers, num_ops))
  indices, rands = next(iter(ds.batch(num_seeds)))
  return indices.numpy(), rands.numpy()


def uniform_misfits(counts: np.ndarray, p: float, z: float = 4.5
                    ) -> list[int]:
  """The bins whose count is more than `z` binomial stds from n p."""
  n = int(counts.sum())
  std = math.sqrt(n * p * (1 - p))
  return [i for i, c in enumerate(counts) if abs(c - n * p) > z * std]


@pytest.mark.parametrize("num_ops", [16, 14, 3])
def test_ops_are_drawn_uniformly_per_layer(num_ops):
  indices, _ = _draws(6000, 2, num_ops)
  assert indices.min() >= 0 and indices.max() < num_ops
  for layer in range(2):
    counts = np.bincount(indices[:, layer], minlength=num_ops)
    assert not uniform_misfits(counts, 1 / num_ops), counts
  # The layers draw independently: pairs are uniform over num_ops^2.
  pairs = np.bincount(indices[:, 0] * num_ops + indices[:, 1],
                      minlength=num_ops**2)
  assert not uniform_misfits(pairs, 1 / num_ops**2)


def test_the_uniformity_check_can_fail():
  # The tolerance is tight enough to see an op drawn at 15/16 of its rate,
  # or one op never drawn (the bug of drawing from num_ops - 1).
  indices, _ = _draws(6000, 1, 16)
  counts = np.bincount(indices[:, 0], minlength=16)
  biased = counts.copy()
  biased[0] -= counts[0] // 4
  biased[1] += counts[0] // 4
  assert uniform_misfits(biased, 1 / 16)
  short = np.bincount(indices[:, 0] % 15, minlength=16)
  assert 15 in uniform_misfits(short, 1 / 16)


def test_signs_and_positions_are_uniform():
  _, rands = _draws(6000, 2, 16)
  assert rands.min() >= 0 and rands.max() < 1
  # The sign (rand < 0.5: negative) of every layer is a fair coin, and the
  # cutout position's coordinates are uniform (ten equal bins).
  for layer in range(2):
    negative = int((rands[:, layer, 0] < 0.5).sum())
    assert not uniform_misfits(np.array([negative, 6000 - negative]), 0.5)
    for k in (1, 2):
      bins = np.bincount((rands[:, layer, k] * 10).astype(int), minlength=10)
      assert not uniform_misfits(bins, 0.1), bins


@pytest.mark.parametrize("pp_args,convention", [
    ((2, 15), "autoaugment"), ((2, 10, "increasing"), "increasing")])
def test_randaug_applies_exactly_the_drawn_ops_at_the_magnitude(
    pp_args, convention):
  # With the draws above uniform, this makes the op frequencies and the
  # magnitudes of randaug's outputs those of DEFAULT_OPS at `pp_args[1]`.
  names = ra.DEFAULT_OPS[convention]
  # randaug traced into a graph, the chain eagerly: the drawn op runs in a
  # functional Case branch, which grappler's arithmetic rewrites leave as
  # written, so the two agree to the byte (see `run_drawn_op`).
  fn = tf.function(ra.get_randaug(*pp_args), autograph=False)
  x = tf.constant(_golden_module().image("rgb"))
  seen = set()
  for s in range(24):
    seed = tf.constant([s, 3], tf.int64)
    indices, rands = ra.layer_draws(seed, 2, len(names))
    expected = x
    for layer in range(2):
      name = names[int(indices[layer])]
      seen.add(name)
      expected = ra.apply_op(expected, name, pp_args[1], rands[layer],
                             convention=convention)
    np.testing.assert_array_equal(
        fn({"image": x, "_seed": seed})["image"], expected,
        err_msg=f"seed {s}")
  assert len(seen) >= len(names) // 2


def test_the_drawn_op_runs_as_a_functional_case_in_a_graph():
  # Lowered into Switch/Merge, every op of all 16 branches would run as a
  # node of the tf.data function per image (`run_drawn_op`).
  fn = ra.get_randaug(2, 15)
  graph = tf.function(lambda x, s: fn({"image": x, "_seed": s})["image"]
                      ).get_concrete_function(
                          tf.TensorSpec([None, None, 3], tf.uint8),
                          tf.TensorSpec([2], tf.int64)).graph
  cases = [op for op in graph.get_operations()
           if op.type in ("Case", "StatelessCase")]
  assert len(cases) == 2, [op.type for op in graph.get_operations()]
  for op in cases:
    assert op.get_attr("_lower_using_switch_merge") is False, op.name
    assert len(op.get_attr("branches")) == 16


def _xla_calls(graph: tf.Graph) -> list[str]:
  """Functions of `graph` (nested ones included) that XLA must compile."""
  return [f.signature.name for f in graph.as_graph_def().library.function
          if f.attr["_XlaMustCompile"].b]


@pytest.mark.parametrize("channels", [3, 1])
def test_equalize_looks_up_with_xla_for_static_shapes_only(channels):
  # The lookup runs as one XLA-compiled function when the image's shape is
  # known at trace time (fixed-size crops); an unknown shape keeps TF's
  # gather, since XLA would compile once per image size. Both give the
  # bytes of the eager (plain gather) path.
  golden = _golden_module()
  image = golden.image("rgb" if channels == 3 else "gray")
  static = tf.function(ra.equalize).get_concrete_function(
      tf.TensorSpec(image.shape, tf.uint8))
  dynamic = tf.function(ra.equalize).get_concrete_function(
      tf.TensorSpec([None, None, channels], tf.uint8))
  assert _xla_calls(static.graph), "no XLA-compiled lookup in the graph"
  assert not _xla_calls(dynamic.graph)
  rng = np.random.default_rng(channels)
  for x in (image, rng.integers(40, 90, image.shape, dtype=np.uint8),
            np.full(image.shape, 7, np.uint8)):
    eager = ra.equalize(x).numpy()
    np.testing.assert_array_equal(static(tf.constant(x)), eager)
    np.testing.assert_array_equal(dynamic(tf.constant(x)), eager)
  # And inside randaug's Case branches, with a fixed-size input.
  fn = tf.function(ra.get_randaug(2, 15, ops=["Equalize"]), autograph=False)
  graph = fn.get_concrete_function(
      {"image": tf.TensorSpec(image.shape, tf.uint8),
       "_seed": tf.TensorSpec([2], tf.int64)}).graph
  assert _xla_calls(graph)
  np.testing.assert_array_equal(
      fn({"image": tf.constant(image),
          "_seed": tf.constant([1, 2], tf.int64)})["image"],
      ra.equalize(ra.equalize(image)))
