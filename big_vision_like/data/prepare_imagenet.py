"""Prepares the ImageNet TFDS datasets from the ILSVRC-2012 tarballs, offline.

`imagenet2012`, `imagenet2012_real` and `imagenet2012_multilabel` cannot be
downloaded: their images come from tarballs one gets by registering at
image-net.org. This tool runs TFDS's own builders on those tarballs (so the
result is byte-for-byte what `tfds build` would write), after checking up
front that every file they need is there, the right size, and (for the
label files) the right checksum. TFDS never gets to try the network: the
extra label files (`real.json`, `human_accuracy_v3.0.0.json`) are staged as
"manually downloaded" files, which TFDS looks up by the file name in the
fourth column of the builder's checksums.tsv. `real.json` need not be
given: the package ships the official file (`data/bundled.py`), used when
neither --real_json nor --manual_dir has one.

  python -m big_vision_like.data.prepare_imagenet --manual_dir DIR \\
      --data_dir DIR [--datasets imagenet2012,imagenet2012_real] \\
      [--real_json PATH] [--multilabel_json PATH]

(`scripts/prepare_imagenet.sh` runs it in the project's virtualenv.)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import os
import re
import sys
import tarfile
import tempfile
import types
from typing import Sequence

from etils import epath
import tensorflow_datasets as tfds

from big_vision_like.data import bundled
from big_vision_like.data import fashion_mnist
from big_vision_like.data import imagenet_variants

MODULE = "big_vision_like.data.prepare_imagenet"
TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
TEST_TAR = "ILSVRC2012_img_test.tar"
REAL_JSON = "real.json"
MULTILABEL_JSON = "human_accuracy_v3.0.0.json"
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")
_SYNSET_TAR = re.compile(r"(n\d{8})\.tar")


class MissingFilesError(FileNotFoundError):
  """Files a requested dataset needs are missing (or wrong)."""


@dataclasses.dataclass(frozen=True)
class ManualFile:
  """A file a builder reads from the manual dir."""

  filename: str
  what: str
  required: bool = True
  flag: str | None = None  # A CLI option that may point at it instead.
  url: str | None = None  # Where it can be downloaded (label files only).
  size: int | None = None  # From the builder's checksums.tsv.
  sha256: str | None = None
  verify_sha256: bool = False  # TFDS verifies it too: fail early instead.


def _checksums(dataset: str) -> dict[str, tuple[str, int, str]]:
  """file name -> (url, size, sha256) from a builder's checksums.tsv."""
  path = tfds.core.tfds_path(os.path.join("datasets", dataset,
                                          "checksums.tsv"))
  rows = {}
  with open(os.fspath(path)) as f:
    for line in f:
      parts = line.split()
      if len(parts) < 3 or line.startswith("#"):
        continue
      url, size, sha = parts[:3]
      name = parts[3] if len(parts) > 3 else url.rsplit("/", 1)[-1]
      rows[name] = (url, int(size), sha)
  return rows


def manual_files(dataset: str) -> list[ManualFile]:
  """The files `dataset`'s builder reads from the manual dir."""
  sums = _checksums(dataset)

  def make(filename, what, **kwargs):
    url, size, sha = sums.get(filename, (None, None, None))
    if not kwargs.pop("downloadable", False):
      url = None  # The ImageNet tarballs need an image-net.org account.
    return ManualFile(filename, what, url=url, size=size, sha256=sha,
                      **kwargs)
  val = make(VAL_TAR, "ILSVRC-2012 validation images")
  if dataset == "imagenet2012":
    # Only train and val are listed in its checksums.tsv; take their sizes
    # from there (the real builder never looks at it).
    return [make(TRAIN_TAR, "ILSVRC-2012 training images"), val,
            ManualFile(TEST_TAR, "ILSVRC-2012 test images (no labels); "
                       "image-net.org names it "
                       "ILSVRC2012_img_test_v10102019.tar: rename it",
                       required=False)]
  if dataset == "imagenet2012_real":
    return [val, make(REAL_JSON, "ReaL label sets (google-research/"
                      "reassessed-imagenet)", flag="--real_json",
                      downloadable=True, verify_sha256=True)]
  if dataset == "imagenet2012_multilabel":
    return [val, make(MULTILABEL_JSON, "multi-label annotations (Shankar "
                      "et al. 2020)", flag="--multilabel_json",
                      downloadable=True, verify_sha256=True)]
  raise ValueError(
      f"prepare_imagenet prepares {list(imagenet_variants.ILSVRC_VARIANTS)}; "
      f"got {dataset!r} (other ImageNet variants are downloaded with "
      f"`tfds build NAME --data_dir DIR`).")


