"""Tests for the image models (ViT and BiT ResNet) registered in MODELS.

Models are tiny (mu-sized ViTs, half-width R26) so that the whole file runs in
well under a minute on a shared 2-core CPU; big-model parameter counts use
jax.eval_shape, which traces but never allocates or computes.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision_like import params as params_lib
from big_vision_like.models import common, resnet, vit
from big_vision_like.registry import MODELS


def _count_params(model, image_shape):
  shapes = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, jnp.zeros(image_shape)))
  assert list(shapes) == ["params"], "only the params collection is allowed"
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


def _init(model, images, seed=0):
  """The model's own initialisation (compiled: costs a few seconds)."""
  return jax.jit(model.init)({"params": jax.random.key(seed)}, images)["params"]


def _params(model, images, seed=0):
  """Random params with the model's exact tree, shapes and dtypes.

  Built from jax.eval_shape plus numpy, which is much cheaper on a small CPU
  than compiling each model's initialisers; non-zero everywhere (also in the
  head) so that every output depends on every param.
  """
  shapes = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, images))["params"]
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    noise = rng.normal(size=leaf.shape)
    if params_lib.path_to_str(path).endswith("scale"):
      value = 1.0 + 0.1 * noise
    elif leaf.ndim >= 2:
      value = noise / np.sqrt(np.prod(leaf.shape[:-1]))
    else:
      value = 0.1 * noise
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _apply(model, params, images, train=False, seed=None):
  rngs = {} if seed is None else {"dropout": jax.random.key(seed)}
  return model.apply({"params": params}, images, train=train, rngs=rngs)


def _images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape),
                     jnp.float32)


# A small custom ViT (as for Fashion-MNIST) used by most ViT tests.
TINY = dict(variant="mu/4", depth=2, num_classes=10)


def test_registry_names_both_models():
  assert MODELS.get("vit") is vit.ViT
  assert MODELS.get("resnet") is resnet.ResNet


# ----------------------------------------------------------------- ViT ----


def _vit_param_count(width, depth, mlp_dim, patch, tokens, classes, cls_token):
  """Hand count of a standard ViT (independent of the model code)."""
  embedding = patch * patch * 3 * width + width          # conv kernel + bias
  attention = 4 * (width * width + width)                # q, k, v, out
  mlp = width * mlp_dim + mlp_dim + mlp_dim * width + width
  block = 2 * (2 * width) + attention + mlp              # + two LayerNorms
  return (embedding + (width if cls_token else 0) + tokens * width
          + depth * block + 2 * width                    # encoder_norm
          + width * classes + classes)                   # head


def test_vit_b16_and_s16_param_counts():
  # The published ViT-B/16 and ViT-S/16 (class token, learned pos-emb over
  # 14*14+1 = 197 tokens, 1000-way head).
  assert _vit_param_count(768, 12, 3072, 16, 197, 1000, True) == 86_567_656
  assert _vit_param_count(384, 12, 1536, 16, 197, 1000, True) == 22_050_664
  b16 = vit.ViT(num_classes=1000, variant="B/16", pool_type="tok")
  s16 = vit.ViT(num_classes=1000, variant="S/16", pool_type="tok")
  assert _count_params(b16, (1, 224, 224, 3)) == 86_567_656
  assert _count_params(s16, (1, 224, 224, 3)) == 22_050_664
  # GAP pooling drops the class token and its position: 2 * 768 fewer.
  gap = vit.ViT(num_classes=1000, variant="B/16", pool_type="gap")
  assert _count_params(gap, (1, 224, 224, 3)) == 86_567_656 - 2 * 768
  # sincos2d position embeddings are not parameters: 197 * 768 fewer.
  sincos = vit.ViT(num_classes=1000, variant="B/16", pool_type="tok",
                   posemb="sincos2d")
  assert _count_params(sincos, (1, 224, 224, 3)) == 86_567_656 - 197 * 768


def test_vit_overrides_build_a_custom_model():
  # (numpy ints, as a config may produce, are accepted too.)
  model = vit.ViT(variant="Ti/4", depth=np.int64(6), width=128, num_heads=4,
                  mlp_dim=256, num_classes=10)
  count = _count_params(model, (1, 28, 28, 1))
  assert count == (4 * 4 * 1 * 128 + 128 + 49 * 128
                   + 6 * (4 * 128 + 4 * (128 * 128 + 128)
                          + 128 * 256 + 256 + 256 * 128 + 128)
                   + 2 * 128 + 128 * 10 + 10)


