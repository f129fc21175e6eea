"""Scores saved predictions against a label source, offline.

    python -m big_vision_like.tools.score_predictions PREDICTIONS \\
        [--labels real.json | labels.json | labels.csv | tfds:NAME:SPLIT] \\
        [--file_names names.txt] [--keys resnet50,vgg16] [--class_subset imagenet_a] \\
        [--kind logits|topk] [--mean_ap] [--num_bins 15] [--json out.json|-]

PREDICTIONS is a prediction dump of an evaluator (`save_predictions=True`),
or any .npz holding `file_name` plus per-model arrays of top-k ids [N, k]
(int), top-1 ids [N] (int) or logits [N, C] (float), or a .npy of ids or
logits with `--file_names`. Predictions and labels are joined on file name;
unknown or duplicate names, ids out of range and malformed label files are
refused with a message naming the culprit. Without `--labels`, the labels
stored in the file (e.g. `label`, `real_label`) are used. Files are told apart
by content, never unpickled; text, JSON, truncated archives and object arrays
are refused naming the file and the problem. A float array that may be top-k
scores (named like scores, or every row sorted best first), or logits whose
columns are not the labels' classes, is refused unless `--kind` says what it is.

The metrics are computed by `evaluators.report.score`, the code the in-loop
evaluators run, so a dump re-scored here gives the in-loop numbers exactly.
Prints one table row per model; `--json` writes {model: {metric: value}}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import zipfile
from typing import Any, Sequence

import numpy as np

from big_vision_like import label_sources
from big_vision_like import scoring
from big_vision_like.evaluators import report

# Arrays of a dump/npz that are labels or bookkeeping, not predictions.
_NOT_PREDICTIONS = {"file_name", "topk_scores", "loss", "label", "labels", "original_label",
                    "real_label", "correct_multi_labels", "unclear_multi_labels",
                    "wrong_multi_labels", "is_problematic"}

KINDS = ("logits", "topk")
_KIND_OPTION = "--kind logits|topk (score_file(kind=...))"
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a file entry; an empty archive
_REQUIRED = ("`file_name` [N] (or --file_names) and either `topk_ids` [N, k] int (a "
             "prediction dump) or arrays of class ids [N] / [N, k] (int) or logits "
             "[N, C] (float)")


def _describe(arrays: dict[str, Any]) -> str:
  """"a (6, 5) float32, file_name (6,) <U22": what a file holds, for messages."""
  return ", ".join(f"{k} {tuple(np.shape(v))} {getattr(v, 'dtype', type(v).__name__)}"
                   for k, v in sorted(arrays.items())) or "nothing"


def _not_numpy_message(path: str, head: bytes) -> str:
  """Why `path` (starting with `head`) is neither an .npz nor an .npy file."""
  if not head:
    what = "it is empty"
  elif head.lstrip()[:1] in (b"{", b"["):
    what = "it looks like JSON"
  elif all(32 <= b < 127 or b in b"\t\r\n" for b in head):
    what = f"it looks like text (it starts with {head[:40].decode()!r})"
  else:
    what = f"it starts with the bytes {head[:8]!r}"
  return (f"{path}: not an .npz archive (np.savez) nor an .npy file (np.save): {what}. "
          f"Predictions are read from an .npz holding {_REQUIRED}, or an .npy of ids or "
          f"logits with --file_names")


def _pickled(e: Exception) -> bool:
  return "allow_pickle" in str(e) or "pickled" in str(e)


def load_arrays(path: str, what: str = "predictions file") -> tuple[dict[str, np.ndarray], str]:
  """({name: array}, "npz" | "npy") of an .npz or .npy file, told apart by content.

  Never unpickles. Anything else (text, JSON, a truncated or corrupt file, an
  archive of other files, arrays of Python objects) is a ValueError that names
  the file and the problem.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what} {path} does not exist")
  with open(path, "rb") as f:
    head = f.read(64)
  if head.startswith(_NPY_MAGIC):
    try:
      array = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
      if _pickled(e):
        raise ValueError(f"{path}: the .npy holds Python objects (dtype=object), which "
                         f"are never unpickled here; save numeric ids or logits") from None
      raise ValueError(f"{path}: truncated or corrupt .npy file ({e})") from None
    return {os.path.splitext(os.path.basename(path))[0]: array}, "npy"
  if not head.startswith(_ZIP_MAGICS):
    raise ValueError(_not_numpy_message(path, head))
  arrays: dict[str, Any] = {}
  problem = None
  try:
    with np.load(path, allow_pickle=False) as f:
      for key in f.files:
        try:
          arrays[key] = f[key]
        except ValueError as e:
          if not _pickled(e):
            raise
          problem = (f"{path}: array {key!r} holds Python objects (dtype=object), which "
                     f"are never unpickled here; save names as str arrays and "
                     f"predictions as numbers")
          break
  except (zipfile.BadZipFile, ValueError, EOFError, OSError) as e:
    raise ValueError(f"{path}: truncated or corrupt .npz archive: it starts like a zip "
                     f"archive but cannot be read ({type(e).__name__}: {e})") from None
  if problem:
    raise ValueError(problem)
  others = sorted(k for k, v in arrays.items() if not isinstance(v, np.ndarray))
  if others:
    raise ValueError(f"{path}: a zip archive but not an .npz: {others[:3]} are not .npy "
                     f"arrays")
  return arrays, "npz"


