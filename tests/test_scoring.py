"""Scoring, label sources and report.score against values worked out by hand.

Every metric of scoring.py's "Metric definitions" is checked on arrays small
enough that the expected number is derived in the comments; the larger random
cases compare against a plain numpy reference written here. Two tests use the
real ImageNet files of the repository (the packaged ReaL labels and the
ImageNetV2 project's top-5 predictions in results/) and join them on file name.
"""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest

from big_vision_like import label_sources
from big_vision_like import scoring
from big_vision_like.data import bundled
from big_vision_like.evaluators import report

_REAL_JSON = bundled.real_json_path()
_PREDICTIONS = os.path.join(os.path.dirname(__file__), "..", "results",
                            "imagenet_val_top5_predictions.npz")

LN3 = math.log(3.0)


# --------------------------------------------------------------------------
# top_k


def test_top_k_ties_go_to_lower_id_and_k_clips():
  logits = np.array([[1.0, 3.0, 3.0, 0.0],
                     [5.0, 5.0, 5.0, 5.0],
                     [0.0, -1.0, 2.0, 2.0]], np.float32)
  ids, scores = scoring.top_k(logits, 2)
  # Row 0: classes 1 and 2 tie at 3 -> 1 then 2. Row 1: all tie -> 0, 1.
  # Row 2: classes 2 and 3 tie at 2 -> 2 then 3.
  np.testing.assert_array_equal(ids, [[1, 2], [0, 1], [2, 3]])
  np.testing.assert_array_equal(scores, [[3, 3], [5, 5], [2, 2]])
  assert ids.dtype == np.int32 and scores.dtype == np.float32
  # k = 10 > 4 classes: clipped to a full ranking of the 4 classes.
  ids, scores = scoring.top_k(logits, 10)
  assert ids.shape == (3, 4)
  np.testing.assert_array_equal(ids, [[1, 2, 0, 3], [0, 1, 2, 3], [2, 3, 0, 1]])


def test_top_k_rejects_non_2d_logits():
  with pytest.raises(ValueError, match=r"\[examples, classes\].*\(5,\)"):
    scoring.top_k(np.zeros(5, np.float32), 1)


@pytest.mark.parametrize("n", [2049, 5000, 0])
def test_top_k_matches_stable_argsort_across_chunks(n):
  # Few distinct values -> many ties; N is not a multiple of the 2048-row chunk.
  rng = np.random.default_rng(n)
  logits = rng.integers(0, 6, size=(n, 12)).astype(np.float32)
  ids, scores = scoring.top_k(logits, 5)
  expected = np.argsort(-logits, axis=1, kind="stable")[:, :5]
  assert ids.shape == (n, 5)
  np.testing.assert_array_equal(ids, expected)
  np.testing.assert_array_equal(scores, np.take_along_axis(logits, expected, 1))


# --------------------------------------------------------------------------
# Label set helpers


def test_pad_sets():
  out = scoring.pad_sets([[3], [], [1, 2]])
  np.testing.assert_array_equal(out, [[3, -1], [-1, -1], [1, 2]])
  assert out.dtype == np.int32
  np.testing.assert_array_equal(scoring.pad_sets([[3]], width=3), [[3, -1, -1]])
  # No sets / only empty sets still give width 1.
  assert scoring.pad_sets([]).shape == (0, 1)
  np.testing.assert_array_equal(scoring.pad_sets([[], []]), [[-1], [-1]])
  with pytest.raises(ValueError, match="a label set has 2 labels, more than width 1"):
    scoring.pad_sets([[1, 2]], width=1)


def test_sets_from_vectors():
  vectors = np.array([
      [0.0, 1.0, 0.0, 1.0],          # multi-hot -> {1, 3}
      [0.025, 0.925, 0.025, 0.025],  # label-smoothed one-hot -> {1}
      [0.0, 0.0, 0.0, 0.0],          # nothing -> {}
  ], np.float32)
  out = scoring.sets_from_vectors(vectors)
  np.testing.assert_array_equal(out, [[1, 3], [1, -1], [-1, -1]])
  assert out.dtype == np.int32
  np.testing.assert_array_equal(scoring.set_sizes(out), [2, 1, 0])


def test_set_sizes_counts_distinct_valid_ids():
  sets = np.array([[3, 3, -1], [-1, -1, -1], [2, 1, 2], [0, 5, 9]], np.int32)
  # {3} -> 1, {} -> 0, {1, 2} -> 2, {0, 5, 9} -> 3.
  np.testing.assert_array_equal(scoring.set_sizes(sets), [1, 0, 2, 3])


def test_hits_padding_never_matches():
  topk = np.array([[3, -1], [-1, 4], [2, 5], [7, 8]], np.int32)
  sets = np.array([[-1, -1], [-1, -1], [5, -1], [1, 7]], np.int32)
  # Row 0/1: -1 in the prediction vs -1 padding: no hit. Row 2: 5 at rank 2.
  # Row 3: 7 at rank 1.
  np.testing.assert_array_equal(scoring.hits(topk, sets, 1), [False, False, False, True])
  np.testing.assert_array_equal(scoring.hits(topk, sets, 2), [False, False, True, True])


def test_check_ids_messages():
  scoring.check_ids(np.array([[1, -1], [4, 0]]), 5, "preds")  # -1 is padding
  with pytest.raises(ValueError, match=r"preds: class id 7 \(row 1\) is out of range \[0, 5\)"):
    scoring.check_ids(np.array([[1, -1], [2, 7]]), 5, "preds")
  with pytest.raises(ValueError, match=r"labels: class id -2 \(row 2\)"):
    scoring.check_ids(np.array([0, 1, -2]), 5, "labels")


