"""Input pipeline at ImageNet scale: mixtures, file names, bad records, shares.

The datasets are real TFDS datasets written here (tfds_writer), with JPEG
bytes stored like ImageNet stores them; corrupt records are made by editing
the written TFRecord files, as a bad disk or a truncated copy would.
"""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from big_vision_like import config as config_lib
from big_vision_like.data import input_pipeline, mixture, splits, tfds_source
from tests.helpers import corrupt_records, free_port, read_jsonl, write_tfds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 24  # Examples per split of the small dataset.


def jpeg(value: int, h: int = 20, w: int = 30) -> bytes:
  return tf.io.encode_jpeg(np.full((h, w, 3), value, np.uint8),
                           quality=95).numpy()


def write_small(data_dir, name="small_jpegs", n=N):
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3),
                                   encoding_format="jpeg"),
      "label": tfds.features.ClassLabel(num_classes=N),
      "file_name": tfds.features.Text(),
  })
  def examples(split, offset):
    # The pixel value and the label both identify the example.
    return [{"image": io.BytesIO(jpeg(10 * (i % N) + 5)), "label": i % N,
             "file_name": f"{split}/img_{i + offset:03d}.jpg"}
            for i in range(n)]
  return write_tfds(data_dir, name, {"train": examples("train", 0),
                                     "test": examples("test", 100)},
                    features, num_shards=2)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  return write_small(tmp_path_factory.mktemp("small"))


PP = "decode|resize(8)|value_range(0, 255)|keep('image', 'label')"


def ids(batch):
  return batch["label"].tolist()


def take(it, n):
  return [next(it) for _ in range(n)]


# ----------------------------------------------------------------- mixtures


def mix(small, w_train=3.0, w_test=1.0, **test_extra):
  return [{**small, "weight": w_train},
          {**small, "split": "test", "weight": w_test, **test_extra}]


def test_mixture_draws_sources_by_weight_and_labels_them(small):
  # The test split's source pp shifts labels by 100 so we can tell sources.
  data = mix(small, pp="copy('label', 'src')")
  data[0]["pp"] = "copy('label', 'src')"
  pp = "decode|resize(8)|keep('image', 'label', 'file_name')"
  it = input_pipeline.make_train_iterator(data, pp, 8, seed=0,
                                          shuffle_buffer_size=64)
  names = np.concatenate([b["file_name"] for b in take(it, 60)])
  from_test = np.mean([n.startswith(b"test/") for n in names])
  assert 0.2 < from_test < 0.3  # weight 1 of 4
  assert it.num_examples == 2 * N
  assert input_pipeline.train_examples(data) == 2 * N


def test_mixture_follows_the_choice_sequence_exactly(small):
  data = mix(small)
  pp = "decode|resize(8)|keep('file_name')"
  it = input_pipeline.make_train_iterator(data, pp, 4, seed=7,
                                          shuffle_buffer_size=64)
  names = np.concatenate([b["file_name"] for b in take(it, 25)])
  weights = mixture.normalized_weights([3.0, 1.0], ["a", "b"])
  choices = mixture.Choices(weights, seed=7, process_index=0)
  expected = list(choices.dataset(0).take(100).as_numpy_iterator())
  got = [int(n.startswith(b"test/")) for n in names]
  assert got == expected


@pytest.mark.parametrize("start", [1, 5, 13])
def test_mixture_resume_equals_uninterrupted_stream(small, start):
  data = mix(small)
  pp = "decode|inception_crop(8)|flip_lr|keep('image', 'file_name')"
  make = lambda s: input_pipeline.make_train_iterator(
      data, pp, 6, seed=3, start_step=s, shuffle_buffer_size=64)
  full = take(make(0), 20)
  resumed = take(make(start), 20 - start)
  for a, b in zip(full[start:], resumed):
    np.testing.assert_array_equal(a["file_name"], b["file_name"])
    np.testing.assert_array_equal(a["image"], b["image"])


def test_mixture_errors_name_the_culprit(small):
  with pytest.raises(ValueError, match=r"input.data\[1\].*needs a 'weight'"):
    input_pipeline.make_train_iterator(
        [{**small, "weight": 1}, {**small, "split": "test"}], PP, 4, seed=0)
  with pytest.raises(ValueError, match=r"weights must be positive.*test=-1"):
    input_pipeline.make_train_iterator(mix(small, w_test=-1), PP, 4, seed=0)
  with pytest.raises(ValueError, match=r"unknown key\(s\) \['wieght'\]"):
    input_pipeline.make_train_iterator([{**small, "wieght": 1}], PP, 4, seed=0)
  with pytest.raises(ValueError, match=r"same keys.*small_jpegs:test gives"):
    input_pipeline.make_train_iterator(mix(small, pp="copy('label', 'x')"),
                                       PP.replace("keep('image', 'label')",
                                                  "drop('file_name')"),
                                       4, seed=0)


