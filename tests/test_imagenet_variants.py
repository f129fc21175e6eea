"""Every ImageNet variant by name through TFDS, the eval pipeline, an evaluator.

Each variant is written small with `write_small_variant` under the real
builder's name/config/version/features, read back through
`tfds_source.get_builder` + `make_eval_iterator` with a standard eval pp
string, and scored by the registered `classification` evaluator with a
fixed rule as the "model", so prec@1 is known by hand.
"""

import re
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from big_vision_like import registry
from big_vision_like import sharding as sharding_lib
from big_vision_like.data import imagenet_variants, input_pipeline, tfds_source
from tests.helpers import write_imagenet_variants

V = imagenet_variants
COUNTS = {"imagenet2012": {"train": 10, "validation": 10},
          "imagenet2012_real": {"validation": 10},
          "imagenet2012_multilabel": {"validation": 14, "imagenet_m": 7}}
DEFAULT_COUNT = 10
FILE_NAMES = {
    "imagenet2012": r"n\d{8}_\d+\.JPEG|ILSVRC2012_val_\d{8}\.JPEG",
    "imagenet2012_real": r"ILSVRC2012_val_\d{8}\.JPEG",
    "imagenet2012_multilabel": r"ILSVRC2012_val_\d{8}\.JPEG",
    "imagenet_v2": r"\d{1,3}/[0-9a-f]{40}\.jpeg",
    "imagenet_a": r"0\.\d{6}_[a-z ]+ _ [a-z ]+_0\.\d{7}\.jpg",
    "imagenet_r": r"n\d{8}/[a-z]+_\d+\.jpg",
    "imagenet_sketch": r"n\d{8}/sketch_\d+\.JPEG",
}
SPLITS = [(name, split) for name, v in V.VARIANTS.items() for split in v.splits]


def counts(name):
  return COUNTS.get(name, {s: DEFAULT_COUNT for s in V.VARIANTS[name].splits})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return write_imagenet_variants(tmp_path_factory.mktemp("imagenet_variants"),
                                 {name: counts(name) for name in V.VARIANTS},
                                 image_size=24, seed=1)


def raw_examples(data_dir, name, split):
  """Straight from TFDS (not our pipeline), as numpy."""
  builder = tfds.builder(name, data_dir=data_dir)
  ds = builder.as_dataset(split=split, shuffle_files=False)
  return list(tfds.as_numpy(ds))


def test_the_table():
  assert list(V.VARIANTS) == [
      "imagenet2012", "imagenet2012_real", "imagenet2012_multilabel",
      "imagenet_v2/matched-frequency", "imagenet_v2/threshold-0.7",
      "imagenet_v2/topimages", "imagenet_a", "imagenet_r", "imagenet_sketch"]
  assert V.ILSVRC_VARIANTS == ("imagenet2012", "imagenet2012_real",
                               "imagenet2012_multilabel")
  assert dict(V.get("imagenet2012_multilabel").splits) == {
      "validation": 20_000, "imagenet_m": 68}
  assert V.get("imagenet_v2/topimages:3.0.0").config == "topimages"
  assert V.get("imagenet_sketch").data() == dict(
      name="imagenet_sketch", split="test", data_dir=None)
  assert V.get("imagenet2012_real").label_pp() == (
      "onehot(1000, key='real_label', key_result='labels')")
  with pytest.raises(registry.UnknownNameError,
                     match="Did you mean 'imagenet_r'"):
    V.get("imagenet_rr")
  # The documented minival sizes of the real training set (TFDS rounding).
  real = {"train": SimpleNamespace(num_examples=1_281_167)}
  sizes = [tfds.core.ReadInstruction.from_spec(s).to_absolute(real)[0]
           for s in (V.TRAIN_SPLIT, V.MINIVAL_SPLIT)]
  assert (sizes[0].to, sizes[1].from_) == (1_268_355, 1_268_355)


