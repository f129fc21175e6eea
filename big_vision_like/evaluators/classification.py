"""Classification evaluator: top-1/top-5 precision and loss over a whole split.

Every example counts exactly once, whatever the batch size and device count
(padding is masked; see `collect`). Labels are integer class ids (`label`)
or one-hot/multi-hot vectors (`labels`, from the `onehot` pp op); with a
vector, the positive classes are those holding the row's maximum.

Options for robustness and error analysis:

- `class_subset="imagenet_a"|"imagenet_r"|[ids]`: the logits are restricted
  to the subset before the top-k (ImageNet-A/R are 200-class subsets).
  TFDS's imagenet_a/imagenet_r labels use the 1000-class numbering; with
  `labels_in_subset=True` label j instead means the subset's j-th class
  (e.g. after `map_label("imagenet_a")`).
- `per_class=True`: `accuracy_per_class` (mean over classes), the worst
  classes by name (text), a picture of the top confusions, and the per-class
  table as JSON in `{workdir}/per_class/{name}/step_{step}.json`.
- `calibration=True`: also `ece`, `ece_equal_mass`, `nll`, `brier` and the
  reliability diagram (`num_bins`, default 15) from the logits this pass
  collects: the calibration evaluator's numbers without a second pass.
- `reference`, `save_predictions`, ... : see `base`.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from big_vision_like import label_sources
from big_vision_like import registry
from big_vision_like import scoring
from big_vision_like.evaluators import base
from big_vision_like.evaluators import calibration as calibration_lib
from big_vision_like.evaluators import collect
from big_vision_like.evaluators import report


def _loss_fn(loss_name: str, label_key: str) -> Callable:
  loss_fn = registry.LOSSES.get(loss_name)

  def per_example(logits, batch):
    labels = batch[label_key]
    if labels.ndim == 1:
      labels = jax.nn.one_hot(labels, logits.shape[-1])
    return loss_fn(logits, labels).astype(jnp.float32)
  return per_example


@registry.EVALUATORS.register("classification")
class Evaluator(base.CollectingEvaluator):
  """Computes `prec@1`, `prec@5` (if >= 5 classes) and `loss` on one split."""

  def __init__(self, predict_fn: Callable[[Any, dict], jax.Array], *,
               data: dict, pp: str, batch_size: int, mesh: jax.sharding.Mesh,
               data_axes: tuple[str, ...], loss_name: str = "softmax_xent",
               label_key: str = "labels", name: str = "eval",
               class_subset: str | Sequence[int] | None = None,
               labels_in_subset: bool = False, per_class: bool = False,
               class_names: str | Sequence[str] | None = None, worst: int = 10,
               confusion_classes: int = 20, calibration: bool = False,
               num_bins: int = 15, **kwargs):
    if calibration and int(num_bins) < 1:
      raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    self.label_key = label_key
    self.calibration, self.num_bins = calibration, int(num_bins)
    if calibration:
      self.dump_meta = {"num_bins": self.num_bins}
      kwargs["keep_logits"] = True
    self.per_class = per_class
    self.worst = worst
    self.confusion_classes = confusion_classes
    self.class_names_spec = class_names
    subset = label_sources.resolve_class_subset(class_subset)
    if calibration and subset is not None:
      raise ValueError("calibration=True scores the softmax over every class; it cannot "
                       "be combined with class_subset")
    self.labels_in_subset = labels_in_subset and subset is not None
    # A loss over restricted logits would need labels in two numberings;
    # subset evaluators report precision only.
    loss = _loss_fn(loss_name, label_key) if subset is None and loss_name else None
    super().__init__(predict_fn, data=data, pp=pp, batch_size=batch_size, mesh=mesh,
                     data_axes=data_axes, name=name, label_keys=(label_key,),
                     class_subset=subset, per_example_loss=loss, **kwargs)

  def score(self, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    arrays = dict(arrays)
    if self.labels_in_subset:
      arrays[self.label_key] = to_full_numbering(arrays[self.label_key],
                                                 self.class_subset, self.name)
    labels = self.labels(arrays, label_key=self.label_key, set_key="")
    num_classes = self.collector.num_classes
    ks = (1, 5) if (len(self.class_subset or []) or num_classes) >= 5 else (1,)
    out, _ = report.score("classification", topk_ids=arrays["topk_ids"], labels=labels,
                          num_classes=num_classes, loss=arrays.get("loss"), ks=ks)
    if self.per_class:
      out.update(self._per_class(arrays["topk_ids"][:, 0], labels, num_classes))
    if self.calibration:
      cal = calibration_lib.metrics(arrays, labels, num_classes, num_bins=self.num_bins,
                                    diagram=True, where=self.name, label_key=self.label_key)
      # `accuracy` is prec@1 again, `num_bins` an option (kept in the dump's metadata).
      out.update({k: v for k, v in cal.items() if k not in ("accuracy", "num_bins")})
    return out

  def _per_class(self, top1: np.ndarray, labels, num_classes: int) -> dict[str, Any]:
    if labels.label is None:
      raise ValueError(f"evaluator {self.name!r}: per_class needs one label per "
                       f"example; {self.label_key!r} holds label sets")
    from big_vision_like import plots  # pylint: disable=g-import-not-at-top
    names = collect.class_names(self.class_names_spec, num_classes, self.data)
    acc, count = scoring.per_class_accuracy(top1, labels.label, num_classes)
    present = count > 0
    worst = scoring.worst_classes(acc, count, names, self.worst)
    out: dict[str, Any] = {
        "accuracy_per_class": scoring.mean(acc[present]),
        "worst_class_accuracy": float(np.nanmin(acc)),
        "worst_classes": "\n".join(
            f"{i + 1}. {name} (class {c}): {a:.1%} of {n}"
            for i, (c, name, a, n) in enumerate(worst)),
        "confusions": plots.confusion_picture(
            labels.label, top1, num_classes, class_names=names,
            max_classes=self.confusion_classes, title=f"{self.name}: top confusions"),
    }
    self._last_per_class = [
        {"class": c, "name": names[c], "accuracy": None if np.isnan(acc[c]) else float(acc[c]),
         "count": int(count[c])} for c in range(num_classes)]
    return out

  def run(self, params: Any, step: int | None = None) -> dict[str, Any]:
    out = super().run(params, step)
    if self.per_class and self.workdir is not None and jax.process_index() == 0:
      path = epath.Path(self.workdir) / "per_class" / self.name / f"step_{step or 0:08d}.json"
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(json.dumps(self._last_per_class, indent=1))
    return out


def to_full_numbering(label: np.ndarray, subset: Sequence[int], where: str) -> np.ndarray:
  """Subset-numbered labels (0..199 for A/R) -> the model's numbering."""
  label = np.asarray(label)
  if label.ndim != 1:
    raise ValueError(f"evaluator {where!r}: labels_in_subset needs integer labels, "
                     f"got shape {label.shape}")
  scoring.check_ids(label, len(subset), f"evaluator {where!r}: subset label")
  return np.asarray(subset, np.int32)[label]
