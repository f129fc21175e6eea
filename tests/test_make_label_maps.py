"""tools/make_label_maps: ReLabel label maps (dense and sliding-window) from a workdir.

One tiny ViT (conv stem to a 4x4 token grid, GAP; `configs/fashion_vit.py`
with a 1-block model) is trained for a few steps on a small Fashion-MNIST
written here (64 seeded random train images), shared by the module's tests.
Expected maps are recomputed from `model.apply` on images read with tfds,
not through the tool's pipeline.
"""

import json
import os
import shutil

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from big_vision_like import predict  # noqa: E402
from big_vision_like import soft_labels  # noqa: E402
from big_vision_like import train as train_lib  # noqa: E402
from big_vision_like.data import fashion_mnist  # noqa: E402
from big_vision_like.models import resnet, vit  # noqa: E402
from big_vision_like.tools import make_label_maps as tool  # noqa: E402
from tests.helpers import tiny_config, write_idx  # noqa: E402

N_TRAIN, N_TEST = 64, 16
SPLIT = "train[:48]"  # a slice: the names must still be the split's record names


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  """(data dir, workdir) of a tiny ViT trained for a few steps."""
  rng = np.random.default_rng(0)
  source = str(tmp_path_factory.mktemp("label_maps_source"))
  for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
    images = rng.integers(0, 256, size=(n, 28, 28, 1), dtype=np.uint8)
    write_idx(source, prefix, images, np.arange(n) % 10)
  data_dir = fashion_mnist.prepare(str(tmp_path_factory.mktemp("label_maps_tfds")),
                                   source_dir=source)
  # The scorecard's extras (per-class tables, calibration, dumps) are off: only
  # the evaluator's pp matters here.
  config = tiny_config(data_dir, **{"total_steps": 4, "ckpt_steps": 4,
                                    "log_training_steps": 2, "lr": 1e-2,
                                    "evals.test.data.split": "test[:16]",
                                    "evals.test.per_class": False,
                                    "evals.test.calibration": False,
                                    "evals.test.save_predictions": False,
                                    "evals.test.save_logits": False})
  workdir = str(tmp_path_factory.mktemp("label_maps_workdir"))
  train_lib.train(config, workdir)
  return data_dir, workdir


def _images_and_labels(data_dir, split):
  """The split's images as the eval pp makes them (value_range(-1, 1)), and labels."""
  rows = list(tfds.as_numpy(tfds.load("fashion_mnist", split=split, data_dir=data_dir,
                                      shuffle_files=False)))
  images = np.stack([r["image"] for r in rows]).astype(np.float32) / 255.0 * 2.0 - 1.0
  return images, np.array([r["label"] for r in rows])


def _model(workdir):
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  exp, params, _ = predict.load_workdir(config, workdir)
  return exp, params


def _run(capsys, *args):
  rc = tool.main([str(a) for a in args])
  out = capsys.readouterr()
  return rc, out.out, out.err


def _check_probabilities(maps):
  s = maps.scores
  assert (s >= 0).all() and (s <= 1).all()
  assert (s.sum(-1) <= 1 + 1e-5).all()
  assert (np.diff(s, axis=-1) <= 0).all(), "scores must be sorted descending per cell"
  ids = np.sort(maps.ids, axis=-1)
  assert (np.diff(ids, axis=-1) > 0).all(), "a cell lists a class twice"


