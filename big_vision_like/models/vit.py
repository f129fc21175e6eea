"""Vision Transformer (Dosovitskiy et al. 2020) as a flax.linen module.

Registered as model "vit". One class covers everything the configs need:
named variants ("B/16", "Ti/4", ...) with per-field overrides for tiny custom
models, three pooling types (class token, global average, attention pooling),
learned or fixed 2-D sin-cos position embeddings, dropout, stochastic depth,
a low-precision matmul dtype, `nn.scan` over the blocks (compiles once per
model instead of once per layer) and rematerialisation policies.

Parameter names (with pool_type="tok", posemb="learn", scan=False):
  embedding/{kernel,bias}             patch embedding (a strided conv)
  cls                                 class token
  pos_embedding                       learned position embedding
  Transformer/encoderblock_{i}/...    LayerNorm_0, MultiHeadDotProductAttention_0,
                                      LayerNorm_1, MlpBlock_0/Dense_{0,1}
  Transformer/encoder_norm            final LayerNorm
  pre_logits                          optional dense+tanh (rep_size)
  head                                classifier
With scan=True the blocks are one "Transformer/encoderblock" whose params have
a leading depth axis.

Every parameter carries logical axis names (models/common.py LOGICAL_AXES:
e.g. MlpBlock_0/Dense_0/kernel is [embed, mlp], attention query kernels are
[embed, heads, kv], the scan axis is "layers") and the residual stream, MLP
hidden and per-head activations are constrained by name, so that
`config.sharding_rules` alone gives data, FSDP or tensor parallelism.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from big_vision_like.models import common
from big_vision_like.models import mixed_matmul
from big_vision_like.registry import MODELS

# name -> (width, depth, mlp_dim, num_heads), from the ViT papers
# (Dosovitskiy et al. 2020; Zhai et al. 2021 "Scaling Vision Transformers").
VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
}
POOL_TYPES = ("gap", "tok", "map")
POSEMB_TYPES = ("learn", "sincos2d")


def parse_variant(variant: str | None) -> tuple[tuple[int, int, int, int] | None,
                                                int | None]:
  """"S/16" -> (S's (width, depth, mlp_dim, heads), 16); "S" -> (..., None)."""
  if variant is None:
    return None, None
  name, _, patch = str(variant).partition("/")
  if name not in VARIANTS:
    raise ValueError(f"model.variant={variant!r}: unknown ViT size {name!r}; "
                     f"known sizes: {', '.join(VARIANTS)} (e.g. 'B/16').")
  if not patch:
    return VARIANTS[name], None
  if not patch.isdigit() or int(patch) <= 0:
    raise ValueError(f"model.variant={variant!r}: patch size {patch!r} after "
                     "'/' must be a positive integer (e.g. 'B/16').")
  return VARIANTS[name], int(patch)


def resolve_dims(module: Any, from_variant: dict[str, int | None], *,
                 example: str) -> dict[str, int]:
  """Each field of `from_variant` from `module` if set, else the variant's.

  Shared by the ViT and the text transformer: every size must end up a
  positive int and the width must split into the heads.
  """
  dims = {}
  for field, default in from_variant.items():
    value = getattr(module, field)
    value = default if value is None else value
    if value is None:
      raise ValueError(f"model.{field} is not set: give model.variant "
                       f"(e.g. {example!r}) or model.{field} explicitly.")
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
        or value <= 0):
      raise ValueError(f"model.{field}={value!r} must be a positive int.")
    dims[field] = int(value)
  if dims["width"] % dims["num_heads"]:
    raise ValueError(f"model.width={dims['width']} is not divisible by "
                     f"model.num_heads={dims['num_heads']}.")
  return dims


