"""Contrastive losses (contrastive.py): hand-computed values, global-batch
semantics, and the chunked ring SigLIP against the dense one on 8 fake CPU
devices (and across two real processes)."""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()

import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from big_vision_like import contrastive  # noqa: E402
from big_vision_like import registry  # noqa: E402
from big_vision_like import sharding as sharding_lib  # noqa: E402
from big_vision_like import tasks  # noqa: E402
from tests.helpers import free_port  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sp(x: float) -> float:
  """softplus(x) = log(1 + e^x) = -log_sigmoid(-x)."""
  return math.log1p(math.exp(x))


@pytest.fixture(scope="module")
def devices():
  devs = jax.devices()
  assert len(devs) >= 8, (
      f"these tests need 8 devices, jax has {len(devs)}: another test module "
      "initialised jax before this one could set XLA_FLAGS")
  return devs[:8]


# --- Hand-computed small cases ----------------------------------------------

# Case A: zimg = I, so zimg @ ztxt.T = ztxt.T = [[0.6, 1.0], [0.8, 0.0]].
# With t = 2: logits = [[1.2, 2.0],
#                       [1.6, 0.0]]
# Neither image nor text retrieves its partner (1.2 < 2.0, 0.0 < 1.6 by row;
# 1.2 < 1.6, 0.0 < 2.0 by column).
ZIMG_A = np.eye(2, dtype=np.float32)
ZTXT_A = np.array([[0.6, 0.8], [1.0, 0.0]], np.float32)

# Case B: zimg = I again, ztxt = M.T for the score matrix
#   M = zimg @ ztxt.T = [[3, 1, 0],
#                        [2, 2, 0],
#                        [0, 1, 2]]
# Image 1 ties its partner with text 0 (2 = 2): not retrieved (strict).
# Rows: images 0 and 2 retrieve their text (2/3); columns: every text
# retrieves its image (3 > 2, 2 > 1, 2 > 0): 3/3.
M_B = np.array([[3, 1, 0], [2, 2, 0], [0, 1, 2]], np.float32)
ZIMG_B, ZTXT_B = np.eye(3, dtype=np.float32), M_B.T.copy()


def test_clip_loss_by_hand_2x2():
  loss, m = contrastive.clip_loss(ZIMG_A, ZTXT_A, 2.0)
  # Row i: logsumexp(row) - logits[i, i] = softplus(other - own) with 2 items.
  i2t = (sp(2.0 - 1.2) + sp(1.6 - 0.0)) / 2   # (1.171101 + 1.783901) / 2
  t2i = (sp(1.6 - 1.2) + sp(2.0 - 0.0)) / 2   # (0.913015 + 2.126928) / 2
  assert float(m["loss_img2txt"]) == pytest.approx(i2t, rel=1e-6)
  assert float(m["loss_txt2img"]) == pytest.approx(t2i, rel=1e-6)
  assert float(loss) == pytest.approx((i2t + t2i) / 2, rel=1e-6)
  assert float(loss) == pytest.approx(1.498736, abs=1e-6)
  assert float(m["acc_img2txt"]) == 0.0 and float(m["acc_txt2img"]) == 0.0


def test_clip_loss_by_hand_3x3_and_t_as_param():
  # t = 0.5: logits = 0.5 * M = [[1.5, 0.5, 0.0], [1.0, 1.0, 0.0], [0.0, 0.5, 1.0]]
  e = math.exp
  i2t = (math.log(e(1.5) + e(0.5) + e(0.0)) - 1.5
         + math.log(e(1.0) + e(1.0) + e(0.0)) - 1.0
         + math.log(e(0.0) + e(0.5) + e(1.0)) - 1.0) / 3
  t2i = (math.log(e(1.5) + e(1.0) + e(0.0)) - 1.5
         + math.log(e(0.5) + e(1.0) + e(0.5)) - 1.0
         + math.log(e(0.0) + e(0.0) + e(1.0)) - 1.0) / 3
  # t stored as a (1,) parameter, as models keep it.
  loss, m = jax.jit(contrastive.clip_loss)(ZIMG_B, ZTXT_B, jnp.array([0.5]))
  assert float(loss) == pytest.approx((i2t + t2i) / 2, rel=1e-6)
  assert float(m["loss_img2txt"]) == pytest.approx(i2t, rel=1e-6)
  assert float(m["acc_img2txt"]) == pytest.approx(2 / 3)
  assert float(m["acc_txt2img"]) == 1.0


