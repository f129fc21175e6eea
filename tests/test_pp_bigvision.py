"""Our pp ops that share a name with big_vision's give big_vision's tensors.

tests/fixtures/pp_bigvision/golden.npz holds the outputs of big_vision's own
pp ops (see make_golden.py there for the commit and how to remake it) for a
list of pp strings covering every deterministic op we share, with default
and explicit arguments. Every case must match EXACTLY (same keys, dtypes,
shapes and values, floats bit for bit): a pp string copied from a big_vision
config then preprocesses as it did for the published numbers. Random ops are
checked through cases whose result cannot depend on the draw, and through
their signatures (argument names, order and defaults), which the golden file
records from big_vision's code.

The hand-computed cases below pin the rounding rules on tiny images, so a
failure says what changed, not just that something did.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from big_vision_like import registry
from big_vision_like.pp.builder import get_preprocess_fn

GOLDEN = (pathlib.Path(__file__).resolve().parent / "fixtures" /
          "pp_bigvision" / "golden.npz")


@functools.lru_cache(maxsize=None)
def golden() -> tuple[dict, dict[str, np.ndarray]]:
  with np.load(GOLDEN) as npz:
    arrays = {k: npz[k] for k in npz.files}
  return json.loads(str(arrays.pop("meta"))), arrays


def _case_ids() -> list[str]:
  meta, _ = golden()
  return [f"{i}:{c['pp']}:{'+'.join(c['inputs'].values())}"
          for i, c in enumerate(meta["cases"])]


def run_in_tf_data(pp: str, data: dict) -> dict[str, np.ndarray]:
  """Our pp function on one example inside tf.data, as training runs it."""
  fn = get_preprocess_fn(pp)
  ds = tf.data.Dataset.from_tensors(data).map(
      tf.autograph.experimental.do_not_convert(fn))
  (out,) = list(ds.as_numpy_iterator())
  return out


def run(pp: str, data: dict) -> dict[str, np.ndarray]:
  """Our pp function on one example, eagerly."""
  out = get_preprocess_fn(pp)({k: tf.constant(v) for k, v in data.items()})
  return {k: v.numpy() for k, v in out.items()}


def test_golden_file_is_small_and_from_the_recorded_commit():
  meta, arrays = golden()
  assert GOLDEN.stat().st_size < 1_000_000
  assert meta["big_vision_commit"] == "0127fb6b337ee2a27bf4e54dea79cff176527356"
  assert len(meta["cases"]) >= 100
  assert "decode|resize_small(256)|central_crop(224)|value_range(-1, 1)" in [
      c["pp"] for c in meta["cases"]]
  assert arrays["in/jpeg_big"].size > 10_000  # A real ~300x400 JPEG.


@pytest.mark.parametrize("index", range(len(_case_ids())), ids=_case_ids())
def test_same_tensors_as_big_vision(index):
  meta, arrays = golden()
  case = meta["cases"][index]
  data = {key: arrays[f"in/{name}"].tobytes()
          if name in meta["encoded_inputs"] else arrays[f"in/{name}"]
          for key, name in case["inputs"].items()}
  if any(op in case["pp"] for op in ("inception_crop", "random_crop")):
    # These cases cannot depend on the draw (the crop is the whole image).
    data["_seed"] = np.array([3, 4], np.int64)
  got = run_in_tf_data(case["pp"], data)
  assert sorted(got) == case["keys"]
  for key in case["keys"]:
    want = arrays[f"out/{index}/{key}"]
    value = np.asarray(got[key])
    assert value.dtype == want.dtype, key
    # Exact for every case, floats included: our ops compute the same float32
    # operations in the same order as big_vision's.
    np.testing.assert_array_equal(value, want, err_msg=f"{case['pp']}: {key}")


# Ops that we register under big_vision's name (random ones included).
SHARED = ("decode", "resize", "resize_small", "central_crop", "random_crop",
          "inception_crop", "decode_jpeg_and_inception_crop", "flip_lr",
          "value_range", "vgg_value_range", "onehot", "keep", "drop", "copy",
          "pad_to_shape")
# big_vision's InKeyOutKey ops take key/inkey/outkey; ours do too, except
# this fused op, whose key the input pipeline reads to keep JPEG bytes.
NO_INKEY_OUTKEY = {"decode_jpeg_and_inception_crop"}


@pytest.mark.parametrize("name", SHARED)
def test_same_arguments_and_defaults_as_big_vision(name):
  meta, _ = golden()
  theirs = meta["signatures"][name]
  ours = list(inspect.signature(registry.PP_OPS.get(name)).parameters.values())
  assert set(meta["signatures"]) == set(SHARED)
  # Positional arguments bind to the same parameters, defaults agree.
  for (their_name, their_default), param in zip(theirs["params"], ours):
    if their_name.startswith("*"):
      assert param.kind == param.VAR_POSITIONAL, (name, param)
      continue
    assert param.name == their_name, (name, param.name, their_name)
    if their_default is None:
      assert param.default is param.empty, (name, param)
    else:
      assert param.default == ast.literal_eval(their_default), (name, param)
  if theirs["inkey_outkey"] and name not in NO_INKEY_OUTKEY:
    defaults = {p.name: p.default for p in ours}
    assert defaults["key"] == theirs["inkey_outkey"][0] == "image"
    assert defaults["inkey"] is None and defaults["outkey"] is None


# ----------------------------------------------- hand-computed rounding rules


def test_resize_truncates_like_big_vision_and_can_round():
  # Half-pixel centres sample 1x2 [0, 3] at x = -0.25, 0.25, 0.75, 1.25:
  # 0, 0.75, 2.25, 3. big_vision casts back to uint8 by truncation.
  row = np.array([[[0], [3]]], np.uint8)
  out = run("resize((1, 4))", {"image": row})["image"]
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out[0, :, 0], [0, 0, 2, 3])
  out = run("resize((1, 4), rounding='round')", {"image": row})["image"]
  np.testing.assert_array_equal(out[0, :, 0], [0, 1, 2, 3])
  # Float images keep their fractions.
  out = run("resize((1, 4))", {"image": row.astype(np.float32)})["image"]
  np.testing.assert_array_equal(out[0, :, 0], [0, 0.75, 2.25, 3])


def test_resize_clips_before_the_cast():
  # Bicubic overshoots at a step: the float result leaves [0, 255], the uint8
  # result is the clipped, truncated float result (no wrap-around).
  step = np.array([[[0], [0], [255], [255]]], np.uint8)
  floats = run("resize((1, 9), 'bicubic')",
               {"image": step.astype(np.float32)})["image"]
  assert floats.min() < 0 and floats.max() > 255
  out = run("resize((1, 9), 'bicubic')", {"image": step})["image"]
  np.testing.assert_array_equal(
      out, np.clip(floats, 0, 255).astype(np.uint8))


def test_resize_small_is_area_by_default_and_truncates():
  # 2x2 blocks with means 0.75, 1.5 and 2.25: area averages each block.
  image = np.array([[0, 1, 1, 2, 2, 3],
                    [1, 1, 1, 2, 2, 2]], np.uint8)[..., None]
  out = run("resize_small(1)", {"image": image})["image"]
  np.testing.assert_array_equal(out[..., 0], [[0, 1, 2]])
  out = run("resize_small(1, rounding='round')", {"image": image})["image"]
  np.testing.assert_array_equal(out[..., 0], [[1, 2, 2]])  # Halves to even.
  # Bilinear samples the block centres as well when halving exactly.
  out = run("resize_small(1, 'bilinear')", {"image": image})["image"]
  np.testing.assert_array_equal(out[..., 0], [[0, 1, 2]])
  # Shrinking 4 -> 3 pixels: area averages each output pixel's cover of 4/3
  # input pixels ((0 + 255 / 3) * 3 / 4 = 63.75, 127.5, 191.25); bilinear
  # samples at x = 0.17, 1.5, 2.83 (42.5, 127.5, 212.5). Our old default.
  wide = np.array([[0, 255, 0, 255]], np.uint8)[..., None]
  area = run("resize((1, 3), 'area')", {"image": wide})["image"]
  np.testing.assert_array_equal(area[0, :, 0], [63, 127, 191])
  bilinear = run("resize((1, 3))", {"image": wide})["image"]
  np.testing.assert_array_equal(bilinear[0, :, 0], [42, 127, 212])


def test_resize_small_sizes():
  # Longer side: round(side * smaller_size / shorter), float32, halves to
  # even as tf.round: 3 * 3 / 2 = 4.5 -> 4 (Python's round-half-up: 5).
  image = np.zeros([2, 3, 1], np.uint8)
  assert run("resize_small(3)", {"image": image})["image"].shape == (3, 4, 1)
  assert run("resize_small(24)", {"image": np.zeros([37, 53, 3], np.uint8)}
             )["image"].shape == (24, 34, 3)  # 53 * 24 / 37 = 34.38
  assert run("resize_small(24)", {"image": np.zeros([53, 37, 3], np.uint8)}
             )["image"].shape == (34, 24, 3)


def test_central_crop_without_size_takes_the_largest_square():
  image = np.arange(4 * 7, dtype=np.uint8).reshape(4, 7, 1)
  out = run("central_crop", {"image": image})["image"]
  np.testing.assert_array_equal(out, image[:, 1:5])  # (7 - 4) // 2 = 1


def test_value_range_uses_big_vision_arithmetic():
  x = np.array([[[0], [51], [255]]], np.uint8)
  out = run("value_range", {"image": x})["image"]  # Defaults: -1, 1.
  np.testing.assert_array_equal(out[0, :, 0],
                                np.float32([-1, -0.6, 1]))
  # vmin + (x - in_min) / (in_max - in_min) * (vmax - vmin), in float32.
  y = np.array([[[0.1], [7.3], [254.7]]], np.float32)
  f = np.float32
  want = f(-0.5) + (y - f(0.1)) / (f(254.7) - f(0.1)) * f(0.3 - -0.5)
  out = run("value_range(-0.5, 0.3, 0.1, 254.7)", {"image": y})["image"]
  np.testing.assert_array_equal(out, want)
  out = run("value_range(0, 1, in_min=[0, 0, 100], in_max=[255, 51, 200])",
            {"image": np.array([[[51, 51, 150]]], np.uint8)})["image"]
  np.testing.assert_array_equal(out[0, 0], np.float32([0.2, 1, 0.5]))


def test_vgg_value_range_is_on_the_255_scale():
  x = np.array([[[0, 128, 255]]], np.uint8)
  out = run("vgg_value_range", {"image": x})["image"]
  mean = np.float32([0.485 * 255, 0.456 * 255, 0.406 * 255])
  std = np.float32([0.229 * 255, 0.224 * 255, 0.225 * 255])
  np.testing.assert_array_equal(out[0, 0], (np.float32([0, 128, 255]) - mean)
                                / std)


def test_onehot_on_off_values_are_exact():
  label = np.array(2, np.int64)
  out = run("onehot(3, key='label', on=0.9, off=0.1)", {"label": label})
  np.testing.assert_array_equal(out["label"], np.float32([0.1, 0.1, 0.9]))
  # Multi-hot: hot * (on - off) + off, as big_vision computes it.
  out = run("onehot(3, on=0.9, off=0.1)",
            {"labels": np.array([0, 2, 2], np.int64)})["labels"]
  f = np.float32
  np.testing.assert_array_equal(out, [f(1) * f(0.9 - 0.1) + f(0.1), f(0.1),
                                      f(1) * f(0.9 - 0.1) + f(0.1)])


def test_onehot_key_defaults_to_labels_and_falls_back_to_label():
  out = run("onehot(3)", {"labels": np.array(1), "label": np.array(0)})
  np.testing.assert_array_equal(out["labels"], [0, 1, 0])
  np.testing.assert_array_equal(out["label"], 0)  # Untouched.
  # Ours only: no "labels" -> "label" in place (as our pp strings had it).
  out = run("onehot(3)", {"label": np.array(2)})
  np.testing.assert_array_equal(out["label"], [0, 0, 1])


def test_pad_to_shape_where():
  x = np.array([1, 2], np.int32)
  for where, want in [("after", [1, 2, 0, 0, 0]), ("before", [0, 0, 0, 1, 2]),
                      ("both", [0, 1, 2, 0, 0])]:
    out = run(f"pad_to_shape((5,), key='x', where={where!r})", {"x": x})
    np.testing.assert_array_equal(out["x"], want)


def test_inkey_outkey_leave_the_input_in_place():
  image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
  out = run("resize(2, inkey='image', outkey='small')|"
            "value_range(outkey='float')", {"image": image})
  assert out["small"].shape == (2, 2, 1) and out["image"].shape == (4, 4, 1)
  assert out["float"].dtype == np.float32 and out["float"].shape == (4, 4, 1)
  out = run("central_crop(2, key='other')", {"other": image, "image": image})
  assert out["other"].shape == (2, 2, 1) and out["image"].shape == (4, 4, 1)