def test_vit_param_names_are_stable():
  model = vit.ViT(pool_type="tok", rep_size=True, **TINY)
  names = {n for n, _ in params_lib.flatten_with_names(
      _params(model, jnp.zeros((1, 8, 8, 3))))}
  for expected in ["embedding/kernel", "embedding/bias", "cls",
                   "pos_embedding",
                   "Transformer/encoderblock_0/LayerNorm_0/scale",
                   "Transformer/encoderblock_1/MultiHeadDotProductAttention_0/"
                   "query/kernel",
                   "Transformer/encoderblock_1/MlpBlock_0/Dense_1/kernel",
                   "Transformer/encoder_norm/scale", "pre_logits/kernel",
                   "head/kernel", "head/bias"]:
    assert expected in names, (expected, sorted(names))


@pytest.mark.parametrize("kw, image_shape, pre_logits_dim", [
    (dict(pool_type="gap", posemb="learn"), (2, 8, 8, 3), 32),
    (dict(pool_type="tok", posemb="sincos2d"), (2, 8, 12, 3), 32),
    (dict(pool_type="map", posemb="learn"), (3, 12, 8, 1), 32),
    (dict(pool_type="gap", rep_size=True), (2, 8, 8, 3), 32),
    (dict(pool_type="tok", rep_size=24), (2, 8, 8, 3), 24),
])
def test_vit_output_shapes(kw, image_shape, pre_logits_dim):
  model = vit.ViT(**TINY, **kw)
  images = _images(image_shape)
  params = _params(model, images)
  logits, aux = _apply(model, params, images)
  batch, h, w, _ = image_shape
  tokens = (h // 4) * (w // 4) + (kw["pool_type"] == "tok")
  assert logits.shape == (batch, 10)
  assert aux["pre_logits"].shape == (batch, pre_logits_dim)
  assert aux["encoded"].shape == (batch, tokens, 32)
  assert aux["stem"].shape == (batch, h // 4, w // 4, 32)
  np.testing.assert_array_equal(aux["logits"], logits)


def test_vit_pooling_reads_the_encoder_output():
  images = _images((2, 8, 8, 3))
  for pool, expect in [("gap", lambda e: e.mean(axis=1)),
                       ("tok", lambda e: e[:, 0])]:
    model = vit.ViT(pool_type=pool, **TINY)
    _, aux = _apply(model, _params(model, images), images)
    np.testing.assert_allclose(aux["pre_logits"], expect(aux["encoded"]),
                               rtol=1e-6, atol=1e-6)


def test_vit_map_head_has_a_learned_probe():
  model = vit.ViT(pool_type="map", **TINY)
  params = _params(model, jnp.zeros((1, 8, 8, 3)))
  assert params["MAPHead_0"]["probe"].shape == (1, 1, 32)
  assert "cls" not in params


@pytest.mark.parametrize("num_classes", [None, 0])
def test_vit_without_head_returns_pre_logits(num_classes):
  model = vit.ViT(variant="mu/4", num_classes=num_classes, rep_size=16)
  images = _images((2, 8, 8, 3))
  params = _params(model, images)
  assert "head" not in params
  out, aux = _apply(model, params, images)
  assert out.shape == (2, 16)
  np.testing.assert_array_equal(out, aux["pre_logits"])


def test_vit_real_init_has_a_zero_head():
  model = vit.ViT(**TINY)
  images = _images((2, 8, 8, 3))
  params = _init(model, images)
  # Zero-initialised head (kernel and bias): all logits start at exactly 0,
  # while the features feeding it are not degenerate.
  np.testing.assert_array_equal(params["head"]["kernel"], 0.0)
  logits, aux = _apply(model, params, images)
  np.testing.assert_array_equal(logits, 0.0)
  assert np.std(np.asarray(aux["pre_logits"])) > 0.1
  # pos_embedding ~ N(0, 1/width); cls starts at zero.
  assert 0.1 < np.std(np.asarray(params["pos_embedding"])) * 32 ** 0.5 < 2


def test_head_zeroinit_false_gives_a_random_kernel():
  head = common.classifier_head(5, zeroinit=False, dtype=jnp.float32)
  params = head.init(jax.random.key(0), jnp.ones((1, 16)))["params"]
  assert params["kernel"].shape == (16, 5)
  assert np.std(np.asarray(params["kernel"])) > 0.05
  np.testing.assert_array_equal(params["bias"], 0.0)


def test_sincos2d_hand_values():
  # width 4 -> one frequency (omega = 1); channels are sin y, cos y, sin x, cos x.
  emb = vit.posemb_sincos_2d(2, 2, 4)
  expected = [[0, 1, 0, 1],                          # (y=0, x=0)
              [0, 1, np.sin(1), np.cos(1)],          # (y=0, x=1)
              [np.sin(1), np.cos(1), 0, 1],          # (y=1, x=0)
              [np.sin(1), np.cos(1), np.sin(1), np.cos(1)]]
  np.testing.assert_allclose(emb, np.asarray([expected]), atol=1e-7)
  # width 8 -> frequencies 1 and 1/10000.
  emb = vit.posemb_sincos_2d(1, 3, 8)
  np.testing.assert_allclose(emb[0, 2, 4:], [np.sin(2), np.sin(2e-4),
                                              np.cos(2), np.cos(2e-4)],
                             rtol=1e-6)


def _stack_blocks(params, depth):
  """Unrolled encoderblock_{i} params -> one scanned "encoderblock" tree."""
  params = jax.tree.map(lambda x: x, params)  # shallow copy of the dicts
  enc = dict(params["Transformer"])
  blocks = [enc.pop(f"encoderblock_{i}") for i in range(depth)]
  enc["encoderblock"] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
  params["Transformer"] = enc
  return params


def test_vit_scan_matches_unrolled_with_stacked_params():
  kw = dict(variant="mu/4", depth=3, num_classes=10, pool_type="tok",
            head_zeroinit=False)
  images = _images((2, 8, 8, 3))
  unrolled = vit.ViT(**kw)
  scanned = vit.ViT(scan=True, **kw)
  params = _params(unrolled, images)
  stacked = _stack_blocks(params, 3)
  # The stacked tree has exactly the structure and shapes scan=True creates.
  scan_shapes = _params(scanned, images)
  assert (jax.tree.map(jnp.shape, scan_shapes)
          == jax.tree.map(jnp.shape, stacked))
  assert stacked["Transformer"]["encoderblock"]["LayerNorm_0"]["scale"].shape \
      == (3, 32)
  want, _ = _apply(unrolled, params, images)
  got, _ = _apply(scanned, stacked, images)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_vit_remat_keeps_outputs_and_gradients():
  # The production setting: scan + remat, training with dropout and
  # drop_path (the rngs must replay identically in the recomputation).
  kw = dict(variant="mu/4", depth=2, num_classes=10, scan=True, dropout=0.1,
            drop_path=0.2)
  images = _images((2, 8, 8, 3))
  plain = vit.ViT(**kw)
  params = _params(plain, images)

  def loss_and_grad(model):
    def loss(p):
      logits, _ = model.apply({"params": p}, images, train=True,
                              rngs={"dropout": jax.random.key(7)})
      return jnp.sum(logits ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  want, g_want = loss_and_grad(plain)
  got, g_got = loss_and_grad(vit.ViT(remat_policy="nothing_saveable", **kw))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               g_got, g_want)


def test_vit_remat_without_scan_keeps_outputs():
  kw = dict(variant="mu/4", depth=2, num_classes=10, dropout=0.1)
  images = _images((2, 8, 8, 3))
  params = _params(vit.ViT(**kw), images)
  want = _apply(vit.ViT(**kw), params, images, train=True, seed=3)[0]
  got = _apply(vit.ViT(remat_policy="dots_saveable", **kw), params, images,
               train=True, seed=3)[0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scan", [False, True])
def test_vit_train_flag_controls_dropout_and_drop_path(scan):
  images = _images((4, 8, 8, 3))
  # Under scan only drop_path is checked: its per-block rates are the one
  # scan-specific input (each scanned apply costs a compile).
  configs = [dict(drop_path=0.5)] if scan else [dict(dropout=0.3),
                                                dict(drop_path=0.5)]
  for kw in configs:
    model = vit.ViT(variant="mu/4", depth=3, scan=scan, **kw)  # no head
    params = _params(model, images)
    apply = lambda train, seed: _apply(model, params, images, train, seed)[0]
    evaluation = _apply(model, params, images)[0]
    # train=False: deterministic, whatever the rng.
    np.testing.assert_array_equal(apply(False, 1), evaluation)
    np.testing.assert_array_equal(apply(False, 2), evaluation)
    # train=True: random, depends on the rng, reproducible for the same rng.
    assert not np.allclose(apply(True, 1), evaluation), kw
    assert not np.allclose(apply(True, 1), apply(True, 2)), kw
    np.testing.assert_array_equal(apply(True, 3), apply(True, 3))


def test_vit_train_without_dropout_is_deterministic():
  model = vit.ViT(**TINY)
  images = _images((2, 8, 8, 3))
  params = _params(model, images)
  np.testing.assert_array_equal(
      _apply(model, params, images, train=True)[1]["pre_logits"],
      _apply(model, params, images)[1]["pre_logits"])


def test_drop_path_drops_whole_examples_and_rescales():
  x = jnp.ones((4000, 3, 5))
  y = np.asarray(vit._drop_path(x, 0.25, jax.random.key(0)))
  per_example = y.reshape(4000, -1)
  # Each example is either entirely dropped or entirely kept (scaled 1/0.75).
  kept = per_example[:, 0] > 0
  np.testing.assert_allclose(per_example[kept], 1 / 0.75, rtol=1e-6)
  np.testing.assert_array_equal(per_example[~kept], 0.0)
  assert abs(kept.mean() - 0.75) < 0.03


def test_vit_drop_path_spares_the_first_block():
  # The rate grows linearly from 0 at the first block to `drop_path` at the
  # last, so with depth 1 nothing is ever dropped.
  model = vit.ViT(variant="mu/4", drop_path=0.9)
  images = _images((4, 8, 8, 3))
  params = _params(model, images)
  np.testing.assert_allclose(
      _apply(model, params, images, train=True, seed=0)[0],
      _apply(model, params, images)[0], rtol=1e-6, atol=1e-6)


def test_vit_bfloat16_compute_float32_params():
  kw = dict(head_zeroinit=False, **TINY)
  images = _images((2, 8, 8, 3))
  model32 = vit.ViT(**kw)
  model16 = vit.ViT(dtype_mm="bfloat16", **kw)
  params = _params(model16, images)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  logits16, aux16 = _apply(model16, params, images)
  logits32, _ = _apply(model32, params, images)
  assert aux16["stem"].dtype == jnp.bfloat16  # the conv ran in bfloat16
  assert np.all(np.isfinite(np.asarray(logits16, np.float32)))
  np.testing.assert_allclose(np.asarray(logits16, np.float32), logits32,
                             atol=0.1, rtol=0.1)
  # The scanned path accepts bfloat16 too.
  scanned = vit.ViT(dtype_mm="bfloat16", scan=True, **kw)
  scan_params = _params(scanned, images)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(scan_params))
  _apply(scanned, scan_params, images)


def test_vit_float32_matmul_results_from_bfloat16_operands():
  # dtype_mm_out="float32": the same params (a checkpoint loads either way),
  # float32 activations, outputs and gradients close to the float32 model's.
  kw = dict(head_zeroinit=False, **TINY)
  images = _images((2, 8, 8, 3))
  model32 = vit.ViT(**kw)
  mixed = vit.ViT(dtype_mm="bfloat16", dtype_mm_out="float32", **kw)
  params = _params(model32, images)
  assert (jax.tree.structure(_params(mixed, images)) == jax.tree.structure(params))
  logits, aux = _apply(mixed, params, images)
  logits32, _ = _apply(model32, params, images)
  assert aux["encoded"].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(logits, np.float32), logits32,
                             atol=0.05, rtol=0.05)

  def loss(model):
    return lambda p: jnp.sum(jnp.sin(model.apply({"params": p}, images)[0]
                                     .astype(jnp.float32)))
  g32 = jax.grad(loss(model32))(params)
  gmix = jax.grad(loss(mixed))(params)
  # Per leaf, relative to its largest gradient (the key bias's is ~0: softmax
  # ignores it; there, relative to the largest gradient of all).
  top = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(g32))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g32), jax.tree.leaves(gmix)):
    assert b.dtype == jnp.float32, path
    scale = max(float(np.max(np.abs(a))), 1e-3 * top)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=0.05 * scale,
                               err_msg=jax.tree_util.keystr(path))
  # Every q/k/v/output projection and both MLP layers of every block go
  # through mixed_matmul's custom VJP (flax's bf16 path has none), under
  # nn.scan too.
  def mixed_calls(model):
    params = _params(model, images)
    jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, images))(params)
    return str(jaxpr).count("custom_vjp_call")
  assert mixed_calls(mixed) == 6 * TINY["depth"]
  assert mixed_calls(vit.ViT(dtype_mm="bfloat16", **kw)) == 0
  scanned = vit.ViT(dtype_mm="bfloat16", dtype_mm_out="float32", scan=True, **kw)
  assert mixed_calls(scanned) >= 6
  assert mixed_calls(vit.ViT(dtype_mm="bfloat16", scan=True, **kw)) == 0