def test_dense_maps_are_the_heads_per_token_predictions(teacher, tmp_path, capsys):
  data_dir, workdir = teacher
  out = tmp_path / "dense.npz"
  rc, stdout, err = _run(capsys, "--workdir", workdir, "--split", SPLIT,
                         "--out", out, "--batch_size", 16)
  assert rc == 0, err
  assert "48 examples" in stdout and "grid 4x4" in stdout and str(out) in stdout

  maps = soft_labels.load(str(out))
  assert maps.file_name.tolist() == [f"train_{i:05d}" for i in range(48)]
  assert maps.num_classes == 10 and maps.ids.shape == (48, 4, 4, 5)
  _check_probabilities(maps)

  # Independently: model.apply on the images, the head at every token.
  exp, params = _model(workdir)
  images, labels = _images_and_labels(data_dir, SPLIT)
  logits, aux = jax.jit(lambda p, x: exp.model.apply({"params": p}, x, train=False))(
      params, images)
  assert maps.grid == tuple(aux["stem"].shape[1:3]) == (4, 4)
  cells = np.asarray(tool.dense_logits(params, aux))
  assert cells.shape == (48, 4, 4, 10)
  np.testing.assert_allclose(cells.mean(axis=(1, 2)), logits, rtol=1e-5, atol=1e-5)
  assert np.ptp(cells, axis=(1, 2)).max() > 1e-3, "cells should differ (not the global map)"
  probs = np.asarray(jax.nn.softmax(cells, axis=-1))
  ref = soft_labels.from_probabilities(maps.file_name, probs, "reference", topk=5)
  np.testing.assert_array_equal(maps.ids, ref.ids)
  np.testing.assert_allclose(maps.scores, ref.scores, rtol=1e-5, atol=1e-6)

  meta = maps.meta
  assert str(meta["method"]) == "dense" and str(meta["grid"]) == "4x4"
  assert str(meta["split"]) == SPLIT and int(meta["step"]) == 4
  assert str(meta["workdir"]) == os.path.abspath(workdir)
  accuracy = float((np.asarray(logits).argmax(-1) == labels).mean())
  assert float(meta["teacher_accuracy"]) == pytest.approx(accuracy)
  assert f"teacher accuracy {accuracy:.4f}" in stdout

  # The run-time check fails when the cell mean is not the global logits.
  tool.check_dense_consistency(cells, logits)
  with pytest.raises(ValueError, match="not its global logits.*--method sliding"):
    tool.check_dense_consistency(cells, np.asarray(logits) + 0.01)


def test_sliding_maps(teacher, tmp_path, capsys):
  data_dir, workdir = teacher
  out = tmp_path / "sliding.npz"
  rc, stdout, err = _run(capsys, "--workdir", workdir, "--split", "train[:24]", "--out", out,
                         "--method", "sliding", "--grid", 3, "--topk", 4, "--batch_size", 8)
  assert rc == 0, err
  assert "24 examples" in stdout and "grid 3x3" in stdout
  maps = soft_labels.load(str(out))
  assert maps.ids.shape == (24, 3, 3, 4)
  assert maps.file_name.tolist() == [f"train_{i:05d}" for i in range(24)]
  _check_probabilities(maps)
  assert str(maps.meta["method"]) == "sliding" and float(maps.meta["window"]) == 0.5

  # One window covering the whole image: the global prediction.
  whole = tmp_path / "whole.npz"
  rc, _, err = _run(capsys, "--workdir", workdir, "--split", "train[:24]", "--out", whole,
                    "--method", "sliding", "--grid", 1, "--window", 1, "--batch_size", 8)
  assert rc == 0, err
  exp, params = _model(workdir)
  images, _ = _images_and_labels(data_dir, "train[:24]")
  logits, _ = exp.model.apply({"params": params}, images, train=False)
  ref = soft_labels.from_probabilities(maps.file_name, jax.nn.softmax(logits), "ref", topk=5)
  got = soft_labels.load(str(whole))
  np.testing.assert_array_equal(got.ids, ref.ids)
  np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-4, atol=1e-6)


