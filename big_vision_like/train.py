"""The one training loop: config -> data -> experiment -> sharded jit steps -> ckpts/metrics/evals.

Usage:
  python -m big_vision_like.train --config configs/fashion_vit.py --workdir /tmp/run
  python -m big_vision_like.train --config configs/vit_i1k.py:variant=B/16,runlocal \
      --workdir /tmp/run --config.lr=3e-4

`train()` reads top-down in stages: check the config, open the training data,
build the experiment (experiment.py: mesh, model, task, sharded state),
open the workdir, restore or initialise the state, then loop. What differs
between classification and image-text lives in the task (tasks/).

A workdir that already holds a checkpoint resumes from it: same data order,
same random numbers, same result as a run that was never interrupted. SIGTERM
(a preemption notice) to any process stops every process after the same step
(the current one with one process, 2-3 steps later with several), saves it and
exits 0. Multi-process launch flags: see distributed.py. A run that is alive
but stuck (no step, evaluation or checkpoint save finishing in time) is
stopped by the watchdog (watchdog.py: stacks in the log, exit code 75).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from big_vision_like import batch_preview
from big_vision_like import checkpoint as ckpt_lib
from big_vision_like import compile_cache
from big_vision_like import config as config_lib
from big_vision_like import distributed
from big_vision_like import durations
from big_vision_like import errors
from big_vision_like import evaluators as evaluators_lib
from big_vision_like import experiment
from big_vision_like import metrics as metrics_lib
from big_vision_like import profiling
from big_vision_like import results as results_lib
from big_vision_like import run_config
from big_vision_like import sharding as sharding_lib
from big_vision_like import watchdog as watchdog_lib
from big_vision_like.data import input_pipeline

NonFiniteLossError = errors.NonFiniteLossError


@dataclasses.dataclass
class TrainData:
  """The training stream and the numbers derived from its size."""
  config: ml_collections.ConfigDict
  num_examples: int
  total_steps: int
  log_every: int
  ckpt_every: int

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "TrainData":
    batch = config.input.batch_size
    num_examples = input_pipeline.train_examples(config.input.data)
    total = durations.to_steps(config, "total", batch_size=batch,
                               num_examples=num_examples, where="config")
    dur = dict(batch_size=batch, num_examples=num_examples, total_steps=total)
    return cls(config, num_examples, total,
               durations.to_steps(config, "log_training", default=50, **dur),
               durations.to_steps(config, "ckpt", default=1000, **dur))

  def iterator(self, start_step: int) -> input_pipeline.TrainIterator:
    """Batches from `start_step` on (nothing is read until `next` or `read_ahead`)."""
    cfg = self.config.input
    return input_pipeline.make_train_iterator(
        cfg.data, cfg.pp, cfg.batch_size, seed=self.config.seed, start_step=start_step,
        shuffle_buffer_size=cfg.shuffle_buffer_size, cache=cfg.cache, prefetch=cfg.prefetch,
        skip_corrupt=cfg.skip_corrupt, order=cfg.order,
        num_steps=max(0, self.total_steps - start_step))


def input_spec(it: input_pipeline.TrainIterator) -> dict[str, jax.ShapeDtypeStruct]:
  """One example's device keys, from the pipeline's element spec (strings stay on host)."""
  spec = {}
  for key, s in it.element_spec.items():
    if s.dtype == "string":
      continue
    shape = tuple(s.shape[1:])
    if None in shape:
      raise errors.ConfigError(
          f"config.input.pp gives {key!r} of unknown shape {shape}; end it with a "
          "fixed-size op (resize/central_crop, tokenize(len))")
    spec[key] = jax.ShapeDtypeStruct(shape, s.dtype.as_numpy_dtype)
  return spec


def check_batch_size(exp: experiment.Experiment) -> None:
  batch, accum = exp.config.input.batch_size, exp.config.grad_accum_steps
  dp = sharding_lib.data_parallel_size(exp.mesh, exp.data_axes)
  if batch % dp:
    raise errors.ConfigError(f"config.input.batch_size={batch} is not divisible by the "
                             f"{dp} data-parallel devices of mesh {dict(exp.mesh.shape)}")
  if batch % (accum * dp):
    raise errors.ConfigError(f"config.input.batch_size={batch} must be divisible by "
                             f"grad_accum_steps={accum} x {dp} data-parallel devices")


def initial_state(exp: experiment.Experiment, ckpt: ckpt_lib.Checkpointer,
                  start_step: int) -> tuple[dict, int]:
  """The newest readable checkpoint, else fresh params (+ `config.model_init`)."""
  if start_step:
    state, meta, step = ckpt.restore(exp.abstract_state)
    logging.info("Resumed from step %d (%s)", step, meta)
    return state, step
  state = exp.init_state()
  if exp.config.model_init:
    state["params"] = ckpt_lib.init_from_checkpoints(
        state["params"], exp.config.model_init, exp.config.model_init_skip)
  return state, 0


def log_start(exp: experiment.Experiment, data: TrainData, start_step: int,
              state: dict) -> metrics_lib.Progress:
  """Logs devices, model size and FLOPs; returns the progress meter (img/s, MFU, ETA)."""
  batch = exp.config.input.batch_size
  logging.info("Memory: %s", sharding_lib.memory_report(state))
  peak, peak_source = metrics_lib.peak_flops_per_device(
      exp.config.peak_flops, getattr(exp.model, "dtype_mm", "float32"))
  fwd = exp.forward_flops_per_example()
  logging.info("Devices: %d (%s), mesh %s, %d processes. Model: %s GFLOPs/image forward. "
               "Peak %.3g FLOP/s per device (%s). %d params.", jax.device_count(),
               jax.devices()[0].device_kind, dict(exp.mesh.shape), jax.process_count(),
               f"{fwd / 1e9:.3f}" if fwd else "?", peak, peak_source,
               sum(x.size for x in jax.tree.leaves(exp.abstract_params)))
  logging.info("Training %d steps of batch %d (%d examples/epoch) from step %d.",
               data.total_steps, batch, data.num_examples, start_step)
  return metrics_lib.Progress(total_steps=data.total_steps, batch_size=batch,
                              num_devices=jax.device_count(),
                              flops_per_step=3 * fwd * batch if fwd else None,
                              peak_flops_per_device=peak, start_step=start_step)


def _log_if_slow(what: str, t0: float) -> None:
  took = time.perf_counter() - t0
  if took > 1.0:
    logging.info("Releasing %s took %.1f s (tf.data iterator teardown).", what, took)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) per `config` in `workdir`; returns the final metrics.

  The returned dict has "step", "preempted", the final eval results and "state".
  """
  config = config_lib.resolve(config)  # Every key checked before anything is written.
  # A GPU/TPU run on JAX's CPU build stops here, before any data or workdir.
  logging.info(distributed.check_platform(config.platform))
  data = TrainData.from_config(config)
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  ckpt = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), keep_last=config.keep_ckpt_last,
                               keep_every_steps=config.keep_ckpt_steps,
                               async_save=config.ckpt_async)
  # From here on JAX compiles: a resume or a second run loads the programs.
  with compile_cache.enabled(config, str(workdir)):
    start_step = ckpt.latest_step() or 0
    if start_step:  # the same run, or refused (run_config.py)
      run_config.check_resume(workdir, config, start_step)
    train_iter = data.iterator(start_step)
    exp = experiment.build(config, input_spec=input_spec(train_iter),
                           total_steps=data.total_steps, num_examples=data.num_examples)
    check_batch_size(exp)
    if jax.process_index() == 0:
      run_config.save(workdir, config, start_step)

    # The shuffle buffer fills while the state is initialised (or restored),
    # the evaluators are built and the train step compiles. (After the config
    # checks above, so that a refused config starts no reading.)
    train_iter.read_ahead()
    state, step = initial_state(exp, ckpt, start_step)
    if step != start_step:
      # The newest step was unreadable and restore fell back to an older one:
      # the data must restart there too, or the run would silently diverge.
      train_iter.close()
      train_iter = data.iterator(step)
      train_iter.read_ahead()
    evaluators = evaluators_lib.make_evaluators(
        config, exp.predict_fn, exp.mesh, exp.data_axes, batch_size=config.input.batch_size,
        total_steps=data.total_steps, num_train_examples=data.num_examples, workdir=str(workdir))
    writer = metrics_lib.MetricWriter(str(workdir), is_main=jax.process_index() == 0)
    progress = log_start(exp, data, step, state)
    t0 = time.time()
    with watchdog_lib.Watchdog.from_config(config) as dog:
      out = train_loop(exp, data, state, step, train_iter, ckpt, writer, evaluators, progress,
                       workdir, dog)
      ckpt.close()
    writer.close()
    if not out["preempted"] and jax.process_index() == 0:
      metrics = {k: v for k, v in out.items() if k not in ("step", "preempted", "state")}
      path = results_lib.write(str(workdir), metrics, step=out["step"],
                               train_seconds=time.time() - t0)
      logging.info("Final results: %s", path)
    # Tearing down an autotuned tf.data iterator blocked for up to a minute
    # after a long run (it joined the autotuning thread; BENCHMARKS.md,
    # "Contrastive default"); the pipelines now run without one (`tf_options`).
    # The streams are still released here, one by one, so that a slow
    # teardown, should one come back, is named in the log.
    released = time.perf_counter()
    del train_iter
    gc.collect()
    _log_if_slow("the training stream", released)
    released = time.perf_counter()
    del evaluators
    gc.collect()
    _log_if_slow("the evaluators' streams", released)
    return out