def test_mixed_matmul_dot_general_matches_float32_dots_and_their_gradients():
  from big_vision_like.models import mixed_matmul  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  bf = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.bfloat16)
  f32 = lambda x: x.astype(jnp.float32)
  cases = [  # (lhs, rhs, dimension numbers): Dense, qkv DenseGeneral, out DenseGeneral
      (bf(3, 5, 8), bf(8, 6), (((2,), (0,)), ((), ()))),
      (bf(3, 5, 8), bf(8, 2, 4), (((2,), (0,)), ((), ()))),
      (bf(3, 5, 2, 4), bf(2, 4, 8), (((2, 3), (0, 1)), ((), ()))),
      (bf(3, 5, 8), bf(3, 8, 6), (((2,), (1,)), ((0,), (0,)))),  # batch dims: fallback
  ]
  for lhs, rhs, dn in cases:
    got = mixed_matmul.dot_general(lhs, rhs, dn)
    want = jax.lax.dot_general(f32(lhs), f32(rhs), dn)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    loss = lambda fn: (lambda a, b: jnp.sum(jnp.cos(fn(a, b, dn))))
    g_got = jax.grad(loss(mixed_matmul.dot_general), (0, 1))(lhs, rhs)
    g_want = jax.grad(loss(lambda a, b, d: jax.lax.dot_general(f32(a), f32(b), d)),
                      (0, 1))(lhs, rhs)
    for a, b in zip(g_got, g_want):
      assert a.dtype == jnp.bfloat16  # the cotangent of a bf16 operand
      np.testing.assert_allclose(f32(a), b, rtol=2e-2, atol=2e-2 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("kw, match", [
    (dict(variant="Q/16"), r"model.variant='Q/16'.*known sizes: mu, Ti, S"),
    (dict(variant="B/x"), r"model.variant='B/x'.*patch size 'x'"),
    (dict(variant="B"), r"model.patch_size is not set"),
    (dict(variant=None, width=8, depth=1, mlp_dim=8, num_heads=2),
     r"model.patch_size is not set"),
    (dict(variant="mu/4", pool_type="cls"),
     r"model.pool_type='cls'.*gap, tok, map"),
    (dict(variant="mu/4", posemb="sincos"),
     r"model.posemb='sincos'.*learn, sincos2d"),
    (dict(variant="mu/4", remat_policy="save_all"),
     r"model.remat_policy='save_all'.*nothing_saveable"),
    (dict(variant="mu/4", dtype_mm="bf16"), r"model.dtype_mm='bf16'.*bfloat16"),
    (dict(variant="mu/4", dtype_mm="bfloat16", dtype_mm_out="f32"),
     r"model.dtype_mm_out='f32'.*float32"),
    (dict(variant="mu/4", dtype_mm_out="float32"),
     r"model.dtype_mm_out='float32' needs a 16-bit model.dtype_mm.*float32"),
    (dict(variant="mu/4", num_heads=5), r"model.width=32 .*num_heads=5"),
    (dict(variant="mu/4", depth=0), r"model.depth=0 must be a positive int"),
    (dict(variant="mu/4", width=32.0), r"model.width=32.0 must be a positive"),
    (dict(variant="mu/4", dropout=1.0), r"model.dropout=1.0"),
    (dict(variant="mu/4", drop_path=-0.1), r"model.drop_path=-0.1"),
    (dict(variant="mu/4", num_classes=-3), r"model.num_classes"),
])
def test_vit_config_errors(kw, match):
  with pytest.raises(ValueError, match=match):
    vit.ViT(**kw)


def test_vit_sincos_needs_width_divisible_by_4():
  model = vit.ViT(variant="mu/4", width=6, num_heads=2, posemb="sincos2d")
  with pytest.raises(ValueError, match=r"sincos2d.*width=6"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def test_vit_image_not_divisible_by_patch():
  model = vit.ViT(variant="mu/16")
  with pytest.raises(ValueError,
                     match=r"image shape \(1, 28, 32, 3\).*patch_size=16"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 32, 3)))


