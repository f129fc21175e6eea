"""The one set-up every entry point shares: config -> mesh, model, task, state, steps.

    exp = experiment.build(config, input_spec={"image": jax.ShapeDtypeStruct((224, 224, 3),
                                                                        jnp.float32)},
                           total_steps=1000, num_examples=1_281_167)
    state = exp.init_state()            # or restore onto exp.abstract_state
    step_fn = exp.jit_train_step()      # (state, batch, step, rng) -> (state, metrics)
    logits = exp.predict_fn(state["params"], batch)

`train.py`, `eval.py` and the tools build their experiment here, so the
sequence mesh -> data axes -> model -> task -> sharding -> params -> optimizer
-> state is written once. `build` materialises nothing: parameters and
optimizer state exist as abstract arrays with their shardings until
`init_params`/`init_state` creates them already sharded (never replicated
first), or a checkpoint is restored onto `abstract_state`.

Input shapes come from `input_spec` (one example per batch key, no batch
dimension): the training pipeline's element spec, a checkpoint's recorded
spec (eval.py), or a caller's declaration. Never from a peeked batch.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn

from big_vision_like import config as config_lib
from big_vision_like import errors
from big_vision_like import metrics as metrics_lib
from big_vision_like import optim
from big_vision_like import registry
from big_vision_like import sharding as sharding_lib
from big_vision_like import tasks

InputSpec = Mapping[str, jax.ShapeDtypeStruct]


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
  """`MODELS[config.model_name](**config.model)`, with errors naming config keys."""
  cls = registry.MODELS.get(config.model_name)
  kwargs = dict(config.get("model") or {})
  if config.get("num_classes") is not None:
    kwargs.setdefault("num_classes", config.num_classes)
  if dataclasses.is_dataclass(cls):
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
      raise errors.ConfigError(
          f"config.model.{unknown[0]} is not a field of model {config.model_name!r}; "
          f"known fields: {', '.join(sorted(fields))}")
  try:
    return cls(**kwargs)
  except (TypeError, ValueError) as e:
    raise errors.ConfigError(f"config.model ({config.model_name}): {e}") from e


def spec_to_json(spec: InputSpec) -> dict[str, list]:
  """{key: [shape, dtype]}: an input spec as a checkpoint records it."""
  return {k: [list(v.shape), jnp.dtype(v.dtype).name] for k, v in spec.items()}


def spec_from_json(data: Mapping[str, Any]) -> dict[str, jax.ShapeDtypeStruct]:
  return {k: jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))
          for k, (shape, dtype) in data.items()}


def _uses_logical(strategy) -> bool:
  return any(str(rule).partition("(")[0].strip() == "logical" for _, rule in strategy)


@dataclasses.dataclass
class Experiment:
  """Everything the entry points share; built by `build`.

  `abstract_params`/`abstract_state` are `jax.ShapeDtypeStruct`s carrying
  their shardings (restore checkpoints onto them); `tx`, `schedule` and the
  state fields are None when built without `total_steps` (evaluation only).
  """
  config: ml_collections.ConfigDict  # with every default filled in
  mesh: jax.sharding.Mesh
  data_axes: tuple[str, ...]
  batch_sharding: jax.sharding.NamedSharding
  model: nn.Module
  task: tasks.Task
  input_spec: dict[str, jax.ShapeDtypeStruct]  # one example per batch key
  abstract_params: Any
  param_shardings: Any
  tx: optax.GradientTransformation | None = None
  schedule: Callable[[Any], Any] | None = None
  abstract_state: Any = None
  state_shardings: Any = None

  # -- Creating parameters and state.

  def _dummy_inputs(self) -> list[jax.Array]:
    out = []
    for key in self.task.model_inputs:
      if key not in self.input_spec:
        raise errors.ConfigError(
            f"task {self.task.name!r} feeds batch key {key!r} to the model, but the "
            f"inputs hold only {sorted(self.input_spec)}: check config.input.pp")
      spec = self.input_spec[key]
      dtype = jnp.float32 if spec.dtype == jnp.uint8 else spec.dtype  # see device_images
      out.append(jnp.zeros((1, *spec.shape), dtype))
    return out

  def _init_fn(self, rng: jax.Array) -> Any:
    params = self.model.init({"params": rng}, *self._dummy_inputs(), train=False)["params"]
    return self.task.init_params(params)

  def init_params(self, rng: jax.Array | None = None) -> Any:
    """Fresh params, created with their final sharding. Default rng: from the seed."""
    if rng is None:
      rng = self.rngs()[0]
    return jax.jit(self._init_fn, out_shardings=self.param_shardings)(rng)

  def init_state(self, params: Any = None) -> dict[str, Any]:
    """{"params", "opt"}, created sharded (params: `init_params()` unless given)."""
    if self.tx is None:
      raise ValueError("init_state: this experiment was built without an optimizer "
                       "(pass total_steps to experiment.build)")
    params = self.init_params() if params is None else params
    opt = jax.jit(self.tx.init, out_shardings=self.state_shardings["opt"])(params)
    return {"params": params, "opt": opt}

  def rngs(self) -> tuple[jax.Array, jax.Array]:
    """(init rng, dropout rng) from `config.seed`."""
    return tuple(jax.random.split(jax.random.key(self.config.seed)))

  # -- Steps.

  def _with_rules(self, fn: Callable) -> Callable:
    """The model's activation constraints from config.sharding_rules (no-op without)."""
    return sharding_lib.with_logical_rules(fn, self.mesh, self.config.sharding_rules,
                                           self.data_axes)

  @functools.cached_property
  def predict_fn(self) -> Callable[[Any, dict], Any]:
    """(params, batch) -> the task's prediction (logits, or embeddings).

    Its attribute `representation` is the same path to the frozen features
    [B, D] (pre-logits, or a two-tower model's image embedding) that the
    few-shot evaluator probes: evaluators only ever get `predict_fn`.
    """
    value_range = self.config.device_value_range

    def with_images(batch):
      if batch.get("image") is not None:
        batch = {**batch, "image": tasks.device_images(batch["image"], value_range)}
      return batch

    def predict(params, batch):
      return self.task.predict(self.model, params, with_images(batch))

    def represent(params, batch):
      return self.task.represent(self.model, params, with_images(batch))
    fn = self._with_rules(predict)
    fn.representation = self._with_rules(represent)
    return fn

  def train_step_fn(self) -> Callable:
    """The un-jitted train step (see `make_train_step`)."""
    config = self.config
    frozen = None
    if config.frozen:
      frozen = optim.frozen_mask(config, self.abstract_params)
    return make_train_step(
        self.task, self.task.make_loss(self.model, self.mesh, self.data_axes), self.tx,
        self.schedule, config.grad_accum_steps, frozen=frozen,
        value_range=config.device_value_range)

  def jit_train_step(self, batch_keys: Any = None) -> Callable:
    """The sharded, state-donating jitted train step.

    `batch_keys`: the keys of the device batch (default: those of input_spec).
    """
    if self.tx is None:
      raise ValueError("jit_train_step: built without an optimizer (pass total_steps)")
    replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    keys = self.input_spec if batch_keys is None else batch_keys
    batch_shardings = {k: self.batch_sharding for k in keys}
    return jax.jit(self._with_rules(self.train_step_fn()),
                   in_shardings=(self.state_shardings, batch_shardings, replicated,
                                 replicated),
                   out_shardings=(self.state_shardings, replicated), donate_argnums=0)

  def forward_flops_per_example(self) -> float | None:
    """Forward FLOPs of one example (XLA cost analysis), for MFU and GFLOPs/image."""
    dummies = [jax.ShapeDtypeStruct(d.shape, d.dtype) for d in self._dummy_inputs()]
    return metrics_lib.forward_flops(
        lambda p, *x: self.model.apply({"params": p}, *x, train=False),
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), self.abstract_params),
        *dummies)


