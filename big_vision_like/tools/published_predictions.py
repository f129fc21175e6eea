"""Published ImageNet predictions through the in-loop evaluators and offline, compared.

    python -m big_vision_like.tools.published_predictions [--limit N] \\
        [--out results/imagenet_val_published.md] [--workdir DIR] \\
        [--predictions results/imagenet_val_top5_predictions.npz] [--labels real.json] \\
        [--batch_size 1000] [--json metrics.json]

The scorecard promises that an evaluator in the training loop and
`tools/score_predictions` run offline give the same numbers. This tool shows
it on real data: the ReaL label sets (`real.json`) and the top-5 predictions
of six published models on the 50,000 ImageNet validation images (an npz in
class-folder order), plus "the original labels as predictions".

1. A real TFDS `imagenet2012_real` validation split is written (the registered
   builder's features, so TFDS's own builder reads it) holding the validation
   file names, their ReaL sets and their original labels, joined on file name.
   Each image is a 32x32 JPEG whose 4x4 grid of black/white 8x8-pixel blocks
   spells the example's index in 16 bits: the "model" learns which example it
   sees only from pixels that went through TFDS, the pp string, batching,
   padding and sharding like any eval image. The blocks sit on JPEG's 8x8 DCT
   grid, so each DCT block is flat (one DC coefficient) and decodes to within
   a grey level or two with any DCT method. (Smaller blocks are not safe:
   TensorFlow's default fast integer IDCT, used by `tf.io.decode_image`,
   turns a full-contrast 2x2 checkerboard of 4x4 squares inside one DCT block
   into stripes, even at quality 100.)
2. For every model the registered `multilabel` (ReaL sets) and
   `classification` evaluators run on a mesh of all local devices with a
   predict_fn that decodes the index and scores the published top-k ids
   k, k-1, ..., 1 (0 elsewhere), so that `jax.lax.top_k` returns exactly the
   published ranking. Both dump their predictions.
3. `score_predictions.score_file` scores the ORIGINAL npz against real.json
   and re-scores every dump; every metric the three share must be equal
   (`==`, not approximately). The dumps' top-k ids must be the published ones,
   file by file, and `label`'s real@1 must equal a plain count over real.json.
4. A markdown table (one row per model) goes to `--out` and stdout.

Any disagreement exits with status 1 and names the model, metric and values;
bad inputs exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import numpy as np

# `bundled` imports only the standard library; JAX, TensorFlow and our
# evaluators are imported where needed, so that `--help`, argument errors and
# the pixel code stay light.
from big_vision_like.data import bundled

MODELS = ("alexnet", "resnet18", "resnet50", "resnet152", "vgg16", "densenet121")
LABEL_ROW = "label"  # the original labels scored as top-1 predictions
NUM_CLASSES = 1000
NUM_VALIDATION = 50_000

# The index code: bit b of the index is block (b // GRID, b % GRID) of a
# GRID x GRID grid of BLOCK x BLOCK pixel squares, white for 1, black for 0.
# BLOCK is JPEG's DCT block size (see the module docstring).
INDEX_BITS = 16
GRID = 4
BLOCK = 8
IMAGE_SIZE = GRID * BLOCK
JPEG_QUALITY = 95

DATASET = "imagenet2012_real"
SPLIT = "validation"
_PP = f"decode|central_crop({IMAGE_SIZE})"

# The npz is kept in the repository's results/ (results/README.md: source and
# licence), the ReaL labels inside the package.
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_PREDICTIONS = os.path.join(_REPO, "results", "imagenet_val_top5_predictions.npz")
DEFAULT_LABELS = bundled.real_json_path()

# The table's columns: (metric key, header). Percentages unless `num_`.
COLUMNS = (("prec@1", "prec@1"), ("prec@5", "prec@5"), ("real@1", "real@1"),
           ("real@5", "real@5"), ("recall@5", "recall@5"),
           ("multi_label_fraction", "multi-label fraction"),
           ("single/real@1", "single/real@1"), ("multi/real@1", "multi/real@1"),
           ("single/prec@1", "single/prec@1"), ("multi/prec@1", "multi/prec@1"),
           ("num_counted", "num_counted"))


class MismatchError(Exception):
  """In-loop and offline scores (or predictions) disagree."""


# --------------------------------------------------------------------------
# The index code in the pixels.


def index_images(indices: np.ndarray) -> np.ndarray:
  """[N] ints in [0, 2**16) -> [N, 32, 32, 3] uint8 black/white block codes."""
  indices = np.asarray(indices, np.int64)
  if indices.size and (indices.min() < 0 or indices.max() >= 2 ** INDEX_BITS):
    raise ValueError(f"index_images: indices must be in [0, {2 ** INDEX_BITS}), got "
                     f"{indices.min()}..{indices.max()}")
  bits = (indices[:, None] >> np.arange(INDEX_BITS)) & 1
  grid = bits.reshape(-1, GRID, GRID).astype(np.uint8) * 255
  pixels = grid.repeat(BLOCK, axis=1).repeat(BLOCK, axis=2)
  return np.repeat(pixels[..., None], 3, axis=-1)


def decode_index(images: Any) -> Any:
  """[B, 32, 32, C] images (any dtype, 0..255) -> [B] int32 indices, on device.

  Each block's mean brightness is thresholded at the middle grey.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  if images.ndim != 4 or images.shape[1:3] != (IMAGE_SIZE, IMAGE_SIZE):
    raise ValueError(f"decode_index: images must be [batch, {IMAGE_SIZE}, {IMAGE_SIZE}, "
                     f"channels], got shape {images.shape}; the eval pp must keep the "
                     f"{IMAGE_SIZE}x{IMAGE_SIZE} pixels ({_PP!r})")
  grey = images.astype(jnp.float32).mean(-1)
  blocks = grey.reshape(-1, GRID, BLOCK, GRID, BLOCK).mean(axis=(2, 4))
  bits = (blocks > 127.5).reshape(-1, INDEX_BITS).astype(jnp.int32)
  return (bits << jnp.arange(INDEX_BITS, dtype=jnp.int32)).sum(-1)


