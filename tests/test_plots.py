"""Tests for big_vision_like.plots: confusion ranking/selection and images."""

from __future__ import annotations

import numpy as np
import pytest

from big_vision_like import plots

# Colours the pictures are known to use (see plots.py).
BAR_BLUE = (76, 114, 176)       # "#4c72b0", reliability accuracy bars.
REDS_MAX = (103, 0, 13)         # matplotlib "Reds" at 1.0: the largest mistake.
DIAGONAL_GREY = (242, 242, 242)  # "#f2f2f2", neutral diagonal cells.


def _has_colour(img: np.ndarray, rgb) -> bool:
  return bool(np.all(img == np.array(rgb, np.uint8), axis=-1).any())


def _check_image(img: np.ndarray, max_width: int = 1000) -> None:
  assert isinstance(img, np.ndarray)
  assert img.dtype == np.uint8
  assert img.ndim == 3 and img.shape[-1] == 3
  assert 100 <= img.shape[0] <= 1000 and 100 <= img.shape[1] <= max_width
  # Not blank: a real drawing has many distinct colours (antialiased text,
  # bars, colour scale), a blank one just white.
  colours = np.unique(img.reshape(-1, 3), axis=0)
  assert len(colours) > 20
  assert (img.min(axis=-1) < 64).any()  # Some dark ink (text, axes).


def _pairs(*triples):
  """Examples from (true, pred, how many) triples."""
  labels = np.concatenate([np.full(k, t) for t, _, k in triples])
  preds = np.concatenate([np.full(k, p) for _, p, k in triples])
  return labels, preds


# Hand-made case, 6 classes. Off-diagonal counts: (4,2)x3, (1,4)x2, (2,5)x2,
# (0,3)x1; plus correct predictions (5,5)x5 and (0,0)x1.
# Ranking: (4,2,3); tie at 2 -> (1,4) before (2,5); then (0,3,1).
# Classes by first appearance: 4, 2 | 1 | 5 | 0, 3.
LABELS6, PREDS6 = _pairs((2, 5, 2), (5, 5, 5), (0, 3, 1), (4, 2, 3),
                         (1, 4, 2), (0, 0, 1))


def test_top_confusions_hand_case_with_ties():
  assert plots.top_confusions(LABELS6, PREDS6, 6, 10) == [
      (4, 2, 3), (1, 4, 2), (2, 5, 2), (0, 3, 1)]
  assert plots.top_confusions(LABELS6, PREDS6, 6, 2) == [(4, 2, 3), (1, 4, 2)]
  assert plots.top_confusions(LABELS6, PREDS6, 6, 0) == []
  # Same result whatever the example order.
  perm = np.random.default_rng(0).permutation(len(LABELS6))
  assert plots.top_confusions(LABELS6[perm], PREDS6[perm], 6, 3) == [
      (4, 2, 3), (1, 4, 2), (2, 5, 2)]


def test_top_confusions_ties_sorted_by_true_then_pred():
  labels, preds = _pairs((3, 0, 1), (0, 2, 1), (0, 1, 1), (2, 0, 1), (1, 1, 7))
  assert plots.top_confusions(labels, preds, 4, 10) == [
      (0, 1, 1), (0, 2, 1), (2, 0, 1), (3, 0, 1)]


def test_top_confusions_many_classes_uses_sparse_counting():
  # 5000^2 cells is too many for the dense bincount: the sorting path.
  labels, preds = _pairs((4999, 0, 2), (10, 4000, 2), (7, 7, 3), (0, 4999, 1))
  assert plots.top_confusions(labels, preds, 5000, 5) == [
      (10, 4000, 2), (4999, 0, 2), (0, 4999, 1)]
  assert plots.confusion_classes(labels, preds, 5000, 20) == [10, 4000, 4999, 0]


def test_top_confusions_no_mistakes_and_no_examples():
  assert plots.top_confusions([1, 2, 2], [1, 2, 2], 3, 5) == []
  assert plots.top_confusions(np.array([], np.int32), [], 3, 5) == []


def test_confusion_classes_order_and_cut():
  assert plots.confusion_classes(LABELS6, PREDS6, 6, 4) == [4, 2, 1, 5]
  assert plots.confusion_classes(LABELS6, PREDS6, 6, 3) == [4, 2, 1]
  # The cut can fall inside a pair: its true class comes first.
  assert plots.confusion_classes(LABELS6, PREDS6, 6, 1) == [4]
  assert plots.confusion_classes(LABELS6, PREDS6, 6, 5) == [4, 2, 1, 5, 0]


def test_confusion_classes_small_problem_shows_all_in_id_order():
  assert plots.confusion_classes(LABELS6, PREDS6, 6, 6) == [0, 1, 2, 3, 4, 5]
  assert plots.confusion_classes(LABELS6, PREDS6, 6, 20) == list(range(6))
  # Even without any mistake.
  assert plots.confusion_classes([0, 1], [0, 1], 3, 20) == [0, 1, 2]


