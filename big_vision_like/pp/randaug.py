"""RandAugment (Cubuk et al., 2019) as a stateless pp op: `randaug(2, 15)`.

ImageNet training recipes (ViT/DeiT-style "AugReg") apply RandAugment per
example inside `tf.data`, so it is written in TensorFlow graph ops, works on
images of any (statically unknown) size, and takes all of its randomness from
the per-example seed of the pp builder: the same seed always gives the same
image. Each layer draws one op uniformly and runs only that op (one
functional `Case` op, see `run_drawn_op`), so the cost per layer is one op,
not all of them.

It runs on the host CPU for every training image, next to the JPEG decode,
so its cost per image is what limits throughput (`randaug(2, 15)` at first
took 0.64 of the bare decode+resize rate). What is cheap in tf.data on CPU
shaped the code: the layers are unrolled (a `tf.while_loop` cost ~0.2 ms per
image); elementwise passes over the image are cheap but a per-element
`tf.gather` (~0.6 ms per 224x224x3) or a broadcast of a [C] vector over HWC
is not, so per-channel arithmetic uses an [H, W * C] view and Sharpness sums
shifted slices instead of `depthwise_conv2d`. Every rewrite gives the same
bytes as the straightforward version it replaced (tests/test_randaug.py
compares with that version's outputs).

The image functions (`rotate`, `equalize`, ...) are public so that they can be
tested and reused with explicit arguments; `randaug` maps its magnitude to
their arguments by one of two conventions (`get_randaug`'s docstring has the
tables): "autoaugment", the default, is the mapping of the original TF
RandAugment code that big_vision's `randaug(2, 15)` runs, so that ImageNet
configs written for it mean the same here; "increasing" makes every op
monotone in the magnitude and the identity at 0.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, NamedTuple, Sequence

import tensorflow as tf

from big_vision_like.pp.builder import get_seed, random_op
from big_vision_like.registry import PP_OPS

try:  # The Case builder behind tf.switch_case; see `run_drawn_op`.
  from tensorflow.python.ops import cond_v2 as _cond_v2
except ImportError:  # pragma: no cover - a TF that moved it: plain switch.
  _cond_v2 = None
_CASE_CAN_STAY_FUNCTIONAL = _cond_v2 is not None and hasattr(
    _cond_v2, "indexed_case") and "lower_using_switch_merge" in (
        inspect.signature(_cond_v2.indexed_case).parameters)

Example = dict[str, Any]

MAX_MAGNITUDE = 30


# ------------------------------------------------------------ helpers


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
  """Rounds a float image to the nearest uint8 value, clipping to [0, 255]."""
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _blend(degenerate: tf.Tensor, image: tf.Tensor,
           factor: tf.Tensor | float) -> tf.Tensor:
  """`degenerate + factor * (image - degenerate)` as uint8 (PIL's enhance).

  factor 0 gives the degenerate image, 1 the image itself, > 1 extrapolates.
  Rounded half up and clipped to [0, 255]; written as few full-image ops
  as possible, since each costs a pass over the image.
  """
  offset = tf.cast(degenerate, tf.float32) * (1.0 - factor) + 0.5
  blended = _float(image) * factor + offset
  return tf.cast(tf.clip_by_value(blended, 0.0, 255.0), tf.uint8)


def _float(image: tf.Tensor) -> tf.Tensor:
  """The image as float32 (a no-op if it already is)."""
  return image if image.dtype == tf.float32 else tf.cast(image, tf.float32)


def _grayscale(image: tf.Tensor) -> tf.Tensor:
  """Luma (ITU-R 601) as float, rounded like an 8-bit "L" image; HW1.

  The weighted sum of `tf.image.rgb_to_grayscale`, written out: the same
  rounded values for all 2^24 colours (checked exhaustively when it was
  written), and cheaper than its matrix product.
  """
  x = _float(image)
  if image.shape[-1] == 1:
    return x
  return tf.round(x[..., :1] * 0.2989 + x[..., 1:2] * 0.587
                  + x[..., 2:] * 0.114)


_INTERPOLATIONS = ("nearest", "bilinear")


def _affine(image: tf.Tensor, transform: Sequence[tf.Tensor | float],
            fill: int, interpolation: str) -> tf.Tensor:
  """Resamples `image`; `transform` maps OUTPUT to INPUT pixel coordinates.

  `transform = [a0, a1, a2, b0, b1, b2]`: output pixel (x=column, y=row)
  reads the input at (a0 x + a1 y + a2, b0 x + b1 y + b2), pixel centres at
  integer coordinates. Pixels read from outside the image get `fill`.
  """
  if interpolation == "bilinear":
    transform = tf.cast(tf.stack(list(transform) + [0.0, 0.0]), tf.float32)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=_float(image)[None], transforms=transform[None],
        output_shape=tf.shape(image)[:2], fill_value=float(fill),
        interpolation="BILINEAR", fill_mode="CONSTANT")
    return _to_uint8(out[0])
  if interpolation != "nearest":
    raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got "
                     f"{interpolation!r}.")
  # Nearest neighbour as one gather of whole pixels: ~5x faster on CPU than
  # the transform kernel. The image gets a one-pixel border of `fill`, and
  # source coordinates outside the image are clamped onto that border.
  a0, a1, a2, b0, b1, b2 = [tf.cast(v, tf.float32) for v in transform]
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  ys = tf.cast(tf.range(h), tf.float32)[:, None]
  xs = tf.cast(tf.range(w), tf.float32)[None, :]
  src_x = tf.cast(tf.floor(a0 * xs + a1 * ys + a2 + 0.5), tf.int32)
  src_y = tf.cast(tf.floor(b0 * xs + b1 * ys + b2 + 0.5), tf.int32)
  index = ((tf.clip_by_value(src_y, -1, h) + 1) * (w + 2)
           + tf.clip_by_value(src_x, -1, w) + 1)
  bordered = tf.pad(image, [[1, 1], [1, 1], [0, 0]],
                    constant_values=tf.constant(fill, image.dtype))
  return tf.gather(tf.reshape(bordered, [-1, tf.shape(image)[2]]), index)


# -------------------------------------------- image ops, explicit arguments


def identity(image: tf.Tensor) -> tf.Tensor:
  """Returns the image unchanged."""
  return image


def _per_channel(image: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
  """`values` [C] repeated to [W * C], the rows of an [H, W * C] view.

  Eigen broadcasts a row of [W * C] over [H, W * C] several times faster
  than a [C] vector over [H, W, C] (~0.1 vs ~0.5 ms per 224x224 image), so
  per-channel arithmetic uses this view.
  """
  return tf.tile(values, tf.shape(image)[1:2])


def _rows(image: tf.Tensor) -> tf.Tensor:
  """The [H, W * C] view of an HWC image."""
  return tf.reshape(image, tf.stack([tf.shape(image)[0], -1]))


def autocontrast(image: tf.Tensor) -> tf.Tensor:
  """Stretches each channel linearly so that its min -> 0 and max -> 255.

  Values are truncated like PIL's `ImageOps.autocontrast`; a constant channel
  is left as it is.
  """
  lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float32)
  hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float32)
  varies = hi > lo
  scale = tf.where(varies, 255.0 / tf.maximum(hi - lo, 1.0), 1.0)
  # The exact result (x - lo) * 255 / (hi - lo) has a fractional part of at
  # most 254/255, and x * scale + offset is within 1e-4 of it, so adding 1e-3
  # before truncating gives the exact floor (x == hi gives 255, not 254).
  offset = tf.where(varies, -lo * scale, 0.0) + 1e-3
  out = (_rows(_float(image)) * _per_channel(image, scale)
         + _per_channel(image, offset))
  return tf.reshape(tf.cast(out, tf.uint8), tf.shape(image))


def equalize(image: tf.Tensor) -> tf.Tensor:
  """Histogram equalization per channel, with PIL's `ImageOps.equalize` rule.

  With `step = (n_pixels - count of the highest present value) // 255`, value
  v maps to `(n_pixels below v + step // 2) // step`; a channel with
  step == 0 (at most one value, or nearly so) is left as it is.
  """
  image = tf.convert_to_tensor(image)
  channels = image.shape[-1] if image.shape[-1] is not None else tf.shape(
      image)[2]
  # Value v of channel c is bin 256 c + v of one flat histogram, and the
  # same index reads the flat [C * 256] lookup table: one bincount and one
  # gather, in the image's own layout (no transposes).
  bins = _rows(tf.cast(image, tf.int32)) + _per_channel(
      image, tf.range(channels) * 256)
  hist = tf.reshape(
      tf.math.bincount(bins, minlength=256 * channels,
                       maxlength=256 * channels), [channels, 256])
  values = tf.range(256)
  last_present = tf.reduce_max(tf.where(hist > 0, values, -1), axis=1)
  last_count = tf.gather(hist, last_present, batch_dims=1)
  step = (tf.reduce_sum(hist, axis=1) - last_count) // 255  # [C]
  below = tf.cumsum(hist, axis=1, exclusive=True)
  safe_step = tf.maximum(step, 1)[:, None]
  lut = tf.minimum((below + safe_step // 2) // safe_step, 255)
  lut = tf.where(step[:, None] > 0, lut, values[None, :])  # [C, 256]
  lut = tf.cast(tf.reshape(lut, [-1]), tf.uint8)
  if _XLA_LOOKUP and image.shape.is_fully_defined() and (
      not tf.executing_eagerly()):
    return _lookup_xla(lut, image)
  return tf.reshape(tf.gather(lut, bins), tf.shape(image))


# TF's gather costs ~6 ns per element on CPU (a 224x224x3 lookup ~0.9 ms,
# two thirds of Equalize); compiled by XLA, the same lookup fused with its
# index arithmetic takes ~0.2 ms, call included. Exact integer work, so the
# bytes are the same. Only for images whose shape is known when the pp is
# traced (fixed-size crops): XLA compiles once per shape, and an unknown
# shape would mean a compilation per distinct image size.
_XLA_LOOKUP = tf.test.is_built_with_xla()


@tf.function(jit_compile=True, autograph=False)
def _lookup_xla(lut: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
  """`lut[256 c + image[..., c]]`: a flat [C * 256] per-channel table."""
  offsets = tf.range(image.shape[-1]) * 256
  return tf.gather(lut, tf.cast(image, tf.int32) + offsets)


def invert(image: tf.Tensor) -> tf.Tensor:
  """255 - image."""
  return 255 - image


def solarize(image: tf.Tensor, threshold: int) -> tf.Tensor:
  """Inverts the pixels >= threshold (256: none, 0: all)."""
  if threshold > 255:
    return image
  # 255 - x == x XOR 255 for uint8; the mask is 255 where x >= threshold.
  mask = tf.cast(image >= threshold, tf.uint8) * 255
  return tf.bitwise.bitwise_xor(image, mask)


def solarize_add(image: tf.Tensor, addition: int,
                 threshold: int = 128) -> tf.Tensor:
  """Adds `addition` (saturating at 255) to the pixels below `threshold`."""
  addition = min(max(int(addition), 0), 255)
  below = tf.cast(image < threshold, tf.uint8)
  # min(x + a, 255) == x + min(a, 255 - x), all in uint8 without overflow.
  return image + below * tf.minimum(tf.constant(addition, tf.uint8),
                                    255 - image)


def posterize(image: tf.Tensor, bits: int) -> tf.Tensor:
  """Keeps the `bits` most significant bits of each value (1..8)."""
  mask = (0xFF << (8 - bits)) & 0xFF
  return tf.bitwise.bitwise_and(image, tf.constant(mask, tf.uint8))


def color(image: tf.Tensor, factor: tf.Tensor | float) -> tf.Tensor:
  """Saturation: blends with the grayscale image (0: gray, 1: unchanged)."""
  x = _float(image)  # Converted once, for both uses.
  return _blend(_grayscale(x), x, factor)


def contrast(image: tf.Tensor, factor: tf.Tensor | float) -> tf.Tensor:
  """Blends with the mean gray level, rounded (0: flat gray, 1: unchanged)."""
  x = _float(image)
  mean = tf.floor(tf.reduce_mean(_grayscale(x)) + 0.5)
  return _blend(mean, x, factor)


def brightness(image: tf.Tensor, factor: tf.Tensor | float) -> tf.Tensor:
  """Blends with black (0: black, 1: unchanged)."""
  return _blend(tf.zeros([], tf.float32), image, factor)


def sharpness(image: tf.Tensor, factor: tf.Tensor | float) -> tf.Tensor:
  """Blends with a smoothed image (0: smooth, 1: unchanged, >1: sharper).

  The smoothing is PIL's SMOOTH filter, [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13,
  rounded; the one-pixel border keeps its original values.
  """
  # The filter is a 3x3 box sum (separable: three rows, then three columns,
  # of shifted slices) plus 4 x the centre: an integer s, exact in float32.
  # s / 13 is at least 1/26 away from any k + 1/2, so rounding the float
  # quotient gives the exact result. ~4x cheaper than `depthwise_conv2d`.
  # A border pixel would blend with itself, which gives it back unchanged,
  # so only the interior is blended.
  x = _float(image)
  rows = x[:-2] + x[1:-1] + x[2:]
  box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
  smooth = tf.round((box + 4.0 * x[1:-1, 1:-1]) / 13.0)
  inner = _blend(smooth, x[1:-1, 1:-1], factor)
  # Slices that also hold for images of 1 or 2 rows or columns (no interior).
  middle = tf.concat([image[1:-1, :1], inner, image[1:-1, 1:][:, -1:]],
                     axis=1)
  return tf.concat([image[:1], middle, image[1:][-1:]], axis=0)


def rotate(image: tf.Tensor, degrees: tf.Tensor | float, fill: int = 128,
           interpolation: str = "nearest") -> tf.Tensor:
  """Rotates counter-clockwise (as displayed) about the image centre."""
  theta = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  cos, sin = tf.cos(theta), tf.sin(theta)
  h = tf.cast(tf.shape(image)[0], tf.float32)
  w = tf.cast(tf.shape(image)[1], tf.float32)
  cy, cx = (h - 1.0) / 2.0, (w - 1.0) / 2.0
  # Output offset (dx, dy) from the centre reads the input at R(dx, dy) with
  # R the inverse (clockwise on screen, y pointing down) rotation.
  return _affine(image, [cos, -sin, cx - cos * cx + sin * cy,
                         sin, cos, cy - sin * cx - cos * cy], fill,
                 interpolation)


def shear_x(image: tf.Tensor, shear: tf.Tensor | float, fill: int = 128,
            interpolation: str = "nearest") -> tf.Tensor:
  """Output (x, y) reads input (x + shear * y, y): rows slide horizontally."""
  return _affine(image, [1.0, shear, 0.0, 0.0, 1.0, 0.0], fill, interpolation)


def shear_y(image: tf.Tensor, shear: tf.Tensor | float, fill: int = 128,
            interpolation: str = "nearest") -> tf.Tensor:
  """Output (x, y) reads input (x, y + shear * x): columns slide vertically."""
  return _affine(image, [1.0, 0.0, 0.0, shear, 1.0, 0.0], fill, interpolation)


def translate(image: tf.Tensor, dx: tf.Tensor | int, dy: tf.Tensor | int,
              fill: int = 128) -> tf.Tensor:
  """Moves the content right by `dx` and down by `dy` whole pixels.

  A crop and a pad: much cheaper than resampling, and exact. Both work on
  the [H, W * C] view, where a horizontal move is a move by `dx * C` values
  along a row: contiguous copies, ~3x cheaper than slicing and padding the
  W axis of [H, W, C].
  """
  h, w, c = tf.shape(image)[0], tf.shape(image)[1], tf.shape(image)[2]
  dx = tf.clip_by_value(tf.cast(dx, tf.int32), -w, w)
  dy = tf.clip_by_value(tf.cast(dy, tf.int32), -h, h)
  right, left = tf.maximum(dx, 0), tf.maximum(-dx, 0)
  down, up = tf.maximum(dy, 0), tf.maximum(-dy, 0)
  kept = _rows(image)[up:h - down, left * c:(w - right) * c]
  moved = tf.pad(kept, [[down, up], [right * c, left * c]],
                 constant_values=tf.constant(fill, image.dtype))
  return tf.reshape(moved, tf.shape(image))


def cutout(image: tf.Tensor, center_y: tf.Tensor | int,
           center_x: tf.Tensor | int, size: tf.Tensor | int,
           fill: int = 128) -> tf.Tensor:
  """Fills a `size` x `size` square at (center_y, center_x), cut at borders.

  The square covers rows `[center_y - size // 2, center_y - size // 2 + size)`
  (same for columns).
  """
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  size = tf.cast(size, tf.int32)
  top = tf.cast(center_y, tf.int32) - size // 2
  left = tf.cast(center_x, tf.int32) - size // 2
  top, bottom = tf.clip_by_value(top, 0, h), tf.clip_by_value(top + size, 0, h)
  left, right = (tf.clip_by_value(left, 0, w),
                 tf.clip_by_value(left + size, 0, w))
  # Slices and concatenations (copies) instead of a masked select.
  block = tf.fill(tf.stack([bottom - top, right - left, tf.shape(image)[2]]),
                  tf.constant(fill, image.dtype))
  band = image[top:bottom]
  band = tf.concat([band[:, :left], block, band[:, right:]], axis=1)
  return tf.concat([image[:top], band, image[bottom:]], axis=0)


# -------------------------------------- magnitude -> arguments, per op name
#
# Each entry: fn(image, layer) with `layer` a `_Layer`. The magnitude is a
# Python float, so each argument is a constant up to the random sign. There
# is one table per convention (see `get_randaug`'s docstring).


class _Layer(NamedTuple):
  magnitude: float
  rand: tf.Tensor  # Three uniform [0, 1) floats: the sign, then a position.
  fill: int
  interpolation: str


def _signed(value: float, layer: _Layer) -> tf.Tensor:
  return tf.where(layer.rand[0] < 0.5, -value, value)


def _round_half_up(value: float) -> int:
  return math.floor(value + 0.5)


def _cutout_at_random(image: tf.Tensor, layer: _Layer,
                      size: tf.Tensor | int) -> tf.Tensor:
  # The centre is uniform over the pixels: row int(u h), column int(u' w).
  h = tf.cast(tf.shape(image)[0], tf.float32)
  w = tf.cast(tf.shape(image)[1], tf.float32)
  return cutout(image, tf.cast(layer.rand[1] * h, tf.int32),
                tf.cast(layer.rand[2] * w, tf.int32), size, layer.fill)


# The ops without a magnitude, shared by both conventions.
_PLAIN_OPS: dict[str, Callable[[tf.Tensor, _Layer], tf.Tensor]] = {
    "Identity": lambda image, layer: image,
    "AutoContrast": lambda image, layer: autocontrast(image),
    "Equalize": lambda image, layer: equalize(image),
    "Invert": lambda image, layer: invert(image),
}


# "increasing": every op gets stronger with m and is the identity at m=0.


def _factor(layer: _Layer) -> tf.Tensor:
  # 1 +- 0.09 m: m=10 gives AutoAugment's range [0.1, 1.9]; never negative.
  return tf.maximum(1.0 + _signed(0.09 * layer.magnitude, layer), 0.0)


def _shift(image: tf.Tensor, layer: _Layer, axis: int) -> tf.Tensor:
  # 0.045 m of the side, whole pixels: m=10 moves by 45% of the image.
  side = tf.cast(tf.shape(image)[axis], tf.float32)
  return tf.round(_signed(0.045 * layer.magnitude, layer) * side)


def _posterize_bits(m: float) -> int:
  # m=0 keeps all 8 bits, m=10 keeps 4 (AutoAugment's strongest), at least 1.
  return max(1, 8 - _round_half_up(0.4 * m))


def _solarize_threshold(m: float) -> int:
  # m=0: 256 (nothing inverted), m=10: 0 (everything inverted).
  return max(0, 256 - _round_half_up(25.6 * m))


def _cutout_increasing(image: tf.Tensor, layer: _Layer) -> tf.Tensor:
  h = tf.cast(tf.shape(image)[0], tf.float32)
  w = tf.cast(tf.shape(image)[1], tf.float32)
  size = tf.cast(tf.round(0.04 * layer.magnitude * tf.minimum(h, w)),
                 tf.int32)
  return _cutout_at_random(image, layer, size)


_INCREASING: dict[str, Callable[[tf.Tensor, _Layer], tf.Tensor]] = {
    **_PLAIN_OPS,
    "Rotate": lambda image, layer: rotate(
        image, _signed(3.0 * layer.magnitude, layer), layer.fill,
        layer.interpolation),
    "Solarize": lambda image, layer: solarize(
        image, _solarize_threshold(layer.magnitude)),
    "SolarizeAdd": lambda image, layer: solarize_add(
        image, _round_half_up(11.0 * layer.magnitude)),
    "Posterize": lambda image, layer: posterize(
        image, _posterize_bits(layer.magnitude)),
    "Color": lambda image, layer: color(image, _factor(layer)),
    "Contrast": lambda image, layer: contrast(image, _factor(layer)),
    "Brightness": lambda image, layer: brightness(image, _factor(layer)),
    "Sharpness": lambda image, layer: sharpness(image, _factor(layer)),
    "ShearX": lambda image, layer: shear_x(
        image, _signed(0.03 * layer.magnitude, layer), layer.fill,
        layer.interpolation),
    "ShearY": lambda image, layer: shear_y(
        image, _signed(0.03 * layer.magnitude, layer), layer.fill,
        layer.interpolation),
    "TranslateX": lambda image, layer: translate(
        image, _shift(image, layer, 1), 0, layer.fill),
    "TranslateY": lambda image, layer: translate(
        image, 0, _shift(image, layer, 0), layer.fill),
    "Cutout": _cutout_increasing,
}


# "autoaugment": the level -> argument rules of the TF AutoAugment /
# RandAugment code of Cubuk et al. (which big_vision's randaug runs), with
# level = m / 10 and RandAugment's constants (translate 100 px, cutout 40 px).
# The products are taken in the same order as there, `(m / 10) * const`, so
# that the integer arguments truncate to the same values.


def _level(layer: _Layer) -> float:
  return layer.magnitude / 10.0


def _aa_posterize_bits(m: float) -> int:
  # int(level * 4) bits are KEPT: larger m keeps more bits, a weaker effect
  # (m=10: 4 bits, m=20 and above: all 8). TF's shifts clamp to [0, 7], so
  # 0 bits (m < 2.5) keeps 1 bit and more than 8 keeps all 8; we do the same.
  return min(8, max(1, int((m / 10.0) * 4)))


def _aa_enhance_factor(layer: _Layer) -> float:
  # No random sign: m=10 gives 1.9, m=15 2.8 (always an enhancement for
  # m > 5, a reduction below).
  return _level(layer) * 1.8 + 0.1


def _aa_translate(image: tf.Tensor, layer: _Layer, axis: int) -> tf.Tensor:
  pixels = _signed(float(_round_half_up(_level(layer) * 100.0)), layer)
  return translate(image, pixels if axis == 1 else 0,
                   pixels if axis == 0 else 0, layer.fill)


def _aa_cutout(image: tf.Tensor, layer: _Layer) -> tf.Tensor:
  # A square of side 2 * int(level * 40) pixels, whatever the image size.
  return _cutout_at_random(image, layer, 2 * int(_level(layer) * 40))


_AUTOAUGMENT: dict[str, Callable[[tf.Tensor, _Layer], tf.Tensor]] = {
    **_PLAIN_OPS,
    "Rotate": lambda image, layer: rotate(
        image, _signed(_level(layer) * 30.0, layer), layer.fill,
        layer.interpolation),
    "Solarize": lambda image, layer: solarize(
        image, int(_level(layer) * 256)),
    "SolarizeAdd": lambda image, layer: solarize_add(
        image, int(_level(layer) * 110)),
    "Posterize": lambda image, layer: posterize(
        image, _aa_posterize_bits(layer.magnitude)),
    "Color": lambda image, layer: color(image, _aa_enhance_factor(layer)),
    "Contrast": lambda image, layer: contrast(
        image, _aa_enhance_factor(layer)),
    "Brightness": lambda image, layer: brightness(
        image, _aa_enhance_factor(layer)),
    "Sharpness": lambda image, layer: sharpness(
        image, _aa_enhance_factor(layer)),
    "ShearX": lambda image, layer: shear_x(
        image, _signed(_level(layer) * 0.3, layer), layer.fill,
        layer.interpolation),
    "ShearY": lambda image, layer: shear_y(
        image, _signed(_level(layer) * 0.3, layer), layer.fill,
        layer.interpolation),
    "TranslateX": lambda image, layer: _aa_translate(image, layer, 1),
    "TranslateY": lambda image, layer: _aa_translate(image, layer, 0),
    "Cutout": _aa_cutout,
}

_CONVENTION_OPS = {"autoaugment": _AUTOAUGMENT, "increasing": _INCREASING}
CONVENTIONS = tuple(_CONVENTION_OPS)
ALL_OPS = tuple(_INCREASING)
# The op lists used when `ops=None`, per convention: the 16 ops of the TF
# RandAugment code (no Identity), and the 14 of the RandAugment paper.
DEFAULT_OPS = {
    "autoaugment": ("AutoContrast", "Equalize", "Invert", "Rotate",
                    "Posterize", "Solarize", "Color", "Contrast",
                    "Brightness", "Sharpness", "ShearX", "ShearY",
                    "TranslateX", "TranslateY", "Cutout", "SolarizeAdd"),
    "increasing": ("Identity", "AutoContrast", "Equalize", "Rotate",
                   "Solarize", "Color", "Posterize", "Contrast",
                   "Brightness", "Sharpness", "ShearX", "ShearY",
                   "TranslateX", "TranslateY"),
}


def layer_draws(seed: tf.Tensor, num_layers: int,
                num_ops: int) -> tuple[tf.Tensor, tf.Tensor]:
  """The random choices of all layers: op indices [L] and uniforms [L, 3].

  A pure function of the seed; `randaug` uses exactly these draws.
  """
  seeds = tf.random.experimental.stateless_split(seed, 2 * num_layers)
  indices = tf.stack([
      tf.random.stateless_uniform([], seeds[2 * i], 0, num_ops, tf.int32)
      for i in range(num_layers)])
  rands = tf.stack([tf.random.stateless_uniform([3], seeds[2 * i + 1])
                    for i in range(num_layers)])
  return indices, rands


def apply_op(image: tf.Tensor, name: str, magnitude: float, rand: tf.Tensor,
             fill: int = 128, interpolation: str = "nearest",
             convention: str = "autoaugment") -> tf.Tensor:
  """Applies one RandAugment op by name, as one layer of `randaug` would.

  `rand` holds the layer's three uniform [0, 1) draws (see `layer_draws`);
  `convention` picks the magnitude -> argument rules (see `get_randaug`).
  """
  if convention not in _CONVENTION_OPS:
    raise ValueError(f"randaug: convention must be one of {CONVENTIONS}, got "
                     f"{convention!r}.")
  if name not in _CONVENTION_OPS[convention]:
    raise ValueError(f"randaug: unknown op {name!r}; known: {list(ALL_OPS)}.")
  layer = _Layer(float(magnitude), tf.cast(rand, tf.float32), fill,
                 interpolation)
  out = _CONVENTION_OPS[convention][name](image, layer)
  return tf.ensure_shape(out, image.shape)


def run_drawn_op(index: tf.Tensor,
                 branches: Sequence[Callable[[], tf.Tensor]]) -> tf.Tensor:
  """`tf.switch_case(index, branches)`, kept one functional Case op in graphs.

  In a graph (a tf.data map function), tf.switch_case marks its Case op to
  be lowered into Switch/Merge control flow: every op of every branch
  becomes a node of the map function, and the branches not taken still
  pass "dead" tensors from node to node. Left functional, the Case kernel
  calls only the drawn branch's function. Measured with one iterator per
  pipeline (`tools/benchmark_randaug`, BENCHMARKS.md): randaug's own CPU per
  image ~4% lower (0.48 -> 0.46 ms), and ~0.3 s less to start an iterator
  (a smaller map function for grappler to optimize). tf.switch_case has no
  public argument for this, so this calls the builder it uses, TF's
  `cond_v2.indexed_case`, with lowering off (TF is pinned in
  requirements.txt; a TF without it gets the plain tf.switch_case: the same
  ops, slower). Eagerly, it just runs the drawn branch.

  One visible difference: grappler's arithmetic optimizer regroups chains of
  additions in a graph's main body but not inside these branch functions,
  so a blend or a rotation whose float sum lands exactly on a rounding
  boundary can come out one level different from the lowered version; the
  branches compute what the code says, as eager execution does.
  """
  if tf.executing_eagerly() or not _CASE_CAN_STAY_FUNCTIONAL:
    return tf.switch_case(index, branches)
  return _cond_v2.indexed_case(index, list(branches),
                               lower_using_switch_merge=False)


@PP_OPS.register("randaug")
@random_op
def get_randaug(num_layers: int = 2, magnitude: float = 10,
                convention: str = "autoaugment",
                ops: Sequence[str] | None = None, fill: int = 128,
                interpolation: str = "nearest", key: str = "image"
                ) -> Callable[[Example], Example]:
  """RandAugment: `num_layers` times, apply one op drawn uniformly from `ops`.

  Works on a uint8 HWC image (1 or 3 channels, any size) and returns a uint8
  image of the same shape. Every layer applies the op it draws (there is no
  apply probability, as in the TF code). `ops=None` uses the convention's
  default list; any names of `ALL_OPS` may be given instead (in any order; a
  name listed twice is drawn twice as often). Geometric ops and Cutout fill
  with `fill`; Rotate and Shear resample with `interpolation`: "nearest" (as
  the TF code and torchvision; ~0.4 ms per 224x224 image on one CPU core) or
  "bilinear" (smoother, ~2.3 ms).

  `convention` says what the magnitude m in [0, 30] means:

  - "autoaugment" (default): the rules of the TF AutoAugment/RandAugment code
    of Cubuk et al., which big_vision's `randaug` runs. level = m / 10 (so
    m=15 is level 1.5), and `randaug(2, 15)` means what it means in the
    AugReg / "Better plain ViT baselines" configs. Default ops: the 16 of
    that code (no Identity). Ops do not all get stronger with m: Solarize
    inverts nothing for m >= 10, and Posterize keeps MORE bits as m grows.
  - "increasing": every op gets stronger with m and is the identity at
    m=0 (except AutoContrast, Equalize, Invert); m=10 matches the strongest
    AutoAugment ranges, larger m extrapolates. Default ops: the 14 of the
    RandAugment paper (Identity included, no Invert/Cutout/SolarizeAdd).

  "+-" is a random sign per layer; int() truncates; "px" are pixels.

    op            "autoaugment"               "increasing"
    Identity      unchanged                   unchanged
    AutoContrast  per channel min..max -> 0..255 (both)
    Equalize      per channel histogram equalization (both)
    Invert        255 - x (both)
    Rotate        +-30 level degrees          +-3m degrees
    ShearX/Y      +-0.3 level                 +-0.03m
    TranslateX/Y  +-round(100 level) px       +-round(0.045m * width/height)
    Solarize      invert x >= int(256 level)  invert x >= 256 - round(25.6m)
                                              (>= 0)
    SolarizeAdd   add int(110 level) to       add round(11m) to x < 128
                  x < 128 (saturating)        (saturating)
    Posterize     keep int(4 level) bits,     keep 8 - round(0.4m) bits
                  clipped to [1, 8]           (>= 1)
    Color, Contrast, Brightness, Sharpness: blend factor (0: gray / mean gray
      / black / smoothed image, 1: unchanged, > 1: enhanced)
                  1.8 level + 0.1             1 +- 0.09m (>= 0)
    Cutout        square of side              square of side round(0.04m *
                  2 int(40 level) px          shorter side) px
                  (both at a uniformly random centre)

  So with the default convention, m=10 / m=15 give: Rotate +-30 / +-45
  degrees, Shear +-0.3 / +-0.45, Translate +-100 / +-150 px, Solarize
  threshold 256 / 384 (no-ops), SolarizeAdd 110 / 165, Posterize 4 / 6 bits,
  enhance factor 1.9 / 2.8, Cutout 80 / 120 px squares.

  Where "autoaugment" still differs from the TF code: its Contrast blends
  with a constant gray of min(H*W / 256, 255) (it divides the histogram's
  SUM by 256; 196 for 224x224 images), ours with the mean gray level as PIL
  does; blends and the smoothed Sharpness image are rounded here, truncated
  there; fractional translations (non-integer m) are rounded to whole
  pixels; nearest-neighbour rounding of Rotate/Shear may differ by a pixel
  at ties; random numbers come from the example's stateless seed, so
  outputs are not bit-identical to a TF run.
  """
  if isinstance(num_layers, bool) or not isinstance(num_layers, int) or (
      num_layers < 0):
    raise ValueError(f"randaug: num_layers must be an int >= 0, got "
                     f"{num_layers!r}.")
  if isinstance(magnitude, bool) or not isinstance(magnitude, (int, float)) or (
      not 0 <= magnitude <= MAX_MAGNITUDE):
    raise ValueError(f"randaug: magnitude must be a number in [0, "
                     f"{MAX_MAGNITUDE}], got {magnitude!r}.")
  if not isinstance(convention, str) or convention not in _CONVENTION_OPS:
    raise ValueError(f"randaug: convention must be one of {CONVENTIONS}, got "
                     f"{convention!r}.")
  names = DEFAULT_OPS[convention] if ops is None else (
      (ops,) if isinstance(ops, str) else tuple(ops))
  unknown = [n for n in names if n not in ALL_OPS]
  if unknown or not names:
    raise ValueError(f"randaug: unknown op(s) {unknown} in ops={ops!r}; "
                     f"known: {list(ALL_OPS)}." if unknown else
                     "randaug: ops must name at least one op.")
  if isinstance(fill, bool) or not isinstance(fill, int) or not (
      0 <= fill <= 255):
    raise ValueError(f"randaug: fill must be an int in [0, 255], got "
                     f"{fill!r}.")
  if interpolation not in _INTERPOLATIONS:
    raise ValueError(f"randaug: interpolation must be one of "
                     f"{_INTERPOLATIONS}, got {interpolation!r}.")
  magnitude = float(magnitude)

  def randaug(data):
    if key not in data:
      available = sorted(k for k in data if not k.startswith("_"))
      raise ValueError(f"randaug: no key {key!r} in the example; available "
                       f"keys: {available}.")
    image = tf.convert_to_tensor(data[key])
    if image.dtype != tf.uint8:
      raise ValueError(f"randaug: {key!r} must be a uint8 image, got "
                       f"{image.dtype.name} (put randaug before value_range "
                       f"and after decode).")
    if image.shape.rank != 3 or image.shape[-1] not in (1, 3):
      raise ValueError(f"randaug: {key!r} must be an HWC image with a static "
                       f"1 or 3 channels, got shape {image.shape}.")
    if not num_layers:
      return {**data, key: image}
    shape = image.shape
    indices, rands = layer_draws(get_seed(data, "randaug"), num_layers,
                                 len(names))

    def layer(i, image):
      branches = [functools.partial(apply_op, image, name, magnitude,
                                    rands[i], fill, interpolation, convention)
                  for name in names]
      return run_drawn_op(indices[i], branches)

    # Unrolled layers, not a `tf.while_loop`: the loop halved the tracing
    # time of `randaug(2, ...)` but cost ~0.2 ms per image in tf.data.
    for i in range(num_layers):
      image = layer(i, image)
    return {**data, key: tf.ensure_shape(image, shape)}
  return randaug