@pytest.mark.parametrize("name", list(V.VARIANTS))
def test_written_like_the_real_builder(data_dir, name):
  variant = V.get(name)
  builder = tfds_source.get_builder(name, data_dir)
  # TFDS's own builder class reads it.
  assert type(builder).__module__ == (
      f"tensorflow_datasets.datasets.{variant.tfds_name}."
      f"{variant.tfds_name}_dataset_builder")
  if variant.config:
    assert builder.builder_config.name == variant.config
  features = builder.info.features
  assert set(features) == {"image", *variant.fields}
  label = features[variant.label_key]
  if variant.multi_label:  # A Sequence of ClassLabel.
    label = label.feature
  assert label.num_classes == 1000
  assert {s: builder.info.splits[s].num_examples for s in variant.splits} == (
      counts(name))
  pattern = re.compile(FILE_NAMES[variant.tfds_name])
  for split in variant.splits:
    examples = raw_examples(data_dir, name, split)
    names = [ex["file_name"].decode() for ex in examples]
    assert len(set(names)) == len(names)
    for n in names:
      assert pattern.fullmatch(n), n
    if variant.class_subset:
      subset = set(V.subset_label_ids(variant.class_subset))
      assert len(subset) == 200
      assert {int(ex["label"]) for ex in examples} <= subset


def test_plausible_label_values(data_dir):
  wnids = V.class_wnids()
  val_wnids = V.validation_wnids()
  for ex in raw_examples(data_dir, "imagenet2012", "validation"):
    index = int(ex["file_name"][15:23]) - 1  # Real label of the file name.
    assert wnids[ex["label"]] == val_wnids[index]
  for ex in raw_examples(data_dir, "imagenet2012", "train"):
    assert ex["file_name"].decode().startswith(wnids[ex["label"]] + "_")
  real = raw_examples(data_dir, "imagenet2012_real", "validation")
  assert real[0]["file_name"] == b"ILSVRC2012_val_00000001.JPEG"
  assert [len(ex["real_label"]) for ex in real] == [0, 2, 1, 1, 1] * 2
  multi = raw_examples(data_dir, "imagenet2012_multilabel", "validation")
  assert [bool(ex["is_problematic"]) for ex in multi].count(True) == 2
  assert any(len(ex["correct_multi_labels"]) == 0 for ex in multi)
  assert any(len(ex["unclear_multi_labels"]) for ex in multi)
  assert any(len(ex["wrong_multi_labels"]) for ex in multi)
  imagenet_m = raw_examples(data_dir, "imagenet2012_multilabel", "imagenet_m")
  assert not any(ex["is_problematic"] for ex in imagenet_m)
  sketch = raw_examples(data_dir, "imagenet_sketch", "test")
  for ex in sketch:  # The folder is the label, as in the real data.
    assert ex["file_name"].decode()[:9] == wnids[ex["label"]]


def test_deterministic_in_seed(tmp_path):
  a, b, c = (str(tmp_path / d) for d in "abc")
  for d, seed in ((a, 5), (b, 5), (c, 6)):
    V.write_small_variant("imagenet_r", d, examples_per_split=6,
                          image_size=16, seed=seed)
  rows = [[(ex["file_name"], ex["label"], ex["image"].tobytes())
           for ex in raw_examples(d, "imagenet_r", "test")] for d in (a, b, c)]
  assert rows[0] == rows[1] and rows[0] != rows[2]


# The "model": for single-label variants predict the label when it is even
# and label+1 when it is odd; for label-set variants predict original_label.
def predict_parity(params, batch):
  label = batch["label"]
  pred = jnp.where(label % 2 == 1, (label + 1) % 1000, label)
  return jax.nn.one_hot(pred, 1000) * params["scale"]


def predict_original(params, batch):
  return jax.nn.one_hot(batch["original_label"], 1000) * params["scale"]


# Hand-computed prec@1 of predict_original from write_small_variant's
# patterns: ReaL sets cycle [], {orig, x}, {x}, {orig}, {orig} (3 of 5
# right); multilabel correct sets cycle {orig}, {orig, x}, {x}, {orig}, {},
# {orig}, {orig, x} (5 of 7 right; problematic rows are scored here too:
# skipping them is the multilabel evaluator's job).
HAND_PREC1 = {("imagenet2012_real", "validation"): 6 / 10,
              ("imagenet2012_multilabel", "validation"): 10 / 14,
              ("imagenet2012_multilabel", "imagenet_m"): 5 / 7}


