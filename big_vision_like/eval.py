"""Evaluate the latest checkpoint of a workdir without training.

  python -m big_vision_like.eval --config configs/fashion_vit.py --workdir /tmp/run

Runs every evaluator in `config.evals` (overrides as in train.py) on the params
of the newest checkpoint and prints/writes `{eval_name}/{metric}`; results go
to TensorBoard and metrics.jsonl at the checkpoint's step.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import jax
import ml_collections
from etils import epath

from big_vision_like import checkpoint as ckpt_lib
from big_vision_like import config as config_lib
from big_vision_like import metrics as metrics_lib
from big_vision_like import sharding as sharding_lib
from big_vision_like import train as train_lib
from big_vision_like.data import input_pipeline


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             step: int | None = None) -> dict[str, Any]:
  """Restores the params of `step` (default latest) and runs all evaluators."""
  config_lib.validate(config)
  ckpt_dir = epath.Path(workdir) / "checkpoints"
  if not ckpt_dir.exists():
    raise FileNotFoundError(f"No checkpoint in {ckpt_dir}: train first, or pass the "
                            "workdir of a finished run")
  # Read-only: an evaluation next to a running training must not clean up the
  # training's in-progress checkpoint writes.
  ckpt = ckpt_lib.Checkpointer(str(ckpt_dir), async_save=False, read_only=True)
  step = ckpt.latest_step() if step is None else step
  ckpt.close()
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {ckpt_dir}: train first, or pass the "
                            "workdir of a finished run")
  mesh = sharding_lib.make_mesh(config.get("mesh", [("data", -1)]), dcn=config.get("mesh_dcn"))
  data_axes = sharding_lib.data_axes(mesh, config.get("data_axes"))
  batch_size = config.input.batch_size
  model = train_lib.build_model(config)
  # The model's input shapes are the training pp's output shapes (read from
  # the pipeline's element spec; no example is preprocessed for them).
  spec = input_pipeline.make_train_iterator(
      config.input.data, config.input.pp, jax.process_count(), seed=0,
      shuffle_buffer_size=1).element_spec
  shapes = {}
  for key in train_lib.model_inputs(model):
    shapes[key] = tuple(spec[key].shape[1:])
    if None in shapes[key]:
      raise ValueError(f"config.input.pp gives {key!r} of unknown shape {shapes[key]}; "
                       "end it with a fixed-size op (resize/central_crop, tokenize(len))")
  rules = config.get("sharding_rules")
  params, _ = train_lib.init_params(model, shapes, jax.random.key(0), mesh,
                                    sharding_lib.strategy_from_config(config), rules=rules)
  params = ckpt_lib.load_params(str(ckpt_dir / str(step)), params)
  evaluators = train_lib.make_evaluators(
      config, train_lib.make_predict_fn(model, config.get("device_value_range"), mesh=mesh,
                                        rules=rules, batch_axes=data_axes), mesh,
      data_axes, batch_size=batch_size,
      total_steps=step, num_train_examples=input_pipeline.train_examples(
          config.input.data), workdir=workdir)
  writer = metrics_lib.MetricWriter(workdir)
  results = train_lib.run_evals(evaluators, params, step, writer, final=True)
  writer.close()
  return {"step": step, **results}


def main(argv: list[str] | None = None) -> int:
  config, workdir = train_lib.parse_cli(sys.argv[1:] if argv is None else argv)
  metrics_lib.setup_logging()
  results = evaluate(config, workdir)
  print(json.dumps(results, indent=2, sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
