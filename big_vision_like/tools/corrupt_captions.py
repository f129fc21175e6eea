"""Known-bad image-text pairs, to measure a pair filter against (tools/filter_pairs).

A filter is only as good as the bad pairs it removes, and on real web data
nobody knows which pairs are bad. This writes a copy of a captioned TFDS
dataset (by default `fashion_mnist_captions` train) in which a known fraction
of the examples have their captions swapped for the captions of an image of
ANOTHER class, and lists which:

  python -m big_vision_like.tools.corrupt_captions --fraction 0.3 --seed 0 \\
      --out_name fashion_mnist_captions_corrupt30 [--dataset fashion_mnist_captions] \\
      [--split train] [--data_dir DIR] [--json PATH]

Exactly round(fraction * n) examples are corrupted, chosen uniformly without
replacement with numpy's default_rng(seed); each takes ALL the captions of a
donor drawn uniformly from the examples whose label differs (its original
captions, never already swapped ones). Image bytes, label (the TRUE class)
and file_name are kept, so only the pairing is wrong. Same seed, same
dataset: same output. The JSON (default workdirs/corrupt_captions/OUT_NAME.json)
holds the settings and {corrupted file_name: donor file_name}.

Then, with the scores.csv of a filter_pairs run on the corrupted dataset:

  python -m big_vision_like.tools.corrupt_captions --rates SCORES_CSV --json PATH \\
      [--fractions 1,0.9,0.8,0.7,0.6,0.5]

prints the corruption rate of the kept set at each keep fraction (the same
top-fraction rule as filter_pairs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import numpy as np

from big_vision_like.data import fashion_captions
from big_vision_like.data import fashion_mnist
from big_vision_like.data import tfds_source
from big_vision_like.tools import filter_pairs

DEFAULT_FRACTIONS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


def choose(labels: np.ndarray, fraction: float, seed: int) -> dict[int, int]:
  """{corrupted index: donor index}, donors of another label; see the module docstring."""
  labels = np.asarray(labels)
  n = len(labels)
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"--fraction must be in [0, 1], got {fraction}")
  if n and fraction > 0 and len(np.unique(labels)) < 2:
    raise ValueError("corrupting captions needs examples of at least two classes")
  rng = np.random.default_rng(seed)
  chosen = np.sort(rng.permutation(n)[:int(round(fraction * n))])
  donors = {}
  for i in chosen.tolist():
    j = int(rng.integers(n))
    while labels[j] == labels[i]:  # rejection: uniform over the other classes' examples
      j = int(rng.integers(n))
    donors[i] = j
  return donors


def corrupt(dataset: str = fashion_captions.NAME, *, out_name: str, fraction: float,
            seed: int = 0, split: str = "train", data_dir: str | None = None,
            text_key: str | None = None, label_key: str = "label",
            json_path: str | None = None) -> dict[str, Any]:
  """Writes the corrupted copy (split `split` only) and its JSON; returns the JSON."""
  builder = tfds_source.get_builder(dataset, data_dir, key="--dataset")
  key = filter_pairs.text_feature_key(builder.info.features, text_key, dataset)
  if label_key not in builder.info.features:
    raise ValueError(f"dataset {dataset!r} has no label feature {label_key!r} to pick "
                     f"donors of another class; its features: "
                     f"{sorted(builder.info.features)}")
  examples = filter_pairs.read_split(builder, split)
  names = filter_pairs.file_names(examples, split)
  donors = choose(np.array([int(e[label_key]) for e in examples]), fraction, seed)
  out = list(examples)
  for i, j in donors.items():
    out[i] = dict(examples[i], **{key: examples[j][key]})
  data_dir = os.path.expanduser(data_dir or fashion_mnist.default_data_dir())
  tfds_dir = filter_pairs.write_subset(
      builder, out_name, data_dir, {split: out},
      description=(f"{dataset}/{split} with the captions of {len(donors)} of "
                   f"{len(out)} examples ({fraction:g}, seed {seed}) replaced by those "
                   f"of an image of another class; written by big_vision_like.tools."
                   f"corrupt_captions."))
  info = {"dataset": dataset, "split": split, "out_name": out_name, "fraction": fraction,
          "seed": seed, "num_examples": len(out), "num_corrupted": len(donors),
          "tfds_dir": tfds_dir,
          "corrupted": {names[i]: names[j] for i, j in sorted(donors.items())}}
  json_path = json_path or os.path.join("workdirs", "corrupt_captions", f"{out_name}.json")
  os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
  with open(json_path, "w") as f:
    json.dump(info, f, indent=1)
  return info


def kept_corruption_rates(scores_csv: str, corrupted: Sequence[str],
                          fractions: Sequence[float] = DEFAULT_FRACTIONS,
                          split: str | None = None) -> list[dict[str, float]]:
  """Per keep fraction: kept count, corrupted among kept, their rate and recall."""
  rows = [r for r in filter_pairs.read_scores(scores_csv)
          if split is None or r["split"] == split]
  if not rows:
    raise ValueError(f"{scores_csv}: no scores" + (f" for split {split!r}" if split else ""))
  bad = np.array([r["file_name"] in set(corrupted) for r in rows])
  scores = np.array([r["score"] for r in rows])
  out = []
  for f in fractions:
    keep = filter_pairs.select(scores, keep_fraction=f)
    out.append({"keep_fraction": f, "kept": int(keep.sum()),
                "corrupted_kept": int((keep & bad).sum()),
                "corruption_rate": float((keep & bad).sum() / max(keep.sum(), 1)),
                "clean_kept_recall": float((keep & ~bad).sum() / max((~bad).sum(), 1))})
  return out


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--dataset", default=fashion_captions.NAME)
  ap.add_argument("--split", default="train")
  ap.add_argument("--data_dir", help="TFDS data dir, input and output (default: TFDS's)")
  ap.add_argument("--out_name", help="name of the corrupted TFDS dataset")
  ap.add_argument("--fraction", type=float, default=0.3)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--text_key", help="caption feature (default: as filter_pairs)")
  ap.add_argument("--json", help="corruption list (default workdirs/corrupt_captions/"
                  "OUT_NAME.json); with --rates, the list to read")
  ap.add_argument("--rates", metavar="SCORES_CSV",
                  help="instead: kept-set corruption rates of a filter_pairs scores.csv")
  ap.add_argument("--fractions", default=",".join(f"{f:g}" for f in DEFAULT_FRACTIONS))
  args = ap.parse_args(argv)
  try:
    if args.rates:
      if not args.json:
        raise ValueError("--rates needs --json, the corruption list")
      with open(args.json) as f:
        info = json.load(f)
      fractions = [float(x) for x in args.fractions.split(",") if x.strip()]
      rates = kept_corruption_rates(args.rates, list(info["corrupted"]), fractions,
                                    split=info["split"])
      print(f"{'keep':>6} {'kept':>7} {'corrupt':>8} {'rate':>7} {'clean kept':>10}")
      for r in rates:
        print(f"{r['keep_fraction']:>6g} {r['kept']:>7d} {r['corrupted_kept']:>8d} "
              f"{r['corruption_rate']:>7.4f} {r['clean_kept_recall']:>10.4f}")
      return 0
    if not args.out_name:
      raise ValueError("--out_name is required (the corrupted dataset's name)")
    info = corrupt(args.dataset, out_name=args.out_name, fraction=args.fraction,
                   seed=args.seed, split=args.split, data_dir=args.data_dir,
                   text_key=args.text_key, json_path=args.json)
    print(f"corrupted {info['num_corrupted']}/{info['num_examples']} examples of "
          f"{args.dataset}/{args.split}; wrote {info['tfds_dir']} and the list to "
          f"{args.json or os.path.join('workdirs', 'corrupt_captions', args.out_name + '.json')}")
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
