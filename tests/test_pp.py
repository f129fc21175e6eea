"""Tests for the pp mini-language (parser, builder) and the pp ops."""

import numpy as np
import pytest
import tensorflow as tf

from big_vision_like import registry
from big_vision_like.pp import builder
from big_vision_like.pp.builder import PPError, get_preprocess_fn
from tests.helpers import assert_pp_error


def seed(a, b=0):
  return tf.constant([a, b], tf.int64)


def run(pp, data):
  out = get_preprocess_fn(pp)(data)
  return {k: v.numpy() for k, v in out.items()}


def img(h, w, c=1, dtype=np.uint8):
  return np.arange(h * w * c, dtype=dtype).reshape(h, w, c)


# ---------------------------------------------------------------- parsing


def test_parse_literals_and_top_level_split():
  got = builder.parse(
      "decode|resize(32)|value_range(-1, 1)|"
      "onehot(10, key='label', key_result='labels')|"
      "keep('a|b', \"c)\")|resize((3, 4), method='nearest')|x(d={'k': [1]})")
  assert got == [
      ("decode", (), {}),
      ("resize", (32,), {}),
      ("value_range", (-1, 1), {}),
      ("onehot", (10,), {"key": "label", "key_result": "labels"}),
      ("keep", ("a|b", "c)"), {}),
      ("resize", ((3, 4),), {"method": "nearest"}),
      ("x", (), {"d": {"k": [1]}}),
  ]
  assert builder.parse("  ") == []
  assert builder.parse(" decode | flip_lr ") == [("decode", (), {}),
                                                 ("flip_lr", (), {})]


@pytest.mark.parametrize("pp, fragments", [
    ("decode|resize(32", ["Unclosed", "op 1", "'resize(32'"]),
    ("decode|resize(32))", ["Unbalanced ')'", "op 1", "'resize(32))'"]),
    ("resize([32)]", ["Unbalanced ')'", "op 0"]),
    ("keep('image)|flip_lr", ["Unclosed quote", "op 0"]),
    ("decode||flip_lr", ["Empty pp op 1"]),
    ("decode|", ["Empty pp op 1"]),
    ("decode|resize(size)", ["op 1", "'resize(size)'", "'size'",
                             "not a Python literal"]),
    ("resize(__import__('os'))", ["op 0", "not a Python literal"]),
    ("decode|resize(1 +)", ["op 1", "not valid syntax"]),
    ("a.b(1)", ["op 0", "'a.b(1)'", "name(literal args)"]),
    ("resize(*[1])", ["op 0", "*args"]),
    ("resize(**{'size': 1})", ["op 0", "**kwargs"]),
])
def test_parse_errors_name_token_and_index(pp, fragments):
  assert_pp_error(lambda: builder.parse(pp), fragments)


def test_non_string_pp_fails():
  with pytest.raises(PPError, match="must be a str"):
    builder.parse(["decode"])


def test_unknown_op_lists_known_ops_and_token():
  with pytest.raises(registry.UnknownNameError) as e:
    get_preprocess_fn("decode|resiz(32)|flip_lr")
  msg = str(e.value)
  assert "Unknown pp op 'resiz'" in msg
  assert "Did you mean 'resize'?" in msg
  assert "central_crop" in msg and "onehot" in msg and "value_range" in msg
  assert "pp op 1 'resiz(32)'" in msg


@pytest.mark.parametrize("pp, fragments", [
    ("decode|resize(32, bogus=1)", ["pp op 1", "'resize(32, bogus=1)'",
                                    "'resize'", "bogus"]),
    ("resize()", ["pp op 0", "'resize()'", "size"]),
    ("resize(-3)", ["pp op 0", "size must be a positive int"]),
    ("resize(8, method='cubicle')", ["pp op 0", "unknown resize method"]),
    ("onehot(0)", ["pp op 0", "depth must be a positive int"]),
    ("onehot(4, smoothing=0.1, on=2.0)", ["pp op 0", "smoothing or on/off"]),
    ("inception_crop(8, area_min=50, area_max=10)", ["area_min <= area_max"]),
    ("random_crop(8, pad=-1)", ["pad must be an int >= 0"]),
    ("decode(channels=2)", ["channels must be None, 1, 3 or 4"]),
    ("value_range(0, 1, in_min=3, in_max=3)", ["in_min and in_max"]),
])
def test_bad_arguments_name_op_and_token(pp, fragments):
  assert_pp_error(lambda: get_preprocess_fn(pp), fragments)


