"""The ImageNet scorecard evaluators on small real TFDS variants, in-loop vs offline.

The "model" looks its logits up in a fixed random table by the example's
label field, so every expected number is recomputed here with plain Python
from the dataset as `tfds` reads it, independently of our pipeline, padding,
sharding and gathering. Each evaluator also dumps its predictions, and
`tools/score_predictions` must re-score the dump to identical values.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import glob  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from big_vision_like import config as config_lib  # noqa: E402
from big_vision_like import evaluators as evaluators_lib  # noqa: E402
from big_vision_like import metrics as metrics_lib  # noqa: E402
from big_vision_like import registry  # noqa: E402
from big_vision_like import sharding as sharding_lib  # noqa: E402
from big_vision_like.data import imagenet_classes  # noqa: E402
from big_vision_like.data import imagenet_variants as V  # noqa: E402
from big_vision_like.tools import score_predictions  # noqa: E402
from tests.helpers import write_imagenet_variants  # noqa: E402

PP = "decode|resize(8)|value_range(-1, 1)"
TABLE = np.random.default_rng(0).normal(size=(1000, 1000)).astype(np.float32)
# Make some predictions right: the table row of label c peaks at c for even c.
TABLE[np.arange(0, 1000, 2), np.arange(0, 1000, 2)] += 10.0


def predict_by(key):
  def predict(params, batch):
    return params["table"][batch[key]]
  return predict


PARAMS = {"table": jnp.asarray(TABLE)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return write_imagenet_variants(tmp_path_factory.mktemp("imagenet"), {
      "imagenet2012_real": {"validation": 37},
      "imagenet2012_multilabel": {"validation": 29, "imagenet_m": 9},
      "imagenet2012": {"validation": 41, "train": 2},
      "imagenet_a": {"test": 23},
      "imagenet_v2/matched-frequency": {"test": 19}}, image_size=8)


def raw(name, split, data_dir):
  ds = tfds.load(name, split=split, data_dir=data_dir,
                 decoders={"image": tfds.decode.SkipDecoding()})
  return list(tfds.as_numpy(ds))


def ranking(row):
  return [int(i) for i in np.argsort(-TABLE[row], kind="stable")]


def make(kind, data, mesh=None, **kw):
  mesh = mesh or sharding_lib.make_mesh([("data", -1)])
  return registry.EVALUATORS.get(kind)(
      kw.pop("predict"), data=data, mesh=mesh, data_axes=("data",),
      batch_size=kw.pop("batch_size", 6), **kw)


def rescore(workdir, name, step, **kw):
  (dump,) = glob.glob(f"{workdir}/predictions/{name}/step_{step:08d}.npz")
  results = score_predictions.score_file(dump, **kw)
  (only,) = results.values()
  return only


def assert_same(in_loop, offline):
  shared = [k for k in in_loop if isinstance(in_loop[k], float)]
  assert shared
  for k in shared:
    assert offline[k] == in_loop[k], k  # exactly, not approximately


def test_real_scores_label_sets_and_matches_offline(data_dir, tmp_path):
  data = dict(name="imagenet2012_real", split="validation", data_dir=data_dir)
  ev = make("multilabel", data, predict=predict_by("original_label"),
            pp=PP + "|keep('image', 'original_label', 'real_label')",
            save_predictions=True, workdir=str(tmp_path), name="real")
  got = ev.run(PARAMS, step=7)
  exs = raw("imagenet2012_real", "validation", data_dir)
  counted = [e for e in exs if len(e["real_label"])]
  assert 0 < len(counted) < len(exs)  # the stand-in has empty sets
  want1 = sum(ranking(e["original_label"])[0] in set(e["real_label"]) for e in counted)
  want5 = sum(bool(set(ranking(e["original_label"])[:5]) & set(e["real_label"]))
              for e in counted)
  assert got["num_counted"] == len(counted)
  assert got["num_empty"] == len(exs) - len(counted)
  assert got["real@1"] == pytest.approx(want1 / len(counted), abs=1e-12)
  assert got["real@5"] == pytest.approx(want5 / len(counted), abs=1e-12)
  multi = [e for e in counted if len(set(e["real_label"])) > 1]
  assert got["multi_label_fraction"] == pytest.approx(len(multi) / len(counted))
  orig_multi = sum(ranking(e["original_label"])[0] == e["original_label"] for e in multi)
  if multi:
    assert got["multi/prec@1"] == pytest.approx(orig_multi / len(multi))
  offline = rescore(str(tmp_path), "real", 7, labels="tfds:imagenet2012_real:validation",
                    data_dir=data_dir)
  assert_same(got, offline)
  # The dump alone (its own labels) gives the same numbers too.
  assert_same(got, rescore(str(tmp_path), "real", 7))
  # Evaluating the same step again (eval.py after training) replaces the dump.
  assert ev.run(PARAMS, step=7) == got
  assert_same(got, rescore(str(tmp_path), "real", 7))
  assert not glob.glob(f"{tmp_path}/predictions/real/.*")


def test_external_label_file_keyed_by_file_name(data_dir, tmp_path):
  """ImageNetV2 has no label sets in TFDS; a paper's sets plug in by file name."""
  exs = raw("imagenet_v2/matched-frequency", "test", data_dir)
  rng = np.random.default_rng(1)
  sets = {}
  for e in exs:  # the original label plus 0-2 random extra valid labels
    extra = rng.choice(1000, size=rng.integers(0, 3), replace=False).tolist()
    sets[e["file_name"].decode()] = sorted({int(e["label"]), *extra})
  path = tmp_path / "v2_sets.json"
  path.write_text(json.dumps(dict(reversed(list(sets.items())))))  # any order
  data = dict(name="imagenet_v2/matched-frequency", split="test", data_dir=data_dir)
  ev = make("multilabel", data, predict=predict_by("label"), label_file=str(path),
            label_key="label", mean_ap=True, save_predictions=True, save_logits=True,
            pp=PP + "|keep('image', 'label')", workdir=str(tmp_path), name="v2")
  got = ev.run(PARAMS, step=4)
  tops = {e["file_name"].decode(): ranking(e["label"]) for e in exs}
  multi = [n for n, s in sets.items() if len(s) > 1]
  single = [n for n, s in sets.items() if len(s) == 1]
  assert got["multi_label_fraction"] == pytest.approx(len(multi) / len(sets))
  assert got["multi/real@1"] == pytest.approx(
      np.mean([tops[n][0] in sets[n] for n in multi]))
  assert got["single/real@1"] == pytest.approx(
      np.mean([tops[n][0] in sets[n] for n in single]))
  assert got["recall@5"] == pytest.approx(
      np.mean([len(set(tops[n][:5]) & set(sets[n])) / len(sets[n]) for n in sets]))
  assert 0 < got["mAP"] <= 1
  offline = rescore(str(tmp_path), "v2", 4, labels=str(path), mean_ap=True)
  assert_same(got, offline)
  # A label file that misses one of the dataset's images is refused by name.
  del sets[exs[0]["file_name"].decode()]
  path.write_text(json.dumps(sets))
  ev = make("multilabel", data, predict=predict_by("label"), label_file=str(path),
            label_key="label", pp=PP + "|keep('image', 'label')", name="v2")
  with pytest.raises(ValueError, match="1 of 19 file names are not in the labels"):
    ev.run(PARAMS)


