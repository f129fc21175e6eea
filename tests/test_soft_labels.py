"""Soft and localized labels: crop boxes, LabelPooling, soft-label files, training.

Label maps are written by hand here (the tool that makes them from a model
has its own test, test_make_label_maps.py); data is the tiny synthetic
Fashion-MNIST whose pixels equal the image id (label = id % 10).
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from big_vision_like import soft_labels
from big_vision_like.data import fashion_mnist
from big_vision_like.data import input_pipeline
from big_vision_like.pp import builder as pp_builder
from tests.helpers import tiny_config, write_fashion_mnist_source

# A 2x2 map over 3 classes, two entries per cell:
#   top-left {0: 1.0}       top-right {1: 0.6, 2: 0.4}
#   bottom-left {2: 1.0}    bottom-right {0: 0.5, 1: 0.5}
MAP_IDS = np.array([[[0, 1], [1, 2]], [[2, 0], [0, 1]]], np.int32)
MAP_SCORES = np.array([[[1.0, 0.0], [0.6, 0.4]], [[1.0, 0.0], [0.5, 0.5]]], np.float32)


def _write_map(path, names=("img_a",)):
  n = len(names)
  soft_labels.save(str(path), soft_labels.LabelMaps(
      np.array(names), np.repeat(MAP_IDS[None], n, 0), np.repeat(MAP_SCORES[None], n, 0),
      3, "test"))
  return str(path)


def _run(pp, example):
  return {k: np.asarray(v) for k, v in pp_builder.get_preprocess_fn(pp)(
      {k: tf.convert_to_tensor(v) for k, v in example.items()}).items()}


# ----------------------------------------------------------------- crop boxes


def _ramp(h, w):
  """An image whose pixel (y, x) holds y * w + x, so a crop shows where it came from."""
  return (np.arange(h * w, dtype=np.int32).reshape(h, w, 1))


def _window_of(crop, image):
  """[ymin, xmin, ymax, xmax] fractions of where `crop` lies in the ramp `image`."""
  h, w = image.shape[:2]
  top, left = divmod(int(crop[0, 0, 0]), w)
  return np.array([top / h, left / w, (top + crop.shape[0]) / h, (left + crop.shape[1]) / w])


@pytest.mark.parametrize("op", ["inception_crop(area_min=20, box_key='b')",
                                "random_crop((5, 9), box_key='b')",
                                "central_crop((6, 4), box_key='b')"])
def test_crop_ops_record_the_window_they_cut(op):
  image = _ramp(16, 12)
  for seed in range(6):
    out = _run(op, {"image": image, "_seed": np.array([seed, 7], np.int64)})
    np.testing.assert_allclose(out["b"], _window_of(out["image"], image), atol=1e-6)


def test_random_crop_cuts_what_tf_stateless_random_crop_cuts():
  """Our offset is TF's, made visible: the crops of seeded random_crop are exact."""
  image = _ramp(16, 12)
  for seed in range(6):
    ex = {"image": image, "_seed": np.array([seed, 3], np.int64)}
    # The builder folds the op's position (0) into the example seed.
    op_seed = tf.random.experimental.stateless_fold_in(tf.constant([seed, 3], tf.int64), 0)
    expected = tf.image.stateless_random_crop(image, [5, 9, 1], seed=op_seed).numpy()
    for op in ("random_crop((5, 9))", "random_crop((5, 9), box_key='b')"):
      np.testing.assert_array_equal(_run(op, ex)["image"], expected)


def test_padded_random_crop_box_is_clipped_to_the_image():
  image = _ramp(8, 8) + 1  # 0 marks the padding
  for seed in range(8):
    out = _run("random_crop(8, pad=4, box_key='b')",
               {"image": image, "_seed": np.array([seed, 1], np.int64)})
    inside = out["image"][..., 0] > 0
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    top, left = divmod(int(out["image"][rows[0], cols[0], 0]) - 1, 8)
    expected = [top / 8, left / 8, (top + len(rows)) / 8, (left + len(cols)) / 8]
    np.testing.assert_allclose(out["b"], expected, atol=1e-6)