def test_every_op_is_registered_with_a_docstring():
  names = registry.PP_OPS.names()
  for name in ["keep", "drop", "rename", "copy", "onehot", "decode", "resize",
               "resize_small", "central_crop", "random_crop", "inception_crop",
               "decode_jpeg_and_inception_crop", "flip_lr", "value_range",
               "grayscale_to_rgb"]:
    assert name in names
  for name in names:
    assert registry.PP_OPS.get(name).__doc__, name


# ---------------------------------------------------------- general ops


def test_keep_drop_rename_copy():
  data = {"a": tf.constant(1), "b": tf.constant(2), "c": tf.constant(3)}
  assert run("keep('a', 'c')", data) == {"a": 1, "c": 3}
  assert run("drop('a')", data) == {"b": 2, "c": 3}
  assert run("rename(x='a', y='b')", data) == {"x": 1, "y": 2, "c": 3}
  assert run("rename(b='a', a='b')", data) == {"a": 2, "b": 1, "c": 3}
  assert run("copy('a', 'z')", data) == {"a": 1, "b": 2, "c": 3, "z": 1}
  assert run("copy('a', 'b')", data) == {"a": 1, "b": 1, "c": 3}


@pytest.mark.parametrize("pp, fragments", [
    ("keep('a', 'nope')", ["pp op 0", "keep", "['nope']", "['a', 'b']"]),
    ("drop('nope')", ["drop", "['nope']"]),
    ("copy('nope', 'x')", ["copy", "['nope']"]),
    ("rename(x='nope')", ["rename", "['nope']"]),
    ("rename(b='a')", ["rename", "['b'] already exist"]),
    ("onehot(3, key='nope')", ["onehot", "['nope']"]),
])
def test_general_op_errors_name_the_key(pp, fragments):
  data = {"a": tf.constant(1), "b": tf.constant(2)}
  assert_pp_error(lambda: get_preprocess_fn(pp)(data), fragments)


def test_onehot_values():
  label = {"label": tf.constant(2, tf.int64)}
  np.testing.assert_array_equal(run("onehot(4)", label)["label"],
                                [0, 0, 1, 0])
  out = run("onehot(4, key_result='labels')", label)
  assert out["label"] == 2 and out["labels"].dtype == np.float32
  np.testing.assert_array_equal(run("onehot(4, on=5.0, off=-1.0)", label)
                                ["label"], [-1, -1, 5, -1])
  # smoothing 0.2, depth 4: on = 1 - 0.2 + 0.05 = 0.85, off = 0.05.
  np.testing.assert_allclose(run("onehot(4, smoothing=0.2)", label)["label"],
                             [0.05, 0.05, 0.85, 0.05], rtol=1e-6)


def test_onehot_multi_hot_and_sequences():
  padded = {"label": tf.constant([3, 1, -1, -1])}
  np.testing.assert_array_equal(run("onehot(5)", padded)["label"],
                                [0, 1, 0, 1, 0])
  np.testing.assert_allclose(run("onehot(5, smoothing=0.5)", padded)["label"],
                             [0.1, 0.6, 0.1, 0.6, 0.1], rtol=1e-6)
  repeated = {"label": tf.constant([2, 2])}
  np.testing.assert_array_equal(run("onehot(3)", repeated)["label"], [0, 0, 1])
  empty = {"label": tf.constant([], tf.int64)}
  np.testing.assert_array_equal(run("onehot(3)", empty)["label"], [0, 0, 0])
  ragged = {"label": tf.ragged.constant([[0], [2, 1]])}
  np.testing.assert_array_equal(run("onehot(4)", ragged)["label"],
                                [1, 1, 1, 0])
  per_entry = {"label": tf.constant([1, 0])}
  np.testing.assert_array_equal(run("onehot(3, multi=False)", per_entry)
                                ["label"], [[0, 1, 0], [1, 0, 0]])