def test_siglip_loss_by_hand_2x2():
  # b = -1: logits = [[0.2, 1.0], [0.6, -1.0]]. Positives (diagonal) cost
  # -log_sigmoid(z) = softplus(-z), negatives -log_sigmoid(-z) = softplus(z);
  # the sum is divided by B = 2.
  loss, m = contrastive.siglip_loss(ZIMG_A, ZTXT_A, 2.0, -1.0)
  pos = (sp(-0.2) + sp(1.0)) / 2
  neg = (sp(1.0) + sp(0.6)) / 2
  assert float(m["loss_pos"]) == pytest.approx(pos, rel=1e-6)
  assert float(m["loss_neg"]) == pytest.approx(neg, rel=1e-6)
  assert float(loss) == pytest.approx(pos + neg, rel=1e-6)
  assert float(loss) == pytest.approx(2.131075, abs=1e-6)
  assert float(m["acc_img2txt"]) == 0.0 and float(m["acc_txt2img"]) == 0.0


def test_siglip_loss_by_hand_3x3():
  # t = 0.5, b = -1: logits = 0.5 * M - 1 = [[ 0.5, -0.5, -1.0],
  #                                          [ 0.0,  0.0, -1.0],
  #                                          [-1.0, -0.5,  0.0]]
  loss, m = contrastive.siglip_loss(ZIMG_B, ZTXT_B, 0.5, -1.0)
  pos = sp(-0.5) + sp(-0.0) + sp(-0.0)
  neg = sp(-0.5) + sp(-1.0) + sp(0.0) + sp(-1.0) + sp(-1.0) + sp(-0.5)
  assert float(loss) == pytest.approx((pos + neg) / 3, rel=1e-6)
  assert float(m["loss_pos"]) == pytest.approx(pos / 3, rel=1e-6)
  assert float(m["acc_img2txt"]) == pytest.approx(2 / 3)
  assert float(m["acc_txt2img"]) == 1.0


def test_siglip_gradients_in_closed_form():
  # d loss / d z_ij = -l_ij * sigmoid(-l_ij * z_ij) / B =: g_ij, so
  # d/db = sum g, d/dt = sum g * (zimg @ ztxt.T), d/dzimg = t * g @ ztxt.
  z = np.array([[0.2, 1.0], [0.6, -1.0]])
  labels = np.array([[1.0, -1.0], [-1.0, 1.0]])
  g = -labels / (1 + np.exp(labels * z)) / 2
  dots = ZIMG_A @ ZTXT_A.T
  dzimg, dztxt, dt, db = jax.grad(lambda *a: contrastive.siglip_loss(*a)[0],
                                  argnums=(0, 1, 2, 3))(ZIMG_A, ZTXT_A, 2.0, -1.0)
  np.testing.assert_allclose(db, g.sum(), rtol=1e-6)
  np.testing.assert_allclose(dt, (g * dots).sum(), rtol=1e-6)
  np.testing.assert_allclose(dzimg, 2.0 * g @ ZTXT_A, rtol=1e-6)
  np.testing.assert_allclose(dztxt, 2.0 * g.T @ ZIMG_A, rtol=1e-6)


def test_in_batch_accuracy_strict_on_ties_and_batch_of_one():
  # Collapsed embeddings score everything alike: nothing is retrieved.
  m = contrastive.in_batch_accuracy(jnp.ones((4, 4)))
  assert float(m["acc_img2txt"]) == 0.0 == float(m["acc_txt2img"])
  m = contrastive.in_batch_accuracy(jnp.array([[0.3]]))
  assert float(m["acc_img2txt"]) == 1.0 == float(m["acc_txt2img"])
  with pytest.raises(ValueError, match=r"in_batch_accuracy: logits must be square"):
    contrastive.in_batch_accuracy(jnp.ones((2, 3)))


def test_metrics_carry_no_gradient():
  def f(zimg):
    _, m = contrastive.siglip_loss(zimg, ZTXT_A, 2.0, -1.0)
    return m["loss_pos"] + m["acc_img2txt"]
  assert np.all(np.asarray(jax.grad(f)(ZIMG_A)) == 0)


# --- Global-batch semantics ---------------------------------------------------

