"""Finds suspected label errors of a split with confident learning (cleanlab).

    # K-fold: out-of-sample probabilities from our own train loop
    python -m big_vision_like.tools.find_label_errors --folds 4 \\
        --config configs/fashion_vit.py:epochs=2 --workdir workdirs/label_errors \\
        --config.input.data.name=fashion_mnist_noisy [--flipped FLIPS.json] [--top 24]

    # Existing prediction dumps (with logits) that together cover the split
    python -m big_vision_like.tools.find_label_errors --predictions a.npz [b.npz ...] \\
        --data fashion_mnist_indexed:test [--data_dir DIR] --out DIR

Why it exists: confident learning needs, for every example, class
probabilities from a model that never trained on it. With `--folds K` the
split of `config.input.data` is cut into K contiguous record ranges; fold k
trains the config's recipe (big_vision_like.train, unchanged) on the split
minus range k, in `{workdir}/fold_k`, and its one evaluator -- a
classification evaluator with `save_predictions`/`save_logits` on range k,
using the pp of the config's first classification evaluator (or `--eval_pp`)
-- dumps range k's logits at the end of training. The dumps of the K folds
cover the split exactly once. Resumable: a fold whose
`heldout_predictions.npz` exists is skipped; an interrupted fold resumes from
its checkpoints, as any training run does. One process (no multi-host K-fold).

Then `label_errors.rank` (cleanlab's `find_label_issues` and
`get_label_quality_scores`) ranks the examples and the output dir (`--out`,
default `{workdir}/label_errors`) gets label_issues.csv/.md (file_name,
given and suggested label, score; worst first), top_suspects.png (also as a
TensorBoard image there) and summary.json (with precision/recall against
`--flipped`, the JSON written by tools/inject_label_noise).

Predictions are joined to labels on `file_name`; a dataset without that
feature (plain fashion_mnist) is named by record position, "train_00042", as
the evaluators name its records in their dumps.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from typing import Any

import ml_collections

from big_vision_like import config as config_lib
from big_vision_like import errors
from big_vision_like import label_errors
from big_vision_like import metrics as metrics_lib
from big_vision_like.data import splits as splits_lib
from big_vision_like.data import tfds_source

HELDOUT = "heldout"  # the fold's evaluator name (and predictions/ subfolder)
DONE = "heldout_predictions.npz"  # a finished fold's out-of-sample predictions


def fold_splits(name: str, split: str, folds: int, data_dir: str | None = None
                ) -> list[tuple[str, str]]:
  """[(training split, held-out split)] of each fold, as absolute TFDS split strings.

  Fold k holds out records [k N / K, (k + 1) N / K) of `split` (in its own
  order) and trains on the rest ("train[0:15000]+train[30000:60000]").
  """
  builder = tfds_source.get_builder(name, data_dir)
  ranges = splits_lib.resolve(builder, split)
  total = sum(hi - lo for _, lo, hi in ranges)
  if not 2 <= folds <= total:
    raise ValueError(f"--folds {folds}: needs 2 <= folds <= {total} (the examples of "
                     f"{name}:{split})")
  out = []
  for k in range(folds):
    lo, hi = k * total // folds, (k + 1) * total // folds
    held = splits_lib.Share(split, ranges, lo, hi).spec
    rest = [splits_lib.Share(split, ranges, a, b).spec for a, b in ((0, lo), (hi, total))]
    out.append(("+".join(s for s in rest if s), held))
  return out


def default_eval_pp(config: ml_collections.ConfigDict) -> str:
  """The pp of the config's first classification evaluator."""
  for name, ev in (config.get("evals") or {}).items():
    if ev.get("type") == "classification" and ev.get("pp"):
      return ev["pp"]
  raise errors.ConfigError("config.evals has no classification evaluator whose pp the "
                           "held-out predictions could use; pass --eval_pp")


def fold_config(config: ml_collections.ConfigDict, train_split: str, held_split: str,
                eval_pp: str, cache_dir: str | None = None) -> ml_collections.ConfigDict:
  """The config of one fold: training on `train_split`, one evaluator on `held_split`.

  `cache_dir`: a compilation cache shared by the folds (equal folds compile the
  same programs), unless the config names its own cache or turns it off.
  """
  out = ml_collections.ConfigDict(config.to_dict())
  data = out.input.data
  with out.ignore_type():
    if cache_dir and out.get("compilation_cache") in (None, True):
      out.compilation_cache = cache_dir
    data.split = train_split
    out.evals = ml_collections.ConfigDict({HELDOUT: dict(
        type="classification", data=dict(name=data.name, split=held_split,
                                         data_dir=data.get("data_dir")),
        pp=eval_pp, save_predictions=True, save_logits=True)})
  return out


def _source(config: ml_collections.ConfigDict) -> dict[str, Any]:
  data = config.input.data
  if not isinstance(data, (dict, ml_collections.ConfigDict)) or "name" not in data:
    raise errors.ConfigError(f"--folds needs one dataset in config.input.data (a dict "
                             f"with name and split), got {data!r}")
  return {"name": data["name"], "split": data.get("split") or "train",
          "data_dir": data.get("data_dir")}


