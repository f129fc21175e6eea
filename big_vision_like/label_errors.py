"""Suspected label errors of a split, ranked by confident learning (cleanlab).

Why: the papers behind this project (Northcutt et al., "Pervasive Label
Errors in Test Sets") find wrong labels by comparing each given label with a
model's OUT-OF-SAMPLE predicted probabilities. This module does everything
around that comparison; the comparison itself is `cleanlab` (never
re-implemented here):

  - `load_probabilities`: prediction dumps (evaluators with
    `save_predictions=True, save_logits=True`, or any .npz with `file_name`
    and `logits` or `probs`) joined to the split's labels on file name; every
    example of the split must be predicted exactly once;
  - `rank`: `cleanlab.filter.find_label_issues` (the flagged set) and
    `cleanlab.rank.get_label_quality_scores` (the score; low = suspect);
  - `write_report`: the table (CSV and markdown), a JSON summary (with
    precision and recall when the truly flipped examples are known, see
    data/label_noise.py), and a picture of the top suspects with both labels
    (PNG and a TensorBoard image).

Labels and images come from the TFDS split itself; dumps are joined to them on
`file_name`. A dataset without that feature (plain `fashion_mnist`) is named
the way the evaluators name its records in dumps: "{split}_{index:05d}", the
record's position in its TFDS split (`splits.Share.record_names`), which is
also the name the copies of data/label_noise.py store.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from big_vision_like import label_sources
from big_vision_like import soft_labels

# cleanlab's defaults, named so the summary records what was run.
FILTER_BY = "prune_by_noise_rate"
SCORE_METHOD = "self_confidence"


@dataclasses.dataclass
class SplitLabels:
  """The given labels of a TFDS split, by file name."""
  file_name: np.ndarray    # [N] str, in the split's order
  label: np.ndarray        # [N] int
  class_names: list[str]
  origin: str              # "tfds:name:split", for messages


def _positional_names(builder, split: str) -> np.ndarray:
  """"{split}_{index:05d}" of each record of `split`: how the evaluators name
  the records of a dataset without a file_name (input_pipeline.make_eval_iterator)."""
  from big_vision_like.data import splits as splits_lib  # pylint: disable=g-import-not-at-top
  ranges = splits_lib.resolve(builder, split)
  total = sum(hi - lo for _, lo, hi in ranges)
  return np.array(splits_lib.Share(split, ranges, 0, total).record_names(), dtype=str)


def _records(builder, split: str):
  """The split's records in order, images not decoded, each with a `file_name`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  features = builder.info.features
  decoders = {k: tfds.decode.SkipDecoding() for k, f in features.items()
              if isinstance(f, tfds.features.Image)}
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
  if "file_name" not in features:
    names = tf.data.Dataset.from_tensor_slices(_positional_names(builder, split))
    ds = tf.data.Dataset.zip(ds, names).map(tf.autograph.experimental.do_not_convert(
        lambda ex, name: {**ex, "file_name": name}))
  return ds