# --------------------------------------------------------------------------
# prec@k and ReaL-style sets


def test_topk_accuracy_by_hand():
  topk = np.array([[1, 2, 3, 4, 5],
                   [0, 9, 8, 7, 6],
                   [2, 1, 0, 3, 4],
                   [5, 6, 7, 8, 9]], np.int32)
  label = np.array([1, 6, 0, 4])
  # prec@1: rows 0 only -> 1/4. prec@5: rows 0, 1 (6 at rank 5), 2 (rank 3)
  # -> 3/4; row 3's 4 is not in its top 5.
  out = scoring.topk_accuracy(topk, label)
  assert out == {"prec@1": 0.25, "prec@5": 0.75}
  # k beyond the predicted width is left out, not scored as 0.
  assert scoring.topk_accuracy(topk[:, :2], label) == {"prec@1": 0.25}
  assert scoring.topk_accuracy(topk, label, ks=(2,), prefix="v2/prec") == {
      "v2/prec@2": 0.25}


# Six examples, top-2 predictions, sets padded with -1 to width 3.
_TOPK = np.array([[1, 2], [3, 4], [6, 7], [7, 8], [0, 9], [2, -1]], np.int32)
_SETS = scoring.pad_sets([
    [1],        # ex0 single: hit@1, recall@1 1, recall@2 1
    [4, 5],     # ex1 multi: miss@1, hit@2; recall@1 0, recall@2 1/2
    [],         # ex2 empty: left out of everything
    [7, 7],     # ex3 duplicate id -> ONE label: hit@1; recall 1/1 (not 1/2)
    [9, 0, 2],  # ex4 multi of 3: hit@1; recall@1 1/3, recall@2 2/3
    [3],        # ex5 single: the -1 prediction never matches; miss, recall 0
], width=3)
_LABEL = np.array([1, 5, 6, 7, 2, 2])  # original single labels


def test_set_accuracy_by_hand():
  out = scoring.set_accuracy(_TOPK, _SETS, ks=(1, 2), label=_LABEL)
  # Counted: ex0, ex1, ex3, ex4, ex5 (5); empty: ex2.
  # real@1 = (1 + 0 + 1 + 1 + 0) / 5; real@2 = (1 + 1 + 1 + 1 + 0) / 5.
  # recall@1 = (1 + 0 + 1 + 1/3 + 0) / 5 = 7/15
  # recall@2 = (1 + 1/2 + 1 + 2/3 + 0) / 5 = 19/30
  # Strata: single = ex0, ex3, ex5; multi = ex1, ex4 -> fraction 2/5.
  # single/real@1 = (1 + 1 + 0) / 3; multi/real@1 = (0 + 1) / 2.
  # Original labels at rank 1: ex0 1==1, ex3 7==7, ex5 2==2 -> single/prec@1 1;
  # ex1 3!=5, ex4 0!=2 -> multi/prec@1 0.
  expected = {
      "num_counted": 5.0, "num_empty": 1.0,
      "real@1": 3 / 5, "real@2": 4 / 5,
      "recall@1": 7 / 15, "recall@2": 19 / 30,
      "multi_label_fraction": 2 / 5, "num_single": 3.0, "num_multi": 2.0,
      "single/real@1": 2 / 3, "multi/real@1": 1 / 2,
      "single/prec@1": 1.0, "multi/prec@1": 0.0,
  }
  assert set(out) == set(expected)
  for key, value in expected.items():
    assert out[key] == pytest.approx(value, abs=1e-12), key


def test_set_accuracy_real5_and_prefix():
  topk = np.array([[9, 8, 7, 6, 5], [0, 1, 2, 3, 4], [4, 3, 2, 1, 0]], np.int32)
  sets = scoring.pad_sets([[5], [7, 8], [3, 4]])
  # real@1: only ex2 (4) -> 1/3. real@5: ex0 (5 at rank 5) and ex2 -> 2/3.
  # recall@5: ex0 1/1, ex1 0/2, ex2 2/2 -> 2/3.
  out = scoring.set_accuracy(topk, sets, prefix="v2")
  assert out["v2@1"] == pytest.approx(1 / 3)
  assert out["v2@5"] == pytest.approx(2 / 3)
  assert out["recall@5"] == pytest.approx(2 / 3)
  assert out["recall@1"] == pytest.approx(1 / 6)  # ex2: 1 of 2 labels
  # Without an original label there are no prec@1 strata.
  assert "single/prec@1" not in out and "multi/prec@1" not in out


def test_set_accuracy_empty_stratum_has_no_key():
  topk = np.array([[1], [2]], np.int32)
  sets = scoring.pad_sets([[1], [3]])
  out = scoring.set_accuracy(topk, sets, label=np.array([1, 2]))
  assert out["multi_label_fraction"] == 0.0 and out["num_multi"] == 0.0
  assert out["single/real@1"] == 0.5 and out["single/prec@1"] == 1.0
  assert "multi/real@1" not in out and "multi/prec@1" not in out
  assert "real@5" not in out  # width 1 < 5


def test_set_accuracy_all_empty_is_an_error():
  with pytest.raises(ValueError, match="every label set is empty"):
    scoring.set_accuracy(np.array([[1], [2]], np.int32), scoring.pad_sets([[], []]))


# --------------------------------------------------------------------------
# Subsets (ImageNet-A / -R)


