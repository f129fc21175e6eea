"""Label-error finding: noise injection, cleanlab ranking, K-fold out-of-sample predictions.

Everything runs on the tiny synthetic Fashion-MNIST (50 train images whose
pixels equal their id, label = id % 10) and a 1-block ViT, in-process.
"""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from cleanlab import filter as cl_filter
from cleanlab import rank as cl_rank
from tensorboard.backend.event_processing import event_accumulator

from big_vision_like import label_errors
from big_vision_like.data import fashion_mnist
from big_vision_like.data import label_noise
from big_vision_like.tools import find_label_errors as tool
from tests.helpers import TINY_TEST_IDS, TINY_TRAIN_IDS, tiny_config, write_fashion_mnist_source

NOISY = "tiny_noisy"
FRACTION = 0.2  # 10 of the 50 training labels


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(data dir, flips JSON) of a noisy indexed copy of the tiny Fashion-MNIST."""
  source = write_fashion_mnist_source(tmp_path_factory.mktemp("tiny_source"))
  data_dir = fashion_mnist.prepare(str(tmp_path_factory.mktemp("tiny_tfds")),
                                   source_dir=source)
  flips = label_noise.write_noisy_copy("fashion_mnist", NOISY, fraction=FRACTION,
                                       mode="uniform", seed=3, data_dir=data_dir)
  return data_dir, flips


def _read(data_dir, split, name=NOISY):
  ds = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=False)
  rows = list(tfds.as_numpy(ds))
  return ([r["file_name"].decode() for r in rows if "file_name" in r],
          np.array([r["label"] for r in rows]),
          np.array([int(r["image"][0, 0, 0]) for r in rows]))


# ------------------------------------------------------------- noise injection


def test_noisy_copy_flips_exactly_the_fraction_listed_in_the_json(tiny):
  data_dir, flips = tiny
  names, labels, ids = _read(data_dir, "train")
  assert names == [f"train_{i:05d}" for i in range(50)]
  # The same images in the same order as `tfds.load` of the source.
  np.testing.assert_array_equal(ids, _read(data_dir, "train", "fashion_mnist")[2])
  assert sorted(ids) == list(TINY_TRAIN_IDS)
  original = ids % 10
  changed = {n for n, a, b in zip(names, labels, original) if a != b}
  assert len(changed) == round(FRACTION * 50) == flips["splits"]["train"]["num_flipped"]
  assert changed == {r["file_name"] for r in flips["flipped"]}
  by_name = dict(zip(names, zip(original, labels)))
  for r in flips["flipped"]:
    assert by_name[r["file_name"]] == (r["original_label"], r["label"])
  with open(os.path.join(data_dir, f"{NOISY}_flips.json")) as f:
    assert json.load(f) == flips
  # The test split is an untouched indexed copy.
  names, labels, ids = _read(data_dir, "test")
  np.testing.assert_array_equal(labels, ids % 10)
  assert sorted(ids) == list(TINY_TEST_IDS)
  assert names[0] == "test_00000" and flips["splits"]["test"]["num_flipped"] == 0


def test_flip_labels_pairs_mode_is_exact_seeded_and_only_between_partners():
  labels = np.arange(1000) % 10
  pairs = label_noise.PAIRS["fashion_mnist"]
  new, idx = label_noise.flip_labels(labels, fraction=0.1, mode="pairs", num_classes=10,
                                     seed=0, pairs=pairs)
  assert len(idx) == 100 and (new != labels).sum() == 100
  partner = {a: b for p in pairs for a, b in (p, p[::-1])}
  assert all(new[i] == partner[labels[i]] for i in idx)
  again, _ = label_noise.flip_labels(labels, fraction=0.1, mode="pairs", num_classes=10,
                                     seed=0, pairs=pairs)
  other, _ = label_noise.flip_labels(labels, fraction=0.1, mode="pairs", num_classes=10,
                                     seed=1, pairs=pairs)
  np.testing.assert_array_equal(new, again)
  assert (new != other).any()
  uniform, idx = label_noise.flip_labels(labels, fraction=0.25, mode="uniform",
                                         num_classes=10, seed=0)
  assert (uniform != labels).sum() == len(idx) == 250
  with pytest.raises(ValueError, match="700 flips asked for, but only 600 of 1000"):
    label_noise.flip_labels(labels, fraction=0.7, mode="pairs", num_classes=10, seed=0,
                            pairs=pairs)


# ---------------------------------------------------------- ranking from dumps


def _planted_probs(labels_true, seed=0):
  """Confident, slightly noisy probabilities of the TRUE classes."""
  rng = np.random.default_rng(seed)
  probs = rng.uniform(0.0, 0.2, size=(len(labels_true), 10))
  probs[np.arange(len(labels_true)), labels_true] += 3.0
  return probs / probs.sum(1, keepdims=True)


def _dump(path, names, probs, key="logits"):
  np.savez(path, file_name=np.asarray(names), **{key: np.log(probs) if key == "logits"
                                                 else probs})
  return str(path)


def test_ranking_matches_cleanlab_and_flags_the_planted_errors(tiny, tmp_path):
  data_dir, flips = tiny
  names, given, ids = _read(data_dir, "train")
  probs = _planted_probs(ids % 10)
  # Two dumps, rows shuffled: the join, not the position, must line them up.
  order = np.random.default_rng(1).permutation(50)
  a = _dump(tmp_path / "a.npz", np.array(names)[order[:20]], probs[order[:20]])
  b = _dump(tmp_path / "b.npz", np.array(names)[order[20:]], probs[order[20:]], "probs")
  flips_path = os.path.join(data_dir, f"{NOISY}_flips.json")
  out = tmp_path / "out"
  assert tool.main(["--predictions", a, b, "--data", f"{NOISY}:train", "--data_dir",
                    data_dir, "--out", str(out), "--top", "6", "--flipped",
                    flips_path]) == 0
  # cleanlab itself, on the same arrays in the split's order.
  issue = cl_filter.find_label_issues(given, probs, n_jobs=1)
  score = cl_rank.get_label_quality_scores(given, probs)
  expected = [names[i] for i in sorted(np.flatnonzero(issue), key=lambda i: score[i])]
  with open(out / "label_issues.csv") as f:
    rows = [line.split(",") for line in f.read().splitlines()[1:]]
  assert [r[1] for r in rows] == expected
  np.testing.assert_allclose([float(r[6]) for r in rows], np.sort(score[issue]))
  # Only planted errors are flagged (5 examples a class: cleanlab misses one of
  # the 10), and the suggestions are their true classes.
  truth = {r["file_name"]: r["original_label"] for r in flips["flipped"]}
  assert set(expected) <= set(truth) and len(expected) >= 8
  assert all(int(r[4]) == truth[r[1]] for r in rows)
  summary = json.loads((out / "summary.json").read_text())
  assert summary["against_flipped"]["precision"] == 1
  assert summary["against_flipped"]["recall"] == len(expected) / 10
  assert summary["num_flagged"] == len(expected) and len(summary["top"]) == 6
  image = (out / "top_suspects.png").read_bytes()
  assert image.startswith(b"\x89PNG")
  acc = event_accumulator.EventAccumulator(str(out / "tensorboard"))
  acc.Reload()
  assert "label_errors/top_suspects" in acc.Tags()["tensors"]


def test_rank_flags_only_planted_errors_of_a_larger_synthetic_set():
  true = np.arange(2000) % 10
  given, planted = label_noise.flip_labels(true, fraction=0.05, mode="uniform",
                                           num_classes=10, seed=0)
  ranking = label_errors.rank(given, _planted_probs(true))
  # cleanlab's noise-rate estimate is conservative: only planted errors are
  # flagged, 85 of the 100 (measured with cleanlab 2.9.0).
  flagged = set(np.flatnonzero(ranking.issue))
  assert flagged <= set(planted) and len(flagged) >= 80
  np.testing.assert_array_equal(ranking.suggested, true)
  assert (np.diff(ranking.score[ranking.order]) >= 0).all()  # worst first


@pytest.mark.parametrize("case,message", [
    ("missing", r"do not cover tfds:tiny_noisy:train: 1 of 50 examples have none, "
                r"e.g. \['train_00049'\]"),
    ("unknown", r"a.npz: 1 of 50 file names are not in the labels .*'nope_1'"),
    ("classes", r"a.npz: 'logits' has shape \(49, 9\), expected \(49, 10\)"),
    ("twice", r"b.npz: 1 examples are already predicted by .*a.npz, e.g. 'train_00009'"),
    ("no_logits", r"a.npz: no `logits` or `probs` array"),
])
def test_bad_predictions_are_refused_naming_the_culprit(tiny, tmp_path, case, message):
  data_dir, _ = tiny
  names, _, ids = _read(data_dir, "train")
  probs = _planted_probs(ids % 10)
  paths = []
  if case == "missing":
    paths = [_dump(tmp_path / "a.npz", names[:49], probs[:49])]
  elif case == "unknown":
    paths = [_dump(tmp_path / "a.npz", names[:49] + ["nope_1"], probs)]
  elif case == "classes":
    paths = [_dump(tmp_path / "a.npz", names[:49], probs[:49, :9])]
  elif case == "twice":
    paths = [_dump(tmp_path / "a.npz", names[:10], probs[:10]),
             _dump(tmp_path / "b.npz", names[9:], probs[9:])]
  else:
    np.savez(tmp_path / "a.npz", file_name=np.array(names), topk_ids=ids[:, None] % 10)
    paths = [str(tmp_path / "a.npz")]
  labels = label_errors.split_labels(NOISY, "train", data_dir)
  with pytest.raises(ValueError, match=message):
    label_errors.load_probabilities(paths, labels)


def test_a_split_without_file_names_is_named_by_position_like_the_evaluators(tiny, tmp_path):
  data_dir, _ = tiny
  labels = label_errors.split_labels("fashion_mnist", "test", data_dir)
  _, expected, ids = _read(data_dir, "test", "fashion_mnist")
  assert labels.file_name.tolist() == [f"test_{i:05d}" for i in range(23)]
  np.testing.assert_array_equal(labels.label, expected)
  # A dump named that way joins; the picture finds the images by those names.
  probs = _planted_probs(ids % 10)
  order = np.arange(23)[::-1]
  got = label_errors.load_probabilities(
      [_dump(tmp_path / "a.npz", labels.file_name[order], probs[order])], labels)
  np.testing.assert_allclose(got, probs)
  images = label_errors.read_images("fashion_mnist", "test", ["test_00004"], data_dir)
  assert images["test_00004"].shape == (28, 28, 1)
  assert int(images["test_00004"][0, 0, 0]) == ids[4]


# ------------------------------------------------------------------- K-fold


def test_kfold_predicts_every_example_once_out_of_sample_and_resumes(tiny, tmp_path):
  data_dir, _ = tiny
  config = tiny_config(data_dir, **{"input.data.name": NOISY, "total_steps": 2,
                                    "ckpt_steps": 2, "log_training_steps": 1})
  workdir = str(tmp_path / "kfold")
  paths = tool.run_folds(config, workdir, folds=2)
  all_names = [f"train_{i:05d}" for i in range(50)]
  seen = []
  for k, path in enumerate(paths):
    dump = np.load(path)
    held = set(dump["file_name"].tolist())
    assert held == set(all_names[25 * k:25 * (k + 1)])
    assert dump["logits"].shape == (25, 10)
    # The fold trained on the split minus exactly what it predicted.
    with open(os.path.join(workdir, f"fold_{k}", "config.json")) as f:
      trained_on = json.load(f)["input"]["data"]["split"]
    trained = tfds.load(NOISY, split=trained_on, data_dir=data_dir)
    trained = {ex["file_name"].decode() for ex in tfds.as_numpy(trained)}
    assert trained.isdisjoint(held) and trained | held == set(all_names)
    seen += sorted(held)
  assert sorted(seen) == all_names  # every example exactly once

  # A rerun skips finished folds: nothing is trained or rewritten.
  def rows(k):
    with open(os.path.join(workdir, f"fold_{k}", "metrics.jsonl")) as f:
      return f.read()
  before = [(os.path.getmtime(p), rows(k)) for k, p in enumerate(paths)]
  assert tool.run_folds(config, workdir, folds=2) == paths
  assert [(os.path.getmtime(p), rows(k)) for k, p in enumerate(paths)] == before
  # A fold whose training finished but whose result was not recorded resumes
  # from its checkpoint (no step is retrained) and records the same predictions.
  old = dict(np.load(paths[1]))
  os.remove(paths[1])
  tool.run_folds(config, workdir, folds=2)
  assert rows(1) == before[1][1]
  np.testing.assert_array_equal(np.load(paths[1])["logits"], old["logits"])
  # Another fold count in the same workdir is refused.
  with pytest.raises(ValueError, match="folds.json: this workdir holds folds"):
    tool.run_folds(config, workdir, folds=3)