def build(config: ml_collections.ConfigDict, *, input_spec: InputSpec,
          total_steps: int | None = None, num_examples: int | None = None,
          batch_size: int | None = None,
          devices: Any = None) -> Experiment:
  """Builds the experiment of `config` (see the module docstring).

  Args:
    config: a config; defaults are filled in here (call `config.resolve` first
      to check it).
    input_spec: {batch key: ShapeDtypeStruct of one example}.
    total_steps: the run's length; with it, the optimizer, schedule and
      abstract train state are built too.
    num_examples: training examples per epoch (for `_epochs` durations).
    batch_size: the global batch for `_examples` durations (default
      `config.input.batch_size`).
    devices: the devices of the mesh (default: all).
  """
  config = config_lib.with_defaults(config)
  mesh = sharding_lib.make_mesh(config.mesh, devices, dcn=config.mesh_dcn)
  data_axes = sharding_lib.data_axes(mesh, config.data_axes)
  model = build_model(config)
  task = tasks.for_config(config)
  spec = {k: jax.ShapeDtypeStruct(tuple(v.shape), jnp.dtype(v.dtype))
          for k, v in input_spec.items()}
  exp = Experiment(config=config, mesh=mesh, data_axes=data_axes,
                   batch_sharding=sharding_lib.batch_sharding(mesh, data_axes),
                   model=model, task=task, input_spec=spec, abstract_params=None,
                   param_shardings=None)
  missing = [k for k in task.batch_keys if k not in spec]
  if missing and total_steps is not None:  # Training needs the targets too.
    raise errors.ConfigError(
        f"config.input.pp must produce {missing[0]!r} for task {task.name!r} (model "
        f"{config.model_name!r}); it produced {sorted(spec)}")
  if "image" in spec and spec["image"].dtype == jnp.uint8:
    tasks.device_images(jnp.zeros((), jnp.uint8), config.device_value_range)  # fails early

  strategy = sharding_lib.strategy_from_config(config)
  rng = jax.random.key(0)  # Shapes and logical names do not depend on it.
  abstract = jax.eval_shape(exp._init_fn, rng)  # pylint: disable=protected-access
  logical = None
  if _uses_logical(strategy):
    logical = sharding_lib.logical_axes(lambda: exp._init_fn(rng))  # pylint: disable=protected-access
  exp.param_shardings = sharding_lib.param_shardings(
      abstract, mesh, strategy, logical_axes=logical, rules=config.sharding_rules)
  exp.abstract_params = _with_shardings(abstract, exp.param_shardings)
  if total_steps is None:
    return exp

  exp.tx, exp.schedule = optim.make_optimizer(
      config, exp.abstract_params, total_steps=total_steps,
      batch_size=batch_size or config.input.batch_size, num_examples=num_examples)
  abstract_state = jax.eval_shape(lambda p: {"params": p, "opt": exp.tx.init(p)},
                                  exp.abstract_params)
  like = exp.param_shardings if _uses_logical(strategy) else None
  exp.state_shardings = sharding_lib.state_shardings(
      abstract_state, mesh, strategy, rules=config.sharding_rules, like_params=like)
  exp.abstract_state = _with_shardings(abstract_state, exp.state_shardings)
  return exp


