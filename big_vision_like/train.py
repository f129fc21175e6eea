"""The one training loop: config -> data -> model -> sharded jit steps -> ckpts/metrics/evals.

Usage:
  python -m big_vision_like.train --config configs/fashion_vit.py --workdir /tmp/run
  python -m big_vision_like.train --config configs/vit_i1k.py:variant=B/16,runlocal \
      --workdir /tmp/run --config.lr=3e-4

A workdir that already holds a checkpoint resumes from it: same data order,
same random numbers, same result as a run that was never interrupted. SIGTERM
(a preemption notice) to any process stops every process after the same step
(the current one with one process, 2-3 steps later with several), saves it and
exits 0. Multi-process launch flags: see distributed.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from big_vision_like import checkpoint as ckpt_lib
from big_vision_like import config as config_lib
from big_vision_like import distributed
from big_vision_like import durations
from big_vision_like import metrics as metrics_lib
from big_vision_like import mixup as mixup_lib
from big_vision_like import optim
from big_vision_like import profiling
from big_vision_like import registry
from big_vision_like import sharding as sharding_lib
from big_vision_like.data import input_pipeline


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or inf."""


def build_model(config: ml_collections.ConfigDict):
  """`MODELS[config.model_name](**config.model)`, with errors naming config keys."""
  cls = registry.MODELS.get(config.model_name)
  kwargs = dict(config.get("model", {}))
  if dataclasses.is_dataclass(cls):
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
      raise config_lib.ConfigError(
          f"config.model.{unknown[0]} is not a field of model {config.model_name!r}; "
          f"known fields: {', '.join(sorted(fields))}")
  try:
    return cls(**kwargs)
  except (TypeError, ValueError) as e:
    raise config_lib.ConfigError(f"config.model ({config.model_name}): {e}") from e


def device_images(images: jax.Array, value_range: Sequence[float] | None) -> jax.Array:
  """The model's float input: uint8 batches are mapped to `value_range` here.

  Ending the pp string with uint8 images (no `value_range` op) and setting
  `config.device_value_range=(-1, 1)` moves the float conversion onto the
  accelerator: 4x fewer bytes through the host and the host-to-device copy,
  and less CPU per image (see BENCHMARKS.md). Float images pass unchanged.
  """
  if images.dtype != jnp.uint8:
    return images
  if value_range is None:
    raise config_lib.ConfigError(
        "the batch holds uint8 images: end the pp strings with value_range(...) "
        "or set config.device_value_range=(vmin, vmax) to convert them on device")
  vmin, vmax = value_range
  # The same arithmetic as the value_range pp op, so both give the same floats.
  return images.astype(jnp.float32) / 255.0 * (vmax - vmin) + vmin


def is_two_tower(model) -> bool:
  return bool(getattr(model, "is_two_tower", False))


def model_inputs(model) -> tuple[str, ...]:
  """The batch keys the model reads: image (+ text for two-tower models)."""
  return ("image", "text") if is_two_tower(model) else ("image",)


def make_predict_fn(model, value_range: Sequence[float] | None = None, *,
                    mesh=None, rules=None, batch_axes: Sequence[str] | None = None
                    ) -> Callable[[Any, dict], Any]:
  """(params, batch) -> logits; for a two-tower model a dict instead.

  The two-tower dict holds "zimg" (if the batch has "image"), "ztxt" (if it
  has "text"), and the temperature "t" and bias "b". With `mesh` and `rules`
  (`config.sharding_rules`) the model's activation constraints apply when the
  evaluator jits the fn ("batch" defaults to `batch_axes`, else the data axes).
  """
  fn = _predict_fn(model, value_range)
  if mesh is None:
    return fn
  return sharding_lib.with_logical_rules(fn, mesh, rules, batch_axes)


def _predict_fn(model, value_range):
  if is_two_tower(model):
    def embed(params, batch):
      image = batch.get("image")
      if image is not None:
        image = device_images(image, value_range)
      zimg, ztxt, aux = model.apply({"params": params}, image, batch.get("text"),
                                    train=False)
      out = {"t": aux["t"], "b": aux["b"]}
      if zimg is not None:
        out["zimg"] = zimg
      if ztxt is not None:
        out["ztxt"] = ztxt
      return out
    return embed

  def predict(params, batch):
    logits, _ = model.apply({"params": params},
                            device_images(batch["image"], value_range), train=False)
    return logits
  return predict


