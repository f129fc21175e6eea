"""Tests for the Fashion-MNIST preparation, TFDS sources and input pipelines."""

import collections
import gzip
import hashlib
import os
import struct

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from big_vision_like.data import fashion_mnist, input_pipeline, splits, tfds_source
from big_vision_like.pp.builder import PPError
from tests.helpers import (assert_batches_equal, id_images, write_fashion_mnist_source,
                           write_idx)

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
               "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture(scope="module")
def tiny_data_dir(tmp_path_factory):
  """A synthetic `fashion_mnist`: 50 train (ids 0..49), 23 test (100..122)."""
  source = write_fashion_mnist_source(tmp_path_factory.mktemp("tiny_source"))
  return fashion_mnist.prepare(str(tmp_path_factory.mktemp("tiny_tfds")),
                               source_dir=source)


def tiny(split):
  return {"name": "fashion_mnist", "split": split, "data_dir": None}


# ------------------------------------------------------------ Fashion-MNIST


def test_prepared_fashion_mnist_loads_with_plain_tfds(fashion_mnist_data_dir):
  builder = tfds.builder("fashion_mnist", data_dir=fashion_mnist_data_dir)
  assert type(builder) is tfds.image_classification.FashionMNIST
  assert builder.is_prepared()
  assert str(builder.info.version) == str(builder.VERSION) == "3.0.1"
  features = builder.info.features
  assert features["image"].shape == (28, 28, 1)
  assert features["image"].dtype == np.uint8
  assert features["label"].names == CLASS_NAMES
  assert builder.info.splits["train"].num_examples == 60_000
  assert builder.info.splits["test"].num_examples == 10_000
  # Same images and labels as the idx files (as multisets: TFDS reorders).
  test = tfds.load("fashion_mnist", split="test", batch_size=-1,
                   data_dir=fashion_mnist_data_dir)
  source = fashion_mnist.default_source_dir()
  images = fashion_mnist.read_idx_images(
      os.path.join(source, "t10k-images-idx3-ubyte.gz"))
  labels = fashion_mnist.read_idx_labels(
      os.path.join(source, "t10k-labels-idx1-ubyte.gz"))

  def digest(images, labels):
    return collections.Counter(
        (hashlib.md5(np.asarray(im).tobytes()).hexdigest(), int(l))
        for im, l in zip(images, labels))
  assert digest(test["image"].numpy(), test["label"].numpy()) == digest(
      images, labels)


def test_prepare_is_idempotent(fashion_mnist_data_dir):
  info = os.path.join(fashion_mnist_data_dir, "fashion_mnist", "3.0.1",
                      "dataset_info.json")
  before = os.stat(info).st_mtime_ns
  assert fashion_mnist.prepare(fashion_mnist_data_dir) == fashion_mnist_data_dir
  assert os.stat(info).st_mtime_ns == before


def test_prepare_from_synthetic_idx_files(tiny_data_dir):
  ds = tfds.load("fashion_mnist", data_dir=tiny_data_dir, batch_size=-1)
  train, test = ds["train"], ds["test"]
  assert sorted(train["image"].numpy()[:, 0, 0, 0]) == list(range(50))
  ids = test["image"].numpy()[:, 0, 0, 0]
  assert sorted(ids) == list(range(100, 123))
  np.testing.assert_array_equal(test["label"].numpy(), ids % 10)
  assert tfds_source.num_examples("fashion_mnist", "test", tiny_data_dir) == 23


def test_prepare_uses_env_source_dir_and_default_data_dir(tmp_path,
                                                          monkeypatch):
  source = write_fashion_mnist_source(tmp_path / "src", [1, 2], [3])
  monkeypatch.setenv("BVL_FASHION_MNIST_DIR", source)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  assert fashion_mnist.prepare() == str(tmp_path / "tfds")
  assert tfds_source.num_examples("fashion_mnist", "train",
                                  str(tmp_path / "tfds")) == 2


def test_truncated_idx_file_fails_naming_the_file(tmp_path):
  source = write_fashion_mnist_source(tmp_path / "src", [1, 2, 3], [3])
  path = os.path.join(source, "train-images-idx3-ubyte.gz")
  with gzip.open(path, "rb") as f:
    raw = f.read()
  with gzip.open(path, "wb") as f:
    f.write(raw[:-100])  # Header promises 3 images; the data is short.
  with pytest.raises(fashion_mnist.CorruptSourceFileError,
                     match=f"{path}.*truncated"):
    fashion_mnist.prepare(str(tmp_path / "tfds"), source_dir=source)
  assert not fashion_mnist.is_prepared(str(tmp_path / "tfds"))