def split_labels(name: str, split: str, data_dir: str | None = None) -> SplitLabels:
  """Labels and file names of `name:split` (images are not decoded).

  A dataset without a `file_name` feature (plain fashion_mnist) gets the names
  the evaluators give its records in prediction dumps: "{split}_{index:05d}",
  the record's position in its TFDS split.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from big_vision_like.data import tfds_source  # pylint: disable=g-import-not-at-top
  builder = tfds_source.get_builder(name, data_dir)
  features = builder.info.features
  if "label" not in features or not hasattr(features["label"], "names"):
    raise ValueError(f"dataset {name!r} has no ClassLabel 'label' feature (features: "
                     f"{sorted(features)})")
  names, labels = [], []
  ds = _records(builder, split).map(lambda ex: {"file_name": ex["file_name"],
                                                "label": ex["label"]})
  for batch in tfds.as_numpy(ds.batch(8192)):
    names += [n.decode() for n in batch["file_name"]]
    labels.append(batch["label"])
  origin = f"tfds:{name}:{split}"
  # Unique names, or the join would be ambiguous (LabelSource checks).
  label_sources.LabelSource(np.array(names, dtype=str), origin)
  return SplitLabels(np.array(names, dtype=str),
                     np.concatenate(labels).astype(np.int64) if labels else
                     np.zeros((0,), np.int64), list(features["label"].names), origin)


def _read_probs(path: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """(file names, probabilities [n, C]) of one dump or npz."""
  from big_vision_like.tools import score_predictions  # pylint: disable=g-import-not-at-top
  arrays, fmt = score_predictions.load_arrays(path)
  if fmt != "npz" or "file_name" not in arrays:
    raise ValueError(f"{path}: needs an .npz with a `file_name` array (it has: "
                     f"{score_predictions._describe(arrays)})")  # pylint: disable=protected-access
  names = arrays["file_name"].astype(str)
  if "logits" in arrays:
    key, probs = "logits", soft_labels.softmax(arrays["logits"]) if arrays["logits"].ndim == 2 else None
  elif "probs" in arrays:
    key, probs = "probs", np.asarray(arrays["probs"], np.float64)
  else:
    raise ValueError(f"{path}: no `logits` or `probs` array: the predicted probabilities "
                     f"of every class are needed (an evaluator writes logits with "
                     f"save_predictions=True, save_logits=True); it has: "
                     f"{score_predictions._describe(arrays)}")  # pylint: disable=protected-access
  shape = arrays[key].shape
  if probs is None or probs.shape != (len(names), num_classes):
    raise ValueError(f"{path}: {key!r} has shape {shape}, expected ({len(names)}, "
                     f"{num_classes}): one row per file name, one column per class of "
                     f"the labels")
  if not np.isfinite(probs).all():
    raise ValueError(f"{path}: {key!r} holds NaN/inf")
  bad = (np.abs(probs.sum(1) - 1) > 1e-3) | (probs < 0).any(1)
  if bad.any():
    row = int(np.flatnonzero(bad)[0])
    raise ValueError(f"{path}: 'probs' row {row} ({names[row]!r}) is not a probability "
                     f"distribution (sum {probs[row].sum():.4f}); pass logits instead")
  return names, probs


def load_probabilities(paths: Sequence[str], labels: SplitLabels) -> np.ndarray:
  """[N, C] probabilities in `labels` order, from dumps that together cover the split.

  Every file name of the dumps must be in the split (unknown names are
  refused naming the file), none twice, and every example of the split must
  be predicted (missing ones are refused with examples).
  """
  if not paths:
    raise ValueError("no prediction files given")
  num_classes = len(labels.class_names)
  out = np.full((len(labels.file_name), num_classes), np.nan)
  seen_by = np.full(len(labels.file_name), -1)
  for p, path in enumerate(paths):
    names, probs = _read_probs(path, num_classes)
    index = label_sources.join(names, label_sources.LabelSource(
        labels.file_name, labels.origin), what=path)
    twice = seen_by[index] >= 0
    if twice.any():
      first = int(np.flatnonzero(twice)[0])
      raise ValueError(f"{path}: {int(twice.sum())} examples are already predicted by "
                       f"{paths[seen_by[index[first]]]}, e.g. {str(names[first])!r}")
    out[index] = probs
    seen_by[index] = p
  missing = seen_by < 0
  if missing.any():
    raise ValueError(f"the predictions ({len(paths)} files) do not cover {labels.origin}: "
                     f"{int(missing.sum())} of {len(missing)} examples have none, e.g. "
                     f"{labels.file_name[missing][:3].tolist()}")
  return out


@dataclasses.dataclass
class Ranking:
  """cleanlab's verdict on every example, in the labels' order."""
  issue: np.ndarray       # [N] bool: flagged by find_label_issues
  score: np.ndarray       # [N] label quality in [0, 1], low = suspect
  suggested: np.ndarray   # [N] argmax of the out-of-sample probabilities
  order: np.ndarray       # flagged indices, worst (lowest score) first


def rank(labels: np.ndarray, probs: np.ndarray, *, filter_by: str = FILTER_BY,
         method: str = SCORE_METHOD) -> Ranking:
  """Flags and scores label issues with cleanlab (one process: no fork under JAX)."""
  from cleanlab import filter as cl_filter  # pylint: disable=g-import-not-at-top
  from cleanlab import rank as cl_rank  # pylint: disable=g-import-not-at-top
  labels = np.asarray(labels, np.int64)
  issue = cl_filter.find_label_issues(labels, probs, filter_by=filter_by, n_jobs=1)
  score = cl_rank.get_label_quality_scores(labels, probs, method=method)
  flagged = np.flatnonzero(issue)
  order = flagged[np.argsort(score[flagged], kind="stable")]
  return Ranking(np.asarray(issue, bool), np.asarray(score, np.float64),
                 probs.argmax(1), order)


def against_truth(ranking: Ranking, file_names: np.ndarray, flipped: dict[str, Any]
                  ) -> dict[str, Any]:
  """Precision/recall of the flagged set vs the flipped examples (data/label_noise JSON).

  Also the precision of the `len(flipped)` lowest-scored examples.
  """
  rows = flipped["flipped"]
  where = f"flips file of dataset {flipped.get('dataset')!r}"
  truth_names = np.array([r["file_name"] for r in rows], dtype=str)
  index = label_sources.join(truth_names, label_sources.LabelSource(file_names, "the split"),
                             what=where) if len(rows) else np.zeros((0,), np.int64)
  truth = np.zeros(len(file_names), bool)
  truth[index] = True
  hits = int((ranking.issue & truth).sum())
  flagged, n_true = int(ranking.issue.sum()), int(truth.sum())
  top = np.argsort(ranking.score, kind="stable")[:n_true]
  return {"num_flipped": n_true, "num_flagged": flagged, "true_positives": hits,
          "precision": hits / flagged if flagged else None,
          "recall": hits / n_true if n_true else None,
          "precision_at_num_flipped": float(truth[top].mean()) if n_true else None}


def suspects_picture(images: Sequence[np.ndarray], rows: Sequence[dict], *,
                     title: str = "", columns: int = 8) -> np.ndarray:
  """A grid of the suspects with given and suggested labels, as [H, W, 3] uint8.

  Drawn on a private Figure with Agg (like plots.py): thread-safe, no display.
  """
  columns = min(columns, max(len(rows), 1))
  lines = max((len(rows) + columns - 1) // columns, 1)
  # Fixed sizes in inches: a cell is a 1.7" image under 0.75" of text.
  cell_w, image, text, head = 1.9, 1.7, 0.75, 0.45
  width, height = cell_w * columns, head + lines * (text + image + 0.1)
  fig = Figure(figsize=(width, height), dpi=100, facecolor="white")
  for i, (picture, row) in enumerate(zip(images, rows)):
    r, c = divmod(i, columns)
    bottom = height - head - r * (text + image + 0.1) - text - image
    ax = fig.add_axes(((c * cell_w + (cell_w - image) / 2) / width, bottom / height,
                       image / width, image / height))
    picture = np.asarray(picture)
    ax.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray",
              vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"#{i + 1} {row['file_name']}\ngiven: {row['given_name']}\n"
                 f"suggested: {row['suggested_name']}\nscore {row['score']:.3f}",
                 fontsize=7, parse_math=False)
  if title:
    fig.text(0.5, 1 - head / 2 / height, title, ha="center", va="center", fontsize=10,
             parse_math=False)
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])


def read_images(name: str, split: str, wanted: Sequence[str],
                data_dir: str | None = None) -> dict[str, np.ndarray]:
  """{file_name: decoded image} of the `wanted` examples of `name:split` (one pass)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from big_vision_like.data import tfds_source  # pylint: disable=g-import-not-at-top
  if not wanted:
    return {}
  builder = tfds_source.get_builder(name, data_dir)
  table = tf.constant(list(wanted))
  ds = _records(builder, split)
  wanted_fn = tf.autograph.experimental.do_not_convert(
      lambda ex: tf.reduce_any(tf.equal(ex["file_name"], table)))
  decode_fn = tf.autograph.experimental.do_not_convert(
      lambda ex: {"file_name": ex["file_name"],
                  "image": tf.io.decode_image(ex["image"], expand_animations=False)})
  ds = ds.filter(wanted_fn).map(decode_fn)
  return {ex["file_name"].decode(): ex["image"] for ex in tfds.as_numpy(ds)}


