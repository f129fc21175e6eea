"""Image preprocessing ops: decoding, resizing, cropping, flips, value range.

The ops that big_vision also has (decode, resize, resize_small,
central_crop, random_crop, inception_crop, decode_jpeg_and_inception_crop,
flip_lr, value_range, vgg_value_range) take big_vision's arguments with
big_vision's defaults and give exactly big_vision's tensors
(tests/test_pp_bigvision.py checks them against outputs of big_vision's own
code), so a pp string copied from a big_vision config preprocesses the same
way here. Like big_vision's, they work on one HWC image under `key="image"`,
or read `inkey` and write `outkey`.

Resizes keep the input dtype as big_vision's do: the float result is clipped
to the dtype's range and cast back, which TRUNCATES integers (a bilinear
99.7 becomes 99 in uint8). Our ops also take `rounding="round"` to round to
the nearest integer instead (unbiased; our earlier default).

Random ops are stateless: they read the seed that the builder puts in
`data["_seed"]` and use `tf.image.stateless_*` ops, so the same (seed,
example) always gives the same augmentation. Their random streams therefore
differ from big_vision's (stateful) ones; their distributions do not.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
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


ROUNDINGS = ("truncate", "round")


def _check_rounding(rounding: str, op: str) -> str:
  if rounding not in ROUNDINGS:
    raise ValueError(f"{op}: rounding must be one of {ROUNDINGS}, got "
                     f"{rounding!r}.")
  return rounding


def _cast_like(image: tf.Tensor, dtype: tf.DType,
               rounding: str = "round") -> tf.Tensor:
  """Casts a float result back to `dtype`, clipped to the dtype's range.

  "truncate" is big_vision's `tf.cast(tf.clip_by_value(x, min, max), dtype)`:
  integers lose their fraction (99.7 -> 99). "round" first rounds integers to
  the nearest value (halves to even: 0.5 -> 0, 1.5 -> 2).
  """
  if rounding == "round" and dtype.is_integer:
    image = tf.round(image)
  return tf.cast(tf.clip_by_value(image, dtype.min, dtype.max), dtype)


def _resize(image: tf.Tensor, hw, method: str, antialias: bool = False,
            rounding: str = "truncate") -> tf.Tensor:
  """`tf.image.resize`, then back to the input dtype (see `_cast_like`)."""
  dtype = image.dtype
  if dtype.is_integer and method != "nearest":
    # Same values (the kernels compute in float32 anyway), but resizing a
    # float32 image is faster: about 0.2 ms less per ImageNet-size image.
    image = tf.cast(image, tf.float32)
  image = tf.image.resize(image, hw, method=method, antialias=antialias)
  return _cast_like(image, dtype, rounding)


def _keys(key: str, inkey: str | None, outkey: str | None
          ) -> tuple[str, str]:
  """(key read, key written), decided as big_vision's InKeyOutKey does.

  `key` names both; with the default key, `inkey` and `outkey` name them
  separately. (big_vision's `key` defaults to None; giving key="image" and
  inkey/outkey at once is the one combination where we differ: there
  big_vision would use "image" for both.)
  """
  if key != "image":
    return key, key
  return inkey or key, outkey or key


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
def get_decode(channels: int | None = 3, precise: bool = False,
               key: str = "image", inkey: str | None = None,
               outkey: str | None = None) -> Callable[[Example], Example]:
  """Decodes PNG/JPEG/GIF/BMP bytes to a uint8 HWC image (as big_vision).

  `precise=True` decodes JPEGs with the accurate integer DCT (the pixels
  PIL/OpenCV/PyTorch get; PNGs decode as usual). Ours only: `channels=None`
  keeps the file's channels, and an already-decoded uint8 image (TFDS decodes
  images unless told not to) passes through, converted to `channels` like a
  decoded file would be, so the same pp string gives the same shapes whether
  or not TFDS decoded the image.
  """
  if channels not in (None, 1, 3, 4):
    raise ValueError(f"decode: channels must be None, 1, 3 or 4, got "
                     f"{channels!r}.")
  src, dst = _keys(key, inkey, outkey)

  def decode(data):
    image = _image(data, src, "decode")
    if image.dtype == tf.string:
      if precise:
        image = tf.image.decode_jpeg(image, channels=channels or 0,
                                     dct_method="INTEGER_ACCURATE")
      else:
        image = tf.io.decode_image(image, channels=channels or 0,
                                   expand_animations=False)
      image.set_shape([None, None, channels])
    elif image.dtype == tf.uint8:
      image = _to_channels(image, channels, "decode")
    else:
      raise ValueError(f"decode: {src!r} must be encoded bytes or a uint8 "
                       f"image, got {image.dtype.name}.")
    return {**data, dst: image}
  return decode


@PP_OPS.register("resize")
def get_resize(size: int | Sequence[int], method: str = "bilinear",
               antialias: bool = False, rounding: str = "truncate",
               key: str = "image", inkey: str | None = None,
               outkey: str | None = None) -> Callable[[Example], Example]:
  """Resizes to `size` (int: square, or (height, width)); keeps the dtype.

  As big_vision: `tf.image.resize(image, size, method, antialias)`, then
  clipped to the input dtype's range and cast back, so uint8 results are
  truncated (99.7 -> 99). Ours only: `rounding="round"` rounds instead.
  """
  hw = _hw(size, "resize")
  _check_method(method, "resize")
  _check_rounding(rounding, "resize")
  src, dst = _keys(key, inkey, outkey)

  def resize(data):
    image = _image(data, src, "resize")
    return {**data, dst: _resize(image, hw, method, antialias, rounding)}
  return resize


@PP_OPS.register("resize_small")
def get_resize_small(smaller_size: int, method: str = "area",
                     antialias: bool = False, rounding: str = "truncate",
                     key: str = "image", inkey: str | None = None,
                     outkey: str | None = None
                     ) -> Callable[[Example], Example]:
  """Resizes so that the shorter side is `smaller_size`, keeping the aspect.

  As big_vision: by default with `method="area"` (big_vision's long-standing
  default, which its published evaluations use; `method="bilinear"` was our
  earlier default), the longer side is round(side * smaller_size / shorter)
  computed in float32, and the result is cast back like `resize` does
  (truncating integers; ours only: `rounding="round"`).
  """
  if (isinstance(smaller_size, bool) or not isinstance(smaller_size, int)
      or smaller_size <= 0):
    raise ValueError(f"resize_small: size must be a positive int, got "
                     f"{smaller_size!r}.")
  _check_method(method, "resize_small")
  _check_rounding(rounding, "resize_small")
  src, dst = _keys(key, inkey, outkey)

  def resize_small(data):
    image = _image(data, src, "resize_small")
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    # float32 throughout, as big_vision, so that the sizes agree exactly.
    factor = (tf.constant(smaller_size, tf.float32) /
              tf.cast(tf.minimum(h, w), tf.float32))
    new_h = tf.cast(tf.round(tf.cast(h, tf.float32) * factor), tf.int32)
    new_w = tf.cast(tf.round(tf.cast(w, tf.float32) * factor), tf.int32)
    out = _resize(image, tf.stack([new_h, new_w]), method, antialias,
                  rounding)
    return {**data, dst: out}
  return resize_small


@PP_OPS.register("central_crop")
def get_central_crop(crop_size: int | Sequence[int] | None = None,
                     key: str = "image", inkey: str | None = None,
                     outkey: str | None = None, box_key: str | None = None
                     ) -> Callable[[Example], Example]:
  """Crops the central (height, width) window (offsets rounded down).

  `crop_size=None` takes the largest central square (as big_vision).
  `box_key`: also store the window there (see `_put_box`).
  """
  size = _hw(crop_size, "central_crop") if crop_size else None
  src, dst = _keys(key, inkey, outkey)

  def central_crop(data):
    image = _image(data, src, "central_crop")
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    if size is None:
      ch = cw = tf.minimum(h, w)
    else:
      ch, cw = size
    check = tf.debugging.assert_greater_equal(
        tf.stack([h, w]), tf.stack([ch, cw]),
        message=f"pp op central_crop: image smaller than the crop {size}")
    with tf.control_dependencies([check]):
      top, left = (h - ch) // 2, (w - cw) // 2
    crop = image[top:top + ch, left:left + cw]
    # Static shape, so that eval batches (padded) and jit shapes are known.
    channels = image.shape[2] if image.shape.rank else None
    crop.set_shape([*(size or (None, None)), channels])
    data = _put_box(data, box_key, top, left, ch, cw, h, w)
    return {**data, dst: crop}
  return central_crop


@PP_OPS.register("random_crop")
@random_op
def get_random_crop(crop_size: int | Sequence[int], pad: int = 0,
                    key: str = "image", inkey: str | None = None,
                    outkey: str | None = None, box_key: str | None = None
                    ) -> Callable[[Example], Example]:
  """Uniformly random (height, width) crop, as big_vision's.

  Ours only: `pad` zero-pads that many pixels per side first;
  `random_crop(32, pad=4)` on 32x32 images is the classic CIFAR augmentation.
  `box_key`: also store the window there (see `_put_box`).
  """
  ch, cw = _hw(crop_size, "random_crop")
  if not isinstance(pad, int) or pad < 0:
    raise ValueError(f"random_crop: pad must be an int >= 0, got {pad!r}.")
  src, dst = _keys(key, inkey, outkey)

  def random_crop(data):
    image = _image(data, src, "random_crop")
    seed = get_seed(data, "random_crop")
    if pad:
      image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    check = tf.debugging.assert_greater_equal(
        tf.stack([h, w]), [ch, cw],
        message=f"pp op random_crop: padded image smaller than {ch}x{cw}")
    with tf.control_dependencies([check]):
      crop_shape = tf.stack([ch, cw, tf.shape(image)[2]])
    # The offset stateless_random_crop draws, computed here so the box can be kept.
    offset = _stateless_crop_offset(tf.shape(image), crop_shape, seed)
    out = tf.slice(image, offset, crop_shape)
    data = _put_box(data, box_key, offset[0], offset[1], ch, cw, h, w, pad)
    out.set_shape([ch, cw, image.shape[2]])
    return {**data, dst: out}
  return random_crop


def _put_box(data: Example, box_key: str | None, top, left, ch, cw, h, w,
             pad: int = 0) -> Example:
  """Records a crop's window as data[box_key] = [ymin, xmin, ymax, xmax].

  Fractions of the image the op received (before any padding the op added;
  a window reaching into the padding is clipped to the image), the
  `tf.image` bounding-box convention. Label pooling reads it
  (`pp/ops_soft_labels.py`); later geometric ops (flips, resizes) do not
  change what a crop covers.
  """
  if box_key is None:
    return data
  f = lambda v: tf.cast(v, tf.float32)
  hh, ww = f(h) - 2.0 * pad, f(w) - 2.0 * pad
  box = tf.stack([(f(top) - pad) / hh, (f(left) - pad) / ww,
                  (f(top) + f(ch) - pad) / hh, (f(left) + f(cw) - pad) / ww])
  return {**data, box_key: tf.clip_by_value(box, 0.0, 1.0)}


def _stateless_crop_offset(shape: tf.Tensor, crop_shape: tf.Tensor,
                           seed: tf.Tensor) -> tf.Tensor:
  """The offset `tf.image.stateless_random_crop(seed=seed)` takes (tested equal)."""
  limit = shape - crop_shape + 1
  draw = tf.random.stateless_uniform(tf.shape(shape), seed=seed, maxval=tf.int32.max,
                                     dtype=tf.int32)
  return draw % limit


def _check_crop_args(area_min: float, area_max: float, ratio_min: float,
                     ratio_max: float, max_attempts: int, op: str) -> None:
  if not 0 < area_min <= area_max <= 100:
    raise ValueError(f"{op}: need 0 < area_min <= area_max <= 100 (percent "
                     f"of the image area), got {area_min}, {area_max}.")
  if not all(isinstance(r, (int, float)) and not isinstance(r, bool)
             for r in (ratio_min, ratio_max)) or not 0 < ratio_min <= ratio_max:
    raise ValueError(f"{op}: need numbers 0 < ratio_min <= ratio_max (width "
                     f"/ height of the crop), got {ratio_min!r}, "
                     f"{ratio_max!r}.")
  if (isinstance(max_attempts, bool) or not isinstance(max_attempts, int)
      or max_attempts < 1):
    raise ValueError(f"{op}: max_attempts must be an int >= 1, got "
                     f"{max_attempts!r}.")


def _inception_window(shape: tf.Tensor, seed: tf.Tensor, area_min: float,
                      area_max: float, ratio_min: float, ratio_max: float,
                      max_attempts: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Samples a crop (begin [y, x, 0], size [h, w, -1]) of the given image shape.

  The crop covers area_min..area_max percent of the image, with an aspect ratio
  (width / height) in [ratio_min, ratio_max] (Szegedy et al., "Going deeper
  with convolutions"); if `max_attempts` draws find no such window that fits,
  the whole image is used. big_vision samples the same way (its defaults:
  ratios 0.75..1.33, 100 attempts), with a stateful RNG.
  """
  whole = tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4])
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=whole, seed=seed, min_object_covered=0.0,
      aspect_ratio_range=(ratio_min, ratio_max),
      area_range=(area_min / 100, area_max / 100), max_attempts=max_attempts,
      use_image_if_no_bounding_boxes=True)
  return begin, size