def test_restrict_topk_keeps_subset_in_order():
  topk = np.array([[5, 1, 7, 3], [3, 0, 9, 8]], np.int32)
  out = scoring.restrict_topk(topk, [1, 3, 8])
  # Row 0 keeps 1, 3; row 1 keeps 3, 8; the rest is -1 padding.
  np.testing.assert_array_equal(out, [[1, 3, -1, -1], [3, 8, -1, -1]])
  # The -1 ids never match the -1 padding of the sets: row 0's set {2} is
  # missed at every k, row 1's {8} is found at rank 2.
  sets = scoring.pad_sets([[2], [8]], width=2)
  res = scoring.set_accuracy(out, sets, ks=(1, 4))
  assert res["real@1"] == 0.0 and res["real@4"] == 0.5
  assert res["recall@4"] == 0.5


def test_restrict_topk_without_subset_class_is_an_error():
  topk = np.array([[5, 1], [0, 2]], np.int32)
  with pytest.raises(ValueError, match="1 examples have no class of the subset in "
                     "their top-2 predictions; restricting needs logits"):
    scoring.restrict_topk(topk, [1, 3])


def test_subset_top_k_ids_in_full_numbering():
  logits = np.array([[0.1, 0.9, 0.5, 0.7, 0.3],
                     [0.8, 0.0, 0.2, 0.9, 0.6]], np.float32)
  ids, scores = scoring.subset_top_k(logits, [0, 2, 4], 2)
  # Row 0 over classes 0, 2, 4: 0.5 (2), 0.3 (4). Row 1: 0.8 (0), 0.6 (4).
  np.testing.assert_array_equal(ids, [[2, 4], [0, 4]])
  np.testing.assert_allclose(scores, [[0.5, 0.3], [0.8, 0.6]])
  # k larger than the subset clips to its size.
  assert scoring.subset_top_k(logits, [0, 2, 4], 10)[0].shape == (2, 3)


def test_subset_top_k_ties_go_to_lower_id_for_any_subset_order():
  # Classes 2 and 4 tie. The module contract is "ties go to the LOWER class
  # id", and restrict_topk (from the full ranking) gives 2 first; the order in
  # which the subset is listed must not change that.
  logits = np.array([[0.1, 0.2, 0.7, 0.3, 0.7]], np.float32)
  full, _ = scoring.top_k(logits, 5)
  np.testing.assert_array_equal(scoring.restrict_topk(full, [4, 2])[:, :2], [[2, 4]])
  ids, _ = scoring.subset_top_k(logits, [4, 2], 2)
  np.testing.assert_array_equal(ids, [[2, 4]])


# --------------------------------------------------------------------------
# Shankar et al. (imagenet2012_multilabel)


def _shankar_example():
  top1 = np.array([0, 4, 3, 2, 2])
  correct = scoring.pad_sets([[0], [0], [0, 1], [1], [2]])
  unclear = scoring.pad_sets([[], [4], [2], [], []])
  problematic = np.array([False, False, False, False, True])
  original = np.array([0, 0, 0, 1, 2])
  return top1, correct, unclear, problematic, original


def test_shankar_accuracy_by_hand():
  top1, correct, unclear, problematic, original = _shankar_example()
  # ex0: 0 in correct -> right. ex1: 4 in unclear -> right. ex2: 3 in neither
  # -> wrong. ex3: 2 not in {1} -> wrong. ex4: problematic, skipped (it would
  # be right). Per image: 2/4. Per class: class 0 = 2/3, class 1 = 0/1, class
  # 2 has no kept image -> (2/3 + 0) / 2 = 1/3.
  out = scoring.shankar_accuracy(top1, correct, unclear, problematic, original, 6)
  assert out["accuracy_per_image"] == 0.5
  assert out["accuracy_per_class"] == pytest.approx(1 / 3, abs=1e-15)
  assert out["num_correct"] == 2.0
  assert out["num_images"] == 4.0
  assert out["num_problematic"] == 1.0
  # A [N, k] ranking uses its first column only.
  topk = np.stack([top1, np.array([9, 3, 2, 1, 1])], 1)
  assert scoring.shankar_accuracy(topk, correct, unclear, problematic, original,
                                  6) == out


def test_shankar_all_problematic_is_an_error():
  top1, correct, unclear, _, original = _shankar_example()
  with pytest.raises(ValueError, match="every example is marked is_problematic"):
    scoring.shankar_accuracy(top1, correct, unclear, np.ones(5, bool), original, 6)


# --------------------------------------------------------------------------
# Calibration


def test_calibration_by_hand_with_edges():
  logits = np.array([[0.0, 0.0],     # p = [.5, .5], argmax tie -> 0
                     [0.0, 0.0],     # same, label 1 -> wrong
                     [100.0, 0.0],   # p = [1, ~e^-100]
                     [0.0, LN3]],    # p = [.25, .75]
                    np.float32)
  label = np.array([0, 1, 0, 1])
  out, bins = scoring.calibration(logits, label, num_bins=4)
  # Confidences .5, .5, 1, .75 land exactly on edges of 4 bins:
  # bin m holds (m/4, (m+1)/4] -> .5 in bin 1, .75 in bin 2, 1 in bin 3.
  np.testing.assert_array_equal(bins.count, [0, 2, 1, 1])
  np.testing.assert_array_equal(bins.lower, [0, 0.25, 0.5, 0.75])
  np.testing.assert_array_equal(bins.upper, [0.25, 0.5, 0.75, 1.0])
  assert np.isnan(bins.accuracy[0]) and np.isnan(bins.confidence[0])
  np.testing.assert_allclose(bins.accuracy[1:], [0.5, 1.0, 1.0])
  np.testing.assert_allclose(bins.confidence[1:], [0.5, 0.75, 1.0], rtol=1e-6)
  # ECE: bin 1 |.5-.5| = 0, bin 2 1/4 * |1-.75|, bin 3 |1-1| -> 1/16.
  assert out["ece"] == pytest.approx(0.0625, abs=1e-6)
  # Equal mass, 4 bins of one example (sorted .5 (ex0), .5 (ex1), .75, 1):
  # (|1-.5| + |0-.5| + |1-.75| + 0) / 4 = 1.25 / 4.
  assert out["ece_equal_mass"] == pytest.approx(0.3125, abs=1e-6)
  # NLL = (ln 2 + ln 2 + 0 + ln(4/3)) / 4.
  assert out["nll"] == pytest.approx((2 * math.log(2) + math.log(4 / 3)) / 4, rel=1e-6)
  # Brier = sum p^2 - 2 p_y + 1: .5, .5, 0, (1/16 + 9/16 - 3/2 + 1 = 1/8)
  # -> 1.125 / 4.
  assert out["brier"] == pytest.approx(0.28125, rel=1e-6)
  assert out["accuracy"] == 0.75
  assert out["confidence"] == pytest.approx(0.6875, rel=1e-6)
  assert out["num_bins"] == 4.0
  # With 2 bins, .5 is the upper edge of bin 0 = (0, .5].
  _, bins2 = scoring.calibration(logits, label, num_bins=2)
  np.testing.assert_array_equal(bins2.count, [2, 2])