def _embeddings(batch: int, width: int, seed: int, matched: float = 0.5):
  """Normalised embeddings where the first `matched` share of pairs align."""
  rng = np.random.default_rng(seed)
  zimg = rng.normal(size=(batch, width))
  ztxt = rng.normal(size=(batch, width))
  k = int(batch * matched)
  ztxt[:k] = zimg[:k] + 0.5 * ztxt[:k]
  zimg /= np.linalg.norm(zimg, axis=1, keepdims=True)
  ztxt /= np.linalg.norm(ztxt, axis=1, keepdims=True)
  return zimg.astype(np.float32), ztxt.astype(np.float32)


def _numpy_losses(zimg, ztxt, t, b):
  """Both losses in float64 numpy, straight from the formulas."""
  logits = t * zimg.astype(np.float64) @ ztxt.astype(np.float64).T
  n = len(logits)

  def lse(x, axis):
    mx = x.max(axis=axis, keepdims=True)
    return (mx + np.log(np.exp(x - mx).sum(axis=axis, keepdims=True))).squeeze(axis)

  clip = 0.5 * (np.mean(lse(logits, 1) - np.diag(logits))
                + np.mean(lse(logits, 0) - np.diag(logits)))
  labels = 2 * np.eye(n) - 1
  siglip = np.sum(np.logaddexp(0, -labels * (logits + b))) / n
  return clip, siglip


def test_dense_losses_under_jit_use_the_global_batch(devices):
  mesh = sharding_lib.make_mesh([("data", 8)], devices)
  zimg, ztxt = _embeddings(64, 16, seed=0)
  sharding = NamedSharding(mesh, P("data"))
  zi, zt = jax.device_put(zimg, sharding), jax.device_put(ztxt, sharding)
  assert len(zi.addressable_shards) == 8 and zi.addressable_shards[0].data.shape == (8, 16)
  clip = jax.jit(contrastive.clip_loss)(zi, zt, 10.0)[0]
  siglip = jax.jit(contrastive.siglip_loss)(zi, zt, 10.0, -5.0)[0]
  want_clip, want_siglip = _numpy_losses(zimg, ztxt, 10.0, -5.0)
  assert float(clip) == pytest.approx(want_clip, rel=1e-5)
  assert float(siglip) == pytest.approx(want_siglip, rel=1e-5)
  # A per-device loss (each device's 8 pairs alone, averaged) is a different
  # number: the comparison above can tell the two apart.
  per_device = np.mean([_numpy_losses(zimg[i:i + 8], ztxt[i:i + 8], 10.0, -5.0)
                        for i in range(0, 64, 8)], axis=0)
  assert abs(per_device[0] - want_clip) > 0.1 and abs(per_device[1] - want_siglip) > 0.1


# --- Chunked SigLIP vs dense ----------------------------------------------------

MESHES = [
    ([("data", 8)], "data"),
    ([("data", 4), ("model", 2)], "data"),
    ([("model", 2), ("data", 4)], "data"),       # data is not the first axis
    ([("data", 4), ("fsdp", 2)], ("data", "fsdp")),  # batch split over two axes
]


def _value_and_grads(loss_fn, *args):
  return jax.jit(jax.value_and_grad(lambda *a: loss_fn(*a), argnums=(0, 1, 2, 3),
                                    has_aux=True))(*args)


