"""Tests for the ImageNet pp ops: randaug, vgg_value_range, pad_to_shape,
map_label, the ImageNet class lists, and known outputs of the ImageNet crop
and multi-hot label ops."""

import numpy as np
import pytest
import tensorflow as tf

from big_vision_like import registry
from big_vision_like.data import imagenet_classes
from big_vision_like.pp import randaug as ra
from big_vision_like.pp.builder import PPError, get_preprocess_fn
from tests.helpers import assert_pp_error


def seed(a, b=0):
  return tf.constant([a, b], tf.int64)


def run(pp, data):
  out = get_preprocess_fn(pp)(data)
  return {k: (v if isinstance(v, tf.RaggedTensor) else v.numpy())
          for k, v in out.items()}


def column(values):
  """A 1 x N single-channel uint8 image."""
  return tf.constant(np.array(values, np.uint8).reshape(1, -1, 1))


def noise(h, w, c=3, lo=0, hi=256, rng_seed=0):
  rng = np.random.default_rng(rng_seed)
  return rng.integers(lo, hi, (h, w, c), dtype=np.uint8)


# ------------------------------------------- RandAugment ops, known values


def test_solarize_and_solarize_add():
  x = column([0, 99, 100, 200, 255])
  np.testing.assert_array_equal(ra.solarize(x, 100)[0, :, 0],
                                [0, 99, 155, 55, 0])
  np.testing.assert_array_equal(ra.solarize(x, 256), x)
  np.testing.assert_array_equal(ra.solarize(x, 0), 255 - x.numpy())
  np.testing.assert_array_equal(ra.invert(x), 255 - x.numpy())
  y = column([0, 100, 127, 128, 200])
  np.testing.assert_array_equal(ra.solarize_add(y, 50)[0, :, 0],
                                [50, 150, 177, 128, 200])
  np.testing.assert_array_equal(ra.solarize_add(y, 200)[0, :, 0],
                                [200, 255, 255, 128, 200])


def test_posterize_keeps_the_high_bits():
  x = column([0b10110111, 255, 15, 64])
  np.testing.assert_array_equal(ra.posterize(x, 2)[0, :, 0],
                                [0b10000000, 0b11000000, 0, 64])
  np.testing.assert_array_equal(ra.posterize(x, 4)[0, :, 0],
                                [0b10110000, 0b11110000, 0, 64])
  np.testing.assert_array_equal(ra.posterize(x, 8), x)


def test_brightness_color_contrast_factors():
  x = column([10, 100, 200])
  np.testing.assert_array_equal(ra.brightness(x, 0.5)[0, :, 0], [5, 50, 100])
  np.testing.assert_array_equal(ra.brightness(x, 1.5)[0, :, 0],
                                [15, 150, 255])  # 300 is clipped.
  red = tf.constant([[[255, 0, 0], [40, 40, 40]]], tf.uint8)
  # Luma of pure red: round(0.2989 * 255) = 76; gray pixels are fixed points.
  np.testing.assert_array_equal(ra.color(red, 0.0)[0], [[76] * 3, [40] * 3])
  np.testing.assert_array_equal(ra.color(red, 1.0), red)
  # 0.5: 76 + 0.5 * (255 - 76) = 165.5 -> 166 (half to even), 76 - 38 = 38.
  np.testing.assert_array_equal(ra.color(red, 0.5)[0, 0], [166, 38, 38])
  y = tf.constant([[[0], [100]], [[200], [100]]], tf.uint8)  # Mean 100.
  np.testing.assert_array_equal(ra.contrast(y, 0.0)[..., 0],
                                [[100, 100], [100, 100]])
  np.testing.assert_array_equal(ra.contrast(y, 2.0)[..., 0],
                                [[0, 100], [255, 100]])
  np.testing.assert_array_equal(ra.contrast(y, 1.0), y)


def test_sharpness_smooths_the_interior_only():
  x = np.zeros((3, 3, 1), np.uint8)
  x[1, 1] = 130
  # Smoothed centre: round(130 * 5 / 13) = 50; the border keeps its values.
  smooth = ra.sharpness(x, 0.0).numpy()[..., 0]
  expected = np.zeros((3, 3), np.uint8)
  expected[1, 1] = 50
  np.testing.assert_array_equal(smooth, expected)
  expected[1, 1] = 210  # Factor 2: 50 + 2 * (130 - 50).
  np.testing.assert_array_equal(ra.sharpness(x, 2.0)[..., 0], expected)
  np.testing.assert_array_equal(ra.sharpness(noise(6, 7), 1.0), noise(6, 7))