def encode_jpegs(indices: np.ndarray) -> list[bytes]:
  """The index images as JPEG bytes (encoded in parallel with tf.data)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  images = index_images(indices)
  from big_vision_like.data import tf_options  # pylint: disable=g-import-not-at-top
  ds = tf_options.apply(tf.data.Dataset.from_tensor_slices(images).map(
      lambda image: tf.io.encode_jpeg(image, quality=JPEG_QUALITY),
      num_parallel_calls=tf_options.parallelism()).batch(4096))
  return [bytes(b) for batch in ds.as_numpy_iterator() for b in batch]


def make_predict_fn(num_classes: int = NUM_CLASSES) -> Callable[[Any, dict], Any]:
  """predict_fn(params, batch) -> logits from `params["top_ids"]` [N, k].

  The example's row is chosen by the index decoded from its pixels; its k ids
  score k, k-1, ..., 1 and every other class 0, so the top-k are the row in
  order. An index outside the table gives NaN logits, which the evaluators
  refuse to score (a decoding error cannot pass silently).
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def predict(params, batch):
    table = params["top_ids"]
    rows, k = table.shape
    index = decode_index(batch["image"])
    ids = table[jnp.clip(index, 0, rows - 1)]
    scores = jnp.arange(k, 0, -1, dtype=jnp.float32)
    batch_rows = jnp.arange(ids.shape[0])[:, None]
    logits = jnp.zeros((ids.shape[0], num_classes), jnp.float32)
    logits = logits.at[batch_rows, ids].set(jnp.broadcast_to(scores, ids.shape))
    known = (index >= 0) & (index < rows)
    return jnp.where(known[:, None], logits, jnp.nan)
  return predict


# --------------------------------------------------------------------------
# Inputs.


@dataclasses.dataclass
class Inputs:
  """The examples in file-name order, everything joined on file name."""
  file_name: list[str]                 # ILSVRC2012_val_00000001.JPEG, ...
  label: np.ndarray                    # [N] original labels (from the npz)
  real: list[list[int]]                # ReaL sets (from real.json)
  top_ids: dict[str, np.ndarray]       # model -> [N, k] int32 (label: [N, 1])
  npz_rows: np.ndarray                 # [N] row of each example in the npz


