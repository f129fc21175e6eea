"""A deliberately plain ViT + AdamW train step, the yardstick for tools/benchmark.

Why this exists: to tell whether our train step (config system, logical
sharding constraints, optimizer chain with masks/clipping/schedules, task and
loss plumbing) costs anything over what a researcher would write by hand in
an afternoon. This module is that hand-written version and nothing more: a
small flax.linen ViT (patch conv, optional class token, learned position
embedding, pre-LayerNorm blocks with flax's MultiHeadDotProductAttention and a
GELU MLP), softmax cross-entropy, `optax.adamw`, one `jax.jit` with the state
donated, the batch split over every device along its first axis and the
params replicated. It is not used for training and has no config of its own:
`make_baseline` takes the sizes from our model so both do the same matmuls.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


class Block(nn.Module):
  """x + attn(LN(x)), then x + mlp(LN(x))."""
  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.LayerNorm()(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype)(y, y)
    x = x + y
    y = nn.LayerNorm()(x)
    y = nn.Dense(self.mlp_dim, dtype=self.dtype)(y)
    y = nn.gelu(y)
    y = nn.Dense(x.shape[-1], dtype=self.dtype)(y)
    return x + y


class PlainViT(nn.Module):
  """Images [B, H, W, C] -> logits [B, num_classes]."""
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch: int
  num_classes: int
  pool: str = "gap"  # "gap" or "tok"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = nn.Conv(self.width, (self.patch, self.patch), strides=self.patch,
                padding="VALID", dtype=self.dtype)(images)
    x = x.reshape(x.shape[0], -1, self.width)
    if self.pool == "tok":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width))
      x = jnp.concatenate([jnp.tile(cls, (x.shape[0], 1, 1)).astype(x.dtype), x], axis=1)
    pos = self.param("pos", nn.initializers.normal(0.02), (1, x.shape[1], self.width))
    x = x + pos
    for _ in range(self.depth):
      x = Block(self.num_heads, self.mlp_dim, self.dtype)(x)
    x = nn.LayerNorm()(x)
    x = x[:, 0] if self.pool == "tok" else x.mean(axis=1)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


def make_baseline(*, width: int, depth: int, mlp_dim: int, num_heads: int, patch: int,
                  num_classes: int, pool: str, dtype: Any, batch: int, image_size: int,
                  channels: int = 3, devices: Any = None, seed: int = 0
                  ) -> tuple[Callable, Any, dict[str, jax.Array]]:
  """(jitted step, initial state, a device batch); `step(state, batch) -> (state, loss)`.

  The jitted step is `jax.jit` of the plain function; call `.lower(...)` on it
  for cost/memory analysis.
  """
  devices = jax.devices() if devices is None else devices
  if batch % len(devices):
    raise ValueError(f"baseline: batch {batch} does not split over {len(devices)} devices "
                     "(the batch is sharded along its first axis)")
  mesh = Mesh(np.asarray(devices), ("data",))
  replicated = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P("data"))
  model = PlainViT(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads,
                   patch=patch, num_classes=num_classes, pool=pool, dtype=dtype)
  tx = optax.adamw(1e-3, b1=0.9, b2=0.999, weight_decay=1e-4)

  def init(rng):
    params = model.init(rng, jnp.zeros((1, image_size, image_size, channels)))["params"]
    return {"params": params, "opt": tx.init(params)}

  def step(state, batch):
    def loss_fn(params):
      logits = model.apply({"params": params}, batch["image"])
      return optax.softmax_cross_entropy(logits, batch["labels"]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss

  state = jax.jit(init, out_shardings=replicated)(jax.random.key(seed))
  rng = np.random.default_rng(seed)
  host = {"image": rng.uniform(-1, 1, (batch, image_size, image_size, channels)),
          "labels": np.eye(num_classes)[rng.integers(0, num_classes, batch)]}
  dev_batch = {k: jax.device_put(v.astype(np.float32), data) for k, v in host.items()}
  jitted = jax.jit(step, in_shardings=(replicated, data), out_shardings=(replicated, replicated),
                   donate_argnums=0)
  return jitted, state, dev_batch