def test_autocontrast_stretches_each_channel():
  x = np.stack([np.array([[50, 75, 100, 60]]),  # Range 50..100.
                np.array([[7, 7, 7, 7]]),  # Constant: unchanged.
                np.array([[0, 1, 2, 255]])], axis=-1).astype(np.uint8)
  out = ra.autocontrast(x).numpy()
  # (x - 50) * 255 / 50 truncated: 0, 127.5 -> 127, 255, 51.
  np.testing.assert_array_equal(out[0, :, 0], [0, 127, 255, 51])
  np.testing.assert_array_equal(out[0, :, 1], [7, 7, 7, 7])
  np.testing.assert_array_equal(out[0, :, 2], [0, 1, 2, 255])
  # Every range maps its max to exactly 255 and its min to 0.
  for lo, hi in [(3, 4), (1, 254), (17, 200), (100, 101)]:
    y = column(np.linspace(lo, hi, 9).round())
    out = ra.autocontrast(y).numpy()[0, :, 0]
    assert out.min() == 0 and out.max() == 255
    np.testing.assert_array_equal(
        out, (y.numpy()[0, :, 0].astype(int) - lo) * 255 // (hi - lo))


def _equalize_reference(channel):
  """PIL's equalize rule on one channel, written out with numpy."""
  hist = np.bincount(channel.ravel(), minlength=256)
  step = (hist.sum() - hist[np.nonzero(hist)[0][-1]]) // 255
  if not step:
    return channel
  lut = np.minimum((np.cumsum(hist) - hist + step // 2) // step, 255)
  return lut[channel].astype(np.uint8)


def test_equalize_known_histogram_and_reference():
  # 255 pixels of 0, 255 of 100, 510 of 200: step = (1020 - 510) // 255 = 2,
  # so 0 -> (0 + 1) // 2 = 0, 100 -> (255 + 1) // 2 = 128, 200 -> 255.
  x = np.array([0] * 255 + [100] * 255 + [200] * 510, np.uint8)
  out = ra.equalize(x.reshape(20, 51, 1)).numpy().ravel()
  np.testing.assert_array_equal(out[[0, 255, 600]], [0, 128, 255])
  assert set(out.tolist()) == {0, 128, 255}
  # One value only: step 0, unchanged.
  flat = np.full((4, 5, 1), 77, np.uint8)
  np.testing.assert_array_equal(ra.equalize(flat), flat)
  image = noise(30, 40, lo=30, hi=180, rng_seed=3)
  out = ra.equalize(image).numpy()
  for c in range(3):
    np.testing.assert_array_equal(out[..., c],
                                  _equalize_reference(image[..., c]))


def test_translate_shifts_whole_pixels_with_fill():
  x = np.arange(1, 21, dtype=np.uint8).reshape(4, 5, 1)
  out = ra.translate(x, 2, 0).numpy()[..., 0]
  np.testing.assert_array_equal(out[:, :2], 128)
  np.testing.assert_array_equal(out[:, 2:], x[:, :3, 0])
  out = ra.translate(x, -1, 1, fill=0).numpy()[..., 0]
  np.testing.assert_array_equal(out[0], 0)
  np.testing.assert_array_equal(out[:, 4], 0)
  np.testing.assert_array_equal(out[1:, :4], x[:3, 1:, 0])
  np.testing.assert_array_equal(ra.translate(x, 9, 0), np.full_like(x, 128))


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_rotate_and_shear_known_cases(interpolation):
  x = noise(5, 5)
  # Counter-clockwise as displayed, like np.rot90; 180 degrees on a
  # non-square image is a flip of both axes.
  np.testing.assert_array_equal(
      ra.rotate(x, 90.0, interpolation=interpolation), np.rot90(x))
  np.testing.assert_array_equal(
      ra.rotate(x, -90.0, interpolation=interpolation), np.rot90(x, -1))
  y = noise(3, 6, rng_seed=1)
  np.testing.assert_array_equal(
      ra.rotate(y, 180.0, interpolation=interpolation), y[::-1, ::-1])
  np.testing.assert_array_equal(
      ra.rotate(y, 0.0, interpolation=interpolation), y)
  # Shear 1: output (x, y) reads input (x + y, y), so row r moves left by r.
  z = np.arange(1, 10, dtype=np.uint8).reshape(3, 3, 1)
  np.testing.assert_array_equal(
      ra.shear_x(z, 1.0, interpolation=interpolation)[..., 0],
      [[1, 2, 3], [5, 6, 128], [9, 128, 128]])
  np.testing.assert_array_equal(
      ra.shear_y(z, 1.0, interpolation=interpolation)[..., 0],
      [[1, 5, 9], [4, 8, 128], [7, 128, 128]])


def test_shear_by_a_fraction_of_a_pixel():
  z = np.arange(1, 10, dtype=np.uint8).reshape(3, 3, 1)
  # Shear 0.4: row 1 reads x + 0.4, row 2 reads x + 0.8 (fill 128 outside).
  np.testing.assert_array_equal(ra.shear_x(z, 0.4)[..., 0],
                                [[1, 2, 3], [4, 5, 6], [8, 9, 128]])
  # Bilinear: 0.6 * 4 + 0.4 * 5 = 4.4 -> 4, 0.6 * 6 + 0.4 * 128 = 54.8 -> 55,
  # 0.2 * 7 + 0.8 * 8 = 7.8 -> 8, 0.2 * 9 + 0.8 * 128 = 104.2 -> 104.
  np.testing.assert_array_equal(
      ra.shear_x(z, 0.4, interpolation="bilinear")[..., 0],
      [[1, 2, 3], [4, 5, 55], [8, 9, 104]])


def test_cutout_square_cut_at_the_borders():
  x = np.ones((5, 6, 1), np.uint8)
  out = ra.cutout(x, 2, 2, 3, fill=0).numpy()[..., 0]
  expected = np.ones((5, 6), np.uint8)
  expected[1:4, 1:4] = 0
  np.testing.assert_array_equal(out, expected)
  out = ra.cutout(x, 0, 5, 3, fill=9).numpy()[..., 0]
  expected = np.ones((5, 6), np.uint8)
  expected[0:2, 4:6] = 9
  np.testing.assert_array_equal(out, expected)


# ------------------------------------------ RandAugment magnitude mapping


POSITIVE, NEGATIVE = tf.constant([0.7, 0.5, 0.5]), tf.constant([0.2, 0.5, 0.5])


def increasing(x, name, m, rand):
  return ra.apply_op(x, name, m, rand, convention="increasing")


def test_increasing_magnitude_to_argument():
  x = noise(20, 20, rng_seed=2)
  # m=30: 3 * 30 = 90 degrees, the sign from rand[0].
  np.testing.assert_array_equal(increasing(x, "Rotate", 30, POSITIVE),
                                np.rot90(x))
  np.testing.assert_array_equal(increasing(x, "Rotate", 30, NEGATIVE),
                                np.rot90(x, -1))
  # m=10: 45% of the 20-pixel width = 9 pixels, right or left.
  np.testing.assert_array_equal(increasing(x, "TranslateX", 10, POSITIVE),
                                ra.translate(x, 9, 0))
  np.testing.assert_array_equal(increasing(x, "TranslateY", 10, NEGATIVE),
                                ra.translate(x, 0, -9))
  np.testing.assert_array_equal(increasing(x, "ShearX", 10, NEGATIVE),
                                ra.shear_x(x, -0.3))
  np.testing.assert_array_equal(increasing(x, "Solarize", 5, POSITIVE),
                                ra.solarize(x, 128))
  np.testing.assert_array_equal(increasing(x, "Solarize", 10, POSITIVE),
                                255 - x)
  np.testing.assert_array_equal(increasing(x, "Posterize", 10, POSITIVE),
                                ra.posterize(x, 4))
  np.testing.assert_array_equal(increasing(x, "Posterize", 30, POSITIVE),
                                ra.posterize(x, 1))
  np.testing.assert_array_equal(increasing(x, "Brightness", 10, POSITIVE),
                                ra.brightness(x, 1.9))
  np.testing.assert_array_equal(increasing(x, "Contrast", 10, NEGATIVE),
                                ra.contrast(x, 0.1))
  # Factors never go below 0: 1 - 0.09 * 20 -> 0.
  np.testing.assert_array_equal(increasing(x, "Color", 20, NEGATIVE),
                                ra.color(x, 0.0))
  np.testing.assert_array_equal(increasing(x, "SolarizeAdd", 10, POSITIVE),
                                ra.solarize_add(x, 110))


def test_autoaugment_geometric_magnitudes():
  # level = m / 10: Rotate 30 level degrees, Shear 0.3 level, both +-.
  x = noise(20, 20, rng_seed=2)
  np.testing.assert_array_equal(ra.apply_op(x, "Rotate", 30, POSITIVE),
                                np.rot90(x))  # 30 * 3 = 90 degrees.
  np.testing.assert_array_equal(ra.apply_op(x, "Rotate", 30, NEGATIVE),
                                np.rot90(x, -1))
  np.testing.assert_array_equal(ra.apply_op(x, "Rotate", 10, POSITIVE),
                                ra.rotate(x, 30.0))
  rotated = ra.apply_op(x, "Rotate", 15, NEGATIVE)
  np.testing.assert_array_equal(rotated, ra.rotate(x, -45.0))
  assert not np.array_equal(rotated, ra.rotate(x, -30.0))
  np.testing.assert_array_equal(ra.apply_op(x, "ShearX", 10, POSITIVE),
                                ra.shear_x(x, 0.3))
  sheared = ra.apply_op(x, "ShearY", 15, NEGATIVE)
  np.testing.assert_array_equal(sheared, ra.shear_y(x, -0.45))
  assert not np.array_equal(sheared, ra.shear_y(x, -0.3))


def test_autoaugment_translate_is_100_pixels_per_level():
  # Values < 100, so the fill (128) is recognisable.
  wide = noise(6, 170, hi=100)
  out = ra.apply_op(wide, "TranslateX", 15, POSITIVE).numpy()  # +150 px.
  np.testing.assert_array_equal(out[:, 150:], wide[:, :20])
  np.testing.assert_array_equal(out[:, :150], 128)
  out = ra.apply_op(wide, "TranslateX", 10, NEGATIVE).numpy()  # -100 px.
  np.testing.assert_array_equal(out[:, :70], wide[:, 100:])
  np.testing.assert_array_equal(out[:, 70:], 128)
  tall = noise(170, 6, hi=100)
  out = ra.apply_op(tall, "TranslateY", 15, NEGATIVE).numpy()  # Up 150 px.
  np.testing.assert_array_equal(out[:20], tall[150:])
  np.testing.assert_array_equal(out[20:], 128)
  # Whatever the image size: 100 px move all of a 90-pixel image out.
  np.testing.assert_array_equal(
      ra.apply_op(noise(90, 90), "TranslateY", 10, POSITIVE), 128)


def test_autoaugment_cutout_is_40_pixels_per_level_each_side():
  x = noise(200, 240, hi=100)

  def filled(m, rand):
    out = ra.apply_op(x, "Cutout", m, rand).numpy()
    mask = np.all(out == 128, axis=-1)
    np.testing.assert_array_equal(out[~mask], x[~mask])
    return mask

  def square(top, bottom, left, right):
    mask = np.zeros((200, 240), bool)
    mask[top:bottom, left:right] = True
    return mask

  # Centre (int(0.5 * 200), int(0.5 * 240)) = (100, 120); half-size
  # int(1.5 * 40) = 60 at m=15, 40 at m=10.
  np.testing.assert_array_equal(filled(15, POSITIVE),
                                square(40, 160, 60, 180))
  np.testing.assert_array_equal(filled(10, POSITIVE),
                                square(60, 140, 80, 160))
  # Centre (50, 180): the 80 x 80 square is cut at the right border.
  np.testing.assert_array_equal(filled(10, tf.constant([0.7, 0.25, 0.75])),
                                square(10, 90, 140, 220))
  # m=30: half-size 120 covers the whole image from its centre.
  assert filled(30, POSITIVE).all()


def test_autoaugment_pixel_magnitudes():
  def op(name, m, values):
    return ra.apply_op(column(values), name, m, POSITIVE).numpy()[0, :, 0]

  # Solarize inverts x >= int(level * 256): 128 at m=5, 256 (none) at
  # m=10, 384 (none) at m=15, 0 (all) at m=0.
  x = [0, 99, 127, 128, 200, 255]
  np.testing.assert_array_equal(op("Solarize", 5, x),
                                [0, 99, 127, 127, 55, 0])
  np.testing.assert_array_equal(op("Solarize", 10, x), x)
  np.testing.assert_array_equal(op("Solarize", 15, x), x)
  np.testing.assert_array_equal(op("Solarize", 0, x), 255 - np.array(x))
  # SolarizeAdd adds int(level * 110) to x < 128: 110 at m=10, 165 at m=15.
  y = [0, 100, 127, 128, 200]
  np.testing.assert_array_equal(op("SolarizeAdd", 10, y),
                                [110, 210, 237, 128, 200])
  np.testing.assert_array_equal(op("SolarizeAdd", 15, y),
                                [165, 255, 255, 128, 200])
  # Posterize keeps int(level * 4) bits: 4 at m=10, 6 at m=15, 2 at m=7
  # (int(2.8)); 0 bits keeps 1 (as TF's clamped shift), >= 8 keeps all.
  z = [0b10110111, 255, 15, 64]
  np.testing.assert_array_equal(op("Posterize", 10, z),
                                [0b10110000, 0b11110000, 0, 64])
  np.testing.assert_array_equal(op("Posterize", 15, z),
                                [0b10110100, 0b11111100, 0b1100, 64])
  np.testing.assert_array_equal(op("Posterize", 7, z),
                                [0b10000000, 0b11000000, 0, 64])
  np.testing.assert_array_equal(op("Posterize", 0, z), [128, 128, 0, 0])
  np.testing.assert_array_equal(op("Posterize", 20, z), z)
  np.testing.assert_array_equal(op("Posterize", 30, z), z)


def test_autoaugment_enhance_factor_has_no_sign():
  # Factor level * 1.8 + 0.1: 1.9 at m=10, 2.8 at m=15, 1 at m=5, 0.1 at 0.
  for rand in (POSITIVE, NEGATIVE):
    def op(name, m, x):
      return ra.apply_op(x, name, m, rand).numpy()

    b = column([10, 100, 200])
    np.testing.assert_array_equal(op("Brightness", 10, b)[0, :, 0],
                                  [19, 190, 255])
    np.testing.assert_array_equal(op("Brightness", 15, b)[0, :, 0],
                                  [28, 255, 255])
    np.testing.assert_array_equal(op("Brightness", 0, b)[0, :, 0],
                                  [1, 10, 20])
    np.testing.assert_array_equal(op("Brightness", 5, b), b)
    c = tf.constant([[[50], [100]], [[150], [100]]], tf.uint8)  # Mean 100.
    # 100 -+ 1.9 * 50 = 5, 195; 100 -+ 2.8 * 50 = -40 -> 0, 240.
    np.testing.assert_array_equal(op("Contrast", 10, c)[..., 0],
                                  [[5, 100], [195, 100]])
    np.testing.assert_array_equal(op("Contrast", 15, c)[..., 0],
                                  [[0, 100], [240, 100]])
    x = noise(12, 10, rng_seed=6)
    np.testing.assert_array_equal(op("Color", 10, x), ra.color(x, 1.9))
    np.testing.assert_array_equal(op("Sharpness", 15, x),
                                  ra.sharpness(x, 2.8))


def test_autoaugment_default_ops_and_full_pipeline():
  names = ra.DEFAULT_OPS["autoaugment"]
  assert len(names) == 16 and len(set(names)) == 16
  assert set(names) == set(ra.ALL_OPS) - {"Identity"}
  assert len(ra.DEFAULT_OPS["increasing"]) == 14
  assert "Identity" in ra.DEFAULT_OPS["increasing"]
  # `randaug(2, 15)` is two layers of ops drawn from the 16, each mapped
  # by the autoaugment convention.
  fn = get_preprocess_fn("randaug(2, 15)")
  image = noise(32, 48, lo=40, hi=200)
  for s in range(6):
    indices, rands = ra.layer_draws(
        tf.random.experimental.stateless_fold_in(seed(s), 0), 2, 16)
    expected = image
    for i in range(2):
      expected = ra.apply_op(expected, names[int(indices[i])], 15, rands[i],
                             convention="autoaugment")
    np.testing.assert_array_equal(
        fn({"image": image, "_seed": seed(s)})["image"], expected)


def test_autoaugment_layers_always_apply_their_op():
  # The TF RandAugment code draws a probability per op but never uses it:
  # the drawn op always runs. With image values in [40, 200), every one of
  # the 16 ops but Solarize (a no-op at m=15) changes the image, so an
  # output is unchanged exactly when Solarize was drawn (1/16 of the seeds;
  # an apply probability of 0.5 would leave about half unchanged).
  image = tf.constant(noise(16, 16, lo=40, hi=200))
  fn = get_preprocess_fn("randaug(1, 15)")
  ds = tf.data.Dataset.range(160).map(lambda s: fn(
      {"image": image, "_seed": tf.stack([s, tf.zeros([], tf.int64)])}))
  unchanged = [np.array_equal(x["image"], image)
               for x in ds.as_numpy_iterator()]
  solarize = ra.DEFAULT_OPS["autoaugment"].index("Solarize")
  drawn = [int(ra.layer_draws(tf.random.experimental.stateless_fold_in(
      seed(s), 0), 1, 16)[0][0]) == solarize for s in range(160)]
  assert unchanged == drawn
  assert 3 <= sum(unchanged) <= 25
  # Invert twice per example, for every seed: always the identity.
  fn = get_preprocess_fn("randaug(2, 15, ops=('Invert',))")
  for s in range(20):
    np.testing.assert_array_equal(
        fn({"image": image, "_seed": seed(s)})["image"], image)


def test_both_conventions_are_selectable():
  x = noise(10, 12, lo=40, hi=200)
  run_ = lambda pp: run(pp, {"image": x, "_seed": seed(3)})["image"]
  # Solarize at m=15: a no-op for AutoAugment, "invert all" when increasing.
  np.testing.assert_array_equal(run_("randaug(1, 15, ops=('Solarize',))"), x)
  np.testing.assert_array_equal(
      run_("randaug(1, 15, convention='autoaugment', ops=('Solarize',))"), x)
  np.testing.assert_array_equal(
      run_("randaug(1, 15, 'increasing', ops=('Solarize',))"), 255 - x)
  # Posterize at m=15: 6 bits kept vs 8 - round(6) = 2.
  np.testing.assert_array_equal(
      run_("randaug(1, 15, ops=('Posterize',))"), x & 0b11111100)
  np.testing.assert_array_equal(
      run_("randaug(1, 15, convention='increasing', ops=('Posterize',))"),
      x & 0b11000000)


def test_magnitude_zero_is_the_identity_for_the_parametric_ops():
  ops = tuple(n for n in ra.ALL_OPS
              if n not in ("AutoContrast", "Equalize", "Invert"))
  fn = get_preprocess_fn(
      f"randaug(3, 0, convention='increasing', ops={ops!r})")
  image = noise(17, 23)
  for s in range(15):
    np.testing.assert_array_equal(
        fn({"image": image, "_seed": seed(s)})["image"], image)


def test_num_layers_zero_is_the_identity():
  image = noise(8, 9)
  out = run("randaug(0, 30)", {"image": image, "_seed": seed(1)})
  np.testing.assert_array_equal(out["image"], image)


@pytest.mark.parametrize("convention", ["autoaugment", "increasing"])
def test_randaug_is_a_function_of_the_seed(convention):
  fn = get_preprocess_fn(f"randaug(2, 15, {convention!r})")
  # Large enough that AutoAugment's 150-pixel translations and 120-pixel
  # cutouts leave part of the image (on a tiny image they all give gray).
  image = noise(160, 200, lo=30, hi=220)
  a = fn({"image": image, "_seed": seed(7, 1)})["image"].numpy()
  b = fn({"image": image, "_seed": seed(7, 1)})["image"].numpy()
  np.testing.assert_array_equal(a, b)
  outs = [fn({"image": image, "_seed": seed(s)})["image"].numpy().tobytes()
          for s in range(30)]
  assert len(set(outs)) >= 25
  assert sum(o != image.tobytes() for o in outs) >= 27


# The ops that leave an image unchanged at m=10, per convention: at level 1,
# AutoAugment's Solarize threshold is 256.
NO_OPS_AT_10 = {"increasing": {"Identity"},
                "autoaugment": {"Identity", "Solarize"}}


@pytest.mark.parametrize("convention", ["autoaugment", "increasing"])
def test_every_op_is_drawn_and_forcing_an_op_applies_it(convention):
  n = len(ra.DEFAULT_OPS[convention])
  counts = np.zeros(n, int)
  for s in range(300):
    indices, _ = ra.layer_draws(seed(s, 3), 2, n)
    np.add.at(counts, indices.numpy(), 1)
  assert counts.min() > 0 and counts.sum() == 600
  assert counts.max() < 3 * counts.min()  # Roughly uniform.
  # Not full range, so AutoContrast acts; >= 255 pixels per value, so
  # Equalize does too.
  image = noise(40, 30, lo=40, hi=200)
  for name in ra.ALL_OPS:
    out = run(f"randaug(1, 10, {convention!r}, ops=({name!r},))",
              {"image": image, "_seed": seed(5)})["image"]
    _, rands = ra.layer_draws(tf.random.experimental.stateless_fold_in(
        seed(5), 0), 1, 1)  # The builder folds in the op's position, 0.
    np.testing.assert_array_equal(
        out, ra.apply_op(image, name, 10, rands[0], convention=convention),
        err_msg=name)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (name in NO_OPS_AT_10[convention]) == np.array_equal(
        out, image), name


def test_randaug_bilinear_option_reaches_the_geometric_ops():
  image = noise(20, 30)
  for name in ("Rotate", "ShearX", "ShearY"):
    nearest = run(f"randaug(1, 10, ops=({name!r},))",
                  {"image": image, "_seed": seed(2)})["image"]
    bilinear = run(f"randaug(1, 10, ops=({name!r},), interpolation='bilinear')",
                   {"image": image, "_seed": seed(2)})["image"]
    _, rands = ra.layer_draws(tf.random.experimental.stateless_fold_in(
        seed(2), 0), 1, 1)
    np.testing.assert_array_equal(
        bilinear, ra.apply_op(image, name, 10, rands[0],
                              interpolation="bilinear"))
    assert not np.array_equal(nearest, bilinear), name


def test_randaug_in_tf_data_with_unknown_shapes():
  fn = get_preprocess_fn("randaug(2, 15)")
  base = tf.constant(noise(40, 50))

  def example(i):
    image = base[:20 + 3 * tf.cast(i, tf.int32), :15 + 5 * tf.cast(i, tf.int32)]
    return fn({"image": image, "_seed": tf.stack([i, i + 1])})
  ds = tf.data.Dataset.range(6).map(example, num_parallel_calls=2,
                                    deterministic=True)
  assert ds.element_spec["image"].shape.as_list() == [None, None, 3]
  first = list(ds.as_numpy_iterator())
  second = list(ds.as_numpy_iterator())
  for i, (a, b) in enumerate(zip(first, second)):
    assert a["image"].shape == (20 + 3 * i, 15 + 5 * i, 3)
    assert a["image"].dtype == np.uint8
    np.testing.assert_array_equal(a["image"], b["image"])
  # Same as calling the op eagerly with the same seed.
  eager = fn({"image": base[:23, :20], "_seed": seed(1, 2)})["image"]
  np.testing.assert_array_equal(first[1]["image"], eager)


def test_randaug_grayscale_and_static_shape():
  fn = get_preprocess_fn("randaug(3, 10)")
  gray = noise(9, 11, c=1)
  for s in range(10):
    out = fn({"image": gray, "_seed": seed(s)})["image"]
    assert out.shape == (9, 11, 1) and out.dtype == tf.uint8
  spec = tf.TensorSpec([224, 224, 3], tf.uint8)
  traced = tf.function(lambda x: fn({"image": x, "_seed": seed(0)})["image"])
  assert traced.get_concrete_function(spec).output_shapes == [224, 224, 3]


@pytest.mark.parametrize("pp, fragments", [
    ("randaug(2, 31)", ["pp op 0", "magnitude must be a number in [0, 30]"]),
    ("randaug(-1)", ["num_layers must be an int >= 0"]),
    ("randaug(2, 9, ops=('Rotate', 'Rotation'))",
     ["unknown op(s) ['Rotation']", "'ShearX'"]),
    ("randaug(2, 9, ops=())", ["at least one op"]),
    ("randaug(fill=300)", ["fill must be an int in [0, 255]"]),
    ("randaug(interpolation='cubic')", ["interpolation must be one of"]),
    ("randaug(2, 15, convention='timm')",
     ["convention must be one of ('autoaugment', 'increasing')", "'timm'"]),
    ("randaug(2, 15, ('Rotate',))", ["convention must be one of",
                                     "('Rotate',)"]),
])
def test_randaug_bad_arguments(pp, fragments):
  assert_pp_error(lambda: get_preprocess_fn(pp), fragments)


def test_randaug_bad_inputs_name_the_op():
  with pytest.raises(PPError, match="randaug: 'image' must be a uint8 image"):
    run("value_range(0, 1)|randaug", {"image": noise(4, 4), "_seed": seed(0)})
  with pytest.raises(PPError, match="static 1 or 3 channels"):
    run("randaug", {"image": noise(4, 4, c=4), "_seed": seed(0)})
  with pytest.raises(PPError, match="pp op 0 'randaug'.*_seed"):
    run("randaug", {"image": noise(4, 4)})
  assert "randaug" in registry.PP_OPS.names()


# ------------------------------------------------------ vgg_value_range


def test_vgg_value_range_values():
  image = tf.constant([[[0, 128, 255], [255, 0, 51]]], tf.uint8)
  out = run("vgg_value_range", {"image": image})["image"]
  assert out.dtype == np.float32
  expected = [[(0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224,
               (1 - 0.406) / 0.225],
              [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224,
               (0.2 - 0.406) / 0.225]]
  np.testing.assert_allclose(out[0], expected, rtol=1e-5)
  np.testing.assert_allclose(out[0, 0], [-2.117904, 0.205182, 2.64],
                             rtol=1e-5)
  with pytest.raises(PPError, match="vgg_value_range: 'image' must be an RGB"):
    run("vgg_value_range", {"image": tf.zeros([2, 2, 1], tf.uint8)})


# --------------------------------------------------------- pad_to_shape


def test_pad_to_shape_dense_and_ragged():
  out = run("pad_to_shape((5,), pad_value=-1, key='label')",
            {"label": tf.constant([3, 1], tf.int64)})
  np.testing.assert_array_equal(out["label"], [3, 1, -1, -1, -1])
  out = run("pad_to_shape((3, None), key='x', key_result='y')",
            {"x": tf.constant([[1, 2]])})
  np.testing.assert_array_equal(out["y"], [[1, 2], [0, 0], [0, 0]])
  np.testing.assert_array_equal(out["x"], [[1, 2]])
  out = run("pad_to_shape((3, 4), pad_value=9, key='label')",
            {"label": tf.ragged.constant([[1], [2, 3]])})
  np.testing.assert_array_equal(out["label"],
                                [[1, 9, 9, 9], [2, 3, 9, 9], [9, 9, 9, 9]])
  out = run("pad_to_shape((2,), pad_value='', key='label')",
            {"label": tf.constant([b"a"])})
  np.testing.assert_array_equal(out["label"], [b"a", b""])
  empty = run("pad_to_shape((3,), -1, key='label')",
              {"label": tf.constant([], tf.int32)})
  np.testing.assert_array_equal(empty["label"], [-1, -1, -1])
  image = run("pad_to_shape((4, 3, None), key='image')",
              {"image": tf.ones([2, 3, 3], tf.uint8)})["image"]
  assert image.shape == (4, 3, 3) and image[2:].sum() == 0


def test_pad_to_shape_gives_static_shapes_in_tf_data():
  ds = tf.data.Dataset.from_tensor_slices(
      {"label": tf.ragged.constant([[1], [2, 3, 4], []])})
  ds = ds.map(
      get_preprocess_fn("pad_to_shape((4,), pad_value=-1, key='label')"))
  assert ds.element_spec["label"].shape.as_list() == [4]
  got = [x["label"].tolist() for x in ds.as_numpy_iterator()]
  assert got == [[1, -1, -1, -1], [2, 3, 4, -1], [-1, -1, -1, -1]]
  batched = next(iter(ds.batch(3)))["label"]
  assert batched.shape == (3, 4)


def test_pad_to_shape_too_large_fails_naming_the_op():
  with pytest.raises(PPError) as e:
    run("pad_to_shape((1,), key='label')", {"label": tf.constant([3, 1])})
  assert "pad_to_shape: 'label' has shape (2,)" in str(e.value)
  assert "larger than the wanted shape (1,)" in str(e.value)
  # Unknown length: the check runs inside tf.data.
  ds = tf.data.Dataset.from_tensor_slices(
      {"label": tf.ragged.constant([[1], [2, 3, 4]])}).map(
          get_preprocess_fn("pad_to_shape((2,), key='label')"))
  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    list(ds)
  msg = str(e.value)
  assert "pp op pad_to_shape: key=label has shape" in msg
  assert "[3]" in msg and "larger than the wanted shape (2,)" in msg


@pytest.mark.parametrize("pp, data, fragments", [
    ("pad_to_shape((2, 2), key='label')", {"label": tf.constant([1])},
     ["rank 1", "rank 2"]),
    ("pad_to_shape((-1,), key='label')", {"label": tf.constant([1])},
     ["shape must be a tuple of ints >= 0 or None"]),
    ("pad_to_shape((3,), key='label')", {"label": tf.constant([b"a"])},
     ["pad_value 0 does not fit 'label' of dtype string"]),
    ("pad_to_shape((3,), key='nope')", {"label": tf.constant([1])},
     ["pad_to_shape", "['nope']"]),
])
def test_pad_to_shape_bad_arguments(pp, data, fragments):
  assert_pp_error(lambda: run(pp, data), fragments)


# ------------------------------------------------------------ map_label


def test_map_label_with_dict_and_list():
  out = run("map_label({3: 0, 5: 1})", {"label": tf.constant(5, tf.int64)})
  assert out["label"] == 1 and out["label"].dtype == np.int64
  out = run("map_label({3: 0, 5: 1}, key_result='sub')",
            {"label": tf.constant([5, 3, 4, 99, -1], tf.int32)})
  np.testing.assert_array_equal(out["sub"], [1, 0, -1, -1, -1])
  assert out["sub"].dtype == np.int32
  np.testing.assert_array_equal(out["label"], [5, 3, 4, 99, -1])
  out = run("map_label([2, None, 0], unknown=7)",
            {"label": tf.constant([0, 1, 2, 3])})
  np.testing.assert_array_equal(out["label"], [2, 7, 0, 7])


def test_map_label_imagenet_subsets():
  a_ids = imagenet_classes.subset_indices("imagenet_a")
  r_ids = imagenet_classes.subset_indices("imagenet_r")
  out = run("map_label('imagenet_a')",
            {"label": tf.constant([6, 11, 13, 0, a_ids[-1]], tf.int64)})
  np.testing.assert_array_equal(out["label"], [0, 1, 2, -1, 199])
  assert run("map_label('imagenet_a_to_1k')",
             {"label": tf.constant(0)})["label"] == 6
  assert run("map_label('imagenet_r')", {"label": tf.constant(4)})["label"] == 2
  for name, ids in [("imagenet_a", a_ids), ("imagenet_r", r_ids)]:
    # Subset index -> 1k id -> subset index is the identity on all 200.
    to_1k = run(f"map_label('{name}_to_1k')",
                {"label": tf.range(200)})["label"]
    np.testing.assert_array_equal(to_1k, ids)
    back = run(f"map_label('{name}')", {"label": tf.constant(to_1k)})["label"]
    np.testing.assert_array_equal(back, np.arange(200))
    # All 800 other classes are unknown.
    others = np.setdiff1d(np.arange(1000), ids)
    assert len(others) == 800
    out = run(f"map_label('{name}')", {"label": tf.constant(others)})
    np.testing.assert_array_equal(out["label"], -1)
    assert run(f"map_label('{name}_to_1k')",
               {"label": tf.constant(200)})["label"] == -1


def test_map_label_on_label_sets():
  sets = tf.ragged.constant([[6, 0, 11], [], [1]], tf.int64)
  out = run("map_label('imagenet_a')", {"label": sets})["label"]
  assert out.to_list() == [[0, -1, 1], [], [-1]]
  out = run("map_label('imagenet_a', drop_unknown=True)",
            {"label": sets})["label"]
  assert out.to_list() == [[0, 1], [], []]
  out = run("map_label('imagenet_a', drop_unknown=True)",
            {"label": tf.constant([13, 2, 6], tf.int64)})["label"]
  np.testing.assert_array_equal(out, [2, 0])
  # Unknown entries (-1) drop out of a multi-hot target.
  out = run("map_label('imagenet_a')|onehot(200)",
            {"label": tf.constant([6, 0, 13], tf.int64)})["label"]
  assert out.sum() == 2 and out[0] == 1 and out[2] == 1


def test_map_label_unknown_none_fails_naming_the_labels():
  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    run("map_label('imagenet_a', unknown=None)",
        {"label": tf.constant([6, 0, 1], tf.int64)})
  msg = str(e.value)
  assert ("pp op map_label: key=label has label(s) without an entry in "
          "imagenet_a:") in msg
  assert "0, 1" in msg
  out = run("map_label('imagenet_a', unknown=None)",
            {"label": tf.constant([6, -1], tf.int64)})  # -1 is padding.
  np.testing.assert_array_equal(out["label"], [0, -1])
  ds = tf.data.Dataset.from_tensor_slices({"label": [6, 7]}).map(
      get_preprocess_fn("map_label('imagenet_a', unknown=None)"))
  with pytest.raises(tf.errors.InvalidArgumentError, match="map_label"):
    list(ds)


@pytest.mark.parametrize("pp, fragments", [
    ("map_label('imagenet_b')", ["unknown named mapping 'imagenet_b'",
                                 "imagenet_r_to_1k"]),
    ("map_label({1: -2})", ["ints >= 0", "(1, -2)"]),
    ("map_label({})", ["mapping is empty"]),
    ("map_label({10000000: 1})", ["old labels must be < 1,000,000"]),
    ("map_label(3)", ["mapping must be a dict"]),
    ("map_label([1], unknown=None, drop_unknown=True)", ["not both"]),
    ("map_label([1], unknown='x')", ["unknown must be an int or None"]),
])
def test_map_label_bad_arguments(pp, fragments):
  assert_pp_error(lambda: get_preprocess_fn(pp), fragments)


def test_map_label_bad_inputs():
  with pytest.raises(PPError, match="integer labels"):
    run("map_label([1])", {"label": tf.constant(1.0)})
  with pytest.raises(PPError, match="drop_unknown needs a 1-D label set"):
    run("map_label([1], drop_unknown=True)", {"label": tf.constant(0)})


# -------------------------------------------------- ImageNet class lists


def test_imagenet_class_lists():
  wnids = imagenet_classes.IMAGENET_WNIDS
  assert len(wnids) == 1000 and list(wnids) == sorted(wnids)
  assert wnids[0] == "n01440764" and wnids[999] == "n15075141"
  a = imagenet_classes.subset_indices("imagenet_a")
  r = imagenet_classes.subset_indices("imagenet_r")
  assert a[:3] == [6, 11, 13] and r[:3] == [1, 2, 4]
  for ids, subset in [(a, imagenet_classes.IMAGENET_A_WNIDS),
                      (r, imagenet_classes.IMAGENET_R_WNIDS)]:
    assert len(ids) == len(set(ids)) == 200 and ids == sorted(ids)
    assert [wnids[i] for i in ids] == list(subset)
  assert imagenet_classes.IMAGENET_A_WNIDS[0] == "n01498041"  # Stingray.
  names = imagenet_classes.class_names()
  assert len(names) == 1000
  assert names[0].startswith("tench") and names[6] == "stingray"
  assert names[999].startswith("toilet tissue")
  with pytest.raises(ValueError, match="Did you mean 'imagenet_a'"):
    imagenet_classes.subset_indices("imagenet-a")


# ----------------------------------- known outputs of existing ImageNet ops


def test_decode_jpeg_and_inception_crop_area_and_aspect():
  image = noise(48, 64, rng_seed=4)
  jpeg = tf.io.encode_jpeg(image, quality=90)
  fn = get_preprocess_fn("decode_jpeg_and_inception_crop(None, 10, 40)")
  areas = []
  for s in range(120):
    crop = fn({"image": jpeg, "_seed": seed(s, 9)})["image"]
    h, w = crop.shape[0], crop.shape[1]
    assert crop.shape[2] == 3 and crop.dtype == tf.uint8
    areas.append(h * w / (48 * 64))
    # Integer crop sizes: allow one pixel of rounding in the aspect ratio.
    assert 3 / 4 * (h - 1) / h <= w / h <= 4 / 3 * (w + 1) / w * (h + 1) / h
  assert 0.10 <= min(areas) and max(areas) <= 0.40
  assert min(areas) < 0.15 and max(areas) > 0.33  # Spans the range.


def test_onehot_real_label_sets_with_an_empty_set():
  # ReaL-style label sets: variable length per example, some empty.
  ds = tf.data.Dataset.from_tensor_slices(
      {"real_label": tf.ragged.constant([[1, 3], [], [2, 2]], tf.int64)})
  ds = ds.map(get_preprocess_fn("onehot(4, key='real_label')"))
  got = [x["real_label"].tolist() for x in ds.as_numpy_iterator()]
  assert got == [[0, 1, 0, 1], [0, 0, 0, 0], [0, 0, 1, 0]]
  # Label smoothing on a set of two: on = 1 - 0.2 + 0.05, off = 0.05.
  out = run("onehot(4, key='real_label', smoothing=0.2)",
            {"real_label": tf.constant([3, 0], tf.int64)})["real_label"]
  np.testing.assert_allclose(out, [0.85, 0.05, 0.05, 0.85], rtol=1e-6)


def test_standard_imagenet_train_pipeline():
  pp = ("decode_jpeg_and_inception_crop(32)|flip_lr|randaug(2, 15)|"
        "value_range(-1, 1)|onehot(1000)")
  jpeg = tf.io.encode_jpeg(noise(40, 56))
  fn = get_preprocess_fn(pp)
  ds = tf.data.Dataset.range(4).map(lambda i: fn(
      {"image": jpeg, "label": i * 100, "_seed": tf.stack([i, i])}))
  for i, x in enumerate(ds.as_numpy_iterator()):
    assert set(x) == {"image", "label"}
    assert x["image"].shape == (32, 32, 3) and x["image"].dtype == np.float32
    assert -1 <= x["image"].min() and x["image"].max() <= 1
    assert x["label"].shape == (1000,) and x["label"][i * 100] == 1


# ------------------------------------------- decode_jpeg_and_central_crop


def test_decode_jpeg_and_central_crop_takes_the_central_square():
  rng = np.random.default_rng(0)
  # Smooth content, so JPEG's crop decode matches a full decode closely.
  small = rng.integers(0, 256, (12, 16, 3)).astype(np.float32)
  image = tf.cast(tf.image.resize(small, (375, 500)), tf.uint8).numpy()
  encoded = tf.io.encode_jpeg(image, quality=95)
  fn = get_preprocess_fn("decode_jpeg_and_central_crop(224)")
  got = fn({"image": encoded})["image"]
  assert got.shape == (224, 224, 3) and got.dtype == tf.uint8
  # Shorter side 375 -> crop side round(0.875 * 375) = 328 at (23, 86).
  full = tf.io.decode_jpeg(encoded).numpy()
  want = tf.image.resize(full[23:351, 86:414].astype(np.float32), (224, 224))
  diff = np.abs(got.numpy().astype(np.float32) - want.numpy())
  assert diff.mean() < 0.5 and diff.max() <= 4
  # A window one pixel off would be visibly different.
  off = tf.image.resize(full[24:352, 86:414].astype(np.float32), (224, 224))
  assert np.abs(got.numpy() - off.numpy()).mean() > diff.mean()


def test_decode_jpeg_and_central_crop_errors():
  with pytest.raises(PPError, match="crop_fraction must be in"):
    get_preprocess_fn("decode_jpeg_and_central_crop(224, 1.5)")
  fn = get_preprocess_fn("decode_jpeg_and_central_crop(8)")
  with pytest.raises(PPError, match="must hold JPEG bytes"):
    fn({"image": tf.zeros([10, 10, 3], tf.uint8)})