def train_loop(exp, data, state, step, train_iter, ckpt, writer, evaluators, progress,
               workdir, dog: watchdog_lib.Watchdog) -> dict[str, Any]:
  """Steps until `data.total_steps` or a joint preemption stop; logs, saves, evaluates.

  Tells `dog` what it is doing (beats are assignments: no device sync).
  """
  config, total = exp.config, data.total_steps
  train_step = compile_cache.first_call_report(exp.jit_train_step(), "train step")
  dropout_rng = exp.rngs()[1]
  profiler = profiling.StepProfiler(config.profile, str(workdir / "tensorboard"),
                                    start_step=step)
  meta = {"seed": config.seed, "input_spec": experiment.spec_to_json(exp.input_spec)}
  preempted, results = False, {}
  with distributed.PreemptionSync() as preemption:
    dog.start_steps(step)  # The first step waits for the first batch and compiles.
    while step < total:
      dog.beat(step, watchdog_lib.READING)
      batch, _ = input_pipeline.split_host_keys(next(train_iter))
      if step == 0 and jax.process_index() == 0:  # a fresh run: show what the model sees
        batch_preview.write(writer, batch, pp=config.input.pp, data=config.input.data)
      dog.beat(step, watchdog_lib.TRAINING)
      batch = sharding_lib.put_process_local_batch(batch, exp.batch_sharding)
      profiler.before(step)
      with profiler.annotation(step):
        state, m = train_step(state, batch, jnp.int32(step), dropout_rng)
      profiler.after(step, m)
      step += 1
      stop = preemption.should_stop(step)  # read once; the same on every process
      is_log = step % data.log_every == 0 or step == total
      is_ckpt = step % data.ckpt_every == 0 or step == total or stop
      if is_log or is_ckpt:
        # Check before anything is written: a NaN step must never become a checkpoint.
        m = sharding_lib.to_host(m)
        if not np.isfinite(m["train/loss"]):
          ckpt.wait()
          raise NonFiniteLossError(
              f"train/loss is {m['train/loss']} at step {step}; the last good checkpoint "
              f"(step {ckpt.latest_step()}) is kept in {workdir / 'checkpoints'}. "
              "Lower config.lr, add config.grad_clip_norm or check the data.")
      if is_log:
        scalars = {**m, **progress.measure(step)}
        if train_iter.skip_corrupt:
          scalars["input/skipped_records"] = train_iter.skipped
        writer.write_scalars(step, scalars)
        logging.info(metrics_lib.log_line(step, total, scalars))
      t0 = time.perf_counter()
      if is_ckpt:
        dog.phase(f"saving the checkpoint of step {step}", dog.eval_factor)
        ckpt.save(step, state, {"step": step, "examples_seen": step * config.input.batch_size,
                                **meta}, force=True)
      if stop:
        preempted = True
        break
      results.update(evaluators_lib.run_evals(
          evaluators, state["params"], step, writer, final=step == total,
          before=lambda name: dog.phase(f"evaluating {name!r} at step {step}",
                                        dog.eval_factor)))
      progress.pause(time.perf_counter() - t0)
  profiler.stop()
  dog.phase("waiting for the last checkpoint writes", dog.eval_factor)
  ckpt.wait()
  writer.flush()
  return {"step": step, "preempted": preempted, **results, "state": state}


def main(argv: list[str] | None = None) -> int:
  # Parse first: a multi-process run must initialise jax.distributed before
  # anything (logging included) asks JAX about its devices.
  config, workdir = config_lib.parse_cli(sys.argv[1:] if argv is None else argv,
                                         __doc__.split("\n")[0])
  metrics_lib.setup_logging()
  logging.info(distributed.describe())
  out = train(config, workdir)
  out.pop("state")
  logging.info("Done: %s", out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
