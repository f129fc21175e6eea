"""Score-based filtering of image-text pairs (DataComp / Data Filtering Networks).

Which pairs a contrastive model is trained on decides its quality as much as
the recipe does (DataComp, Gadre et al. 2023; DFN, Fang et al. 2023): the
standard filter scores every pair with an existing two-tower model and keeps
the best-aligned ones. This tool does that to a TFDS image-text dataset and
writes the kept pairs as a NEW TFDS dataset that any config can train on:

  python -m big_vision_like.tools.filter_pairs --workdir WORKDIR \\
      --dataset fashion_mnist_captions --split train \\
      (--keep_fraction 0.7 | --min_score 0.1) --out_name fashion_captions_kept70 \\
      [--data_dir DIR] [--out_dir DIR] [--text_key captions]
  python -m big_vision_like.tools.filter_pairs --model NAME [--weights W] [--text_file T] ...

The model: a workdir trained by us (a two-tower config such as
configs/fashion_contrastive.py) or a zoo two-tower (SigLIP, LiT); both are
loaded by `predict.Predictor`, which embeds images with the model's eval pp
string (the config's first evaluator's) and texts with its `pp_txt`.

Score of a pair = the cosine similarity of the L2-normalised image embedding
and text embedding. An example with several captions (`fashion_mnist_captions`
has 3) gets the MEAN of the cosines of its captions: the example is kept or
dropped as a whole, with all its captions, so a single well-aligned caption
does not rescue an image whose other captions are off. Each distinct caption
string is embedded once.

Selection, per split: `--keep_fraction f` keeps the round(f * n) highest
scores (ties broken by dataset order); `--min_score s` keeps every example
with score >= s. Kept examples keep their dataset order, every feature
(image bytes untouched) and their file names.

Outputs: the dataset `--out_name` in `--data_dir` (or `--out_data_dir`), and in
`--out_dir` (default workdirs/filter_pairs/OUT_NAME): `scores.csv` (split,
file_name, score, kept for EVERY example), `score_histogram.png` and the same
histogram plus kept counts in TensorBoard (`tensorboard/`, via MetricWriter).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys
import time
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from big_vision_like import metrics as metrics_lib
from big_vision_like import predict
from big_vision_like.data import fashion_mnist
from big_vision_like.data import tfds_source
from big_vision_like.data import tfds_writer

TEXT_KEYS = ("captions", "caption", "texts", "text")  # tried in order when not given
_IMAGE_CHUNK = 4096  # images preprocessed and embedded at a time (bounds memory)
_IMAGE_BATCH = 256  # images per forward pass (Predictor's default of 32 is for a few files)


# ------------------------------------------------------------------ dataset side


def text_feature_key(features: tfds.features.FeaturesDict, text_key: str | None,
                     dataset: str) -> str:
  """The caption feature: `text_key`, or the first of TEXT_KEYS the dataset has.

  It must be a Text or a Sequence of Text.
  """
  def is_text(f):
    return isinstance(f, tfds.features.Text) or (
        isinstance(f, tfds.features.Sequence) and isinstance(f.feature, tfds.features.Text))
  texts = sorted(k for k, f in features.items() if is_text(f))
  if text_key is None:
    text_key = next((k for k in TEXT_KEYS if k in texts), None)
    if text_key is None:
      raise ValueError(f"dataset {dataset!r} has no caption feature (a Text or Sequence of "
                       f"Text named one of {TEXT_KEYS}); its features: {sorted(features)}"
                       + (f"; pass --text_key (text features: {texts})" if texts else ""))
  elif text_key not in features:
    raise ValueError(f"--text_key {text_key!r}: dataset {dataset!r} has no such feature; "
                     f"its features: {sorted(features)}")
  elif text_key not in texts:
    raise ValueError(f"--text_key {text_key!r} of dataset {dataset!r} is a "
                     f"{type(features[text_key]).__name__}, not Text or Sequence(Text)")
  return text_key


def read_split(builder: tfds.core.DatasetBuilder, split: str) -> list[dict[str, Any]]:
  """Every example of `split` in dataset order, images as their stored bytes.

  The examples go back into `FeaturesDict.serialize_example` unchanged, so a
  rewritten dataset holds the same image bytes as the original.
  """
  if split not in builder.info.splits:
    raise ValueError(f"dataset {builder.name!r} has no split {split!r}; its splits: "
                     f"{sorted(builder.info.splits.keys())}")
  features = builder.info.features
  decoders = {k: tfds.decode.SkipDecoding() for k, f in features.items()
              if isinstance(f, tfds.features.Image)}
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
  return list(tfds.as_numpy(ds))


def _texts(value: Any) -> list[str]:
  """One example's caption(s) as a list of str."""
  values = [value] if isinstance(value, (bytes, str)) else list(np.asarray(value).ravel())
  return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def file_names(examples: Sequence[dict[str, Any]], split: str) -> list[str]:
  """The examples' `file_name` feature, or "{split}_{index}" without one."""
  if examples and "file_name" in examples[0]:
    return [_texts(e["file_name"])[0] for e in examples]
  return [f"{split}_{i}" for i in range(len(examples))]


