"""Two-tower training through the one train loop: contrastive runs, LiT, config errors."""

import json
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from big_vision_like import checkpoint as ckpt_lib  # noqa: E402
from big_vision_like import config as config_lib  # noqa: E402
from big_vision_like import scorecard  # noqa: E402
from big_vision_like import train as train_lib  # noqa: E402

TINY_IMAGE = dict(variant=None, width=32, depth=1, mlp_dim=64, num_heads=2,
                  conv_stem=(16, 32), patch_size=1, pool_type="gap", posemb="sincos2d")
# The vocabulary and pad id stay the config's: they belong to its tokenizer.
TINY_TEXT = dict(width=32, depth=1, mlp_dim=64, num_heads=2, pool_type="last")


def contrastive_config(data_dir, spec="configs/fashion_contrastive.py:runlocal", **extra):
  config = config_lib.load_config(spec)
  with config.ignore_type():
    config.model.image = dict(TINY_IMAGE)
    config.model.text = dict(config.model.text.to_dict(), **TINY_TEXT)
    config.model.embed_dim = 16
    config.input.data.data_dir = data_dir
    config.input.batch_size = 32
    config.input.shuffle_buffer_size = 500
    config.total_steps = 6
    config.ckpt_steps = 6
    for ev in config.evals.values():
      ev.data.data_dir = data_dir
      ev.data.split = "test[:64]"
      ev.batch_size = 32
    for key, value in extra.items():
      config[key] = value
  return config


@pytest.mark.parametrize("loss", ["siglip", "clip", "chunked_siglip"])
def test_contrastive_config_trains_and_evaluates(fashion_mnist_data_dir, tmp_path, loss):
  config = contrastive_config(fashion_mnist_data_dir, loss=loss)
  out = train_lib.train(config, str(tmp_path / loss))
  assert out["step"] == 6
  for key in ("zeroshot/prec@1", "zeroshot_zpe/prec@1", "retrieval/img2txt/recall@1",
              "retrieval/txt2img/recall@10"):
    assert 0.0 <= out[key] <= 1.0, key
  assert out["zeroshot/num_examples"] == 64


def test_chunked_and_dense_siglip_train_the_same(fashion_mnist_data_dir, tmp_path):
  params, losses = {}, {}
  for loss in ("siglip", "chunked_siglip"):
    config = contrastive_config(fashion_mnist_data_dir, loss=loss, evals={},
                                log_training_steps=1)
    params[loss] = train_lib.train(config, str(tmp_path / loss))["state"]["params"]
    with open(tmp_path / loss / "metrics.jsonl") as f:
      losses[loss] = [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]
  assert len(losses["siglip"]) == 6
  np.testing.assert_allclose(losses["chunked_siglip"], losses["siglip"], rtol=1e-5)
  # Adam amplifies float-level gradient differences on near-zero gradients,
  # so params agree to a fraction of one step (lr 2e-3), not to 1e-6.
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                       params["siglip"], params["chunked_siglip"])
  assert max(jax.tree.leaves(diffs)) < 1e-3


def test_lit_keeps_the_locked_image_tower_bit_identical(fashion_mnist_data_dir, tmp_path):
  # A supervised ViT with the same image-tower shape, as the LiT init.
  sup = config_lib.load_config("configs/fashion_vit.py:runlocal")
  with sup.ignore_type():
    sup.model = dict(TINY_IMAGE, num_classes=10)
    sup.input.data.data_dir = fashion_mnist_data_dir
    sup.evals = {}
    sup.input.batch_size = 32
    sup.total_steps = 4
    sup.ckpt_steps = 4
  sup_dir = str(tmp_path / "supervised")
  supervised = train_lib.train(sup, sup_dir)["state"]["params"]

  config = contrastive_config(fashion_mnist_data_dir,
                              spec=f"configs/fashion_lit.py:runlocal,init={sup_dir}")
  assert config.frozen == ["img/.*"]
  first = train_lib.train(dict_copy(config, total_steps=2, ckpt_steps=2,
                                    schedule=dict(warmup_steps=1, decay_type="cosine")),
                          str(tmp_path / "lit1"))
  out = train_lib.train(config, str(tmp_path / "lit"))
  img = out["state"]["params"]["img"]
  for name in ("Transformer", "embedding", "conv_stem_0"):
    jax.tree.map(np.testing.assert_array_equal, img[name], supervised[name])
  # The fresh projection head stays at its (random) init: also frozen.
  jax.tree.map(np.testing.assert_array_equal, img["head"],
               first["state"]["params"]["img"]["head"])
  # The text tower did learn.
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                       out["state"]["params"]["txt"], first["state"]["params"]["txt"])
  assert max(jax.tree.leaves(moved)) > 0
  # And the checkpoint on disk holds the same locked tower.
  restored = ckpt_lib.load_params(str(tmp_path / "lit"), out["state"]["params"])
  jax.tree.map(np.testing.assert_array_equal, restored["img"]["Transformer"],
               supervised["Transformer"])