@pytest.mark.parametrize("mesh_config, axis", MESHES, ids=lambda x: str(x))
# Seeds whose in-batch accuracies differ by direction (checked below).
@pytest.mark.parametrize("batch, seed", [(64, 3), (8, 0)])
def test_chunked_siglip_equals_dense(devices, mesh_config, axis, batch, seed):
  mesh = sharding_lib.make_mesh(mesh_config, devices)
  zimg, ztxt = _embeddings(batch, 16, seed, matched=0.5)
  sharding = NamedSharding(mesh, P(axis))
  args = (jax.device_put(zimg, sharding), jax.device_put(ztxt, sharding),
          jnp.float32(10.0), jnp.array([-5.0]))  # b as a (1,) parameter
  (dense, dense_m), dense_g = _value_and_grads(contrastive.siglip_loss, *args)
  (chunked, chunked_m), chunked_g = _value_and_grads(
      lambda *a: contrastive.chunked_siglip_loss(*a, mesh=mesh, axis=axis), *args)

  assert float(dense) == pytest.approx(_numpy_losses(zimg, ztxt, 10.0, -5.0)[1], rel=1e-5)
  np.testing.assert_allclose(chunked, dense, rtol=1e-5)
  assert dense_m.keys() == chunked_m.keys()
  for k in dense_m:
    np.testing.assert_allclose(chunked_m[k], dense_m[k], rtol=1e-5, err_msg=k)
  # The accuracies differ by direction here, so a mix-up would show.
  assert float(dense_m["acc_img2txt"]) != float(dense_m["acc_txt2img"])
  for name, c, d in zip(("zimg", "ztxt", "t", "b"), chunked_g, dense_g):
    assert c.shape == d.shape and c.dtype == d.dtype, name
    np.testing.assert_allclose(c, d, rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.abs(np.asarray(d)).max() > 1e-3, name  # real, non-zero gradients
  # Embedding gradients come back split over the batch like the embeddings.
  assert chunked_g[0].sharding.is_equivalent_to(sharding, 2)


def test_chunked_siglip_eager_numpy_and_bfloat16(devices):
  mesh = sharding_lib.make_mesh([("data", 8)], devices)
  zimg, ztxt = _embeddings(32, 8, seed=3)
  # Outside jit, on unsharded numpy inputs.
  loss, _ = contrastive.chunked_siglip_loss(zimg, ztxt, 10.0, -5.0, mesh=mesh)
  assert float(loss) == pytest.approx(_numpy_losses(zimg, ztxt, 10.0, -5.0)[1], rel=1e-5)
  # bfloat16 embeddings: computed in float32, gradients in bfloat16.
  zi16, zt16 = jnp.asarray(zimg, jnp.bfloat16), jnp.asarray(ztxt, jnp.bfloat16)
  f = lambda zi, zt: contrastive.chunked_siglip_loss(zi, zt, 10.0, -5.0, mesh=mesh)[0]
  loss16, (gi, gt) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(zi16, zt16)
  want = _numpy_losses(np.asarray(zi16, np.float32), np.asarray(zt16, np.float32),
                       10.0, -5.0)[1]
  assert loss16.dtype == jnp.float32 and float(loss16) == pytest.approx(want, rel=1e-5)
  assert gi.dtype == gt.dtype == jnp.bfloat16
  dense_gi = jax.jit(jax.grad(lambda zi: contrastive.siglip_loss(zi, zt16, 10.0, -5.0)[0]))(zi16)
  np.testing.assert_allclose(np.asarray(gi, np.float32), np.asarray(dense_gi, np.float32),
                             atol=1e-2)


def test_chunked_siglip_errors_name_the_culprit(devices):
  mesh = sharding_lib.make_mesh([("data", 8)], devices)
  zimg, ztxt = _embeddings(12, 4, seed=0)
  with pytest.raises(ValueError, match=r"chunked_siglip_loss: the batch of 12 is not "
                                       r"divisible by the 8 devices along mesh axis 'data'"):
    contrastive.chunked_siglip_loss(zimg, ztxt, 1.0, 0.0, mesh=mesh)
  with pytest.raises(ValueError, match=r"chunked_siglip_loss: axis 'batch' is not an axis "
                                       r"of the mesh; its axes are \('data',\)"):
    contrastive.chunked_siglip_loss(zimg[:8], ztxt[:8], 1.0, 0.0, mesh=mesh, axis="batch")
  with pytest.raises(ValueError, match=r"chunked_siglip_loss: zimg and ztxt must both be "
                                       r"\[batch, width\].*\(8, 4\).*\(8, 3\)"):
    contrastive.chunked_siglip_loss(zimg[:8], ztxt[:8, :3], 1.0, 0.0, mesh=mesh)
  with pytest.raises(ValueError, match=r"chunked_siglip_loss: b must hold exactly one "
                                       r"value.*\(2,\)"):
    contrastive.chunked_siglip_loss(zimg[:8], ztxt[:8], 1.0, jnp.zeros(2), mesh=mesh)
  with pytest.raises(ValueError, match=r"clip_loss: zimg and ztxt.*\(8, 4\).*\(4, 4\)"):
    contrastive.clip_loss(zimg[:8], ztxt[:4], 1.0)
  with pytest.raises(ValueError, match=r"siglip_loss: t must hold exactly one"):
    contrastive.siglip_loss(zimg, ztxt, jnp.ones((1, 2)), 0.0)


def test_losses_by_name(devices):
  mesh = sharding_lib.make_mesh([("data", 4), ("fsdp", 2)], devices)
  zimg, ztxt = _embeddings(16, 8, seed=4)
  want_clip, want_siglip = _numpy_losses(zimg, ztxt, 10.0, -5.0)
  axes = sharding_lib.data_axes(mesh)  # ("data", "fsdp"), as the trainer passes it
  for name, want in [("clip", want_clip), ("siglip", want_siglip),
                     ("chunked_siglip", want_siglip)]:
    assert registry.LOSSES.tags(name) == {"task": "image_text"}
    loss_fn = registry.LOSSES.get(name)(mesh, axes)
    loss, metrics = jax.jit(loss_fn)(zimg, ztxt, jnp.array([10.0]), jnp.array([-5.0]))
    assert float(loss) == pytest.approx(want, rel=1e-5), name
    assert "acc_img2txt" in metrics
  # A classification loss named for a two-tower model, and a typo.
  config = ml_collections.ConfigDict(dict(model_name="two_tower", loss="softmax_xent"))
  task = tasks.for_config(config)
  assert task.name == "image_text"
  with pytest.raises(ValueError, match=r"config\.loss='softmax_xent' is a loss of task "
                                       r"'classification'; task 'image_text' \(model "
                                       r"'two_tower'\) trains with one of chunked_siglip, "
                                       r"clip, siglip$"):
    task.check_config(config)
  config.loss = "siglp"
  with pytest.raises(ValueError, match=r"config\.loss: Unknown loss 'siglp'\. Did you mean "
                                       r"'siglip'"):
    task.check_config(config)
  with pytest.raises(ValueError, match=r"config\.loss='chunked_siglip': axis 'batch' is not"):
    registry.LOSSES.get("chunked_siglip")(mesh, "batch")


def test_chunked_siglip_across_two_processes(tmp_path):
  """The ring spans processes: 2 processes x 2 CPU devices, one 'data' axis."""
  script = tmp_path / "worker.py"
  script.write_text(textwrap.dedent("""
      import sys
      import jax, jax.numpy as jnp, numpy as np
      jax.distributed.initialize(f"localhost:{sys.argv[1]}", 2, int(sys.argv[2]))
      from jax.experimental import multihost_utils
      from jax.sharding import NamedSharding, PartitionSpec as P
      from big_vision_like import contrastive, sharding
      pid = jax.process_index()
      mesh = sharding.make_mesh([("data", -1)])
      rng = np.random.default_rng(0)
      zimg = rng.normal(size=(16, 8)).astype(np.float32)
      ztxt = rng.normal(size=(16, 8)).astype(np.float32)
      rows = NamedSharding(mesh, P("data"))
      mine = slice(8 * pid, 8 * pid + 8)  # each process feeds only its half
      zi = jax.make_array_from_process_local_data(rows, zimg[mine])
      zt = jax.make_array_from_process_local_data(rows, ztxt[mine])
      f = jax.jit(jax.value_and_grad(
          lambda *a: contrastive.chunked_siglip_loss(*a, mesh=mesh), argnums=(0, 1, 2, 3),
          has_aux=True))
      (loss, m), grads = f(zi, zt, jnp.float32(3.0), jnp.float32(-1.0))
      (want, want_m), want_grads = jax.value_and_grad(
          contrastive.siglip_loss, argnums=(0, 1, 2, 3), has_aux=True)(zimg, ztxt, 3.0, -1.0)
      grads = [multihost_utils.process_allgather(g, tiled=True) for g in grads]
      print("RESULT", jax.device_count(), jax.local_device_count(),
            abs(float(loss) - float(want)) / float(want),
            max(float(np.abs(np.asarray(g) - np.asarray(w)).max())
                for g, w in zip(grads, want_grads)),
            max(abs(float(m[k]) - float(w)) / max(1.0, abs(float(w)))
                for k, w in want_m.items()),
            float(want_m["acc_img2txt"]), float(want_m["acc_txt2img"]))
  """))
  port = free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(2)]
  logs = [p.communicate(timeout=180)[0] for p in procs]
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f"process {i}:\n{log[-3000:]}"
    line = next(l for l in log.splitlines() if l.startswith("RESULT "))
    n_dev, n_local, loss_rel, grad_diff, metric_diff, acc_i, acc_t = line.split()[1:]
    assert (int(n_dev), int(n_local)) == (4, 2)
    assert float(acc_i) > 0 or float(acc_t) > 0  # the accuracy check means something
    assert float(loss_rel) < 1e-5 and float(grad_diff) < 1e-5 and float(metric_diff) < 1e-5