def test_calibration_equal_mass_larger_bins_first():
  logits = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, LN3], [0.0, LN3],
                     [100.0, 0.0]], np.float32)
  label = np.array([1, 0, 0, 1, 0])
  # conf .5 .5 .75 .75 1; correct: N Y N Y Y.
  # Equal mass, 2 bins of 3 and 2 (larger first):
  #   {.5 N, .5 Y, .75 N}: acc 1/3, conf 1.75/3 -> 3/5 * 1/4 = .15
  #   {.75 Y, 1 Y}:        acc 1,   conf .875   -> 2/5 * 1/8 = .05  -> .2
  # (Sizes 2, 3 would give 0 + 3/5 * 1/6 = .1.)
  # Equal width, 2 bins: (0, .5] = {.5, .5}: gap 0; (.5, 1]: acc 2/3,
  # conf 2.5/3 -> 3/5 * 1/6 = .1.
  out, bins = scoring.calibration(logits, label, num_bins=2)
  assert out["ece_equal_mass"] == pytest.approx(0.2, abs=1e-6)
  assert out["ece"] == pytest.approx(0.1, abs=1e-6)
  np.testing.assert_array_equal(bins.count, [2, 3])
  # 7 examples in 3 equal-mass runs (3, 2, 2): all the same confidence and
  # correctness pattern Y N N | Y Y | N Y (stable sort keeps input order).
  logits7 = np.zeros((7, 2), np.float32)  # conf .5, prediction 0
  label7 = np.array([0, 1, 1, 0, 0, 1, 0])
  # gaps: |1/3-.5| * 3/7 + |1-.5| * 2/7 + |.5-.5| * 2/7 = (.5 + 1) / 7 = 3/14.
  out7, _ = scoring.calibration(logits7, label7, num_bins=3)
  assert out7["ece_equal_mass"] == pytest.approx(3 / 14, abs=1e-6)
  # Equal width: all in one bin, acc 3/7 vs .5 -> 1/14.
  assert out7["ece"] == pytest.approx(1 / 14, abs=1e-6)


def test_calibration_argmax_ties_and_chunks():
  # Three classes tied at the top: prediction 0 (lower id), conf 1/3.
  logits = np.tile(np.array([[2.0, 2.0, 2.0]], np.float32), (2049, 1))
  label = np.zeros(2049, np.int32)
  label[-1] = 1  # the last row (second chunk) predicts 0 -> wrong
  out, bins = scoring.calibration(logits, label, num_bins=3)
  assert out["accuracy"] == pytest.approx(2048 / 2049, abs=1e-15)
  assert out["nll"] == pytest.approx(math.log(3), rel=1e-6)
  # Brier: 3 * 1/9 - 2/3 + 1 = 2/3 for every row.
  assert out["brier"] == pytest.approx(2 / 3, rel=1e-6)
  assert bins.count.sum() == 2049


def test_calibration_bad_num_bins():
  with pytest.raises(ValueError, match="num_bins must be >= 1, got 0"):
    scoring.calibration(np.zeros((1, 2), np.float32), np.array([0]), num_bins=0)


def test_calibration_rejects_labels_out_of_range():
  # Never a silent wrong number: Label -1 of 3 classes must not be
  # read as the last class (NLL/Brier of class 2), nor 5 give NaN metrics.
  logits = np.array([[0.0, 1.0, 2.0]], np.float32)
  for bad in (-1, 5):
    with pytest.raises(ValueError, match="label"):
      scoring.calibration(logits, np.array([bad]), num_bins=2)


# --------------------------------------------------------------------------
# Per-class accuracy


def test_per_class_accuracy_and_worst_classes():
  top1 = np.array([0, 0, 1, 2, 2, 2])
  label = np.array([0, 1, 1, 2, 2, 0])
  acc, count = scoring.per_class_accuracy(top1, label, 4)
  # class 0: ex0 right, ex5 wrong -> .5; class 1: ex1 wrong, ex2 right -> .5;
  # class 2: both right; class 3: no examples -> NaN.
  np.testing.assert_array_equal(count, [2, 2, 2, 0])
  np.testing.assert_array_equal(acc[:3], [0.5, 0.5, 1.0])
  assert np.isnan(acc[3])

  acc = np.array([0.5, 0.0, 0.5, np.nan, 0.0, 0.5])
  count = np.array([2, 2, 4, 0, 5, 2])
  names = ["a", "b", "c", "d", "e", "f"]
  # Lowest accuracy first; at equal accuracy more examples first, then lower
  # id; class 3 has no examples and is never listed.
  assert scoring.worst_classes(acc, count, names, n=4) == [
      (4, "e", 0.0, 5), (1, "b", 0.0, 2), (2, "c", 0.5, 4), (0, "a", 0.5, 2)]
  assert [c for c, *_ in scoring.worst_classes(acc, count, names, n=10)] == [
      4, 1, 2, 0, 5]


