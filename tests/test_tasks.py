"""Tasks: chosen by config or model, each refusing what it cannot honour;
`init_head_bias` (big_vision's sigmoid recipe) reaches the real train loop."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from big_vision_like import config as config_lib
from big_vision_like import experiment
from big_vision_like import tasks
from big_vision_like import train as train_lib
from tests.helpers import read_jsonl, tiny_config

IMAGE = {"image": jax.ShapeDtypeStruct((28, 28, 1), jnp.float32),
         "labels": jax.ShapeDtypeStruct((10,), jnp.float32)}


def _config(**extra):
  config = config_lib.load_config("configs/fashion_vit.py:runlocal")
  config.update(extra)
  return config


def test_task_comes_from_the_model_or_the_config():
  assert tasks.for_config(_config()).name == "classification"
  contrastive = config_lib.load_config("configs/fashion_contrastive.py:runlocal")
  assert tasks.for_config(contrastive).name == "image_text"
  assert experiment.build(_config(), input_spec=IMAGE).task.name == "classification"


def test_init_head_bias_sets_the_head_bias_at_init():
  for spec in ("configs/fashion_vit.py:runlocal", "configs/fashion_resnet.py:runlocal"):
    config = config_lib.load_config(spec, ["init_head_bias=-6.9", "loss='sigmoid_xent'"])
    exp = experiment.build(config, input_spec=IMAGE, total_steps=10)
    params = exp.init_state()["params"]
    np.testing.assert_array_equal(params["head"]["bias"], np.full((10,), -6.9, np.float32))
    plain = experiment.build(config_lib.load_config(spec), input_spec=IMAGE).init_params()
    assert not np.any(np.asarray(plain["head"]["bias"]) == -6.9)


def test_init_head_bias_trains_from_the_sigmoid_prior(fashion_mnist_data_dir, tmp_path):
  # big_vision's recipe: sigmoid cross-entropy with the head bias at -6.9, so
  # the first loss is that of predicting p = sigmoid(-6.9) for every class
  # (the head kernel starts at zero).
  config = tiny_config(fashion_mnist_data_dir, total_steps=1, log_training_steps=1,
                       ckpt_steps=1, loss="sigmoid_xent", init_head_bias=-6.9, evals={})
  train_lib.train(config, str(tmp_path / "run"))
  (row,) = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r]
  p = 1 / (1 + math.exp(6.9))
  want = -math.log(p) - 9 * math.log(1 - p)  # one positive, nine negatives
  # (6.910; without the bias the zero head gives 10 log 2 = 6.931, 0.3% more.)
  assert row["train/loss"] == pytest.approx(want, rel=1e-4)


def test_tasks_refuse_what_they_cannot_honour():
  contrastive = config_lib.load_config("configs/fashion_contrastive.py:runlocal")
  for key, value, message in [
      ("init_head_bias", -6.9, r"init_head_bias is for classification heads"),
      ("mixup", dict(mixup_alpha=0.2), r"config\.mixup is for classification"),
      ("grad_accum_steps", 2, r"grad_accum_steps > 1 would change a contrastive loss")]:
    config = ml_collections.ConfigDict(contrastive.to_dict())
    config[key] = value
    with pytest.raises(config_lib.ConfigError, match=message):
      config_lib.validate(config)
  config = _config(task="image_text")  # a ViT cannot embed text
  with pytest.raises(config_lib.ConfigError, match=r"must produce 'text' for task 'image_text'"):
    experiment.build(config, input_spec=IMAGE, total_steps=3)
  config = _config(init_head_bias=-6.9)
  config.model.num_classes = 0  # a feature extractor: no head
  with pytest.raises(config_lib.ConfigError, match=r"init_head_bias=-6.9: model 'vit' has no "
                                                   r"head/bias parameter"):
    experiment.build(config, input_spec=IMAGE)


def test_training_input_must_hold_the_task_keys():
  config = _config()
  with pytest.raises(config_lib.ConfigError, match=r"config\.input\.pp must produce 'labels' "
                                                   r"for task 'classification'"):
    experiment.build(config, input_spec={"image": IMAGE["image"]}, total_steps=3)
  uint8 = {"image": jax.ShapeDtypeStruct((28, 28, 1), jnp.uint8), "labels": IMAGE["labels"]}
  with pytest.raises(config_lib.ConfigError, match=r"device_value_range"):
    experiment.build(config, input_spec=uint8, total_steps=3)
