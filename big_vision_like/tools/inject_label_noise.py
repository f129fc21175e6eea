"""Writes a copy of a TFDS dataset with a known fraction of training labels flipped.

    python -m big_vision_like.tools.inject_label_noise --name fashion_mnist \\
        --out_name fashion_mnist_noisy --fraction 0.1 --mode uniform|pairs [--seed 0] \\
        [--splits train] [--data_dir DIR] [--out_data_dir DIR] [--flips_json PATH]

Why it exists: precision and recall of tools/find_label_errors need data whose
wrong labels are known. The copy (data/label_noise.py) has `image`, `label`
and `file_name` = "{split}_{index:05d}"; exactly round(fraction * N) labels of
each split in --splits change, uniformly (to another class) or between
confusable pairs (Fashion-MNIST: T-shirt <-> shirt, pullover <-> coat,
sneaker <-> ankle boot). The flips (file_name, original and new label) go to
`{out_data_dir}/{out_name}_flips.json`. `--fraction 0` writes a copy with
file names and no noise.
"""

from __future__ import annotations

import argparse
import sys

from big_vision_like.data import label_noise


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--name", default="fashion_mnist", help="source TFDS dataset")
  parser.add_argument("--out_name", required=True, help="name of the copy")
  parser.add_argument("--fraction", type=float, required=True,
                      help="fraction of each noisy split's labels to flip")
  parser.add_argument("--mode", default="uniform", choices=label_noise.MODES)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--splits", default="train", help="comma-separated noisy splits")
  parser.add_argument("--data_dir", default=None, help="TFDS data dir of --name")
  parser.add_argument("--out_data_dir", default=None, help="default: --data_dir")
  parser.add_argument("--flips_json", default=None)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  summary = label_noise.write_noisy_copy(
      args.name, args.out_name, fraction=args.fraction, mode=args.mode, seed=args.seed,
      noisy_splits=[s for s in args.splits.split(",") if s], data_dir=args.data_dir,
      out_data_dir=args.out_data_dir, flips_json=args.flips_json)
  counts = ", ".join(f"{s}: {c['num_flipped']} of {c['num_examples']} flipped"
                     for s, c in summary["splits"].items())
  print(f"Wrote {args.out_name} ({summary['mode']}, seed {summary['seed']}): {counts}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
