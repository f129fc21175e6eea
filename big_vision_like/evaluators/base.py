"""What every classification-style evaluator shares: collect, score, dump.

Subclasses say which label keys they need and turn the gathered arrays into
metrics with `report.score`. The base handles the options common to all:

- `save_predictions=True` writes `{workdir}/predictions/{name}/step_{step}.npz`
  (file_name, labels, top-k ids and scores; logits too with
  `save_logits=True`), the input of `tools/score_predictions`;
- `reference="val"` makes the train loop also report this evaluator's drop
  relative to evaluator `val` at the same step (`drop/{metric}`);
- `skip_corrupt` counts skipped records.

`run(params, step)` returns {key: value}: floats are scalars, [H, W, 3]
uint8 arrays are images and strings are text for TensorBoard.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from etils import epath

from big_vision_like import label_sources
from big_vision_like.evaluators import collect


class CollectingEvaluator:
  """Base class; see the module docstring."""

  # Metrics a `reference` drop is reported for (subclasses override).
  drop_metrics: tuple[str, ...] = ("prec@1", "prec@5")
  # Scoring options saved with a dump, so that re-scoring it uses them too.
  dump_meta: dict[str, Any] = {}

  def __init__(self, predict_fn: Callable[[Any, dict], jax.Array], *, data: dict,
               pp: str, batch_size: int, mesh: jax.sharding.Mesh,
               data_axes: tuple[str, ...], name: str = "eval",
               workdir: str | None = None, cache: bool = True,
               skip_corrupt: bool = False, save_predictions: bool = False,
               save_logits: bool = False, topk: int = 5,
               reference: str | None = None, max_name_bytes: int = 256,
               label_keys: Sequence[str] = (), set_keys: Sequence[str] = (),
               max_labels: int = 32, keep_logits: bool = False,
               class_subset: Sequence[int] | None = None,
               per_example_loss: Callable | None = None):
    self.name = name
    self.data = dict(data)
    self.workdir = workdir
    self.reference = reference
    self.save_predictions = save_predictions
    self.save_logits = save_logits
    self.skip_corrupt = skip_corrupt
    self.class_subset = class_subset
    if save_predictions and workdir is None:
      raise ValueError(f"evaluator {name!r}: save_predictions needs a workdir")
    self.collector = collect.Collector(
        predict_fn, data=data, pp=pp, batch_size=batch_size, mesh=mesh,
        data_axes=data_axes, name=name, label_keys=label_keys, set_keys=set_keys,
        max_labels=max_labels, topk=topk, keep_logits=keep_logits or save_logits,
        class_subset=class_subset, per_example_loss=per_example_loss,
        cache=cache, skip_corrupt=skip_corrupt, max_name_bytes=max_name_bytes)

  def score(self, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    raise NotImplementedError

  def labels(self, arrays: dict[str, np.ndarray], **kw) -> label_sources.LabelSource:
    return label_sources.from_arrays(arrays, f"evaluator {self.name!r}", **kw)

  def run(self, params: Any, step: int | None = None) -> dict[str, Any]:
    arrays = self.collector.run(params)
    out = self.score(arrays)
    if self.save_predictions:
      path = (epath.Path(self.workdir) / "predictions" / self.name
              / f"step_{step or 0:08d}.npz")
      dump = {k: v for k, v in arrays.items() if k != "logits" or self.save_logits}
      collect.save_predictions(
          path, dump, evaluator=self.name, step=step or 0,
          num_classes=self.collector.num_classes,
          class_subset=np.asarray(self.class_subset or [], np.int32), **self.dump_meta)
    if self.skip_corrupt:  # This process's count; bad records are not scored.
      out["skipped_records"] = float(self.collector.batches.skipped)
    return out