def posemb_sincos_2d(h: int, w: int, width: int,
                     temperature: float = 10_000.) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding, shape [1, h*w, width].

  A quarter of the channels encodes sin(y), cos(y), sin(x), cos(x) each, with
  frequencies spaced geometrically from 1 down to 1/temperature. Computed in
  numpy so it becomes a compile-time constant.
  """
  if width % 4:
    raise ValueError(f"posemb='sincos2d' needs model width divisible by 4, "
                     f"got width={width}.")
  quarter = width // 4
  omega = 1.0 / temperature ** (np.arange(quarter) / max(quarter - 1, 1))
  ys, xs = np.mgrid[:h, :w]
  y = ys.reshape(-1, 1) * omega[None]
  x = xs.reshape(-1, 1) * omega[None]
  emb = np.concatenate([np.sin(y), np.cos(y), np.sin(x), np.cos(x)], axis=1)
  return emb[None].astype(np.float32)


_ATTN_NAMES = ("batch", "length", "heads", "kv")


def attention_implementation(dtype: Any, head_dim: int, backend: str | None = None
                             ) -> str:
  """Which attention core `_attention` runs: "cudnn", "heads_major" or "xla".

  - "cudnn": on a GPU with bf16/fp16 activations and head sizes cuDNN takes
    (multiples of 8, at most 128), cuDNN's flash-attention kernel.
  - "heads_major": on CPU, `heads_major_attention` below. XLA's CPU backend
    runs the two batched dots ~1.6x faster (forward + backward) when heads
    come before tokens in memory than in the [B, T, N, H] layout
    jax.nn.dot_product_attention contracts directly (BENCHMARKS.md, "Train
    step vs a plain JAX baseline").
  - "xla": elsewhere (TPU, GPU in float32), jax.nn.dot_product_attention's
    own XLA version, whose layouts those compilers choose themselves.
  The math is the same everywhere: softmax(q k^T / sqrt(d)) v, logits and
  softmax in float32.
  """
  backend = backend or jax.default_backend()
  if (backend in ("gpu", "cuda") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
      and head_dim % 8 == 0 and head_dim <= 128):
    return "cudnn"
  return "heads_major" if backend == "cpu" else "xla"


def heads_major_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          mask: jax.Array | None = None) -> jax.Array:
  """softmax(q k^T / sqrt(d)) v for [B, T, N, H] inputs, computed as [B, N, T, H].

  The same math as jax.nn.dot_product_attention's XLA version (logits scaled
  and softmaxed in float32, masked logits set to -0.7 * float32 max, so a
  fully masked row is uniform), with the heads axis moved before the tokens
  first: both dots are then plain batched matmuls over contiguous [T, H]
  blocks, which XLA's CPU backend runs much faster (see
  `attention_implementation`). `mask`: bool, broadcastable to [B, N, T, S].
  """
  heads_first = lambda t: jnp.swapaxes(t, 1, 2)
  q, k, v = heads_first(query), heads_first(key), heads_first(value)
  logits = jnp.einsum("bnth,bnsh->bnts", q, k, preferred_element_type=jnp.float32)
  logits = logits * jnp.float32(query.shape[-1] ** -0.5)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.float32(-0.7 * np.finfo(np.float32).max))
  probs = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
  return heads_first(jnp.einsum("bnts,bnsh->bnth", probs, v))


def _attention(query, key, value, mask=None, dropout_rng=None,
               dropout_rate=0.0, broadcast_dropout=True, deterministic=False,
               dtype=None, precision=None, force_fp32_for_softmax=False):
  """The attention core with per-head activations named by axis.

  (Explicit keywords: flax passes an attention_fn only those it declares.)
  """
  query, key, value = (common.constrain(t, _ATTN_NAMES)
                       for t in (query, key, value))
  if dropout_rate == 0.0 or deterministic:
    mask = None if mask is None else mask.astype(bool)
    out = None
    impl = attention_implementation(query.dtype, query.shape[-1])
    if impl == "cudnn":
      try:  # cuDNN's fused kernel; shapes it does not take are refused at trace time
        out = jax.nn.dot_product_attention(query, key, value, mask=mask,
                                           implementation="cudnn")
      except (ValueError, NotImplementedError, RuntimeError, TypeError):
        out = None
    elif impl == "heads_major":
      out = heads_major_attention(query, key, value, mask)
    if out is None:
      out = jax.nn.dot_product_attention(query, key, value, mask=mask)
  else:
    out = nn.dot_product_attention(
        query, key, value, mask=mask, dropout_rng=dropout_rng,
        dropout_rate=dropout_rate, broadcast_dropout=broadcast_dropout,
        deterministic=deterministic, dtype=dtype, precision=precision,
        force_fp32_for_softmax=force_fp32_for_softmax)
  return common.constrain(out, _ATTN_NAMES)


def attention(num_heads: int, dtype: Any, name: str | None = None,
              dot_general: Callable[..., Any] | None = None
              ) -> nn.MultiHeadDotProductAttention:
  """Multi-head attention with logically named params (no prob. dropout).

  `dot_general` (None: jax's) computes the q/k/v and output projections.
  """
  xavier = nn.initializers.xavier_uniform()
  zeros = nn.initializers.zeros
  dots = ({"qkv_dot_general": dot_general, "out_dot_general": dot_general}
          if dot_general else {})
  return nn.MultiHeadDotProductAttention(
      num_heads=num_heads, dtype=dtype, name=name, **dots,
      kernel_init=common.logical(xavier, ("embed", "heads", "kv")),
      bias_init=common.logical(zeros, ("heads", "kv")),
      out_kernel_init=common.logical(xavier, ("heads", "kv", "embed")),
      out_bias_init=common.logical(zeros, ("embed",)),
      attention_fn=_attention, deterministic=True)


def _drop_path(x: jax.Array, rate: Any, rng: jax.Array) -> jax.Array:
  """Stochastic depth: zero a residual branch for whole examples.

  `rate` may be a traced scalar (it is a scanned input under nn.scan), so no
  Python branching on its value here.
  """
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, jnp.zeros_like(x)).astype(x.dtype)


class MlpBlock(nn.Module):
  """Dense -> GELU -> dropout -> Dense, the transformer feed-forward layer."""
  mlp_dim: int
  dropout: float = 0.0
  dtype_mm: Any = jnp.float32
  act: str = "gelu_tanh"
  dot_general: Callable[..., Any] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    width = x.shape[-1]
    dense = lambda n, names: common.dense(
        n, names, dtype=self.dtype_mm, dot_general=self.dot_general,
        kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(stddev=1e-6))
    x = dense(self.mlp_dim, ("embed", "mlp"))(x)
    x = common.constrain(x, ("batch", "length", "mlp"))
    x = common.activation(self.act)(x)
    x = nn.Dropout(rate=self.dropout)(x, deterministic)
    return dense(width, ("mlp", "embed"))(x)


_RESIDUAL_NAMES = ("batch", "length", "embed")


class Encoder1DBlock(nn.Module):
  """Pre-LayerNorm transformer block: x + attn(LN(x)), then x + mlp(LN(x)).

  Returns `(x, None)` so the same class can be the body of nn.scan.
  `drop_path_rate` is this block's stochastic-depth rate (a traced scalar
  under scan); it is only used when `use_drop_path` is set.
  """
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  use_drop_path: bool = False
  dtype_mm: Any = jnp.float32
  mlp_act: str = "gelu_tanh"
  ln_eps: float = 1e-6
  causal: bool = False
  dot_general: Callable[..., Any] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, drop_path_rate: Any,
               deterministic: bool = True) -> tuple[jax.Array, None]:
    def residual(x, y):
      y = nn.Dropout(rate=self.dropout)(y, deterministic)
      if self.use_drop_path and not deterministic:
        y = _drop_path(y, drop_path_rate, self.make_rng("dropout"))
      return x + y

    x = common.constrain(x, _RESIDUAL_NAMES)
    y = common.layer_norm(eps=self.ln_eps)(x)
    # A causal mask (text towers of CLIP): position i attends to <= i only.
    mask = nn.make_causal_mask(jnp.ones(x.shape[:2], jnp.int32)) if self.causal else None
    y = attention(self.num_heads, self.dtype_mm,
                  dot_general=self.dot_general)(y, mask=mask)
    x = residual(x, y)
    y = common.layer_norm(eps=self.ln_eps)(x)
    y = MlpBlock(mlp_dim=self.mlp_dim, dropout=self.dropout,
                 dtype_mm=self.dtype_mm, act=self.mlp_act,
                 dot_general=self.dot_general)(y, deterministic)
    return common.constrain(residual(x, y), _RESIDUAL_NAMES), None


class Encoder(nn.Module):
  """The stack of `depth` blocks plus the final LayerNorm."""
  depth: int
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  drop_path: float = 0.0
  dtype_mm: Any = jnp.float32
  scan: bool = False
  remat_policy: str = "none"
  mlp_act: str = "gelu_tanh"
  ln_eps: float = 1e-6
  causal: bool = False
  dot_general: Callable[..., Any] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    # Stochastic depth grows linearly from 0 (first block) to `drop_path`.
    rates = np.linspace(0.0, self.drop_path, self.depth, dtype=np.float32)
    block_cls: Callable[..., nn.Module] = Encoder1DBlock
    if self.remat_policy != "none":
      # Argument 3 of __call__(self, x, rate, deterministic) is a Python bool.
      block_cls = nn.remat(block_cls, prevent_cse=not self.scan,
                           static_argnums=(3,),
                           policy=getattr(jax.checkpoint_policies,
                                          self.remat_policy))
    block_kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                    dropout=self.dropout, use_drop_path=self.drop_path > 0,
                    dtype_mm=self.dtype_mm, mlp_act=self.mlp_act,
                    ln_eps=self.ln_eps, causal=self.causal,
                    dot_general=self.dot_general)
    if self.scan:
      stack = nn.scan(block_cls,
                      variable_axes={"params": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(0, nn.broadcast),
                      length=self.depth,
                      # The stacked depth axis is named "layers".
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(name="encoderblock", **block_kw)(
          x, jnp.asarray(rates), deterministic)
    else:
      for i in range(self.depth):
        x, _ = block_cls(name=f"encoderblock_{i}", **block_kw)(
            x, float(rates[i]), deterministic)
    return common.layer_norm(name="encoder_norm", eps=self.ln_eps)(x)


class MAPHead(nn.Module):
  """Multihead attention pooling: a learned probe attends over all tokens."""
  mlp_dim: int
  num_heads: int
  dtype_mm: Any = jnp.float32
  mlp_act: str = "gelu_tanh"
  ln_eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, _, width = x.shape
    probe = self.param("probe", common.logical(nn.initializers.xavier_uniform(),
                                               (None, None, "embed")),
                       (1, 1, width), jnp.float32)
    probe = jnp.broadcast_to(probe, (batch, 1, width))
    x = attention(self.num_heads, self.dtype_mm)(probe, x)
    y = common.layer_norm(eps=self.ln_eps)(x)
    x = x + MlpBlock(mlp_dim=self.mlp_dim, dtype_mm=self.dtype_mm,
                     act=self.mlp_act)(y)
    return x[:, 0]


@MODELS.register("vit")
class ViT(nn.Module):
  """Vision Transformer returning `(logits, aux)`.

  Attributes:
    num_classes: classifier size; None or 0 returns the pre-logits as logits.
    variant: "<size>/<patch>" such as "B/16" or "Ti/4" (sizes: VARIANTS).
    width, depth, mlp_dim, num_heads, patch_size: overrides of the variant's
      values (None = take it from the variant).
    pool_type: "gap" (mean of tokens), "tok" (class token) or "map"
      (attention pooling with a learned probe).
    posemb: "learn" (trained) or "sincos2d" (fixed).
    rep_size: False, or True (= width) / an int: a dense+tanh pre-logits layer.
    dropout: dropout rate after attention, inside and after the MLP.
    drop_path: stochastic-depth rate of the last block (0 for the first).
    head_zeroinit: zero-initialise the classifier kernel.
    dtype_mm: compute dtype of matmuls/convs ("float32" or "bfloat16");
      params and LayerNorms stay float32.
    dtype_mm_out: None (matmul results in dtype_mm, flax's way) or
      "float32": the encoder's dense layers take dtype_mm operands and give
      float32 results, in the backward pass too (mixed_matmul.py; about
      twice the float32 matmul rate on CPUs with AVX512_BF16).
    scan: run the blocks with nn.scan (params stacked on a leading depth axis).
    remat_policy: "none" or a jax.checkpoint_policies name, e.g.
      "nothing_saveable" or "dots_saveable"; rematerialises each block.
    conv_stem: channels of 3x3 stride-2 convs (LayerNorm + GELU) run before
      the patch embedding, e.g. (32, 64, 128) with patch_size=1 turns a 28x28
      image into 4x4 = 16 tokens. Empty (default): the plain patchify stem.
    mlp_act: the MLP activation (common.ACTIVATIONS): "gelu_tanh" (big_vision,
      default), "gelu" (exact; timm, open_clip LAION models), "quick_gelu"
      (OpenAI CLIP).
    ln_eps: LayerNorm epsilon (1e-6 big_vision/timm; 1e-5 CLIP).
    ln_pre: a LayerNorm ("ln_pre") after the position embedding, before the
      blocks (CLIP's image tower).

  aux holds "stem" (patch embeddings, [B, h, w, D]), "encoded" (encoder
  output after the final LayerNorm, [B, tokens, D], class token first when
  pool_type="tok"), "pre_logits" ([B, D or rep_size]) and, with a head,
  "logits".
  """
  num_classes: int | None = None
  variant: str | None = None
  width: int | None = None
  depth: int | None = None
  mlp_dim: int | None = None
  num_heads: int | None = None
  patch_size: int | None = None
  pool_type: str = "gap"
  posemb: str = "learn"
  rep_size: bool | int = False
  dropout: float = 0.0
  drop_path: float = 0.0
  head_zeroinit: bool = True
  dtype_mm: str = "float32"
  dtype_mm_out: str | None = None
  scan: bool = False
  remat_policy: str = "none"
  conv_stem: tuple[int, ...] = ()
  mlp_act: str = "gelu_tanh"
  ln_eps: float = 1e-6
  ln_pre: bool = False

  def __post_init__(self):
    # Validate at construction so a bad config fails before any tracing.
    self._dims()
    if self.pool_type not in POOL_TYPES:
      raise ValueError(f"model.pool_type={self.pool_type!r} is unknown; "
                       f"known values: {', '.join(POOL_TYPES)}.")
    if self.posemb not in POSEMB_TYPES:
      raise ValueError(f"model.posemb={self.posemb!r} is unknown; "
                       f"known values: {', '.join(POSEMB_TYPES)}.")
    if (self.remat_policy != "none"
        and not hasattr(jax.checkpoint_policies, self.remat_policy)):
      known = sorted(n for n in dir(jax.checkpoint_policies)
                     if not n.startswith("_"))
      raise ValueError(f"model.remat_policy={self.remat_policy!r} is unknown; "
                       f"use 'none' or one of jax.checkpoint_policies: "
                       f"{', '.join(known)}.")
    if any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c <= 0
           for c in self.conv_stem):
      raise ValueError(f"model.conv_stem={self.conv_stem!r} must be a sequence "
                       "of positive channel counts.")
    for field in ("dropout", "drop_path"):
      rate = getattr(self, field)
      if not 0.0 <= rate < 1.0:
        raise ValueError(f"model.{field}={rate!r} must be in [0, 1).")
    mixed_matmul.for_config(self.dtype_mm_out,
                            common.resolve_dtype(self.dtype_mm))
    common.num_classes_or_none(self.num_classes)
    common.activation(self.mlp_act)
    super().__post_init__()

  def _dims(self) -> dict[str, int]:
    """Resolved width/depth/mlp_dim/num_heads/patch_size (variant + overrides)."""
    sizes, patch = parse_variant(self.variant)
    from_variant = dict(zip(("width", "depth", "mlp_dim", "num_heads"),
                            sizes or (None,) * 4), patch_size=patch)
    return resolve_dims(self, from_variant, example="S/16")

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    common.check_images(images, "ViT")
    dims = self._dims()
    width, patch = dims["width"], dims["patch_size"]
    dtype = common.resolve_dtype(self.dtype_mm)
    out = {}
    # Optional convolutional stem (Xiao et al. 2021, "Early convolutions help
    # transformers see better"): 3x3 stride-2 convs, each LayerNorm + GELU,
    # before the patch embedding. Much faster convergence on small data.
    for i, channels in enumerate(self.conv_stem):
      images = nn.Conv(int(channels), (3, 3), strides=(2, 2), padding="SAME",
                       use_bias=False, dtype=dtype, name=f"conv_stem_{i}",
                       kernel_init=common.logical(
                           nn.initializers.lecun_normal(),
                           ("conv_h", "conv_w", "conv_in", "conv_out")))(images)
      images = nn.gelu(common.layer_norm(name=f"conv_stem_norm_{i}")(images))
    _, h, w, _ = images.shape
    if h % patch or w % patch:
      what = "the conv stem's output" if self.conv_stem else "image"
      raise ValueError(f"ViT: {what} shape {tuple(images.shape)} (height {h}, "
                       f"width {w}) is not divisible by patch_size={patch}.")

    # Patch embedding: a non-overlapping strided conv, then flatten the grid.
    x = nn.Conv(width, (patch, patch), strides=(patch, patch),
                padding="VALID", dtype=dtype, name="embedding",
                kernel_init=common.logical(
                    nn.initializers.lecun_normal(),
                    ("conv_h", "conv_w", "conv_in", "embed")),
                bias_init=common.logical(nn.initializers.zeros, ("embed",)))(images)
    out["stem"] = x
    batch, gh, gw, _ = x.shape
    x = x.reshape(batch, gh * gw, width)

    if self.posemb == "sincos2d":
      # Fixed embedding for the patches only; a class token needs none.
      x = x + jnp.asarray(posemb_sincos_2d(gh, gw, width))

    if self.pool_type == "tok":
      cls = self.param("cls", common.logical(nn.initializers.zeros,
                                             (None, None, "embed")),
                       (1, 1, width), jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, width))
                           .astype(x.dtype), x], axis=1)

    if self.posemb == "learn":
      # The class token (if any) gets its own learned position too, as in
      # the original ViT (197 positions for B/16 at 224).
      if self.has_variable("params", "pos_embedding"):
        built = self.get_variable("params", "pos_embedding").shape[1]
        if built != x.shape[1]:
          raise ValueError(f"ViT: images {tuple(images.shape)} give "
                           f"{x.shape[1]} tokens but pos_embedding was built "
                           f"for {built}; use the training image size.")
      x = x + self.param("pos_embedding",
                         common.logical(nn.initializers.normal(stddev=width ** -0.5),
                                        (None, "pos", "embed")),
                         (1, x.shape[1], width), jnp.float32)

    if self.ln_pre:
      x = common.layer_norm(name="ln_pre", eps=self.ln_eps)(x)
    x = common.constrain(x, _RESIDUAL_NAMES)
    x = nn.Dropout(rate=self.dropout)(x, not train)
    x = Encoder(depth=dims["depth"], mlp_dim=dims["mlp_dim"],
                num_heads=dims["num_heads"], dropout=self.dropout,
                drop_path=self.drop_path, dtype_mm=dtype, scan=self.scan,
                remat_policy=self.remat_policy, mlp_act=self.mlp_act,
                ln_eps=self.ln_eps,
                dot_general=mixed_matmul.for_config(self.dtype_mm_out, dtype),
                name="Transformer")(x, not train)
    out["encoded"] = x

    if self.pool_type == "gap":
      x = jnp.mean(x, axis=1)
    elif self.pool_type == "tok":
      x = x[:, 0]
    else:
      x = MAPHead(mlp_dim=dims["mlp_dim"], num_heads=dims["num_heads"],
                  dtype_mm=dtype, mlp_act=self.mlp_act, ln_eps=self.ln_eps,
                  name="MAPHead_0")(x)

    if self.rep_size:
      rep = width if self.rep_size is True else int(self.rep_size)
      x = nn.tanh(common.dense(rep, ("embed", "rep"), dtype=dtype,
                               name="pre_logits")(x))
    return common.head_output(x, out, self.num_classes, self.head_zeroinit, dtype)
