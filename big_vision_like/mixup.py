"""Mixup and CutMix on the global batch, inside the jitted train step.

Mixing pairs examples from different hosts and devices, so it cannot live in
the per-host tf.data pipeline: it runs on the device on the globally sharded
batch, right before the forward pass. It is switched on from the config:

  config.mixup = dict(mixup_alpha=0.2)                      # Beyer et al. 2022
  config.mixup = dict(mixup_alpha=0.8, cutmix_alpha=1.0,    # DeiT-style
                      switch_prob=0.5, mode="example")

Keys (all optional; `config.mixup` absent or None means off):

  mixup_alpha   Mixup (Zhang et al. 2018): lam ~ Beta(a, a), image
                `lam * x + (1 - lam) * x_partner`, same weights for the labels.
                lam is folded into [0.5, 1] so that every slot keeps its own
                example as the majority; Beta(a, a) is symmetric, so the
                distribution of mixed pairs is unchanged. 0 = no mixup.
  cutmix_alpha  CutMix (Yun et al. 2019): lam ~ Beta(a, a) is the nominal kept
                fraction; a box with sides sqrt(1 - lam) * (H, W) and a uniform
                random centre is clipped to the image and filled with the
                partner's pixels. Labels always use the area ACTUALLY pasted
                after clipping (in exact pixel counts), never the nominal lam.
                0 = no CutMix.
  switch_prob   When both alphas are > 0: the probability of CutMix instead of
                mixup (default 0.5). Ignored otherwise.
  prob          Probability that a batch ("batch" mode) or an example
                ("example" mode) is mixed at all (default 1.0).
  mode          "batch" (default): one coefficient / box / choice for the
                whole batch, as in big_vision. "example": drawn per example.

Partner: example i is mixed with example i - 1 of the global batch (the batch
rolled by one, `jnp.roll(x, 1, axis=0)`). The pairing is fixed, needs no
permutation of a sharded array, and XLA moves the one neighbouring row across
device boundaries. The tf.data pipeline shuffles, so neighbours are random.

Randomness: the key is `fold_in(fold_in(base_rng, MIXUP_STREAM), step)` where
base_rng is the train loop's seed-derived key. Mixing is therefore a pure
function of (seed, step, batch): a resumed run and a run on 1 or 8 devices mix
identically. MIXUP_STREAM is above any int32 step, so it never collides with
the per-step dropout key `fold_in(base_rng, step)`.

Gradient accumulation: the whole global batch is mixed once, then split into
micro-batches, so accumulation does not change which examples get mixed or how.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from big_vision_like import errors

MODES = ("batch", "example")
# A fold_in tag for the mixup random stream; >= 2**31, so never a step number.
MIXUP_STREAM = 0x9E3779B9


@dataclasses.dataclass(frozen=True)
class MixupConfig:
  """Validated `config.mixup` (see the module docstring for the meaning)."""
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  switch_prob: float = 0.5
  prob: float = 1.0
  mode: str = "batch"

  @property
  def enabled(self) -> bool:
    """Whether any example can ever be changed."""
    return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0


class Mixed(NamedTuple):
  """The mixed batch and, per example, how much of it is its own / the partner's.

  `own[i] * labels[i] + partner[i] * labels[i - 1]` is the mixed label of
  example i. Mixup: own = lam, partner = 1 - lam. CutMix: partner = pasted
  pixels / (H * W), own = kept pixels / (H * W). Unmixed: own = 1, partner = 0.
  """
  image: jax.Array
  labels: jax.Array
  own: jax.Array
  partner: jax.Array


def _number(value: Any, key: str, *, is_prob: bool) -> float:
  """`value` as a float: a probability in [0, 1], or else a finite number >= 0."""
  ok = (not isinstance(value, bool) and isinstance(value, (int, float))
        and math.isfinite(value) and 0 <= value and (value <= 1 or not is_prob))
  if not ok:
    want = "a probability in [0, 1]" if is_prob else "a finite number >= 0"
    raise errors.ConfigError(f"config.mixup.{key} must be {want}, got {value!r}")
  return float(value)


def from_config(cfg: Mapping[str, Any] | None) -> MixupConfig | None:
  """`config.mixup` -> MixupConfig, or None when mixing is off.

  Raises:
    ConfigError naming `config.mixup.<key>` for an unknown key or a bad value.
  """
  if cfg is None:
    return None
  if not isinstance(cfg, Mapping) and not hasattr(cfg, "keys"):
    raise errors.ConfigError(
        f"config.mixup must be a dict such as dict(mixup_alpha=0.2) or None, got {cfg!r}")
  known = {f.name for f in dataclasses.fields(MixupConfig)}
  errors.check_keys(cfg, known, "config.mixup")
  out = MixupConfig(
      mixup_alpha=_number(cfg.get("mixup_alpha", 0.0), "mixup_alpha", is_prob=False),
      cutmix_alpha=_number(cfg.get("cutmix_alpha", 0.0), "cutmix_alpha", is_prob=False),
      switch_prob=_number(cfg.get("switch_prob", 0.5), "switch_prob", is_prob=True),
      prob=_number(cfg.get("prob", 1.0), "prob", is_prob=True),
      mode=cfg.get("mode", "batch"))
  if out.mode not in MODES:
    raise errors.ConfigError(
        f"config.mixup.mode must be one of {', '.join(MODES)}; got {out.mode!r}")
  return out if out.enabled else None


def step_key(base_rng: jax.Array, step: jax.Array | int) -> jax.Array:
  """The mixup key of one train step: depends on (base_rng, step) only."""
  return jax.random.fold_in(jax.random.fold_in(base_rng, MIXUP_STREAM), step)


def partner(x: jax.Array) -> jax.Array:
  """Each example's mixing partner: row i gets row i - 1 (row 0 gets the last)."""
  return jnp.roll(x, 1, axis=0)