def test_onehot_rejects_out_of_range_and_float_labels():
  with pytest.raises(tf.errors.InvalidArgumentError, match="onehot"):
    run("onehot(3)", {"label": tf.constant(3)})
  with pytest.raises(tf.errors.InvalidArgumentError, match="onehot"):
    run("onehot(3)", {"label": tf.constant(-1)})
  with pytest.raises(tf.errors.InvalidArgumentError, match="onehot"):
    run("onehot(3)", {"label": tf.constant([0, 7])})
  with pytest.raises(PPError, match="integer labels"):
    run("onehot(3)", {"label": tf.constant(1.0)})


def test_onehot_out_of_range_fails_inside_tf_data():
  ds = tf.data.Dataset.from_tensor_slices({"label": [1, 5]}).map(
      get_preprocess_fn("onehot(3)"))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"label is outside \[0, 3\)"):
    list(ds)


# ------------------------------------------------------------ image ops


def test_decode_png_jpeg_and_already_decoded():
  gray = img(3, 4)
  png = tf.io.encode_png(gray)
  np.testing.assert_array_equal(run("decode(1)", {"image": png})["image"],
                                gray)
  rgb = run("decode", {"image": png})["image"]
  assert rgb.shape == (3, 4, 3)
  np.testing.assert_array_equal(rgb, np.repeat(gray, 3, axis=2))
  # An already-decoded image gets the same treatment as its bytes.
  decoded = run("decode", {"image": tf.constant(gray)})["image"]
  np.testing.assert_array_equal(decoded, rgb)
  np.testing.assert_array_equal(
      run("decode(None)", {"image": tf.constant(gray)})["image"], gray)
  color = np.full((2, 2, 3), 200, np.uint8)
  jpeg = tf.io.encode_jpeg(color, quality=100)
  out = run("decode", {"image": jpeg})["image"]
  assert out.shape == (2, 2, 3) and np.abs(out.astype(int) - 200).max() <= 2


def test_decode_rejects_float_images():
  with pytest.raises(PPError, match="decode: 'image' must be encoded bytes"):
    run("decode", {"image": tf.zeros([2, 2, 3])})


def test_image_ops_need_decoded_hwc_images():
  with pytest.raises(PPError, match="put `decode` before resize"):
    run("resize(4)", {"image": tf.constant(b"\x89PNG")})
  with pytest.raises(PPError, match=r"rank 3\), got shape \(2, 2\)"):
    run("flip_lr", {"image": tf.zeros([2, 2], tf.uint8), "_seed": seed(1)})
  with pytest.raises(PPError, match="no key 'img'"):
    run("resize(4, key='img')", {"image": tf.zeros([2, 2, 1])})


def test_resize_hand_computed():
  row = tf.constant([[[0], [100]]], tf.uint8)  # 1x2
  # Half-pixel centres: sample x = -0.25, 0.25, 0.75, 1.25 -> 0, 25, 75, 100.
  out = run("resize((1, 4))", {"image": row})["image"]
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out[0, :, 0], [0, 25, 75, 100])
  square = np.array([[0, 100], [200, 255]], np.uint8)[..., None]
  out = run("resize(4, method='nearest')", {"image": square})["image"]
  np.testing.assert_array_equal(out[..., 0], np.kron(square[..., 0],
                                                     np.ones((2, 2))))
  out = run("resize((3, 5))", {"image": tf.zeros([7, 9, 3], tf.float32)})
  assert out["image"].shape == (3, 5, 3)
  assert out["image"].dtype == np.float32


