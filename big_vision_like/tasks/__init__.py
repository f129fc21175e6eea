"""Tasks: what a model is trained to do, chosen by `config.task` (or the model).

The train loop, the evaluation entry point and the tools are the same for
every task; what differs lives in a `Task`:

- which batch keys the model reads (`model_inputs`) and which the training
  pp must produce (`batch_keys`);
- the loss and the metrics logged with it, from `config.loss` (one loss
  registry, each loss tagged with its task);
- what `predict_fn` returns to the evaluators (logits, or embeddings), and
  the frozen features linear probes read (`represent`);
- start-up checks of the config, and a hook on freshly initialised params.

A new task (few-shot, distillation, soft labels) is one new module that
registers a `Task` subclass in `registry.TASKS`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from big_vision_like import errors
from big_vision_like import registry


def device_images(images: jax.Array, value_range: Sequence[float] | None) -> jax.Array:
  """The model's float input: uint8 batches are mapped to `value_range` here.

  Ending the pp string with uint8 images (no `value_range` op) and setting
  `config.device_value_range=(-1, 1)` moves the float conversion onto the
  accelerator: 4x fewer bytes through the host and the host-to-device copy,
  and less CPU per image (see BENCHMARKS.md). Float images pass unchanged.
  """
  if images.dtype != jnp.uint8:
    return images
  if value_range is None:
    raise errors.ConfigError(
        "the batch holds uint8 images: end the pp strings with value_range(...) "
        "or set config.device_value_range=(vmin, vmax) to convert them on device")
  vmin, vmax = value_range
  # The same arithmetic as the value_range pp op, so both give the same floats.
  return images.astype(jnp.float32) / 255.0 * (vmax - vmin) + vmin


class Task:
  """Base class: the task-specific parts of training and prediction."""

  name: str = ""
  model_inputs: tuple[str, ...] = ("image",)  # batch keys passed to the model, in order
  batch_keys: tuple[str, ...] = ("image",)  # keys the training pp must produce

  def __init__(self, config: Any):
    self.config = config

  def check_config(self, config: Any) -> None:
    """Raises ConfigError for config keys this task cannot honour."""
    loss = config.loss
    try:
      owner = registry.LOSSES.tags(loss).get("task")
    except errors.UnknownNameError as e:
      raise errors.UnknownNameError(f"config.loss: {e}") from None
    if owner != self.name:
      raise errors.ConfigError(
          f"config.loss={loss!r} is a loss of task {owner!r}; task {self.name!r} (model "
          f"{config.model_name!r}) trains with one of "
          f"{', '.join(registry.LOSSES.names_with(task=self.name))}")

  def init_params(self, params: Any) -> Any:
    """Adjusts freshly initialised params (traced inside the sharded init)."""
    return params

  def augment(self, batch: dict, base_rng: jax.Array, step: jax.Array) -> dict:
    """Whole-batch augmentation inside the train step (before micro-batching)."""
    del base_rng, step
    return batch

  def make_loss(self, model: Any, mesh: Any, data_axes: Sequence[str]
                ) -> Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]:
    """`(params, batch, rng) -> (mean loss, extra metrics)` for the train step."""
    raise NotImplementedError

  def predict(self, model: Any, params: Any, batch: Mapping[str, jax.Array]) -> Any:
    """What the evaluators get for a batch (already on the device, images as floats)."""
    raise NotImplementedError

  def represent(self, model: Any, params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
    """Frozen image features [B, D] for linear probes (evaluators/fewshot.py)."""
    raise NotImplementedError(f"task {self.name!r} has no image representation for "
                              f"linear probes")


def for_config(config: Any) -> Task:
  """The task of `config`: `config.task`, else the model class's default."""
  name = config.get("task")
  if name is None:
    name = getattr(registry.MODELS.get(config.model_name), "task", "classification")
  try:
    cls = registry.TASKS.get(name)
  except errors.UnknownNameError as e:
    raise errors.ConfigError(f"config.task: {e}") from None
  return cls(config)