def run_folds(config: ml_collections.ConfigDict, workdir: str, folds: int,
              eval_pp: str | None = None) -> list[str]:
  """Trains (or resumes, or skips) every fold; returns the K prediction files."""
  from big_vision_like import train as train_lib  # pylint: disable=g-import-not-at-top
  data = _source(config)
  specs = fold_splits(data["name"], data["split"], folds, data["data_dir"])
  eval_pp = eval_pp or default_eval_pp(config)
  os.makedirs(workdir, exist_ok=True)
  plan = {"dataset": data, "folds": [{"train": t, "heldout": h} for t, h in specs]}
  plan_path = os.path.join(workdir, "folds.json")
  if os.path.exists(plan_path):
    with open(plan_path) as f:
      old = json.load(f)
    if old != plan:
      raise ValueError(f"{plan_path}: this workdir holds folds {old}, but the command asks "
                       f"for {plan}; use another --workdir")
  else:
    with open(plan_path, "w") as f:
      json.dump(plan, f, indent=1)
  paths = []
  for k, (train_split, held_split) in enumerate(specs):
    fold_dir = os.path.join(workdir, f"fold_{k}")
    done = os.path.join(fold_dir, DONE)
    paths.append(done)
    if os.path.exists(done):
      logging.info("fold %d/%d: predictions exist (%s), skipped", k + 1, folds, done)
      continue
    logging.info("fold %d/%d: training on %s, predicting %s", k + 1, folds, train_split,
                 held_split)
    cache = os.path.join(workdir, "compilation_cache")
    out = train_lib.train(fold_config(config, train_split, held_split, eval_pp, cache),
                          fold_dir)
    out.pop("state")
    if out["preempted"]:
      raise RuntimeError(f"fold {k} stopped at step {out['step']} (preempted); run the "
                         f"same command again to resume it from {fold_dir}")
    dump = os.path.join(fold_dir, "predictions", HELDOUT, f"step_{out['step']:08d}.npz")
    if not os.path.exists(dump):
      raise FileNotFoundError(f"fold {k}: training finished at step {out['step']} but "
                              f"wrote no held-out predictions {dump}")
    tmp = done + ".tmp"
    shutil.copyfile(dump, tmp)
    os.replace(tmp, done)  # the marker of a finished fold appears whole or not at all
  return paths


def find(*, data: dict, predictions: list[str], out_dir: str, top: int = 24,
         flipped: str | None = None, extra: dict | None = None) -> dict[str, Any]:
  """Ranks `data`'s labels against the predictions and writes the report; returns the summary."""
  labels = label_errors.split_labels(data["name"], data["split"], data.get("data_dir"))
  probs = label_errors.load_probabilities(predictions, labels)
  truth = None
  if flipped:
    with open(flipped) as f:
      truth = json.load(f)
  ranking = label_errors.rank(labels.label, probs)
  return label_errors.write_report(out_dir, data=data, labels=labels, ranking=ranking,
                                   top=top, flipped=truth,
                                   extra={"predictions": predictions, **(extra or {})})


def main(argv: list[str] | None = None) -> int:
  pre = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  pre.add_argument("--folds", type=int, default=None,
                   help="K-fold training with --config/--workdir (and --config.* overrides)")
  pre.add_argument("--predictions", nargs="+", default=None,
                   help=".npz dumps with file_name and logits (or probs) covering --data")
  pre.add_argument("--data", default=None, help="name:split of the labels (--predictions)")
  pre.add_argument("--data_dir", default=None, help="TFDS data dir of --data")
  pre.add_argument("--out", default=None, help="output dir (default {workdir}/label_errors)")
  pre.add_argument("--top", type=int, default=24, help="suspects in the picture")
  pre.add_argument("--flipped", default=None,
                   help="JSON of truly flipped labels (tools/inject_label_noise)")
  pre.add_argument("--eval_pp", default=None, help="pp of the held-out predictions")
  args, rest = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
  if (args.folds is None) == (args.predictions is None):
    pre.error("give exactly one of --folds K (with --config, --workdir) and --predictions")
  metrics_lib.setup_logging()
  if args.folds is not None:
    config, workdir = config_lib.parse_cli(rest, __doc__.split("\n")[0])
    data = _source(config)
    label_errors.split_labels(data["name"], data["split"], data["data_dir"])  # fail early
    predictions = run_folds(config, workdir, args.folds, args.eval_pp)
    out_dir = args.out or os.path.join(workdir, "label_errors")
    extra = {"folds": args.folds, "workdir": workdir}
  else:
    if rest:
      pre.error(f"unrecognized arguments {rest} (--config/--workdir go with --folds)")
    if not args.data or ":" not in args.data or not args.out:
      pre.error("--predictions needs --data name:split and --out DIR")
    name, _, split = args.data.partition(":")
    data = {"name": name, "split": split, "data_dir": args.data_dir}
    predictions, out_dir, extra = args.predictions, args.out, {}
  summary = find(data=data, predictions=predictions, out_dir=out_dir, top=args.top,
                 flipped=args.flipped, extra=extra)
  line = (f"{summary['num_flagged']} of {summary['num_examples']} examples of "
          f"{summary['split']} flagged (out-of-sample accuracy "
          f"{summary['out_of_sample_accuracy']:.4f})")
  if "against_flipped" in summary:
    t = summary["against_flipped"]
    line += (f"; vs {t['num_flipped']} flipped: precision {t['precision']}, "
             f"recall {t['recall']}")
  print(f"{line}. Report: {out_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
