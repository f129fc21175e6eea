"""Losses against values worked out by hand with numpy."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from big_vision_like import losses
from big_vision_like.registry import LOSSES


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_registered_by_name():
  assert LOSSES.get("softmax_xent") is losses.softmax_xent
  assert LOSSES.get("sigmoid_xent") is losses.sigmoid_xent


def test_softmax_xent_one_hot_by_hand():
  # Uniform logits over 4 classes: loss = log(4) whatever the class.
  # logits [0, ln 3]: p = [1/4, 3/4]; class 1 -> -ln(3/4).
  logits = jnp.array([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e9, -1e9]])
  labels = jnp.array([[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
  out = losses.softmax_xent(logits, labels)
  assert out.shape == (2,) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, [math.log(4.0), -math.log(0.75)], rtol=1e-6)


def test_softmax_xent_label_smoothed_and_multi_hot():
  logits = np.array([[2.0, 1.0, 0.0], [0.5, -0.5, 3.0]], np.float32)
  # Label smoothing 0.1 over 3 classes: 0.9 * onehot + 0.1 / 3.
  smoothed = 0.9 * np.eye(3, dtype=np.float32)[[0, 2]] + 0.1 / 3
  expected = -(smoothed * _np_log_softmax(logits)).sum(-1)
  np.testing.assert_allclose(losses.softmax_xent(logits, smoothed), expected,
                             rtol=1e-6)
  # Multi-hot targets are taken as given (both positives count, no renorm).
  multi = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
  lsm = _np_log_softmax(logits)
  np.testing.assert_allclose(losses.softmax_xent(logits, multi),
                             [-(lsm[0, 0] + lsm[0, 1]), -lsm[1, 2]], rtol=1e-6)


def test_softmax_xent_large_logits_and_bf16_are_stable():
  # exp(1000) overflows; log_softmax must not. Correct class wins by 10 -> loss
  # log(1 + e^-10); wrong class loses by 10 -> 10 + log(1 + e^-10).
  logits = jnp.array([[1000.0, 990.0], [1000.0, 990.0]])
  labels = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  soft = math.log1p(math.exp(-10.0))
  np.testing.assert_allclose(losses.softmax_xent(logits, labels),
                             [soft, 10.0 + soft], rtol=1e-5, atol=1e-7)
  out = losses.softmax_xent(logits.astype(jnp.bfloat16), labels)
  assert out.dtype == jnp.float32 and np.all(np.isfinite(out))


def test_sigmoid_xent_by_hand():
  # x=0: each class costs ln 2. x=ln 3: sigmoid = 3/4.
  logits = jnp.array([[0.0, 0.0, 0.0], [math.log(3.0), math.log(3.0), 0.0]])
  labels = jnp.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.3]])
  expected = [3 * math.log(2.0),
              -math.log(0.75) - math.log(0.25) + math.log(2.0)]
  out = losses.sigmoid_xent(logits, labels)
  assert out.shape == (2,) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_sigmoid_xent_large_logits_stable():
  # Confidently right: loss ~ e^-500 ~ 0. Confidently wrong: loss = |x|.
  logits = jnp.array([[500.0, -500.0], [-500.0, 500.0]])
  labels = jnp.array([[1.0, 0.0], [1.0, 0.0]])
  np.testing.assert_allclose(losses.sigmoid_xent(logits, labels), [0.0, 1000.0],
                             atol=1e-4)


@pytest.mark.parametrize("fn", [losses.softmax_xent, losses.sigmoid_xent])
def test_shape_mismatch_names_both_shapes(fn):
  with pytest.raises(ValueError, match=r"\(4, 10\).*\(4, 9\)"):
    fn(jnp.zeros((4, 10)), jnp.zeros((4, 9)))
  with pytest.raises(ValueError, match=r"\(4,\).*class indices"):
    fn(jnp.zeros((4, 10)), jnp.zeros((4,), jnp.int32))