def test_vit_image_size_must_match_pos_embedding():
  model = vit.ViT(**TINY)
  params = _params(model, jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match=r"16 tokens.*built for 4"):
    model.apply({"params": params}, jnp.zeros((1, 16, 16, 3)))


@pytest.mark.parametrize("model", [vit.ViT(**TINY),
                                   resnet.ResNet(depth=26, width=0.5,
                                                 stem="small")])
def test_models_reject_bad_images(model):
  with pytest.raises(ValueError, match=r"\[batch, height, width, channels\].*"
                                       r"\(8, 8, 3\)"):
    model.init(jax.random.key(0), jnp.zeros((8, 8, 3)))
  with pytest.raises(ValueError, match=r"float images.*uint8"):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3), jnp.uint8))


def test_resolve_dtype_accepts_names_and_dtypes():
  assert common.resolve_dtype("bfloat16") == jnp.bfloat16
  assert common.resolve_dtype(jnp.float32) == jnp.float32
  assert common.resolve_dtype(np.dtype("float16")) == jnp.float16
  with pytest.raises(ValueError, match=r"model.dtype_mm=.*int32"):
    common.resolve_dtype(jnp.int32)


# -------------------------------------------------------------- ResNet ----


def _bit_param_count(blocks, width, classes, stem_kernel=7, in_channels=3):
  """Hand count of a BiT ResNet v2 (no biases in convs; GN has scale+bias).

  Bottleneck block with c_in input and m middle channels (output 4m):
    gn1 2*c_in, conv1 c_in*m, gn2 2m, conv2 9*m*m, gn3 2m, conv3 m*4m,
    plus a 1x1 projection c_in*4m on the first block of each stage.
  """
  stem = 64 * width
  total = stem_kernel ** 2 * in_channels * stem
  c_in = stem
  for s, n in enumerate(blocks):
    m = stem * 2 ** s
    for b in range(n):
      total += 2 * c_in + c_in * m + 2 * m + 9 * m * m + 2 * m + 4 * m * m
      if b == 0:
        total += c_in * 4 * m
      c_in = 4 * m
  return total + 2 * c_in + c_in * classes + classes  # final GN + head