def _dummy_inputs(model, shapes) -> tuple[jax.Array, ...]:
  """One zero example per model input; `shapes` is the image shape, or a dict
  {key: shape} (two-tower: "image" and "text")."""
  if not isinstance(shapes, dict):
    shapes = {"image": tuple(shapes)}
  out = []
  for key in model_inputs(model):
    if key not in shapes:
      raise ValueError(f"the model needs batch key {key!r} (shapes given: {sorted(shapes)})")
    dtype = jnp.int32 if key == "text" else jnp.float32
    out.append(jnp.zeros((1, *shapes[key]), dtype))
  return tuple(out)


def _uses_logical(strategy) -> bool:
  return any(str(rule).partition("(")[0].strip() == "logical" for _, rule in strategy)


def init_params(model, shapes, rng, mesh, strategy, rules=None):
  """Parameters created directly with their final sharding (never replicated first).

  `shapes`: the image shape (without batch), or {batch key: shape}.
  `rules`: `config.sharding_rules`, for the "logical" strategy rule (the
  model's logical axis names are read by tracing its init; the params
  themselves are plain arrays).
  """
  dummies = _dummy_inputs(model, shapes)

  def init(rng):
    return model.init({"params": rng}, *dummies, train=False)["params"]
  abstract = jax.eval_shape(init, rng)
  logical = None
  if _uses_logical(strategy):
    logical = sharding_lib.logical_axes(lambda: init(rng))
  shardings = sharding_lib.param_shardings(abstract, mesh, strategy,
                                           logical_axes=logical, rules=rules)
  return jax.jit(init, out_shardings=shardings)(rng), shardings


def init_state(params, tx, mesh, strategy, rules=None):
  """{"params", "opt"} with the optimizer state created already sharded.

  Returns (state, abstract_state, state_shardings); optimizer moments follow
  their parameter's sharding rule (under "logical": the sharding `params`
  already have, so pass the params from `init_params`).
  """
  abstract = jax.eval_shape(lambda p: {"params": p, "opt": tx.init(p)}, params)
  like = None
  if _uses_logical(strategy):
    like = jax.tree.map(lambda p: getattr(p, "sharding", None), params)
    if not all(isinstance(s, jax.sharding.NamedSharding) for s in jax.tree.leaves(
        like, is_leaf=lambda x: x is None)):
      raise ValueError("init_state: the 'logical' sharding rule needs the sharded "
                       "params that init_params returns")
  shardings = sharding_lib.state_shardings(abstract, mesh, strategy, rules=rules,
                                           like_params=like)
  opt = jax.jit(tx.init, out_shardings=shardings["opt"])(params)
  return {"params": params, "opt": opt}, abstract, shardings


