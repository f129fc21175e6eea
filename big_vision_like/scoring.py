"""Host-side scoring of classifier predictions, shared by evaluators and tools.

The in-loop evaluators and `tools/score_predictions` call the same functions
on the same per-example arrays, so an offline re-score of a prediction dump
reproduces the in-loop numbers bit for bit.

Metric definitions (the project's reference for them):

- `prec@k`: the fraction of examples whose label is among the k highest scores.
- ReaL (`real@1`, `real@5`): each validation image has a set of labels (TFDS
  `imagenet2012_real`'s `real_label`, or the raw JSON list of 50,000 lists
  where index i is `ILSVRC2012_val_{i+1:08d}.JPEG`); images with an empty set
  do not count (46,837 of the 50,000 do).
- `imagenet2012_multilabel` (Shankar et al. 2020): `is_problematic` images
  are skipped; a top-1 prediction is correct when it is in the correct or
  unclear labels; accuracy per image and per class (by the original label);
  ImageNet-M counts the correct ones of its 68 images.
- Single- vs multi-label strata: accuracy on the images with exactly one
  valid label and on those with more, and the multi-label fraction; label
  sets from TFDS or an external file keyed by file_name.
- ImageNet-A and -R: the 1000 logits are restricted to the 200-class subset
  before the argmax; ImageNetV2 (three variants) and Sketch use all 1000.
- Calibration: ECE over the top-1 confidence (equal-width and equal-mass
  bins), NLL and Brier score.
- External labels join on `file_name`, never on position (ImageNet val
  exists in three different orders).

Conventions of this module:

- Predictions are top-k class ids per example, best first. Ties between
  equal scores go to the LOWER class id (what `jax.lax.top_k` does on every
  backend); `top_k` below computes the same from logits.
- Label sets are int arrays [N, L] padded with -1 (`pad_sets`). An example is
  correct@k when one of its top-k ids is in its set. Examples with an EMPTY
  set are left out of numerator and denominator (ImageNet ReaL).
- Means of per-example floats use `math.fsum` (exactly rounded), so they do
  not depend on the order of the examples.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Rows per jitted call when computing from logits; fixed so that every row
# goes through the same compiled function whatever N is.
_CHUNK = 2048


def mean(x: np.ndarray) -> float:
  x = np.asarray(x, np.float64).ravel()
  return math.fsum(x) / len(x) if len(x) else float("nan")


def _cpu():
  return jax.local_devices(backend="cpu")[0]


def _chunked(fn, *arrays: np.ndarray) -> list[np.ndarray]:
  """Runs `fn` over row chunks of a fixed size on the host CPU backend."""
  n = len(arrays[0])
  outs = []
  for start in range(0, max(n, 1), _CHUNK):
    parts = []
    for a in arrays:
      part = a[start:start + _CHUNK]
      if len(part) < _CHUNK:  # pad so the compiled shape never changes
        part = np.concatenate(
            [part, np.zeros((_CHUNK - len(part),) + a.shape[1:], a.dtype)])
      parts.append(jax.device_put(part, _cpu()))
    result = fn(*parts)
    outs.append([np.asarray(r)[:max(0, min(_CHUNK, n - start))] for r in result])
  return [np.concatenate(cols) for cols in zip(*outs)]


@functools.partial(jax.jit, static_argnums=1)
def _top_k(logits, k):
  return jax.lax.top_k(logits.astype(jnp.float32), k)


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids [N, k] int32, scores [N, k] float32), best first, ties to lower ids."""
  logits = np.asarray(logits)
  if logits.ndim != 2:
    raise ValueError(f"logits must be [examples, classes], got shape {logits.shape}")
  k = min(k, logits.shape[1])
  scores, ids = _chunked(lambda x: _top_k(x, k), logits)
  return ids.astype(np.int32), scores.astype(np.float32)


def check_finite(logits: np.ndarray, where: str) -> None:
  bad = ~np.isfinite(logits).all(axis=-1)
  if bad.any():
    raise ValueError(f"{where}: {int(bad.sum())} examples have NaN/inf logits "
                     f"(first rows {np.flatnonzero(bad)[:5].tolist()}); "
                     f"refusing to score them")


# --------------------------------------------------------------------------
# Label sets.


def pad_sets(sets: Sequence[Sequence[int]], width: int | None = None) -> np.ndarray:
  """Python lists of ids -> [N, L] int32 padded with -1 (L >= 1)."""
  longest = max((len(s) for s in sets), default=0)
  width = max(1, longest if width is None else width)
  if longest > width:
    raise ValueError(f"a label set has {longest} labels, more than width {width}")
  out = np.full((len(sets), width), -1, np.int32)
  for i, s in enumerate(sets):
    out[i, :len(s)] = s
  return out


