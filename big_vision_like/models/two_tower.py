"""Two-tower image-text model (CLIP, ALIGN, LiT, SigLIP).

An image tower (any image model of the registry: ViT, ResNet) and a text
tower (`text_transformer`) each end in a linear projection to a shared
embedding of width `embed_dim`, which is L2-normalised. A learnable
temperature t (kept as log t) scales the cosine similarities; SigLIP adds a
learnable bias b. The losses (`big_vision_like.contrastive`) compare every
image with every text of the global batch.

Parameters live under "img/..." and "txt/..." (plus "t" and "b"), so regexes
can freeze or initialise one tower: LiT is `frozen=["img/.*"]` with
`model_init={"img": "<supervised workdir>"}`.

`__call__(image, text)` returns `(zimg, ztxt, aux)`; either input may be None
(the zero-shot and retrieval evaluators embed images and texts separately).
aux holds "t" (= exp(log t)), "b" (0 without a bias) and each tower's aux.

Each tower names its own parameters' logical axes (the projection "head" is
[embed, classes]); t and b are one-element vectors named [None].
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from big_vision_like import registry
from big_vision_like.models import common
from big_vision_like.registry import MODELS

EPS = 1e-8


def _normalize(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + EPS)


@MODELS.register("two_tower")
class TwoTower(nn.Module):
  """CLIP/SigLIP-style two-tower model; see the module docstring.

  Attributes:
    image_model: registry name of the image tower ("vit", "resnet").
    image: that model's fields (its `num_classes` is set to `embed_dim`).
    text_model: registry name of the text tower ("text_transformer").
    text: the text tower's fields (vocab_size, variant, pool_type, ...).
    embed_dim: width of the shared embedding.
    temperature_init: initial t (CLIP: 1/0.07 ~ 14.3; SigLIP: 10).
    bias_init: initial b (SigLIP: -10); None means no bias parameter.
  """
  image_model: str = "vit"
  image: Any = None
  text_model: str = "text_transformer"
  text: Any = None
  embed_dim: int = 256
  temperature_init: float = 10.0
  bias_init: float | None = None

  task = "image_text"  # (class constant) the task this model trains with by default

  def __post_init__(self):
    if not isinstance(self.embed_dim, int) or self.embed_dim <= 0:
      raise ValueError(f"model.embed_dim={self.embed_dim!r} must be a positive int")
    if not self.temperature_init > 0:
      raise ValueError(f"model.temperature_init={self.temperature_init!r} must be > 0")
    # Fail at construction on bad tower fields (an unbound copy of each).
    self._tower(self.image_model, self.image, "image", parent=None)
    self._tower(self.text_model, self.text, "text", parent=None)
    super().__post_init__()

  def _tower(self, name: str, fields: Any, which: str, **kw) -> nn.Module:
    cls = registry.MODELS.get(name)
    kwargs = dict(fields or {})
    kwargs["num_classes"] = self.embed_dim
    if "head_zeroinit" in getattr(cls, "__dataclass_fields__", {}):
      kwargs["head_zeroinit"] = False  # a zero projection would embed everything at 0
    try:
      return cls(**kwargs, name="img" if which == "image" else "txt", **kw)
    except TypeError as e:
      raise ValueError(f"model.{which} ({name}): {e}") from None

  @nn.compact
  def __call__(self, image: jax.Array | None = None, text: jax.Array | None = None, *,
               train: bool = False) -> tuple[jax.Array | None, jax.Array | None, dict]:
    aux: dict[str, Any] = {}
    zimg = ztxt = None
    if image is not None:
      feats, aux["img"] = self._tower(self.image_model, self.image, "image")(
          image, train=train)
      zimg = _normalize(feats)
    if text is not None:
      feats, aux["txt"] = self._tower(self.text_model, self.text, "text")(
          text, train=train)
      ztxt = _normalize(feats)
    log_t = self.param("t", common.logical(
        nn.initializers.constant(math.log(self.temperature_init)), (None,)),
                       (1,), jnp.float32)
    aux["t"] = jnp.exp(log_t[0])
    if self.bias_init is not None:
      aux["b"] = self.param("b", common.logical(
          nn.initializers.constant(self.bias_init), (None,)), (1,), jnp.float32)[0]
    else:
      aux["b"] = jnp.zeros((), jnp.float32)
    return zimg, ztxt, aux
