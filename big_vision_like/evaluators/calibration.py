"""Calibration evaluator: ECE (equal-width and equal-mass bins), NLL, Brier.

How far a classifier's top-1 confidence is from its accuracy, from the
softmax of the logits (definitions in `scoring.calibration`). Also writes a
reliability diagram of the equal-width bins to TensorBoard (`reliability`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from big_vision_like import registry
from big_vision_like.evaluators import base
from big_vision_like.evaluators import report


@registry.EVALUATORS.register("calibration")
class Evaluator(base.CollectingEvaluator):
  """`ece`, `ece_equal_mass`, `nll`, `brier`, `accuracy`, `confidence`."""

  drop_metrics = ()

  def __init__(self, predict_fn: Callable[[Any, dict], jax.Array], *, data: dict,
               pp: str, batch_size: int, mesh: jax.sharding.Mesh,
               data_axes: tuple[str, ...], name: str = "calibration",
               label_key: str = "label", num_bins: int = 15,
               diagram: bool = True, **kwargs):
    if int(num_bins) < 1:
      raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    self.label_key, self.num_bins, self.diagram = label_key, int(num_bins), diagram
    self.dump_meta = {"num_bins": self.num_bins}
    super().__init__(predict_fn, data=data, pp=pp, batch_size=batch_size, mesh=mesh,
                     data_axes=data_axes, name=name, label_keys=(label_key,),
                     keep_logits=True, **kwargs)

  def score(self, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    labels = self.labels(arrays, label_key=self.label_key, set_key="")
    return metrics(arrays, labels, self.collector.num_classes, num_bins=self.num_bins,
                   diagram=self.diagram, where=self.name, label_key=self.label_key)


def metrics(arrays: dict[str, np.ndarray], labels, num_classes: int, *, num_bins: int,
            diagram: bool, where: str, label_key: str) -> dict[str, Any]:
  """ECE, NLL, Brier (+ the reliability picture) from collected logits.

  Shared with the classification evaluator's `calibration=True`, which scores
  the logits it already collected instead of running the split a second time.
  """
  if labels.label is None:
    raise ValueError(f"evaluator {where!r}: calibration needs one label per "
                     f"example; {label_key!r} holds label sets")
  out, extras = report.score("calibration", topk_ids=arrays["topk_ids"], labels=labels,
                             num_classes=num_classes, logits=arrays["logits"],
                             num_bins=num_bins)
  if diagram:
    from big_vision_like import plots  # pylint: disable=g-import-not-at-top
    bins = extras["bins"]
    out["reliability"] = plots.reliability_diagram(
        bins.lower, bins.upper, bins.accuracy, bins.confidence, bins.count,
        title=f"{where}: reliability ({num_bins} bins)", ece=out["ece"])
  return out