# --------------------------------------------------------------------------
# mAP


def _brute_force_ap(scores: np.ndarray, positive: np.ndarray) -> float:
  """Each distinct score is one threshold (predict score >= t)."""
  total = positive.sum()
  ap, prev_recall = 0.0, 0.0
  for t in sorted(set(scores.tolist()), reverse=True):
    selected = scores >= t
    tp = float((selected & positive).sum())
    recall = tp / total
    ap += (recall - prev_recall) * tp / selected.sum()
    prev_recall = recall
  return ap


def _brute_force_map(scores: np.ndarray, sets: np.ndarray) -> float:
  aps = []
  for c in range(scores.shape[1]):
    positive = (sets == c).any(1)
    if positive.any():
      aps.append(_brute_force_ap(scores[:, c], positive))
  return float(np.mean(aps))


def test_mean_average_precision_by_hand():
  scores = np.array([[0.9, 0.2, 0.5],
                     [0.8, 0.4, 0.5],
                     [0.8, 0.6, 0.5],
                     [0.3, 0.7, 0.5],
                     [0.1, 0.5, 0.5]], np.float32)
  sets = scoring.pad_sets([[0, 1], [0], [], [1], [0]])
  # Class 0, positives ex0, ex1, ex4 (3). Thresholds:
  #   .9 {ex0}: tp 1/1, recall +1/3 -> 1/3 * 1
  #   .8 {ex1, ex2} tied, ONE threshold: tp 2/3 -> 1/3 * 2/3 = 2/9
  #      (ranking ex1 alone first would give 1/3 * 1 instead)
  #   .3 {ex3}: no gain;  .1 {ex4}: tp 3/5 -> 1/3 * 3/5 = 1/5
  #   AP0 = 1/3 + 2/9 + 1/5 = 34/45.
  # Class 1, positives ex0, ex3: .7 ex3 tp 1/1 -> 1/2; .6 .5 .4 negatives;
  #   .2 ex0 tp 2/5 -> 1/2 * 2/5 = 1/5. AP1 = 7/10.
  # Class 2 has no positive: skipped. mAP = (34/45 + 7/10) / 2 = 131/180.
  expected = 131 / 180
  assert scoring.mean_average_precision(scores, sets) == pytest.approx(expected, abs=1e-12)
  assert _brute_force_map(scores, sets) == pytest.approx(expected, abs=1e-12)


def test_mean_average_precision_matches_brute_force_with_ties():
  rng = np.random.default_rng(0)
  # 70 classes crosses the internal 64-class block; integer scores tie a lot.
  scores = rng.integers(0, 5, size=(40, 70)).astype(np.float32)
  sets = scoring.pad_sets([sorted(set(rng.integers(0, 70, size=rng.integers(0, 4))
                                      .tolist())) for _ in range(40)])
  assert scoring.mean_average_precision(scores, sets) == pytest.approx(
      _brute_force_map(scores, sets), abs=1e-12)


def test_mean_average_precision_without_positives_is_an_error():
  with pytest.raises(ValueError, match="no class has a positive example"):
    scoring.mean_average_precision(np.zeros((2, 3), np.float32),
                                   scoring.pad_sets([[], []]))


# --------------------------------------------------------------------------
# Label sources


def test_label_source_duplicate_names_error():
  with pytest.raises(ValueError, match=r"my.csv: 1 file names occur more than once, "
                     r"e.g. \['a.jpg'\]"):
    label_sources.LabelSource(["a.jpg", "b.jpg", "a.jpg"], "my.csv")


def _write_json(path, data) -> str:
  with open(path, "w") as f:
    json.dump(data, f)
  return str(path)


def test_from_real_json(tmp_path):
  data = [[] for _ in range(50_000)]
  data[0], data[2], data[49_999] = [3], [5, 7], [999]
  path = _write_json(tmp_path / "real.json", data)
  src = label_sources.from_real_json(path)
  assert src.origin == path
  assert src.file_name[0] == "ILSVRC2012_val_00000001.JPEG"
  assert src.file_name[2] == "ILSVRC2012_val_00000003.JPEG"
  assert src.file_name[49_999] == "ILSVRC2012_val_00050000.JPEG"
  assert src.sets.shape == (50_000, 2) and src.label is None
  np.testing.assert_array_equal(src.sets[[0, 1, 2, 49_999]],
                                [[3, -1], [-1, -1], [5, 7], [999, -1]])
  # load() dispatches a JSON list to the ReaL reader.
  np.testing.assert_array_equal(label_sources.load(path).sets, src.sets)


def test_from_real_json_wrong_length_and_shape(tmp_path):
  path = _write_json(tmp_path / "short.json", [[1], [], [2]])
  with pytest.raises(ValueError, match=r"short\.json: a ReaL label file has 50,000 "
                     r"entries .*this one has 3"):
    label_sources.from_real_json(path)
  path = _write_json(tmp_path / "flat.json", [1, 2, 3])
  with pytest.raises(ValueError, match=r"flat\.json: a ReaL label file is a JSON list "
                     "of lists"):
    label_sources.from_real_json(path)
  bad = tmp_path / "broken.json"
  bad.write_text("[[1], [")
  with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
    label_sources.load(str(bad))