def test_fused_jpeg_crop_records_its_window():
  image = np.random.default_rng(0).integers(0, 255, (20, 30, 3), np.uint8)
  encoded = tf.io.encode_jpeg(image).numpy()
  ex = {"image": encoded, "_seed": np.array([5, 5], np.int64)}
  fused = _run("decode_jpeg_and_inception_crop(area_min=20, box_key='b')", ex)
  ymin, xmin, ymax, xmax = fused["b"]
  decoded = tf.io.decode_jpeg(encoded).numpy()
  expected = decoded[round(ymin * 20):round(ymax * 20), round(xmin * 30):round(xmax * 30)]
  np.testing.assert_array_equal(fused["image"], expected)


# -------------------------------------------------------------- label pooling


def test_pooled_target_of_a_known_box_is_the_hand_computed_one(tmp_path):
  path = _write_map(tmp_path / "maps.npz")
  # Top half, x from 0.25 to 1: top-left cell area 0.5 * 0.25, top-right 0.5 * 0.5.
  # Mass: class 0: 0.125 * 1; class 1: 0.25 * 0.6; class 2: 0.25 * 0.4 (total 0.375).
  out = _run(f"label_pooling('{path}', 3)",
             {"file_name": "img_a", "crop_box": np.array([0, 0.25, 0.5, 1.0], np.float32)})
  np.testing.assert_allclose(out["labels"], [1 / 3, 2 / 5, 4 / 15], rtol=1e-6)
  assert "crop_box" not in out  # consumed


def test_pooled_target_of_a_real_crop_on_a_known_map(tmp_path):
  """central_crop (4, 6) of 8x8 takes rows 2..6, cols 1..7: a quarter-row and
  3/8 column of every cell, so the four cells weigh equally."""
  path = _write_map(tmp_path / "maps.npz")
  out = _run(f"central_crop((4, 6), box_key='box')|label_pooling('{path}', box_key='box')",
             {"file_name": "img_a", "image": _ramp(8, 8)})
  np.testing.assert_allclose(out["labels"], [(1 + 0.5) / 4, (0.6 + 0.5) / 4, (0.4 + 1) / 4],
                             rtol=1e-6)
  # Random crops agree with the numpy statement of the rule.
  for seed in range(5):
    out = _run(f"inception_crop(area_min=10, box_key='crop_box')"
               f"|label_pooling('{path}', keep_box=True)",
               {"file_name": "img_a", "image": _ramp(8, 8),
                "_seed": np.array([seed, 0], np.int64)})
    np.testing.assert_allclose(
        out["labels"], soft_labels.pool(MAP_IDS, MAP_SCORES, out["crop_box"], 3), rtol=1e-5)


def test_soft_labels_pool_the_whole_image(tmp_path):
  path = _write_map(tmp_path / "maps.npz")
  out = _run(f"soft_labels('{path}')", {"file_name": "img_a"})
  np.testing.assert_allclose(out["labels"], [0.375, 0.275, 0.35], rtol=1e-6)


def test_soft_labels_from_a_prediction_dump_and_from_label_sets(tmp_path):
  logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]], np.float32)
  np.savez(tmp_path / "dump.npz", file_name=np.array(["a", "b"]), logits=logits,
           topk_ids=np.zeros((2, 1), np.int32), topk_scores=np.zeros((2, 1), np.float32))
  out = _run(f"soft_labels('{tmp_path / 'dump.npz'}', 3, temperature=2.0)", {"file_name": "a"})
  z = np.exp(logits[0] / 2.0)
  np.testing.assert_allclose(out["labels"], z / z.sum(), rtol=1e-6)

  (tmp_path / "sets.json").write_text(json.dumps({"a": [1, 4], "b": 2}))
  out = _run(f"soft_labels('{tmp_path / 'sets.json'}', 5)", {"file_name": "a"})
  np.testing.assert_allclose(out["labels"], [0, 0.5, 0, 0, 0.5])