@PP_OPS.register("inception_crop")
@random_op
def get_inception_crop(size: int | Sequence[int] | None = None,
                       area_min: float = 5, area_max: float = 100,
                       method: str = "bilinear", antialias: bool = False,
                       ratio_min: float = 0.75, ratio_max: float = 1.33,
                       max_attempts: int = 100, rounding: str = "truncate",
                       key: str = "image", inkey: str | None = None,
                       outkey: str | None = None, box_key: str | None = None
                       ) -> Callable[[Example], Example]:
  """Random crop of area_min..area_max percent of the area, then resize.

  big_vision's arguments and defaults; the resize is `resize(size, method,
  antialias)`. `size=None` returns the crop without resizing. Ours only:
  `ratio_min`/`ratio_max` (the aspect ratio range, big_vision's fixed
  0.75..1.33), `max_attempts` (big_vision: 100), `rounding`, and `box_key`
  (also store the window there, for label pooling; see `_put_box`).
  """
  op = "inception_crop"
  hw = _hw(size, op) if size else None
  _check_crop_args(area_min, area_max, ratio_min, ratio_max, max_attempts, op)
  _check_method(method, op)
  _check_rounding(rounding, op)
  src, dst = _keys(key, inkey, outkey)

  def inception_crop(data):
    image = _image(data, src, op)
    seed = get_seed(data, op)
    begin, crop_size = _inception_window(tf.shape(image), seed, area_min,
                                         area_max, ratio_min, ratio_max,
                                         max_attempts)
    crop = tf.slice(image, begin, crop_size)
    crop.set_shape([None, None, image.shape[-1]])
    if hw is not None:
      crop = _resize(crop, hw, method, antialias, rounding)
    shape = tf.shape(image)
    data = _put_box(data, box_key, begin[0], begin[1], crop_size[0], crop_size[1],
                    shape[0], shape[1])
    return {**data, dst: crop}
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


