"""Text transformer: the text tower of CLIP/SigLIP/LiT-style two-tower models.

Token ids -> learned token and position embeddings -> the ViT encoder stack
(same blocks, so scan/remat/dtype options carry over) -> one vector per text
by `pool_type`:

- "last": the last non-padding position (with "sticky" EOS tokenization,
  the EOS token; texts are padded on the right),
- "first": the first position,
- "gap": the mean over non-padding positions,
- "max": the max over non-padding positions,
- "map": attention pooling with a learned probe,
- "end": the final position whatever it holds (big_vision's "last", which
  relies on the texts being padded with EOS),
- "argmax": the position of the largest token id (CLIP: its end-of-text
  token has the highest id of the vocabulary).

`causal=True` masks attention so that each position sees only itself and
earlier ones (CLIP's text tower); `mlp_act` and `ln_eps` select the MLP
activation and LayerNorm epsilon the published weights were trained with.

Padding (token id `pad_id`) is excluded from "gap"/"max"; attention itself is
unmasked (every position is seen at the same fixed length, as in big_vision).

Logical axis names: embedding [vocab, embed], pos_embedding [None, pos,
embed]; the blocks are the ViT's (models/vit.py).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from big_vision_like.models import common
from big_vision_like.models import vit
from big_vision_like.registry import MODELS

POOL_TYPES = ("last", "first", "gap", "max", "map", "argmax", "end")


def tower_dims(module: nn.Module) -> dict[str, int]:
  """width/depth/mlp_dim/num_heads of a text tower: its `variant`, then explicit fields."""
  sizes, _ = vit.parse_variant(module.variant)
  return vit.resolve_dims(module, dict(zip(("width", "depth", "mlp_dim", "num_heads"),
                                           sizes or (None,) * 4)), example="B")


def check_tokens(tokens: jax.Array, model: str) -> None:
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"{model}: tokens must be int [batch, length], got "
                     f"{tokens.dtype} {tuple(tokens.shape)}")


@MODELS.register("text_transformer")
class TextTransformer(nn.Module):
  """Returns `(features, aux)`; features [B, num_classes or width].

  Attributes:
    vocab_size: number of token ids.
    variant: a ViT size name ("Ti", "S", "B", "L", ...) for width/depth/
      mlp_dim/num_heads; explicit fields override it.
    num_classes: output projection size (the shared embedding width); None
      returns the pooled features.
    pool_type: see the module docstring.
    pad_id: the padding token (for "gap"/"max").
  """
  vocab_size: int = 32_000
  variant: str | None = None
  width: int | None = None
  depth: int | None = None
  mlp_dim: int | None = None
  num_heads: int | None = None
  num_classes: int | None = None
  pool_type: str = "last"
  pad_id: int = 0
  dropout: float = 0.0
  head_zeroinit: bool = False
  dtype_mm: str = "float32"
  scan: bool = False
  remat_policy: str = "none"
  causal: bool = False
  mlp_act: str = "gelu_tanh"
  ln_eps: float = 1e-6

  def __post_init__(self):
    if self.pool_type not in POOL_TYPES:
      raise ValueError(f"text model.pool_type={self.pool_type!r} is unknown; known "
                       f"values: {', '.join(POOL_TYPES)}.")
    if not isinstance(self.vocab_size, int) or self.vocab_size <= 0:
      raise ValueError(f"text model.vocab_size={self.vocab_size!r} must be a positive int")
    self._dims()
    common.resolve_dtype(self.dtype_mm)
    common.activation(self.mlp_act)
    super().__post_init__()

  def _dims(self) -> dict[str, int]:
    return tower_dims(self)

  @nn.compact
  def __call__(self, tokens: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    check_tokens(tokens, "TextTransformer")
    dims = self._dims()
    width = dims["width"]
    dtype = common.resolve_dtype(self.dtype_mm)
    out = {}
    x = nn.Embed(self.vocab_size, width, name="embedding",
                 embedding_init=common.logical(
                     nn.initializers.normal(stddev=1.0 / width ** 0.5),
                     ("vocab", "embed")))(tokens)
    x = x + self.param("pos_embedding",
                       common.logical(nn.initializers.normal(stddev=width ** -0.5),
                                      (None, "pos", "embed")),
                       (1, tokens.shape[1], width), jnp.float32)
    x = common.constrain(x, ("batch", "length", "embed"))
    x = nn.Dropout(rate=self.dropout)(x, not train)
    x = vit.Encoder(depth=dims["depth"], mlp_dim=dims["mlp_dim"],
                    num_heads=dims["num_heads"], dropout=self.dropout, dtype_mm=dtype,
                    scan=self.scan, remat_policy=self.remat_policy,
                    mlp_act=self.mlp_act, ln_eps=self.ln_eps, causal=self.causal,
                    name="Transformer")(x, not train)
    out["encoded"] = x
    real = (tokens != self.pad_id)[..., None]
    if self.pool_type == "last":
      last = jnp.maximum(real[..., 0].sum(1) - 1, 0)
      x = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    elif self.pool_type == "end":
      x = x[:, -1]
    elif self.pool_type == "argmax":
      at = jnp.argmax(tokens, axis=1)
      x = jnp.take_along_axis(x, at[:, None, None], axis=1)[:, 0]
    elif self.pool_type == "first":
      x = x[:, 0]
    elif self.pool_type == "gap":
      x = (x * real).sum(1) / jnp.maximum(real.sum(1), 1)
    elif self.pool_type == "max":
      x = jnp.where(real, x, -jnp.inf).max(1)
      x = jnp.where(jnp.isfinite(x), x, 0.0)  # all-padding text
    else:
      x = vit.MAPHead(mlp_dim=dims["mlp_dim"], num_heads=dims["num_heads"],
                      dtype_mm=dtype, mlp_act=self.mlp_act, ln_eps=self.ln_eps,
                      name="MAPHead_0")(x)
    return common.head_output(x, out, self.num_classes, self.head_zeroinit, dtype)