@pytest.mark.parametrize("shape, size, expected", [
    ((8, 16), 4, (4, 8)), ((16, 8), 4, (8, 4)), ((10, 15), 4, (4, 6)),
    ((4, 4), 8, (8, 8)),
])
def test_resize_small(shape, size, expected):
  out = run(f"resize_small({size})", {"image": tf.zeros(shape + (3,),
                                                         tf.uint8)})
  assert out["image"].shape == expected + (3,)


def test_central_crop_position():
  image = img(4, 5)
  out = run("central_crop(2)", {"image": image})["image"]
  # top = (4 - 2) // 2 = 1, left = (5 - 2) // 2 = 1.
  np.testing.assert_array_equal(out, image[1:3, 1:3])
  out = run("central_crop((1, 3))", {"image": image})["image"]
  np.testing.assert_array_equal(out, image[1:2, 1:4])
  with pytest.raises(tf.errors.InvalidArgumentError, match="central_crop"):
    run("central_crop(6)", {"image": image})


def test_random_crop_with_padding_covers_every_window():
  image = img(2, 2) + 1  # Values 1..4; padding is 0.
  padded = np.pad(image, [(1, 1), (1, 1), (0, 0)])
  seen = set()
  for s in range(200):
    out = run("random_crop(2, pad=1)", {"image": image, "_seed": seed(s)})
    crop = out["image"]
    assert crop.shape == (2, 2, 1)
    matches = [(t, l) for t in range(3) for l in range(3)
               if np.array_equal(crop, padded[t:t + 2, l:l + 2])]
    assert matches, crop
    seen.add(matches[0])
  assert seen == {(t, l) for t in range(3) for l in range(3)}


def test_random_crop_too_large_fails():
  with pytest.raises(tf.errors.InvalidArgumentError, match="random_crop"):
    run("random_crop(5)", {"image": img(4, 4), "_seed": seed(0)})


def test_flip_lr_flips_about_half_the_time():
  image = img(2, 3)
  flips = 0
  for s in range(100):
    out = run("flip_lr", {"image": image, "_seed": seed(s)})["image"]
    if np.array_equal(out, image[:, ::-1]):
      flips += 1
    else:
      np.testing.assert_array_equal(out, image)
  assert 30 < flips < 70


def test_value_range_numbers():
  x = tf.constant([[[0], [51], [255]]], tf.uint8)
  np.testing.assert_allclose(run("value_range(-1, 1)", {"image": x})
                             ["image"][0, :, 0], [-1, -0.6, 1], atol=1e-6)
  y = tf.constant([[[-2.0], [0.0], [2.0]]])
  out = run("value_range(0, 1, in_min=-1, in_max=1)", {"image": y})["image"]
  np.testing.assert_allclose(out[0, :, 0], [-0.5, 0.5, 1.5])
  out = run("value_range(0, 1, -1, 1, True)", {"image": y})["image"]
  np.testing.assert_allclose(out[0, :, 0], [0, 0.5, 1])


def test_grayscale_to_rgb():
  out = run("grayscale_to_rgb", {"image": img(2, 2)})["image"]
  np.testing.assert_array_equal(out, np.repeat(img(2, 2), 3, axis=2))
  rgb = img(2, 2, 3)
  np.testing.assert_array_equal(
      run("grayscale_to_rgb", {"image": rgb})["image"], rgb)


def test_inception_crop_area_within_bounds():
  image = tf.zeros([60, 80, 3], tf.uint8)
  for area_min, area_max in [(5, 100), (25, 50)]:
    fn = get_preprocess_fn(f"inception_crop(None, {area_min}, {area_max})")
    areas = []
    for s in range(150):
      crop = fn({"image": image, "_seed": seed(s)})["image"]
      areas.append(crop.shape[0] * crop.shape[1] / (60 * 80))
      assert 3 / 4 - 0.05 <= crop.shape[1] / crop.shape[0] <= 4 / 3 + 0.05
    assert min(areas) >= area_min / 100 and max(areas) <= area_max / 100
    assert max(areas) - min(areas) > (area_max - area_min) / 200  # Varies.
  out = run("inception_crop(8)", {"image": image, "_seed": seed(0)})
  assert out["image"].shape == (8, 8, 3)