def read_inputs(predictions: str, labels: str, limit: int | None = None) -> Inputs:
  """The first `limit` validation file names with their labels and predictions."""
  from big_vision_like import label_sources  # pylint: disable=g-import-not-at-top
  for path in (predictions, labels):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} does not exist")
  n = NUM_VALIDATION if limit is None else limit
  if not 1 <= n <= NUM_VALIDATION:
    raise ValueError(f"--limit must be in [1, {NUM_VALIDATION}], got {limit}")
  with open(labels) as f:
    try:
      real_all = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{labels}: not valid JSON ({e})") from None
  label_sources.from_real_json(labels, real_all)  # checks length and form
  with np.load(predictions, allow_pickle=False) as f:
    arrays = {k: f[k] for k in f.files}
  missing = [k for k in ("file_name", "label", *MODELS) if k not in arrays]
  if missing:
    raise KeyError(f"{predictions}: no arrays {missing} (has {sorted(arrays)})")
  names = [label_sources.real_file_name(i) for i in range(n)]
  npz_names = label_sources.LabelSource(arrays["file_name"], predictions)
  rows = label_sources.join(np.array(names), npz_names, what=f"{labels} file names")
  label = arrays["label"].astype(np.int32)[rows]
  if label.min() < 0 or label.max() >= NUM_CLASSES:
    raise ValueError(f"{predictions}: 'label' holds ids outside [0, {NUM_CLASSES})")
  top_ids = {}
  for model in MODELS:
    ids = arrays[model]
    if ids.ndim != 2 or ids.dtype.kind not in "iu" or len(ids) != len(arrays["file_name"]):
      raise ValueError(f"{predictions}: {model!r} must be int top-k ids [N, k], got "
                       f"{ids.dtype}{list(ids.shape)}")
    ids = ids.astype(np.int32)[rows]
    if ids.min() < 0 or ids.max() >= NUM_CLASSES:
      raise ValueError(f"{predictions}: {model!r} holds ids outside [0, {NUM_CLASSES})")
    ordered = np.sort(ids, axis=1)
    repeated = (ordered[:, 1:] == ordered[:, :-1]).any(1)
    if repeated.any():  # the logits could not rank a repeated id twice
      raise ValueError(f"{predictions}: {model!r} repeats a class within the top-k of "
                       f"{names[int(np.flatnonzero(repeated)[0])]}")
    top_ids[model] = ids
  top_ids[LABEL_ROW] = label[:, None].copy()
  return Inputs(names, label, [list(real_all[i]) for i in range(n)], top_ids, rows)


def check_labels_against_tfds(inputs: Inputs) -> None:
  """The npz's original labels must be TFDS's labels of the same file names."""
  from big_vision_like.data import imagenet_variants  # pylint: disable=g-import-not-at-top
  wnid_index = {w: i for i, w in enumerate(imagenet_variants.class_wnids())}
  truth = np.array([wnid_index[w] for w in
                    imagenet_variants.validation_wnids()[:len(inputs.file_name)]])
  wrong = np.flatnonzero(truth != inputs.label)
  if len(wrong):
    raise MismatchError(f"the predictions' 'label' disagrees with TFDS's "
                        f"validation_labels.txt for {len(wrong)} files, e.g. "
                        f"{inputs.file_name[wrong[0]]}: {inputs.label[wrong[0]]} vs "
                        f"{truth[wrong[0]]}")


def write_split(inputs: Inputs, data_dir: str) -> float:
  """Writes the TFDS imagenet2012_real validation split; returns seconds taken."""
  from big_vision_like.data import tfds_writer  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  # Only this tool's own dataset folder is replaced on a re-run.
  old = os.path.join(data_dir, DATASET)
  if os.path.exists(old):
    shutil.rmtree(old)
  jpegs = encode_jpegs(np.arange(len(inputs.file_name)))
  examples = [{"image": jpegs[i], "original_label": int(inputs.label[i]),
               "real_label": inputs.real[i], "file_name": inputs.file_name[i]}
              for i in range(len(jpegs))]
  tfds_writer.write_like_registered(DATASET, data_dir, {SPLIT: examples})
  return time.perf_counter() - start


# --------------------------------------------------------------------------
# In the loop.


def _dump(workdir: str, name: str) -> str:
  return os.path.join(workdir, "predictions", name, "step_00000000.npz")