def write_subset(builder: tfds.core.DatasetBuilder, out_name: str, data_dir: str,
                 splits: dict[str, list[dict[str, Any]]], description: str) -> str:
  """Writes `splits` (examples from `read_split`) as TFDS dataset `out_name`.

  Same features and version as the source dataset; returns the dataset dir.
  """
  return tfds_writer.write_dataset(
      out_name, data_dir, splits, features=builder.info.features,
      version=str(builder.info.version), description=description)


# -------------------------------------------------------------------- scoring


def two_tower_predictor(workdir: str | None = None, model: str | None = None, *,
                        weights: str | None = None, text_file: str | None = None,
                        pp: str | None = None) -> predict.Predictor:
  """A `Predictor` of a two-tower workdir or zoo model (an error for anything else)."""
  if (workdir is None) == (model is None):
    raise ValueError("give exactly one of a workdir and a zoo model name")
  if model is not None:
    p = predict.Predictor.from_zoo(model, weights, pp=pp, text_file=text_file)
  else:
    p = predict.Predictor.from_workdir(workdir, pp=pp)
  check_two_tower(p)
  return p


def check_two_tower(p: predict.Predictor) -> None:
  """Raises unless `p` has an image and a text tower (and a text pp)."""
  if not p.is_two_tower:
    raise ValueError(f"model {p.name!r} has no text tower (task "
                     f"{p.exp.task.name!r}, model {p.exp.config.model_name!r}): filtering "
                     f"pairs needs a two-tower image-text model")
  if not p.text_pp and getattr(p, "_entry_needing_text_file", None) is None:
    raise ValueError(f"model {p.name!r} is a two-tower but has no text pp string "
                     f"(pp_txt) to tokenize captions with")


def _unit(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def score_pairs(p: predict.Predictor, images: Sequence[bytes],
                captions: Sequence[Sequence[str]], *, log: bool = False) -> np.ndarray:
  """Mean cosine similarity of each image with its captions: float64 [N]."""
  check_two_tower(p)
  if len(images) != len(captions):
    raise ValueError(f"score_pairs: {len(images)} images but {len(captions)} caption lists")
  empty = [i for i, c in enumerate(captions) if len(c) == 0]
  if empty:
    raise ValueError(f"score_pairs: example {empty[0]} has no caption")
  # Captions repeat a lot (templates x class phrasings): embed each string once.
  unique = sorted({t for caps in captions for t in caps})
  ztxt = _unit(p.embed_texts(unique))
  index = {t: i for i, t in enumerate(unique)}
  zimg = []
  for start in range(0, len(images), _IMAGE_CHUNK):
    zimg.append(_unit(p.embed_images(list(images[start:start + _IMAGE_CHUNK]),
                                     batch_size=_IMAGE_BATCH)))
    if log:
      print(f"  embedded {start + len(zimg[-1])}/{len(images)} images", flush=True)
  zimg = np.concatenate(zimg) if zimg else np.zeros((0, ztxt.shape[-1]))
  counts = np.array([len(c) for c in captions])
  owner = np.repeat(np.arange(len(captions)), counts)
  flat = np.array([index[t] for caps in captions for t in caps], np.int64)
  cos = np.einsum("nd,nd->n", zimg[owner], ztxt[flat])
  return np.bincount(owner, weights=cos, minlength=len(captions)) / counts


# ------------------------------------------------------------------ selection


def check_selection(keep_fraction: float | None, min_score: float | None) -> None:
  if (keep_fraction is None) == (min_score is None):
    raise ValueError("give exactly one of --keep_fraction and --min_score")
  if keep_fraction is not None and not 0.0 < keep_fraction <= 1.0:
    raise ValueError(f"--keep_fraction must be in (0, 1], got {keep_fraction}")
  if min_score is not None and not np.isfinite(min_score):
    raise ValueError(f"--min_score must be a finite number, got {min_score}")


def select(scores: np.ndarray, *, keep_fraction: float | None = None,
           min_score: float | None = None) -> np.ndarray:
  """Boolean keep mask: the top round(f * n) scores, or scores >= min_score.

  Ties at the keep_fraction cut go to the earlier example.
  """
  check_selection(keep_fraction, min_score)
  scores = np.asarray(scores, np.float64)
  if min_score is not None:
    return scores >= min_score
  k = int(round(keep_fraction * len(scores)))
  keep = np.zeros(len(scores), bool)
  keep[np.argsort(-scores, kind="stable")[:k]] = True
  return keep


# --------------------------------------------------------------------- report


def histogram_image(scores: np.ndarray, keep: np.ndarray, title: str) -> np.ndarray:
  """The score histogram, kept and dropped stacked: [H, W, 3] uint8 RGB."""
  scores = np.asarray(scores, np.float64)
  fig = Figure(figsize=(7, 4), dpi=100, facecolor="white")
  ax = fig.add_subplot(1, 1, 1)
  lo, hi = (float(scores.min()), float(scores.max())) if len(scores) else (0.0, 1.0)
  bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 51)
  ax.hist([scores[keep], scores[~keep]], bins=bins, stacked=True,
          color=["tab:blue", "tab:gray"],
          label=[f"kept ({int(keep.sum())})", f"dropped ({int((~keep).sum())})"])
  if keep.any() and (~keep).any():
    ax.axvline(float(scores[keep].min()), color="tab:red", linestyle="--",
               label=f"cut {float(scores[keep].min()):.4f}")
  ax.set_xlabel("score: cosine(image, caption), mean over captions")
  ax.set_ylabel("examples")
  ax.set_title(title, fontsize=10)
  ax.legend(loc="upper left", fontsize=8)
  fig.tight_layout()
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])