def test_bit_r50x1_param_count():
  # R50x1 has 25,549,352 params with a 1000-way head: stem 9,408; stages
  # 214,912 + 1,218,048 + 7,095,296 + 14,958,592; final GroupNorm 4,096;
  # head 2,049,000. (torchvision's v1 ResNet-50 has 25,557,032: its
  # post-activation norms sit on conv outputs, including the shortcuts,
  # instead of on block inputs, and it has no final norm.)
  assert _bit_param_count((3, 4, 6, 3), 1, 1000) == 25_549_352
  model = resnet.ResNet(num_classes=1000, depth=50, width=1)
  assert _count_params(model, (1, 224, 224, 3)) == 25_549_352
  r101x3 = resnet.ResNet(num_classes=10, depth=101, width=3)
  assert (_count_params(r101x3, (1, 32, 32, 3))
          == _bit_param_count((3, 4, 23, 3), 3, 10))


def test_resnet_param_names_are_stable():
  model = resnet.ResNet(depth=26, width=0.5, stem="small", num_classes=10)
  names = {n for n, _ in params_lib.flatten_with_names(
      _params(model, jnp.zeros((1, 8, 8, 1))))}
  for expected in ["stem_conv/kernel", "stage_1/block_1/gn1/scale",
                   "stage_1/block_1/conv_proj/kernel",
                   "stage_2/block_2/conv2/kernel", "stage_4/block_2/gn3/bias",
                   "norm_pre_head/scale", "head/kernel", "head/bias"]:
    assert expected in names, (expected, sorted(names))
  # Identity shortcut where shapes match: no projection in later blocks.
  assert "stage_1/block_2/conv_proj/kernel" not in names


