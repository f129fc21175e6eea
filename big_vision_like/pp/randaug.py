"""RandAugment (Cubuk et al., 2019) as a stateless pp op: `randaug(2, 15)`.

ImageNet training recipes (ViT/DeiT-style "AugReg") apply RandAugment per
example inside `tf.data`, so it is written in TensorFlow graph ops, works on
images of any (statically unknown) size, and takes all of its randomness from
the per-example seed of the pp builder: the same seed always gives the same
image. Each layer draws one op uniformly and runs only that op
(`tf.switch_case`), so the cost per layer is one op, not all of them.

The image functions (`rotate`, `equalize`, ...) are public so that they can be
tested and reused with explicit arguments; `randaug` maps its magnitude to
their arguments as described in `get_randaug`'s docstring.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import tensorflow as tf

from big_vision_like.pp.builder import get_seed, random_op
from big_vision_like.registry import PP_OPS

Example = dict[str, Any]

MAX_MAGNITUDE = 30
# The 14 ops of the RandAugment paper (its "Identity" included).
DEFAULT_OPS = ("Identity", "AutoContrast", "Equalize", "Rotate", "Solarize",
               "Color", "Posterize", "Contrast", "Brightness", "Sharpness",
               "ShearX", "ShearY", "TranslateX", "TranslateY")


# ------------------------------------------------------------ helpers


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
  """Rounds a float image to the nearest uint8 value, clipping to [0, 255]."""
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _blend(degenerate: tf.Tensor, image: tf.Tensor,
           factor: tf.Tensor | float) -> tf.Tensor:
  """`degenerate + factor * (image - degenerate)` as uint8 (PIL's enhance).

  factor 0 gives the degenerate image, 1 the image itself, > 1 extrapolates.
  """
  image = tf.cast(image, tf.float32)
  degenerate = tf.cast(degenerate, tf.float32)
  return _to_uint8(degenerate + factor * (image - degenerate))


def _grayscale(image: tf.Tensor) -> tf.Tensor:
  """Luma (ITU-R 601) as float, rounded like an 8-bit "L" image; HW1."""
  if image.shape[-1] == 1:
    return tf.cast(image, tf.float32)
  return tf.round(tf.image.rgb_to_grayscale(tf.cast(image, tf.float32)))


def _affine(image: tf.Tensor, transform: Sequence[tf.Tensor | float],
            fill: int) -> tf.Tensor:
  """Resamples `image` bilinearly; `transform` maps OUTPUT to INPUT pixels.

  `transform = [a0, a1, a2, b0, b1, b2]`: output pixel (x=column, y=row)
  reads the input at (a0 x + a1 y + a2, b0 x + b1 y + b2), pixel centres at
  integer coordinates. Pixels read from outside the image get `fill`.
  """
  transform = tf.cast(tf.stack(list(transform) + [0.0, 0.0]), tf.float32)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=tf.cast(image, tf.float32)[None], transforms=transform[None],
      output_shape=tf.shape(image)[:2], fill_value=float(fill),
      interpolation="BILINEAR", fill_mode="CONSTANT")
  return _to_uint8(out[0])


# -------------------------------------------- image ops, explicit arguments


def identity(image: tf.Tensor) -> tf.Tensor:
  """Returns the image unchanged."""
  return image


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
  return tf.cast(tf.cast(image, tf.float32) * scale + offset, tf.uint8)


def equalize(image: tf.Tensor) -> tf.Tensor:
  """Histogram equalization per channel, with PIL's `ImageOps.equalize` rule.

  With `step = (n_pixels - count of the highest present value) // 255`, value
  v maps to `(n_pixels below v + step // 2) // step`; a channel with
  step == 0 (at most one value, or nearly so) is left as it is.
  """
  channels = tf.shape(image)[2]
  flat = tf.transpose(tf.reshape(tf.cast(image, tf.int32), [-1, channels]))
  hist = tf.math.bincount(flat, minlength=256, maxlength=256,
                          axis=-1)  # [C, 256]
  values = tf.range(256)
  last_present = tf.reduce_max(tf.where(hist > 0, values, -1), axis=1)
  last_count = tf.gather(hist, last_present, batch_dims=1)
  step = (tf.reduce_sum(hist, axis=1) - last_count) // 255  # [C]
  below = tf.cumsum(hist, axis=1, exclusive=True)
  safe_step = tf.maximum(step, 1)[:, None]
  lut = tf.minimum((below + safe_step // 2) // safe_step, 255)
  lut = tf.where(step[:, None] > 0, lut, values[None, :])  # [C, 256]
  out = tf.gather(lut, flat, batch_dims=1)  # [C, H*W]
  return tf.reshape(tf.cast(tf.transpose(out), tf.uint8), tf.shape(image))


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
  return _blend(_grayscale(image), image, factor)


def contrast(image: tf.Tensor, factor: tf.Tensor | float) -> tf.Tensor:
  """Blends with the mean gray level, rounded (0: flat gray, 1: unchanged)."""
  mean = tf.floor(tf.reduce_mean(_grayscale(image)) + 0.5)
  return _blend(mean, image, factor)


def brightness(image: tf.Tensor, factor: tf.Tensor | float) -> tf.Tensor:
  """Blends with black (0: black, 1: unchanged)."""
  return _blend(tf.zeros([], tf.float32), image, factor)


def sharpness(image: tf.Tensor, factor: tf.Tensor | float) -> tf.Tensor:
  """Blends with a smoothed image (0: smooth, 1: unchanged, >1: sharper).

  The smoothing is PIL's SMOOTH filter, [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13,
  rounded; the one-pixel border keeps its original values.
  """
  x = tf.cast(image, tf.float32)
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, tf.shape(image)[2], 1])
  smooth = tf.round(tf.nn.depthwise_conv2d(x[None], kernel, [1, 1, 1, 1],
                                           "SAME")[0])
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  rows, cols = tf.range(h), tf.range(w)
  interior = (((rows > 0) & (rows < h - 1))[:, None, None]
              & ((cols > 0) & (cols < w - 1))[None, :, None])
  interior = tf.cast(interior, tf.float32)
  return _blend(x + interior * (smooth - x), x, factor)


def rotate(image: tf.Tensor, degrees: tf.Tensor | float,
           fill: int = 128) -> tf.Tensor:
  """Rotates counter-clockwise (as displayed) about the image centre."""
  theta = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  cos, sin = tf.cos(theta), tf.sin(theta)
  h = tf.cast(tf.shape(image)[0], tf.float32)
  w = tf.cast(tf.shape(image)[1], tf.float32)
  cy, cx = (h - 1.0) / 2.0, (w - 1.0) / 2.0
  # Output offset (dx, dy) from the centre reads the input at R(dx, dy) with
  # R the inverse (clockwise on screen, y pointing down) rotation.
  return _affine(image, [cos, -sin, cx - cos * cx + sin * cy,
                         sin, cos, cy - sin * cx - cos * cy], fill)


def shear_x(image: tf.Tensor, shear: tf.Tensor | float,
            fill: int = 128) -> tf.Tensor:
  """Output (x, y) reads input (x + shear * y, y): rows slide horizontally."""
  return _affine(image, [1.0, shear, 0.0, 0.0, 1.0, 0.0], fill)


def shear_y(image: tf.Tensor, shear: tf.Tensor | float,
            fill: int = 128) -> tf.Tensor:
  """Output (x, y) reads input (x, y + shear * x): columns slide vertically."""
  return _affine(image, [1.0, 0.0, 0.0, shear, 1.0, 0.0], fill)


def translate(image: tf.Tensor, dx: tf.Tensor | int, dy: tf.Tensor | int,
              fill: int = 128) -> tf.Tensor:
  """Moves the content right by `dx` and down by `dy` whole pixels.

  A crop and a pad: much cheaper than resampling, and exact.
  """
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  dx = tf.clip_by_value(tf.cast(dx, tf.int32), -w, w)
  dy = tf.clip_by_value(tf.cast(dy, tf.int32), -h, h)
  right, left = tf.maximum(dx, 0), tf.maximum(-dx, 0)
  down, up = tf.maximum(dy, 0), tf.maximum(-dy, 0)
  kept = image[up:h - down, left:w - right]
  return tf.pad(kept, [[down, up], [right, left], [0, 0]],
                constant_values=tf.constant(fill, image.dtype))


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
# Each entry: fn(image, magnitude, rand, fill) with `rand` three uniform
# [0, 1) floats (rand[0] picks the sign, rand[1:] a position). The magnitude
# is a Python float, so the argument is a constant up to the random sign.


def _signed(value: float, rand: tf.Tensor) -> tf.Tensor:
  return tf.where(rand[0] < 0.5, -value, value)


def _factor(m: float, rand: tf.Tensor) -> tf.Tensor:
  # 1 +- 0.09 m: m=10 gives AutoAugment's range [0.1, 1.9]; never negative.
  return tf.maximum(1.0 + _signed(0.09 * m, rand), 0.0)


def _shift(m: float, rand: tf.Tensor, image: tf.Tensor,
           axis: int) -> tf.Tensor:
  # 0.045 m of the side, whole pixels: m=10 moves by 45% of the image.
  side = tf.cast(tf.shape(image)[axis], tf.float32)
  return tf.round(_signed(0.045 * m, rand) * side)


def _posterize_bits(m: float) -> int:
  # m=0 keeps all 8 bits, m=10 keeps 4 (AutoAugment's strongest), at least 1.
  return max(1, 8 - math.floor(0.4 * m + 0.5))


def _solarize_threshold(m: float) -> int:
  # m=0: 256 (nothing inverted), m=10: 0 (everything inverted).
  return max(0, 256 - math.floor(25.6 * m + 0.5))


def _cutout(image, m, rand, fill):
  h = tf.cast(tf.shape(image)[0], tf.float32)
  w = tf.cast(tf.shape(image)[1], tf.float32)
  size = tf.cast(tf.round(0.04 * m * tf.minimum(h, w)), tf.int32)
  return cutout(image, tf.cast(rand[1] * h, tf.int32),
                tf.cast(rand[2] * w, tf.int32), size, fill)


_OPS: dict[str, Callable[[tf.Tensor, float, tf.Tensor, int], tf.Tensor]] = {
    "Identity": lambda image, m, rand, fill: image,
    "AutoContrast": lambda image, m, rand, fill: autocontrast(image),
    "Equalize": lambda image, m, rand, fill: equalize(image),
    "Invert": lambda image, m, rand, fill: invert(image),
    "Rotate": lambda image, m, rand, fill: rotate(
        image, _signed(3.0 * m, rand), fill),
    "Solarize": lambda image, m, rand, fill: solarize(
        image, _solarize_threshold(m)),
    "SolarizeAdd": lambda image, m, rand, fill: solarize_add(
        image, math.floor(11.0 * m + 0.5)),
    "Posterize": lambda image, m, rand, fill: posterize(
        image, _posterize_bits(m)),
    "Color": lambda image, m, rand, fill: color(image, _factor(m, rand)),
    "Contrast": lambda image, m, rand, fill: contrast(image, _factor(m, rand)),
    "Brightness": lambda image, m, rand, fill: brightness(
        image, _factor(m, rand)),
    "Sharpness": lambda image, m, rand, fill: sharpness(
        image, _factor(m, rand)),
    "ShearX": lambda image, m, rand, fill: shear_x(
        image, _signed(0.03 * m, rand), fill),
    "ShearY": lambda image, m, rand, fill: shear_y(
        image, _signed(0.03 * m, rand), fill),
    "TranslateX": lambda image, m, rand, fill: translate(
        image, _shift(m, rand, image, 1), 0, fill),
    "TranslateY": lambda image, m, rand, fill: translate(
        image, 0, _shift(m, rand, image, 0), fill),
    "Cutout": _cutout,
}
ALL_OPS = tuple(_OPS)


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
             fill: int = 128) -> tf.Tensor:
  """Applies one RandAugment op by name, as one layer of `randaug` would."""
  if name not in _OPS:
    raise ValueError(f"randaug: unknown op {name!r}; known: {list(ALL_OPS)}.")
  out = _OPS[name](image, float(magnitude), tf.cast(rand, tf.float32), fill)
  return tf.ensure_shape(out, image.shape)


@PP_OPS.register("randaug")
@random_op
def get_randaug(num_layers: int = 2, magnitude: float = 10,
                ops: Sequence[str] | None = None, fill: int = 128,
                key: str = "image") -> Callable[[Example], Example]:
  """RandAugment: `num_layers` times, apply one op drawn uniformly from `ops`.

  Works on a uint8 HWC image (1 or 3 channels, any size) and returns a uint8
  image of the same shape. `ops=None` uses the paper's 14 ops; any subset of
  these (in any order; a name listed twice is drawn twice as often) may be
  given, plus SolarizeAdd, Invert and Cutout. Geometric ops fill uncovered
  pixels with `fill` and resample bilinearly.

  Magnitude m in [0, 30]; m=10 is the strongest setting of AutoAugment's
  ranges, larger m extrapolates linearly (e.g. `randaug(2, 15)` of the ViT
  AugReg recipes). "+-" is a random sign per layer. At m=0 every op except
  AutoContrast, Equalize and Invert is the identity.

    Identity                      unchanged
    AutoContrast                  per channel min..max -> 0..255
    Equalize                      per channel histogram equalization
    Rotate                        +-3m degrees about the centre
    Solarize                      invert pixels >= 256 - round(25.6m) (>= 0)
    Color, Contrast, Brightness,  blend factor 1 +- 0.09m (>= 0) with the
      Sharpness                   gray / mean-gray / black / smoothed image
    Posterize                     keep 8 - round(0.4m) bits (>= 1)
    ShearX, ShearY                shear +-0.03m
    TranslateX, TranslateY        +-0.045m of the width / height, whole pixels
    SolarizeAdd                   add round(11m) to pixels < 128
    Invert                        255 - x
    Cutout                        fill a square of side 0.04m of the shorter
                                  side at a random centre
  """
  if isinstance(num_layers, bool) or not isinstance(num_layers, int) or (
      num_layers < 0):
    raise ValueError(f"randaug: num_layers must be an int >= 0, got "
                     f"{num_layers!r}.")
  if isinstance(magnitude, bool) or not isinstance(magnitude, (int, float)) or (
      not 0 <= magnitude <= MAX_MAGNITUDE):
    raise ValueError(f"randaug: magnitude must be a number in [0, "
                     f"{MAX_MAGNITUDE}], got {magnitude!r}.")
  names = DEFAULT_OPS if ops is None else (
      (ops,) if isinstance(ops, str) else tuple(ops))
  unknown = [n for n in names if n not in _OPS]
  if unknown or not names:
    raise ValueError(f"randaug: unknown op(s) {unknown} in ops={ops!r}; "
                     f"known: {list(ALL_OPS)}." if unknown else
                     "randaug: ops must name at least one op.")
  if isinstance(fill, bool) or not isinstance(fill, int) or not (
      0 <= fill <= 255):
    raise ValueError(f"randaug: fill must be an int in [0, 255], got "
                     f"{fill!r}.")
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
                                    rands[i], fill) for name in names]
      return i + 1, tf.switch_case(indices[i], branches)

    # A loop, not unrolled layers: the graph holds the ops once, which
    # halves the tracing time of `randaug(2, ...)` in tf.data.
    _, image = tf.while_loop(
        lambda i, _: i < num_layers, layer, [tf.constant(0), image],
        shape_invariants=[tf.TensorShape([]),
                          tf.TensorShape([None, None, shape[-1]])])
    return {**data, key: tf.ensure_shape(image, shape)}
  return randaug