def test_cut_gzip_and_bad_magic_fail_naming_the_file(tmp_path):
  source = write_fashion_mnist_source(tmp_path / "src", [1], [3])
  labels = os.path.join(source, "t10k-labels-idx1-ubyte.gz")
  with gzip.open(labels, "wb") as f:
    f.write(struct.pack(">II", 0x803, 1) + b"\x03")
  with pytest.raises(fashion_mnist.CorruptSourceFileError,
                     match=f"{labels}.*not an idx1"):
    fashion_mnist.prepare(str(tmp_path / "tfds"), source_dir=source)
  images = os.path.join(source, "train-images-idx3-ubyte.gz")
  with open(images, "rb") as f:
    compressed = f.read()
  with open(images, "wb") as f:
    f.write(compressed[:len(compressed) // 2])
  with pytest.raises(fashion_mnist.CorruptSourceFileError,
                     match=f"{images}.*unreadable"):
    fashion_mnist.read_idx_images(images)


def test_mismatched_image_and_label_counts_fail(tmp_path):
  source = write_fashion_mnist_source(tmp_path / "src", [1, 2], [3])
  write_idx(str(tmp_path / "other"), "t10k", id_images([3, 4]),
            np.array([3, 4]))
  os.replace(str(tmp_path / "other" / "t10k-labels-idx1-ubyte.gz"),
             os.path.join(source, "t10k-labels-idx1-ubyte.gz"))
  with pytest.raises(fashion_mnist.CorruptSourceFileError,
                     match="1 images but .*t10k-labels.* 2 labels"):
    fashion_mnist.prepare(str(tmp_path / "tfds"), source_dir=source)


def test_missing_source_files_give_the_apt_hint(tmp_path, monkeypatch):
  monkeypatch.setenv("BVL_FASHION_MNIST_DIR", str(tmp_path / "nothing"))
  with pytest.raises(fashion_mnist.SourceFilesMissingError) as e:
    fashion_mnist.prepare(str(tmp_path / "tfds"))
  assert "apt-get install dataset-fashion-mnist" in str(e.value)
  assert "BVL_FASHION_MNIST_DIR" in str(e.value)
  assert str(tmp_path / "nothing" / "train-images-idx3-ubyte.gz") in str(
      e.value)
  # get_builder goes through the same path for fashion_mnist.
  with pytest.raises(fashion_mnist.SourceFilesMissingError):
    tfds_source.get_builder("fashion_mnist", str(tmp_path / "tfds"))


# ------------------------------------------------------------- TFDS source


def test_get_builder_prepares_fashion_mnist_on_first_use(tmp_path,
                                                         monkeypatch):
  source = write_fashion_mnist_source(tmp_path / "src", [1, 2], [3])
  monkeypatch.setenv("BVL_FASHION_MNIST_DIR", source)
  builder = tfds_source.get_builder("fashion_mnist", str(tmp_path / "tfds"))
  assert builder.is_prepared()
  assert builder.info.splits["train"].num_examples == 2


def test_not_prepared_dataset_names_the_command(tmp_path):
  data_dir = str(tmp_path / "empty")
  with pytest.raises(tfds_source.DatasetNotPreparedError) as e:
    tfds_source.get_builder("mnist", data_dir)
  assert "'mnist'" in str(e.value) and data_dir in str(e.value)
  assert f"tfds build mnist --data_dir {data_dir}" in str(e.value)
  with pytest.raises(tfds_source.DatasetNotPreparedError) as e:
    tfds_source.get_builder("imagenet2012", data_dir)
  assert (f"python -m big_vision_like.data.prepare_imagenet --manual_dir "
          f"DIR_WITH_ILSVRC_TARBALLS --data_dir {data_dir} --datasets "
          f"imagenet2012" in str(e.value))
  assert "ILSVRC2012_img_train.tar" in str(e.value)
  with pytest.raises(tfds_source.DatasetNotPreparedError,
                     match="tfds build imagenet_v2/topimages --data_dir"):
    tfds_source.num_examples("imagenet_v2/topimages", "test", data_dir)


def test_unknown_dataset_suggests_a_close_name(tmp_path):
  with pytest.raises(tfds_source.UnknownDatasetError,
                     match="Did you mean 'fashion_mnist'"):
    tfds_source.get_builder("fashon_mnist", str(tmp_path))


@pytest.mark.parametrize("data,key", [
    ({"name": "fashion_mnistt", "split": "train"}, "config.input.data.name"),
    ([{"name": "fashion_mnistt", "split": "train", "weight": 1},
      {"name": "mnist", "split": "train", "weight": 1}], "config.input.data[0].name"),
])
def test_a_typo_in_a_training_dataset_name_is_one_short_error(tmp_path, data, key):
  for source in data if isinstance(data, list) else [data]:
    source["data_dir"] = str(tmp_path)
  with pytest.raises(tfds_source.UnknownDatasetError) as e:
    input_pipeline.train_examples(data)
  message = str(e.value)
  assert message.startswith(f"{key}='fashion_mnistt': "), message
  assert "Did you mean 'fashion_mnist'?" in message
  # A few lines, not the ~450 names TFDS knows (in the message or in the
  # TFDS error it used to be chained to, which a traceback prints too).
  assert len(message.splitlines()) < 15 and len(message) < 1000, message
  assert "abstract_reasoning" not in message
  assert e.value.__cause__ is None and e.value.__suppress_context__


def test_a_typo_in_an_eval_dataset_name_is_one_short_error(tmp_path):
  with pytest.raises(tfds_source.UnknownDatasetError) as e:
    input_pipeline.make_eval_iterator(
        {"name": "fashion_mnistt", "split": "test", "data_dir": str(tmp_path)}, "keep('label')",
        8)
  message = str(e.value)  # make_evaluators adds "config.evals.NAME: " in front
  assert message.startswith("data.name='fashion_mnistt': "), message
  assert "Did you mean 'fashion_mnist'?" in message
  assert len(message.splitlines()) < 15 and "abstract_reasoning" not in message
  assert e.value.__cause__ is None and e.value.__suppress_context__


def test_num_examples_of_sub_splits(fashion_mnist_data_dir):
  n = lambda split: tfds_source.num_examples("fashion_mnist", split,
                                             fashion_mnist_data_dir)
  assert n("train[:90%]") == 54_000
  assert n("test[:1001]") == 1001
  assert n("train[-10:]+test") == 10_010
  with pytest.raises(ValueError, match="no split 'validation'"):
    n("validation")


# ------------------------------------------------------------- training


AUG = ("decode(1)|random_crop(28, pad=2)|flip_lr|value_range(0, 255)|"
       "keep('image', 'label')")


def ids_of(batch):
  """Example ids of the synthetic images (the centre pixel survives aug)."""
  return [int(round(v)) for v in batch["image"][:, 14, 14, 0]]


def take(it, n):
  return [next(it) for _ in range(n)]


def test_train_batches_shapes_and_epochs(tiny_data_dir, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", tiny_data_dir)
  it = input_pipeline.make_train_iterator(
      tiny("train"), "decode(1)|value_range(0, 255)", 10, seed=0,
      shuffle_buffer_size=50)
  assert (it.num_examples, it.examples_per_process, it.local_batch_size) == (
      50, 50, 10)
  batches = take(it, 15)  # Three epochs of 5 batches.
  assert batches[0]["image"].shape == (10, 28, 28, 1)
  assert batches[0]["image"].dtype == np.float32
  epochs = [sum((ids_of(b) for b in batches[5 * e:5 * e + 5]), [])
            for e in range(3)]
  for ids in epochs:
    assert sorted(ids) == list(range(50))  # Each example once per epoch.
  assert epochs[0] != epochs[1] != epochs[2]  # Reshuffled every epoch.
  assert epochs[0] != list(range(50))  # Shuffled at all.
  assert input_pipeline.train_examples(tiny("train")) == 50


def test_train_iterator_is_a_function_of_the_seed(tiny_data_dir):
  data = {**tiny("train"), "data_dir": tiny_data_dir}
  make = lambda seed: take(input_pipeline.make_train_iterator(
      data, AUG, 8, seed=seed, shuffle_buffer_size=20), 8)
  first = make(7)
  assert_batches_equal(first, make(7))
  other = make(8)
  assert [ids_of(b) for b in first] != [ids_of(b) for b in other]


@pytest.mark.parametrize("cache", [False, True])
def test_resume_equals_uninterrupted_stream(tiny_data_dir, cache):
  data = {**tiny("train"), "data_dir": tiny_data_dir}
  make = lambda start: input_pipeline.make_train_iterator(
      data, AUG, 8, seed=3, start_step=start, shuffle_buffer_size=16,
      cache=cache)
  full = take(make(0), 20)  # 50 examples, batch 8: epochs end mid-batch.
  for start in (1, 6, 7, 13):
    assert_batches_equal(take(make(start), 20 - start), full[start:])


def test_a_run_of_n_steps_reads_exactly_its_batches(tiny_data_dir):
  # train.py asks for the steps it will take: the same batches as the endless
  # stream, then the end (nothing past it is read or shuffled, so a run ending
  # on an epoch boundary does not wait for the next epoch's shuffle buffer).
  data = {**tiny("train"), "data_dir": tiny_data_dir}
  endless = take(input_pipeline.make_train_iterator(data, AUG, 10, seed=3,
                                                    shuffle_buffer_size=16), 12)
  for start, n in ((0, 5), (3, 9), (7, 1)):  # 5 batches of 10 = exactly one epoch
    it = input_pipeline.make_train_iterator(data, AUG, 10, seed=3, start_step=start,
                                            shuffle_buffer_size=16, num_steps=n)
    assert_batches_equal(list(it), endless[start:start + n])
  mixture = [{**data, "weight": 2.0}, {**tiny("test"), "data_dir": tiny_data_dir,
                                       "weight": 1.0}]
  endless = take(input_pipeline.make_train_iterator(mixture, AUG, 4, seed=1,
                                                    shuffle_buffer_size=16), 9)
  it = input_pipeline.make_train_iterator(mixture, AUG, 4, seed=1, start_step=2,
                                          shuffle_buffer_size=16, num_steps=7)
  assert_batches_equal(list(it), endless[2:9])


def test_cache_does_not_change_the_stream(tiny_data_dir):
  data = {**tiny("train"), "data_dir": tiny_data_dir}
  make = lambda cache: take(input_pipeline.make_train_iterator(
      data, AUG, 8, seed=5, cache=cache), 9)
  assert_batches_equal(make(False), make(True))


def test_augmentation_differs_between_epochs(tiny_data_dir):
  # Same example in two epochs -> different stream positions -> other seed.
  data = {**tiny("train"), "data_dir": tiny_data_dir}
  pp = ("decode(1)|random_crop(28, pad=2)|flip_lr|copy('label', 'id')|"
        "value_range(0, 255)")
  batches = take(input_pipeline.make_train_iterator(data, pp, 10, seed=1), 10)
  views = collections.defaultdict(list)
  for b in batches:
    for i, image in zip(ids_of(b), b["image"]):
      views[i].append(image)
  differ = sum(not np.array_equal(*views[i]) for i in range(50))
  assert differ > 40


def test_process_shares_are_disjoint(tiny_data_dir):
  builder = tfds_source.get_builder("fashion_mnist", tiny_data_dir)
  for count, drop, sizes in [(3, False, [17, 17, 16]), (3, True, [16] * 3),
                             (2, True, [25, 25])]:
    seen = []
    for index in range(count):
      share = splits.process_share(builder, "train", process_index=index,
                                   process_count=count, drop_remainder=drop)
      ds = builder.as_dataset(split=share.spec, batch_size=-1)
      seen.append(set(ds["image"].numpy()[:, 0, 0, 0].tolist()))
      assert len(seen[-1]) == sizes[index]
    assert sum(len(s) for s in seen) == len(set().union(*seen))
    if not drop:
      assert set().union(*seen) == set(range(50))


def test_train_processes_read_disjoint_shares(tiny_data_dir):
  data = {**tiny("train"), "data_dir": tiny_data_dir}
  per_process = []
  for index in range(2):
    it = input_pipeline.make_train_iterator(
        data, "decode(1)|value_range(0, 255)", 10, seed=0, process_index=index,
        process_count=2)
    assert it.local_batch_size == 5 and it.examples_per_process == 25
    per_process.append(sum((ids_of(b) for b in take(it, 5)), []))
  assert sorted(per_process[0] + per_process[1]) == list(range(50))


def test_train_batch_size_must_split_over_processes(tiny_data_dir):
  data = {**tiny("train"), "data_dir": tiny_data_dir}
  with pytest.raises(ValueError,
                     match=r"input.batch_size=10 .* processes \(3\)"):
    input_pipeline.make_train_iterator(data, "decode", 10, seed=0,
                                       process_index=0, process_count=3)
  with pytest.raises(PPError, match="pp op 1 \"keep\('nope'\)\" failed"):
    input_pipeline.make_train_iterator(data, "decode|keep('nope')", 8, seed=0)
  with pytest.raises(PPError, match="pp op 1 \"keep\('nope'\)\" failed"):
    input_pipeline.make_train_iterator(data, "decode|keep('nope')", 8, seed=0,
                                       cache=True)
  with pytest.raises(ValueError, match="needs 'split'"):
    input_pipeline.make_train_iterator({"name": "fashion_mnist"}, "decode", 8,
                                       seed=0)


# ------------------------------------------------------------- evaluation


EVAL_PP = "decode(1)|value_range(0, 255)|keep('image', 'label')"


def eval_ids(iterable):
  ids, masks = [], []
  for batch in iterable:
    ids += ids_of(batch)
    masks += batch["_mask"].tolist()
  return ids, masks


@pytest.mark.parametrize("batch_size", [64, 7])
def test_eval_covers_real_test_split_once(fashion_mnist_data_dir, batch_size):
  data = {"name": "fashion_mnist", "split": "test",
          "data_dir": fashion_mnist_data_dir}
  iterable, num_batches = input_pipeline.make_eval_iterator(
      data, EVAL_PP, batch_size)
  assert num_batches == len(iterable) == -(-10_000 // batch_size)
  count = real = 0
  for batch in iterable:
    count += 1
    assert batch["image"].shape == (batch_size, 28, 28, 1)
    real += int(batch["_mask"].sum())
    padding = ~batch["_mask"]
    assert not batch["image"][padding].any()
    assert not batch["label"][padding].any()
  assert count == num_batches and real == 10_000


def test_eval_sub_split_over_processes(fashion_mnist_data_dir):
  data = {"name": "fashion_mnist", "split": "test[:1001]",
          "data_dir": fashion_mnist_data_dir}
  pp = "decode(1)|keep('image', 'label')"

  def digest(batches):
    return collections.Counter(
        (hashlib.md5(im.tobytes()).hexdigest(), int(l))
        for b in batches for im, l, m in zip(b["image"], b["label"], b["_mask"])
        if m)
  whole, n = input_pipeline.make_eval_iterator(data, pp, 64)
  assert n == 16
  together = collections.Counter()
  for index in range(3):  # Shares of 334, 334 and 333 examples.
    iterable, num_batches = input_pipeline.make_eval_iterator(
        data, pp, 6, process_index=index, process_count=3)
    assert num_batches == 167  # ceil(334 / 2), on every process.
    batches = list(iterable)
    assert len(batches) == 167
    assert sum(int(b["_mask"].sum()) for b in batches) == (
        333 if index == 2 else 334)
    together += digest(batches)
  assert together == digest(whole)
  assert sum(together.values()) == 1001


def test_eval_mask_and_order_are_fixed(tiny_data_dir):
  data = {**tiny("test"), "data_dir": tiny_data_dir}
  iterable, num_batches = input_pipeline.make_eval_iterator(data, EVAL_PP, 5)
  assert num_batches == 5  # 23 examples -> 4 full batches + 3 + 2 padding.
  ids, masks = eval_ids(iterable)
  assert masks == [True] * 23 + [False] * 2
  assert sorted(ids[:23]) == list(range(100, 123)) and ids[23:] == [0, 0]
  assert eval_ids(iterable) == (ids, masks)  # Same order every pass.
  uncached, _ = input_pipeline.make_eval_iterator(data, EVAL_PP, 5,
                                                  cache=False)
  assert eval_ids(uncached) == (ids, masks)


def test_eval_with_uneven_process_shares(tiny_data_dir):
  data = {**tiny("test"), "data_dir": tiny_data_dir}
  all_ids = []
  for index in range(2):  # 23 = 12 + 11; local batch 4 -> 3 batches each.
    iterable, num_batches = input_pipeline.make_eval_iterator(
        data, EVAL_PP, 8, process_index=index, process_count=2)
    assert num_batches == 3
    ids, masks = eval_ids(iterable)
    assert len(ids) == 12 and sum(masks) == (12 if index == 0 else 11)
    all_ids += [i for i, m in zip(ids, masks) if m]
  assert sorted(all_ids) == list(range(100, 123))


def test_eval_errors(tiny_data_dir):
  data = {**tiny("test"), "data_dir": tiny_data_dir}
  with pytest.raises(ValueError, match="Eval pp op 1 'flip_lr' is random"):
    input_pipeline.make_eval_iterator(data, "decode|flip_lr", 4)
  # Padding needs static shapes (all our deterministic ops keep them static).
  with pytest.raises(ValueError, match="'text' has shape .*fixed shape"):
    input_pipeline._zeros_like_spec(tf.TensorSpec([None], tf.int32), "text")
  with pytest.raises(ValueError, match="already has a '_mask'"):
    input_pipeline.make_eval_iterator(data, "copy('label', '_mask')", 4)
  with pytest.raises(ValueError, match="input.batch_size=5"):
    input_pipeline.make_eval_iterator(data, EVAL_PP, 5, process_index=1,
                                      process_count=2)