def jit_train_step(config, model, tx, schedule, mesh, state_shardings, batch_shardings):
  """The sharded, state-donating jitted train step (shared with the benchmark)."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  if is_two_tower(model):
    from big_vision_like import contrastive as contrastive_lib  # pylint: disable=g-import-not-at-top
    loss_fn = contrastive_lib.get_loss(config.loss, mesh=mesh,
                                       axis=sharding_lib.data_axes(mesh, config.get("data_axes")))
  else:
    loss_fn = registry.LOSSES.get(config.loss)
  frozen = None
  if config.get("frozen"):
    frozen = optim.frozen_mask(config, jax.tree.map(
        lambda s: jax.ShapeDtypeStruct((), jnp.float32), state_shardings["params"]))
  step_fn = make_train_step(model, loss_fn, tx, schedule,
                            config.get("grad_accum_steps", 1) or 1, frozen=frozen,
                            value_range=config.get("device_value_range"),
                            mixup=mixup_lib.from_config(config.get("mixup")))
  # The model's activation constraints, from config.sharding_rules (no-op without).
  step_fn = sharding_lib.with_logical_rules(
      step_fn, mesh, config.get("sharding_rules"),
      sharding_lib.data_axes(mesh, config.get("data_axes")))
  return jax.jit(step_fn,
                 in_shardings=(state_shardings, batch_shardings, replicated, replicated),
                 out_shardings=(state_shardings, replicated), donate_argnums=0)


def forward_flops_per_image(model, params, shapes) -> float | None:
  """Forward FLOPs of one example (XLA cost analysis), for MFU and GFLOPs/image."""
  dummies = _dummy_inputs(model, shapes)
  return metrics_lib.forward_flops(
      lambda p, *x: model.apply({"params": p}, *x, train=False),
      jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params),
      *(jax.ShapeDtypeStruct(d.shape, d.dtype) for d in dummies))


def init_from_checkpoints(params: Any, model_init: Any, skip: Sequence[str] = ()) -> Any:
  """Loads `config.model_init` into `params`.

  `model_init` is a path (the whole model), or {subtree: path} to load a
  checkpoint into one part of the model: `{"img": "<workdir of a supervised
  ViT>"}` fills the image tower of a two-tower model (LiT). `skip` regexes
  match full parameter names ("img/head/.*") and keep those params fresh.
  """
  if not isinstance(model_init, (dict, ml_collections.ConfigDict)):
    out = ckpt_lib.load_params(str(model_init), params, skip=list(skip))
    logging.info("Initialised params from %s (skipping %s)", model_init, list(skip))
    return out
  params = dict(params)
  for prefix, path in dict(model_init).items():
    if prefix not in params:
      raise config_lib.ConfigError(
          f"config.model_init.{prefix}: the model has no parameter subtree {prefix!r} "
          f"(it has {sorted(params)})")
    sub_skip = [s[len(prefix) + 1:] for s in skip if s.startswith(prefix + "/")]
    params[prefix] = ckpt_lib.load_params(str(path), params[prefix], skip=sub_skip)
    logging.info("Initialised %s/ from %s (skipping %s)", prefix, path, sub_skip)
  return params


def make_evaluators(config, predict_fn, mesh, data_axes, *, batch_size,
                    total_steps, num_train_examples, workdir=None):
  """[(name, evaluator, every_n_steps)] from `config.evals`."""
  out = []
  evals = config.get("evals", {})
  for name, ev in evals.items():
    ev = dict(ev)
    cls = registry.EVALUATORS.get(ev.pop("type"))
    every = durations.to_steps(ev, "log", batch_size=batch_size,
                               num_examples=num_train_examples,
                               total_steps=total_steps, where=f"config.evals.{name}")
    for k in durations.which_set(ev, "log"):
      ev.pop(k)
    ev.setdefault("batch_size", batch_size)
    try:
      evaluator = cls(predict_fn, mesh=mesh, data_axes=data_axes, name=name,
                      workdir=workdir, **ev)
    except (TypeError, ValueError, KeyError) as e:
      raise config_lib.ConfigError(f"config.evals.{name}: {e}") from e
    out.append((name, evaluator, every))
  everies = {name: every for name, _, every in out}
  for name, evaluator, every in out:
    ref = getattr(evaluator, "reference", None)
    if ref is not None and everies.get(ref, -1) != every:
      raise config_lib.ConfigError(
          f"config.evals.{name}.reference={ref!r}: " + (
              f"no evaluator {ref!r} in config.evals" if ref not in everies else
              f"it must run at the same steps (every {every} vs {everies[ref]}), "
              f"or the drop would compare different params"))
  return out


def run_evals(evaluators, params, step, writer, *, final=False):
  """Runs the due evaluators; writes scalars, images and texts; returns scalars.

  An evaluator with `reference="val"` also gets `drop/{metric}` = val's
  value minus its own, for its `drop_metrics` both report.
  """
  results, images, texts, ran = {}, {}, {}, {}
  for name, evaluator, every in evaluators:
    if final or (every and step % every == 0):
      t0 = time.perf_counter()
      ran[name] = evaluator.run(params, step)
      for k, v in ran[name].items():
        if isinstance(v, str):
          texts[f"{name}/{k}"] = v
        elif isinstance(v, np.ndarray) and v.ndim == 3:
          images[f"{name}/{k}"] = v[None]
        else:
          results[f"{name}/{k}"] = float(v)
      logging.info("eval %s at step %d: %s (%.1fs)", name, step,
                   {k: round(v, 5) for k, v in results.items() if k.startswith(name + "/")},
                   time.perf_counter() - t0)
      for k, v in ran[name].items():
        if isinstance(v, str):
          logging.info("eval %s %s:\n%s", name, k, v)
  for name, evaluator, _ in evaluators:
    ref = getattr(evaluator, "reference", None)
    if name in ran and ref in ran:
      for metric in evaluator.drop_metrics:
        if metric in ran[name] and metric in ran[ref]:
          results[f"{name}/drop/{metric}"] = float(ran[ref][metric]) - float(ran[name][metric])
  if results:
    writer.write_scalars(step, results)
  if images:
    writer.write_images(step, images)
  if texts:
    writer.write_texts(step, texts)
  return results


class _Preemption(distributed.PreemptionSync):
  """SIGTERM (to any process) -> every process stops after the same step.

  The loop asks `should_stop(step)` after each step; see distributed.py.
  """


def make_train_step(model, loss_fn, tx, schedule, accum_steps: int, *,
                    frozen: Any = None,
                    value_range: Sequence[float] | None = None,
                    mixup: mixup_lib.MixupConfig | None = None):
  """(state, batch, step, base_rng) -> (state, metrics); state = {"params", "opt"}.

  With `mixup`, the global batch is mixed (Mixup/CutMix) with a key that depends
  only on (base_rng, step), before any split into micro-batches.
  """

  two_tower = is_two_tower(model)

  def loss_and_grads(params, images, labels, rng):
    # labels: classification targets, or the text tokens of a two-tower model.
    def loss_of(params):
      if frozen is not None:  # no backward pass through frozen parameters
        params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p,
                              params, frozen)
      if two_tower:
        zimg, ztxt, aux = model.apply({"params": params}, images, labels, train=True,
                                      rngs={"dropout": rng})
        loss, extra = loss_fn(zimg, ztxt, aux["t"], aux["b"])
        return loss, {"train/t": aux["t"], "train/b": aux["b"],
                      **{f"train/{k}": v for k, v in extra.items()}}
      logits, _ = model.apply({"params": params}, images, train=True,
                              rngs={"dropout": rng})
      return jnp.mean(loss_fn(logits, labels)), {}
    (loss, extra), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    return loss, grads, extra

  def step_fn(state, batch, step, base_rng):
    rng = jax.random.fold_in(base_rng, step)
    images = device_images(batch["image"], value_range)
    labels = batch["text"] if two_tower else batch["labels"]
    if mixup is not None:
      images, labels, _, _ = mixup_lib.mix(mixup_lib.step_key(base_rng, step),
                                           images, labels, mixup)
    if accum_steps == 1:
      loss, grads, extra = loss_and_grads(state["params"], images, labels, rng)
    else:
      # Micro-batches: example i goes to micro-batch i % accum_steps, which keeps
      # every micro-batch evenly spread over the data-sharded batch dimension.
      def split(x):
        x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)
      def body(carry, xs):
        i, (im, lb) = xs
        l, g, _ = loss_and_grads(state["params"], im, lb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (l, g)), None
      zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state["params"]))
      (loss, grads), _ = jax.lax.scan(
          body, zeros, (jnp.arange(accum_steps), (split(images), split(labels))))
      loss, grads = jax.tree.map(lambda x: x / accum_steps, (loss, grads))
      extra = {}
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"train/loss": loss, "train/grad_norm": optax.global_norm(grads),
               "train/lr": schedule(step), **extra}
    return {"params": params, "opt": opt}, metrics

  return step_fn


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) per `config` in `workdir`; returns the final metrics.

  The returned dict has "step", "preempted" and the final eval results.
  """
  config_lib.validate(config)
  workdir_path = epath.Path(workdir)
  workdir_path.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:
    (workdir_path / "config.json").write_text(config_lib.to_json(config))

  mesh = sharding_lib.make_mesh(config.get("mesh", [("data", -1)]), dcn=config.get("mesh_dcn"))
  data_axes = sharding_lib.data_axes(mesh, config.get("data_axes"))
  batch_sharding = sharding_lib.batch_sharding(mesh, data_axes)
  batch_size = config.input.batch_size
  dp = sharding_lib.data_parallel_size(mesh, data_axes)
  if batch_size % dp:
    raise config_lib.ConfigError(f"config.input.batch_size={batch_size} is not divisible "
                                 f"by the {dp} data-parallel devices of mesh {dict(mesh.shape)}")
  accum = config.get("grad_accum_steps", 1) or 1
  if batch_size % (accum * dp):
    raise config_lib.ConfigError(
        f"config.input.batch_size={batch_size} must be divisible by grad_accum_steps="
        f"{accum} x {dp} data-parallel devices")

  data_cfg = input_pipeline.data_sources(config.input.data)
  num_examples = input_pipeline.train_examples(data_cfg)
  total_steps = durations.to_steps(config, "total", batch_size=batch_size,
                                   num_examples=num_examples, where="config")
  if not total_steps:
    raise config_lib.ConfigError("set one of config.total_steps|total_epochs|total_examples")
  dur = dict(batch_size=batch_size, num_examples=num_examples, total_steps=total_steps)
  log_every = durations.to_steps(config, "log_training", default=50, **dur)
  ckpt_every = durations.to_steps(config, "ckpt", default=1000, **dur)

  ckpt = ckpt_lib.Checkpointer(
      str(workdir_path / "checkpoints"), keep_last=config.get("keep_ckpt_last", 3),
      keep_every_steps=config.get("keep_ckpt_steps"),
      async_save=config.get("ckpt_async", True))
  start_step = ckpt.latest_step() or 0

  def data_from(step):
    """The training batches from `step` on, and the first of them."""
    it = input_pipeline.make_train_iterator(
        data_cfg, config.input.pp, batch_size, seed=config.get("seed", 0),
        start_step=step,
        shuffle_buffer_size=config.input.get("shuffle_buffer_size", 50_000),
        cache=config.input.get("cache", False), prefetch=config.input.get("prefetch", 2),
        skip_corrupt=config.input.get("skip_corrupt", False),
        order=config.input.get("order", "global"))
    # Strings (e.g. a kept file_name) cannot go to the devices.
    return it, input_pipeline.split_host_keys(next(it))[0]

  train_iter, first_batch = data_from(start_step)
  if first_batch.get("image") is not None and first_batch["image"].dtype == np.uint8:
    device_images(first_batch["image"][:1], config.get("device_value_range"))  # fails early
  model = build_model(config)
  needed = ("image", "text") if is_two_tower(model) else ("image", "labels")
  for key in needed:
    if key not in first_batch:
      raise config_lib.ConfigError(
          f"config.input.pp must produce {key!r} for model {config.model_name!r}; it "
          f"produced {sorted(first_batch)}")
  if is_two_tower(model):
    if config.get("mixup"):
      raise config_lib.ConfigError("config.mixup is for classification; a two-tower "
                                   "model has no labels to mix")
    if (config.get("grad_accum_steps", 1) or 1) > 1:
      raise config_lib.ConfigError(
          "config.grad_accum_steps > 1 would change a contrastive loss (fewer negatives "
          "per micro-batch); use a smaller batch or the chunked sigmoid loss instead")
  shapes = {k: first_batch[k].shape[1:] for k in model_inputs(model)}
  rng = jax.random.key(config.get("seed", 0))
  init_rng, dropout_rng = jax.random.split(rng)
  strategy = sharding_lib.strategy_from_config(config)
  rules = config.get("sharding_rules")
  params, _ = init_params(model, shapes, init_rng, mesh, strategy, rules=rules)
  tx, schedule = optim.make_optimizer(config, params, total_steps=total_steps,
                                      batch_size=batch_size, num_examples=num_examples)
  state, abstract_state, state_shardings = init_state(params, tx, mesh, strategy, rules=rules)
  logging.info("Memory: %s", sharding_lib.memory_report(state))

  if start_step:
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract_state, state_shardings)
    state, meta, restored_step = ckpt.restore(abstract)
    if restored_step != start_step:
      # The newest step was unreadable and restore fell back to an older one:
      # the data must restart there too, or the run would silently diverge.
      train_iter, first_batch = data_from(restored_step)
    start_step = restored_step
    logging.info("Resumed from step %d (%s)", start_step, meta)
  elif config.get("model_init"):
    state["params"] = init_from_checkpoints(state["params"], config.model_init,
                                            config.get("model_init_skip", ()))

  train_step = jit_train_step(config, model, tx, schedule, mesh, state_shardings,
                              {k: batch_sharding for k in first_batch})

  predict_fn = make_predict_fn(model, config.get("device_value_range"), mesh=mesh, rules=rules,
                               batch_axes=data_axes)
  evaluators = make_evaluators(config, predict_fn, mesh, data_axes, batch_size=batch_size,
                               total_steps=total_steps, num_train_examples=num_examples,
                               workdir=str(workdir_path))
  writer = metrics_lib.MetricWriter(str(workdir_path), is_main=is_main)
  peak, peak_source = metrics_lib.peak_flops_per_device(config.get("peak_flops"))
  fwd = forward_flops_per_image(model, params, shapes)
  flops_per_step = 3 * fwd * batch_size if fwd else None
  logging.info("Devices: %d (%s), mesh %s, %d processes. Model: %s GFLOPs/image forward. "
               "Peak %.3g FLOP/s per device (%s). %d params.", jax.device_count(),
               jax.devices()[0].device_kind, dict(mesh.shape), jax.process_count(),
               f"{fwd / 1e9:.3f}" if fwd else "?", peak, peak_source,
               sum(x.size for x in jax.tree.leaves(params)))
  logging.info("Training %d steps of batch %d (%d examples/epoch) from step %d.",
               total_steps, batch_size, num_examples, start_step)
  progress = metrics_lib.Progress(total_steps=total_steps, batch_size=batch_size,
                                  num_devices=jax.device_count(),
                                  flops_per_step=flops_per_step,
                                  peak_flops_per_device=peak, start_step=start_step)

  def save(step, state):
    ckpt.save(step, state, {"step": step, "examples_seen": step * batch_size,
                            "seed": config.get("seed", 0)}, force=True)

  profiler = profiling.StepProfiler(config.get("profile"), str(workdir_path / "tensorboard"),
                                    start_step=start_step)
  step = start_step
  preempted = False
  results: dict[str, Any] = {}
  batch = first_batch
  with _Preemption() as preemption:
    while step < total_steps:
      if batch is None:
        batch, _ = input_pipeline.split_host_keys(next(train_iter))
      gbatch = sharding_lib.put_process_local_batch(batch, batch_sharding)
      batch = None
      profiler.before(step)
      with profiler.annotation(step):
        state, m = train_step(state, gbatch, jnp.int32(step), dropout_rng)
      profiler.after(step, m)
      step += 1
      stop = preemption.should_stop(step)  # read once; the same on every process
      is_log = step % log_every == 0 or step == total_steps
      is_ckpt = step % ckpt_every == 0 or step == total_steps or stop
      if is_log or is_ckpt:
        # Check before anything is written: a NaN step must never become a checkpoint.
        m = sharding_lib.to_host(m)
        if not np.isfinite(m["train/loss"]):
          ckpt.wait()
          raise NonFiniteLossError(
              f"train/loss is {m['train/loss']} at step {step}; the last good checkpoint "
              f"(step {ckpt.latest_step()}) is kept in {workdir_path / 'checkpoints'}. "
              "Lower config.lr, add config.grad_clip_norm or check the data.")
      if is_log:
        scalars = {**m, **progress.measure(step)}
        if train_iter.skip_corrupt:
          scalars["input/skipped_records"] = train_iter.skipped
        writer.write_scalars(step, scalars)
        logging.info(metrics_lib.log_line(step, total_steps, scalars))
      if is_ckpt:
        t0 = time.perf_counter()
        save(step, state)
        progress.pause(time.perf_counter() - t0)
      if stop:
        preempted = True
        break
      t0 = time.perf_counter()
      results.update(run_evals(evaluators, state["params"], step, writer,
                               final=step == total_steps))
      progress.pause(time.perf_counter() - t0)

  profiler.stop()
  ckpt.wait()
  ckpt.close()
  writer.flush()
  writer.close()
  return {"step": step, "preempted": preempted, **results, "state": state}


