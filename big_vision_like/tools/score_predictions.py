"""Scores saved predictions against a label source, offline.

    python -m big_vision_like.tools.score_predictions PREDICTIONS \\
        [--labels real.json | labels.json | labels.csv | tfds:NAME:SPLIT] \\
        [--file_names names.txt] [--keys resnet50,vgg16] [--class_subset imagenet_a] \\
        [--mean_ap] [--num_bins 15] [--json out.json|-]

PREDICTIONS is a prediction dump of an evaluator (`save_predictions=True`),
or any .npz holding `file_name` plus per-model arrays of top-k ids [N, k]
(int), top-1 ids [N] (int) or logits [N, C] (float), or a .npy of ids or
logits with `--file_names`. Predictions and labels are joined on file name;
unknown or duplicate names, ids out of range and malformed label files are
refused with a message naming the culprit. Without `--labels`, the labels
stored in the file (e.g. `label`, `real_label`) are used.

The metrics are computed by `evaluators.report.score`, the code the in-loop
evaluators run, so a dump re-scored here gives the in-loop numbers exactly.
Prints one table row per model; `--json` writes {model: {metric: value}}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import numpy as np

from big_vision_like import label_sources
from big_vision_like import scoring
from big_vision_like.evaluators import report

# Arrays of a dump/npz that are labels or bookkeeping, not predictions.
_NOT_PREDICTIONS = {"file_name", "topk_scores", "loss", "label", "labels", "original_label",
                    "real_label", "correct_multi_labels", "unclear_multi_labels",
                    "wrong_multi_labels", "is_problematic"}


def _read_names(path: str) -> np.ndarray:
  if path.endswith(".npy"):
    return np.load(path, allow_pickle=False).astype(str)
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as f:
      return f["file_name"].astype(str)
  with open(path) as f:
    return np.array([line.strip() for line in f if line.strip()])


def load_predictions(path: str, *, file_names: str | None = None,
                     keys: Sequence[str] | None = None
                     ) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]], dict]:
  """(file_names, {model: {"topk_ids"|"logits": array}}, other arrays in the file)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"predictions file {path} does not exist")
  if path.endswith(".npy"):
    arrays = {os.path.splitext(os.path.basename(path))[0]: np.load(path, allow_pickle=False)}
  else:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  meta = {k[len("meta_"):]: v for k, v in arrays.items() if k.startswith("meta_")}
  arrays = {k: v for k, v in arrays.items() if not k.startswith("meta_")}
  if file_names is not None:
    names = _read_names(file_names)
  elif "file_name" in arrays:
    names = arrays["file_name"].astype(str)
  else:
    raise ValueError(f"{path}: no file_name array; pass --file_names (predictions are "
                     f"joined to labels on file names, never on position)")
  models: dict[str, dict[str, np.ndarray]] = {}
  if "topk_ids" in arrays:  # A dump of this codebase: one model.
    name = str(meta.get("evaluator", os.path.splitext(os.path.basename(path))[0]))
    models[name] = {"topk_ids": arrays["topk_ids"]}
    if "logits" in arrays:
      models[name]["logits"] = arrays["logits"]
  else:
    wanted = list(keys) if keys else [k for k in arrays if k not in _NOT_PREDICTIONS]
    for key in wanted:
      if key not in arrays:
        raise KeyError(f"{path}: no array {key!r} (arrays: {sorted(arrays)})")
      a = arrays[key]
      if a.ndim == 2 and a.dtype.kind == "f":
        models[key] = {"logits": a}
      elif a.ndim in (1, 2) and a.dtype.kind in "iu":
        models[key] = {"topk_ids": a.reshape(len(a), -1).astype(np.int32)}
      else:
        raise ValueError(f"{path}: array {key!r} of shape {a.shape} and dtype {a.dtype} "
                         f"is neither class ids [N] / [N, k] nor logits [N, C]")
  if not models:
    raise ValueError(f"{path}: no prediction arrays found (arrays: {sorted(arrays)})")
  for key, m in models.items():
    n = len(next(iter(m.values())))
    if n != len(names):
      raise ValueError(f"{path}: {key!r} has {n} rows but there are {len(names)} file "
                       f"names")
  extra = {k: v for k, v in arrays.items() if k in _NOT_PREDICTIONS and k != "file_name"}
  extra["_meta"] = meta
  return names, models, extra