def _read_names(path: str) -> np.ndarray:
  with open(path, "rb") as f:
    binary = f.read(len(_NPY_MAGIC)).startswith((_NPY_MAGIC,) + _ZIP_MAGICS)
  if binary or path.endswith((".npy", ".npz")):
    arrays, fmt = load_arrays(path, "file names file")
    if fmt == "npy":
      return next(iter(arrays.values())).astype(str)
    if "file_name" not in arrays:
      raise ValueError(f"{path}: the file names .npz has no `file_name` array (it has: "
                       f"{_describe(arrays)})")
    return arrays["file_name"].astype(str)
  with open(path) as f:
    return np.array([line.strip() for line in f if line.strip()])


def _scores_hint(key: str, a: np.ndarray) -> str | None:
  """Why a float [N, C] array may be top-k scores rather than logits, or None."""
  if re.search(r"score|top_?k|top\d", key.lower()):
    return f"its name {key!r} says top-k scores"
  steps = np.diff(a, axis=1)
  if a.shape[1] > 1 and (steps <= 0).all() and (steps < 0).any():
    return "every row is sorted best first, as top-k scores are"
  return None


def _ambiguous(path: str, key: str, a: np.ndarray, why: str) -> str:
  return (f"{path}: array {key!r} of shape {a.shape} and dtype {a.dtype} is ambiguous: "
          f"{why}. Top-k scores cannot be scored without their class ids, and scoring "
          f"them as {a.shape[1]}-class logits gives a wrong metric. State the kind with "
          f"{_KIND_OPTION}: logits if they are the logits of a {a.shape[1]}-class model, "
          f"topk if they are class ids, best first")


def _model_arrays(path: str, key: str, a: np.ndarray, kind: str | None
                  ) -> dict[str, np.ndarray]:
  """{"topk_ids": ...} or {"logits": ...} for array `key` of a generic npz/npy."""
  where = f"{path}: array {key!r} of shape {a.shape} and dtype {a.dtype}"
  if a.dtype.kind not in "iuf" or a.ndim not in (1, 2) or (kind == "logits" and a.ndim != 2):
    need = "logits [N, C]" if kind == "logits" else (
        "class ids [N] / [N, k]" if kind == "topk" else
        "class ids [N] / [N, k] (int) nor logits [N, C] (float)")
    raise ValueError(f"{where} is not {need}" if kind else f"{where} is neither {need}")
  if kind == "logits":
    return {"logits": a if a.dtype.kind == "f" else a.astype(np.float32)}
  if kind == "topk" or a.dtype.kind in "iu":
    if a.dtype.kind == "f" and not (np.isfinite(a).all() and (a == np.round(a)).all()):
      raise ValueError(f"{where}: --kind topk says class ids, but it holds non-integer "
                       f"values (top-k scores?); scores cannot be scored without their "
                       f"class ids")
    return {"topk_ids": a.reshape(len(a), -1).astype(np.int32)}
  if a.ndim == 1:
    raise ValueError(f"{where} is neither class ids [N] (int) nor logits [N, C] (float)")
  why = _scores_hint(key, a)
  if why:
    raise ValueError(_ambiguous(path, key, a, why))
  return {"logits": a}