def test_shankar_multilabel_and_imagenet_m(data_dir, tmp_path):
  for split in ("validation", "imagenet_m"):
    data = dict(name="imagenet2012_multilabel", split=split, data_dir=data_dir)
    ev = make("multilabel", data, predict=predict_by("original_label"), scheme="shankar",
              pp=PP + "|keep('image', 'original_label', 'correct_multi_labels', "
                      "'unclear_multi_labels', 'is_problematic')",
              save_predictions=True, workdir=str(tmp_path), name=split)
    got = ev.run(PARAMS, step=1)
    exs = [e for e in raw("imagenet2012_multilabel", split, data_dir)
           if not e["is_problematic"]]
    ok = [ranking(e["original_label"])[0] in
          set(e["correct_multi_labels"]) | set(e["unclear_multi_labels"]) for e in exs]
    by_class = {}
    for e, o in zip(exs, ok):
      by_class.setdefault(int(e["original_label"]), []).append(o)
    assert got["num_images"] == len(exs) and got["num_correct"] == sum(ok)
    assert got["accuracy_per_image"] == pytest.approx(sum(ok) / len(exs))
    assert got["accuracy_per_class"] == pytest.approx(
        np.mean([np.mean(v) for v in by_class.values()]))
    offline = rescore(str(tmp_path), split, 1,
                      labels=f"tfds:imagenet2012_multilabel:{split}", data_dir=data_dir)
    assert_same(got, offline)