def test_decode_jpeg_and_inception_crop_matches_unfused():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
  # Without chroma subsampling the cropped decode is bit-identical.
  jpeg = tf.io.encode_jpeg(image, quality=95, chroma_downsampling=False)
  fused = builder.registry.PP_OPS.get("decode_jpeg_and_inception_crop")()
  unfused = builder.registry.PP_OPS.get("inception_crop")()
  decoded = tf.io.decode_jpeg(jpeg, channels=3)
  for s in range(10):
    a = fused({"image": jpeg, "_seed": seed(s)})["image"]
    b = unfused({"image": decoded, "_seed": seed(s)})["image"]
    np.testing.assert_array_equal(a, b)
  out = run("decode_jpeg_and_inception_crop(16)",
            {"image": jpeg, "_seed": seed(1)})["image"]
  assert out.shape == (16, 16, 3) and out.dtype == np.uint8
  with pytest.raises(PPError, match="must hold JPEG bytes"):
    run("decode_jpeg_and_inception_crop(8)",
        {"image": decoded, "_seed": seed(1)})


# ----------------------------------------------------------- randomness


RANDOM_PP = ("random_crop(6, pad=2)|flip_lr|inception_crop(5)|"
             "value_range(0, 1)")


def test_random_ops_are_functions_of_the_seed():
  image = {"image": img(8, 8, 3)}
  fn = get_preprocess_fn(RANDOM_PP)
  a = fn({**image, "_seed": seed(3, 4)})
  b = fn({**image, "_seed": seed(3, 4)})
  assert set(a) == {"image"}  # `_seed` is consumed.
  np.testing.assert_array_equal(a["image"], b["image"])
  different = sum(
      not np.array_equal(a["image"], fn({**image, "_seed": seed(3, s)})
                         ["image"]) for s in range(5, 15))
  assert different >= 9


def test_same_op_twice_gets_different_seeds():
  # Ops 1 and 2 are identical but at different positions in the string.
  fn = get_preprocess_fn("copy('image', 'b')|random_crop(2)|"
                         "random_crop(2, key='b')")
  image = img(6, 6)
  differ = sum(
      not np.array_equal(*(lambda o: (o["image"], o["b"]))(
          fn({"image": image, "_seed": seed(s)}))) for s in range(20))
  assert differ >= 15


def test_random_op_without_seed_fails_clearly():
  with pytest.raises(PPError) as e:
    get_preprocess_fn("decode|flip_lr")({"image": img(4, 4)})
  assert "pp op 1 'flip_lr'" in str(e.value)
  assert "_seed" in str(e.value)


def test_random_pp_inside_tf_data_is_deterministic():
  fn = get_preprocess_fn(RANDOM_PP)
  ds = tf.data.Dataset.range(6).map(
      lambda i: fn({"image": tf.fill([8, 8, 3], tf.cast(i, tf.uint8)),
                    "_seed": tf.stack([i, i])}),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  first = [x["image"] for x in ds.as_numpy_iterator()]
  second = [x["image"] for x in ds.as_numpy_iterator()]
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)
  assert first[0].shape == (5, 5, 3)


def test_split_deterministic_prefix_composes_to_the_full_pipeline():
  pp = "decode(None)|resize(8)|random_crop(6)|flip_lr|value_range(-1, 1)"
  prefix, rest, rest_is_random = builder.split_deterministic_prefix(pp)
  assert rest_is_random
  data = {"image": tf.io.encode_png(img(10, 10)), "_seed": seed(5, 6)}
  staged = rest(prefix({"image": data["image"]}) | {"_seed": data["_seed"]})
  full = get_preprocess_fn(pp)(data)
  np.testing.assert_array_equal(staged["image"], full["image"])
  assert prefix({"image": data["image"]})["image"].shape == (8, 8, 1)
  _, _, rest_is_random = builder.split_deterministic_prefix("decode|resize(4)")
  assert not rest_is_random
