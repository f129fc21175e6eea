"""tools/published_predictions: the index code, the stand-in model, the comparison, and a run.

The run writes the first 2,000 validation images of the real ReaL labels into
a TFDS split, scores the six published models in the loop on 4 fake devices
and offline, and must exit 0; its `label` row is checked against a count made
here from real.json and the npz with plain Python.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from big_vision_like.tools import published_predictions as P

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_index_image_layout_by_hand():
  # Bit b is block (b // 4, b % 4), 8x8 pixels, white for 1.
  image = P.index_images(np.array([1 + 2 ** 6]))[0]
  assert image.shape == (32, 32, 3) and image.dtype == np.uint8
  white = {(0, 0), (1, 2)}  # bit 0 and bit 6
  for row in range(4):
    for col in range(4):
      block = image[8 * row:8 * row + 8, 8 * col:8 * col + 8]
      assert (block == (255 if (row, col) in white else 0)).all(), (row, col)
  with pytest.raises(ValueError, match="65536"):
    P.index_images(np.array([2 ** 16]))


def test_index_code_survives_jpeg_and_the_default_decoder():
  # 18 is a 2x2 checkerboard in the top-left DCT block: with 4x4-pixel
  # blocks, TF's default fast IDCT garbled it. 0xAAAA/0x5555 are full
  # checkerboards.
  indices = np.array([0, 1, 18, 0xAAAA, 0x5555, 2 ** 16 - 1, 49_999,
                      *np.random.default_rng(0).integers(0, 2 ** 16, 200)])
  decoded = [tf.io.decode_image(b, channels=3).numpy() for b in P.encode_jpegs(indices)]
  got = np.asarray(P.decode_index(jnp.asarray(np.stack(decoded))))
  np.testing.assert_array_equal(got, indices)


def test_predict_fn_ranks_the_table_row_and_refuses_unknown_indices():
  table = np.array([[7, 3, 999, 0, 12], [5, 4, 3, 2, 1]], np.int32)
  predict = P.make_predict_fn(1000)
  images = P.index_images(np.array([1, 0, 2]))  # index 2 is not in the table
  logits = np.asarray(jax.jit(predict)({"top_ids": table}, {"image": images}))
  _, top = jax.lax.top_k(logits[:2], 5)
  np.testing.assert_array_equal(np.asarray(top), table[[1, 0]])
  assert logits[0, 5] == 5.0 and logits[0, 1] == 1.0 and logits[0, 6] == 0.0
  assert np.isnan(logits[2]).all()
  # One id per row (the `label` row): that id first, scored 1.
  one = np.asarray(predict({"top_ids": np.array([[42]], np.int32)},
                           {"image": P.index_images(np.array([0]))}))
  assert one[0, 42] == 1.0 and one.sum() == 1.0


def test_compare_wants_exact_equality_and_the_required_metrics():
  ref = {"real@1": 0.9002284522065888, "loss": 1.5, "worst_classes": "text"}
  assert P.compare("m", ref, dict(ref), "offline", ["real@1"]) == []
  nudged = {"real@1": float(np.nextafter(ref["real@1"], 1.0))}
  (problem,) = P.compare("m", ref, nudged, "offline")
  assert "m: real@1 in-loop 0.9002284522065888 != offline" in problem
  (problem,) = P.compare("m", ref, {}, "offline", ["real@1"])
  assert problem == "m: offline has no 'real@1'"


def test_bad_arguments_are_clear_errors(capsys, tmp_path):
  with pytest.raises(SystemExit) as e:
    P.main(["--limit", "0"])
  assert e.value.code == 2 and "--limit must be in [1, 50000]" in capsys.readouterr().err
  missing = str(tmp_path / "nope.npz")
  assert P.main(["--limit", "5", "--predictions", missing]) == 2
  assert f"{missing} does not exist" in capsys.readouterr().err


def _direct_counts(n):
  """(label real@1 hits, counted, alexnet prec@1 hits) over the first n, by hand."""
  with open(P.DEFAULT_LABELS) as f:
    real = json.load(f)
  with np.load(P.DEFAULT_PREDICTIONS) as f:
    by_name = {str(name): (int(label), int(top[0]))
               for name, label, top in zip(f["file_name"], f["label"], f["alexnet"])}
  hits = counted = alexnet = 0
  for i in range(n):
    label, alexnet_top1 = by_name[f"ILSVRC2012_val_{i + 1:08d}.JPEG"]
    alexnet += alexnet_top1 == label
    if real[i]:
      counted += 1
      hits += label in real[i]
  return hits, counted, alexnet


def test_first_2000_in_loop_equals_offline(tmp_path):
  out, metrics_json = tmp_path / "table.md", tmp_path / "metrics.json"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "big_vision_like.tools.published_predictions",
       "--limit", "2000", "--batch_size", "300", "--workdir", str(tmp_path / "work"),
       "--out", str(out), "--json", str(metrics_json)],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  text = out.read_text()
  rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
  assert [r.split(" | ")[0][2:] for r in rows] == [*P.MODELS, "label"]
  assert "first 2,000 validation images" in text and "4 x cpu" in text
  result = json.loads(metrics_json.read_text())
  assert result["num_examples"] == 2000
  assert {"real@1", "real@5", "prec@1", "single/prec@1"} <= set(result["compared"])
  hits, counted, alexnet = _direct_counts(2000)
  label = result["metrics"]["label"]
  assert label["num_counted"] == counted
  assert label["real@1"] == hits / counted  # exactly
  assert label["prec@1"] == 1.0 and "real@5" not in label
  assert result["metrics"]["alexnet"]["prec@1"] == alexnet / 2000
  label_row = rows[-1].split(" | ")
  assert label_row[3] == f"{100 * hits / counted:.3f}"
  # The dumps are on disk, one per evaluator and model.
  dumps = sorted(os.listdir(tmp_path / "work" / "predictions"))
  assert len(dumps) == 14 and "real_resnet50" in dumps and "val_label" in dumps