# The small ResNet most tests share: R26 at half width (32 stem channels,
# 1024 output channels) with the CIFAR-style stem.
R26 = dict(depth=26, width=0.5, stem="small")


@pytest.fixture(scope="module")
def r26():
  """Params, images and a compiled forward pass shared by the R26 tests."""
  model = resnet.ResNet(num_classes=10, **R26)
  images = _images((2, 12, 12, 3))
  params = _params(model, images)
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x))
  return params, images, forward


def test_resnet_small_stem_shapes(r26):
  params, images, forward = r26
  logits, aux = forward(params, images)
  assert logits.shape == (2, 10)
  # Stride-2 SAME convs round up: 12 -> 6 -> 3 -> 2.
  expected = {"stem": (2, 12, 12, 32), "stage_1": (2, 12, 12, 128),
              "stage_2": (2, 6, 6, 256), "stage_3": (2, 3, 3, 512),
              "stage_4": (2, 2, 2, 1024), "pre_logits": (2, 1024),
              "logits": (2, 10)}
  assert {k: v.shape for k, v in aux.items()} == expected


def test_resnet_imagenet_stem_real_init():
  # 7x7/2 conv (64x48 -> 32x24) and 3x3/2 max-pool (-> 16x12), then the
  # stages halve the resolution three times (SAME padding rounds up).
  model = resnet.ResNet(num_classes=10, depth=26, width=0.5)
  images = _images((2, 64, 48, 3))
  params = _init(model, images)
  assert params["stem_conv"]["kernel"].shape == (7, 7, 3, 32)
  logits, aux = jax.jit(lambda p: model.apply({"params": p}, images))(params)
  np.testing.assert_array_equal(logits, 0.0)  # zero-initialised head
  assert np.std(np.asarray(aux["pre_logits"])) > 0.01
  assert aux["stem"].shape == (2, 16, 12, 32)
  assert aux["stage_4"].shape == (2, 2, 2, 1024)


