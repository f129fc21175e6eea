"""Mixed precision in the real train loop: bf16 compute with float32 master
params, bf16 Adam moments, and what the start-up memory report says about them."""

import jax
import jax.numpy as jnp
import numpy as np

from big_vision_like import sharding as sharding_lib
from big_vision_like import train as train_lib
from tests.helpers import read_jsonl, tiny_config


def _leaves_named(tree, part):
  return [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
          if part in jax.tree_util.keystr(p)]


def test_bf16_compute_and_moments_keep_float32_masters(fashion_mnist_data_dir, tmp_path,
                                                       caplog):
  common = dict(total_steps=4, log_training_steps=1, ckpt_steps=4)
  base = train_lib.train(tiny_config(fashion_mnist_data_dir, **common), str(tmp_path / "f32"))
  with caplog.at_level("INFO"):
    mixed = train_lib.train(
        tiny_config(fashion_mnist_data_dir, **common,
                    **{"model.dtype_mm": "bfloat16", "optax.mu_dtype": "bfloat16"}),
        str(tmp_path / "bf16"))

  # Master params stay float32; Adam's first moment is bf16, the second float32.
  assert {x.dtype for x in jax.tree.leaves(mixed["state"]["params"])} == {jnp.dtype("float32")}
  mu = _leaves_named(mixed["state"]["opt"], ".mu")
  nu = _leaves_named(mixed["state"]["opt"], ".nu")
  assert mu and nu
  assert {x.dtype for _, x in mu} == {jnp.dtype("bfloat16")}
  assert {x.dtype for _, x in nu} == {jnp.dtype("float32")}

  # bf16 moments: the optimizer state is 3/4 of the float32 one (mu halves).
  f32_opt = sharding_lib.memory_stats(base["state"]["opt"])["total_bytes"]
  bf16_opt = sharding_lib.memory_stats(mixed["state"]["opt"])["total_bytes"]
  params = sharding_lib.memory_stats(base["state"]["params"])["total_bytes"]
  assert 0 <= f32_opt - 2 * params <= 64  # mu and nu, plus a few scalar counters
  assert 0 <= bf16_opt - 1.5 * params <= 64
  assert any("Memory: params:" in r.getMessage() and "opt:" in r.getMessage()
             for r in caplog.records)

  # Same init and data: bf16 training follows the float32 run closely.
  loss = lambda w: np.array([r["train/loss"] for r in read_jsonl(w / "metrics.jsonl")
                             if "train/loss" in r])
  l32, l16 = loss(tmp_path / "f32"), loss(tmp_path / "bf16")
  assert len(l32) == len(l16) == 4
  np.testing.assert_allclose(l16, l32, rtol=2e-2)
  assert not np.array_equal(l16, l32)  # bf16 really computed in bf16

  # bf16 operands with float32 matmul results (model.dtype_mm_out) train the
  # same way, with float32 params and the same checkpointed param tree.
  out = train_lib.train(
      tiny_config(fashion_mnist_data_dir, **common,
                  **{"model.dtype_mm": "bfloat16", "model.dtype_mm_out": "float32"}),
      str(tmp_path / "mixed"))
  assert (jax.tree.structure(out["state"]["params"])
          == jax.tree.structure(base["state"]["params"]))
  assert {x.dtype for x in jax.tree.leaves(out["state"]["params"])} == {jnp.dtype("float32")}
  lmix = loss(tmp_path / "mixed")
  np.testing.assert_allclose(lmix, l32, rtol=2e-2)
  assert not np.array_equal(lmix, l32)