def sets_from_vectors(labels: np.ndarray) -> np.ndarray:
  """Multi-hot/one-hot (possibly smoothed) vectors [N, C] -> padded sets.

  The positive classes of a row are those holding the row's maximum, when
  that maximum is > 0: a multi-hot row gives all its ones, a label-smoothed
  one-hot row gives its one true class, an all-zero row an empty set.
  """
  labels = np.asarray(labels)
  top = labels.max(axis=1, keepdims=True)
  positive = (labels == top) & (top > 0)
  width = max(1, int(positive.sum(1).max(initial=0)))
  order = np.argsort(~positive, axis=1, kind="stable")[:, :width]
  return np.where(np.take_along_axis(positive, order, 1), order, -1).astype(np.int32)


def merge_sets(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Union of two padded set arrays (duplicates do no harm to the metrics)."""
  return np.concatenate([a, b], axis=1)


def set_sizes(sets: np.ndarray) -> np.ndarray:
  """Number of distinct valid ids per row."""
  s = np.sort(sets, axis=1)
  distinct = (s >= 0) & np.concatenate(
      [np.ones((len(s), 1), bool), s[:, 1:] != s[:, :-1]], axis=1)
  return distinct.sum(1)


def hits(topk_ids: np.ndarray, sets: np.ndarray, k: int) -> np.ndarray:
  """[N] bool: one of the first k predicted ids is in the example's set."""
  top = topk_ids[:, :k, None]
  return ((top == sets[:, None, :]) & (top >= 0)).any(axis=(1, 2))


def check_ids(ids: np.ndarray, num_classes: int, what: str) -> None:
  """Ids must be in [0, num_classes) (-1 allowed as set padding)."""
  ids = np.asarray(ids)
  bad = (ids >= num_classes) | (ids < -1)
  if ids.size and bad.any():
    row = int(np.flatnonzero(bad.reshape(len(ids), -1).any(1))[0])
    raise ValueError(f"{what}: class id {int(ids[bad][0])} (row {row}) is out of "
                     f"range [0, {num_classes})")


# --------------------------------------------------------------------------
# Metrics. Each returns {name: float}; counts are floats too (TensorBoard).


def topk_accuracy(topk_ids: np.ndarray, label: np.ndarray,
                  ks: Sequence[int] = (1, 5), prefix: str = "prec") -> dict[str, float]:
  """`prec@k`: the label (or one of a -1 padded set [N, L]) is in the top k.

  Only k up to the predicted width are reported.
  """
  label = np.asarray(label, np.int32)
  sets = label.reshape(len(label), -1)
  return {f"{prefix}@{k}": mean(hits(topk_ids, sets, k))
          for k in ks if k <= topk_ids.shape[1]}


def set_accuracy(topk_ids: np.ndarray, sets: np.ndarray, *, prefix: str = "real",
                 ks: Sequence[int] = (1, 5),
                 label: np.ndarray | None = None) -> dict[str, float]:
  """ReaL-style scores of label sets, with single/multi-label strata.

  - `{prefix}@k`: correct@k over examples with a non-empty set;
    `num_counted` of them, `num_empty` left out.
  - `recall@k`: mean over counted examples of |top-k ∩ set| / |set|.
  - Strata ("Re-assessing ImageNet"): `multi_label_fraction` of counted
    examples with more than one valid label, and `single/{prefix}@1`,
    `multi/{prefix}@1` on each stratum; with the original single `label`,
    also `single/prec@1` and `multi/prec@1` (the single-label top-1 that
    under-rates multi-label images).
  """
  sizes = set_sizes(sets)
  counted = sizes > 0
  out: dict[str, float] = {"num_counted": float(counted.sum()),
                           "num_empty": float((~counted).sum())}
  if not counted.any():
    raise ValueError("every label set is empty: nothing to score")
  width = topk_ids.shape[1]
  for k in ks:
    if k <= width:
      out[f"{prefix}@{k}"] = mean(hits(topk_ids, sets, k)[counted])
  for k in ks:
    if k <= width:
      top = topk_ids[:, :k]
      found = np.zeros(len(sets), np.int64)
      for j in range(k):  # distinct predicted ids (top-k ids are distinct)
        found += ((top[:, j:j + 1] == sets) & (top[:, j:j + 1] >= 0)).any(1)
      out[f"recall@{k}"] = mean(found[counted] / sizes[counted])
  hit1 = hits(topk_ids, sets, 1)
  single, multi = sizes == 1, sizes > 1
  out["multi_label_fraction"] = float(multi.sum()) / float(counted.sum())
  out["num_single"], out["num_multi"] = float(single.sum()), float(multi.sum())
  orig = None if label is None else hits(topk_ids, np.asarray(label).reshape(-1, 1), 1)
  for stratum, mask in (("single", single), ("multi", multi)):
    if mask.any():  # an empty stratum has no accuracy (no key, not a 0)
      out[f"{stratum}/{prefix}@1"] = mean(hit1[mask])
      if orig is not None:
        out[f"{stratum}/prec@1"] = mean(orig[mask])
  return out


def shankar_accuracy(top1: np.ndarray, correct: np.ndarray, unclear: np.ndarray,
                     problematic: np.ndarray, original_label: np.ndarray,
                     num_classes: int) -> dict[str, float]:
  """imagenet2012_multilabel / ImageNet-M (Shankar et al. 2020).

  `is_problematic` examples are skipped; a top-1 prediction is correct when
  it is in correct ∪ unclear. `accuracy_per_image` averages over kept
  examples, `accuracy_per_class` first within each original class, then
  over the classes that have kept examples. `num_correct` / `num_images`
  are the raw counts (ImageNet-M: correct out of 68).
  """
  keep = ~np.asarray(problematic, bool)
  if not keep.any():
    raise ValueError("every example is marked is_problematic: nothing to score")
  ok = hits(np.asarray(top1).reshape(len(keep), -1)[:, :1],
            merge_sets(correct, unclear), 1)[keep]
  label = np.asarray(original_label)[keep]
  count = np.bincount(label, minlength=num_classes)
  right = np.bincount(label, weights=ok.astype(np.float64), minlength=num_classes)
  present = count > 0
  return {"accuracy_per_image": mean(ok),
          "accuracy_per_class": mean(right[present] / count[present]),
          "num_correct": float(ok.sum()), "num_images": float(keep.sum()),
          "num_problematic": float((~keep).sum())}


def restrict_topk(topk_ids: np.ndarray, subset: Sequence[int]) -> np.ndarray:
  """Ranking restricted to `subset` from a full top-k ranking.

  Keeps, in order, the predicted ids that belong to the subset (-1 padded).
  Exact for the first kept position of each example; an example whose top-k
  holds no subset class cannot be scored without logits (error).
  """
  inside = np.isin(topk_ids, np.asarray(subset))
  none = ~inside.any(1)
  if none.any():
    raise ValueError(f"{int(none.sum())} examples have no class of the subset in their "
                     f"top-{topk_ids.shape[1]} predictions; restricting needs logits")
  order = np.argsort(~inside, axis=1, kind="stable")
  kept = np.take_along_axis(topk_ids, order, 1)
  return np.where(np.take_along_axis(inside, order, 1), kept, -1).astype(np.int32)


def subset_top_k(logits: np.ndarray, subset: Sequence[int], k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """top_k over the subset's logits only, ids in the full numbering.

  Ties go to the lower class id whatever the order of `subset`.
  """
  subset = np.sort(np.asarray(subset))
  ids, scores = top_k(np.asarray(logits)[:, subset], k)
  return subset[ids].astype(np.int32), scores


@jax.jit
def _prob_stats(logits, label):
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  p = jnp.exp(logp)
  conf = p.max(-1)
  pred = jnp.argmax(logits, axis=-1)  # first maximum: the top_k convention
  p_true = jnp.take_along_axis(p, label[:, None], 1)[:, 0]
  nll = -jnp.take_along_axis(logp, label[:, None], 1)[:, 0]
  brier = (p * p).sum(-1) - 2 * p_true + 1
  return conf, pred, nll, brier


@dataclasses.dataclass
class ReliabilityBins:
  lower: np.ndarray
  upper: np.ndarray
  accuracy: np.ndarray    # NaN for an empty bin
  confidence: np.ndarray  # NaN for an empty bin
  count: np.ndarray


def _bin_stats(conf, correct, groups, lower, upper) -> tuple[float, ReliabilityBins]:
  n = len(conf)
  acc = np.full(len(groups), np.nan)
  mean_conf = np.full(len(groups), np.nan)
  count = np.zeros(len(groups), np.int64)
  gaps = []
  for b, idx in enumerate(groups):
    if len(idx):
      count[b] = len(idx)
      acc[b], mean_conf[b] = mean(correct[idx]), mean(conf[idx])
      gaps.append(len(idx) / n * abs(acc[b] - mean_conf[b]))
  return math.fsum(gaps), ReliabilityBins(np.asarray(lower, np.float64),
                                          np.asarray(upper, np.float64),
                                          acc, mean_conf, count)


def calibration(logits: np.ndarray, label: np.ndarray, num_bins: int = 15
                ) -> tuple[dict[str, float], ReliabilityBins]:
  """ECE (equal-width and equal-mass bins), NLL and Brier of softmax(logits).

  Top-1 confidence c = max softmax; an example is correct when argmax
  (ties: lower id) equals `label`. Equal-width bin m holds c in
  (m/M, (m+1)/M] (bin 0 also holds 0). Equal-mass bins cut the examples
  sorted by confidence (stable) into M runs whose sizes differ by at most
  one, larger runs first. ECE = sum over bins of |bin| / N * |acc - conf|.
  NLL = mean -log p(label); Brier = mean sum_c (p_c - onehot_c)^2.
  Returns the scalars and the equal-width bins (for the reliability diagram).
  """
  if num_bins < 1:
    raise ValueError(f"num_bins must be >= 1, got {num_bins}")
  label = np.asarray(label, np.int32)
  logits = np.asarray(logits)
  check_finite(logits, "calibration")
  if (label < 0).any():
    raise ValueError(f"calibration: label {int(label[label < 0][0])} is negative")
  check_ids(label, logits.shape[1], "calibration: label")
  conf, pred, nll, brier = _chunked(_prob_stats, logits, label)
  correct = (pred == label).astype(np.float64)
  conf64 = conf.astype(np.float64)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  which = np.searchsorted(edges[1:-1], conf64, side="left")
  groups = [np.flatnonzero(which == b) for b in range(num_bins)]
  ece, bins = _bin_stats(conf64, correct, groups, edges[:-1], edges[1:])
  order = np.argsort(conf64, kind="stable")
  mass_groups = np.array_split(order, num_bins)
  ece_mass, _ = _bin_stats(conf64, correct, mass_groups,
                           [conf64[g[0]] if len(g) else np.nan for g in mass_groups],
                           [conf64[g[-1]] if len(g) else np.nan for g in mass_groups])
  return {"ece": ece, "ece_equal_mass": ece_mass, "nll": mean(nll),
          "brier": mean(brier), "accuracy": mean(correct),
          "confidence": mean(conf64), "num_bins": float(num_bins)}, bins


def per_class_accuracy(top1: np.ndarray, label: np.ndarray, num_classes: int
                       ) -> tuple[np.ndarray, np.ndarray]:
  """(accuracy [C] with NaN for classes without examples, count [C])."""
  label = np.asarray(label)
  check_ids(label, num_classes, "per-class accuracy: label")
  if (label < 0).any():
    raise ValueError(f"per-class accuracy: label {int(label[label < 0][0])} is negative")
  count = np.bincount(label, minlength=num_classes)
  right = np.bincount(label, weights=(np.asarray(top1).ravel() == label).astype(np.float64),
                      minlength=num_classes)
  with np.errstate(invalid="ignore", divide="ignore"):
    acc = np.where(count > 0, right / np.maximum(count, 1), np.nan)
  return acc, count


def worst_classes(acc: np.ndarray, count: np.ndarray, names: Sequence[str], n: int = 10
                  ) -> list[tuple[int, str, float, int]]:
  """The n lowest-accuracy classes with examples: (id, name, accuracy, count).

  Ties: more examples first (a 0% class of 50 images is worse news than
  one of 2), then lower id.
  """
  present = np.flatnonzero(count > 0)
  order = sorted(present, key=lambda c: (acc[c], -count[c], c))[:n]
  return [(int(c), str(names[c]), float(acc[c]), int(count[c])) for c in order]


def mean_average_precision(scores: np.ndarray, sets: np.ndarray) -> float:
  """Mean over classes (with >= 1 positive) of average precision.

  AP of a class ranks all examples by that class's score; with ties, every
  tied group is one threshold: AP = sum over thresholds of
  (recall gained) * (precision at that threshold).
  """
  scores = np.asarray(scores)
  n, num_classes = scores.shape
  positive = np.zeros((n, num_classes), bool)
  rows = np.repeat(np.arange(n), sets.shape[1])
  flat = sets.ravel()
  positive[rows[flat >= 0], flat[flat >= 0]] = True
  aps = []
  for start in range(0, num_classes, 64):
    s = scores[:, start:start + 64]
    y = positive[:, start:start + 64]
    order = np.argsort(-s, axis=0, kind="stable")
    s_sorted = np.take_along_axis(s, order, 0)
    y_sorted = np.take_along_axis(y, order, 0)
    tp = np.cumsum(y_sorted, axis=0)
    # The last row of each run of equal scores closes a threshold.
    last = np.ones_like(s_sorted, bool)
    last[:-1] = s_sorted[:-1] != s_sorted[1:]
    for c in range(s.shape[1]):
      total = tp[-1, c]
      if total == 0:
        continue
      ends = np.flatnonzero(last[:, c])
      tps = tp[ends, c].astype(np.float64)
      gained = np.diff(np.concatenate([[0.0], tps]))
      aps.append(math.fsum(gained * tps / (ends + 1)) / total)
  if not aps:
    raise ValueError("no class has a positive example: mAP is undefined")
  return math.fsum(aps) / len(aps)