def test_resnet_without_head_and_train_flag_is_a_noop(r26):
  params, images, _ = r26
  params = {k: v for k, v in params.items() if k != "head"}
  model = resnet.ResNet(num_classes=None, **R26)

  @jax.jit
  def both(p):
    return (model.apply({"params": p}, images),
            model.apply({"params": p}, images, train=True,
                        rngs={"dropout": jax.random.key(1)}))

  (out, aux), (out_train, _) = both(params)
  assert out.shape == (2, 1024)
  np.testing.assert_array_equal(out, aux["pre_logits"])
  # Pre-logits come after a ReLU and an average pool: non-negative.
  assert np.all(np.asarray(out) >= 0)
  # GroupNorm and no dropout: train=True computes exactly the same thing.
  np.testing.assert_array_equal(out_train, out)
  # num_classes=0 also means "no head".
  shapes = jax.eval_shape(lambda: resnet.ResNet(num_classes=0, **R26).init(
      jax.random.key(0), images))
  assert "head" not in shapes["params"]


def test_std_conv_hand_value():
  # 1x1 conv, 2 inputs -> 1 output. Any kernel [a, b] with a < b
  # standardises to [-1, 1], so input [3, 5] gives -3 + 5 = 2.
  conv = resnet.StdConv(1, (1, 1))
  x = jnp.asarray([[[[3.0, 5.0]]]])
  for kernel in ([0.1, 0.7], [-4.0, 10.0]):
    w = jnp.asarray(kernel).reshape(1, 1, 2, 1)
    np.testing.assert_allclose(conv.apply({"params": {"kernel": w}}, x),
                               [[[[2.0]]]], rtol=1e-5)


def test_resnet_is_invariant_to_conv_kernel_scale_and_shift(r26):
  # Weight standardisation removes each filter's mean and scale.
  params, images, forward = r26
  changed = jax.tree_util.tree_map_with_path(
      lambda p, x: 3.0 * x + 0.5 if params_lib.path_to_str(p).endswith(
          "kernel") and x.ndim == 4 else x, params)
  want, _ = forward(params, images)
  got, _ = forward(changed, images)
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
  # ... whereas changing a GroupNorm scale does change the output.
  changed["norm_pre_head"] = dict(changed["norm_pre_head"],
                                  scale=2 * params["norm_pre_head"]["scale"])
  assert not np.allclose(forward(changed, images)[0], want, atol=1e-2)


def test_resnet_bfloat16_compute_float32_params(r26):
  params, images, forward = r26
  model16 = resnet.ResNet(num_classes=10, dtype_mm="bfloat16", **R26)
  shapes = jax.eval_shape(lambda: model16.init(jax.random.key(0), images))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))
  logits16, aux = jax.jit(lambda p: model16.apply({"params": p}, images))(
      params)
  assert aux["stem"].dtype == jnp.bfloat16
  logits32, _ = forward(params, images)
  # bfloat16 keeps ~3 significant digits; over 26 layers the logits stay
  # close but not equal.
  logits16 = np.asarray(logits16, np.float32).ravel()
  logits32 = np.asarray(logits32).ravel()
  assert not np.array_equal(logits16, logits32)
  np.testing.assert_allclose(logits16, logits32,
                             atol=0.25 * np.abs(logits32).max())
  assert np.corrcoef(logits16, logits32)[0, 1] > 0.95


def test_resnet_gradients_reach_every_param(r26):
  params, images, _ = r26
  model = resnet.ResNet(num_classes=10, **R26)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(
      model.apply({"params": p}, images)[0] ** 2)))(params)
  for name, g in params_lib.flatten_with_names(grads):
    assert np.abs(np.asarray(g)).max() > 0, name


@pytest.mark.parametrize("kw, match", [
    (dict(depth=34), r"model.depth=34 .*supported: 26, 50, 101, 152, 200"),
    (dict(stem="cifar"), r"model.stem='cifar'.*imagenet, small"),
    (dict(width=0.25), r"model.width=0.25 gives 16.0 stem channels"),
    (dict(width=0), r"model.width=0 "),
    (dict(dtype_mm="float64"), r"model.dtype_mm='float64'"),
    (dict(num_classes=2.5), r"model.num_classes"),
])
def test_resnet_config_errors(kw, match):
  with pytest.raises(ValueError, match=match):
    resnet.ResNet(**kw)


def test_models_build_from_a_config_dict():
  # What the train loop does: MODELS.get(name)(**config.model).
  config_model = {"variant": "mu/7", "num_classes": 10, "pool_type": "map",
                  "posemb": "sincos2d", "scan": True,
                  "remat_policy": "dots_saveable"}
  model = MODELS.get("vit")(**config_model)
  images = _images((2, 28, 28, 1))
  variables = jax.jit(model.init)({"params": jax.random.key(0)}, images)
  logits, aux = jax.jit(lambda v, x: model.apply(
      v, x, train=True, rngs={"dropout": jax.random.key(1)}))(variables,
                                                              images)
  assert logits.shape == (2, 10) and "encoded" in aux
  assert isinstance(model, nn.Module)