def test_imagenet_a_restricts_logits_to_the_subset(data_dir, tmp_path):
  subset = imagenet_classes.subset_indices("imagenet_a")
  data = dict(name="imagenet_a", split="test", data_dir=data_dir)
  ev = make("classification", data, predict=predict_by("label"), label_key="label",
            class_subset="imagenet_a", pp=PP + "|keep('image', 'label')",
            save_predictions=True, workdir=str(tmp_path), name="a")
  # For odd classes the overall maximum is a class outside the subset; the
  # true class only wins within the subset.
  table = TABLE.copy()
  outside = next(c for c in range(1000) if c not in subset)
  table[subset[1::2], outside] += 20.0
  table[subset[1::2], subset[1::2]] += 10.0
  got = ev.run({"table": jnp.asarray(table)}, step=2)
  exs = raw("imagenet_a", "test", data_dir)
  # TFDS numbers A/R labels in the 1000 classes; the argmax is over the 200.
  assert all(e["label"] in subset for e in exs)
  right = [subset[int(np.argmax(table[e["label"]][subset]))] == e["label"] for e in exs]
  full = [int(np.argmax(table[e["label"]])) == e["label"] for e in exs]
  assert got["prec@1"] == pytest.approx(np.mean(right))
  assert np.mean(right) > np.mean(full)  # restricting matters in this example
  offline = rescore(str(tmp_path), "a", 2)
  assert_same(got, offline)


