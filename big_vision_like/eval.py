"""Evaluate a checkpoint of a workdir without training (and without training data).

  python -m big_vision_like.eval --config configs/fashion_vit.py --workdir /tmp/run

Runs every evaluator in `config.evals` (overrides as in train.py) on the params
of the newest checkpoint and prints/writes `{eval_name}/{metric}`; a config
whose `model_init` is "zoo:NAME[=PATH]" and a workdir without checkpoints
evaluates that published model as is (step 0: configs/zoo_eval.py); results go
to TensorBoard and metrics.jsonl at the checkpoint's step. The model's input
shapes come from the checkpoint (training records them), so only the
evaluation datasets are read.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import ml_collections
from etils import epath

from big_vision_like import checkpoint as ckpt_lib
from big_vision_like import config as config_lib
from big_vision_like import evaluators as evaluators_lib
from big_vision_like import experiment
from big_vision_like import metrics as metrics_lib
from big_vision_like import zoo


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             step: int | None = None) -> dict[str, Any]:
  """Restores the params of `step` (default latest) and runs all evaluators."""
  config = config_lib.resolve(config)
  ckpt_dir = epath.Path(workdir) / "checkpoints"
  if _published(config) and (step is not None or not ckpt_dir.exists()):
    return _evaluate_published(config, workdir)
  no_ckpt = (f"No checkpoint in {ckpt_dir}: train first, or pass the workdir of a "
             "finished run")
  if not ckpt_dir.exists():
    raise FileNotFoundError(no_ckpt)
  # Read-only: an evaluation next to a running training must not clean up the
  # training's in-progress checkpoint writes.
  ckpt = ckpt_lib.Checkpointer(str(ckpt_dir), async_save=False, read_only=True)
  step = ckpt.latest_step() if step is None else step
  if step is None:
    ckpt.close()
    raise FileNotFoundError(no_ckpt)
  meta = ckpt.read_meta(step)
  ckpt.close()
  if "input_spec" not in meta:
    raise ValueError(f"checkpoint {ckpt_dir / str(step)} records no input_spec (written "
                     "before eval.py could read one); evaluate it with the version that "
                     "wrote it, or re-save it by resuming training for one step")
  exp = experiment.build(config, input_spec=experiment.spec_from_json(meta["input_spec"]))
  params = ckpt_lib.load_params(str(ckpt_dir / str(step)), exp.abstract_params)
  evaluators = evaluators_lib.make_evaluators(
      config, exp.predict_fn, exp.mesh, exp.data_axes, batch_size=config.input.batch_size,
      total_steps=step, num_train_examples=None, workdir=workdir)
  writer = metrics_lib.MetricWriter(workdir)
  results = evaluators_lib.run_evals(evaluators, params, step, writer, final=True)
  writer.close()
  return {"step": step, **results}


def _published(config: ml_collections.ConfigDict) -> bool:
  return isinstance(config.model_init, str) and config.model_init.startswith("zoo:")


def _evaluate_published(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Evaluates `config.model_init="zoo:NAME[=PATH]"` as published (step 0, no training)."""
  name, _ = zoo.parse_spec(config.model_init)
  exp = experiment.build(config, input_spec=zoo.input_spec(zoo.get(name)))
  target = exp.init_params() if config.model_init_skip else exp.abstract_params
  params = ckpt_lib.init_from_checkpoints(target, config.model_init, config.model_init_skip)
  evaluators = evaluators_lib.make_evaluators(
      config, exp.predict_fn, exp.mesh, exp.data_axes, batch_size=config.input.batch_size,
      total_steps=0, num_train_examples=None, workdir=workdir)
  writer = metrics_lib.MetricWriter(workdir)
  results = evaluators_lib.run_evals(evaluators, params, 0, writer, final=True)
  writer.close()
  return {"step": 0, "model_init": config.model_init, **results}


def main(argv: list[str] | None = None) -> int:
  config, workdir = config_lib.parse_cli(sys.argv[1:] if argv is None else argv,
                                         __doc__.split("\n")[0])
  metrics_lib.setup_logging()
  results = evaluate(config, workdir)
  print(json.dumps(results, indent=2, sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
