"""Classification: images -> logits, trained on dense targets (`labels`).

Losses: `softmax_xent`, `sigmoid_xent` (losses.py), per example, averaged
over the batch. `config.mixup` mixes images and targets of the global batch;
`config.init_head_bias` sets the classifier bias at initialisation (as in
big_vision, e.g. -6.9 = log(1/1000) so that sigmoid training starts at a 1/1000
prior per class). Evaluators get the logits.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from big_vision_like import errors
from big_vision_like import mixup as mixup_lib
from big_vision_like import registry
from big_vision_like import tasks


@registry.TASKS.register("classification")
class Classification(tasks.Task):
  """Images -> logits; dense targets in `labels`."""

  name = "classification"
  model_inputs = ("image",)
  batch_keys = ("image", "labels")

  def __init__(self, config: Any):
    super().__init__(config)
    self.mixup = mixup_lib.from_config(config.get("mixup"))

  def init_params(self, params: Any) -> Any:
    bias = self.config.get("init_head_bias")
    if bias is None:
      return params
    head = params.get("head") if hasattr(params, "get") else None
    if head is None or "bias" not in head:
      raise errors.ConfigError(
          f"config.init_head_bias={bias}: model {self.config.model_name!r} has no "
          f"head/bias parameter (top-level params: {sorted(params)})")
    return {**params, "head": {**head, "bias": jnp.full_like(head["bias"], bias)}}

  def augment(self, batch: dict, base_rng: jax.Array, step: jax.Array) -> dict:
    if self.mixup is None:
      return batch
    images, labels, _, _ = mixup_lib.mix(mixup_lib.step_key(base_rng, step),
                                         batch["image"], batch["labels"], self.mixup)
    return {**batch, "image": images, "labels": labels}

  def make_loss(self, model, mesh, data_axes):
    del mesh, data_axes  # Per-example losses: jit distributes them.
    loss_fn = registry.LOSSES.get(self.config.loss)

    def loss(params, batch, rng):
      logits, _ = model.apply({"params": params}, batch["image"], train=True,
                              rngs={"dropout": rng})
      return jnp.mean(loss_fn(logits, batch["labels"])), {}
    return loss

  def predict(self, model, params, batch: Mapping[str, jax.Array]) -> jax.Array:
    logits, _ = model.apply({"params": params}, batch["image"], train=False)
    return logits

  def represent(self, model, params, batch: Mapping[str, jax.Array]) -> jax.Array:
    """The pre-logits (what the head reads; every model's `head_output` sets them)."""
    _, aux = model.apply({"params": params}, batch["image"], train=False)
    if not isinstance(aux, dict) or "pre_logits" not in aux:
      got = sorted(aux) if isinstance(aux, dict) else type(aux).__name__
      raise ValueError(f"model {self.config.model_name!r} returns no 'pre_logits' in its "
                       f"aux output (got {got}); linear probes need them")
    return aux["pre_logits"]