def write_scores(path: str, rows: Sequence[tuple[str, str, float, bool]]) -> None:
  """CSV of (split, file_name, score, kept), one row per example."""
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["split", "file_name", "score", "kept"])
    for split, name, score, kept in rows:
      w.writerow([split, name, f"{score:.6f}", int(kept)])
  os.replace(tmp, path)


def read_scores(path: str) -> list[dict[str, Any]]:
  """The rows of a `scores.csv` (score as float, kept as bool)."""
  with open(path, newline="") as f:
    return [dict(r, score=float(r["score"]), kept=r["kept"] == "1")
            for r in csv.DictReader(f)]


# ----------------------------------------------------------------------- main


def open_dataset(dataset: str, *, splits: Sequence[str], out_name: str,
                 data_dir: str | None = None, out_data_dir: str | None = None,
                 text_key: str | None = None, image_key: str = "image"
                 ) -> tuple[tfds.core.DatasetBuilder, str, str]:
  """(builder, caption key, output data dir), after checking everything that can
  be checked before a model is loaded: dataset, splits, features, output name."""
  builder = tfds_source.get_builder(dataset, data_dir, key="--dataset")
  features = builder.info.features
  key = text_feature_key(features, text_key, dataset)
  if image_key not in features or not isinstance(features[image_key], tfds.features.Image):
    raise ValueError(f"--image_key {image_key!r}: dataset {dataset!r} has no Image feature "
                     f"of that name; its features: {sorted(features)}")
  for split in splits:
    if split not in builder.info.splits:
      raise ValueError(f"--split: dataset {dataset!r} has no split {split!r}; its splits: "
                       f"{sorted(builder.info.splits.keys())}")
  out_data_dir = os.path.expanduser(out_data_dir or data_dir
                                    or fashion_mnist.default_data_dir())
  if os.path.exists(os.path.join(out_data_dir, out_name)):
    raise FileExistsError(f"--out_name {out_name!r}: {os.path.join(out_data_dir, out_name)} "
                          f"already exists; remove it or pick another name")
  return builder, key, out_data_dir


@dataclasses.dataclass
class SplitResult:
  split: str
  file_names: list[str]
  scores: np.ndarray
  keep: np.ndarray


