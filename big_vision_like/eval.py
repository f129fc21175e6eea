"""Evaluate a checkpoint of a workdir without training (and without training data).

  python -m big_vision_like.eval --config configs/fashion_vit.py --workdir /tmp/run

Runs every evaluator in `config.evals` (overrides as in train.py) on the params
of the newest checkpoint and prints/writes `{eval_name}/{metric}`; a config
whose `model_init` is "zoo:NAME[=PATH]" and a workdir without checkpoints
evaluates that published model as is (step 0: configs/zoo_eval.py); results go
to TensorBoard and metrics.jsonl at the checkpoint's step. The model's input
shapes come from the checkpoint (training records them), so only the
evaluation datasets are read. A damaged newest step falls back to an older
one exactly as training does; a read-only workdir is evaluated and printed
(`--results_dir DIR` writes the events and metrics.jsonl elsewhere). The
evaluation steps come from the workdir's compilation cache when training
compiled them (compile_cache.py; `config.compilation_cache`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

import ml_collections
from etils import epath

from big_vision_like import checkpoint as ckpt_lib
from big_vision_like import compile_cache
from big_vision_like import config as config_lib
from big_vision_like import evaluators as evaluators_lib
from big_vision_like import experiment, zoo
from big_vision_like import metrics as metrics_lib

logger = logging.getLogger(__name__)


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             step: int | None = None, results_dir: str | None = None) -> dict[str, Any]:
  """Restores the params of `step` (default latest) and runs all evaluators.

  Results are written to `results_dir` (default: the workdir; a workdir that
  is not writable, e.g. a finished run shared read-only, is evaluated anyway
  and the results are only returned/printed).
  """
  config = config_lib.resolve(config)
  # The workdir's cache holds the evaluation steps training compiled.
  with compile_cache.enabled(config, workdir) as cache:
    since = compile_cache.counts().snapshot()
    results = _evaluate(config, workdir, step, results_dir)
    if cache:
      logger.info("compilation cache: this evaluation: %s", compile_cache.summary(since))
  return results


def _evaluate(config: ml_collections.ConfigDict, workdir: str, step: int | None,
              results_dir: str | None) -> dict[str, Any]:
  ckpt_dir = epath.Path(workdir) / "checkpoints"
  if _published(config) and (step is not None or not ckpt_dir.exists()):
    return _evaluate_published(config, workdir, results_dir)
  no_ckpt = (f"No checkpoint in {ckpt_dir}: train first, or pass the workdir of a "
             "finished run")
  if not ckpt_dir.exists():
    raise FileNotFoundError(no_ckpt)
  # Read-only: an evaluation next to a running training must not clean up the
  # training's in-progress checkpoint writes.
  with ckpt_lib.Checkpointer(str(ckpt_dir), async_save=False, read_only=True) as ckpt:
    steps = ckpt.all_steps() if step is None else [step]
    if not steps:
      raise FileNotFoundError(no_ckpt)
    meta = _newest_meta(ckpt, steps)
    exp = experiment.build(config, input_spec=experiment.spec_from_json(meta["input_spec"]))
    # The newest readable step, with training's fallback (checkpoint.py).
    params, _, step = ckpt.restore_params(exp.abstract_params, step=step)
  config, out_dir, writer = _outputs(config, workdir, results_dir)
  evaluators = evaluators_lib.make_evaluators(
      config, exp.predict_fn, exp.mesh, exp.data_axes, batch_size=config.input.batch_size,
      total_steps=step, num_train_examples=None, workdir=out_dir)
  results = evaluators_lib.run_evals(evaluators, params, step, writer, final=True)
  writer.close()
  return {"step": step, **results}


def _newest_meta(ckpt: ckpt_lib.Checkpointer, steps: list[int]) -> dict:
  """The meta of the newest step that has a readable one (it records the input spec)."""
  for s in reversed(steps):
    try:
      meta = ckpt.read_meta(s)
    except (OSError, ValueError) as e:
      logger.warning("Checkpoint step %d has no readable meta (%s); trying an older step",
                      s, e)
      continue
    if "input_spec" not in meta:
      raise ValueError(f"checkpoint {ckpt.directory / str(s)} records no input_spec "
                       "(written before eval.py could read one); evaluate it with the "
                       "version that wrote it, or re-save it by resuming training for one "
                       "step")
    return meta
  raise FileNotFoundError(f"No checkpoint step of {ckpt.directory} has a readable meta")


def _published(config: ml_collections.ConfigDict) -> bool:
  return isinstance(config.model_init, str) and config.model_init.startswith("zoo:")


def _writable(directory: str) -> bool:
  probe = epath.Path(directory) / f".bvl_write_probe_{os.getpid()}"
  try:
    epath.Path(directory).mkdir(parents=True, exist_ok=True)
    probe.write_text("")
    probe.unlink()
    return True
  except Exception:  # pylint: disable=broad-except  (OSError, tf.errors.*: any means no)
    return False


def _outputs(config: ml_collections.ConfigDict, workdir: str, results_dir: str | None
             ) -> tuple[ml_collections.ConfigDict, str | None, metrics_lib.MetricWriter]:
  """(config, output dir, writer): results_dir, the workdir, or nowhere.

  With nowhere to write (a read-only workdir and no --results_dir), the
  results are printed only and the evaluators' files (prediction dumps,
  per-class tables) are switched off rather than failing at the first write.
  """
  if results_dir is not None:
    return config, results_dir, metrics_lib.MetricWriter(results_dir)
  if _writable(workdir):
    return config, workdir, metrics_lib.MetricWriter(workdir)
  logger.warning("%s is not writable: the results are only printed (pass --results_dir "
                  "DIR to write TensorBoard events, metrics.jsonl and prediction dumps "
                  "there).", workdir)
  config = config.copy_and_resolve_references()
  for ev in (config.get("evals") or {}).values():
    if ev.get("save_predictions"):
      ev.save_predictions = False
  return config, None, metrics_lib.MetricWriter(workdir, is_main=False)


def _evaluate_published(config: ml_collections.ConfigDict, workdir: str,
                        results_dir: str | None = None) -> dict[str, Any]:
  """Evaluates `config.model_init="zoo:NAME[=PATH]"` as published (step 0, no training)."""
  name, _ = zoo.parse_spec(config.model_init)
  exp = experiment.build(config, input_spec=zoo.input_spec(zoo.get(name)))
  target = exp.init_params() if config.model_init_skip else exp.abstract_params
  params = ckpt_lib.init_from_checkpoints(target, config.model_init, config.model_init_skip)
  config, out_dir, writer = _outputs(config, workdir, results_dir)
  evaluators = evaluators_lib.make_evaluators(
      config, exp.predict_fn, exp.mesh, exp.data_axes, batch_size=config.input.batch_size,
      total_steps=0, num_train_examples=None, workdir=out_dir)
  results = evaluators_lib.run_evals(evaluators, params, 0, writer, final=True)
  writer.close()
  return {"step": 0, "model_init": config.model_init, **results}


def main(argv: list[str] | None = None) -> int:
  pre = argparse.ArgumentParser(add_help=False)
  pre.add_argument("--results_dir", default=None,
                   help="write TensorBoard events and metrics.jsonl here, not in the workdir")
  args, rest = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
  config, workdir = config_lib.parse_cli(rest, __doc__.split("\n")[0])
  metrics_lib.setup_logging()
  results = evaluate(config, workdir, results_dir=args.results_dir)
  print(json.dumps(results, indent=2, sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
