"""Imported timm / open_clip weights give the reference libraries' outputs.

The fixtures in tests/fixtures/zoo were written by timm and open_clip
themselves (tests/fixtures/zoo/make_fixtures.py, torch CPU) from small models
with random weights; here they are read with our converters into our models,
torch-free, and compared in float32.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import pytest

from big_vision_like.models import resnet, two_tower, vit
from big_vision_like.weights import convert, fit

FIX = pathlib.Path(__file__).parent / "fixtures" / "zoo"
VOCAB = pathlib.Path(__file__).parent / "fixtures" / "wordpiece" / "vocab.txt"
TOL = 1e-4  # float32 vs torch float32; the bar


def _load(name: str, model, *inputs):
  imported = convert.import_weights(str(FIX / f"{name}.safetensors"))
  target = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs)["params"])
  return imported, fit.fit(imported.params, target, source=name)


def _max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


@pytest.mark.parametrize("name,pool", [("timm_vit_tok", "tok"), ("timm_vit_gap", "gap")])
def test_timm_vit_logits_match_timm(name, pool):
  io = np.load(FIX / f"{name}_io.npz")
  model = vit.ViT(num_classes=10, width=64, depth=2, mlp_dim=256, num_heads=4, patch_size=8,
                  pool_type=pool, mlp_act="gelu", ln_eps=1e-6)
  imported, params = _load(name, model, io["images"])
  assert imported.format == "timm_vit" and imported.fields["pool_type"] == pool
  logits, aux = model.apply({"params": params}, io["images"])
  err = _max_diff(logits, io["logits"])
  assert err < TOL
  assert _max_diff(aux["pre_logits"], io["pre_logits"]) < TOL
  # The same weights under big_vision's tanh-GELU are measurably further off:
  # the activation is part of what an import must get right.
  other = vit.ViT(num_classes=10, width=64, depth=2, mlp_dim=256, num_heads=4, patch_size=8,
                  pool_type=pool, mlp_act="gelu_tanh", ln_eps=1e-6)
  assert _max_diff(other.apply({"params": params}, io["images"])[0], io["logits"]) > 10 * err


def test_timm_bit_logits_match_timm():
  io = np.load(FIX / "timm_bit_io.npz")
  model = resnet.ResNet(num_classes=10, depth=26, width=0.125, gn_groups=4,
                        padding="symmetric", std_eps=1e-8, gn_eps=1e-5)
  imported, params = _load("timm_bit", model, io["images"])
  assert imported.fields["depth"] == 26 and imported.fields["width"] == 0.125
  apply = jax.jit(model.apply)  # (op-by-op, a ResNet-26 takes ~10x longer)
  for suffix in ("", "_64"):
    logits, aux = apply({"params": params}, io[f"images{suffix}"])
    assert _max_diff(logits, io[f"logits{suffix}"]) < TOL
    assert _max_diff(aux["pre_logits"], io[f"pre_logits{suffix}"]) < TOL
  # XLA's SAME padding (our default) is not what BiT was trained with.
  same = resnet.ResNet(num_classes=10, depth=26, width=0.125, gn_groups=4, std_eps=1e-8,
                       gn_eps=1e-5)
  assert _max_diff(jax.jit(same.apply)({"params": params}, io["images"])[0],
                   io["logits"]) > 0.1


def _clip_model(act: str, vocab: int = 1000, image_width: int = 64, text_width: int = 64,
                depth: int = 2, heads: int = 4, embed: int = 32) -> two_tower.TwoTower:
  common = dict(ln_eps=1e-5, mlp_act=act)
  return two_tower.TwoTower(
      image=dict(width=image_width, depth=depth, mlp_dim=4 * image_width,
                 num_heads=image_width // 16, patch_size=8, pool_type="tok", ln_pre=True,
                 **common),
      text=dict(vocab_size=vocab, width=text_width, depth=depth, mlp_dim=4 * text_width,
                num_heads=heads, pool_type="argmax", causal=True, **common),
      embed_dim=embed)


@pytest.mark.parametrize("act,io_name", [("quick_gelu", "clip_quickgelu_io"),
                                         ("gelu", "clip_gelu_io")])
def test_open_clip_embeddings_match_open_clip(act, io_name):
  io = np.load(FIX / f"{io_name}.npz")
  model = _clip_model(act)
  imported, params = _load("clip_tiny", model, io["images"], io["texts"])
  assert imported.format == "open_clip"
  zimg, ztxt, aux = model.apply({"params": params}, io["images"], io["texts"])
  assert _max_diff(zimg, io["image_features_normed"]) < TOL
  assert _max_diff(ztxt, io["text_features_normed"]) < TOL
  assert _max_diff(np.log(aux["t"]), io["logit_scale"]) < 1e-6
  # Unnormalised features too (the towers' projections, before L2 norm).
  image_tower = vit.ViT(num_classes=32, head_zeroinit=False, **model.image)
  feats, _ = image_tower.apply({"params": params["img"]}, io["images"])
  assert _max_diff(feats, io["image_features"]) < TOL


def test_mismatch_names_every_problem_with_shapes():
  io = np.load(FIX / "timm_vit_tok_io.npz")
  # 5 classes instead of 10 and no class token: the report names the head's
  # shapes, the missing pos/cls and what the file has that the model lacks.
  model = vit.ViT(num_classes=5, width=64, depth=2, mlp_dim=256, num_heads=4, patch_size=8,
                  pool_type="gap", mlp_act="gelu")
  imported = convert.import_weights(str(FIX / "timm_vit_tok.safetensors"))
  target = jax.eval_shape(lambda: model.init(jax.random.key(0), io["images"])["params"])
  with pytest.raises(ValueError) as e:
    fit.fit(imported.params, target, source="timm_vit_tok")
  msg = str(e.value)
  assert "head/kernel: timm_vit_tok has (64, 10), the model (64, 5)" in msg
  assert "cls (1, 1, 64)" in msg  # in the file, not in the model
  assert "pos_embedding" in msg  # 17 tokens in the file, the model's 16: no class token
  # With the head skipped (a new zero-initialised head), a tok model loads.
  model = vit.ViT(num_classes=5, width=64, depth=2, mlp_dim=256, num_heads=4, patch_size=8,
                  pool_type="tok", mlp_act="gelu")
  fresh = model.init(jax.random.key(0), io["images"])["params"]
  params = fit.fit(imported.params, fresh, skip=["head/.*"])
  assert np.all(np.asarray(params["head"]["kernel"]) == 0)
  np.testing.assert_array_equal(params["cls"], imported.params["cls"])


def test_bit_npz_layout_round_trip_and_logits():
  """The big_transfer `.npz` layout (resnet/block1/unit01/a/...) both ways."""
  io = np.load(FIX / "timm_bit_io.npz")
  model = resnet.ResNet(num_classes=10, depth=26, width=0.125, gn_groups=4,
                        padding="symmetric", std_eps=1e-8, gn_eps=1e-5)
  _, params = _load("timm_bit", model, io["images"])
  flat = convert.export(params, "resnet", {}, "big_vision")
  assert "resnet/block1/unit01/a/proj/standardized_conv2d/kernel" in flat
  assert flat["resnet/head/conv2d/kernel"].shape == (1, 1, 256, 10)
  imported = convert.to_ours(flat)
  assert imported.format == "bit" and imported.fields["depth"] == 26
  again = fit.fit(imported.params, params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  logits, _ = model.apply({"params": again}, io["images"])
  assert _max_diff(logits, io["logits"]) < TOL


# -- big_vision layouts, golden outputs from big_vision's own models
# (tests/fixtures/zoo/make_big_vision_fixtures.py, jax float32).

def test_big_vision_lit_bert_tower_matches_big_vision():
  from big_vision_like import zoo
  io = np.load(FIX / "bv_lit_tiny_io.npz")
  entry = zoo.ZooEntry(
      name="test/lit_tiny", model="two_tower",
      fields=dict(image_model="vit", text_model="bert", embed_dim=16, temperature_init=10.0,
                  image=dict(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=8,
                             pool_type="tok", head_zeroinit=False),
                  text=dict(vocab_size=280, width=128, depth=2, mlp_dim=96, num_heads=2,
                            max_len=24)),
      format="big_vision", source=str(FIX / "bv_lit_tiny.npz"),
      pp="decode|resize(32)|value_range(-1, 1)", resolution=32, text_len=16,
      text_pp="tokenize(16, tokenizer='bert:PATH/TO/vocab.txt', bos=True, eos='none')")
  zoo.ZOO.setdefault(entry.name, entry)
  loaded = zoo.load(entry.name)  # the real zoo -> experiment -> fit path
  model = loaded.experiment.model
  zimg, ztxt, aux = jax.jit(model.apply)({"params": loaded.params}, io["images"],
                                         io["tokens"])
  assert _max_diff(zimg, io["zimg"]) < TOL and _max_diff(ztxt, io["ztxt"]) < TOL
  assert _max_diff(aux["t"], io["t"][0]) < 1e-5
  # Padding is masked: a text's embedding ignores what follows its last token.
  longer = io["tokens"].copy()
  longer[0, -1] = 9  # text 0 is 2 tokens long; make its last slot a real token
  changed = jax.jit(model.apply)({"params": loaded.params}, None, longer)[1]
  assert _max_diff(changed[0], ztxt[0]) > 1e-3 and _max_diff(changed[1:], ztxt[1:]) < 1e-6
  # Texts through our WordPiece tokenizer and the predict API: big_vision's ztxt.
  # (the vocabulary is published beside the weights: the user names its path)
  from big_vision_like import predict
  with pytest.raises(ValueError, match=r"tokenized with vocab\.txt.*text_file"):
    predict.Predictor.from_zoo(entry.name).embed_texts(["a cat"])
  z = predict.Predictor.from_zoo(entry.name, text_file=str(VOCAB)).embed_texts(
      list(io["texts"]))
  assert _max_diff(z, io["ztxt"]) < TOL
  # Export writes big_vision's names and shapes back, bit for bit (the position
  # embedding keeps our zero class-token row, which big_vision's loader folds away).
  flat = dict(np.load(FIX / "bv_lit_tiny.npz"))
  back = convert.export(loaded.params, "two_tower", dict(loaded.config.model), "big_vision")
  assert sorted(back) == sorted(flat)
  pe = back.pop("img/pos_embedding")
  assert not pe[:, 0].any()
  np.testing.assert_array_equal(pe[:, 1:], flat.pop("img/pos_embedding"))
  for k in flat:
    np.testing.assert_array_equal(back[k], flat[k], err_msg=k)


def test_big_vision_class_token_layout_matches_big_vision():
  # DeiT III as converted by big_vision: class token, position embedding without a
  # class-token row (added before the token is prepended).
  io = np.load(FIX / "bv_deit3_tiny_io.npz")
  imported = convert.import_weights(str(FIX / "bv_deit3_tiny.npz"))
  assert imported.format == "big_vision" and imported.fields["pool_type"] == "tok"
  model = vit.ViT(num_classes=5, width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=8,
                  pool_type="tok")
  target = jax.eval_shape(lambda: model.init(jax.random.key(0), io["images"])["params"])
  params = fit.fit(imported.params, target, source="bv_deit3_tiny")
  logits, _ = jax.jit(model.apply)({"params": params}, io["images"])
  assert _max_diff(logits, io["logits"]) < TOL
