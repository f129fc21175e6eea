"""The global training order: the same global batches for any process count.

Every process's iterator is built in this one process with the
process_index/process_count overrides (what a process reads and keeps does
not need jax.distributed); the real two-process run is in
test_input_pipeline. The datasets are real TFDS datasets of small random
PNG images (lossless, so random crops and flips compare exactly), written
here; each label names its record.
"""

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from big_vision_like import registry
from big_vision_like.data import input_pipeline, mixture
from tests.helpers import assert_batches_equal, corrupt_records, write_tfds

N_TRAIN, N_TEST = 20, 12  # Not multiples of B: epochs end mid-batch.
B = 8  # Global batch size.
AUG = "decode|random_crop(8)|flip_lr|keep('image', 'label')"


def write_textured(data_dir, name="textured"):
  """Train ids 0..19 and test ids 100..111; noise images, so crops differ."""
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3),
                                   encoding_format="png"),
      "label": tfds.features.ClassLabel(num_classes=120),
  })
  rng = np.random.default_rng(0)
  def examples(ids):
    return [{"image": rng.integers(0, 256, (12, 12, 3), dtype=np.uint8),
             "label": int(i)} for i in ids]
  return write_tfds(data_dir, name, {"train": examples(range(N_TRAIN)),
                                     "test": examples(range(100, 100 + N_TEST))},
                    features, num_shards=2)


@pytest.fixture(scope="module")
def textured(tmp_path_factory):
  return write_textured(tmp_path_factory.mktemp("textured"))


def mix(data):
  return [{**data, "weight": 2.0}, {**data, "split": "test", "weight": 1.0}]


def process_batches(data, count, steps, pp=AUG, **kw):
  """[process][step] local batches of all `count` processes."""
  kw = {"seed": 4, "shuffle_buffer_size": 64, **kw}
  out = []
  for index in range(count):
    it = input_pipeline.make_train_iterator(
        data, pp, B, process_index=index, process_count=count, **kw)
    assert it.local_batch_size == B // count
    out.append([next(it) for _ in range(steps)])
  return out


_REFERENCE = {}


def one_process(data, steps):
  """The one-process global batches (seed 4), shared by the tests."""
  key = repr(data)
  if key not in _REFERENCE:
    _REFERENCE[key] = process_batches(data, 1, 13)[0]
  assert steps <= 13
  return _REFERENCE[key][:steps]


def global_batches(per_process):
  """Concatenates the processes' local batches of each step (process order)."""
  return [{k: np.concatenate([p[step][k] for p in per_process])
           for k in per_process[0][step]}
          for step in range(len(per_process[0]))]


def labels(batches):
  return np.concatenate([b["label"] for b in batches]).tolist()


def test_global_batches_do_not_depend_on_the_process_count(textured):
  steps = 6  # 48 positions: epoch 0 ends inside step 2, epoch 1 in step 4.
  reference = one_process(textured, 7)[:steps]
  stream = labels(reference)
  assert sorted(stream[:20]) == list(range(20))  # Epoch 0: each record once,
  assert sorted(stream[20:40]) == list(range(20))  # and again in epoch 1,
  assert stream[:20] != stream[20:40]  # reshuffled.
  assert reference[0]["image"].shape == (B, 8, 8, 3)
  for count in (2, 4):
    assert_batches_equal(global_batches(process_batches(textured, count, steps)),
                         reference)


def test_augmentation_is_random_and_follows_the_position(textured):
  # The same record in two epochs gets other crops: the equality above
  # compares real augmentation, not constant images.
  batches = one_process(textured, 5)
  images = np.concatenate([b["image"] for b in batches])
  first = {int(l): im for l, im in zip(labels(batches)[:20], images[:20])}
  second = {int(l): im for l, im in zip(labels(batches)[20:40],
                                        images[20:40])}
  assert sum(not np.array_equal(first[i], second[i]) for i in range(20)) > 15


def test_mixture_global_batches_do_not_depend_on_the_process_count(textured):
  steps = 5
  data = mix(textured)
  reference = one_process(data, 7)[:steps]
  # The source of every position follows the process-independent draws.
  weights = mixture.normalized_weights([2.0, 1.0], ["train", "test"])
  draws = mixture.Choices(weights, seed=4, process_index=0).dataset(0)
  expected = list(draws.take(steps * B).as_numpy_iterator())
  assert [int(l >= 100) for l in labels(reference)] == expected
  for count in (2, 4):
    assert_batches_equal(global_batches(process_batches(data, count, steps)),
                         reference)


@pytest.mark.parametrize("mixed, resumes", [
    (False, [(2, 3), (4, 5)]), (True, [(4, 5)])])  # Mid-epoch resume points.