def test_vit_conv_stem_shapes_and_params():
  # 28 -> 14 -> 7 -> 4 with three stride-2 SAME convs; patch 1 -> 16 tokens.
  model = vit.ViT(variant="mu/1", conv_stem=(8, 16, 32), num_classes=10,
                  posemb="sincos2d")
  images = _images((2, 28, 28, 1))
  params = _params(model, images)
  assert params["conv_stem_0"]["kernel"].shape == (3, 3, 1, 8)
  assert params["conv_stem_2"]["kernel"].shape == (3, 3, 16, 32)
  assert "bias" not in params["conv_stem_0"]   # the LayerNorm that follows has one
  assert params["embedding"]["kernel"].shape == (1, 1, 32, 32)
  logits, aux = _apply(model, params, images)
  assert logits.shape == (2, 10)
  assert aux["stem"].shape == (2, 4, 4, 32)
  assert aux["encoded"].shape == (2, 16, 32)


def test_vit_conv_stem_errors():
  with pytest.raises(ValueError, match=r"model\.conv_stem"):
    vit.ViT(variant="mu/1", conv_stem=(8, 0))
  model = vit.ViT(variant="mu/3", conv_stem=(8,))
  with pytest.raises(ValueError, match=r"conv stem's output shape \(1, 14, 14, 8\)"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


def test_resnet_small_s2_stem_halves_the_resolution():
  model = resnet.ResNet(depth=26, width=0.5, stem="small_s2", num_classes=10)
  images = _images((2, 28, 28, 1))
  shapes = jax.eval_shape(lambda: _apply(model, _params(model, images), images))
  _, aux = shapes
  assert aux["stem"].shape == (2, 14, 14, 32)
  assert aux["stage_4"].shape == (2, 2, 2, 1024)


def test_resnet_quarter_width_needs_fewer_groups():
  model = resnet.ResNet(depth=26, width=0.25, gn_groups=16, stem="small_s2",
                        num_classes=10)
  images = _images((2, 28, 28, 1))
  params = _params(model, images)
  assert params["stem_conv"]["kernel"].shape == (3, 3, 1, 16)
  assert params["stage_4"]["block_1"]["conv3"]["kernel"].shape == (1, 1, 128, 512)
  logits, _ = _apply(model, params, images)
  assert logits.shape == (2, 10)
  with pytest.raises(ValueError, match=r"model\.gn_groups=32"):
    resnet.ResNet(depth=26, width=0.25)


def test_attention_implementation_by_platform():
  from big_vision_like.models import vit as vit_lib
  pick = vit_lib.attention_implementation
  assert pick(jnp.bfloat16, 64, backend="gpu") == "cudnn"
  assert pick(jnp.float16, 128, backend="cuda") == "cudnn"
  assert pick(jnp.float32, 64, backend="gpu") == "xla"  # cuDNN's kernel is bf16/fp16
  assert pick(jnp.bfloat16, 100, backend="gpu") == "xla"  # head size it does not take
  assert pick(jnp.bfloat16, 64, backend="tpu") == "xla"
  assert pick(jnp.float32, 64, backend="cpu") == "heads_major"
  assert pick(jnp.bfloat16, 64) == "heads_major"  # this machine


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_heads_major_attention_equals_jax_nn(dtype):
  """Values and gradients equal jax.nn.dot_product_attention's, masks included."""
  from big_vision_like.models import vit as vit_lib
  b, t, n, h = 2, 7, 3, 8
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v, g = (jax.random.normal(kk, (b, t, n, h), jnp.float32).astype(dtype)
                for kk in keys)
  causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
  padding = jnp.arange(t)[None, None, None, :] < jnp.array([5, 7])[:, None, None, None]
  row_masked = jnp.ones((b, 1, t, t), bool).at[0, :, 2, :].set(False)  # a fully masked row
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  for mask in (None, causal, padding, row_masked):
    def loss(fn, q, k, v, mask=mask):
      return (fn(q, k, v, mask=mask).astype(jnp.float32) * g.astype(jnp.float32)).sum()
    ours = jax.value_and_grad(lambda *a: loss(vit_lib.heads_major_attention, *a),
                              argnums=(0, 1, 2))(q, k, v)
    ref = jax.value_and_grad(lambda *a: loss(jax.nn.dot_product_attention, *a),
                             argnums=(0, 1, 2))(q, k, v)
    out = vit_lib.heads_major_attention(q, k, v, mask=mask)
    assert out.dtype == dtype and out.shape == (b, t, n, h)
    np.testing.assert_allclose(
        np.asarray(out, np.float32),
        np.asarray(jax.nn.dot_product_attention(q, k, v, mask=mask), np.float32),
        atol=tol, rtol=tol)
    for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
      np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32),
                                 atol=tol * 10, rtol=tol)
