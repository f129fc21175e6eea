"""BiT ResNet v2 (Kolesnikov et al. 2020, "Big Transfer") in flax.linen.

Registered as model "resnet". Pre-activation bottleneck ResNet (He et al.
2016, "Identity Mappings") with GroupNorm (32 groups) instead of BatchNorm and
weight-standardised convolutions, so there are no batch statistics: the model
only has a "params" collection and behaves the same for any batch size or
sharding.

Parameter names:
  stem_conv/kernel                      7x7/2 ("imagenet") or 3x3/1 ("small")
  stage_{s}/block_{b}/gn{1,2,3}/...     pre-activation GroupNorms
  stage_{s}/block_{b}/conv{1,2,3}/kernel   1x1, 3x3 (strided), 1x1
  stage_{s}/block_{b}/conv_proj/kernel  1x1 shortcut where the shape changes
  norm_pre_head/{scale,bias}            final GroupNorm before pooling
  head/{kernel,bias}                    classifier
(stages and blocks are numbered from 1).

Logical axis names: conv kernels [conv_h, conv_w, conv_in, conv_out],
GroupNorm scale/bias [norm], head [embed, classes]; activations are
constrained on their batch dimension only.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from big_vision_like.models import common
from big_vision_like.registry import MODELS

# depth -> bottleneck blocks per stage (He et al. 2016; BiT uses 50/101/152).
BLOCKS_PER_STAGE: dict[int, tuple[int, int, int, int]] = {
    26: (2, 2, 2, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
STEMS = ("imagenet", "small", "small_s2")
# "same": XLA's SAME padding (extra row/column at the end for even inputs).
# "symmetric": torch-style (stride - 1 + kernel - 1) // 2 on every side and a
# zero-padded stem max-pool, as the published BiT weights were trained with
# (timm's resnetv2_*_bit): needed to reproduce their logits exactly.
PADDINGS = ("same", "symmetric")
BASE_WIDTH = 64  # stem channels and first-stage bottleneck channels at width=1
NUM_GROUPS = 32


class StdConv(nn.Module):
  """Convolution whose kernel is standardised per output channel.

  Each output filter is shifted to mean 0 and scaled to variance 1 over its
  (height, width, input-channel) weights before use (Qiao et al. 2019). The
  stored param stays float32; only the standardised copy is cast to `dtype`.
  """
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  dtype: Any = jnp.float32
  padding: str = "same"
  eps: float = 1e-10

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (*self.kernel_size, x.shape[-1], self.features)
    kernel = self.param("kernel", common.logical(
        nn.initializers.lecun_normal(), ("conv_h", "conv_w", "conv_in", "conv_out")),
                        shape, jnp.float32)
    mean = jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
    var = jnp.var(kernel, axis=(0, 1, 2), keepdims=True)
    kernel = (kernel - mean) * jax.lax.rsqrt(var + self.eps)
    if self.padding == "symmetric":
      pad = [((s - 1 + k - 1) // 2,) * 2 for k, s in zip(self.kernel_size, self.strides)]
    else:
      pad = "SAME"
    return jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype),
        window_strides=self.strides, padding=pad,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def group_norm(num_groups: int, name: str, eps: float = 1e-6) -> nn.GroupNorm:
  """GroupNorm with logically named ("norm") scale and bias.

  The variance is computed as mean((x - mean)^2), as torch does, not flax's
  default mean(x^2) - mean^2, which loses float32 precision where |mean| >>
  std (the pre-activation residual stream): with that default a BiT-50 at 224
  px was 3x further from timm's float32 logits (pre_logits 8.6e-5 vs 2.8e-5;
  tools/reference_numerics).
  """
  return nn.GroupNorm(num_groups=num_groups, name=name, epsilon=eps, use_fast_variance=False,
                      scale_init=common.logical(nn.initializers.ones, ("norm",)),
                      bias_init=common.logical(nn.initializers.zeros, ("norm",)))


_ACT_NAMES = ("batch", None, None, None)


class BottleneckBlock(nn.Module):
  """Pre-activation bottleneck: GN-ReLU-conv1x1, GN-ReLU-conv3x3, GN-ReLU-conv1x1.

  The stride sits on the 3x3 conv (as in BiT). The shortcut is the identity,
  or a strided 1x1 conv of the pre-activated input when the shape changes.
  """
  mid_channels: int
  strides: tuple[int, int] = (1, 1)
  dtype: Any = jnp.float32
  num_groups: int = NUM_GROUPS
  padding: str = "same"
  std_eps: float = 1e-10
  gn_eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_channels = 4 * self.mid_channels
    conv = lambda *a, **kw: StdConv(*a, dtype=self.dtype, padding=self.padding,
                                    eps=self.std_eps, **kw)
    norm = lambda name: group_norm(self.num_groups, name, self.gn_eps)
    pre = nn.relu(norm("gn1")(x))
    if x.shape[-1] != out_channels or self.strides != (1, 1):
      shortcut = conv(out_channels, (1, 1), self.strides, name="conv_proj")(pre)
    else:
      shortcut = x
    y = conv(self.mid_channels, (1, 1), name="conv1")(pre)
    y = nn.relu(norm("gn2")(y))
    y = conv(self.mid_channels, (3, 3), self.strides, name="conv2")(y)
    y = nn.relu(norm("gn3")(y))
    y = conv(out_channels, (1, 1), name="conv3")(y)
    return common.constrain(y + shortcut, _ACT_NAMES)


class ResNetStage(nn.Module):
  """`num_blocks` bottleneck blocks; only the first one may downsample."""
  num_blocks: int
  mid_channels: int
  first_strides: tuple[int, int] = (1, 1)
  dtype: Any = jnp.float32
  num_groups: int = NUM_GROUPS
  padding: str = "same"
  std_eps: float = 1e-10
  gn_eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for b in range(1, self.num_blocks + 1):
      strides = self.first_strides if b == 1 else (1, 1)
      x = BottleneckBlock(self.mid_channels, strides, self.dtype,
                          self.num_groups, self.padding, self.std_eps,
                          self.gn_eps, name=f"block_{b}")(x)
    return x


@MODELS.register("resnet")
class ResNet(nn.Module):
  """BiT-style ResNet v2 returning `(logits, aux)`.

  Attributes:
    num_classes: classifier size; None or 0 returns the pre-logits as logits.
    depth: one of BLOCKS_PER_STAGE (26, 50, 101, 152, 200).
    width: channel multiplier (BiT R50x1 -> 1, R50x3 -> 3); 64 * width must
      be a whole multiple of 32 (the GroupNorm group count).
    stem: "imagenet" (7x7/2 conv + 3x3/2 max-pool), "small" (3x3/1 conv, no
      pool; for 28x28 or 32x32 images) or "small_s2" (3x3/2 conv, no pool: the
      same images at a quarter of the compute).
    dtype_mm: compute dtype of the convs and the head; params stay float32.
    head_zeroinit: zero-initialise the classifier kernel.
    gn_groups: GroupNorm groups (BiT: 32); fewer allow narrower models, e.g.
      width=0.25 (16 stem channels) with gn_groups=16.
    padding: "same" (default) or "symmetric" (the published BiT weights'
      padding; see PADDINGS).
    std_eps: epsilon of the weight standardisation (published BiT: 1e-8).
    gn_eps: GroupNorm epsilon (published BiT in timm: 1e-5).

  aux holds "stem", "stage_1".."stage_4" (raw residual-stream outputs),
  "pre_logits" (after the final GroupNorm+ReLU and global average pool) and,
  with a head, "logits".
  """
  num_classes: int | None = None
  depth: int = 50
  width: float = 1
  stem: str = "imagenet"
  dtype_mm: str = "float32"
  head_zeroinit: bool = True
  gn_groups: int = NUM_GROUPS
  padding: str = "same"
  std_eps: float = 1e-10
  gn_eps: float = 1e-6

  def __post_init__(self):
    # Validate at construction so a bad config fails before any tracing.
    if self.depth not in BLOCKS_PER_STAGE:
      raise ValueError(f"model.depth={self.depth!r} is not a supported ResNet "
                       f"depth; supported: "
                       f"{', '.join(map(str, BLOCKS_PER_STAGE))}.")
    if self.stem not in STEMS:
      raise ValueError(f"model.stem={self.stem!r} is unknown; known values: "
                       f"{', '.join(STEMS)}.")
    if self.padding not in PADDINGS:
      raise ValueError(f"model.padding={self.padding!r} is unknown; known values: "
                       f"{', '.join(PADDINGS)}.")
    self._stem_channels()
    common.resolve_dtype(self.dtype_mm)
    common.num_classes_or_none(self.num_classes)
    super().__post_init__()

  def _stem_channels(self) -> int:
    channels = BASE_WIDTH * self.width
    if (not isinstance(self.width, (int, float)) or self.width <= 0
        or channels != int(channels) or int(channels) % self.gn_groups):
      raise ValueError(f"model.width={self.width!r} gives {channels} stem "
                       f"channels, which do not divide into "
                       f"model.gn_groups={self.gn_groups} GroupNorm groups "
                       f"(with 32 groups: a positive multiple of 0.5).")
    return int(channels)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    del train  # no dropout or batch statistics: train and eval are identical
    common.check_images(images, "ResNet")
    dtype = common.resolve_dtype(self.dtype_mm)
    channels = self._stem_channels()
    out = {}

    conv_kw = dict(dtype=dtype, padding=self.padding, eps=self.std_eps,
                   name="stem_conv")
    if self.stem == "imagenet":
      x = StdConv(channels, (7, 7), (2, 2), **conv_kw)(images)
      if self.padding == "symmetric":
        # Zero padding (not -inf): the stem output is not yet activated, so
        # border windows may take the 0 (as in the published BiT models).
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
      else:
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    else:
      strides = (2, 2) if self.stem == "small_s2" else (1, 1)
      x = StdConv(channels, (3, 3), strides, **conv_kw)(images)
    x = common.constrain(x, _ACT_NAMES)
    out["stem"] = x

    for s, num_blocks in enumerate(BLOCKS_PER_STAGE[self.depth], start=1):
      # Each stage doubles the bottleneck width; all but the first halve the
      # resolution.
      x = ResNetStage(num_blocks, channels * 2 ** (s - 1),
                      (1, 1) if s == 1 else (2, 2), dtype, self.gn_groups,
                      self.padding, self.std_eps, self.gn_eps,
                      name=f"stage_{s}")(x)
      out[f"stage_{s}"] = x

    # Pre-activation design: the residual stream is normalised once more
    # before pooling.
    x = nn.relu(group_norm(self.gn_groups, "norm_pre_head", self.gn_eps)(x))
    x = jnp.mean(x, axis=(1, 2))
    return common.head_output(x, out, self.num_classes, self.head_zeroinit, dtype)