@pytest.mark.parametrize("name,split", SPLITS)
def test_eval_pipeline_and_classification_evaluator(data_dir, name, split):
  variant = V.get(name)
  key = "original_label" if variant.multi_label else "label"
  pp = (f"decode|resize_small(32)|central_crop(28)|value_range(-1, 1)|"
        f"{variant.label_pp()}|keep('image', 'labels', '{key}', 'file_name')")
  data = variant.data(split, data_dir)
  n = counts(name)[split]
  raw = raw_examples(data_dir, name, split)

  # Every example exactly once through the padded eval batches (3 per batch).
  batches, num_batches = input_pipeline.make_eval_iterator(
      data, pp, 3, process_index=0, process_count=1)
  assert num_batches == -(-n // 3)
  seen = []
  for batch in batches:
    assert batch["image"].shape == (3, 28, 28, 3)
    assert batch["labels"].shape == (3, 1000)
    for i in np.flatnonzero(batch["_mask"]):
      seen.append(batch["file_name"][i])
      # The label vector is the feature's (multi-)hot encoding.
      assert batch["image"][i].min() >= -1 and batch["image"][i].max() <= 1
  assert sorted(seen) == sorted(ex["file_name"] for ex in raw)
  hot = {ex["file_name"]: ex[variant.label_key] for ex in raw}
  for batch in batches:
    for i in np.flatnonzero(batch["_mask"]):
      want = np.atleast_1d(hot[batch["file_name"][i]])
      assert sorted(np.flatnonzero(batch["labels"][i])) == sorted(set(want))

  # The registered evaluator, with a batch size that needs padding.
  mesh = sharding_lib.make_mesh([("data", -1)])
  evaluator = registry.EVALUATORS.get("classification")(
      predict_original if variant.multi_label else predict_parity,
      data=data, pp=pp, batch_size=4, mesh=mesh, data_axes=("data",))
  got = evaluator.run({"scale": jnp.float32(10.0)})
  assert got["num_examples"] == n
  if variant.multi_label:
    want = np.mean([int(ex["original_label"]) in set(ex[variant.label_key])
                    for ex in raw])
    assert want == pytest.approx(HAND_PREC1[(name, split)])
  else:
    want = np.mean([int(ex["label"]) % 2 == 0 for ex in raw])
  assert got["prec@1"] == pytest.approx(want, abs=1e-9)
  assert got["prec@5"] >= got["prec@1"]


def test_minival_split_sizes_add_up(tmp_path):
  data_dir = str(tmp_path)
  V.write_small_variant("imagenet2012", data_dir, image_size=8,
                        examples_per_split={"train": 150, "validation": 2})
  n = lambda split: tfds_source.num_examples("imagenet2012", split, data_dir)
  assert (n(V.TRAIN_SPLIT), n(V.MINIVAL_SPLIT), n("train")) == (148, 2, 150)
  names = {}
  for split in ("train", V.TRAIN_SPLIT, V.MINIVAL_SPLIT):
    batches, _ = input_pipeline.make_eval_iterator(
        dict(name="imagenet2012", split=split, data_dir=data_dir),
        "decode|resize(8)|keep('label', 'file_name')", 16,
        process_index=0, process_count=1)
    names[split] = [f for b in batches for f, m in zip(b["file_name"],
                                                       b["_mask"]) if m]
  assert len(names[V.TRAIN_SPLIT]) == 148 and len(names[V.MINIVAL_SPLIT]) == 2
  assert not set(names[V.TRAIN_SPLIT]) & set(names[V.MINIVAL_SPLIT])
  assert names[V.TRAIN_SPLIT] + names[V.MINIVAL_SPLIT] == names["train"]


@pytest.mark.parametrize("name", [n for n, v in V.VARIANTS.items()
                                  if v.prepared == V.PREPARED_BY_TFDS_BUILD])
def test_not_prepared_downloadable_variant_names_tfds_build(tmp_path, name):
  data_dir = str(tmp_path / "empty")
  with pytest.raises(tfds_source.DatasetNotPreparedError) as e:
    tfds_source.get_builder(name, data_dir)
  assert f"tfds build {name} --data_dir {data_dir}\n" in str(e.value)
  assert "prepare_imagenet" not in str(e.value)


def test_write_small_variant_rejects_bad_requests(tmp_path):
  with pytest.raises(ValueError, match="unknown \\['test'\\]"):
    V.write_small_variant("imagenet2012_real", str(tmp_path),
                          examples_per_split={"test": 3})
  with pytest.raises(ValueError, match="has 68 examples in the real dataset"):
    V.write_small_variant("imagenet2012_multilabel", str(tmp_path),
                          examples_per_split={"imagenet_m": 69})
