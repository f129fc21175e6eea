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
    if labels.label is None:
      raise ValueError(f"evaluator {self.name!r}: calibration needs one label per "
                       f"example; {self.label_key!r} holds label sets")
    out, extras = report.score("calibration", topk_ids=arrays["topk_ids"], labels=labels,
                               num_classes=self.collector.num_classes,
                               logits=arrays["logits"], num_bins=self.num_bins)
    if self.diagram:
      from big_vision_like import plots  # pylint: disable=g-import-not-at-top
      bins = extras["bins"]
      out["reliability"] = plots.reliability_diagram(
          bins.lower, bins.upper, bins.accuracy, bins.confidence, bins.count,
          title=f"{self.name}: reliability ({self.num_bins} bins)", ece=out["ece"])
    return out