def parse_cli(argv: list[str]) -> tuple[ml_collections.ConfigDict, str]:
  """`--config path[:arg]`, `--workdir DIR` and any `--config.a.b=value` overrides.

  Multi-process runs (see distributed.py): `--coordinator_address HOST:PORT
  --num_processes N --process_id I` (e.g. localhost), else the environment
  variables BVL_COORDINATOR_ADDRESS/BVL_NUM_PROCESSES/BVL_PROCESS_ID, else
  `--distributed` (JAX finds them on Cloud TPU VMs, SLURM); nothing: one
  process. `--heartbeat_timeout_s` bounds how long a dead peer goes unnoticed.
  """
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True, help="path/to/config.py[:arg]")
  parser.add_argument("--workdir", required=True)
  distributed.add_flags(parser)
  args, rest = parser.parse_known_args(argv)
  overrides = []
  for item in rest:
    if not item.startswith("--config."):
      parser.error(f"unrecognized argument {item!r}")
    overrides.append(item[len("--config."):])
  try:
    distributed.initialize_from_args(args)
  except distributed.DistributedSetupError as e:
    parser.error(str(e))
  return config_lib.load_config(args.config, overrides), args.workdir


def main(argv: list[str] | None = None) -> int:
  # Parse first: a multi-process run must initialise jax.distributed before
  # anything (logging included) asks JAX about its devices.
  config, workdir = parse_cli(sys.argv[1:] if argv is None else argv)
  metrics_lib.setup_logging()
  logging.info(distributed.describe())
  out = train(config, workdir)
  out.pop("state")
  logging.info("Done: %s", {k: v for k, v in out.items()})
  return 0


if __name__ == "__main__":
  sys.exit(main())