def command(data_dir: str, datasets: Sequence[str],
            manual_dir: str = "DIR_WITH_ILSVRC_TARBALLS") -> str:
  """The shell command that prepares `datasets` into `data_dir`."""
  return (f"python -m {MODULE} --manual_dir {manual_dir} --data_dir "
          f"{data_dir} --datasets {','.join(datasets)}")


def describe_needs(dataset: str, manual_dir: str = "DIR_WITH_ILSVRC_TARBALLS"
                   ) -> str:
  """One line per file `dataset` needs, with its size and where it goes."""
  lines = []
  for f in manual_files(dataset):
    lines.append(f"  {manual_dir}/{f.filename}: {_file_note(f)}")
  return "\n".join(lines)


def _file_note(f: ManualFile) -> str:
  note = f.what
  if f.size is not None:
    note += f", {f.size:,} bytes"
  if not f.required:
    note += ", optional"
  if f.flag:
    note += f"; or pass {f.flag} PATH"
  if f.url:
    note += f"; download: {f.url}"
  elif f.filename.endswith(".tar"):
    note += "; from https://image-net.org/download-images (needs an account)"
  return note


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _check_val_tar(path: str) -> list[str]:
  """TFDS labels validation images by their SORTED position in the tar.

  So the names must be exactly ILSVRC2012_val_00000001.JPEG ... _N.JPEG:
  anything else would silently give images the wrong labels.
  """
  with tarfile.open(path, mode="r:") as tar:
    names = sorted(tar.getnames())  # Exactly what TFDS sorts and zips.
  if not names:
    return [f"{path} holds no files."]
  for position, name in enumerate(names, start=1):
    match = _VAL_NAME.fullmatch(name)
    if not match or int(match.group(1)) != position:
      return [f"{path}: validation image {position} (in sorted order) is "
              f"{name!r}, expected 'ILSVRC2012_val_{position:08d}.JPEG'. "
              f"TFDS assigns labels by sorted position, so the tar must hold "
              f"ILSVRC2012_val_00000001.JPEG ... consecutively, at its top "
              f"level (the official ILSVRC2012_img_val.tar does)."]
  return []


def _check_train_tar(path: str) -> list[str]:
  """The train tar holds one `nXXXXXXXX.tar` per ImageNet class."""
  wnids = set(imagenet_variants.class_wnids())
  with tarfile.open(path, mode="r:") as tar:
    names = [m.name for m in tar if m.isfile()]
  if not names:
    return [f"{path} holds no files."]
  bad = [n for n in names if not (_SYNSET_TAR.fullmatch(n)
                                  and n[:-4] in wnids)]
  if bad:
    return [f"{path}: members {bad[:5]} are not per-class tarballs named "
            f"after an ImageNet wnid (like n01440764.tar), as in the "
            f"official ILSVRC2012_img_train.tar."]
  return []