def test_from_mapping_json(tmp_path):
  path = _write_json(tmp_path / "labels.json",
                     {"b.jpg": [1, 2], "a.jpg": 3, "c.jpg": []})
  src = label_sources.load(path)
  np.testing.assert_array_equal(src.file_name, ["b.jpg", "a.jpg", "c.jpg"])
  np.testing.assert_array_equal(src.sets, [[1, 2], [3, -1], [-1, -1]])
  path = _write_json(tmp_path / "bad.json", {"a.jpg": [1], "b.jpg": ["x"]})
  with pytest.raises(ValueError, match=r"bad\.json: entry 'b.jpg': labels must be "
                     r"class ids \(integers >= 0\), got \['x'\]"):
    label_sources.load(path)
  with pytest.raises(ValueError, match=r"m\.json: expected a JSON object"):
    label_sources.from_mapping_json("m.json", [[1]])


def test_from_mapping_json_rejects_non_integer_ids():
  # 3.5 and true are not class ids; int() would silently turn them into 3 and
  # 1 (a silent wrong label, against "fail loudly").
  for value in (3.5, True):
    with pytest.raises(ValueError, match=r"m\.json: entry 'a.jpg'"):
      label_sources.from_mapping_json("m.json", {"a.jpg": value})


def _write_csv(path, header, rows) -> str:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return str(path)


def test_from_csv(tmp_path):
  path = _write_csv(tmp_path / "l.csv", ["file_name", "labels"],
                    [["a.jpg", "3 17"], ["b.jpg", "3;17"], ["c.jpg", ""],
                     ["d.jpg", "4"]])
  src = label_sources.load(path)
  np.testing.assert_array_equal(src.file_name, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
  np.testing.assert_array_equal(src.sets, [[3, 17], [3, 17], [-1, -1], [4, -1]])
  assert src.origin == path
  path = _write_csv(tmp_path / "single.csv", ["label", "file_name"],
                    [[5, "x.jpg"], [0, "y.jpg"]])
  np.testing.assert_array_equal(label_sources.from_csv(path).sets, [[5], [0]])


def test_from_csv_errors(tmp_path):
  path = _write_csv(tmp_path / "cols.csv", ["name", "labels"], [["a.jpg", "1"]])
  with pytest.raises(ValueError, match=r"cols\.csv: the CSV needs a 'file_name' column "
                     r"and a 'labels' or 'label' column, it has \['labels', 'name'\]"):
    label_sources.from_csv(path)
  path = _write_csv(tmp_path / "ids.csv", ["file_name", "labels"],
                    [["a.jpg", "1"], ["b.jpg", "1 dog"]])
  with pytest.raises(ValueError, match=r"ids\.csv: row 3 \('b.jpg'\): labels must be "
                     "class ids"):
    label_sources.from_csv(path)
  path = _write_csv(tmp_path / "empty.csv", ["file_name", "labels"], [])
  with pytest.raises(ValueError, match=r"empty\.csv: the CSV has no rows"):
    label_sources.from_csv(path)
  path = _write_csv(tmp_path / "dup.csv", ["file_name", "label"],
                    [["a.jpg", "1"], ["a.jpg", "2"]])
  with pytest.raises(ValueError, match=r"dup\.csv: 1 file names occur more than once"):
    label_sources.from_csv(path)


def test_load_dispatch_errors(tmp_path):
  missing = str(tmp_path / "nope.json")
  with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
    label_sources.load(missing)
  other = tmp_path / "labels.txt"
  other.write_text("a.jpg 1\n")
  with pytest.raises(ValueError, match=r"labels\.txt.*tfds:name:split, a \.json or a "
                     r"\.csv"):
    label_sources.load(str(other))


def test_join_by_name_in_any_order():
  src = label_sources.LabelSource(["c.jpg", "a.jpg", "b.jpg", "d.jpg"], "src",
                                  label=np.array([30, 10, 20, 40]))
  idx = label_sources.join(["b.jpg", "c.jpg", "a.jpg"], src)
  np.testing.assert_array_equal(idx, [2, 0, 1])
  np.testing.assert_array_equal(src.take(idx).label, [20, 30, 10])
  np.testing.assert_array_equal(src.take(idx).file_name, ["b.jpg", "c.jpg", "a.jpg"])
  # A large shuffled join lands every prediction on its own name.
  rng = np.random.default_rng(1)
  names = np.array([label_sources.real_file_name(i) for i in range(3000)])
  big = label_sources.LabelSource(names[rng.permutation(3000)], "big")
  preds = names[rng.permutation(3000)[:2500]]
  np.testing.assert_array_equal(big.file_name[label_sources.join(preds, big)], preds)


def test_join_errors():
  src = label_sources.LabelSource(["b.jpg", "c.jpg"], "labels.csv")
  with pytest.raises(ValueError, match=r"dump\.npz: 1 file names occur more than once, "
                     r"e.g. \['b.jpg'\]"):
    label_sources.join(["b.jpg", "c.jpg", "b.jpg"], src, what="dump.npz")
  # Names before, between and after the known ones are all caught.
  with pytest.raises(ValueError, match=r"predictions: 3 of 4 file names are not in the "
                     r"labels \(labels\.csv\), e.g. \['a.jpg', 'bb.jpg', 'z.jpg'\]"):
    label_sources.join(["a.jpg", "bb.jpg", "c.jpg", "z.jpg"], src)
  empty = label_sources.LabelSource(np.array([], str), "empty.json")
  with pytest.raises(ValueError, match=r"1 of 1 file names are not in the labels "
                     r"\(empty\.json\)"):
    label_sources.join(["a.jpg"], empty)


def test_from_arrays_single_labels_and_sets():
  topk = np.zeros((2, 5), np.int32)
  src = label_sources.from_arrays(
      {"file_name": np.array(["x", "y"]), "label": np.array([1, 2]),
       "topk_ids": topk}, "dump")
  np.testing.assert_array_equal(src.label, [1, 2])
  assert src.label.dtype == np.int32 and src.sets is None and src.unclear is None
  # ReaL sets come along by their TFDS name; set_key="" drops them.
  arrays = {"file_name": np.array(["x", "y"]), "label": np.array([1, 2]),
            "real_label": np.array([[1, -1], [-1, -1]]), "topk_ids": topk}
  src = label_sources.from_arrays(arrays, "dump")
  np.testing.assert_array_equal(src.sets, [[1, -1], [-1, -1]])
  np.testing.assert_array_equal(src.label, [1, 2])
  assert label_sources.from_arrays(arrays, "dump", set_key="").sets is None
  # No file names: positions are the names.
  src = label_sources.from_arrays({"label": np.array([4, 5, 6]),
                                   "topk_ids": np.zeros((3, 1))}, "mnist")
  np.testing.assert_array_equal(src.file_name, ["#0", "#1", "#2"])


def test_from_arrays_label_vectors():
  topk = np.zeros((2, 1), np.int32)
  multi = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]], np.float32)
  src = label_sources.from_arrays({"labels": multi, "topk_ids": topk}, "d",
                                  label_key="labels")
  np.testing.assert_array_equal(src.sets, [[1, -1], [0, 2]])
  assert src.label is None  # not every row has one label
  onehot = np.array([[0.05, 0.9, 0.05], [0.9, 0.05, 0.05]], np.float32)
  src = label_sources.from_arrays({"label": onehot, "topk_ids": topk}, "d")
  np.testing.assert_array_equal(src.sets, [[1], [0]])
  np.testing.assert_array_equal(src.label, [1, 0])