def run_in_loop(inputs: Inputs, data_dir: str, workdir: str, *, batch_size: int
                ) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, float], str]:
  """({model: {"real"|"val": metrics}}, {model: seconds}, device description).

  Runs the registered `multilabel` and `classification` evaluators for
  every model; their dumps go to `{workdir}/predictions/{real|val}_{model}/`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from big_vision_like import registry  # pylint: disable=g-import-not-at-top
  from big_vision_like import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    raise ValueError("published_predictions runs in one process (it compares one "
                     "host's gathered results with offline files)")
  devices = jax.local_devices()
  mesh = sharding_lib.make_mesh([("data", -1)], devices=devices)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data = dict(name=DATASET, split=SPLIT, data_dir=data_dir)
  predict = make_predict_fn()
  results, seconds = {}, {}
  for model, top_ids in inputs.top_ids.items():
    start = time.perf_counter()
    k = top_ids.shape[1]
    for kind in ("real", "val"):
      # A dump left by an earlier run in this workdir: the evaluators do not
      # overwrite one (collect.save_predictions refuses to), and a stale one
      # must not be re-scored.
      stale = _dump(workdir, f"{kind}_{model}")
      if os.path.exists(stale):
        os.remove(stale)
    params = {"top_ids": jax.device_put(top_ids, replicated)}
    common = dict(data=data, batch_size=batch_size, mesh=mesh, data_axes=("data",),
                  workdir=workdir, save_predictions=True, cache=False, topk=k)
    real = registry.EVALUATORS.get("multilabel")(
        predict, name=f"real_{model}", scheme="sets", set_key="real_label",
        label_key="original_label", ks=tuple(j for j in (1, 5) if j <= k),
        pp=_PP + "|keep('image', 'original_label', 'real_label')", **common)
    val = registry.EVALUATORS.get("classification")(
        predict, name=f"val_{model}", label_key="original_label",
        pp=_PP + "|keep('image', 'original_label')", **common)
    results[model] = {"real": real.run(params, step=0), "val": val.run(params, step=0)}
    seconds[model] = time.perf_counter() - start
  kinds = sorted({d.platform for d in devices})
  return results, seconds, f"{len(devices)} x {'/'.join(kinds)} ({devices[0].device_kind})"


# --------------------------------------------------------------------------
# Offline, and the comparison.


def offline_npz_path(inputs: Inputs, predictions: str, workdir: str) -> str:
  """The npz the offline tool scores: the original, or its rows for --limit.

  With --limit the rows of the chosen file names are copied unchanged, in
  the file's own (class-folder) order, so the offline join still works on
  names in a different order from the TFDS split.
  """
  if len(inputs.file_name) == NUM_VALIDATION:
    return predictions
  keep = np.zeros(NUM_VALIDATION, bool)
  keep[inputs.npz_rows] = True
  path = os.path.join(workdir, f"published_first_{len(inputs.file_name)}.npz")
  with np.load(predictions, allow_pickle=False) as f:
    subset = {k: f[k][keep] for k in f.files}
  np.savez(path, **subset)
  return path


def score_offline(npz: str, labels: str, workdir: str, models: Sequence[str]
                  ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, dict]]]:
  """(score_file of the npz, {model: {"real"|"val": score_file of its dump}})."""
  from big_vision_like.tools import score_predictions  # pylint: disable=g-import-not-at-top
  on_npz = score_predictions.score_file(npz, labels=labels, keys=list(models))
  on_dumps = {}
  for model in models:
    on_dumps[model] = {}
    for kind in ("real", "val"):
      (only,) = score_predictions.score_file(_dump(workdir, f"{kind}_{model}")).values()
      on_dumps[model][kind] = only
  return on_npz, on_dumps


def compare(name: str, reference: dict[str, Any], other: dict[str, Any],
            what: str, required: Sequence[str] = ()) -> list[str]:
  """Problems (empty if none): shared float metrics must be exactly equal."""
  problems = []
  for key in required:
    if key not in other:
      problems.append(f"{name}: {what} has no {key!r}")
  for key, value in reference.items():
    if isinstance(value, float) and key in other and not other[key] == value:
      problems.append(f"{name}: {key} in-loop {value!r} != {what} {other[key]!r}")
  return problems


def shared_keys(reference: dict[str, Any], other: dict[str, Any]) -> list[str]:
  return [k for k, v in reference.items() if isinstance(v, float) and k in other]


def check_dump_predictions(inputs: Inputs, workdir: str) -> list[str]:
  """The dumps' top-k ids must be the published ranking of each file name."""
  problems = []
  position = {n: i for i, n in enumerate(inputs.file_name)}
  for model, want in inputs.top_ids.items():
    for kind in ("real", "val"):
      path = _dump(workdir, f"{kind}_{model}")
      with np.load(path, allow_pickle=False) as f:
        names, got = f["file_name"].astype(str), f["topk_ids"]
      if sorted(names) != sorted(inputs.file_name):
        problems.append(f"{path}: the dumped file names are not the written split's")
        continue
      expected = want[[position[n] for n in names]]
      wrong = np.flatnonzero((got != expected).any(1))
      if len(wrong):
        i = int(wrong[0])
        problems.append(f"{path}: {len(wrong)} examples' top-k differ from the "
                        f"published ones, e.g. {names[i]}: {got[i].tolist()} vs "
                        f"{expected[i].tolist()}")
  return problems


