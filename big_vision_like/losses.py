"""Classification losses, looked up by name from `config.loss`.

Every loss takes `(logits, labels)` with labels as dense targets of the same
shape as the logits (one-hot, multi-hot, label-smoothed or any soft targets;
the pp ops produce them) and returns one loss per example. The training loop
averages them. Computation happens in float32 whatever the logits dtype, so
bf16 models do not lose precision in the log-sum-exp.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from big_vision_like.registry import LOSSES


def _check(logits: jax.Array, labels: jax.Array, name: str
           ) -> tuple[jax.Array, jax.Array]:
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  if logits.ndim < 1 or logits.shape != labels.shape:
    hint = ""
    if labels.ndim == logits.ndim - 1:
      hint = " (labels look like class indices; the loss wants one-hot targets)"
    raise ValueError(f"{name}: logits shape {logits.shape} and labels shape "
                     f"{labels.shape} must be equal [..., num_classes]{hint}")
  return logits.astype(jnp.float32), labels.astype(jnp.float32)


@LOSSES.register("softmax_xent", task="classification")
def softmax_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy `sum_c -labels[c] * log_softmax(logits)[c]`.

  Targets are used as given: multi-hot targets are not renormalised, so an
  example with two positive classes counts both.

  Args:
    logits: [B, C] (or [..., C]) unnormalised scores.
    labels: targets of the same shape.
  Returns:
    [B] float32 loss per example.
  """
  logits, labels = _check(logits, labels, "softmax_xent")
  return -jnp.sum(labels * jax.nn.log_softmax(logits, axis=-1), axis=-1)


@LOSSES.register("sigmoid_xent", task="classification")
def sigmoid_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-class binary cross-entropy, summed over classes.

  `-(y * log sigmoid(x) + (1 - y) * log sigmoid(-x))`, with `log_sigmoid` so
  that large |logits| neither overflow nor produce log(0).

  Args:
    logits: [B, C] (or [..., C]) unnormalised scores.
    labels: targets in [0, 1] of the same shape.
  Returns:
    [B] float32 loss per example.
  """
  logits, labels = _check(logits, labels, "sigmoid_xent")
  log_p = jax.nn.log_sigmoid(logits)
  log_not_p = jax.nn.log_sigmoid(-logits)
  return -jnp.sum(labels * log_p + (1.0 - labels) * log_not_p, axis=-1)