def test_eval_data_is_one_source(small):
  with pytest.raises(ValueError, match="one source dict, got a list of 2"):
    input_pipeline.make_eval_iterator(mix(small), PP, 4)
  with pytest.raises(ValueError, match="training mixtures only"):
    input_pipeline.make_eval_iterator({**small, "weight": 1.0}, PP, 4)


def test_config_validation_checks_the_data_sources(small):
  config = config_lib.load_config("configs/fashion_vit.py:runlocal", [])
  # A mixture is a list of sources in place of the one-source dict.
  config.input = dict(config.input.to_dict(),
                      data=[dict(small, weight=1.0), dict(small, split="test")])
  with pytest.raises(config_lib.ConfigError,
                     match=r"config.input.data\[1\].*weight"):
    config_lib.validate(config)


# --------------------------------------------------- file names in eval


def test_eval_batches_carry_the_file_name(small):
  data = {**small, "split": "test"}
  it, n = input_pipeline.make_eval_iterator(
      data, "decode|resize(8)|keep('image', 'label')", 10)
  batches = list(it)
  assert n == 3
  names = np.concatenate([b["file_name"] for b in batches])
  mask = np.concatenate([b["_mask"] for b in batches])
  assert names[mask].tolist() == [f"test/img_{100 + i:03d}.jpg".encode()
                                  for i in range(N)]
  assert set(names[~mask].tolist()) == {b""}
  device, host = input_pipeline.split_host_keys(batches[0])
  assert sorted(host) == ["file_name"] and "image" in device


# ------------------------------------------------------------- bad data