def test_resume_gives_the_uninterrupted_global_batches(textured, mixed,
                                                       resumes):
  data = mix(textured) if mixed else textured
  full = one_process(data, 7)
  for count, start in resumes:
    resumed = global_batches(
        process_batches(data, count, 7 - start, start_step=start))
    assert_batches_equal(resumed, full[start:])


def test_per_process_order_depends_on_the_process_count(textured):
  one = process_batches(textured, 1, 3, order="per_process")
  two = process_batches(textured, 2, 3, order="per_process")
  # Each process shuffles its own half: all of it is in its first 10.
  assert sorted(labels(two[0])[:10]) == list(range(10))
  assert sorted(labels(two[1])[:10]) == list(range(10, 20))
  assert labels(global_batches(two)) != labels(one[0])
  # With one process the two orders are the same stream.
  assert_batches_equal(one[0], one_process(textured, 3))


# A pp op that records the label of every example it sees: placed right
# after `decode`, it counts the examples a process decodes.
SEEN = []


@registry.PP_OPS.register("test_record_label")
def _get_record_label():
  """Test-only op: notes every label it sees in SEEN (counts decoded records)."""
  def record(data):
    def note(label):
      SEEN.append(int(label))
      return label
    label = tf.numpy_function(note, [data["label"]], data["label"].dtype)
    return {**data, "label": tf.ensure_shape(label, [])}
  return record


def test_a_process_decodes_only_its_own_rows(textured):
  count, steps = 4, 10  # Local batches of 2.
  pp = AUG.replace("decode|", "decode|test_record_label|")
  reference = labels(one_process(textured, steps + 3))
  rows = [reference[s * B + 2:s * B + 4] for s in range(steps + 3)]  # p=1
  SEEN.clear()
  it = input_pipeline.make_train_iterator(
      textured, pp, B, seed=4, shuffle_buffer_size=64, process_index=1,
      process_count=count, prefetch=1, num_parallel_calls=1)
  got = labels([next(it) for _ in range(steps)])
  assert got == sum(rows[:steps], [])
  # Decoded: the 20 yielded examples plus a little read-ahead, all of them
  # this process's rows; decoding every row read would be 80 and more.
  assert 20 <= len(SEEN) <= 2 * (steps + 3)
  owned = collections.Counter(sum(rows, []))
  assert not collections.Counter(SEEN) - owned


BAD = {3, 11}  # Labels of the broken records (the file order is kept).


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("broken")
  data = write_textured(data_dir)
  corrupt_records(data_dir, data["name"], "train",
                  {3: b"not a png", 11: b"\x89PNG\r\n"})
  return data


def test_corrupt_records_are_skipped_and_counted_per_process(broken,
                                                             textured):
  steps = 6
  clean = labels(one_process(textured, steps + 4))
  for index in range(2):
    it = input_pipeline.make_train_iterator(
        broken, AUG, B, seed=4, shuffle_buffer_size=64, process_index=index,
        process_count=2, skip_corrupt=True)
    got = labels([next(it) for _ in range(steps)])
    # This process's rows of the clean global stream, bad ones left out:
    # its batches fill from its next rows (so they are no longer the rows
    # of the one-process run: the equality needs uncorrupted data).
    owned = [l for s in range(steps + 4)
             for l in clean[s * B + 4 * index:s * B + 4 * index + 4]]
    kept = [l for l in owned if l not in BAD]
    assert got == kept[:len(got)]
    # `.skipped` counts the failures before the last example yielded.
    last = [i for i, l in enumerate(owned) if l not in BAD][len(got) - 1]
    assert it.skipped == sum(l in BAD for l in owned[:last]) > 0


def test_corrupt_record_error_names_it_on_any_process(broken):
  # The failed batch is replayed from this process's rows of the stream.
  for index in range(2):
    it = input_pipeline.make_train_iterator(
        broken, AUG, B, seed=4, shuffle_buffer_size=64, process_index=index,
        process_count=2)
    with pytest.raises(input_pipeline.BadExampleError,
                       match=r"record textured train\[(3:4|11:12)\]"):
      for _ in range(6):
        next(it)


def test_cached_decode_failures_keep_the_global_batches(broken):
  # With cache=True, records that fail to decode are dropped before the
  # shuffle, the same on every process: the global batches still agree.
  batches = [global_batches(process_batches(broken, count, 4, cache=True,
                                            skip_corrupt=True))
             for count in (1, 2)]
  assert_batches_equal(batches[1], batches[0])
  stream = labels(batches[0])
  assert sorted(stream[:18]) == sorted(set(range(20)) - BAD)


def test_unknown_order_names_the_config_key(textured):
  with pytest.raises(ValueError, match=r"input.order='shuffled' is not one "
                                       r"of \('global', 'per_process'\)"):
    input_pipeline.make_train_iterator(textured, AUG, B, seed=0,
                                       order="shuffled")