def test_calibration_matches_a_direct_computation(data_dir, tmp_path):
  data = dict(name="imagenet2012", split="validation", data_dir=data_dir)
  ev = make("calibration", data, predict=predict_by("label"), num_bins=4,
            pp=PP + "|keep('image', 'label')", save_predictions=True, save_logits=True,
            workdir=str(tmp_path), name="cal")
  got = ev.run(PARAMS, step=5)
  exs = raw("imagenet2012", "validation", data_dir)
  rows = []
  for e in exs:
    z = TABLE[e["label"]].astype(np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    rows.append((p.max(), float(np.argmax(z) == e["label"]), -math.log(p[e["label"]]),
                 ((p - np.eye(1000)[e["label"]]) ** 2).sum()))
  conf, correct, nll, brier = map(np.array, zip(*rows))
  ece = 0.0
  for b in range(4):
    inside = (conf > b / 4) & (conf <= (b + 1) / 4) if b else conf <= 0.25
    if inside.any():
      ece += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
  assert got["ece"] == pytest.approx(ece, abs=1e-5)
  assert got["nll"] == pytest.approx(nll.mean(), rel=1e-5)
  assert got["brier"] == pytest.approx(brier.mean(), rel=1e-5)
  assert got["accuracy"] == pytest.approx(correct.mean())
  image = got["reliability"]
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
  offline = rescore(str(tmp_path), "cal", 5)
  assert_same(got, offline)


def test_batch_size_and_device_count_do_not_change_the_numbers(data_dir):
  data = dict(name="imagenet2012_real", split="validation", data_dir=data_dir)
  pp = PP + "|keep('image', 'original_label', 'real_label')"
  one = sharding_lib.make_mesh([("data", 1)], devices=jax.devices()[:1])
  a = make("multilabel", data, predict=predict_by("original_label"), pp=pp,
           batch_size=5, mesh=one).run(PARAMS)
  b = make("multilabel", data, predict=predict_by("original_label"), pp=pp,
           batch_size=16).run(PARAMS)
  assert a == b


def test_per_class_view_and_reference_drop_reach_tensorboard(data_dir, tmp_path):
  config = config_lib.ml_collections.ConfigDict({"evals": {
      "val": dict(type="classification", label_key="label", per_class=True,
                  class_names="imagenet2012", pp=PP + "|keep('image', 'label')",
                  data=dict(name="imagenet2012", split="validation", data_dir=data_dir),
                  log_steps=10),
      "a": dict(type="classification", label_key="label", class_subset="imagenet_a",
                reference="val", pp=PP + "|keep('image', 'label')",
                data=dict(name="imagenet_a", split="test", data_dir=data_dir),
                log_steps=10),
  }})
  mesh = sharding_lib.make_mesh([("data", -1)])

  def predict(params, batch):
    return params["table"][batch["label"]]
  evaluators = evaluators_lib.make_evaluators(config, predict, mesh, ("data",), batch_size=8,
                                         total_steps=10, num_train_examples=2,
                                         workdir=str(tmp_path))
  writer = metrics_lib.MetricWriter(str(tmp_path))
  results = evaluators_lib.run_evals(evaluators, PARAMS, 10, writer)
  writer.close()
  assert results["a/drop/prec@1"] == pytest.approx(
      results["val/prec@1"] - results["a/prec@1"])
  # Per-class table on disk, names from the ImageNet class list.
  (table,) = glob.glob(f"{tmp_path}/per_class/val/step_00000010.json")
  rows = json.load(open(table))
  names = imagenet_classes.class_names()
  assert len(rows) == 1000 and rows[3]["name"] == names[3]
  present = [r for r in rows if r["count"]]
  assert results["val/accuracy_per_class"] == pytest.approx(
      np.mean([r["accuracy"] for r in present]))
  # Images and text read back from the event file.
  from tensorboard.backend.event_processing import event_accumulator
  (events,) = glob.glob(f"{tmp_path}/tensorboard/events.*")
  acc = event_accumulator.EventAccumulator(events, size_guidance={"images": 0,
                                                                  "tensors": 0})
  acc.Reload()
  tags = set(acc.Tags()["images"]) | set(acc.Tags()["tensors"])
  assert "val/confusions" in tags and "val/worst_classes" in tags
  assert "a/drop/prec@1" in set(acc.Tags()["scalars"]) | tags


def test_reference_must_exist_and_run_at_the_same_steps(data_dir):
  config = config_lib.ml_collections.ConfigDict({"evals": {
      "a": dict(type="classification", reference="val", label_key="label", pp=PP,
                data=dict(name="imagenet_a", split="test", data_dir=data_dir))}})
  mesh = sharding_lib.make_mesh([("data", -1)])
  with pytest.raises(config_lib.ConfigError, match="no evaluator 'val'"):
    evaluators_lib.make_evaluators(config, predict_by("label"), mesh, ("data",),
                              batch_size=8, total_steps=10, num_train_examples=2)


def test_unknown_evaluator_keys_are_config_errors():
  config = config_lib.load_config("configs/fashion_vit.py:runlocal", [])
  config.evals.test.per_clas = True
  with pytest.raises(config_lib.ConfigError, match="per_clas.*per_class"):
    config_lib.validate(config)


def test_one_line_scorecard_runs_every_imagenet_evaluation(tmp_path):
  from big_vision_like import scorecard
  data_dir = str(tmp_path / "data")
  for name in V.VARIANTS:  # (minival is the last 1% of train: 1 of 100)
    V.write_small_variant(name, data_dir, image_size=8, examples_per_split=(
        {"train": 100, "validation": 9} if name == "imagenet2012" else 9))
  config = config_lib.ml_collections.ConfigDict()
  config.evals = scorecard.imagenet(pp_image="decode|resize(8)|value_range(-1, 1)",
                                    data_dir=data_dir, log_steps=100, batch_size=4)
  assert sorted(config.evals) == sorted(scorecard.NAMES)
  mesh = sharding_lib.make_mesh([("data", -1)])

  def predict(params, batch):
    key = "label" if "label" in batch else "original_label"
    return params["table"][batch[key]]
  evaluators = evaluators_lib.make_evaluators(config, predict, mesh, ("data",), batch_size=4,
                                         total_steps=100, num_train_examples=9,
                                         workdir=str(tmp_path / "work"))
  writer = metrics_lib.MetricWriter(str(tmp_path / "work"))
  results = evaluators_lib.run_evals(evaluators, PARAMS, 100, writer)
  writer.close()
  for key in ("val/prec@1", "val/accuracy_per_class", "minival/prec@1", "real/real@1",
              "real/multi_label_fraction", "multilabel/accuracy_per_class",
              "imagenet_m/num_correct", "v2_mf/drop/prec@1", "v2_t07/prec@1",
              "v2_top/prec@5", "a/drop/prec@1", "r/prec@1", "sketch/drop/prec@1",
              "calibration/ece", "calibration/nll"):
    assert key in results and np.isfinite(results[key]), key
  assert results["imagenet_m/num_images"] + results["imagenet_m/num_problematic"] == 9
  from tensorboard.backend.event_processing import event_accumulator
  (events,) = glob.glob(f"{tmp_path}/work/tensorboard/events.*")
  acc = event_accumulator.EventAccumulator(events, size_guidance={"images": 0,
                                                                  "tensors": 0})
  acc.Reload()
  tags = set(acc.Tags()["images"]) | set(acc.Tags()["tensors"])
  assert {"calibration/reliability", "val/confusions", "val/worst_classes"} <= tags
  assert results["v2_mf/drop/prec@1"] == pytest.approx(
      results["val/prec@1"] - results["v2_mf/prec@1"])


def test_scorecard_include_and_errors():
  from big_vision_like import scorecard
  evals = scorecard.imagenet(pp_image="decode", include=("v2_mf", "a"), log_steps=5)
  assert "reference" not in evals["v2_mf"]  # val is not in this scorecard
  with pytest.raises(ValueError, match="unknown evals \\['v3'\\]"):
    scorecard.imagenet(pp_image="decode", include=("v3",), log_steps=5)
  with pytest.raises(ValueError, match="how often"):
    scorecard.imagenet(pp_image="decode")