def test_errors_name_the_culprit(tmp_path):
  path = _write_map(tmp_path / "maps.npz")
  with pytest.raises(tf.errors.InvalidArgumentError, match="img_zzz.*not in .*maps.npz"):
    _run(f"soft_labels('{path}')", {"file_name": "img_zzz"})
  with pytest.raises(ValueError, match="no crop box 'crop_box'.*box_key"):
    _run(f"label_pooling('{path}')", {"file_name": "img_a"})
  with pytest.raises(ValueError, match="num_classes=10"):
    _run(f"soft_labels('{path}', 10)", {"file_name": "img_a"})
  with pytest.raises(FileNotFoundError, match="nothere.npz"):
    _run(f"soft_labels('{tmp_path / 'nothere.npz'}')", {"file_name": "img_a"})
  with pytest.raises(tf.errors.InvalidArgumentError, match="covers no label mass"):
    _run(f"label_pooling('{path}')", {"file_name": "img_a",
                                      "crop_box": np.array([0, 0, 0, 0], np.float32)})
  with pytest.raises(ValueError, match="summing to 1.5"):
    soft_labels.LabelMaps(np.array(["x"]), np.zeros((1, 1, 1, 2), np.int32) + [0, 1],
                          np.full((1, 1, 1, 2), 0.75, np.float32), 2, "t")
  maps = soft_labels.load(path)
  maps.meta = {"step": 7, "teacher": "wd", "broken": None}
  with pytest.raises(ValueError, match="meta 'broken' = None is not a number or a string"):
    soft_labels.save(str(tmp_path / "meta.npz"), maps)
  del maps.meta["broken"]
  soft_labels.save(str(tmp_path / "meta.npz"), maps)
  assert soft_labels.load(str(tmp_path / "meta.npz")).meta == {"step": 7, "teacher": "wd"}
  with pytest.raises(ValueError, match=r"'x' has class ids outside \[0, 2\)"):
    soft_labels.LabelMaps(np.array(["x"]), np.full((1, 1, 1, 1), 2, np.int32),
                          np.ones((1, 1, 1, 1), np.float32), 2, "t")


# ------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  source = write_fashion_mnist_source(tmp_path_factory.mktemp("soft_source"))
  return fashion_mnist.prepare(str(tmp_path_factory.mktemp("soft_tfds")), source_dir=source)


