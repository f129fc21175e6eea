"""Text transformer pooling and the two-tower model's outputs and parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision_like import registry

TEXT = dict(vocab_size=50, width=16, depth=1, mlp_dim=32, num_heads=2)


def text_model(**kw):
  return registry.MODELS.get("text_transformer")(**{**TEXT, **kw})


def tokens():
  # Right-padded with 0; the last real token (EOS-like) is 1.
  return jnp.array([[5, 6, 7, 1, 0, 0], [9, 1, 0, 0, 0, 0], [4, 4, 4, 4, 4, 1]], jnp.int32)


@pytest.mark.parametrize("pool", ["last", "first", "gap", "max", "map"])
def test_text_pooling_reads_the_right_positions(pool):
  model = text_model(pool_type=pool)
  params = model.init(jax.random.key(0), tokens())["params"]
  feats, aux = model.apply({"params": params}, tokens())
  assert feats.shape == (3, 16)  # no head: pooled features
  enc = aux["encoded"]
  real = np.asarray(tokens() != 0)
  want = {
      "last": enc[jnp.arange(3), jnp.array([3, 1, 5])],
      "first": enc[:, 0],
      "gap": np.stack([np.asarray(enc[i])[real[i]].mean(0) for i in range(3)]),
      "max": np.stack([np.asarray(enc[i])[real[i]].max(0) for i in range(3)]),
  }.get(pool)
  if want is not None:
    np.testing.assert_allclose(feats, want, rtol=1e-5, atol=1e-6)


def test_text_padding_does_not_change_gap_and_last():
  model = text_model(pool_type="gap")
  params = model.init(jax.random.key(0), tokens())["params"]
  short = jnp.array([[9, 1, 0, 0, 0, 0]], jnp.int32)
  # Same real tokens, different (random) padding ids would change "gap" if
  # padding counted; with pad id 0 at the end only attention differs, so
  # compare against a hand mean instead.
  feats, aux = model.apply({"params": params}, short)
  np.testing.assert_allclose(feats[0], aux["encoded"][0, :2].mean(0), rtol=1e-5)


def test_text_errors():
  with pytest.raises(ValueError, match="pool_type='avg' is unknown"):
    text_model(pool_type="avg")
  with pytest.raises(ValueError, match="model.width is not set"):
    registry.MODELS.get("text_transformer")(vocab_size=10)
  model = text_model()
  with pytest.raises(ValueError, match="tokens must be int"):
    model.init(jax.random.key(0), jnp.zeros((2, 4)))


def two_tower(**kw):
  return registry.MODELS.get("two_tower")(
      image=dict(variant="Ti/7", width=16, depth=1, mlp_dim=32, num_heads=2),
      text=TEXT, embed_dim=8, **kw)


def test_two_tower_embeddings_temperature_and_bias():
  model = two_tower(temperature_init=10.0, bias_init=-10.0)
  images = jax.random.normal(jax.random.key(1), (3, 14, 14, 1))
  params = model.init(jax.random.key(0), images, tokens())["params"]
  assert sorted(params) == ["b", "img", "t", "txt"]
  zimg, ztxt, aux = model.apply({"params": params}, images, tokens())
  assert zimg.shape == ztxt.shape == (3, 8)
  np.testing.assert_allclose(jnp.linalg.norm(zimg, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(ztxt, axis=-1), 1.0, rtol=1e-5)
  assert float(aux["t"]) == pytest.approx(10.0) and float(aux["b"]) == -10.0
  # The projection is not zero-initialised (that would embed everything at 0).
  assert float(jnp.abs(params["img"]["head"]["kernel"]).sum()) > 0
  # Either tower alone.
  zi, zt, _ = model.apply({"params": params}, images, None)
  assert zt is None and np.allclose(zi, zimg)
  zi, zt, _ = model.apply({"params": params}, None, tokens())
  assert zi is None and np.allclose(zt, ztxt)


def test_two_tower_without_bias_and_with_a_resnet_image_tower():
  model = registry.MODELS.get("two_tower")(
      image_model="resnet", image=dict(depth=26, width=0.25, stem="small", gn_groups=16),
      text=TEXT, embed_dim=8, temperature_init=1 / 0.07)
  images = jnp.zeros((2, 16, 16, 3))
  params = model.init(jax.random.key(0), images, tokens()[:2])["params"]
  assert "b" not in params
  _, _, aux = model.apply({"params": params}, images, tokens()[:2])
  assert float(aux["b"]) == 0.0 and float(aux["t"]) == pytest.approx(1 / 0.07, rel=1e-5)


def test_two_tower_field_errors_name_the_tower():
  with pytest.raises(ValueError, match=r"model.image \(vit\): .*bogus"):
    registry.MODELS.get("two_tower")(image=dict(variant="Ti/7", bogus=1), text=TEXT)
  with pytest.raises(ValueError, match="temperature_init"):
    two_tower(temperature_init=0.0)