def filter_dataset(p: predict.Predictor, dataset: str, *, out_name: str,
                   splits: Sequence[str] = ("train",), keep_fraction: float | None = None,
                   min_score: float | None = None, data_dir: str | None = None,
                   out_data_dir: str | None = None, out_dir: str | None = None,
                   text_key: str | None = None, image_key: str = "image",
                   log: bool = False) -> list[SplitResult]:
  """Scores, selects and writes; see the module docstring. Returns per-split results."""
  check_selection(keep_fraction, min_score)
  check_two_tower(p)
  builder, key, out_data_dir = open_dataset(
      dataset, splits=splits, out_name=out_name, data_dir=data_dir,
      out_data_dir=out_data_dir, text_key=text_key, image_key=image_key)
  results, kept_examples = [], {}
  for split in splits:
    t0 = time.perf_counter()
    examples = read_split(builder, split)
    if log:
      print(f"{dataset}/{split}: {len(examples)} examples read in "
            f"{time.perf_counter() - t0:.1f} s; scoring with {p.name}", flush=True)
    scores = score_pairs(p, [e[image_key] for e in examples],
                         [_texts(e[key]) for e in examples], log=log)
    keep = select(scores, keep_fraction=keep_fraction, min_score=min_score)
    results.append(SplitResult(split, file_names(examples, split), scores, keep))
    kept_examples[split] = [e for e, k in zip(examples, keep) if k]
  rule = (f"top {keep_fraction:g} by score" if keep_fraction is not None
          else f"score >= {min_score:g}")
  tfds_dir = write_subset(
      builder, out_name, out_data_dir, kept_examples,
      description=(f"{dataset} ({', '.join(splits)}) filtered by big_vision_like.tools."
                   f"filter_pairs: {rule}, score = mean cosine(image, caption) of model "
                   f"{p.name}."))
  out_dir = out_dir or os.path.join("workdirs", "filter_pairs", out_name)
  os.makedirs(out_dir, exist_ok=True)
  write_scores(os.path.join(out_dir, "scores.csv"),
               [(r.split, n, s, k) for r in results
                for n, s, k in zip(r.file_names, r.scores, r.keep)])
  writer = metrics_lib.MetricWriter(out_dir, is_main=True)
  try:
    for step, r in enumerate(results):
      image = histogram_image(r.scores, r.keep, f"{dataset}/{r.split} scored by {p.name}: "
                              f"{rule}")
      png = "score_histogram.png" if len(results) == 1 else f"score_histogram_{r.split}.png"
      from PIL import Image  # pylint: disable=g-import-not-at-top
      Image.fromarray(image).save(os.path.join(out_dir, png))
      writer.write_images(step, {f"filter_pairs/{r.split}/score_histogram": image[None]})
      writer.write_scalars(step, {
          f"filter_pairs/{r.split}/examples": len(r.scores),
          f"filter_pairs/{r.split}/kept": int(r.keep.sum()),
          f"filter_pairs/{r.split}/cut": float(r.scores[r.keep].min()) if r.keep.any()
          else float("nan"),
          f"filter_pairs/{r.split}/mean_score": float(r.scores.mean())})
  finally:
    writer.close()
  if log:
    for r in results:
      print(f"{r.split}: kept {int(r.keep.sum())}/{len(r.scores)} ({rule}); score mean "
            f"{r.scores.mean():.4f}, kept min {r.scores[r.keep].min() if r.keep.any() else float('nan'):.4f}")
    print(f"wrote TFDS dataset {out_name!r} to {tfds_dir}; scores, histogram and "
          f"TensorBoard in {out_dir}")
  return results


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="a training workdir of a two-tower config")
  src.add_argument("--model", help="a zoo two-tower name (see README 'Pretrained models')")
  ap.add_argument("--weights", help="weights file for --model")
  ap.add_argument("--text_file", help="tokenizer file published with a zoo two-tower")
  ap.add_argument("--pp", help="image pp string (default: the model's eval pp)")
  ap.add_argument("--dataset", required=True, help="TFDS name of the image-text dataset")
  ap.add_argument("--split", default="train", help="split(s) to filter, comma-separated")
  ap.add_argument("--data_dir", help="TFDS data dir (default: TFDS's)")
  ap.add_argument("--out_data_dir", help="where the new dataset goes (default: --data_dir)")
  ap.add_argument("--out_name", required=True, help="name of the new TFDS dataset")
  ap.add_argument("--out_dir", help="scores.csv, histogram, TensorBoard "
                  "(default: workdirs/filter_pairs/OUT_NAME)")
  ap.add_argument("--keep_fraction", type=float, help="keep this top fraction, in (0, 1]")
  ap.add_argument("--min_score", type=float, help="keep scores >= this")
  ap.add_argument("--text_key", help=f"caption feature (default: first of {TEXT_KEYS})")
  ap.add_argument("--image_key", default="image")
  args = ap.parse_args(argv)
  try:
    check_selection(args.keep_fraction, args.min_score)
    splits = [s.strip() for s in args.split.split(",") if s.strip()]
    if not splits:
      raise ValueError(f"--split {args.split!r} names no split")
    # The dataset and output first: a typo should not cost loading a model.
    open_dataset(args.dataset, splits=splits, out_name=args.out_name,
                 data_dir=args.data_dir, out_data_dir=args.out_data_dir,
                 text_key=args.text_key, image_key=args.image_key)
    p = two_tower_predictor(args.workdir, args.model, weights=args.weights,
                            text_file=args.text_file, pp=args.pp)
    filter_dataset(p, args.dataset, out_name=args.out_name, splits=splits,
                   keep_fraction=args.keep_fraction, min_score=args.min_score,
                   data_dir=args.data_dir, out_data_dir=args.out_data_dir,
                   out_dir=args.out_dir, text_key=args.text_key,
                   image_key=args.image_key, log=True)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
