"""The classification evaluator counts every example exactly once.

A fixed linear "model" over the pixels gives logits that numpy can recompute
from `tfds.load` directly, so expected prec@1/prec@5/loss are independent of
our input pipeline, batching, padding and sharding.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from big_vision_like import registry
from big_vision_like import sharding as sharding_lib
from tests.helpers import PIXEL_PP, pixel_predict, pixel_projection

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def expected_metrics(data_dir, split):
  ds = tfds.load("fashion_mnist", split=split, data_dir=data_dir, batch_size=-1)
  images = tfds.as_numpy(ds)["image"].reshape(-1, 28 * 28).astype(np.float32) / 255
  labels = tfds.as_numpy(ds)["label"]
  logits = images.astype(np.float64) @ pixel_projection().astype(np.float64)
  order = np.argsort(-logits, axis=1)
  logp = logits - logits.max(1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
  return {"prec@1": np.mean(order[:, 0] == labels),
          "prec@5": np.mean((order[:, :5] == labels[:, None]).any(1)),
          "loss": -np.mean(logp[np.arange(len(labels)), labels]),
          "num_examples": len(labels)}


@pytest.mark.parametrize("split,batch_size", [("test[:1001]", 7), ("test[:1001]", 64),
                                              ("test", 999)])
def test_counts_every_example_once(fashion_mnist_data_dir, split, batch_size):
  mesh = sharding_lib.make_mesh([("data", -1)])
  cls = registry.EVALUATORS.get("classification")
  evaluator = cls(pixel_predict, data=dict(name="fashion_mnist", split=split,
                                           data_dir=fashion_mnist_data_dir),
                  pp=PIXEL_PP, batch_size=batch_size, mesh=mesh, data_axes=("data",))
  got = evaluator.run({"w": jnp.asarray(pixel_projection())})
  want = expected_metrics(fashion_mnist_data_dir, split)
  assert got["num_examples"] == want["num_examples"]
  assert got["prec@1"] == pytest.approx(want["prec@1"], abs=1e-9)
  assert got["prec@5"] == pytest.approx(want["prec@5"], abs=1e-9)
  assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
  # Running again gives the same result (the eval iterator restarts cleanly).
  assert evaluator.run({"w": jnp.asarray(pixel_projection())}) == got


def test_counts_on_eight_devices_with_odd_batch(fashion_mnist_data_dir):
  """Batch 21 is rounded up to 24 for 8 devices; 1001 examples still count once."""
  code = textwrap.dedent(f"""
      import json
      import jax, jax.numpy as jnp
      from tests.helpers import PIXEL_PP, pixel_predict, pixel_projection
      from big_vision_like import registry, sharding
      mesh = sharding.make_mesh([("data", -1)])
      assert jax.device_count() == 8
      ev = registry.EVALUATORS.get("classification")(
          pixel_predict, data=dict(name="fashion_mnist", split="test[:1001]",
                                   data_dir={fashion_mnist_data_dir!r}),
          pp=PIXEL_PP, batch_size=21, mesh=mesh, data_axes=("data",))
      print("RESULT", json.dumps(ev.run({{"w": jnp.asarray(pixel_projection())}})))
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.split("RESULT", 1)[1])
  want = expected_metrics(fashion_mnist_data_dir, "test[:1001]")
  assert got["num_examples"] == 1001
  assert got["prec@1"] == pytest.approx(want["prec@1"], abs=1e-9)
  assert got["prec@5"] == pytest.approx(want["prec@5"], abs=1e-9)


def test_label_vectors_and_ties_through_the_scorer():
  """Multi-hot label vectors become sets; equal logits rank the lower id first."""
  from big_vision_like import label_sources
  from big_vision_like import scoring
  from big_vision_like.evaluators import report
  logits = np.array([[0.1, 0.9, 0.5, 0.0, 0.0, 0.0],
                     [0.3, 0.2, 0.1, 0.0, 0.0, 0.3]], np.float32)
  multi = np.array([[1., 0, 1, 0, 0, 0],    # top-1 is 1 (wrong), top-2 has 2
                    [0., 0, 0, 0, 0, 1]])   # tie 0/5: 0 ranks first
  ids, _ = scoring.top_k(logits, 2)
  np.testing.assert_array_equal(ids, [[1, 2], [0, 5]])
  labels = label_sources.from_arrays({"labels": multi, "topk_ids": ids}, "t")
  got, _ = report.score("classification", topk_ids=ids, labels=labels, ks=(1, 2))
  assert got == {"prec@1": 0.0, "prec@2": 1.0, "num_examples": 2.0}


def test_missing_label_key_is_named(fashion_mnist_data_dir):
  mesh = sharding_lib.make_mesh([("data", -1)])
  evaluator = registry.EVALUATORS.get("classification")(
      pixel_predict, data=dict(name="fashion_mnist", split="test[:10]",
                               data_dir=fashion_mnist_data_dir),
      pp="decode(1)|value_range(0, 1)", batch_size=4, mesh=mesh, data_axes=("data",))
  with pytest.raises(KeyError, match="'labels'"):
    evaluator.run({"w": jnp.asarray(pixel_projection())})


def test_log_unit_overridden_on_the_command_line(tmp_path):
  # The config sets log_percent; the command line asks for steps instead.
  import jax
  from big_vision_like import config as config_lib
  from big_vision_like import evaluators as evaluators_lib
  config = config_lib.resolve(config_lib.load_config(
      "configs/fashion_vit.py:runlocal", ["evals.test.log_steps=5"]))
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  (name, _, every), = evaluators_lib.make_evaluators(
      config, lambda p, b: None, mesh, ("data",), batch_size=32, total_steps=100,
      num_train_examples=60_000, workdir=str(tmp_path))  # the config saves predictions
  assert (name, every) == ("test", 5)