def test_confusion_classes_fewer_involved_than_max():
  labels, preds = _pairs((4, 2, 3), (9, 9, 10), (2, 4, 1))
  assert plots.confusion_classes(labels, preds, 30, 20) == [4, 2]
  assert plots.confusion_classes([5, 6], [5, 6], 30, 20) == []


def test_large_random_case_matches_dense_reference():
  rng = np.random.default_rng(0)
  n, k = 50_000, 1000
  labels = rng.integers(0, k, n)
  preds = np.where(rng.random(n) < 0.7, labels, rng.integers(0, k, n))
  # Plant known mistakes so the head of the ranking is unambiguous.
  labels[:40], preds[:40] = 17, 923
  labels[40:70], preds[40:70] = 500, 3

  reference = np.zeros((k, k), np.int64)
  np.add.at(reference, (labels, preds), 1)
  np.fill_diagonal(reference, 0)
  t, p = np.nonzero(reference)
  expected = sorted(zip(t.tolist(), p.tolist(), reference[t, p].tolist()),
                    key=lambda x: (-x[2], x[0], x[1]))[:30]
  top = plots.top_confusions(labels, preds, k, 30)
  assert top == expected
  assert top[:2] == [(17, 923, reference[17, 923]), (500, 3, reference[500, 3])]

  classes = plots.confusion_classes(labels, preds, k, 20)
  assert len(classes) == 20 and len(set(classes)) == 20
  assert classes[:4] == [17, 923, 500, 3]

  names = [f"class {i} " + "with a very long descriptive name" * 3
           for i in range(k)]
  img = plots.confusion_picture(labels, preds, k, class_names=names,
                                title="random")
  _check_image(img)
  assert _has_colour(img, REDS_MAX) and _has_colour(img, DIAGONAL_GREY)


def test_confusion_picture_small_problem():
  labels, preds = _pairs((0, 0, 30), (1, 1, 20), (2, 2, 25), (0, 1, 4),
                         (2, 0, 2), (1, 2, 1))
  img = plots.confusion_picture(labels, preds, 3,
                                class_names=["cat", "dog", "a$b$ c"],
                                title="three classes")
  _check_image(img)
  # The most frequent mistake is filled with the top of the colour scale, the
  # diagonal with the neutral grey.
  assert _has_colour(img, REDS_MAX)
  assert _has_colour(img, DIAGONAL_GREY)


def test_confusion_picture_without_mistakes_says_so():
  for labels, preds in (([0, 1, 2], [0, 1, 2]), ([], [])):
    img = plots.confusion_picture(np.asarray(labels, np.int64), preds, 3)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3
    assert (img.min(axis=-1) < 64).any()  # The message is there.
    # Just black text on white: no colour at all, so no heatmap.
    spread = img.max(axis=-1).astype(int) - img.min(axis=-1)
    assert spread.max() <= 10


@pytest.mark.parametrize("kwargs, culprit", [
    (dict(labels=[0, 1], predictions=[0]), "predictions"),
    (dict(labels=[0, 3]), r"labels\[1\] = 3"),
    (dict(predictions=[-1, 0]), r"predictions\[0\] = -1"),
    (dict(labels=[0.0, 1.0]), "labels must hold integer"),
    (dict(labels=[[0, 1]]), "labels must be a 1-D"),
    (dict(num_classes=0), "num_classes"),
    (dict(class_names=["a", "b"]), "class_names has 2 names"),
    (dict(max_classes=0), "max_classes"),
])
def test_confusion_picture_bad_input_names_the_argument(kwargs, culprit):
  args = dict(labels=[0, 1], predictions=[1, 0], num_classes=3)
  args.update(kwargs)
  with pytest.raises(ValueError, match=culprit):
    plots.confusion_picture(**args)


def test_confusion_helpers_bad_input():
  with pytest.raises(ValueError, match="top_confusions: n"):
    plots.top_confusions([0], [1], 2, -1)
  with pytest.raises(ValueError, match=r"top_confusions: labels\[0\] = 2"):
    plots.top_confusions([2], [1], 2, 1)
  with pytest.raises(ValueError, match="confusion_classes: max_classes"):
    plots.confusion_classes([0], [1], 2, 0)


# ---------------------------------------------------------------------------
# Reliability diagram.
# ---------------------------------------------------------------------------

# Pixel layout of the diagram (plots.reliability_diagram): a 640x600 image;
# the axes span x in [0.12, 0.97] of the width, so confidence v sits at column
# 640 * (0.12 + 0.85 v); the top axes span rows 48 (accuracy 1) to ~406
# (accuracy 0).
def _column(v: float) -> float:
  return 640 * (0.12 + 0.85 * v)


def _row(accuracy: float) -> float:
  return 48 + (1 - accuracy) * 358