def score_file(path: str, *, labels: str | None = None, data_dir: str | None = None,
               file_names: str | None = None, keys: Sequence[str] | None = None,
               class_subset: str | Sequence[int] | None = None,
               labels_in_subset: bool = False, num_classes: int | None = None,
               mean_ap: bool = False, num_bins: int | None = None, prefix: str = "real",
               topk: int = 5) -> dict[str, dict[str, float]]:
  """{model: {metric: value}} for every model in `path`."""
  names, models, extra = load_predictions(path, file_names=file_names, keys=keys)
  meta = extra.pop("_meta")
  own = label_sources.from_arrays({"file_name": names, **extra,
                                   "topk_ids": np.zeros((len(names), 1))},
                                  f"{path} (its own labels)")
  if labels is None:
    source = own
  else:
    source = label_sources.load(labels, data_dir=data_dir)
    source = source.take(label_sources.join(names, source, what=path))
    if source.label is None and own.label is not None:
      source.label = own.label  # e.g. original labels next to ReaL sets
  subset = label_sources.resolve_class_subset(class_subset)
  if subset is None and meta.get("class_subset") is not None and len(meta["class_subset"]):
    subset = [int(i) for i in meta["class_subset"]]  # a dump of an A/R evaluator
  if labels_in_subset and subset is not None and source.label is not None:
    scoring.check_ids(source.label, len(subset), f"{source.origin}: subset label")
    source.label = np.asarray(subset, np.int32)[source.label]
  if num_bins is None:  # a calibration dump says how it was binned
    num_bins = int(meta.get("num_bins", 15))
  results = {}
  for model, m in models.items():
    logits = m.get("logits")
    n_classes = num_classes or (logits.shape[1] if logits is not None else None) or int(
        meta.get("num_classes", 1000))
    if logits is not None:
      scoring.check_finite(logits, f"{path}: {model}")
      ids = (scoring.top_k(logits, topk)[0] if subset is None
             else scoring.subset_top_k(logits, subset, topk)[0])
    else:
      ids = m["topk_ids"]
      scoring.check_ids(ids, n_classes, f"{path}: {model}")
      if subset is not None:  # (idempotent on a dump that is already restricted)
        ids = scoring.restrict_topk(ids, subset)
    out: dict[str, float] = {}
    kinds = []
    if source.label is not None:
      kinds.append("classification")
    if source.unclear is not None:
      kinds.append("shankar")
    elif source.sets is not None:
      kinds.append("sets")
    if logits is not None and source.label is not None:
      kinds.append("calibration")
    if not kinds:
      raise ValueError(f"{path}: no labels to score against; pass --labels")
    for kind in kinds:
      got, _ = report.score(kind, topk_ids=ids, labels=source, num_classes=n_classes,
                            logits=logits, prefix=prefix,
                            mean_ap=mean_ap and kind == "sets", num_bins=num_bins)
      out.update(got)
    results[model] = out
  return results


def format_table(results: dict[str, dict[str, float]]) -> str:
  columns: list[str] = []
  for metrics in results.values():
    columns += [k for k in metrics if k not in columns]
  width = max(len(m) for m in results) + 2
  head = "model".ljust(width) + " ".join(c.rjust(max(9, len(c))) for c in columns)
  lines = [head, "-" * len(head)]
  for model, metrics in results.items():
    cells = []
    for c in columns:
      v = metrics.get(c)
      text = "" if v is None else (f"{int(v)}" if c.startswith("num_") else
                                   f"{100 * v:.3f}" if _is_percent(c) else f"{v:.4f}")
      cells.append(text.rjust(max(9, len(c))))
    lines.append(model.ljust(width) + " ".join(cells))
  return "\n".join(lines)


def _is_percent(metric: str) -> bool:
  return "@" in metric or "accuracy" in metric or "fraction" in metric or metric in (
      "ece", "ece_equal_mass", "mAP")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m big_vision_like.tools.score_predictions",
      description=__doc__.split("\n\n")[0])
  parser.add_argument("predictions", help=".npz dump / npz of models / .npy")
  parser.add_argument("--labels", help="real.json, {file_name: ids}.json, .csv or "
                      "tfds:NAME[/CONFIG]:SPLIT (default: labels in the file)")
  parser.add_argument("--data_dir", help="TFDS data dir for --labels tfds:...")
  parser.add_argument("--file_names", help="names for a .npy: .txt (one per line), .npy or .npz")
  parser.add_argument("--keys", help="comma-separated prediction arrays to score")
  parser.add_argument("--class_subset", help="imagenet_a, imagenet_r or comma-separated ids")
  parser.add_argument("--labels_in_subset", action="store_true",
                      help="labels are numbered within the subset (TFDS imagenet_a/r)")
  parser.add_argument("--num_classes", type=int)
  parser.add_argument("--mean_ap", action="store_true", help="multi-label mAP (needs logits)")
  parser.add_argument("--num_bins", type=int,
                      help="calibration bins (default: the dump's, else 15)")
  parser.add_argument("--json", help="write {model: {metric: value}} here ('-': stdout)")
  args = parser.parse_args(argv)
  subset: Any = args.class_subset
  if subset and subset[0].isdigit():
    subset = [int(i) for i in subset.split(",")]
  try:
    results = score_file(args.predictions, labels=args.labels, data_dir=args.data_dir,
                         file_names=args.file_names,
                         keys=args.keys.split(",") if args.keys else None,
                         class_subset=subset, labels_in_subset=args.labels_in_subset,
                         num_classes=args.num_classes, mean_ap=args.mean_ap,
                         num_bins=args.num_bins)
  except (ValueError, KeyError, FileNotFoundError) as e:
    print(f"score_predictions: error: {e}", file=sys.stderr)
    return 2
  if args.json != "-":
    print(format_table(results))
  if args.json:
    text = json.dumps(results, indent=2, sort_keys=True)
    if args.json == "-":
      print(text)
    else:
      with open(args.json, "w") as f:
        f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
