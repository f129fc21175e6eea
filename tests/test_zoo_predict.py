"""Zoo, weight files, hub cache, predict API/CLI, zero-shot fidelity, resampling.

Zoo entries for the tiny golden models of tests/fixtures/zoo are registered
here, so the real `zoo.load` -> `experiment.build` -> `fit` path runs on
them; the published entries differ only in sizes and sources.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil

import huggingface_hub.constants as hf_constants
import jax
import numpy as np
import pytest
import tensorflow as tf

from big_vision_like import predict, zoo
from big_vision_like.tools import score_predictions
from big_vision_like.weights import files, fit

FIX = pathlib.Path(__file__).parent / "fixtures" / "zoo"

TINY_VIT = zoo.ZooEntry(
    name="test/tiny_vit", model="vit",
    fields=dict(width=64, depth=2, mlp_dim=256, num_heads=4, patch_size=8, pool_type="tok",
                num_classes=10),
    format="timm_vit", source="hf:testorg/tiny-vit/model.safetensors",
    pp="decode|resize(32)|value_range(-1, 1)", resolution=32,
    class_names=None)
TINY_CLIP = zoo.ZooEntry(
    name="test/clip_zeroshot", model="two_tower",
    fields=dict(image_model="vit", text_model="text_transformer", embed_dim=16,
                image=dict(width=32, depth=1, mlp_dim=128, num_heads=2, patch_size=8,
                           pool_type="tok", ln_pre=True, ln_eps=1e-5, mlp_act="quick_gelu",
                           head_zeroinit=False),
                text=dict(vocab_size=49408, width=16, depth=1, mlp_dim=64, num_heads=2,
                          pool_type="argmax", causal=True, ln_eps=1e-5, mlp_act="quick_gelu")),
    format="open_clip", source=str(FIX / "clip_zeroshot.safetensors"),
    pp="decode|resize(32)|value_range(-1, 1)", resolution=32,
    text_pp="tokenize(77, tokenizer='clip', bos=True)", text_len=77)
for _e in (TINY_VIT, TINY_CLIP):
  zoo.ZOO.setdefault(_e.name, _e)


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
  """A populated Hugging Face cache holding the tiny ViT, hub offline."""
  snap = tmp_path / "models--testorg--tiny-vit" / "snapshots" / ("a" * 40)
  snap.mkdir(parents=True)
  shutil.copy(FIX / "timm_vit_tok.safetensors", snap / "model.safetensors")
  (tmp_path / "models--testorg--tiny-vit" / "refs").mkdir()
  (tmp_path / "models--testorg--tiny-vit" / "refs" / "main").write_text("a" * 40)
  monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
  monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
  return tmp_path


def test_published_entries_are_complete():
  for name in ("vit_small_patch16_224.augreg_in21k_ft_in1k",
               "vit_base_patch16_224.augreg2_in21k_ft_in1k", "vit_base_patch16_224.augreg_in21k",
               "vit_large_patch16_224.augreg_in21k_ft_in1k",
               "resnetv2_50x1_bit.goog_in21k_ft_in1k", "resnetv2_101x1_bit.goog_in21k",
               "ViT-B-32/openai", "ViT-B-16/openai", "ViT-L-14/openai",
               "ViT-B-16/laion2b_s34b_b88k", "siglip/B/16-224",
               "vit_s16_i1k_90ep.big_vision", "vit_s16_i1k_300ep.big_vision", "lit/B16B",
               "deit3_S_224_1k.big_vision", "deit3_B_224_1k.big_vision",
               "deit3_B_384_21k.big_vision"):
    e = zoo.get(name)
    assert e.source.startswith(("hf:", "gs://")) and e.pp.startswith("decode")
  with pytest.raises(ValueError, match="zoo model"):
    zoo.get("vit_base_patch16_224.augreg2_in21k_ft_in1")


def test_zoo_eval_of_lit_names_and_takes_its_vocabulary():
  from big_vision_like import config as config_lib
  with pytest.raises(ValueError, match=r"LiT-B16B\.txt.*text_file=PATH"):
    config_lib.load_config("configs/zoo_eval.py:model=lit/B16B,evals=val")
  config = config_lib.load_config("configs/zoo_eval.py:model=lit/B16B,evals=val,"
                                  "text_file=/data/LiT-B16B.txt")
  (ev,) = config.evals.values()
  assert ev.pp_txt == ("tokenize(16, tokenizer='bert:/data/LiT-B16B.txt', bos=True, "
                       "eos='none')")
  assert config.model_name == "two_tower" and config.model.text_model == "bert"


def test_zoo_load_from_offline_hub_cache_matches_timm(hub_cache):
  io = np.load(FIX / "timm_vit_tok_io.npz")
  loaded = zoo.load("test/tiny_vit")  # no path: resolved through the hub cache
  logits = loaded.predict_fn(loaded.params, {"image": io["images"]})
  assert np.max(np.abs(np.asarray(logits) - io["logits"])) < 1e-4
  assert loaded.config.model.mlp_act == "gelu"  # timm's convention, from the file


def test_hub_miss_offline_names_repo_and_file(tmp_path, monkeypatch):
  monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
  monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
  with pytest.raises(FileNotFoundError, match="testorg/tiny-vit.*--weights PATH"):
    zoo.load("test/tiny_vit")


def test_pickle_and_object_arrays_are_refused(tmp_path):
  with pytest.raises(ValueError, match="pickle-based.*safetensors"):
    files.read(str(tmp_path / "pytorch_model.bin"))
  bad = tmp_path / "objects.npz"
  np.savez(bad, a=np.array([{"x": 1}], dtype=object))
  with pytest.raises(ValueError, match="without pickle"):
    files.read(str(bad))


def test_resample_posemb_hand_computed():
  # 2x2 grid -> 3x3 with the class-token row kept: bilinear, corners to corners.
  grid = np.array([0., 1., 2., 3.]).reshape(1, 4, 1)
  old = np.concatenate([np.full((1, 1, 1), 7.), grid], axis=1)
  new = fit.resample_posemb(old, 10, num_prefix=1)
  np.testing.assert_allclose(new[0, :, 0], [7, 0, .5, 1, 1, 1.5, 2, 2, 2.5, 3], atol=1e-6)
  with pytest.raises(ValueError, match="square"):
    fit.resample_posemb(old, 9, num_prefix=1)


def test_vit_224_weights_load_at_384():
  # A tiny-width ViT with the real geometry: 14x14 patches of 16 at 224 -> 24x24 at 384.
  from big_vision_like.models import vit
  small = vit.ViT(num_classes=3, width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=16,
                  pool_type="tok")
  big = small.clone(num_classes=3)
  p224 = jax.jit(lambda: small.init(jax.random.key(0),
                                    np.zeros((1, 224, 224, 3), np.float32))["params"])()
  target = jax.eval_shape(lambda: big.init(jax.random.key(1),
                                           np.zeros((1, 384, 384, 3), np.float32))["params"])
  p384 = fit.fit(jax.tree.map(np.asarray, p224), target)
  assert p384["pos_embedding"].shape == (1, 1 + 24 * 24, 32)
  np.testing.assert_array_equal(p384["pos_embedding"][:, 0], p224["pos_embedding"][:, 0])
  logits, _ = jax.jit(big.apply)({"params": p384}, np.ones((1, 384, 384, 3), np.float32))
  assert logits.shape == (1, 3) and np.all(np.isfinite(logits))


def test_zero_shot_matches_open_clip_classifier(tmp_path):
  import tensorflow_datasets as tfds
  from big_vision_like.evaluators import zeroshot
  from tests.helpers import write_tfds
  io = np.load(FIX / "clip_zeroshot_io.npz")
  meta = json.loads((FIX / "clip_zeroshot_prompts.json").read_text())
  p = predict.Predictor.from_zoo("test/clip_zeroshot")
  zs = p.zero_shot(meta["classnames"], prompts=meta["templates"])
  # open_clip's classifier is [D, C]; ours [C, D].
  assert np.max(np.abs(zs.weights.T - io["classifier"])) < 1e-5
  # The zero-shot *evaluator* builds the same classifier from the same names.
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
      "label": tfds.features.ClassLabel(num_classes=5)})
  data = write_tfds(tmp_path, "zs_images", {"test": [
      {"image": np.zeros((32, 32, 3), np.uint8), "label": 0}]}, features)
  ev = zeroshot.Evaluator(p.exp.predict_fn, data=data, pp=TINY_CLIP.pp, batch_size=2,
                          mesh=p.exp.mesh, data_axes=p.exp.data_axes,
                          class_names=meta["classnames"], prompts=meta["templates"],
                          pp_txt=TINY_CLIP.text_pp)
  weights, _ = ev.class_embeddings(p.params)
  assert np.max(np.abs(weights.T - io["classifier"])) < 1e-5
  zimg = np.asarray(p.exp.predict_fn(p.params, {"image": io["images"]})["zimg"])
  assert np.max(np.abs(zimg - io["image_features_normed"])) < 1e-4
  assert np.max(np.abs(100 * zimg @ zs.weights.T - io["scores"])) < 1e-2
  assert abs(zs.t - float(np.exp(io["logit_scale"]))) < 1e-3


def test_predict_cli_writes_a_scorable_dump(tmp_path, hub_cache, capsys):
  rng = np.random.RandomState(0)
  img_dir = tmp_path / "images"
  img_dir.mkdir()
  arrays = []
  for i in range(3):
    a = rng.randint(0, 256, (32, 32, 3), np.uint8)
    arrays.append(a)
    tf.io.write_file(str(img_dir / f"img{i}.png"), tf.io.encode_png(a))
  out = tmp_path / "preds.npz"
  rc = predict.main(["--model", "test/tiny_vit", "--images", str(img_dir), "--out", str(out),
                     "--save_logits", "--topk", "3"])
  assert rc == 0
  printed = capsys.readouterr().out.strip().splitlines()
  assert [line.split("\t")[0] for line in printed] == ["img0.png", "img1.png", "img2.png"]
  names, models, _ = score_predictions.load_predictions(str(out))
  (model,) = models.values()
  assert list(names) == ["img0.png", "img1.png", "img2.png"]
  assert model["topk_ids"].shape == (3, 3)
  # The same logits as the API on the same (uint8) images.
  api = predict.Predictor.from_zoo("test/tiny_vit").predict(arrays)
  np.testing.assert_allclose(model["logits"], api, atol=1e-5)
  np.testing.assert_array_equal(model["topk_ids"][:, 0], api.argmax(1))
  # A two-tower without class names and a bad pp fail with a message, no traceback.
  rc = predict.main(["--model", "test/tiny_vit", "--images", str(img_dir), "--out",
                     str(out), "--pp", "decode|resize(31)|value_range(-1, 1)"])
  assert rc == 2 and "error:" in capsys.readouterr().err


def test_model_init_from_zoo_with_new_head_and_resolution():
  """A classifier config initialised from a zoo entry at another resolution."""
  from big_vision_like import checkpoint
  from big_vision_like import experiment
  import ml_collections
  config = ml_collections.ConfigDict(dict(
      model_name="vit", model=dict(width=64, depth=2, mlp_dim=256, num_heads=4, patch_size=8,
                                   pool_type="tok", num_classes=3, mlp_act="gelu")))
  exp = experiment.build(config, input_spec={
      "image": jax.ShapeDtypeStruct((48, 48, 3), np.float32)})
  fresh = exp.init_params()
  params = checkpoint.init_from_checkpoints(
      fresh, f"zoo:test/tiny_vit={FIX / 'timm_vit_tok.safetensors'}", ["head/.*"])
  assert params["pos_embedding"].shape == (1, 1 + 36, 64)  # 4x4 -> 6x6 grid
  assert np.all(np.asarray(params["head"]["kernel"]) == 0)
  src = files.read(str(FIX / "timm_vit_tok.safetensors"))
  np.testing.assert_array_equal(np.asarray(params["cls"]), src["cls_token"])
  # LiT-style: the image tower of a CLIP file into the `img` part of a two-tower.
  entry = dataclasses.replace(TINY_CLIP)
  clip_cfg = zoo.model_config(entry)
  exp2 = experiment.build(clip_cfg, input_spec=zoo.input_spec(entry))
  fresh2 = exp2.init_params()
  out = checkpoint.init_from_checkpoints(
      fresh2, {"img": str(FIX / "clip_zeroshot.safetensors")}, [])
  np.testing.assert_array_equal(np.asarray(out["txt"]["embedding"]["embedding"]),
                                np.asarray(fresh2["txt"]["embedding"]["embedding"]))
  assert not np.array_equal(np.asarray(out["img"]["cls"]), np.asarray(fresh2["img"]["cls"]))


def test_eval_py_scores_a_published_model_without_training(tmp_path, hub_cache):
  """eval.py on `model_init="zoo:..."` and an empty workdir: step 0, published weights."""
  import ml_collections
  import tensorflow_datasets as tfds
  from big_vision_like import eval as eval_lib
  from tests.helpers import write_tfds
  rng = np.random.default_rng(0)
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
      "label": tfds.features.ClassLabel(num_classes=10)})
  images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
  # Labels = the model's own top-1 on these images, so precision must be exactly 1.
  top1 = predict.Predictor.from_zoo("test/tiny_vit").predict(images).argmax(1)
  data = write_tfds(tmp_path / "tfds", "zoo_eval_images",
                    {"test": [{"image": im, "label": int(l)} for im, l in zip(images, top1)]},
                    features)
  config = ml_collections.ConfigDict(dict(
      model_init="zoo:test/tiny_vit", loss="softmax_xent", optax_name="sgd", lr=0.0,
      total_steps=0,
      input=dict(batch_size=2, data=data, pp=TINY_VIT.pp),
      evals=dict(test=dict(type="classification", data=data, batch_size=2,
                           pp=TINY_VIT.pp + "|onehot(10, key='label', key_result='labels')"))))
  config.update(zoo.model_config(TINY_VIT))
  out = eval_lib.evaluate(config, str(tmp_path / "wd"))
  assert out["step"] == 0 and out["test/prec@1"] == 1.0


def test_zoo_eval_config_builds_scorecard_for_classifier_and_clip():
  from big_vision_like import config as config_lib
  c = config_lib.load_config(
      "configs/zoo_eval.py:model=vit_base_patch16_224.augreg2_in21k_ft_in1k,evals=val+real")
  assert sorted(c.evals) == ["real", "val"] and c.model_init.startswith("zoo:")
  assert c.evals.val.pp.startswith("decode|resize_small(248, method='bicubic')")
  c = config_lib.load_config("configs/zoo_eval.py:model=ViT-B-32/openai,evals=val,"
                             "weights=/x.safetensors")
  assert c.evals.val.type == "zeroshot" and c.model_init == "zoo:ViT-B-32/openai=/x.safetensors"