def locate_files(datasets: Sequence[str], manual_dir: str, *,
                 real_json: str | None = None,
                 multilabel_json: str | None = None,
                 check_sizes: bool = True) -> dict[str, str]:
  """Finds and checks every file `datasets` need; returns name -> path.

  Raises `MissingFilesError` listing EVERY missing or wrong file with its
  expected size and where to put it.
  """
  overrides = {REAL_JSON: real_json, MULTILABEL_JSON: multilabel_json}
  found: dict[str, str] = {}
  problems: list[str] = []
  checked: set[str] = set()
  for dataset in datasets:
    for f in manual_files(dataset):
      if f.filename in checked:
        continue
      checked.add(f.filename)
      given = overrides.get(f.filename)
      path = given or os.path.join(manual_dir, f.filename)
      if not given and f.filename == REAL_JSON and not os.path.isfile(path):
        path = bundled.real_json_path()  # Checked below like any other.
      if not os.path.isfile(path):
        if given:  # An explicit path that is wrong is always an error.
          problems.append(f"MISSING {f.filename}: {f.flag} {given} is not a "
                          f"file.")
        elif f.required:
          problems.append(
              f"MISSING {f.filename} (needed by {dataset}; {_file_note(f)})."
              f" Put it at {path}")
        continue
      path = os.path.abspath(path)
      size = os.path.getsize(path)
      if f.size is not None and size != f.size and (
          check_sizes or f.verify_sha256):
        problems.append(
            f"WRONG SIZE {path}: {size:,} bytes, the official {f.filename} "
            f"has {f.size:,} (incomplete download?"
            + (" Pass --skip_size_check for a deliberate subset." if
               not f.verify_sha256 else "") + ")")
        continue
      if f.verify_sha256 and f.sha256 and _sha256(path) != f.sha256:
        problems.append(f"WRONG CHECKSUM {path}: its sha256 differs from the "
                        f"official {f.filename}'s {f.sha256}.")
        continue
      if f.filename == VAL_TAR:
        problems += _check_val_tar(path)
      elif f.filename == TRAIN_TAR:
        problems += _check_train_tar(path)
      found[f.filename] = path
  if problems:
    raise MissingFilesError(
        f"Cannot prepare {', '.join(datasets)} from --manual_dir "
        f"{manual_dir}:\n  " + "\n  ".join(problems))
  return found


def _stage(found: dict[str, str], staging_dir: str) -> None:
  """Links the files under the names TFDS looks for into one manual dir."""
  for name, path in found.items():
    os.symlink(path, os.path.join(staging_dir, name))


def _offline_builder(dataset: str, data_dir: str):
  """TFDS's own builder for `dataset`, with its code path spelled out.

  TFDS 4.9.10 finds a registered builder's checksums.tsv (and README etc.)
  through a code path that needs the `importlib_resources` backport, which
  it does not install on Python >= 3.9. This subclass (same name, version,
  features and generation code) points at the builder's file directly.
  """
  base = tfds.builder_cls(dataset)
  attrs = {"name": base.name,
           "code_path": epath.Path(inspect.getfile(base)),
           "__module__": base.__module__}
  cls = types.new_class(base.__name__, (base,),
                        {"skip_registration": True},
                        lambda ns: ns.update(attrs))
  return cls(data_dir=data_dir)


def _split_counts(builder) -> dict[str, int]:
  return {name: int(info.num_examples)
          for name, info in sorted(builder.info.splits.items())}


