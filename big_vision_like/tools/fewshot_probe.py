"""Few-shot linear-probe accuracy of a trained checkpoint, checked against plain numpy.

    python -m big_vision_like.tools.fewshot_probe --config configs/fashion_vit.py \\
        --workdir workdirs/fashion_vit [--shots 1,5,10,25] [--l2_reg 1024] [--seed 0] \\
        [--dataset fashion_mnist,train,test] [--data_dir DIR] [--json out.json]

Why it exists: the `fewshot` evaluator (evaluators/fewshot.py) gives one
number per shot count; this tool runs that same evaluator once on the newest
checkpoint of a workdir (built and restored as eval.py does) and then refits
every probe on the very same features with an independent formulation --
`np.linalg.lstsq` on the stacked ridge system with an unpenalised bias column
-- and prints both accuracies and the largest score difference. Nothing is
written to the workdir. `--config` builds the model (the run's own config
file; `--config.*` overrides work as in eval.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import numpy as np
from etils import epath

from big_vision_like import checkpoint as ckpt_lib
from big_vision_like import config as config_lib
from big_vision_like import experiment
from big_vision_like import metrics as metrics_lib
from big_vision_like.evaluators import fewshot

PP = "decode(1)|value_range(-1, 1)"


def plain_scores(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                 l2_reg: float, classes: np.ndarray) -> np.ndarray:
  """The probe's scores by ordinary least squares on [xs 1; sqrt(l2) I 0] [w; b] = [y; 0]."""
  x_train, x_test = np.asarray(x_train, np.float64), np.asarray(x_test, np.float64)
  mean = x_train.mean(0)
  scale = np.sqrt(np.mean((x_train - mean) ** 2)) or 1.0
  xs = (x_train - mean) / scale
  y = np.where(y_train[:, None] == classes[None], 1.0, -1.0)
  n, d = xs.shape
  a = np.block([[xs, np.ones((n, 1))], [np.sqrt(l2_reg) * np.eye(d), np.zeros((d, 1))]])
  b = np.concatenate([y, np.zeros((d, len(classes)))])
  wb = np.linalg.lstsq(a, b, rcond=None)[0]
  return np.concatenate([(x_test - mean) / scale, np.ones((len(x_test), 1))], 1) @ wb


def probe(config: Any, workdir: str, *, dataset: tuple[str, str, str],
          shots: list[int], l2_reg: float, seed: int, pp: str = PP,
          data_dir: str | None = None) -> dict[str, Any]:
  """{"step", "fewshot": {key: acc}, "numpy": {key: acc}, "max_score_diff": {key: x}}."""
  config = config_lib.resolve(config)
  ckpt_dir = epath.Path(workdir) / "checkpoints"
  with ckpt_lib.Checkpointer(str(ckpt_dir), async_save=False, read_only=True) as ckpt:
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {ckpt_dir}: train first")
    meta = ckpt.read_meta(step)
    exp = experiment.build(config, input_spec=experiment.spec_from_json(meta["input_spec"]))
    params, _, step = ckpt.restore_params(exp.abstract_params, step=step)
  name = dataset[0].replace("/", "_")
  ev = fewshot.Evaluator(exp.predict_fn, batch_size=config.input.batch_size, mesh=exp.mesh,
                         data_axes=exp.data_axes, datasets={name: dataset}, shots=shots,
                         pp_train=pp, pp_eval=pp, l2_reg=l2_reg, seed=seed,
                         data_dir=data_dir)
  ours = ev.run(params, step)
  f = ev.last_features[name]
  classes = np.unique(f["y_train"])
  plain, diff = {}, {}
  for k in ev.shots:
    use = f["rank"] < k
    ref = plain_scores(f["x_train"][use], f["y_train"][use], f["x_test"], l2_reg, classes)
    got = fewshot.fit_probe(f["x_train"][use], f["y_train"][use], l2_reg,
                            classes).scores(f["x_test"])
    plain[f"{name}_{k}shot"] = float(np.mean(classes[ref.argmax(1)] == f["y_test"]))
    diff[f"{name}_{k}shot"] = float(np.abs(got - ref).max())
  return {"step": step, "workdir": str(workdir), "l2_reg": l2_reg, "seed": seed,
          "fewshot": ours, "numpy": plain, "max_score_diff": diff}


def main(argv: list[str] | None = None) -> int:
  pre = argparse.ArgumentParser(add_help=False)
  pre.add_argument("--shots", default="1,5,10,25")
  pre.add_argument("--l2_reg", type=float, default=fewshot.DEFAULT_L2_REG)
  pre.add_argument("--seed", type=int, default=0)
  pre.add_argument("--dataset", default="fashion_mnist,train,test",
                   help="tfds_name,train_split,test_split")
  pre.add_argument("--pp", default=PP, help="pp string of the shots and the test split")
  pre.add_argument("--data_dir", default=None, help="TFDS data dir of --dataset")
  pre.add_argument("--json", default=None, help="also write the result here")
  args, rest = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
  dataset = tuple(args.dataset.split(","))
  if len(dataset) != 3:
    pre.error(f"--dataset {args.dataset!r} must be tfds_name,train_split,test_split")
  config, workdir = config_lib.parse_cli(rest, __doc__.split("\n")[0])
  metrics_lib.setup_logging()
  out = probe(config, workdir, dataset=dataset, shots=[int(k) for k in args.shots.split(",")],
              l2_reg=args.l2_reg, seed=args.seed, pp=args.pp, data_dir=args.data_dir)
  text = json.dumps(out, indent=2, sort_keys=True)
  print(text)
  if args.json:
    epath.Path(args.json).write_text(text)
  logging.info("fewshot_probe done")
  return 0


if __name__ == "__main__":
  sys.exit(main())
