"""BERT encoder: the text tower of LiT's published B16B/L16L models.

LiT (Zhai et al. 2022) pairs a ViT image tower with a BERT text tower, as
big_vision builds it (its `proj.flaxformer.bert` model on flaxformer's
`BertEncoder`). The published numerics are flaxformer's, which differ from
our `text_transformer` in every block, so this is its own small module:

- embeddings: token + learned position (a table of `max_len` rows, positions
  0..L-1 used) + segment (all segment 0), then LayerNorm;
- post-LayerNorm blocks: x = LN(x + attn(x)), x = LN(x + mlp(x)), with
  tanh-approximated GELU (flaxformer's `nn.gelu`) and LayerNorm eps 1e-12;
- attention ignores padding keys (token id `pad_id`, 0 in BERT vocabularies);
- the output is the first position ([CLS]) through the "head" projection.

Texts are `[CLS] wordpieces... [PAD]...` (the `tokenize` pp op with
`tokenizer='bert:VOCAB', bos=True, eos='none'`). Parameter names are ours
(`weights/big_vision.py` maps flaxformer's `BertEncoder_0/...` both ways);
blocks reuse the ViT's attention and MLP layers, so their logical axis names
and sharding rules are the ViT's.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from big_vision_like.models import common, text, vit
from big_vision_like.registry import MODELS


class BertBlock(nn.Module):
  """Post-LayerNorm transformer block (BERT's order, not the ViT's)."""
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  dtype_mm: jnp.dtype = jnp.float32
  mlp_act: str = "gelu_tanh"
  ln_eps: float = 1e-12

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool = True
               ) -> jax.Array:
    y = vit.attention(self.num_heads, self.dtype_mm, name="attention")(x, mask=mask)
    y = nn.Dropout(rate=self.dropout)(y, deterministic)
    x = common.layer_norm(name="attention_norm", eps=self.ln_eps)(x + y)
    y = vit.MlpBlock(mlp_dim=self.mlp_dim, dropout=self.dropout, dtype_mm=self.dtype_mm,
                     act=self.mlp_act, name="mlp")(x, deterministic)
    y = nn.Dropout(rate=self.dropout)(y, deterministic)
    x = common.layer_norm(name="mlp_norm", eps=self.ln_eps)(x + y)
    return common.constrain(x, ("batch", "length", "embed"))


@MODELS.register("bert")
class Bert(nn.Module):
  """Returns `(features, aux)`; features [B, num_classes or width].

  Attributes:
    vocab_size: number of token ids (30,522 for BERT's uncased vocabulary).
    variant: a size name ("B" = BERT-base, "L" = BERT-large); explicit
      width/depth/mlp_dim/num_heads override it.
    max_len: rows of the position table (512 in published BERTs); texts may
      be shorter, never longer.
    num_segments: rows of the segment table (texts here use segment 0).
    num_classes: the output projection ("head"); None returns [CLS] features.
    pad_id: the padding token, masked out as an attention key.
  """
  vocab_size: int = 30_522
  variant: str | None = None
  width: int | None = None
  depth: int | None = None
  mlp_dim: int | None = None
  num_heads: int | None = None
  max_len: int = 512
  num_segments: int = 2
  num_classes: int | None = None
  pad_id: int = 0
  dropout: float = 0.0
  head_zeroinit: bool = True
  dtype_mm: str = "float32"
  mlp_act: str = "gelu_tanh"
  ln_eps: float = 1e-12

  def __post_init__(self):
    if not isinstance(self.vocab_size, int) or self.vocab_size <= 0:
      raise ValueError(f"bert model.vocab_size={self.vocab_size!r} must be a positive int")
    if not isinstance(self.max_len, int) or self.max_len <= 0:
      raise ValueError(f"bert model.max_len={self.max_len!r} must be a positive int")
    self._dims()
    common.resolve_dtype(self.dtype_mm)
    common.activation(self.mlp_act)
    super().__post_init__()

  def _dims(self) -> dict[str, int]:
    return text.tower_dims(self)

  @nn.compact
  def __call__(self, tokens: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    text.check_tokens(tokens, "Bert")
    if tokens.shape[1] > self.max_len:
      raise ValueError(f"Bert: texts of {tokens.shape[1]} tokens exceed model.max_len="
                       f"{self.max_len} (the position table)")
    dims = self._dims()
    width = dims["width"]
    dtype = common.resolve_dtype(self.dtype_mm)
    init = nn.initializers.truncated_normal(stddev=0.02)  # BERT's initializer range

    def table(name, rows, names):
      return self.param(name, common.logical(init, names), (rows, width), jnp.float32)

    x = jnp.take(table("embedding", self.vocab_size, ("vocab", "embed")), tokens, axis=0)
    x = x + table("pos_embedding", self.max_len, ("pos", "embed"))[None, :tokens.shape[1]]
    x = x + table("segment_embedding", self.num_segments, (None, "embed"))[0]
    x = common.layer_norm(name="embedding_norm", eps=self.ln_eps)(x)
    x = common.constrain(x, ("batch", "length", "embed"))
    x = nn.Dropout(rate=self.dropout)(x, not train)
    # [B, 1, 1, L]: every query sees the non-padding keys.
    mask = (tokens != self.pad_id)[:, None, None, :]
    for i in range(dims["depth"]):
      x = BertBlock(mlp_dim=dims["mlp_dim"], num_heads=dims["num_heads"],
                    dropout=self.dropout, dtype_mm=dtype, mlp_act=self.mlp_act,
                    ln_eps=self.ln_eps, name=f"block_{i}")(x, mask, not train)
    out = {"encoded": x}
    return common.head_output(x[:, 0], out, self.num_classes, self.head_zeroinit, dtype)