def prepare(datasets: Sequence[str], manual_dir: str, data_dir: str, *,
            real_json: str | None = None, multilabel_json: str | None = None,
            check_sizes: bool = True, log=print) -> dict[str, dict[str, int]]:
  """Prepares `datasets` into `data_dir`; returns dataset -> split counts.

  Every file the datasets to prepare need is checked before anything is
  written; datasets already prepared in `data_dir` are left as they are
  (and need no files).
  """
  datasets = list(dict.fromkeys(datasets))  # Dedupe, keep order.
  for dataset in datasets:
    manual_files(dataset)  # Fails on names we do not prepare.
  manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
  data_dir = os.path.expanduser(data_dir)
  todo = []
  for dataset in datasets:
    builder = tfds.builder(dataset, data_dir=data_dir)
    if builder.is_prepared():
      log(f"{dataset}: already prepared in {builder.data_dir}")
    else:
      todo.append(dataset)
  if todo and not os.path.isdir(manual_dir):
    raise MissingFilesError(
        f"--manual_dir {manual_dir} is not a directory. It must hold:\n"
        + "\n".join(describe_needs(d, manual_dir) for d in todo))
  found = locate_files(todo, manual_dir, real_json=real_json,
                       multilabel_json=multilabel_json,
                       check_sizes=check_sizes) if todo else {}

  with tempfile.TemporaryDirectory(prefix="bvl_imagenet_manual_") as staging:
    _stage(found, staging)
    config = tfds.download.DownloadConfig(
        manual_dir=staging, try_download_gcs=False,
        compute_stats=tfds.download.ComputeStatsMode.SKIP)
    for dataset in todo:
      log(f"{dataset}: preparing into "
          f"{tfds.builder(dataset, data_dir=data_dir).data_dir} ...")
      _offline_builder(dataset, data_dir).download_and_prepare(
          download_config=config)
  results = {d: _split_counts(tfds.builder(d, data_dir=data_dir))
             for d in datasets}
  for dataset, counts in results.items():
    log(f"{dataset}: " + ", ".join(f"{s}={n:,}" for s, n in counts.items()))
    if dataset == "imagenet2012" and "train" in counts:
      builder = tfds.builder(dataset, data_dir=data_dir)
      subs = {s: int(builder.info.splits[s].num_examples) for s in
              (imagenet_variants.TRAIN_SPLIT, imagenet_variants.MINIVAL_SPLIT)}
      log("  " + ", ".join(f"{s}={n:,}" for s, n in subs.items()))
  return results


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog=f"python -m {MODULE}",
      description="Prepare ImageNet TFDS datasets from the ILSVRC-2012 "
                  "tarballs (no network needed).")
  parser.add_argument("--manual_dir", required=True,
                      help=f"directory with {TRAIN_TAR}, {VAL_TAR} (and "
                           f"optionally {TEST_TAR}, {REAL_JSON}, "
                           f"{MULTILABEL_JSON})")
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data dir (default: $TFDS_DATA_DIR or "
                           "~/tensorflow_datasets)")
  parser.add_argument("--datasets", default="imagenet2012",
                      help="comma-separated, from "
                           f"{','.join(imagenet_variants.ILSVRC_VARIANTS)}")
  parser.add_argument("--real_json", default=None,
                      help=f"path of {REAL_JSON} if not in --manual_dir "
                           "(default: the copy shipped with the package)")
  parser.add_argument("--multilabel_json", default=None,
                      help=f"path of {MULTILABEL_JSON} if not in "
                           f"--manual_dir")
  parser.add_argument("--skip_size_check", action="store_true",
                      help="accept tarballs whose size differs from the "
                           "official ones (e.g. a deliberate subset)")
  args = parser.parse_args(argv)
  datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
  if not datasets:
    parser.error("--datasets is empty.")
  unknown = [d for d in datasets if d not in imagenet_variants.ILSVRC_VARIANTS]
  if unknown:
    parser.error(f"--datasets: cannot prepare {unknown} from the ILSVRC "
                 f"tarballs; choose from "
                 f"{','.join(imagenet_variants.ILSVRC_VARIANTS)} (other "
                 f"variants: tfds build NAME --data_dir DIR).")
  data_dir = args.data_dir
  if data_dir is None:
    data_dir = fashion_mnist.default_data_dir()
  try:
    prepare(datasets, args.manual_dir, data_dir, real_json=args.real_json,
            multilabel_json=args.multilabel_json,
            check_sizes=not args.skip_size_check)
  except MissingFilesError as e:
    print(f"prepare_imagenet: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