def test_from_arrays_errors():
  topk = np.zeros((2, 1), np.int32)
  with pytest.raises(KeyError, match="d: no 'wanted'"):
    label_sources.from_arrays({"label": np.array([1, 2]), "topk_ids": topk}, "d",
                              label_key="wanted")
  with pytest.raises(KeyError, match="d: no 'real_label'"):
    label_sources.from_arrays({"label": np.array([1, 2]), "topk_ids": topk}, "d",
                              set_key="real_label")
  with pytest.raises(ValueError, match=r"d: 'label' must be class ids \[N\] or label "
                     r"vectors \[N, C\], got shape \(2, 1, 1\)"):
    label_sources.from_arrays({"label": np.zeros((2, 1, 1)), "topk_ids": topk}, "d")


def _shankar_arrays() -> dict[str, np.ndarray]:
  top1, correct, unclear, problematic, original = _shankar_example()
  return {"file_name": np.array([f"img{i}.jpg" for i in range(5)]),
          "original_label": original, "correct_multi_labels": correct,
          "unclear_multi_labels": unclear, "is_problematic": problematic,
          "topk_ids": np.stack([top1, top1], 1)}


def test_from_arrays_correct_multi_labels_bring_shankar_fields():
  arrays = _shankar_arrays()
  src = label_sources.from_arrays(arrays, "multilabel")
  np.testing.assert_array_equal(src.label, arrays["original_label"])
  np.testing.assert_array_equal(src.sets, arrays["correct_multi_labels"])
  np.testing.assert_array_equal(src.unclear, arrays["unclear_multi_labels"])
  np.testing.assert_array_equal(src.problematic, [False] * 4 + [True])
  assert src.problematic.dtype == bool


# --------------------------------------------------------------------------
# report.score


def _src(**kw) -> label_sources.LabelSource:
  n = len(next(v for v in kw.values() if v is not None))
  return label_sources.LabelSource([f"f{i}" for i in range(n)], "labels.json", **kw)


def test_report_classification():
  topk = np.array([[1, 2], [0, 3], [3, 0]], np.int32)
  out, extras = report.score("classification", topk_ids=topk,
                             labels=_src(label=np.array([1, 3, 2])),
                             loss=np.array([0.5, 1.0, 3.0]), ks=(1, 2, 5),
                             num_classes=4)
  # prec@1: ex0 -> 1/3; prec@2: ex0, ex1 -> 2/3; @5 > width: absent.
  assert out == {"prec@1": pytest.approx(1 / 3), "prec@2": pytest.approx(2 / 3),
                 "loss": 1.5, "num_examples": 3.0}
  assert extras == {}
  # From sets when there is no single label: an empty set is a miss here.
  out, _ = report.score("classification", topk_ids=topk,
                        labels=_src(sets=scoring.pad_sets([[2, 1], [3], []])),
                        ks=(1, 2))
  assert out["prec@1"] == pytest.approx(1 / 3) and out["prec@2"] == pytest.approx(2 / 3)
  with pytest.raises(ValueError, match="labels.json: classification needs labels"):
    report.score("classification", topk_ids=topk,
                 labels=label_sources.LabelSource(["a", "b", "c"], "labels.json"))