def _cutmix_boxes(key: jax.Array, lam: jax.Array, height: int, width: int
                  ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Integer box edges [y0, y1) x [x0, x1), clipped to the image, per draw."""
  side = jnp.sqrt(1.0 - lam)  # box side as a fraction of the image side
  centre = jax.random.uniform(key, (lam.shape[0], 2))
  def edges(c, size):
    half = side * size / 2
    lo = jnp.clip(jnp.round(c * size - half), 0, size).astype(jnp.int32)
    hi = jnp.clip(jnp.round(c * size + half), 0, size).astype(jnp.int32)
    return lo, hi
  y0, y1 = edges(centre[:, 0], height)
  x0, x1 = edges(centre[:, 1], width)
  return y0, y1, x0, x1


def mix(key: jax.Array, images: jax.Array, labels: jax.Array,
        cfg: MixupConfig) -> Mixed:
  """Mixes `images` [B, H, W, C] and dense `labels` [B, K] with their partners.

  Works unchanged on a sharded global batch under jit. Labels may be one-hot,
  multi-hot or smoothed: every mixed label is a convex combination of two, so
  a label sum shared by all examples is preserved.
  """
  if labels.ndim < 2 or not jnp.issubdtype(labels.dtype, jnp.floating):
    raise ValueError(
        f"config.mixup needs dense float labels [batch, num_classes] (use the onehot "
        f"pp op); got {labels.dtype} labels of shape {labels.shape}")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"config.mixup needs float images (put value_range in the pp); got "
                     f"{images.dtype} images")
  if images.shape[0] != labels.shape[0]:
    raise ValueError(f"config.mixup: images {images.shape} and labels {labels.shape} "
                     "have different batch sizes")
  if cfg.cutmix_alpha > 0 and images.ndim != 4:
    raise ValueError(f"config.mixup.cutmix_alpha needs images [B, H, W, C]; got shape "
                     f"{images.shape}")
  batch = images.shape[0]
  draws = batch if cfg.mode == "example" else 1
  k_mix, k_cut, k_box, k_switch, k_apply = jax.random.split(key, 5)

  if cfg.mixup_alpha > 0:
    lam = jax.random.beta(k_mix, cfg.mixup_alpha, cfg.mixup_alpha, (draws,))
    lam = jnp.maximum(lam, 1.0 - lam)
  else:
    lam = jnp.ones((draws,), jnp.float32)
  if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
    use_cut = jax.random.bernoulli(k_switch, cfg.switch_prob, (draws,))
  else:
    use_cut = jnp.full((draws,), cfg.cutmix_alpha > 0)
  apply = (jax.random.bernoulli(k_apply, cfg.prob, (draws,)) if cfg.prob < 1
           else jnp.ones((draws,), bool))

  # Per-example label weights. CutMix weights are pixel counts over the image
  # size (not 1 - the other weight), so each equals its counted area fraction.
  if cfg.cutmix_alpha > 0:
    _, height, width, _ = images.shape
    cut_lam = jax.random.beta(k_cut, cfg.cutmix_alpha, cfg.cutmix_alpha, (draws,))
    y0, y1, x0, x1 = _cutmix_boxes(k_box, cut_lam, height, width)
    # Pasted and kept fractions from exact integer pixel counts.
    pasted = (y1 - y0) * (x1 - x0)
    area = pasted.astype(jnp.float32) / (height * width)
    kept = (height * width - pasted).astype(jnp.float32) / (height * width)
  else:
    area = kept = jnp.zeros((draws,), jnp.float32)
  own = jnp.where(apply, jnp.where(use_cut, kept, lam), 1.0)
  other = jnp.where(apply, jnp.where(use_cut, area, 1.0 - lam), 0.0)

  # Weight of each example's own pixels: lam (mixup), 0 inside the box and 1
  # outside (CutMix), 1 (unmixed); shaped [draws, 1, 1, 1] or [draws, H, W, 1].
  expand = lambda v: v.reshape((-1,) + (1,) * (images.ndim - 1))
  pixel_own = expand(jnp.where(apply & ~use_cut, lam, 1.0))
  if cfg.cutmix_alpha > 0:
    rows = jnp.arange(height)[None, :, None, None]
    cols = jnp.arange(width)[None, None, :, None]
    inside = ((rows >= expand(y0)) & (rows < expand(y1))
              & (cols >= expand(x0)) & (cols < expand(x1)))
    pixel_own = jnp.where(expand(apply & use_cut) & inside, 0.0, pixel_own)
  own, other = jnp.broadcast_to(own, (batch,)), jnp.broadcast_to(other, (batch,))

  x = images.astype(jnp.float32)
  mixed_images = pixel_own * x + (1.0 - pixel_own) * partner(x)
  y = labels.astype(jnp.float32)
  label_own = own.reshape((-1,) + (1,) * (labels.ndim - 1))
  label_other = other.reshape(label_own.shape)
  mixed_labels = label_own * y + label_other * partner(y)
  return Mixed(mixed_images.astype(images.dtype), mixed_labels.astype(labels.dtype),
               own, other)