def table_rows(labels: SplitLabels, ranking: Ranking) -> list[dict[str, Any]]:
  """One row per flagged example, worst first."""
  names = labels.class_names
  return [{"rank": r + 1, "file_name": str(labels.file_name[i]),
           "given_label": int(labels.label[i]), "given_name": names[labels.label[i]],
           "suggested_label": int(ranking.suggested[i]),
           "suggested_name": names[ranking.suggested[i]],
           "score": float(ranking.score[i])} for r, i in enumerate(ranking.order)]


def write_report(out_dir: str, *, data: dict, labels: SplitLabels, ranking: Ranking,
                 top: int = 24, flipped: dict | None = None,
                 extra: dict | None = None) -> dict[str, Any]:
  """Writes label_issues.csv/.md, summary.json, top_suspects.png and TensorBoard.

  `data`: {"name", "split", "data_dir"} of the split (for the images).
  Returns the summary.
  """
  from big_vision_like import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  rows = table_rows(labels, ranking)
  fields = ["rank", "file_name", "given_label", "given_name", "suggested_label",
            "suggested_name", "score"]
  with open(os.path.join(out_dir, "label_issues.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
  md = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
  md += ["| " + " | ".join(f"{r[k]:.4f}" if k == "score" else str(r[k]) for k in fields)
         + " |" for r in rows[:max(top, 100)]]
  with open(os.path.join(out_dir, "label_issues.md"), "w") as f:
    f.write(f"Suspected label errors of {labels.origin}: {len(rows)} of "
            f"{len(labels.label)} flagged (cleanlab {FILTER_BY}, score {SCORE_METHOD}; "
            f"worst first{', first 100' if len(rows) > 100 else ''}).\n\n" + "\n".join(md)
            + "\n")
  shown = rows[:top]
  images = read_images(data["name"], data["split"], [r["file_name"] for r in shown],
                       data.get("data_dir"))
  picture = suspects_picture(
      [images[r["file_name"]] for r in shown], shown,
      title=f"{labels.origin}: top {len(shown)} of {len(rows)} suspected label errors")
  _write_png(os.path.join(out_dir, "top_suspects.png"), picture)
  summary = {"split": labels.origin, "num_examples": int(len(labels.label)),
             "num_flagged": len(rows), "filter_by": FILTER_BY, "score_method": SCORE_METHOD,
             "out_of_sample_accuracy": float((ranking.suggested == labels.label).mean()),
             "top": rows[:top], **(extra or {})}
  if flipped is not None:
    summary["against_flipped"] = against_truth(ranking, labels.file_name, flipped)
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  writer = metrics_lib.MetricWriter(out_dir)
  writer.write_images(0, {"label_errors/top_suspects": picture[None]})
  scalars = {"label_errors/num_flagged": len(rows),
             "label_errors/out_of_sample_accuracy": summary["out_of_sample_accuracy"]}
  for k in ("precision", "recall"):
    if flipped is not None and summary["against_flipped"][k] is not None:
      scalars[f"label_errors/{k}"] = summary["against_flipped"][k]
  writer.write_scalars(0, scalars)
  writer.close()
  return summary


def _write_png(path: str, image: np.ndarray) -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with open(path, "wb") as f:
    f.write(tf.io.encode_png(image).numpy())