def direct_label_real1(inputs: Inputs) -> tuple[int, int]:
  """(images whose original label is in their ReaL set, images with a set)."""
  counted = [(lab, s) for lab, s in zip(inputs.label.tolist(), inputs.real) if s]
  return sum(lab in s for lab, s in counted), len(counted)


def verify(inputs: Inputs, in_loop: dict, on_npz: dict, on_dumps: dict, workdir: str
           ) -> tuple[dict[str, dict[str, float]], list[str], list[str]]:
  """(metrics per model, problems, metrics compared) of the three routes."""
  problems = check_dump_predictions(inputs, workdir)
  metrics, compared = {}, set()
  for model, parts in in_loop.items():
    merged = {**parts["val"], **parts["real"]}
    required = [key for key, _ in COLUMNS if key in merged]
    missing = [key for key, _ in COLUMNS if key not in merged and "@5" not in key]
    if missing:
      problems.append(f"{model}: the in-loop evaluators gave no {missing}")
    problems += compare(model, merged, on_npz[model], "offline-on-npz", required)
    for kind, part in parts.items():
      dump = on_dumps[model][kind]
      problems += compare(model, part, dump, f"offline-on-dump({kind}_{model})",
                          [key for key, _ in COLUMNS if key in part])
      compared.update(shared_keys(part, dump))
    compared.update(shared_keys(merged, on_npz[model]))
    metrics[model] = merged
  hit, count = direct_label_real1(inputs)
  if metrics[LABEL_ROW].get("real@1") != hit / count:
    problems.append(f"{LABEL_ROW}: real@1 in-loop {metrics[LABEL_ROW].get('real@1')!r} != "
                    f"{hit}/{count} counted directly from real.json")
  return metrics, problems, sorted(compared)


# --------------------------------------------------------------------------
# The table.


def _cell(key: str, value: float | None) -> str:
  if value is None:
    return "–"
  if key.startswith("num_"):
    return f"{int(value):,}"
  return f"{100 * value:.3f}"


def markdown_table(metrics: dict[str, dict[str, float]]) -> str:
  head = "| model | " + " | ".join(h for _, h in COLUMNS) + " |"
  rule = "|---|" + "---:|" * len(COLUMNS)
  rows = [f"| {model} | " + " | ".join(_cell(k, m.get(k)) for k, _ in COLUMNS) + " |"
          for model, m in metrics.items()]
  return "\n".join([head, rule, *rows])


def report(metrics: dict[str, dict[str, float]], *, command: str, n: int, device: str,
           compared: Sequence[str], timing: dict[str, float], label_counts: tuple[int, int]
           ) -> str:
  when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  hit, count = label_counts
  subset = ("all 50,000 validation images" if n == NUM_VALIDATION else
            f"the first {n:,} validation images in file-name order")
  return "\n".join([
      "# ImageNet validation: published models, in-loop == offline",
      "",
      f"Produced by `{command}` on {when}, over {subset}, on {device}.",
      "",
      "Data:",
      "- ReaL label sets: `real.json` from google-research/reassessed-imagenet "
      "(Beyer et al. 2020, \"Are we done with ImageNet?\"), Apache-2.0.",
      "- Top-5 predictions and original labels: `imagenet_val_top5_predictions.npz` "
      "from the ImageNetV2 project (Recht et al. 2019), MIT licence. Rows are in "
      "class-folder order; everything is joined on `file_name`.",
      "",
      "How: the labels went into a TFDS `imagenet2012_real` validation split (the "
      "registered builder's features); each image is a 32x32 JPEG that encodes its "
      "example's index, from which the stand-in model produces logits whose top-5 are "
      "the published ones. The registered `multilabel` (ReaL sets) and "
      "`classification` evaluators scored them in the loop; "
      "`tools/score_predictions` scored the original npz against real.json and "
      "re-scored every evaluator dump. In-loop == offline-on-npz == offline-on-dump "
      f"EXACTLY (`==` on floats) for every shared metric ({', '.join(compared)}), and "
      "the dumped top-5 ids equal the published ones file by file.",
      "",
      markdown_table(metrics),
      "",
      "Percent except `num_counted`. `prec@k`: original label among the top k. "
      "`real@k`: a top-k prediction is in the ReaL set, over the images with a "
      "non-empty set (`num_counted`). `recall@5`: mean |top-5 ∩ set| / |set|. "
      "Strata: images whose ReaL set has one label (single) or more (multi); "
      "`multi-label fraction` = multi / counted. "
      f"`{LABEL_ROW}` = the original labels as top-1 predictions (no top-5): "
      f"ReaL@1 {hit:,} of {count:,}.",
      "",
      "Timing: " + ", ".join(f"{k} {v:.1f} s" for k, v in timing.items()) + ".",
      ""])


