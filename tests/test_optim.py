"""make_optimizer: schedules, weight decay, lr mults, freezing, clipping."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from big_vision_like import optim
from big_vision_like import params as params_lib


def _config(**kw):
  base = dict(optax_name="sgd", lr=0.1)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def _make(params, total_steps=100, batch_size=10, num_examples=None, **kw):
  return optim.make_optimizer(_config(**kw), params, total_steps=total_steps,
                              batch_size=batch_size, num_examples=num_examples)


def _tree():
  return {
      "enc": {"dense": {"kernel": jnp.array([[1.0, -2.0], [3.0, 0.5]]),
                        "bias": jnp.array([0.25, -1.0])}},
      "head": {"kernel": jnp.array([[2.0], [-4.0]]), "bias": jnp.array([1.5])},
  }


def _step(tx, params, grads, state=None):
  if state is None:
    state = jax.jit(tx.init)(params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  return updates, state


def _sched(lr=1.0, total_steps=100, batch_size=10, num_examples=None, **sched):
  return optim.make_schedule(lr, sched, total_steps=total_steps,
                             batch_size=batch_size, num_examples=num_examples)


def _at(schedule, steps):
  return [float(schedule(s)) for s in steps]


# --- Schedules ---------------------------------------------------------------


def test_constant_with_warmup_ramp():
  s = _sched(lr=2.0, warmup_steps=10)
  np.testing.assert_allclose(_at(s, [0, 5, 10, 50, 100]),
                             [0.0, 1.0, 2.0, 2.0, 2.0], rtol=1e-6)


def test_cosine_midpoint_and_end():
  # Warmup 10 of 100 steps: step 55 is half-way through the decay.
  s = _sched(warmup_steps=10, decay_type="cosine")
  np.testing.assert_allclose(_at(s, [10, 55, 100]), [1.0, 0.5, 0.0], atol=1e-6)
  # 0.25 of the way: 0.5 * (1 + cos(pi/4)).
  np.testing.assert_allclose(float(s(32.5)), 0.5 * (1 + math.sqrt(0.5)),
                             rtol=1e-6)
  s = _sched(warmup_steps=10, decay_type="cosine", end_value=0.1)
  np.testing.assert_allclose(_at(s, [55, 100]), [0.55, 0.1], rtol=1e-6)


def test_linear_to_linear_end():
  s = _sched(lr=0.5, decay_type="linear", linear_end=0.2)
  np.testing.assert_allclose(_at(s, [0, 50, 100, 150]),
                             [0.5, 0.3, 0.1, 0.1], rtol=1e-6)
  s = _sched(lr=0.5, decay_type="linear")
  np.testing.assert_allclose(_at(s, [25, 100]), [0.375, 0.0], atol=1e-7)


def test_rsqrt_with_cooldown():
  s = _sched(warmup_steps=10, decay_type="rsqrt", timescale=10,
             cooldown_steps=20)
  # 1/sqrt(1 + (t - 10) / 10); in the last 20 steps times (100 - t) / 20.
  np.testing.assert_allclose(
      _at(s, [5, 10, 20, 40, 80, 90, 100]),
      [0.5, 1.0, 1 / math.sqrt(2), 0.5, 1 / math.sqrt(8),
       (1 / 3) * 0.5, 0.0], rtol=1e-6, atol=1e-7)


def test_default_schedule_is_constant_and_jittable():
  s = _sched(lr=0.3)
  assert float(jax.jit(s)(jnp.int32(7))) == pytest.approx(0.3)


@pytest.mark.parametrize("warmup", [
    dict(warmup_epochs=2),       # 2 * 50 examples / batch 10 = 10 steps
    dict(warmup_percent=10),     # 10% of 100 steps
    dict(warmup_examples=100),   # 100 / 10
])
def test_warmup_in_any_unit(warmup):
  s = _sched(num_examples=50, **warmup)
  np.testing.assert_allclose(_at(s, [0, 5, 10, 11]), [0.0, 0.5, 1.0, 1.0],
                             rtol=1e-6)


def test_cooldown_in_percent():
  s = _sched(decay_type="constant", cooldown_percent=10)
  np.testing.assert_allclose(_at(s, [80, 90, 95, 100]), [1.0, 1.0, 0.5, 0.0],
                             atol=1e-7)


def test_optimizer_returns_schedule_with_base_lr():
  _, s = _make(_tree(), lr=0.4, schedule=dict(decay_type="linear"))
  np.testing.assert_allclose(_at(s, [0, 50]), [0.4, 0.2], rtol=1e-6)


# --- Updates -----------------------------------------------------------------


def test_plain_sgd_step_is_minus_lr_times_grad():
  params = _tree()
  grads = jax.tree.map(lambda p: 2.0 * p + 1.0, params)
  tx, _ = _make(params, lr=0.1)
  updates, _ = _step(tx, params, grads)
  jax.tree.map(lambda u, g: np.testing.assert_allclose(u, -0.1 * g, rtol=1e-6),
               updates, grads)


def test_weight_decay_exact_numbers_default_kernels_only():
  params = _tree()
  grads = jax.tree.map(jnp.ones_like, params)
  tx, _ = _make(params, lr=0.1, wd=0.01)
  updates, _ = _step(tx, params, grads)
  # Kernels: -lr * g - wd * (lr / lr) * p; biases: no decay.
  np.testing.assert_allclose(updates["head"]["kernel"], [[-0.12], [-0.06]],
                             rtol=1e-6)
  np.testing.assert_allclose(updates["enc"]["dense"]["kernel"],
                             [[-0.11, -0.08], [-0.13, -0.105]], rtol=1e-6)
  np.testing.assert_allclose(updates["head"]["bias"], [-0.1], rtol=1e-6)
  np.testing.assert_allclose(updates["enc"]["dense"]["bias"], [-0.1, -0.1],
                             rtol=1e-6)


@pytest.mark.parametrize("lr", [0.1, 0.5])
def test_weight_decay_follows_schedule_shape_not_lr(lr):
  # Zero gradients: the update is pure decay, -wd * schedule(t) / lr * p.
  # Linear decay over 4 steps: shape 1.0 at step 0 and 0.75 at step 1.
  params = {"w": {"kernel": jnp.array([2.0, -4.0])}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  tx, _ = _make(params, total_steps=4, lr=lr, wd=0.05,
                schedule=dict(decay_type="linear"))
  u0, state = _step(tx, params, zeros)
  np.testing.assert_allclose(u0["w"]["kernel"], [-0.1, 0.2], rtol=1e-6)
  params = optax.apply_updates(params, u0)  # [1.9, -3.8]
  u1, _ = _step(tx, params, zeros, state)
  np.testing.assert_allclose(u1["w"]["kernel"],
                             [-0.05 * 0.75 * 1.9, 0.05 * 0.75 * 3.8], rtol=1e-6)


def test_wd_mults_select_and_scale():
  params = _tree()
  zeros = jax.tree.map(jnp.zeros_like, params)
  tx, _ = _make(params, lr=0.1, wd=0.1,
                wd_mults=[("head/kernel", 2.0), ("enc/.*/bias", 1.0)])
  u, _ = _step(tx, params, zeros)
  np.testing.assert_allclose(u["head"]["kernel"], [[-0.4], [0.8]], rtol=1e-6)
  np.testing.assert_allclose(u["enc"]["dense"]["bias"], [-0.025, 0.1],
                             rtol=1e-6)
  np.testing.assert_array_equal(u["enc"]["dense"]["kernel"], 0.0)
  np.testing.assert_array_equal(u["head"]["bias"], 0.0)


def test_lr_mults_scale_updates_first_match_wins_and_not_wd():
  params = _tree()
  grads = jax.tree.map(jnp.ones_like, params)
  tx, _ = _make(params, lr=1.0, lr_mults=[("head/bias", 0.5), ("head/.*", 0.1)])
  u, _ = _step(tx, params, grads)
  np.testing.assert_allclose(u["head"]["bias"], [-0.5], rtol=1e-6)
  np.testing.assert_allclose(u["head"]["kernel"], [[-0.1], [-0.1]], rtol=1e-6)
  np.testing.assert_allclose(u["enc"]["dense"]["kernel"], -np.ones((2, 2)))
  # Decoupled wd comes after lr_mults: it is not scaled by them.
  zeros = jax.tree.map(jnp.zeros_like, params)
  tx, _ = _make(params, lr=1.0, wd=0.01, lr_mults=[("head/.*", 0.1)])
  u, _ = _step(tx, params, zeros)
  np.testing.assert_allclose(u["head"]["kernel"], [[-0.02], [0.04]], rtol=1e-6)


def test_frozen_params_bit_identical_and_stateless():
  params = _tree()
  tx, _ = _make(params, optax_name="adam", lr=0.1, frozen=["enc/.*"],
                wd=1e-2)
  state = jax.jit(tx.init)(params)
  names = [n for n, _ in params_lib.flatten_with_names(state)]
  assert not any("enc" in n for n in names), names
  # Adam keeps mu and nu only for the two head params (4 elements each).
  sizes = [x.size for x in jax.tree.leaves(state) if x.ndim]
  assert sum(sizes) == 2 * (2 + 1)

  def loss(p):
    return sum(jnp.sum(x ** 2) for x in jax.tree.leaves(p))

  @jax.jit
  def train_step(p, s):
    updates, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, updates), s

  new = params
  for _ in range(3):
    new, state = train_step(new, state)
  for a, b in zip(jax.tree.leaves(params["enc"]), jax.tree.leaves(new["enc"])):
    np.testing.assert_array_equal(np.asarray(a).view(np.uint32),
                                  np.asarray(b).view(np.uint32))
  assert not np.allclose(new["head"]["kernel"], params["head"]["kernel"])


def test_clipping_global_norm():
  params = {"a": jnp.zeros(1), "b": jnp.zeros(1)}
  grads = {"a": jnp.array([3.0]), "b": jnp.array([4.0])}  # norm 5
  tx, _ = _make(params, lr=1.0, grad_clip_norm=1.0)
  u, _ = _step(tx, params, grads)
  np.testing.assert_allclose([u["a"][0], u["b"][0]], [-0.6, -0.8], rtol=1e-6)
  tx, _ = _make(params, lr=1.0, grad_clip_norm=10.0)
  u, _ = _step(tx, params, grads)
  np.testing.assert_allclose([u["a"][0], u["b"][0]], [-3.0, -4.0], rtol=1e-6)


def test_clipping_ignores_frozen_gradients():
  params = {"a": jnp.zeros(1), "b": jnp.zeros(1), "frozen": jnp.zeros(1)}
  grads = {"a": jnp.array([3.0]), "b": jnp.array([4.0]),
           "frozen": jnp.array([1000.0])}
  tx, _ = _make(params, lr=1.0, grad_clip_norm=1.0, frozen=["frozen"])
  u, _ = _step(tx, params, grads)
  np.testing.assert_allclose([u["a"][0], u["b"][0], u["frozen"][0]],
                             [-0.6, -0.8, 0.0], rtol=1e-6)


@pytest.mark.parametrize("name,kwargs,extra", [
    ("adam", dict(b1=0.8, mu_dtype="bfloat16"), {}),
    ("adamw", dict(b2=0.95, eps=1e-6), dict(wd=1e-4)),
    ("sgd", dict(momentum=0.9, nesterov=True), {}),
    ("sgd", {}, {}),
    ("lion", dict(b1=0.95), dict(wd=1e-3)),
    ("adafactor", dict(momentum=0.9, min_dim_size_to_factor=4), {}),
])
def test_every_optimizer_steps_under_jit(name, kwargs, extra):
  rng = np.random.default_rng(0)
  kernel = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
  params = {"layer": {"kernel": kernel, "bias": jnp.zeros(6)},
            "frozen": {"kernel": jnp.ones((3, 3))}}
  tx, _ = _make(params, optax_name=name, optax=kwargs, lr=0.01,
                frozen=["frozen/.*"], grad_clip_norm=1.0,
                schedule=dict(warmup_steps=1, decay_type="cosine"), **extra)
  # The train loop creates the state from shapes, sharded, under jit.
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        params)
  abstract = jax.eval_shape(tx.init, shapes)
  mesh = jax.make_mesh((1,), ("data",))
  state = jax.jit(tx.init, out_shardings=NamedSharding(mesh, P()))(params)
  assert jax.tree.structure(abstract) == jax.tree.structure(state)
  if kwargs.get("mu_dtype") == "bfloat16":
    mu = [x for n, x in params_lib.flatten_with_names(state) if "/mu/" in n]
    assert mu and all(x.dtype == jnp.bfloat16 for x in mu)

  def loss(p):
    return (jnp.sum((p["layer"]["kernel"] - 1.0) ** 2)
            + jnp.sum(p["frozen"]["kernel"]))

  @jax.jit
  def train_step(p, s):
    updates, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, updates), s

  p = params
  for _ in range(4):  # Step 0 has lr 0 (warmup).
    p, state = train_step(p, state)
  assert float(loss(p)) < float(loss(params))
  np.testing.assert_array_equal(p["frozen"]["kernel"],
                                params["frozen"]["kernel"])


def test_adafactor_factors_large_matrices():
  params = {"big": {"kernel": jax.ShapeDtypeStruct((256, 128), jnp.float32)},
            "small": {"bias": jax.ShapeDtypeStruct((128,), jnp.float32)}}
  tx, _ = _make(params, optax_name="adafactor")
  state = jax.eval_shape(tx.init, params)
  shapes = sorted(x.shape for x in jax.tree.leaves(state))
  # big: row and column statistics (256,) and (128,), not 256 * 128 numbers;
  # small: a full (128,) second moment; (1,) placeholders; step counters.
  assert (256, 128) not in shapes
  assert (256,) in shapes and shapes.count((128,)) == 2


# --- Errors ------------------------------------------------------------------


@pytest.mark.parametrize("overrides,message", [
    (dict(optax_name="adamm"),
     r"config.optax_name.*'adamm'.*'adam'.*adafactor"),
    (dict(optax_name=None), r"config.optax_name.*Known optimizers"),
    (dict(optax=dict(weight_decay=0.1)),
     r"config.optax.weight_decay.*config.wd"),
    (dict(optax_name="adam", optax=dict(beta1=0.9)), r"config.optax.beta1"),
    (dict(optax=3), r"config.optax must be a dict"),
    (dict(optax=dict(nesterov=True)), r"config.optax.momentum"),
    (dict(optax_name="adam", optax=dict(mu_dtype="bfloat17")),
     r"config.optax.mu_dtype.*bfloat17"),
    (dict(lr=None), r"config.lr"),
    (dict(lr="0.1"), r"config.lr must be a number"),
    (dict(lr=-1.0), r"config.lr must be a non-negative"),
    (dict(schedule=dict(decay_type="cosin")),
     r"config.schedule.decay_type.*'cosin'.*cosine"),
    (dict(schedule=dict(warmup_stesp=5)), r"config.schedule.warmup_stesp"),
    (dict(schedule=dict(warmup_steps=5, warmup_percent=1)),
     r"only one of warmup_steps, warmup_percent"),
    (dict(schedule=dict(warmup_epochs=1)), r"config.schedule.warmup_epochs"),
    (dict(schedule=dict(decay_type="cosine", linear_end=0.1)),
     r"config.schedule.linear_end"),
    (dict(schedule=dict(decay_type="constant", end_value=0.1)),
     r"config.schedule.end_value"),
    (dict(schedule=dict(decay_type="cosine", timescale=10)),
     r"config.schedule.timescale"),
    (dict(schedule=dict(decay_type="rsqrt", timescale=0)),
     r"config.schedule.timescale must be a positive"),
    (dict(optax_name="adamw"), r"config.wd is not set"),
    (dict(wd=0.1, lr=0.0), r"config.wd .*config.lr is 0"),
    (dict(wd=-0.1), r"config.wd"),
    (dict(grad_clip_norm=0.0), r"config.grad_clip_norm"),
    (dict(lr_mults=[("head/kernal", 0.1)]),
     r"config.lr_mults: regex 'head/kernal' matches no parameter.*head/kernel"),
    (dict(wd_mults=[(".*/kernel", 1.0), ("head/bais", 1.0)]),
     r"config.wd_mults: regex 'head/bais' matches no parameter"),
    (dict(frozen=["enc"]), r"config.frozen: regex 'enc' matches no parameter"),
    (dict(frozen=[3]), r"config.frozen\[0\] must be a regex string"),
    (dict(lr_mults="head/.*"), r"config.lr_mults must be a list"),
    (dict(lr_mults=[("head/.*",)]),
     r"config.lr_mults\[0\] must be a \(regex, value\)"),
    (dict(lr_mults=[("head/(", 1.0)]), r"config.lr_mults\[0\]: bad regex"),
    (dict(lr_mults=[("head/.*", "x")]),
     r"config.lr_mults multiplier for 'head/.\*'"),
])
def test_config_errors_name_the_culprit(overrides, message):
  with pytest.raises(ValueError, match=message):
    _make(_tree(), **overrides)


_TOTAL = 20


def test_warmup_longer_than_the_run_warms_up_over_the_run_and_says_so(caplog):
  # A quick run of a long recipe (--config.total_steps=3) must just run.
  _, short = _make(_tree(), total_steps=_TOTAL,
                   schedule=dict(warmup_steps=500, decay_type="constant"))
  _, whole = _make(_tree(), total_steps=_TOTAL,
                   schedule=dict(warmup_steps=_TOTAL, decay_type="constant"))
  assert [float(short(s)) for s in range(_TOTAL + 1)] == [
      float(whole(s)) for s in range(_TOTAL + 1)]
  lines = [r.getMessage() for r in caplog.records if "longer than the whole run" in r.getMessage()]
  assert lines == [f"config.schedule.warmup_steps=500 is 500 steps, longer than the whole "
                   f"run ({_TOTAL} steps): warmup over the whole run instead"]


def test_default_wd_mults_may_match_nothing():
  params = {"scale": jnp.ones(2)}  # No kernels at all: no decay, no error.
  tx, _ = _make(params, wd=0.1)
  u, _ = _step(tx, params, {"scale": jnp.zeros(2)})
  np.testing.assert_array_equal(u["scale"], 0.0)


def test_bad_total_steps():
  with pytest.raises(ValueError, match="total_steps"):
    _make(_tree(), total_steps=0)


def test_weight_decay_without_params_fails_clearly():
  params = _tree()
  tx, _ = _make(params, wd=0.1)
  state = tx.init(params)
  with pytest.raises(ValueError, match=r"config.wd.*needs the params"):
    tx.update(params, state)


# --- Sharding the state like the params ---------------------------------------


@pytest.mark.parametrize("name,copies", [
    ("adam", ["mu", "nu"]), ("sgd", ["trace"]), ("adafactor", [])])
def test_state_like_params_with_frozen_and_factored_state(name, copies):
  params = {"enc": {"kernel": jax.ShapeDtypeStruct((4, 4), jnp.float32)},
            "head": {"kernel": jax.ShapeDtypeStruct((256, 128), jnp.float32),
                     "bias": jax.ShapeDtypeStruct((128,), jnp.float32)}}
  optax_kw = dict(momentum=0.9) if name == "sgd" else {}
  tx, _ = _make(params, optax_name=name, optax=optax_kw, frozen=["enc/.*"])
  state = jax.eval_shape(tx.init, params)
  values = {"enc": {"kernel": "E"}, "head": {"kernel": "K", "bias": "B"}}
  out = dict(params_lib.flatten_with_names(
      optim.state_like_params(state, params, values, "R")))
  assert "E" not in out.values()  # Frozen: no state at all.
  for n, v in out.items():
    last = n.split("/")[-3:]
    if last[0] in copies:  # A param-shaped moment of head/*.
      assert v == {"kernel": "K", "bias": "B"}[last[-1]], n
    elif n.endswith("v/head/bias"):  # Adafactor: unfactored 1-D moment.
      assert v == "B", n
    else:  # Counters, factored row/col statistics, (1,) placeholders.
      assert v == "R", n
  assert sum(v == "K" for v in out.values()) == len(copies)
  if name == "adafactor":
    assert out[next(n for n in out if n.endswith("v_row/head/kernel"))] == "R"


def test_state_like_params_as_jit_out_shardings():
  params = _tree()
  tx, _ = _make(params, optax_name="adam", frozen=["enc/.*"])
  mesh = jax.make_mesh((1,), ("data",))
  shardings = jax.tree.map(lambda p: NamedSharding(mesh, P(*([None] * p.ndim))),
                           params)
  out = optim.state_like_params(jax.eval_shape(tx.init, params), params,
                                shardings, NamedSharding(mesh, P()))
  state = jax.jit(tx.init, out_shardings=out)(params)
  mu = state.inner_states["trainable"].inner_state[0].mu
  assert mu["head"]["kernel"].sharding == shardings["head"]["kernel"]