def _decode_window(encoded: tf.Tensor, window: tf.Tensor, hw, method: str,
                   antialias: bool, rounding: str) -> tf.Tensor:
  """Decodes only `window` ([y, x, h, w]) of a JPEG, then resizes to hw."""
  crop = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
  crop.set_shape([None, None, 3])
  return crop if hw is None else _resize(crop, hw, method, antialias, rounding)


@PP_OPS.register("decode_jpeg_and_inception_crop")
@random_op
def get_decode_jpeg_and_inception_crop(
    size: int | Sequence[int] | None = None, area_min: float = 5,
    area_max: float = 100, ratio_min: float = 0.75, ratio_max: float = 1.33,
    method: str = "bilinear", antialias: bool = False,
    max_attempts: int = 100, rounding: str = "truncate", key: str = "image",
    box_key: str | None = None
) -> Callable[[Example], Example]:
  """`decode|inception_crop(...)` fused: decodes only the crop of a JPEG.

  big_vision's arguments and defaults (aspect ratios 0.75..1.33). Needs JPEG
  bytes (the input pipeline keeps images encoded when a pp string uses this
  op). Same crop distribution as `inception_crop`, always RGB. Ours only:
  `max_attempts` (big_vision: 100), `rounding` and `box_key` (also store the
  window there; see `_put_box`).
  """
  op = "decode_jpeg_and_inception_crop"
  hw = _hw(size, op) if size else None
  _check_crop_args(area_min, area_max, ratio_min, ratio_max, max_attempts, op)
  _check_method(method, op)
  _check_rounding(rounding, op)

  def decode_jpeg_and_inception_crop(data):
    encoded = _jpeg_bytes(data, key, op, "decode|inception_crop")
    seed = get_seed(data, op)
    shape = tf.image.extract_jpeg_shape(encoded)
    begin, crop_size = _inception_window(shape, seed, area_min, area_max,
                                         ratio_min, ratio_max, max_attempts)
    window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
    crop = _decode_window(encoded, window, hw, method, antialias, rounding)
    data = _put_box(data, box_key, begin[0], begin[1], crop_size[0], crop_size[1],
                    shape[0], shape[1])
    return {**data, key: crop}
  return decode_jpeg_and_inception_crop