def test_windows_are_centred_on_the_cells_and_cropped_exactly():
  boxes = tool.window_boxes(4, 0.5)
  np.testing.assert_allclose(boxes[0, 0], [0, 0, 0.375, 0.375])
  np.testing.assert_allclose(boxes[1, 2], [0.125, 0.375, 0.625, 0.875])
  np.testing.assert_allclose(boxes[3, 3], [0.625, 0.625, 1, 1])
  # A ramp image (value = row, or column): a linear resize of a box is a ramp
  # over the box's pixel range; sample centres map to the box's continuous span.
  h = w = 28
  rows = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None, None], (h, w, 1))
  cols = np.broadcast_to(np.arange(w, dtype=np.float32)[None, :, None], (h, w, 1))
  images = np.stack([rows, cols])
  box = np.array([[0.25, 0.5, 0.75, 1.0]], np.float32)
  out = np.asarray(tool.crop_windows(images, box, (h, w)))
  assert out.shape == (2, 1, h, w, 1)
  u = np.arange(h) + 0.5
  want_rows = 0.25 * h + u * 0.5 - 0.5   # input coordinate of output pixel centres
  want_cols = 0.5 * w + u * 0.5 - 0.5
  inner = slice(2, -2)  # away from the clamped image borders
  np.testing.assert_allclose(out[0, 0, inner, 5, 0], want_rows[inner], atol=1e-4)
  np.testing.assert_allclose(out[1, 0, 5, inner, 0], want_cols[inner], atol=1e-4)
  # The whole image at its own size is the identity.
  full = np.asarray(tool.crop_windows(images, np.array([[0, 0, 1, 1]], np.float32), (h, w)))
  np.testing.assert_allclose(full[:, 0], images, atol=1e-4)


def test_dense_refuses_models_without_a_per_position_head():
  tok = vit.ViT(num_classes=10, variant="mu/4", pool_type="tok")
  with pytest.raises(ValueError, match=r"ViT with pool_type='tok'.*--method sliding"):
    tool.check_dense(tok)
  with pytest.raises(ValueError, match=r"pool_type='map'.*--method sliding"):
    tool.check_dense(vit.ViT(num_classes=10, variant="mu/4", pool_type="map"))
  with pytest.raises(ValueError, match=r"rep_size=True.*--method sliding"):
    tool.check_dense(vit.ViT(num_classes=10, variant="mu/4", rep_size=True))
  with pytest.raises(ValueError, match=r"model ResNet.*--method sliding"):
    tool.check_dense(resnet.ResNet(num_classes=10, depth=26))
  with pytest.raises(ValueError, match=r"'image_text' model.*--method sliding"):
    tool.check_dense(vit.ViT(num_classes=10, variant="mu/4"), "image_text")
  tool.check_dense(vit.ViT(num_classes=10, variant="mu/4"))  # gap, no rep_size: fine


def test_clear_errors(teacher, tmp_path, capsys):
  data_dir, workdir = teacher
  out = str(tmp_path / "x.npz")
  base = ["--workdir", workdir, "--split", "train[:16]", "--out", out, "--batch_size", 8]

  def error(*args):
    rc, _, err = _run(capsys, *args)
    assert rc == 2 and not os.path.exists(out)
    return err

  # A workdir whose config is a class-token ViT: refused before any checkpoint.
  tok_dir = tmp_path / "tok"
  tok_dir.mkdir()
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  config["model"]["pool_type"] = "tok"
  (tok_dir / "config.json").write_text(json.dumps(config))
  assert "pool_type='tok'" in error("--workdir", tok_dir, "--out", out)
  assert "--method sliding" in error("--workdir", tok_dir, "--out", out)

  # Missing workdir / checkpoint.
  assert "does not exist" in error("--workdir", tmp_path / "nowhere", "--out", out)
  no_ckpt = tmp_path / "no_ckpt"
  no_ckpt.mkdir()
  shutil.copy(os.path.join(workdir, "config.json"), no_ckpt / "config.json")
  assert "checkpoints does not exist" in error("--workdir", no_ckpt, "--out", out)
  assert "step 7" in error(*base, "--step", 7)

  # Bad data, grid, window and top-k values.
  assert "bad split 'validation'" in error(*base, "--split", "validation")
  assert "token grid, 4x4" in error(*base, "--grid", 3)
  assert "--grid 0" in error(*base, "--method", "sliding", "--grid", 0)
  assert "--window 1.5" in error(*base, "--method", "sliding", "--window", 1.5)
  assert "--window 0.5: applies to --method sliding" in error(*base, "--window", 0.5)
  assert "only 10 classes" in error(*base, "--topk", 11)
  assert "--topk 0" in error(*base, "--topk", 0)
