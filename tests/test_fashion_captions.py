"""`fashion_mnist_captions`: splits, captions, prompt sets, determinism, auto-prepare.

Built from a tiny synthetic Fashion-MNIST (the real one takes ~20 s to
prepare): 50 train and 23 test images whose pixels all equal the image's id,
label = id % 10, so every image can be traced back to its source.
"""

import os
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds

from big_vision_like.data import fashion_captions as fc
from big_vision_like.data import fashion_mnist
from big_vision_like.data import tfds_source
from tests.helpers import TINY_TEST_IDS, TINY_TRAIN_IDS, write_fashion_mnist_source


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("fc")
  source = write_fashion_mnist_source(tmp / "source")
  return fc.prepare(str(tmp / "tfds"), source), source


def read(name, split, data_dir):
  return list(tfds.as_numpy(tfds.load(name, split=split, data_dir=data_dir)))


# Every caption string a (template, phrasing) pair can give, per class.
CAPTION_PARTS = [{fc.fill(t, p): (t, p) for t in fc.TRAIN_TEMPLATES for p in phrases}
                 for phrases in fc.CLASS_PHRASES]


def test_splits_features_and_file_names(prepared):
  data_dir, _ = prepared
  builder = tfds.builder(fc.NAME, data_dir=data_dir)
  assert {s: builder.info.splits[s].num_examples for s in ("train", "test")} == {
      "train": 50, "test": 23}
  features = builder.info.features
  assert features["image"].shape == (28, 28, 1) and features["image"].np_dtype == np.uint8
  assert features["label"].names == tfds.builder(
      "fashion_mnist", data_dir=data_dir).info.features["label"].names
  assert features["label"].names[0] == "T-shirt/top" and features["label"].num_classes == 10
  for split, n in (("train", 50), ("test", 23)):
    exs = read(fc.NAME, split, data_dir)
    assert [e["file_name"].decode() for e in exs] == [f"{split}_{i:05d}" for i in range(n)]


def test_images_and_labels_are_fashion_mnist_by_position(prepared):
  data_dir, _ = prepared
  for split, ids in (("train", TINY_TRAIN_IDS), ("test", TINY_TEST_IDS)):
    ours, theirs = read(fc.NAME, split, data_dir), read("fashion_mnist", split, data_dir)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
      np.testing.assert_array_equal(a["image"], b["image"])
      assert a["label"] == b["label"] == a["image"][0, 0, 0] % 10
    assert sorted(int(e["image"][0, 0, 0]) for e in ours) == list(ids)


def test_captions_use_training_templates_and_class_phrasings(prepared):
  data_dir, _ = prepared
  for phrases, parts in zip(fc.CLASS_PHRASES, CAPTION_PARTS):
    assert len(parts) == len(fc.TRAIN_TEMPLATES) * len(phrases)  # no two pairs collide
  for split in ("train", "test"):
    for e in read(fc.NAME, split, data_dir):
      caps = [c.decode() for c in e["captions"]]
      assert len(caps) == fc.CAPTIONS_PER_IMAGE == 3
      used = [CAPTION_PARTS[e["label"]][c] for c in caps]  # KeyError: not a train caption
      assert len({t for t, _ in used}) == 3  # three different templates
  # Articles agree with the phrasing.
  assert fc.fill("a photo of a {}.", "ankle boot") == "a photo of an ankle boot."
  assert fc.fill("a {} on a plain background.", "open shoe") == (
      "an open shoe on a plain background.")
  assert fc.fill("this is a {}.", "tee") == "this is a tee."


def test_heldout_prompts_are_disjoint_from_training_captions():
  ps = fc.prompt_set()
  assert not set(ps.train_templates) & set(ps.heldout_templates)
  assert len(ps.heldout_templates) >= 5 and len(ps.train_templates) >= 5
  assert ps.class_names == fc.CLASS_NAMES and len(ps.class_names) == 10
  assert ps.class_names[0] == "t-shirt" and ps.class_names[9] == "ankle boot"
  assert fc.templates("heldout") == list(fc.HELDOUT_TEMPLATES)
  with pytest.raises(ValueError, match="unknown template set 'val'"):
    fc.templates("val")
  # No held-out prompt, filled with any phrasing, is ever a training caption.
  train_captions = set().union(*CAPTION_PARTS)
  for t in fc.HELDOUT_TEMPLATES:
    for phrases in fc.CLASS_PHRASES:
      for p in phrases:
        assert fc.fill(t, p) not in train_captions


def test_captions_are_seeded_and_cover_all_phrasings():
  labels = np.repeat(np.arange(10), 200)
  a, b = fc.make_captions(labels, "train"), fc.make_captions(labels, "train")
  assert a == b
  assert a != fc.make_captions(labels, "test")  # each split has its own stream
  for c, parts in enumerate(CAPTION_PARTS):
    used = [parts[cap] for caps in a[200 * c:200 * (c + 1)] for cap in caps]
    assert {p for _, p in used} == set(fc.CLASS_PHRASES[c])
    assert {t for t, _ in used} == set(fc.TRAIN_TEMPLATES)
  with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
    fc.make_captions(np.array([3, 10]), "train")


def test_deterministic_across_data_dirs(prepared, tmp_path):
  data_dir, source = prepared
  again = fc.prepare(str(tmp_path / "again"), source)
  for split in ("train", "test"):
    for a, b in zip(read(fc.NAME, split, data_dir), read(fc.NAME, split, again)):
      assert a["file_name"] == b["file_name"] and list(a["captions"]) == list(b["captions"])
      np.testing.assert_array_equal(a["image"], b["image"])


def test_get_builder_prepares_on_first_use_once(tmp_path, monkeypatch):
  source = write_fashion_mnist_source(tmp_path / "source")
  monkeypatch.setenv(fashion_mnist.SOURCE_DIR_ENV, source)
  data_dir = str(tmp_path / "tfds")
  assert not fc.is_prepared(data_dir)
  builder = tfds_source.get_builder(fc.NAME, data_dir)
  assert fc.is_prepared(data_dir) and builder.info.splits["test"].num_examples == 23
  assert tfds_source.num_examples(fc.NAME, "train", data_dir) == 50
  info = os.path.join(data_dir, fc.NAME, fc.VERSION, "dataset_info.json")
  stamp = os.stat(info).st_mtime_ns
  tfds_source.get_builder(fc.NAME, data_dir)
  assert os.stat(info).st_mtime_ns == stamp  # not written again


def test_concurrent_prepare_writes_once(tmp_path):
  source, data_dir = write_fashion_mnist_source(tmp_path / "source"), str(tmp_path / "tfds")
  fashion_mnist.prepare(data_dir, source)
  errors = []

  def run():
    try:
      fc.prepare(data_dir, source)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)
  threads = [threading.Thread(target=run) for _ in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors
  assert len(read(fc.NAME, "test", data_dir)) == 23


def test_leftovers_of_a_killed_writer_are_replaced(prepared, tmp_path):
  _, source = prepared
  data_dir = str(tmp_path / "tfds")
  partial = os.path.join(data_dir, fc.NAME, fc.VERSION)
  os.makedirs(partial)
  with open(os.path.join(partial, f"{fc.NAME}-train.tfrecord-00000-of-00001"), "wb") as f:
    f.write(b"garbage")  # no dataset_info.json: not prepared
  fc.prepare(data_dir, source)
  assert len(read(fc.NAME, "train", data_dir)) == 50
