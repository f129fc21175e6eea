"""Image preprocessing ops: decoding, resizing, cropping, flips, value range.

All ops take `key="image"` and work on one HWC image. Resizes keep the input
dtype (uint8 stays uint8, rounded), so the deterministic part of a pipeline
stays compact when cached. Random ops are stateless: they read the seed that
the builder puts in `data["_seed"]` and use `tf.image.stateless_*` ops, so the
same (seed, example) always gives the same augmentation.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import tensorflow as tf

from big_vision_like.pp.builder import get_seed, random_op
from big_vision_like.registry import PP_OPS

Example = dict[str, Any]

_METHODS = {v for k, v in vars(tf.image.ResizeMethod).items()
            if k.isupper() and isinstance(v, str)}


def _hw(size: int | Sequence[int], op: str) -> tuple[int, int]:
  """`size` as a validated (height, width) pair."""
  pair = (size, size) if isinstance(size, int) else size
  if (not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(
      isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair)):
    raise ValueError(f"{op}: size must be a positive int or (height, width), "
                     f"got {size!r}.")
  return int(pair[0]), int(pair[1])


def _check_method(method: str, op: str) -> str:
  if method not in _METHODS:
    raise ValueError(f"{op}: unknown resize method {method!r}; known: "
                     f"{sorted(_METHODS)}.")
  return method


def _image(data: Example, key: str, op: str) -> tf.Tensor:
  if key not in data:
    raise ValueError(f"{op}: no key {key!r} in the example; available keys: "
                     f"{sorted(k for k in data if not k.startswith('_'))}.")
  image = tf.convert_to_tensor(data[key])
  if image.dtype == tf.string:
    if op == "decode":
      return image
    raise ValueError(f"{op}: {key!r} holds encoded bytes; put `decode` "
                     f"before {op}.")
  if image.shape.rank is not None and image.shape.rank != 3:
    raise ValueError(f"{op}: {key!r} must be an HWC image (rank 3), got "
                     f"shape {image.shape}.")
  return image


def _cast_like(image: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
  """Casts a float result back to `dtype`, rounding and clipping integers."""
  if dtype.is_integer:
    image = tf.clip_by_value(tf.round(image), dtype.min, dtype.max)
  return tf.cast(image, dtype)


def _resize(image: tf.Tensor, hw, method: str) -> tf.Tensor:
  dtype = image.dtype
  if dtype.is_integer and method != "nearest":
    # Same values (the kernels compute in float32 anyway), but resizing a
    # float32 image is faster: about 0.2 ms less per ImageNet-size image.
    image = tf.cast(image, tf.float32)
  return _cast_like(tf.image.resize(image, hw, method=method), dtype)


def _to_channels(image: tf.Tensor, channels: int | None, op: str) -> tf.Tensor:
  """Converts between grayscale and RGB so the image has `channels`."""
  have = image.shape[-1]
  if channels is None or have == channels:
    return image
  if have is None:
    if channels == 3:  # Unknown statically: tile grayscale, keep RGB.
      image = tf.cond(tf.shape(image)[-1] == 1,
                      lambda: tf.tile(image, [1, 1, 3]), lambda: image)
    return tf.ensure_shape(image, [None, None, channels])
  if (have, channels) == (1, 3):
    return tf.image.grayscale_to_rgb(image)
  if (have, channels) == (3, 1):
    return _cast_like(tf.image.rgb_to_grayscale(tf.cast(image, tf.float32)),
                      image.dtype)
  raise ValueError(f"{op}: cannot turn a {have}-channel image into "
                   f"{channels} channels.")


@PP_OPS.register("decode")
def get_decode(channels: int | None = 3, key: str = "image"
               ) -> Callable[[Example], Example]:
  """Decodes PNG/JPEG/GIF/BMP bytes to a uint8 HWC image.

  `channels=None` keeps the file's channels. An already-decoded uint8 image
  (TFDS decodes images unless told not to) passes through, converted to
  `channels` like a decoded file would be, so the same pp string gives the
  same shapes whether or not TFDS decoded the image.
  """
  if channels not in (None, 1, 3, 4):
    raise ValueError(f"decode: channels must be None, 1, 3 or 4, got "
                     f"{channels!r}.")

  def decode(data):
    image = _image(data, key, "decode")
    if image.dtype == tf.string:
      image = tf.io.decode_image(image, channels=channels or 0,
                                 expand_animations=False)
      image.set_shape([None, None, channels])
    elif image.dtype == tf.uint8:
      image = _to_channels(image, channels, "decode")
    else:
      raise ValueError(f"decode: {key!r} must be encoded bytes or a uint8 "
                       f"image, got {image.dtype.name}.")
    return {**data, key: image}
  return decode


@PP_OPS.register("resize")
def get_resize(size: int | Sequence[int], method: str = "bilinear",
               key: str = "image") -> Callable[[Example], Example]:
  """Resizes to `size` (int: square, or (height, width)); keeps the dtype."""
  hw = _hw(size, "resize")
  _check_method(method, "resize")

  def resize(data):
    image = _image(data, key, "resize")
    return {**data, key: _resize(image, hw, method)}
  return resize


@PP_OPS.register("resize_small")
def get_resize_small(size: int, method: str = "bilinear", key: str = "image"
                     ) -> Callable[[Example], Example]:
  """Resizes so that the shorter side is `size`, keeping the aspect ratio."""
  side = _hw(size, "resize_small")[0]
  if not isinstance(size, int):
    raise ValueError(f"resize_small: size must be an int, got {size!r}.")
  _check_method(method, "resize_small")

  def resize_small(data):
    image = _image(data, key, "resize_small")
    h = tf.cast(tf.shape(image)[0], tf.float64)
    w = tf.cast(tf.shape(image)[1], tf.float64)
    scale = side / tf.minimum(h, w)
    # The shorter side gets exactly `side`; the longer one is rounded.
    new_h = tf.where(h <= w, tf.constant(side, tf.float64), tf.round(h * scale))
    new_w = tf.where(h <= w, tf.round(w * scale), tf.constant(side, tf.float64))
    hw = tf.cast(tf.stack([new_h, new_w]), tf.int32)
    return {**data, key: _resize(image, hw, method)}
  return resize_small


@PP_OPS.register("central_crop")
def get_central_crop(size: int | Sequence[int], key: str = "image"
                     ) -> Callable[[Example], Example]:
  """Crops the central (height, width) window (offsets rounded down)."""
  ch, cw = _hw(size, "central_crop")

  def central_crop(data):
    image = _image(data, key, "central_crop")
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    check = tf.debugging.assert_greater_equal(
        tf.stack([h, w]), [ch, cw],
        message=f"pp op central_crop: image smaller than the crop {ch}x{cw}")
    with tf.control_dependencies([check]):
      top, left = (h - ch) // 2, (w - cw) // 2
    crop = image[top:top + ch, left:left + cw]
    # Static shape, so that eval batches (padded) and jit shapes are known.
    crop.set_shape([ch, cw, image.shape[2] if image.shape.rank else None])
    return {**data, key: crop}
  return central_crop


@PP_OPS.register("random_crop")
@random_op
def get_random_crop(size: int | Sequence[int], pad: int = 0,
                    key: str = "image") -> Callable[[Example], Example]:
  """Random (height, width) crop, after zero-padding `pad` pixels per side.

  `random_crop(32, pad=4)` on 32x32 images is the classic CIFAR augmentation.
  """
  ch, cw = _hw(size, "random_crop")
  if not isinstance(pad, int) or pad < 0:
    raise ValueError(f"random_crop: pad must be an int >= 0, got {pad!r}.")

  def random_crop(data):
    image = _image(data, key, "random_crop")
    seed = get_seed(data, "random_crop")
    if pad:
      image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    check = tf.debugging.assert_greater_equal(
        tf.stack([h, w]), [ch, cw],
        message=f"pp op random_crop: padded image smaller than {ch}x{cw}")
    with tf.control_dependencies([check]):
      crop_shape = tf.stack([ch, cw, tf.shape(image)[2]])
    out = tf.image.stateless_random_crop(image, crop_shape, seed=seed)
    out.set_shape([ch, cw, image.shape[2]])
    return {**data, key: out}
  return random_crop


def _check_area(area_min: float, area_max: float, op: str) -> None:
  if not 0 < area_min <= area_max <= 100:
    raise ValueError(f"{op}: need 0 < area_min <= area_max <= 100 (percent "
                     f"of the image area), got {area_min}, {area_max}.")


def _inception_window(shape: tf.Tensor, seed: tf.Tensor, area_min: float,
                      area_max: float) -> tuple[tf.Tensor, tf.Tensor]:
  """Samples a crop (begin [y, x, 0], size [h, w, -1]) of the given image shape.

  The crop covers area_min..area_max percent of the image, with an aspect ratio
  in [3/4, 4/3] (Szegedy et al., "Going deeper with convolutions"); if no such
  window is found the whole image is used.
  """
  whole = tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4])
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=whole, seed=seed, min_object_covered=0.0,
      aspect_ratio_range=(3 / 4, 4 / 3),
      area_range=(area_min / 100, area_max / 100), max_attempts=32,
      use_image_if_no_bounding_boxes=True)
  return begin, size


@PP_OPS.register("inception_crop")
@random_op
def get_inception_crop(size: int | Sequence[int] | None = None,
                       area_min: float = 5, area_max: float = 100,
                       method: str = "bilinear", key: str = "image"
                       ) -> Callable[[Example], Example]:
  """Random crop of area_min..area_max percent of the area, then resize.

  `size=None` returns the crop without resizing.
  """
  hw = None if size is None else _hw(size, "inception_crop")
  _check_area(area_min, area_max, "inception_crop")
  _check_method(method, "inception_crop")

  def inception_crop(data):
    image = _image(data, key, "inception_crop")
    seed = get_seed(data, "inception_crop")
    begin, crop_size = _inception_window(tf.shape(image), seed, area_min,
                                         area_max)
    crop = tf.slice(image, begin, crop_size)
    if hw is not None:
      crop = _resize(crop, hw, method)
    return {**data, key: crop}
  return inception_crop


def _jpeg_bytes(data: Example, key: str, op: str, instead: str) -> tf.Tensor:
  """The encoded JPEG of a fused decode-and-crop op, or a clear error."""
  if key not in data:
    raise ValueError(f"{op}: no key {key!r} in the example.")
  encoded = tf.convert_to_tensor(data[key])
  if encoded.dtype != tf.string:
    raise ValueError(f"{op}: {key!r} must hold JPEG bytes, got "
                     f"{encoded.dtype.name} (already decoded? Use `{instead}` "
                     f"on decoded images).")
  return encoded


def _decode_window(encoded: tf.Tensor, window: tf.Tensor, hw, method: str
                   ) -> tf.Tensor:
  """Decodes only `window` ([y, x, h, w]) of a JPEG, then resizes to hw."""
  crop = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
  crop.set_shape([None, None, 3])
  return crop if hw is None else _resize(crop, hw, method)


@PP_OPS.register("decode_jpeg_and_inception_crop")
@random_op
def get_decode_jpeg_and_inception_crop(
    size: int | Sequence[int] | None = None, area_min: float = 5,
    area_max: float = 100, method: str = "bilinear", key: str = "image"
) -> Callable[[Example], Example]:
  """`decode|inception_crop(...)` fused: decodes only the crop of a JPEG.

  Needs JPEG bytes (the input pipeline keeps images encoded when a pp string
  uses this op). Same crop distribution as `inception_crop`, always RGB.
  """
  hw = None if size is None else _hw(size, "decode_jpeg_and_inception_crop")
  _check_area(area_min, area_max, "decode_jpeg_and_inception_crop")
  _check_method(method, "decode_jpeg_and_inception_crop")

  def decode_jpeg_and_inception_crop(data):
    op = "decode_jpeg_and_inception_crop"
    encoded = _jpeg_bytes(data, key, op, "decode|inception_crop")
    seed = get_seed(data, op)
    shape = tf.image.extract_jpeg_shape(encoded)
    begin, crop_size = _inception_window(shape, seed, area_min, area_max)
    window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
    crop = _decode_window(encoded, window, hw, method)
    return {**data, key: crop}
  return decode_jpeg_and_inception_crop


@PP_OPS.register("decode_jpeg_and_central_crop")
def get_decode_jpeg_and_central_crop(
    size: int | Sequence[int], crop_fraction: float = 0.875,
    method: str = "bilinear", key: str = "image"
) -> Callable[[Example], Example]:
  """The standard ImageNet eval crop, decoding only the crop of a JPEG.

  Takes the central square whose side is `crop_fraction` of the shorter image
  side (0.875 = 224/256), decodes just that window and resizes it to `size`.
  This is the same view as `decode|resize_small(256)|central_crop(224)` (it
  crops before resizing instead of after, so pixels differ by interpolation
  only) and avoids decoding and resizing the pixels that are thrown away.
  Needs JPEG bytes (the input pipeline keeps images encoded for this op);
  output is uint8 RGB.
  """
  op = "decode_jpeg_and_central_crop"
  hw = _hw(size, op)
  if not 0 < crop_fraction <= 1:
    raise ValueError(f"{op}: crop_fraction must be in (0, 1], got "
                     f"{crop_fraction!r}.")
  _check_method(method, op)

  def decode_jpeg_and_central_crop(data):
    encoded = _jpeg_bytes(data, key, op, "decode|resize_small|central_crop")
    shape = tf.image.extract_jpeg_shape(encoded)
    h, w = shape[0], shape[1]
    side = tf.cast(tf.round(crop_fraction * tf.cast(tf.minimum(h, w),
                                                    tf.float32)), tf.int32)
    side = tf.maximum(side, 1)
    window = tf.stack([(h - side) // 2, (w - side) // 2, side, side])
    crop = _decode_window(encoded, window, hw, method)
    crop.set_shape([hw[0], hw[1], 3])
    return {**data, key: crop}
  return decode_jpeg_and_central_crop


@PP_OPS.register("flip_lr")
@random_op
def get_flip_lr(key: str = "image") -> Callable[[Example], Example]:
  """Flips the image left-right with probability 1/2."""

  def flip_lr(data):
    image = _image(data, key, "flip_lr")
    seed = get_seed(data, "flip_lr")
    return {**data, key: tf.image.stateless_random_flip_left_right(image, seed)}
  return flip_lr


@PP_OPS.register("value_range")
def get_value_range(vmin: float, vmax: float, in_min: float = 0,
                    in_max: float = 255, clip_values: bool = False,
                    key: str = "image") -> Callable[[Example], Example]:
  """Maps [in_min, in_max] linearly to [vmin, vmax] as float32."""
  if in_max == in_min:
    raise ValueError(f"value_range: in_min and in_max are both {in_min}.")

  def value_range(data):
    image = tf.cast(_image(data, key, "value_range"), tf.float32)
    image = (image - in_min) / (in_max - in_min) * (vmax - vmin) + vmin
    if clip_values:
      image = tf.clip_by_value(image, min(vmin, vmax), max(vmin, vmax))
    return {**data, key: image}
  return value_range


# Per-channel RGB statistics of ImageNet on the [0, 1] scale (the convention
# of VGG-era and torchvision ImageNet models).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@PP_OPS.register("vgg_value_range")
def get_vgg_value_range(key: str = "image") -> Callable[[Example], Example]:
  """Standardises an RGB image in [0, 255] with ImageNet's statistics.

  float32 `(x / 255 - mean) / std` per channel, mean (0.485, 0.456, 0.406),
  std (0.229, 0.224, 0.225): the input normalisation of torchvision-style
  ImageNet models.
  """

  def vgg_value_range(data):
    image = _image(data, key, "vgg_value_range")
    if image.shape.rank == 3 and image.shape[-1] not in (None, 3):
      raise ValueError(f"vgg_value_range: {key!r} must be an RGB image (3 "
                       f"channels), got shape {image.shape}.")
    image = tf.cast(image, tf.float32) / 255.0
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)
    return {**data, key: (image - mean) / std}
  return vgg_value_range


@PP_OPS.register("grayscale_to_rgb")
def get_grayscale_to_rgb(key: str = "image") -> Callable[[Example], Example]:
  """Repeats a single channel three times; RGB images pass through."""

  def grayscale_to_rgb(data):
    image = _image(data, key, "grayscale_to_rgb")
    return {**data, key: _to_channels(image, 3, "grayscale_to_rgb")}
  return grayscale_to_rgb