def load_predictions(path: str, *, file_names: str | None = None,
                     keys: Sequence[str] | None = None, kind: str | None = None
                     ) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]], dict]:
  """(file_names, {model: {"topk_ids"|"logits": array}}, other arrays in the file).

  `kind` ("logits" | "topk" | None) states what the prediction arrays are;
  without it a float array that may be top-k scores is refused.
  """
  if kind not in (None,) + KINDS:
    raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
  arrays, fmt = load_arrays(path)
  meta = {k[len("meta_"):]: v for k, v in arrays.items() if k.startswith("meta_")}
  arrays = {k: v for k, v in arrays.items() if not k.startswith("meta_")}
  if file_names is not None:
    names = _read_names(file_names)
  elif "file_name" in arrays:
    names = arrays["file_name"].astype(str)
  elif fmt == "npy":
    (only,) = arrays.values()
    renamed = (" (it is named .npz but is an .npy file, written by np.save, not np.savez)"
               if path.endswith(".npz") else "")
    raise ValueError(f"{path}: an .npy file holds one array (shape {only.shape}, dtype "
                     f"{only.dtype}) and no file names{renamed}; pass --file_names "
                     f"(predictions are joined to labels on file names, never on "
                     f"position)")
  else:
    raise ValueError(f"{path}: no file_name array; pass --file_names (predictions are "
                     f"joined to labels on file names, never on position). Needed: "
                     f"{_REQUIRED}; it has: {_describe(arrays)}")
  models: dict[str, dict[str, np.ndarray]] = {}
  if "topk_ids" in arrays:  # A dump of this codebase: one model.
    name = str(meta.get("evaluator", os.path.splitext(os.path.basename(path))[0]))
    models[name] = {"topk_ids": _model_arrays(path, "topk_ids", arrays["topk_ids"],
                                              "topk")["topk_ids"]}
    if kind == "logits" and "logits" not in arrays:
      raise ValueError(f"{path}: --kind logits, but the dump has no logits (they are "
                       f"saved with save_logits=True); it has: {_describe(arrays)}")
    if "logits" in arrays and kind != "topk":
      models[name]["logits"] = _model_arrays(path, "logits", arrays["logits"],
                                             "logits")["logits"]
  else:
    wanted = list(keys) if keys else [k for k in arrays if k not in _NOT_PREDICTIONS]
    for key in wanted:
      if key not in arrays:
        raise KeyError(f"{path}: no array {key!r} (arrays: {sorted(arrays)})")
      models[key] = _model_arrays(path, key, arrays[key], kind)
  if not models:
    hint = (" (topk_scores cannot be scored without topk_ids, their class ids)"
            if "topk_scores" in arrays else "")
    raise ValueError(f"{path}: no prediction arrays{hint}. Needed: {_REQUIRED}; it has: "
                     f"{_describe(arrays)}")
  for key, m in models.items():
    n = len(next(iter(m.values())))
    if n != len(names):
      raise ValueError(f"{path}: {key!r} has {n} rows but there are {len(names)} file "
                       f"names")
  extra = {k: v for k, v in arrays.items() if k in _NOT_PREDICTIONS and k != "file_name"}
  extra["_meta"] = meta
  return names, models, extra


def _check_logits_cover(path: str, model: str, logits: np.ndarray,
                        source: label_sources.LabelSource, num_classes: int | None,
                        meta_classes: int | None) -> None:
  """Refuses logits whose columns are not the classes the labels are numbered in."""
  columns = logits.shape[1]
  where = f"{path}: {model!r} (logits of shape {logits.shape}, dtype {logits.dtype})"
  fix = (f"If they are the logits of a {columns}-class model, say so with --kind logits; "
         f"if they are class ids, best first, with --kind topk")
  for count, said in ((num_classes, "--num_classes"), (meta_classes, "the dump's num_classes"),
                      (source.num_classes, f"the labels ({source.origin})")):
    if count is not None and count != columns:
      raise ValueError(f"{where}: {columns} columns, but {said} says {count} classes: "
                       f"not logits over those classes (top-k scores?). {fix}")
  top = source.max_id()
  if top is not None and top >= columns:
    raise ValueError(f"{where}: {columns} columns, but the labels ({source.origin}) use "
                     f"class ids up to {top}: not logits over the labels' classes "
                     f"(top-k scores?). {fix}")


def score_file(path: str, *, labels: str | None = None, data_dir: str | None = None,
               file_names: str | None = None, keys: Sequence[str] | None = None,
               class_subset: str | Sequence[int] | None = None,
               labels_in_subset: bool = False, num_classes: int | None = None,
               mean_ap: bool = False, num_bins: int | None = None, prefix: str = "real",
               topk: int = 5, kind: str | None = None) -> dict[str, dict[str, float]]:
  """{model: {metric: value}} for every model in `path`.

  `kind` ("logits" or "topk") states what the prediction arrays are; without
  it, float arrays that may be top-k scores, and logits whose columns do not
  match the labels' classes, are refused (ValueError naming file, key, shape).
  """
  names, models, extra = load_predictions(path, file_names=file_names, keys=keys, kind=kind)
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
    source.num_classes = None  # its count was the subset's, not the logits' numbering
  if num_bins is None:  # a calibration dump says how it was binned
    num_bins = int(meta.get("num_bins", 15))
  results = {}
  for model, m in models.items():
    logits = m.get("logits")
    n_classes = num_classes or (logits.shape[1] if logits is not None else None) or int(
        meta.get("num_classes", 1000))
    if logits is not None and kind != "logits":
      meta_classes = meta.get("num_classes")
      _check_logits_cover(path, model, logits, source, num_classes,
                          None if meta_classes is None else int(meta_classes))
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
    metric_kinds = []
    if source.label is not None:
      metric_kinds.append("classification")
    if source.unclear is not None:
      metric_kinds.append("shankar")
    elif source.sets is not None:
      metric_kinds.append("sets")
    if logits is not None and source.label is not None:
      metric_kinds.append("calibration")
    if not metric_kinds:
      raise ValueError(f"{path}: no labels to score against; pass --labels")
    for metric_kind in metric_kinds:
      got, _ = report.score(metric_kind, topk_ids=ids, labels=source, num_classes=n_classes,
                            logits=logits, prefix=prefix,
                            mean_ap=mean_ap and metric_kind == "sets", num_bins=num_bins)
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
  parser.add_argument("--kind", choices=KINDS,
                      help="what the prediction arrays are: logits [N, C] or top-k class "
                      "ids (needed when a float array may be either)")
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
                         num_bins=args.num_bins, kind=args.kind)
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