def _ids_in_split_order(data_dir):
  """The image id (its pixel value) of each record, in TFDS order."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = tfds.load("fashion_mnist", split="train", data_dir=data_dir, shuffle_files=False)
  return np.array([int(r["image"][0, 0, 0]) for r in tfds.as_numpy(ds)])


def _teacher_map(path, data_dir, noise_class=3):
  """Per record `train_{position}`: a 2x2 map whose top row says its label
  (id % 10), bottom row `noise_class`, so a crop's target tells which part it
  covered."""
  ids_of = _ids_in_split_order(data_dir)
  names = [f"train_{i:05d}" for i in range(len(ids_of))]
  ids = np.zeros((len(names), 2, 2, 1), np.int32)
  ids[:, 0] = (ids_of % 10)[:, None, None]
  ids[:, 1] = noise_class
  soft_labels.save(str(path), soft_labels.LabelMaps(
      np.array(names), ids, np.ones(ids.shape, np.float32), 10, "teacher"))
  return str(path), ids_of


def test_training_pipeline_names_records_and_pools_their_maps(tiny_dir, tmp_path):
  path, ids_of = _teacher_map(tmp_path / "maps.npz", tiny_dir)
  name_of = {int(i): f"train_{p:05d}" for p, i in enumerate(ids_of)}
  pp = (f"decode(1)|inception_crop(28, area_min=20, box_key='crop_box')|flip_lr"
        f"|label_pooling('{path}', 10, keep_box=True)|value_range(0, 255)")
  it = input_pipeline.make_train_iterator(
      {"name": "fashion_mnist", "split": "train", "data_dir": tiny_dir}, pp, 16, seed=0,
      cache=True, process_index=0, process_count=1, num_steps=3)
  seen = 0
  for batch in it:
    ids = batch["image"][:, 0, 0, 0].round().astype(int)  # pixels hold the id
    assert [n.decode() for n in batch["file_name"]] == [name_of[i] for i in ids]
    for i, labels, box in zip(ids, batch["labels"], batch["crop_box"]):
      top = np.clip(min(box[2], 0.5) - box[0], 0, None)
      bottom = np.clip(box[2] - max(box[0], 0.5), 0, None)
      expected = np.zeros(10)
      expected[i % 10] += top / (top + bottom)
      expected[3] += bottom / (top + bottom)
      np.testing.assert_allclose(labels, expected, atol=1e-5)
      seen += 1
  assert seen == 48


def test_training_with_label_pooling_and_cutmix(tiny_dir, tmp_path):
  from big_vision_like import train as train_lib  # pylint: disable=g-import-not-at-top
  path, _ = _teacher_map(tmp_path / "maps.npz", tiny_dir)
  config = tiny_config(tiny_dir)
  with config.unlocked():
    config.input.pp = (f"decode(1)|inception_crop(28, area_min=30, box_key='crop_box')"
                       f"|flip_lr|value_range(-1, 1)|label_pooling('{path}', 10)")
    config.input.batch_size = 16
    config.mixup = dict(mixup_alpha=0.2, cutmix_alpha=1.0)
    config.total_steps = 4
    config.evals.test.data.split = "test[:16]"
    config.evals.test.batch_size = 16
  workdir = str(tmp_path / "wd")
  train_lib.train(config, workdir)
  rows = [json.loads(l) for l in open(f"{workdir}/metrics.jsonl")]
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert losses and all(np.isfinite(losses))
  assert any("test/prec@1" in r for r in rows)


def test_relabel_config_builds_each_target(tiny_dir, tmp_path):
  from big_vision_like import config as config_lib  # pylint: disable=g-import-not-at-top
  path, _ = _teacher_map(tmp_path / "maps.npz", tiny_dir)
  for targets, op in (("hard", "onehot("), ("global", "soft_labels("),
                      ("maps", "label_pooling(")):
    config = config_lib.load_config(
        f"configs/fashion_relabel.py:targets={targets},label_maps={path},mix=cutmix,runlocal")
    assert op in config.input.pp and config.mixup.cutmix_alpha == 1.0
    assert ("box_key='crop_box'" in config.input.pp) == (targets == "maps")
    pp_builder.get_preprocess_fn(config.input.pp)  # parses, and loads the file
  with pytest.raises(config_lib.ConfigError, match="targets='soft'"):
    config_lib.load_config("configs/fashion_relabel.py:targets=soft")


def test_bad_label_map_arrays_are_refused_naming_the_problem(tmp_path):
  ids, ones = np.zeros((2, 1, 1, 1), np.int32), np.ones((2, 1, 1, 1), np.float32)
  names = np.array(["a", "b"])
  with pytest.raises(ValueError, match=r"shape \[N, gh, gw, k\]"):
    soft_labels.LabelMaps(names, ids[:1], ones, 2, "t")
  with pytest.raises(ValueError, match="ids must be integers"):
    soft_labels.LabelMaps(names, ids.astype(np.float32), ones, 2, "t")
  with pytest.raises(ValueError, match="'a' has negative or non-finite"):
    soft_labels.LabelMaps(names, ids, -ones, 2, "t")
  with pytest.raises(ValueError, match="1 images have no label mass.*'b'"):
    soft_labels.LabelMaps(names, ids, np.array([1.0, 0.0], np.float32).reshape(2, 1, 1, 1),
                          2, "t")
  with pytest.raises(ValueError, match="occur more than once"):
    soft_labels.LabelMaps(np.array(["a", "a"]), ids, ones, 2, "t")
  (tmp_path / "sets.json").write_text(json.dumps({"a": [], "b": 1}))
  with pytest.raises(ValueError, match="empty label set.*'a'"):
    soft_labels.load(str(tmp_path / "sets.json"))
  np.savez(tmp_path / "other.npz", file_name=names, probs=ones[:, 0, 0])
  with pytest.raises(ValueError, match="neither a label-map file"):
    soft_labels.load(str(tmp_path / "other.npz"))
  with pytest.raises(ValueError, match="temperature must be > 0"):
    soft_labels.load(str(tmp_path / "other.npz"), temperature=0)
