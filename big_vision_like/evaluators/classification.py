"""Classification evaluator: top-1/top-5 precision and loss over a whole split.

Every example counts exactly once, whatever the batch size and device count:
the input pipeline pads the last batch and marks real examples in `_mask`;
the per-example quantities are multiplied by the mask and summed over the
global batch inside one jitted function, and only the final sums are
fetched to the host.

Labels are one-hot/multi-hot vectors (`labels`, from the `onehot` pp op) or
integer class ids (e.g. `label`); with a label vector, a prediction is
correct@k when any of its top-k classes has a positive label.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from big_vision_like import registry
from big_vision_like import sharding as sharding_lib
from big_vision_like.data import input_pipeline


def correct_at_k(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """1.0 where one of the top-k classes is a positive label, else 0.0. [B]."""
  if labels.ndim == 1:
    labels = jax.nn.one_hot(labels, logits.shape[-1])
  _, top = jax.lax.top_k(logits, k)
  hit = jnp.take_along_axis(labels, top, axis=-1) > 0
  return jnp.any(hit, axis=-1).astype(jnp.float32)


@registry.EVALUATORS.register("classification")
class Evaluator:
  """Computes `prec@1`, `prec@5` (if >= 5 classes) and `loss` on one split."""

  def __init__(self, predict_fn: Callable[[Any, dict], jax.Array], *,
               data: dict, pp: str, batch_size: int, mesh: jax.sharding.Mesh,
               data_axes: tuple[str, ...], loss_name: str = "softmax_xent",
               label_key: str = "labels", cache: bool = True,
               skip_corrupt: bool = False, name: str = "eval"):
    self.name = name
    self.label_key = label_key
    # Any batch size works: round up to a multiple of the data-parallel devices
    # (the padding is masked out, so the metrics do not change).
    dp = sharding_lib.data_parallel_size(mesh, data_axes)
    multiple = dp * jax.process_count() // math.gcd(dp, jax.process_count())
    batch_size = -(-batch_size // multiple) * multiple
    self.batches, self.num_batches = input_pipeline.make_eval_iterator(
        dict(data), pp, batch_size, cache=cache, skip_corrupt=skip_corrupt)
    self.skip_corrupt = skip_corrupt
    self.sharding = sharding_lib.batch_sharding(mesh, data_axes)
    loss_fn = registry.LOSSES.get(loss_name)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def batch_sums(params, batch):
      logits = predict_fn(params, batch)
      labels = batch[label_key]
      if labels.ndim == 1 and loss_name == "softmax_xent":
        onehot = jax.nn.one_hot(labels, logits.shape[-1])
      else:
        onehot = labels
      mask = batch["_mask"].astype(jnp.float32)
      new = {"count": mask.sum(),
             "loss": (loss_fn(logits, onehot) * mask).sum(),
             "prec@1": (correct_at_k(logits, labels, 1) * mask).sum()}
      if logits.shape[-1] >= 5:
        new["prec@5"] = (correct_at_k(logits, labels, 5) * mask).sum()
      return new

    # One compiled step for every batch; the running sums start from zeros
    # shaped by tracing (not compiling) the same function.
    self._batch_sums = batch_sums
    self._replicated = replicated
    self._step = jax.jit(
        lambda p, b, sums: jax.tree.map(jnp.add, sums, batch_sums(p, b)),
        out_shardings=replicated, donate_argnums=2)

  def run(self, params: Any) -> dict[str, float]:
    """Evaluates `params` on the whole split; returns `{metric: value}`."""
    sums = None
    seen = 0
    for batch in self.batches:
      if self.label_key not in batch:
        raise KeyError(f"evaluator {self.name!r}: pp output has no {self.label_key!r} "
                       f"(keys: {sorted(batch)}); set label_key or fix the pp string")
      batch, _ = input_pipeline.split_host_keys(batch)  # e.g. file_name
      batch = sharding_lib.put_process_local_batch(batch, self.sharding)
      if sums is None:
        shapes = jax.eval_shape(self._batch_sums, params, batch)
        sums = jax.tree.map(
            lambda x: jax.device_put(jnp.zeros(x.shape, x.dtype), self._replicated), shapes)
      sums = self._step(params, batch, sums)
      seen += 1
    if seen != self.num_batches:
      raise RuntimeError(f"evaluator {self.name!r}: expected {self.num_batches} batches, "
                         f"got {seen}")
    sums = jax.tree.map(float, sharding_lib.to_host(sums))
    count = sums.pop("count")
    if count == 0:
      raise ValueError(f"evaluator {self.name!r}: the split has no examples")
    out = {k: v / count for k, v in sums.items()}
    out["num_examples"] = count
    if self.skip_corrupt:  # This process's count; bad records are not scored.
      out["skipped_records"] = self.batches.skipped
    return out
