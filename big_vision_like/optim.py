"""The optax optimizer and learning-rate schedule, built from the config.

A config says which optimizer scales the gradients (`optax_name`, `optax`),
how the learning rate evolves (`lr`, `schedule`), and which parameters get
special treatment through regex groups (`lr_mults`, `wd_mults`, `frozen`).
This module turns those keys into one `optax.GradientTransformation`:

  clip (grad_clip_norm) -> optimizer scaling -> lr_mults -> decoupled wd
  -> multiply by -schedule(step)

Frozen parameters are routed through `optax.set_to_zero()` with
`optax.multi_transform`, so they get exactly zero updates and no optimizer
state (a frozen tower costs no optimizer memory).

Weight decay is decoupled (Loshchilov & Hutter): the update of a decayed
parameter gets `-wd * mult * schedule(step) / lr * param`, i.e. the decay
follows the *shape* of the schedule but not the base learning rate.

Every regex in `lr_mults`, `wd_mults` and `frozen` must match at least one
parameter: a typo would otherwise silently do nothing.

`state_like_params` maps param shardings onto the optimizer state (whose
leaves do not always have the params' shapes, e.g. Adafactor's factored
statistics), for `jax.jit(tx.init, out_shardings=...)`.
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from big_vision_like import durations
from big_vision_like import params as params_lib
from big_vision_like import registry

Schedule = Callable[[Any], jax.Array]

DECAY_TYPES = ("constant", "cosine", "linear", "rsqrt")
# Keys allowed in `config.schedule` (warmup/cooldown in any duration unit).
_SCHEDULE_KEYS = frozenset(
    ["decay_type", "end_value", "linear_end", "timescale"]
    + [f"{p}_{u}" for p in ("warmup", "cooldown") for u in durations.UNITS])

DEFAULT_WD_MULTS = ((".*/kernel", 1.0),)
_FROZEN, _TRAINABLE = "frozen", "trainable"


# ----------------------------------------------------------------------------
# Small helpers for reading the config.


def _to_dict(value: Any, where: str) -> dict[str, Any]:
  """ConfigDict / mapping / None -> plain dict (for kwargs and sub-configs)."""
  if value is None:
    return {}
  if hasattr(value, "to_dict"):
    return value.to_dict()
  if isinstance(value, Mapping):
    return dict(value)
  raise ValueError(f"{where} must be a dict, got {value!r}")


def _number(value: Any, where: str, *, positive: bool = False) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"{where} must be a number, got {value!r}")
  if value < 0 or (positive and value == 0) or not math.isfinite(value):
    kind = "positive" if positive else "non-negative"
    raise ValueError(f"{where} must be a {kind} finite number, got {value!r}")
  return float(value)


def _dtype(value: Any, where: str) -> Any:
  if value is None:
    return None
  try:
    return jnp.dtype(value)
  except TypeError:
    raise ValueError(f"{where}: unknown dtype {value!r}") from None


def _rules(config: Any, key: str, default: Sequence[Any] = ()) -> list[Any]:
  value = config.get(key, None)
  if value is None:
    return list(default)
  if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
    raise ValueError(f"config.{key} must be a list, got {value!r}")
  return list(value)


# ----------------------------------------------------------------------------
# Learning-rate schedule.


def make_schedule(lr: float, schedule_config: Any, *, total_steps: int,
                  batch_size: int, num_examples: int | None = None) -> Schedule:
  """Returns `step -> learning rate` for `config.lr` and `config.schedule`.

  Linear warmup from 0 to `lr` over the warmup steps, then `decay_type`:
    constant: `lr`.
    cosine:   half a cosine from `lr` to `end_value * lr` at `total_steps`.
    linear:   from `lr` to `linear_end * lr` (or `end_value`) at `total_steps`.
    rsqrt:    `lr / sqrt(1 + (step - warmup) / timescale)` (timescale in steps).
  An optional cooldown (`cooldown_steps|epochs|examples|percent`) multiplies the
  result by a linear ramp that reaches 0 at `total_steps`.
  """
  sched = _to_dict(schedule_config, "config.schedule")
  for key in sched:
    if key not in _SCHEDULE_KEYS:
      raise ValueError(f"Unknown key config.schedule.{key}. "
                       f"Known keys: {', '.join(sorted(_SCHEDULE_KEYS))}.")
  decay_type = sched.get("decay_type", "constant")
  if decay_type not in DECAY_TYPES:
    raise ValueError(
        "config.schedule.decay_type: "
        + registry.unknown_name_message("decay_type", decay_type, DECAY_TYPES))
  if not isinstance(total_steps, int) or total_steps < 1:
    raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")

  def steps_of(prefix):
    steps = durations.to_steps(
        sched, prefix, batch_size=batch_size, num_examples=num_examples,
        total_steps=total_steps, default=0, where="config.schedule")
    if steps > total_steps:
      # A quick run of a long recipe (--config.total_steps=3): run it, say so.
      key = durations.which_set(sched, prefix)[0]
      logging.warning("config.schedule.%s=%r is %d steps, longer than the whole run "
                      "(%d steps): %s over the whole run instead", key, sched[key], steps,
                      total_steps, prefix)
      steps = total_steps
    return steps

  warmup = steps_of("warmup")
  cooldown = steps_of("cooldown")

  if "linear_end" in sched and decay_type != "linear":
    raise ValueError("config.schedule.linear_end only applies to decay_type "
                     f"'linear', not {decay_type!r}; use end_value")
  if "linear_end" in sched and "end_value" in sched:
    raise ValueError("config.schedule: set only one of linear_end, end_value")
  end_key = "linear_end" if "linear_end" in sched else "end_value"
  end = _number(sched.get(end_key, 0.0), f"config.schedule.{end_key}")
  if end_key in sched and decay_type not in ("linear", "cosine"):
    raise ValueError(f"config.schedule.{end_key} only applies to decay_type "
                     f"'linear' or 'cosine', not {decay_type!r}")
  if "timescale" in sched and decay_type != "rsqrt":
    raise ValueError("config.schedule.timescale only applies to decay_type "
                     f"'rsqrt', not {decay_type!r}")
  timescale = _number(sched.get("timescale", 10_000),
                      "config.schedule.timescale", positive=True)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    # Fraction of the post-warmup phase that has elapsed, in [0, 1].
    decay_steps = max(1, total_steps - warmup)
    progress = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
    if decay_type == "constant":
      mult = jnp.ones_like(step)
    elif decay_type == "cosine":
      mult = end + (1.0 - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    elif decay_type == "linear":
      mult = end + (1.0 - end) * (1.0 - progress)
    else:  # rsqrt
      mult = jax.lax.rsqrt(1.0 + jnp.maximum(step - warmup, 0.0) / timescale)
    if warmup:
      mult = mult * jnp.minimum(1.0, step / warmup)
    if cooldown:
      mult = mult * jnp.clip((total_steps - step) / cooldown, 0.0, 1.0)
    return lr * mult

  return schedule


# ----------------------------------------------------------------------------
# The optimizers: each turns gradients into a (positive) direction; the
# learning rate and the sign are applied later in the chain.


def _adam(b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, mu_dtype=None,
          nesterov=False):
  return optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root,
                             mu_dtype=mu_dtype, nesterov=nesterov)


def _sgd(momentum=None, nesterov=False, mu_dtype=None):
  if not momentum:  # Plain SGD: no state at all.
    if nesterov:
      raise ValueError("config.optax.nesterov=True needs config.optax.momentum")
    return optax.identity()
  return optax.trace(decay=momentum, nesterov=nesterov,
                     accumulator_dtype=mu_dtype)


def _lion(b1=0.9, b2=0.99, mu_dtype=None):
  return optax.scale_by_lion(b1=b1, b2=b2, mu_dtype=mu_dtype)


def _adafactor(decay_rate=0.8, decay_offset=0, min_dim_size_to_factor=128,
               eps=1e-30, factored=True, clipping_threshold=1.0, momentum=None,
               mu_dtype=None, multiply_by_parameter_scale=False):
  # Like optax.adafactor, but without the learning rate and the sign (applied
  # later by our chain). `multiply_by_parameter_scale` defaults to False so
  # that `config.lr` is an absolute step size, as for the other optimizers.
  # Second moments of matrices whose two largest dims are both at least
  # `min_dim_size_to_factor` are kept as row and column vectors; all other
  # params keep a full-size second moment.
  parts = [optax.scale_by_factored_rms(
      factored=factored, decay_rate=decay_rate, step_offset=decay_offset,
      min_dim_size_to_factor=min_dim_size_to_factor, epsilon=eps)]
  if clipping_threshold is not None:
    parts.append(optax.clip_by_block_rms(clipping_threshold))
  if multiply_by_parameter_scale:
    parts.append(optax.scale_by_param_block_rms())
  if momentum is not None:
    parts.append(optax.ema(momentum, debias=False,
                           accumulator_dtype=mu_dtype or jnp.float32))
  return optax.chain(*parts)


# "adamw" is Adam: decoupled weight decay comes from `config.wd` for every
# optimizer; the alias exists because configs are often written that way.
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": _adam, "adamw": _adam, "sgd": _sgd, "lion": _lion,
    "adafactor": _adafactor,
}


def _optimizer_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
  allowed = inspect.signature(OPTIMIZERS[name]).parameters
  for key in kwargs:
    if key not in allowed:
      hint = " (use config.wd for weight decay)" if "decay" in key else ""
      raise ValueError(
          f"Unknown key config.optax.{key} for optimizer {name!r}{hint}. "
          f"Known keys: {', '.join(allowed)}.")
  if "mu_dtype" in kwargs:
    kwargs["mu_dtype"] = _dtype(kwargs["mu_dtype"], "config.optax.mu_dtype")
  return kwargs


# ----------------------------------------------------------------------------
# Per-parameter-group transformations (stateless).


def _per_leaf(tree: Any, rules: Sequence[Any], default: Any, what: str) -> Any:
  return params_lib.match_rules(tree, rules, default, what=what)


def scale_by_rules(rules: Sequence[Any], what: str = "lr_mults"
                   ) -> optax.GradientTransformation:
  """Multiplies each update by the value of the first fully matching regex."""
  rules = list(rules)

  def update_fn(updates, state, params=None):
    del params
    mults = _per_leaf(updates, rules, 1.0, what)
    scaled = jax.tree.map(lambda u, m: u if m == 1.0 else u * m, updates, mults)
    return scaled, state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def add_decoupled_weight_decay(wd_over_lr: float, rules: Sequence[Any]
                               ) -> optax.GradientTransformation:
  """Adds `wd_over_lr * mult * param` to the updates of the selected params.

  Placed just before the `-schedule(step)` scaling, this yields the decoupled
  decay `-wd * mult * schedule(step) / lr * param`.
  """
  rules = list(rules)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("weight decay (config.wd) needs the params: call "
                       "tx.update(grads, opt_state, params)")
    mults = _per_leaf(params, rules, 0.0, "wd_mults")

    def decay(u, p, m):
      if not m:
        return u
      return u + (wd_over_lr * m * p).astype(u.dtype)

    return jax.tree.map(decay, updates, params, mults), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


# ----------------------------------------------------------------------------
# Everything together.


def _read_param_rules(params: Any, config: Any) -> tuple[list, list, list]:
  """Reads lr_mults / wd_mults / frozen; fails on a regex matching nothing."""
  lr_mults = _rules(config, "lr_mults")
  wd_mults = _rules(config, "wd_mults", DEFAULT_WD_MULTS)
  frozen = _rules(config, "frozen")
  for i, pattern in enumerate(frozen):
    if not isinstance(pattern, str):
      raise ValueError(
          f"config.frozen[{i}] must be a regex string, got {pattern!r}")
  # Validates the (regex, value) pairs and their regexes.
  _per_leaf(params, lr_mults, 1.0, "config.lr_mults")
  _per_leaf(params, wd_mults, 0.0, "config.wd_mults")
  _per_leaf(params, [(p, True) for p in frozen], False, "config.frozen")

  checks = [("lr_mults", [r[0] for r in lr_mults]), ("frozen", frozen)]
  if config.get("wd_mults", None) is not None:  # The default may match nothing.
    checks.append(("wd_mults", [r[0] for r in wd_mults]))
  names = [n for n, _ in params_lib.flatten_with_names(params)]
  for key, patterns in checks:
    for pattern in params_lib.unused_rules(params, patterns):
      shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
      raise ValueError(
          f"config.{key}: regex {pattern!r} matches no parameter (regexes "
          f"must match the full path). Parameters: {shown}")
  for i, (pattern, mult) in enumerate(lr_mults + wd_mults):
    key = "lr_mults" if i < len(lr_mults) else "wd_mults"
    _number(mult, f"config.{key} multiplier for {pattern!r}")
  return lr_mults, wd_mults, frozen


def frozen_mask(config: Any, params: Any) -> Any:
  """Pytree of bools: True for parameters matching a `config.frozen` regex.

  The train step stops gradients at these, so a frozen tower costs no
  backward pass (LiT trains its text tower at about forward-only cost).
  """
  frozen = _rules(config, "frozen")
  return _per_leaf(params, [(p, True) for p in frozen], False, "config.frozen")


def make_optimizer(config: Any, params: Any, *, total_steps: int,
                   batch_size: int, num_examples: int | None
                   ) -> tuple[optax.GradientTransformation, Schedule]:
  """Builds the optax chain and the lr schedule from `config`.

  Args:
    config: ConfigDict with `optax_name`, `optax`, `lr`, `schedule`, `wd`,
      `wd_mults`, `lr_mults`, `frozen`, `grad_clip_norm` (see module doc).
    params: the parameter tree, as arrays or `jax.ShapeDtypeStruct`s (only the
      paths are used, so `tx.init` can later run under `jax.jit`).
    total_steps: length of the run, for decaying schedules and `_percent`.
    batch_size: global batch size, for `_examples` / `_epochs` durations.
    num_examples: training examples per epoch (None if unknown).
  Returns:
    `(tx, schedule)`: the transformation (call `tx.update(grads, state,
    params)`) and `step -> learning rate` for logging.
  """
  name = config.get("optax_name", None)
  if name not in OPTIMIZERS:
    raise ValueError("config.optax_name: " + registry.unknown_name_message(
        "optimizer", name, OPTIMIZERS))
  kwargs = _to_dict(config.get("optax", None), "config.optax")
  kwargs = _optimizer_kwargs(name, kwargs)

  if config.get("lr", None) is None:
    raise ValueError("config.lr (the base learning rate) is not set")
  lr = _number(config.get("lr"), "config.lr")
  schedule = make_schedule(lr, config.get("schedule", None),
                           total_steps=total_steps, batch_size=batch_size,
                           num_examples=num_examples)

  wd = config.get("wd", None)
  if name == "adamw" and wd is None:
    raise ValueError("config.optax_name='adamw' but config.wd is not set "
                     "(use 'adam' for no weight decay, or set config.wd)")
  wd = _number(wd or 0.0, "config.wd")
  if wd and not lr:
    raise ValueError("config.wd is set but config.lr is 0: decoupled weight "
                     "decay is scaled by schedule(step) / lr")

  clip = config.get("grad_clip_norm", None)
  if clip is not None:
    clip = _number(clip, "config.grad_clip_norm", positive=True)

  lr_mults, wd_mults, frozen = _read_param_rules(params, config)

  chain = []
  if clip is not None:
    # Inside the trainable group: gradients of frozen params do not count.
    chain.append(optax.clip_by_global_norm(clip))
  chain.append(OPTIMIZERS[name](**kwargs))
  if lr_mults:
    chain.append(scale_by_rules(lr_mults))
  if wd:
    chain.append(add_decoupled_weight_decay(wd / lr, wd_mults))
  chain.append(optax.scale_by_schedule(lambda step: -schedule(step)))
  tx = optax.chain(*chain)

  if frozen:
    frozen_rules = [(p, _FROZEN) for p in frozen]
    tx = optax.multi_transform(
        {_TRAINABLE: tx, _FROZEN: optax.set_to_zero()},
        lambda tree: _per_leaf(tree, frozen_rules, _TRAINABLE, "config.frozen"))
  return tx, schedule


def state_like_params(state: Any, params: Any, values: Any, default: Any
                      ) -> Any:
  """Per optimizer-state leaf: the value of the param it mirrors, or `default`.

  Meant for sharding the optimizer state like the parameters: pass the param
  shardings as `values` and a replicated sharding as `default`. A state leaf
  mirrors a param when the param's path ends its own path (".../mu/head/kernel"
  mirrors "head/kernel") and the shapes agree. Leaves with other shapes (step
  counters, Adafactor's factored row/column statistics and (1,) placeholders)
  get `default`. Unlike `optax.tree_map_params`, this also works for states of
  frozen setups, where `optax.multi_transform` leaves `MaskedNode`s in place
  of frozen params.

  Args:
    state: the optimizer state, as arrays or `jax.ShapeDtypeStruct`s (e.g.
      `jax.eval_shape(tx.init, params)`).
    params: the parameter tree (arrays or `jax.ShapeDtypeStruct`s).
    values: a tree with the structure of `params` (leaves may be e.g.
      `NamedSharding`s or `PartitionSpec`s).
    default: the value for every other state leaf.
  Returns:
    A tree with the structure of `state`.
  """
  names = [n for n, _ in params_lib.flatten_with_names(params)]
  param_leaves = jax.tree.leaves(params)
  value_leaves = jax.tree.structure(params).flatten_up_to(values)
  by_name = {n: (tuple(p.shape), v)
             for n, p, v in zip(names, param_leaves, value_leaves)}

  def pick(path, leaf):
    parts = params_lib.path_to_str(path).split("/")
    shape = tuple(getattr(leaf, "shape", ()))
    for i in range(len(parts)):  # Longest matching suffix first.
      hit = by_name.get("/".join(parts[i:]))
      if hit is not None and hit[0] == shape:
        return hit[1]
    return default

  return jax.tree_util.tree_map_with_path(pick, state)