def _with_shardings(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def make_train_step(task: tasks.Task, loss_fn: Callable, tx: optax.GradientTransformation,
                    schedule: Callable, accum_steps: int, *, frozen: Any = None,
                    value_range: Any = None) -> Callable:
  """(state, batch, step, base_rng) -> (state, metrics); state = {"params", "opt"}.

  `loss_fn(params, batch, rng) -> (loss, extra metrics)` comes from the task.
  The task's whole-batch augmentation (Mixup/CutMix) uses a key that depends
  only on (base_rng, step) and runs before any split into micro-batches.
  """

  def loss_and_grads(params, batch, rng):
    def loss_of(params):
      if frozen is not None:  # no backward pass through frozen parameters
        params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p,
                              params, frozen)
      return loss_fn(params, batch, rng)
    (loss, extra), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    return loss, grads, extra

  def step_fn(state, batch, step, base_rng):
    rng = jax.random.fold_in(base_rng, step)
    batch = {k: batch[k] for k in task.batch_keys}
    batch["image"] = tasks.device_images(batch["image"], value_range)
    batch = task.augment(batch, base_rng, step)
    if accum_steps == 1:
      loss, grads, extra = loss_and_grads(state["params"], batch, rng)
    else:
      # Micro-batches: example i goes to micro-batch i % accum_steps, which keeps
      # every micro-batch evenly spread over the data-sharded batch dimension.
      def split(x):
        x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)
      def body(carry, xs):
        i, micro = xs
        l, g, _ = loss_and_grads(state["params"], micro, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (l, g)), None
      zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state["params"]))
      (loss, grads), _ = jax.lax.scan(
          body, zeros, (jnp.arange(accum_steps), jax.tree.map(split, batch)))
      loss, grads = jax.tree.map(lambda x: x / accum_steps, (loss, grads))
      extra = {}
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"train/loss": loss, "train/grad_norm": optax.global_norm(grads),
               "train/lr": schedule(step), **extra}
    return {"params": params, "opt": opt}, metrics

  return step_fn
