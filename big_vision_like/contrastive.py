"""Image-text contrastive losses: CLIP's softmax and SigLIP's sigmoid loss.

Two-tower training (CLIP, LiT, SigLIP) scores every image of the batch
against every text of the batch. What makes these losses different from the
per-example classification losses in `losses.py` is that the batch IS the
set of classes: the loss of one example depends on all the others, so it
must be computed over the GLOBAL batch, not per device. The functions here
take global `jax.Array`s (sharded over the data axis by the caller) and
return one scalar; under `jax.jit` XLA inserts whatever collectives that
needs, so there is never a per-device loss to average by mistake.

The dense losses build the whole [B, B] logit matrix. That is simple and
fast, but the matrix (and its gradient) grows with the square of the
global batch. `chunked_siglip_loss` computes exactly the same SigLIP value
and gradients without ever materialising more than a [B_local, B_local]
block per device: text embeddings travel around a ring of devices with
`jax.lax.ppermute`, and each device scores its own images against one chunk
of texts at a time. The sigmoid loss is a plain sum over pairs, so blocks
can be added up in any order; CLIP's softmax needs a normaliser over a whole
row and column, which is why only SigLIP gets the chunked form here.

`get_loss(config.loss, mesh=..., axis=...)` gives the trainer any of them
by name ("clip", "siglip", "chunked_siglip") with one signature.

Conventions shared by all functions:
  - `zimg`, `ztxt`: [B, D] embeddings, row i of each is a matching pair.
    They are expected to be L2-normalised already (the model does that);
    the losses do not normalise.
  - `t`: the positive logit scale (the model's `exp(log_t)`), `b`: SigLIP's
    learned bias. Any array with exactly one element (shape () or (1,), as
    stored in params) is accepted.
  - Computation is in float32 whatever the input dtype.
  - Metrics are diagnostics for logging: they carry no gradient
    (`stop_gradient`), and are float32 scalars.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from big_vision_like import registry

Metrics = dict[str, jax.Array]
# (zimg, ztxt, t, b) -> (loss, metrics): what `get_loss` hands the trainer.
ContrastiveLoss = Callable[[jax.Array, jax.Array, jax.Array, jax.Array],
                           tuple[jax.Array, Metrics]]


def _check_embeddings(zimg: jax.Array, ztxt: jax.Array, fn: str
                      ) -> tuple[jax.Array, jax.Array]:
  zimg, ztxt = jnp.asarray(zimg), jnp.asarray(ztxt)
  if zimg.ndim != 2 or zimg.shape != ztxt.shape or zimg.shape[0] == 0:
    raise ValueError(f"{fn}: zimg and ztxt must both be [batch, width] with the "
                     f"same non-empty shape, got zimg {zimg.shape} and ztxt "
                     f"{ztxt.shape}")
  return zimg.astype(jnp.float32), ztxt.astype(jnp.float32)


def _scalar(x: jax.Array | float, name: str, fn: str) -> jax.Array:
  """A one-element parameter (shape (), (1,), ...) as a float32 scalar."""
  x = jnp.asarray(x)
  if x.size != 1:
    raise ValueError(f"{fn}: {name} must hold exactly one value (shape () or "
                     f"(1,)), got shape {x.shape}")
  return jnp.reshape(x, ()).astype(jnp.float32)


def in_batch_accuracy(logits: jax.Array) -> Metrics:
  """Retrieval accuracy within the batch, both ways.

  With `logits[i, j]` the score of image i against text j:

    acc_img2txt = mean_i [ logits[i, i] > max_{j != i} logits[i, j] ]
    acc_txt2img = mean_j [ logits[j, j] > max_{i != j} logits[i, j] ]

  i.e. the fraction of images whose own text scores strictly above every
  other text (and vice versa). Strictly: on a tie (e.g. collapsed
  embeddings that score everything alike) the pair does NOT count as
  retrieved, so a degenerate model reads 0, not 1/B. With a batch of one
  there is nothing to confuse and the accuracy is 1.

  Args:
    logits: [B, B] scores, images along rows, texts along columns.
  Returns:
    {"acc_img2txt", "acc_txt2img"}: float32 scalars in [0, 1].
  """
  logits = jnp.asarray(logits, jnp.float32)
  if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
    raise ValueError(f"in_batch_accuracy: logits must be square [B, B], got "
                     f"shape {logits.shape}")
  pos = jnp.diagonal(logits)
  neg = jnp.where(jnp.eye(logits.shape[0], dtype=bool), -jnp.inf, logits)
  return jax.lax.stop_gradient({
      "acc_img2txt": jnp.mean(pos > neg.max(axis=1), dtype=jnp.float32),
      "acc_txt2img": jnp.mean(pos > neg.max(axis=0), dtype=jnp.float32),
  })


def clip_loss(zimg: jax.Array, ztxt: jax.Array, t: jax.Array | float
              ) -> tuple[jax.Array, Metrics]:
  """CLIP's symmetric softmax contrastive loss over the global batch.

    logits = t * zimg @ ztxt.T                                 [B, B]
    loss_img2txt = -1/B sum_i log softmax(logits[i, :])[i]     (rows)
    loss_txt2img = -1/B sum_j log softmax(logits[:, j])[j]     (columns)
    loss = (loss_img2txt + loss_txt2img) / 2

  Each image is classified among all B texts of the global batch and vice
  versa, the matching pair (the diagonal) being the target.

  Args:
    zimg: [B, D] image embeddings (L2-normalised).
    ztxt: [B, D] text embeddings (L2-normalised); row i matches `zimg[i]`.
    t: the positive temperature scale, exp(learned log-temperature).
  Returns:
    (loss, metrics): the float32 scalar loss and {"loss_img2txt",
    "loss_txt2img", "acc_img2txt", "acc_txt2img"}.
  """
  zimg, ztxt = _check_embeddings(zimg, ztxt, "clip_loss")
  t = _scalar(t, "t", "clip_loss")
  logits = t * (zimg @ ztxt.T)
  pos = jnp.diagonal(logits)
  loss_i2t = jnp.mean(jax.nn.logsumexp(logits, axis=1) - pos)
  loss_t2i = jnp.mean(jax.nn.logsumexp(logits, axis=0) - pos)
  metrics = {"loss_img2txt": jax.lax.stop_gradient(loss_i2t),
             "loss_txt2img": jax.lax.stop_gradient(loss_t2i),
             **in_batch_accuracy(logits)}
  return 0.5 * (loss_i2t + loss_t2i), metrics


def siglip_loss(zimg: jax.Array, ztxt: jax.Array, t: jax.Array | float,
                b: jax.Array | float) -> tuple[jax.Array, Metrics]:
  """SigLIP's pairwise sigmoid loss (Zhai et al. 2023), dense.

    logits = t * zimg @ ztxt.T + b                             [B, B]
    labels[i, j] = +1 if i == j else -1
    loss = -1/B sum_{i,j} log_sigmoid(labels[i, j] * logits[i, j])

  Every (image, text) pair is an independent binary classification; the sum
  is normalised by the batch size B (not B^2), as in the paper. The split
  loss = loss_pos + loss_neg into the diagonal (B positive pairs) and
  off-diagonal (B^2 - B negative pairs) terms, both also divided by B, is
  returned as metrics: it shows whether the bias is still pushing all
  pairs down (loss_neg dominating early in training) or not.

  Args:
    zimg: [B, D] image embeddings (L2-normalised).
    ztxt: [B, D] text embeddings (L2-normalised); row i matches `zimg[i]`.
    t: the positive temperature scale, exp(learned log-temperature).
    b: the learned logit bias.
  Returns:
    (loss, metrics): the float32 scalar loss and {"loss_pos", "loss_neg",
    "acc_img2txt", "acc_txt2img"}.
  """
  zimg, ztxt = _check_embeddings(zimg, ztxt, "siglip_loss")
  t, b = _scalar(t, "t", "siglip_loss"), _scalar(b, "b", "siglip_loss")
  batch = zimg.shape[0]
  logits = t * (zimg @ ztxt.T) + b
  eye = jnp.eye(batch, dtype=bool)
  labels = jnp.where(eye, 1.0, -1.0)
  per_pair = -jax.nn.log_sigmoid(labels * logits)
  loss_pos = jnp.sum(jnp.where(eye, per_pair, 0.0)) / batch
  loss_neg = jnp.sum(jnp.where(eye, 0.0, per_pair)) / batch
  metrics = {"loss_pos": jax.lax.stop_gradient(loss_pos),
             "loss_neg": jax.lax.stop_gradient(loss_neg),
             **in_batch_accuracy(logits)}
  return loss_pos + loss_neg, metrics


# --- Chunked SigLIP ----------------------------------------------------------
#
# Layout: the global batch is split over the data axis (or axes) in the usual
# order, device k holding rows [k * Bl, (k + 1) * Bl) of both zimg and ztxt.
# Step 0 scores the device's own images against its own texts (the only block
# holding positives, on its diagonal). Then texts move one device forward
# around the ring, n - 1 times, so that at step s device k holds the texts of
# device (k - s) mod n and every block it scores is all negatives.
#
# Gradients: the loss is a scalar, so its VJP is just `g * gradient`. Rather
# than letting autodiff keep every step's residuals (each step's [Bl, Bl]
# sigmoids or text chunk, n of them: O(B_global * Bl) or O(B_global * D) per
# device, no better than the dense loss), a custom VJP computes the full
# gradient during the same ring pass when differentiating, and the backward
# pass only scales it. Measured on 8 CPU devices, B = 4096, D = 768, gradients
# kept sharded: XLA temp memory per device of value_and_grad is 44 MiB dense
# and 8 MiB here (tools/benchmark_contrastive.py); plain autodiff through an
# unrolled ring (measured once, with or without jax.checkpoint per step) took
# 23.5 MiB.
# The gradient of a text chunk is accumulated in a buffer that travels with
# the chunk and takes one more hop at the end to reach the chunk's home
# device; image gradients stay where the images are.


def _data_axes(mesh: Mesh, axis: str | Sequence[str], fn: str) -> tuple[str, ...]:
  axes = (axis,) if isinstance(axis, str) else tuple(axis)
  if not axes:
    raise ValueError(f"{fn}: axis must name at least one mesh axis")
  missing = [a for a in axes if a not in mesh.axis_names]
  if missing:
    raise ValueError(f"{fn}: axis {missing[0]!r} is not an axis of the mesh; "
                     f"its axes are {tuple(mesh.axis_names)}")
  if len(set(axes)) != len(axes):
    raise ValueError(f"{fn}: axis {axes} repeats a mesh axis")
  return axes


def _sigmoid_block(zimg: jax.Array, ztxt: jax.Array, t: jax.Array, b: jax.Array,
                   positives: bool, with_grads: bool) -> dict[str, jax.Array]:
  """Loss terms (and optionally gradients) of one [Bl, Bl] block of pairs.

  With z = t * x.y + b and label l, the pair's loss is -log_sigmoid(l * z)
  and d loss / d z = -l * sigmoid(-l * z) =: g, so
  d/dx = t * g @ y, d/dy = t * g.T @ x, d/dt = sum g * x.y, d/db = sum g.
  """
  dots = zimg @ ztxt.T
  logits = t * dots + b
  if positives:
    eye = jnp.eye(zimg.shape[0], dtype=bool)
    labels = jnp.where(eye, 1.0, -1.0)
    per_pair = -jax.nn.log_sigmoid(labels * logits)
    negs = jnp.where(eye, -jnp.inf, logits)
    out = {"loss_pos": jnp.sum(jnp.where(eye, per_pair, 0.0)),
           "loss_neg": jnp.sum(jnp.where(eye, 0.0, per_pair)),
           "pos": jnp.diagonal(logits)}
  else:
    labels = -1.0
    negs = logits
    out = {"loss_neg": jnp.sum(-jax.nn.log_sigmoid(-logits))}
  # The best-scoring negative of every image (row) and every text (column),
  # for the in-batch accuracy.
  out["img_max_neg"] = negs.max(axis=1)
  out["txt_max_neg"] = negs.max(axis=0)
  if with_grads:
    g = -labels * jax.nn.sigmoid(-labels * logits)
    out["dzimg"] = t * (g @ ztxt)
    out["dztxt"] = t * (g.T @ zimg)
    out["dt"] = jnp.sum(g * dots)
    out["db"] = jnp.sum(g)
  return out


def _ring_siglip(zimg: jax.Array, ztxt: jax.Array, t: jax.Array, b: jax.Array, *,
                 axes: tuple[str, ...], n: int, batch: int, with_grads: bool):
  """Per-device body of `chunked_siglip_loss` (runs under shard_map)."""
  axis_name = axes if len(axes) > 1 else axes[0]
  ring = [(k, (k + 1) % n) for k in range(n)]

  def to_next(tree):
    return tree if n == 1 else jax.lax.ppermute(tree, axis_name, ring)

  own = _sigmoid_block(zimg, ztxt, t, b, positives=True, with_grads=with_grads)
  # What travels with a text chunk: its embeddings and what the devices it
  # visits learn about it (best negative score; gradient so far).
  travel = {"ztxt": ztxt, "txt_max_neg": own["txt_max_neg"]}
  # What stays on this device: everything about its images, and sums.
  stay = {"loss_neg": own["loss_neg"], "img_max_neg": own["img_max_neg"]}
  if with_grads:
    travel["dztxt"] = own["dztxt"]
    stay.update(dzimg=own["dzimg"], dt=own["dt"], db=own["db"])

  def step(_, carry):
    travel, stay = carry
    travel = to_next(travel)
    blk = _sigmoid_block(zimg, travel["ztxt"], t, b, positives=False,
                         with_grads=with_grads)
    travel = dict(travel, txt_max_neg=jnp.maximum(travel["txt_max_neg"],
                                                  blk["txt_max_neg"]))
    stay = dict(stay, loss_neg=stay["loss_neg"] + blk["loss_neg"],
                img_max_neg=jnp.maximum(stay["img_max_neg"], blk["img_max_neg"]))
    if with_grads:
      travel["dztxt"] = travel["dztxt"] + blk["dztxt"]
      stay.update(dzimg=stay["dzimg"] + blk["dzimg"], dt=stay["dt"] + blk["dt"],
                  db=stay["db"] + blk["db"])
    return travel, stay

  # A loop (not unrolled): compile time and program size do not grow with n.
  travel, stay = jax.lax.fori_loop(1, n, step, (travel, stay))
  # After n - 1 hops each chunk sits on the device just before its home; one
  # more hop brings what was learned about it back.
  home = to_next({k: v for k, v in travel.items() if k != "ztxt"})

  def total(x):
    return jax.lax.psum(x, axis_name)

  pos = own["pos"]
  loss_pos = total(own["loss_pos"]) / batch
  loss_neg = total(stay["loss_neg"]) / batch
  metrics = {
      "loss_pos": loss_pos, "loss_neg": loss_neg,
      "acc_img2txt": total(jnp.sum(pos > stay["img_max_neg"], dtype=jnp.float32)) / batch,
      "acc_txt2img": total(jnp.sum(pos > home["txt_max_neg"], dtype=jnp.float32)) / batch,
  }
  loss = loss_pos + loss_neg
  if not with_grads:
    return loss, metrics
  grads = (stay["dzimg"] / batch, home["dztxt"] / batch,
           total(stay["dt"]) / batch, total(stay["db"]) / batch)
  return loss, metrics, grads


def chunked_siglip_loss(zimg: jax.Array, ztxt: jax.Array, t: jax.Array | float,
                        b: jax.Array | float, *, mesh: Mesh,
                        axis: str | Sequence[str] = "data"
                        ) -> tuple[jax.Array, Metrics]:
  """`siglip_loss` computed blockwise around a ring of devices.

  Same value, gradients (w.r.t. zimg, ztxt, t and b) and metrics as
  `siglip_loss(zimg, ztxt, t, b)`, up to float rounding:

    loss = 1/B sum_k sum_s sum_{i in I_k, j in T_{k-s}}
           -log_sigmoid(labels[i, j] * (t * zimg[i].ztxt[j] + b))

  where I_k / T_k are the rows held by device k of the n devices along
  `axis`, and s = 0..n-1 are the ring steps (s = 0: own texts, the only
  block with positives). Each device scores one [B/n, B/n] block per step
  and passes its text chunk on with `jax.lax.ppermute`; per-device memory
  is O((B/n)^2 + (B/n) * D) instead of the dense loss's O(B * B/n) logits
  plus its gathered texts.

  When differentiated, the gradients are computed in the same single ring
  pass (a custom VJP; see the comment above `_ring_siglip`), so training
  costs one pass, not a forward and a backward ring. Being a custom VJP,
  it supports reverse mode (grad, vjp) but not forward mode (jvp).

  Works inside or outside `jax.jit`, on any mesh: `axis` is the mesh axis
  (or tuple of axes, e.g. ("data", "fsdp") as from `sharding.data_axes`)
  the batch is split over; other mesh axes just hold copies of the work.
  Nothing assumes one process: the ring spans all devices along the axis,
  whichever host they are on. Inputs are expected sharded as
  `P(axis)` along the batch; anything else is resharded first.

  Args:
    zimg: [B, D] image embeddings (L2-normalised), B divisible by the number
      of devices along `axis`.
    ztxt: [B, D] text embeddings (L2-normalised); row i matches `zimg[i]`.
    t: the positive temperature scale, exp(learned log-temperature).
    b: the learned logit bias.
    mesh: the device mesh.
    axis: mesh axis name(s) the batch is sharded over.
  Returns:
    (loss, metrics) as `siglip_loss`: {"loss_pos", "loss_neg",
    "acc_img2txt", "acc_txt2img"}, with the same definitions.
  """
  fn = "chunked_siglip_loss"
  zimg, ztxt = _check_embeddings(zimg, ztxt, fn)
  t, b = _scalar(t, "t", fn), _scalar(b, "b", fn)
  axes = _data_axes(mesh, axis, fn)
  n = math.prod(mesh.shape[a] for a in axes)
  batch = zimg.shape[0]
  if batch % n:
    raise ValueError(f"{fn}: the batch of {batch} is not divisible by the {n} "
                     f"devices along mesh axis {axes if len(axes) > 1 else axes[0]!r}")

  rows = P(axes)
  metric_specs = {k: P() for k in ("loss_pos", "loss_neg", "acc_img2txt", "acc_txt2img")}

  def mapped(with_grads: bool):
    body = functools.partial(_ring_siglip, axes=axes, n=n, batch=batch,
                             with_grads=with_grads)
    out_specs = (P(), metric_specs)
    if with_grads:
      out_specs += ((rows, rows, P(), P()),)
    return jax.shard_map(body, mesh=mesh, in_specs=(rows, rows, P(), P()),
                         out_specs=out_specs)

  @jax.custom_vjp
  def loss_fn(zimg, ztxt, t, b):
    return mapped(False)(zimg, ztxt, t, b)

  def loss_fwd(zimg, ztxt, t, b):
    loss, metrics, grads = mapped(True)(zimg, ztxt, t, b)
    return (loss, metrics), grads

  def loss_bwd(grads, cotangents):
    g, _ = cotangents  # Metrics carry no gradient (stop_gradient below).
    return tuple(g * x for x in grads)

  loss_fn.defvjp(loss_fwd, loss_bwd)
  loss, metrics = loss_fn(zimg, ztxt, t, b)
  return loss, jax.lax.stop_gradient(metrics)


# --- Lookup by name (config.loss of the image_text task) ----------------------
# Registered in the one loss registry as factories `(mesh, axis) -> loss_fn`:
# the chunked loss needs the mesh and the data axes it is computed around.


@registry.LOSSES.register("clip", task="image_text")
def _clip(mesh: Mesh, axis: str | Sequence[str]) -> ContrastiveLoss:
  del mesh, axis  # Dense: jit and the input shardings do the distribution.
  return lambda zimg, ztxt, t, b: clip_loss(zimg, ztxt, t)  # CLIP has no bias.


@registry.LOSSES.register("siglip", task="image_text")
def _siglip(mesh: Mesh, axis: str | Sequence[str]) -> ContrastiveLoss:
  del mesh, axis
  return siglip_loss


@registry.LOSSES.register("chunked_siglip", task="image_text")
def _chunked_siglip(mesh: Mesh, axis: str | Sequence[str]) -> ContrastiveLoss:
  _data_axes(mesh, axis, "config.loss='chunked_siglip'")  # Fail at start-up.
  return functools.partial(chunked_siglip_loss, mesh=mesh, axis=axis)