def test_report_sets_matches_set_accuracy_and_map():
  out, _ = report.score("sets", topk_ids=_TOPK, labels=_src(sets=_SETS, label=_LABEL),
                        ks=(1, 2), num_classes=10)
  assert out == scoring.set_accuracy(_TOPK, _SETS, ks=(1, 2), label=_LABEL)
  assert out["real@1"] == pytest.approx(3 / 5)
  scores = np.array([[0.9, 0.2, 0.5], [0.8, 0.4, 0.5], [0.8, 0.6, 0.5],
                     [0.3, 0.7, 0.5], [0.1, 0.5, 0.5]], np.float32)
  sets = scoring.pad_sets([[0, 1], [0], [], [1], [0]])
  topk = np.array([[0], [0], [1], [1], [1]], np.int32)
  out, _ = report.score("sets", topk_ids=topk, labels=_src(sets=sets), logits=scores,
                        mean_ap=True, prefix="multi", ks=(1,))
  assert out["mAP"] == pytest.approx(131 / 180, abs=1e-12)  # as worked out above
  assert out["multi@1"] == pytest.approx(3 / 4)  # ex0, ex1, ex3 of 4 counted
  with pytest.raises(ValueError, match=r"labels.json: mAP needs logits"):
    report.score("sets", topk_ids=topk, labels=_src(sets=sets), mean_ap=True)
  with pytest.raises(ValueError, match="labels.json: no label sets to score"):
    report.score("sets", topk_ids=topk, labels=_src(label=np.zeros(5, np.int32)))


def test_report_shankar():
  arrays = _shankar_arrays()
  src = label_sources.from_arrays(arrays, "multilabel")
  out, _ = report.score("shankar", topk_ids=arrays["topk_ids"], labels=src,
                        num_classes=6)
  assert out == scoring.shankar_accuracy(*_shankar_example(), 6)
  assert out["accuracy_per_image"] == 0.5
  assert out["accuracy_per_class"] == pytest.approx(1 / 3, abs=1e-15)
  with pytest.raises(ValueError, match="labels.json: Shankar et al. scoring needs"):
    report.score("shankar", topk_ids=arrays["topk_ids"],
                 labels=_src(sets=arrays["correct_multi_labels"],
                             label=arrays["original_label"]))


def test_report_calibration():
  logits = np.array([[0.0, 0.0], [0.0, 0.0], [100.0, 0.0], [0.0, LN3]], np.float32)
  topk = scoring.top_k(logits, 1)[0]
  out, extras = report.score("calibration", topk_ids=topk,
                             labels=_src(label=np.array([0, 1, 0, 1])),
                             logits=logits, num_bins=4, num_classes=2)
  assert out["ece"] == pytest.approx(0.0625, abs=1e-6)  # as in the by-hand test
  np.testing.assert_array_equal(extras["bins"].count, [0, 2, 1, 1])
  with pytest.raises(ValueError, match="labels.json: calibration needs logits"):
    report.score("calibration", topk_ids=topk, labels=_src(label=np.array([0, 1, 0, 1])))
  with pytest.raises(ValueError, match="labels.json: calibration needs logits"):
    report.score("calibration", topk_ids=topk, logits=logits,
                 labels=_src(sets=scoring.pad_sets([[0], [1], [0], [1]])))


def test_report_ids_out_of_range_and_unknown_kind():
  topk = np.array([[1], [2]], np.int32)
  with pytest.raises(ValueError, match=r"labels.json: label: class id 7 \(row 1\) is "
                     r"out of range \[0, 5\)"):
    report.score("classification", topk_ids=topk, labels=_src(label=np.array([0, 7])),
                 num_classes=5)
  with pytest.raises(ValueError, match=r"labels.json: label set: class id 9 \(row 0\)"):
    report.score("sets", topk_ids=topk, labels=_src(sets=scoring.pad_sets([[9], [1]])),
                 num_classes=5)
  with pytest.raises(ValueError, match=r"labels.json: predicted ids: class id 5 "
                     r"\(row 0\)"):
    report.score("classification", topk_ids=np.array([[5], [2]], np.int32),
                 labels=_src(label=np.array([0, 1])), num_classes=5)
  with pytest.raises(ValueError, match=r"unknown scoring kind 'nope'"):
    report.score("nope", topk_ids=topk, labels=_src(label=np.array([0, 1])))


# --------------------------------------------------------------------------
# Real ImageNet files


@pytest.fixture(scope="module")
def imagenet():
  real = label_sources.load(_REAL_JSON)
  with np.load(_PREDICTIONS) as npz:
    arrays = {k: npz[k] for k in npz.files}
  index = label_sources.join(arrays["file_name"], real, what=_PREDICTIONS)
  return real, arrays, index


def test_real_original_labels_on_real_data(imagenet):
  real, arrays, index = imagenet
  # The npz is in class-folder order: a positional match would be wrong.
  assert not np.array_equal(index, np.arange(50_000))
  sets = real.take(index).sets
  top1 = arrays["label"].astype(np.int32)[:, None]  # original label as prediction
  out = scoring.set_accuracy(top1, sets, ks=(1,))
  # ReaL paper: 46,837 images keep a label; the original label is in the ReaL
  # set for 42,164 of them.
  assert out["num_counted"] == 46_837.0
  assert out["num_empty"] == 3_163.0
  assert out["real@1"] == 42_164 / 46_837


def test_resnet50_real_beats_original_labels(imagenet):
  real, arrays, index = imagenet
  topk = arrays["resnet50"]
  labels = real.take(index)
  labels.label = arrays["label"].astype(np.int32)
  out, _ = report.score("sets", topk_ids=topk, labels=labels, num_classes=1000)
  prec = scoring.topk_accuracy(topk, arrays["label"])
  assert out["real@1"] > prec["prec@1"]
  assert out["real@5"] > prec["prec@5"]
  # Multi-label images are where the original label under-rates the model.
  assert out["multi/real@1"] > out["multi/prec@1"]
