"""Multi-label evaluator: ReaL, imagenet2012_multilabel, ImageNet-M, strata, mAP.

Single-label top-1 misjudges models on images with several valid labels;
this evaluator scores the label SETS (definitions in the `scoring` module
docstring). The labels come from

- a set key of the dataset (`set_key="real_label"`): ReaL-style scoring,
  `real@1`, `real@5`, `recall@k`, the count of non-empty sets, and the
  single- vs multi-label strata; `mean_ap=True` adds the multi-label mAP;
- the imagenet2012_multilabel fields (`scheme="shankar"`): problematic
  images skipped, correct ∪ unclear counts, accuracy per image and per
  class, and the raw counts (ImageNet-M: correct out of 68);
- or an external file keyed by file name (`label_file=`: a JSON object,
  CSV, or the ReaL JSON list), e.g. ImageNetV2 multi-labels from a paper.

Label sets are padded to `max_labels` in the input pipeline; a longer set
fails there (nothing is cut off).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np

from big_vision_like import label_sources
from big_vision_like import registry
from big_vision_like.evaluators import base
from big_vision_like.evaluators import classification
from big_vision_like.evaluators import report

_SHANKAR_SETS = ("correct_multi_labels", "unclear_multi_labels")


@registry.EVALUATORS.register("multilabel")
class Evaluator(base.CollectingEvaluator):
  """Scores label sets; see the module docstring."""

  def __init__(self, predict_fn: Callable[[Any, dict], jax.Array], *, data: dict,
               pp: str, batch_size: int, mesh: jax.sharding.Mesh,
               data_axes: tuple[str, ...], name: str = "multilabel",
               scheme: str = "sets", set_key: str = "real_label",
               label_key: str | None = "original_label",
               label_file: str | None = None, prefix: str = "real",
               ks: Sequence[int] = (1, 5), mean_ap: bool = False,
               class_subset: str | Sequence[int] | None = None,
               labels_in_subset: bool = False, **kwargs):
    if scheme not in ("sets", "shankar"):
      raise ValueError(f"scheme must be 'sets' or 'shankar', got {scheme!r}")
    self.scheme, self.prefix, self.ks, self.mean_ap = scheme, prefix, tuple(ks), mean_ap
    self.set_key = set_key
    self.label_key = label_key
    self.external = None
    if label_file is not None:
      self.external = label_sources.load(label_file)
    if scheme == "shankar":
      self.drop_metrics = ("accuracy_per_image", "accuracy_per_class")
      label_key = label_key or "original_label"
      set_keys = _SHANKAR_SETS
      keys = (*set_keys, "is_problematic", label_key)
    else:
      self.drop_metrics = tuple(f"{prefix}@{k}" for k in self.ks)
      set_keys = () if label_file is not None else (set_key,)
      keys = (*set_keys, *((label_key,) if label_key else ()))
    subset = label_sources.resolve_class_subset(class_subset)
    self.labels_in_subset = labels_in_subset and subset is not None
    super().__init__(predict_fn, data=data, pp=pp, batch_size=batch_size, mesh=mesh,
                     data_axes=data_axes, name=name, label_keys=keys, set_keys=set_keys,
                     keep_logits=mean_ap, class_subset=subset,
                     topk=max(max(self.ks), kwargs.pop("topk", 5)), **kwargs)

  def score(self, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    num_classes = self.collector.num_classes
    if self.labels_in_subset and self.label_key:
      arrays = dict(arrays)
      arrays[self.label_key] = classification.to_full_numbering(
          arrays[self.label_key], self.class_subset, self.name)
    if self.scheme == "shankar":
      labels = self.labels(arrays, label_key=self.label_key or "original_label",
                           set_key="correct_multi_labels")
      out, _ = report.score("shankar", topk_ids=arrays["topk_ids"], labels=labels,
                            num_classes=num_classes)
      return out
    if self.external is not None:
      if "file_name" not in arrays:
        raise ValueError(f"evaluator {self.name!r}: label_file needs a dataset with "
                         f"file_name to join on")
      labels = self.external.take(label_sources.join(
          arrays["file_name"], self.external, what=f"evaluator {self.name!r}"))
      if self.label_key:
        labels.label = np.asarray(arrays[self.label_key], np.int32)
    else:
      labels = self.labels(arrays, label_key=self.label_key or "",
                           set_key=self.set_key)
    out, _ = report.score("sets", topk_ids=arrays["topk_ids"], labels=labels,
                          num_classes=num_classes, logits=arrays.get("logits"),
                          ks=self.ks, prefix=self.prefix, mean_ap=self.mean_ap)
    return out
