"""Which metrics a set of predictions and labels gets, in one place.

Both the in-loop evaluators and `tools/score_predictions` go through
`score()`, so a metric cannot be computed one way in training and another way
offline. `kind` picks the metric family:

- "classification": `prec@k` against the single label (or the positive
  classes of a label vector), and the mean `loss` when given.
- "sets": ReaL-style label sets (`{prefix}@k`, recall@k, strata, optional mAP).
- "shankar": imagenet2012_multilabel / ImageNet-M.
- "calibration": ECE, NLL, Brier from logits.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from big_vision_like import label_sources
from big_vision_like import scoring

KINDS = ("classification", "sets", "shankar", "calibration")


def score(kind: str, *, topk_ids: np.ndarray, labels: label_sources.LabelSource,
          num_classes: int | None = None, logits: np.ndarray | None = None,
          loss: np.ndarray | None = None, ks: Sequence[int] = (1, 5),
          prefix: str = "real", mean_ap: bool = False, num_bins: int = 15
          ) -> tuple[dict[str, float], dict]:
  """(metrics, extras) for aligned predictions and labels.

  extras holds non-scalar results: the reliability bins ("bins") for
  calibration.
  """
  where = labels.origin
  if num_classes is not None:
    labels.check_ids(num_classes)
    scoring.check_ids(topk_ids, num_classes, f"{where}: predicted ids")
  extras: dict = {}
  if kind == "classification":
    truth = labels.label if labels.label is not None else labels.sets
    if truth is None:
      raise ValueError(f"{where}: classification needs labels")
    out = scoring.topk_accuracy(topk_ids, truth, ks)
    if loss is not None:
      out["loss"] = scoring.mean(loss)
    out["num_examples"] = float(len(topk_ids))
  elif kind == "sets":
    if labels.sets is None:
      raise ValueError(f"{where}: no label sets to score")
    out = scoring.set_accuracy(topk_ids, labels.sets, prefix=prefix, ks=ks,
                               label=labels.label)
    if mean_ap:
      if logits is None:
        raise ValueError(f"{where}: mAP needs logits (save_logits / a logits file)")
      out["mAP"] = scoring.mean_average_precision(logits, labels.sets)
  elif kind == "shankar":
    if labels.unclear is None or labels.label is None:
      raise ValueError(f"{where}: Shankar et al. scoring needs correct/unclear sets, "
                       f"is_problematic and the original label")
    out = scoring.shankar_accuracy(topk_ids[:, :1], labels.sets, labels.unclear,
                                   labels.problematic, labels.label,
                                   num_classes or int(labels.label.max()) + 1)
  elif kind == "calibration":
    if logits is None or labels.label is None:
      raise ValueError(f"{where}: calibration needs logits and single labels")
    out, extras["bins"] = scoring.calibration(logits, labels.label, num_bins)
  else:
    raise ValueError(f"unknown scoring kind {kind!r}; known: {KINDS}")
  return out, extras