# --------------------------------------------------------------------------


def run(args: argparse.Namespace, command: str) -> int:
  total = time.perf_counter()
  workdir = args.workdir or tempfile.mkdtemp(prefix="published_predictions_")
  os.makedirs(workdir, exist_ok=True)
  try:
    timing: dict[str, float] = {}
    start = time.perf_counter()
    inputs = read_inputs(args.predictions, args.labels, args.limit)
    check_labels_against_tfds(inputs)
    timing["read inputs"] = time.perf_counter() - start
    n = len(inputs.file_name)
    timing["write TFDS split"] = write_split(inputs, os.path.join(workdir, "tfds"))
    print(f"Wrote {n:,} records of {DATASET}:{SPLIT} in "
          f"{timing['write TFDS split']:.1f} s", flush=True)
    in_loop, seconds, device = run_in_loop(
        inputs, os.path.join(workdir, "tfds"), workdir, batch_size=args.batch_size)
    timing["in-loop evals"] = sum(seconds.values())
    for model, s in seconds.items():
      print(f"  in-loop {model}: {s:.1f} s (multilabel + classification)", flush=True)
    start = time.perf_counter()
    npz = offline_npz_path(inputs, args.predictions, workdir)
    on_npz, on_dumps = score_offline(npz, args.labels, workdir, list(inputs.top_ids))
    timing["offline scoring"] = time.perf_counter() - start
    metrics, problems, compared = verify(inputs, in_loop, on_npz, on_dumps, workdir)
    if problems:
      print("published_predictions: MISMATCH between in-loop and offline results:",
            file=sys.stderr)
      for p in problems:
        print(f"  {p}", file=sys.stderr)
      return 1
    timing["total"] = time.perf_counter() - total
    text = report(metrics, command=command, n=n, device=device, compared=compared,
                  timing=timing, label_counts=direct_label_real1(inputs))
    print(markdown_table(metrics))
    print(f"in-loop == offline-on-npz == offline-on-dump exactly for: "
          f"{', '.join(compared)}")
    print("Timing: " + ", ".join(f"{k} {v:.1f} s" for k, v in timing.items()))
    if args.out:
      os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
      with open(args.out, "w") as f:
        f.write(text)
      print(f"Wrote {args.out}")
    if args.json:
      with open(args.json, "w") as f:
        json.dump({"metrics": metrics, "timing": timing, "compared": compared,
                   "num_examples": n}, f, indent=1, sort_keys=True)
    return 0
  finally:
    if args.workdir is None:
      shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(
      prog="python -m big_vision_like.tools.published_predictions",
      description=__doc__.split("\n\n")[0])
  parser.add_argument("--limit", type=int,
                      help="only the first N validation images in file-name order")
  parser.add_argument("--out", help="markdown results file to write")
  parser.add_argument("--workdir", help="keep the TFDS split and dumps here "
                      "(default: a temporary folder, removed afterwards)")
  parser.add_argument("--predictions", default=DEFAULT_PREDICTIONS,
                      help="npz with file_name, label and the six models' top-5 "
                           "(default: results/imagenet_val_top5_predictions.npz)")
  parser.add_argument("--labels", default=DEFAULT_LABELS,
                      help="the ReaL real.json (default: the packaged copy)")
  parser.add_argument("--batch_size", type=int, default=1000)
  parser.add_argument("--json", help="also write the exact metrics and timing here")
  args = parser.parse_args(argv)
  if args.limit is not None and not 1 <= args.limit <= NUM_VALIDATION:
    parser.error(f"--limit must be in [1, {NUM_VALIDATION}], got {args.limit}")
  if args.batch_size < 1:
    parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
  command = shlex.join(["python", "-m", "big_vision_like.tools.published_predictions",
                        *argv])
  try:
    return run(args, command)
  except MismatchError as e:
    print(f"published_predictions: MISMATCH: {e}", file=sys.stderr)
    return 1
  except (ValueError, KeyError, FileNotFoundError) as e:
    print(f"published_predictions: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