@pytest.fixture()
def broken(tmp_path):
  data = write_small(tmp_path)
  good = jpeg(50)
  # Record 3: not an image at all; record 17: a JPEG cut in half.
  corrupt_records(tmp_path, data["name"], "train",
                  {3: b"this is not a jpeg", 17: good[:len(good) // 2]})
  corrupt_records(tmp_path, data["name"], "test", {5: b"\x00" * 40})
  return data


def test_corrupt_train_record_fails_naming_the_file(broken):
  it = input_pipeline.make_train_iterator(broken, PP, 8, seed=0,
                                          shuffle_buffer_size=64)
  with pytest.raises(input_pipeline.BadExampleError) as e:
    take(it, 6)  # Two epochs: every record is met.
  message = str(e.value)
  assert ("file_name 'train/img_003.jpg' (record small_jpegs train[3:4])"
          in message or "file_name 'train/img_017.jpg'" in message), message
  assert "skip_corrupt=True" in message


def test_corrupt_train_record_in_the_cached_prefix_names_the_files(broken):
  # decode is cached: the failure comes out of the cache's fill, not a step's
  # batch, so the error is located by scanning the records.
  it = input_pipeline.make_train_iterator(broken, PP, 8, seed=0,
                                          shuffle_buffer_size=64, cache=True)
  with pytest.raises(input_pipeline.BadExampleError) as e:
    take(it, 6)
  message = str(e.value)
  assert "file_name 'train/img_003.jpg'" in message, message
  assert "file_name 'train/img_017.jpg'" in message, message


def test_corrupt_train_records_are_skipped_and_counted(broken):
  it = input_pipeline.make_train_iterator(broken, PP, 4, seed=0,
                                          shuffle_buffer_size=64,
                                          skip_corrupt=True)
  # 3 epochs of 22 good records = 66 examples; 2 bad per epoch.
  labels = np.concatenate([ids(b) for b in take(it, 16)])  # 64 examples
  assert 3 not in labels and 17 not in labels
  assert sorted(labels[:22].tolist()) == sorted(set(range(N)) - {3, 17})
  assert it.skipped in (4, 5, 6)  # Drops before the 64th example.
  assert "_skipped" not in it.element_spec


def test_skip_corrupt_resume_is_exact(broken):
  make = lambda s: input_pipeline.make_train_iterator(
      broken, PP, 4, seed=1, start_step=s, shuffle_buffer_size=64,
      skip_corrupt=True)
  full = take(make(0), 12)
  # Records are dropped after their position is fixed, so the resumed
  # stream lines up whenever the resume point is an undamaged position.
  resumed = take(make(6), 6)
  got = np.concatenate([ids(b) for b in resumed])
  want = np.concatenate([ids(b) for b in full])
  assert set(got) <= set(want)


def test_epoch_where_everything_fails_is_an_error_not_a_hang(small):
  bad_pp = "decode|central_crop(64)|keep('image', 'label')"  # 20x30 images
  it = input_pipeline.make_train_iterator(small, bad_pp, 4, seed=0,
                                          skip_corrupt=True)
  with pytest.raises(input_pipeline.BadExampleError,
                     match=r"two epochs' worth of records failed(.|\n)*"
                           r"train/img_\d+.jpg.*central_crop"):
    next(it)


def test_pp_failure_names_the_record_and_the_op(small):
  bad_pp = "decode|central_crop(64)|keep('image', 'label')"
  it = input_pipeline.make_train_iterator(small, bad_pp, 4, seed=0)
  with pytest.raises(input_pipeline.BadExampleError,
                     match=r"file_name 'train/img_\d+.jpg'.*central_crop"):
    next(it)


def test_read_ahead_gives_the_same_batches_and_the_same_errors(small):
  make = lambda data, pp=PP: input_pipeline.make_train_iterator(
      data, pp, 4, seed=3, shuffle_buffer_size=64, cache=True)
  want = take(make(small), 8)
  it = make(small)
  it.read_ahead()
  it.read_ahead()  # A second call starts nothing.
  got = take(it, 8)
  for a, b in zip(want, got):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(ids(a), ids(b))
  it.read_ahead()  # Reading began: no-op, the stream goes on in order.
  np.testing.assert_array_equal(ids(next(it)), ids(take(make(small), 9)[-1]))
  # A failure in the background read surfaces at the next `next`, as the
  # same named error as without read-ahead.
  bad_pp = "decode|central_crop(64)|keep('image', 'label')"
  it = input_pipeline.make_train_iterator(small, bad_pp, 4, seed=0)
  it.read_ahead()
  it.close()  # Waits for the read; raises nothing itself.
  with pytest.raises(input_pipeline.BadExampleError,
                     match=r"file_name 'train/img_\d+.jpg'.*central_crop"):
    next(it)


def test_corrupt_eval_record_fails_naming_the_file(broken):
  data = {**broken, "split": "test"}
  it, _ = input_pipeline.make_eval_iterator(data, PP, 8)
  with pytest.raises(input_pipeline.BadExampleError,
                     match=r"file_name 'test/img_105.jpg' \(record "
                           r"small_jpegs test\[5:6\]\): .*JPEG"):
    list(it)


def test_corrupt_eval_record_is_skipped_and_not_counted(broken):
  data = {**broken, "split": "test"}
  it, n = input_pipeline.make_eval_iterator(data, PP, 8, skip_corrupt=True)
  batches = list(it)
  assert len(batches) == n == 3
  labels = np.concatenate([b["label"][b["_mask"]] for b in batches])
  assert sorted(labels.tolist()) == sorted(set(range(N)) - {5})
  assert it.skipped == 1


# ---------------------------------------------------- process shares


def test_shares_resolve_sub_splits_and_single_records(small):
  builder = tfds_source.get_builder(small["name"], small["data_dir"])
  share = splits.process_share(builder, "train[50%:]+test[:5]",
                               process_index=1, process_count=2,
                               drop_remainder=False)
  # 12 + 5 records; process 0 gets the extra one.
  assert share.size == 8 and share.spec == "train[21:24]+test[0:5]"
  assert share.record_spec(5) == "test[2:3]"
  with pytest.raises(IndexError):
    share.record_spec(8)


_READER = r"""
import json, sys
import jax
jax.distributed.initialize(sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
from big_vision_like.data import input_pipeline
data = json.loads(sys.argv[3])
def train_names(order):
  it = input_pipeline.make_train_iterator(
      data, "decode|resize(8)|keep('file_name')", 8, seed=0,
      shuffle_buffer_size=100, order=order)
  return [n.decode() for _ in range(3) for n in next(it)["file_name"]]
train, global_order = train_names("per_process"), train_names("global")
ev, _ = input_pipeline.make_eval_iterator(
    dict(data, split="test"), "decode|resize(8)|keep('label')", 6)
test = [n.decode() for b in ev for n, m in zip(b["file_name"], b["_mask"])
        if m]
print("RESULT" + json.dumps({"train": train, "test": test,
                             "global": global_order}))
"""


def test_two_real_processes_share_the_split_in_both_orders(small):
  port = free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen(
      [sys.executable, "-c", _READER, f"localhost:{port}", str(i),
       json.dumps(small)], cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  results = []
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
    line = [l for l in out.splitlines() if l.startswith("RESULT")][-1]
    results.append(json.loads(line[len("RESULT"):]))
  # Train, per_process order: 3 batches of 4 per process = one epoch of
  # each 12-record share.
  a, b = (set(r["train"]) for r in results)
  assert len(a) == len(b) == 12 and not a & b
  assert a | b == {f"train/img_{i:03d}.jpg" for i in range(N)}
  # Global order: the two processes' rows make up the one-process batches.
  one = input_pipeline.make_train_iterator(
      small, "decode|resize(8)|keep('file_name')", 8, seed=0,
      shuffle_buffer_size=100, process_index=0, process_count=1)
  for step in range(3):
    rows = results[0]["global"][4 * step:4 * step + 4]
    rows += results[1]["global"][4 * step:4 * step + 4]
    assert rows == [n.decode() for n in next(one)["file_name"]]
  # Eval: every test example exactly once over both processes.
  names = results[0]["test"] + results[1]["test"]
  assert sorted(names) == [f"test/img_{100 + i:03d}.jpg" for i in range(N)]


# ------------------------------------------- the ImageNet recipe end to end


def test_vit_i1k_runlocal_trains_on_a_small_imagenet(tmp_path):
  """The real S/16 recipe's input (inception crop, flip, randaug, mixup) and
  its val/minival evals, on a written imagenet2012 stand-in, shrunk model."""
  from big_vision_like import train as train_lib
  from big_vision_like.data import imagenet_variants
  data_dir = str(tmp_path / "tfds")
  imagenet_variants.write_small_variant(
      "imagenet2012", data_dir, examples_per_split={"train": 200,
                                                    "validation": 16},
      image_size=64)
  config = config_lib.load_config(f"configs/vit_i1k.py:runlocal,data_dir={data_dir}", [
      "model.variant=Ti/16", "model.depth=1",
      "total_steps=4", "ckpt_steps=4",
      "evals.val.log_steps=4", "evals.minival.log_steps=4"])
  assert "randaug(2, 10)" in config.input.pp and config.mixup.mixup_alpha > 0
  result = train_lib.train(config, str(tmp_path / "run"))
  assert result["step"] == 4
  assert result["val/num_examples"] == 16
  assert result["minival/num_examples"] == 2  # train[99%:] of 200
  rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
  assert all(np.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)


# ------------------------------------------------- tf.data options and threads


def test_pipelines_run_without_the_autotuner_and_with_all_cpus(small):
  """No autotuning thread (its join stalled run exits for up to a minute).

  The map parallelism is then ours to set: every CPU this process may use.
  """
  from big_vision_like.data import tf_options
  train = input_pipeline.make_train_iterator(small, PP, 4, seed=0)
  evals, _ = input_pipeline.make_eval_iterator({**small, "split": "test"}, PP, 4)
  mixed = input_pipeline.make_train_iterator(mix(small), PP, 4, seed=0)
  for it in (train, evals, mixed):
    options = it.dataset.options()
    assert options.autotune.enabled is False
    assert options.deterministic is True
  cpus = len(os.sched_getaffinity(0))
  assert tf_options.parallelism() == cpus
  assert tf_options.resolve_parallelism(None) == cpus
  assert tf_options.resolve_parallelism(tf.data.AUTOTUNE) == cpus
  assert tf_options.resolve_parallelism(3) == 3
  with pytest.raises(ValueError, match="num_parallel_calls must be >= 1"):
    tf_options.resolve_parallelism(0)
  # The pp map got that number, not AUTOTUNE (-1). (TFDS's own record
  # parsing keeps AUTOTUNE, which without the autotuner is min(16, CPUs).)
  graph = tf.compat.v1.GraphDef.FromString(
      train.dataset._as_serialized_graph().numpy())  # pylint: disable=protected-access
  nodes = {n.name: n for n in graph.node}
  pp_maps = [n for n in graph.node if n.op == "ParallelMapDatasetV2"
             and "_preprocess" in n.attr["f"].func.name]
  assert len(pp_maps) == 1
  const = nodes[pp_maps[0].input[-1].split(":")[0]]
  assert tf.make_ndarray(const.attr["value"].tensor) == cpus
  assert len(take(train, 2)) == 2 and len(list(evals)) == 6