def dict_copy(config, **changes):
  config = config.copy_and_resolve_references()
  for key, value in changes.items():
    config[key] = value
  return config


def test_two_tower_config_errors(fashion_mnist_data_dir, tmp_path):
  config = contrastive_config(fashion_mnist_data_dir, loss="softmax_xent")
  with pytest.raises(config_lib.ConfigError, match="trains with one of chunked_siglip, clip, siglip"):
    config_lib.validate(config)
  config = contrastive_config(fashion_mnist_data_dir)
  with config.ignore_type():
    config.mixup = dict(mixup_alpha=0.2)
  with pytest.raises(config_lib.ConfigError, match="mixup is for classification"):
    train_lib.train(config, str(tmp_path / "mixup"))
  config = contrastive_config(fashion_mnist_data_dir)
  config.input.pp = config.input.pp.replace("keep('image', 'text')", "keep('image')")
  with pytest.raises(config_lib.ConfigError, match="must produce 'text'"):
    train_lib.train(config, str(tmp_path / "keys"))
  # A tokenizer whose ids do not fit the embedding table: refused before any step
  # (the lookup would give NaN rows, not an error), naming the pp op and the key.
  config = contrastive_config(fashion_mnist_data_dir)
  config.model.text.vocab_size = 259
  with pytest.raises(config_lib.ConfigError,
                     match=r"config.input.pp: pp op 3 .*tokenize\(12, tokenizer='clip'.* "
                           r"ids up to 49407 .*vocab_size is 259; set vocab_size to 49408"):
    train_lib.train(config, str(tmp_path / "vocab"))
  # The bytes side of the config with one evaluator's prompts tokenized by CLIP.
  config = contrastive_config(fashion_mnist_data_dir,
                              spec="configs/fashion_contrastive.py:text=bytes,runlocal")
  assert config.model.text.vocab_size == 259
  config.evals.zeroshot.pp_txt = "tokenize(12, tokenizer='clip', bos=True)"
  with pytest.raises(config_lib.ConfigError, match=r"config.evals.zeroshot.pp_txt: pp op 0 "):
    train_lib.train(config, str(tmp_path / "vocab_eval"))
  # The bytes side of the config is self-consistent and validates.
  config_lib.validate(config_lib.load_config("configs/fashion_contrastive.py:text=bytes"))


def test_zero_shot_scorecard_validates_with_inner_keys():
  config = config_lib.load_config("configs/fashion_contrastive.py:runlocal")
  config.evals = scorecard.imagenet(
      pp_image="decode|resize(28)", log_steps=10, evaluator="zeroshot",
      extra=dict(class_names="imagenet2012", prompts=["a photo of a {}."],
                 pp_txt="tokenize(16)"))
  config_lib.validate(config)  # inner keys (set_key, scheme, class_subset) accepted
  assert config.evals.real.scorer == "multilabel"
  assert config.evals.calibration.scorer == "calibration"
  config.evals.real.set_kye = "real_label"
  with pytest.raises(config_lib.ConfigError, match="set_kye.*set_key"):
    config_lib.validate(config)