def test_reliability_diagram_equal_width_bins():
  lower = np.linspace(0, 0.9, 10)
  acc = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.5, 0.55, 0.6, 0.75, 0.93])
  count = np.array([5, 5, 10, 20, 40, 80, 150, 300, 800, 4000])
  img = plots.reliability_diagram(lower, lower + 0.1, acc, lower + 0.05, count,
                                  title="model", ece=0.0321)
  _check_image(img, max_width=800)
  assert img.shape == (600, 640, 3)
  assert _has_colour(img, BAR_BLUE)


def test_reliability_diagram_empty_bin_is_not_drawn():
  lower = np.array([0.0, 0.25, 0.5, 0.75])
  upper = lower + 0.25
  conf = np.array([0.1, np.nan, 0.6, 0.9])
  acc = np.array([0.2, np.nan, 0.5, 0.85])
  count = np.array([10, 0, 30, 60])
  img = plots.reliability_diagram(lower, upper, acc, conf, count)
  _check_image(img, max_width=800)
  # Whatever an empty bin claims, it does not change the picture...
  acc2, conf2 = acc.copy(), conf.copy()
  acc2[1], conf2[1] = 0.9, 0.3
  same = plots.reliability_diagram(lower, upper, acc2, conf2, count)
  np.testing.assert_array_equal(img, same)
  # ...while the same values in a non-empty bin do.
  count2 = count.copy()
  count2[1] = 5
  other = plots.reliability_diagram(lower, upper, acc2, conf2, count2)
  assert not np.array_equal(img, other)


def test_reliability_diagram_uses_true_bin_edges():
  # Unequal (equal-mass style) bins: one wide bin [0, 0.6] at accuracy 0.5
  # and an empty one [0.6, 1].
  img = plots.reliability_diagram([0.0, 0.6], [0.6, 1.0], [0.5, np.nan],
                                  [0.5, np.nan], [10, 0], ece=0.0)
  blue = np.all(img == np.array(BAR_BLUE, np.uint8), axis=-1)
  cols = np.flatnonzero(blue[350])  # A row through the bar, below the legend.
  assert abs(cols.min() - _column(0.0)) <= 3
  assert abs(cols.max() - _column(0.6)) <= 3
  rows = np.flatnonzero(blue[:, int(_column(0.3))])
  assert abs(rows.min() - _row(0.5)) <= 3
  assert abs(rows.max() - _row(0.0)) <= 3

  # Irregular edges, including a zero-width bin (many equal confidences).
  edges = np.array([0, 0.3, 0.5, 0.62, 0.8, 0.9, 0.97, 0.97, 1.0])
  img = plots.reliability_diagram(
      edges[:-1], edges[1:], [0.2, 0.45, 0.5, 0.7, 0.85, 0.9, 1.0, 0.99],
      [0.2, 0.4, 0.56, 0.71, 0.85, 0.93, 0.97, 0.985], [100] * 8)
  _check_image(img, max_width=800)


def test_reliability_diagram_all_bins_empty():
  img = plots.reliability_diagram([0, 0.5], [0.5, 1], [np.nan] * 2,
                                  [np.nan] * 2, [0, 0], title="empty")
  assert img.shape == (600, 640, 3) and img.dtype == np.uint8
  assert (img.min(axis=-1) < 64).any()  # Axes and title are drawn.
  # No bars (the legend, near the top, may still show the bar colour).
  assert not _has_colour(img[150:], BAR_BLUE)


@pytest.mark.parametrize("change, culprit", [
    (dict(bin_lower=[0.0, 0.5, 0.9]), "bin_upper has 2 values"),
    (dict(bin_lower=[], bin_upper=[], bin_accuracy=[], bin_confidence=[],
          bin_count=[]), "bin_lower is empty"),
    (dict(bin_upper=[0.5, 1.2]), r"bin_upper\[1\] = 1.2"),
    (dict(bin_lower=[-0.1, 0.5]), r"bin_lower\[0\] = -0.1"),
    (dict(bin_lower=[0.0, 0.7], bin_upper=[0.5, 0.6]), r"bin_lower\[1\]"),
    (dict(bin_count=[3, -1]), r"bin_count\[1\] = -1"),
    (dict(bin_accuracy=[0.5, np.nan]), r"bin_accuracy\[1\]"),
    (dict(bin_confidence=[1.5, 0.8]), r"bin_confidence\[0\]"),
    (dict(bin_count=[[3, 4]]), "bin_count must be 1-D"),
    (dict(bin_accuracy=["a", "b"]), "bin_accuracy must be numeric"),
    (dict(ece=float("nan")), "ece"),
])
def test_reliability_diagram_bad_input_names_the_argument(change, culprit):
  args = dict(bin_lower=[0.0, 0.5], bin_upper=[0.5, 1.0],
              bin_accuracy=[0.3, 0.8], bin_confidence=[0.25, 0.85],
              bin_count=[3, 4])
  args.update(change)
  with pytest.raises(ValueError, match=culprit):
    plots.reliability_diagram(**args)