@PP_OPS.register("decode_jpeg_and_central_crop")
def get_decode_jpeg_and_central_crop(
    size: int | Sequence[int], crop_fraction: float = 0.875,
    method: str = "bilinear", antialias: bool = False,
    rounding: str = "round", key: str = "image"
) -> Callable[[Example], Example]:
  """The standard ImageNet eval crop, decoding only the crop of a JPEG.

  Ours only (big_vision has no such op). Takes the central square whose side
  is `crop_fraction` of the shorter image side (0.875 = 224/256), decodes
  just that window and resizes it to `size` (bilinear, rounded to the
  nearest integer by default). This is the same view as
  `decode|resize_small(256)|central_crop(224)` (it crops before resizing
  instead of after, so pixels differ by interpolation only) and avoids
  decoding and resizing the pixels that are thrown away. Needs JPEG bytes
  (the input pipeline keeps images encoded for this op); output is uint8 RGB.
  Its pixels are NOT big_vision's: to reproduce big_vision's eval numbers
  exactly, use big_vision's `decode|resize_small(256)|central_crop(224)`
  (area resize of the whole image; about 2 levels apart on average, up to
  ~20, on a 300x400 JPEG).
  """
  op = "decode_jpeg_and_central_crop"
  hw = _hw(size, op)
  if not 0 < crop_fraction <= 1:
    raise ValueError(f"{op}: crop_fraction must be in (0, 1], got "
                     f"{crop_fraction!r}.")
  _check_method(method, op)
  _check_rounding(rounding, op)

  def decode_jpeg_and_central_crop(data):
    encoded = _jpeg_bytes(data, key, op, "decode|resize_small|central_crop")
    shape = tf.image.extract_jpeg_shape(encoded)
    h, w = shape[0], shape[1]
    side = tf.cast(tf.round(crop_fraction * tf.cast(tf.minimum(h, w),
                                                    tf.float32)), tf.int32)
    side = tf.maximum(side, 1)
    window = tf.stack([(h - side) // 2, (w - side) // 2, side, side])
    crop = _decode_window(encoded, window, hw, method, antialias, rounding)
    crop.set_shape([hw[0], hw[1], 3])
    return {**data, key: crop}
  return decode_jpeg_and_central_crop


@PP_OPS.register("flip_lr")
@random_op
def get_flip_lr(key: str = "image", inkey: str | None = None,
                outkey: str | None = None) -> Callable[[Example], Example]:
  """Flips the image left-right with probability 1/2."""
  src, dst = _keys(key, inkey, outkey)

  def flip_lr(data):
    image = _image(data, src, "flip_lr")
    seed = get_seed(data, "flip_lr")
    return {**data, dst: tf.image.stateless_random_flip_left_right(image, seed)}
  return flip_lr


def _per_channel(value: Any, name: str) -> Any:
  """A number, or a list of numbers (one per channel)."""
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) or (
      isinstance(value, (list, tuple)) and value and all(
          isinstance(v, (int, float)) and not isinstance(v, bool)
          for v in value))
  if not ok:
    raise ValueError(f"value_range: {name} must be a number or a list of "
                     f"numbers (one per channel), got {value!r}.")
  return list(value) if isinstance(value, (list, tuple)) else value


@PP_OPS.register("value_range")
def get_value_range(vmin: float = -1, vmax: float = 1, in_min: Any = 0,
                    in_max: Any = 255.0, clip_values: bool = False,
                    key: str = "image", inkey: str | None = None,
                    outkey: str | None = None
                    ) -> Callable[[Example], Example]:
  """Maps [in_min, in_max] linearly to [vmin, vmax] as float32.

  big_vision's op, arithmetic included (float32: `vmin + (x - in_min) /
  (in_max - in_min) * (vmax - vmin)`). `in_min`/`in_max` may be lists, one
  value per channel. `clip_values` clips the result to [vmin, vmax] (ours
  also when vmin > vmax, where big_vision's clip would give vmax everywhere).
  """
  in_min = _per_channel(in_min, "in_min")
  in_max = _per_channel(in_max, "in_max")
  try:
    span = np.asarray(in_max, np.float64) - np.asarray(in_min, np.float64)
  except ValueError as e:
    raise ValueError(f"value_range: in_min {in_min} and in_max {in_max} "
                     f"have different lengths.") from e
  if np.any(span == 0):
    raise ValueError(f"value_range: in_min and in_max are both {in_min} (in "
                     f"some channel).")
  lo, hi = min(vmin, vmax), max(vmin, vmax)
  src, dst = _keys(key, inkey, outkey)

  def value_range(data):
    image = tf.cast(_image(data, src, "value_range"), tf.float32)
    in_min_t = tf.constant(in_min, tf.float32)
    in_max_t = tf.constant(in_max, tf.float32)
    image = (image - in_min_t) / (in_max_t - in_min_t)
    image = vmin + image * (vmax - vmin)
    if clip_values:
      image = tf.clip_by_value(image, lo, hi)
    return {**data, dst: image}
  return value_range


# Per-channel RGB statistics of ImageNet on the [0, 1] scale (the convention
# of VGG-era and torchvision ImageNet models).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@PP_OPS.register("vgg_value_range")
def get_vgg_value_range(
    mean: Sequence[float] = tuple(m * 255 for m in IMAGENET_MEAN),
    std: Sequence[float] = tuple(s * 255 for s in IMAGENET_STD),
    key: str = "image", inkey: str | None = None, outkey: str | None = None
) -> Callable[[Example], Example]:
  """Standardises an RGB image in [0, 255]: float32 `(x - mean) / std`.

  As big_vision, per channel on the [0, 255] scale: by default ImageNet's
  mean (0.485, 0.456, 0.406) * 255 and std (0.229, 0.224, 0.225) * 255, the
  input normalisation of VGG-era and torchvision-style ImageNet models.
  """
  mean_t = tf.constant(mean, tf.float32)
  std_t = tf.constant(std, tf.float32)
  src, dst = _keys(key, inkey, outkey)

  def vgg_value_range(data):
    image = _image(data, src, "vgg_value_range")
    if (mean_t.shape.rank and mean_t.shape[-1] == 3 and image.shape.rank == 3
        and image.shape[-1] not in (None, 3)):
      raise ValueError(f"vgg_value_range: {src!r} must be an RGB image (3 "
                       f"channels), got shape {image.shape}.")
    return {**data, dst: (tf.cast(image, tf.float32) - mean_t) / std_t}
  return vgg_value_range


@PP_OPS.register("grayscale_to_rgb")
def get_grayscale_to_rgb(key: str = "image") -> Callable[[Example], Example]:
  """Repeats a single channel three times; RGB images pass through."""

  def grayscale_to_rgb(data):
    image = _image(data, key, "grayscale_to_rgb")
    return {**data, key: _to_channels(image, 3, "grayscale_to_rgb")}
  return grayscale_to_rgb
