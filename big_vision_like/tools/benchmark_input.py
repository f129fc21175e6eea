"""Input pipeline throughput against the bare JPEG decode+resize limit.

  python -m big_vision_like.tools.benchmark_input [--data_dir DIR] \
      [--train_examples 2000] [--val_examples 500] [--batch 128]

Our train and eval pipelines do more than decode and resize (shuffling,
per-example seeds, crops, flips, value ranges, one-hot labels, padding and
masks for eval), and every extra step costs host CPU that the accelerators
wait for. This tool measures how close they get to the bare limit: a minimal
tf.data pipeline (read TFRecords, parse, `tf.io.decode_jpeg`, `tf.image.resize`
to 224x224, batch) over the SAME files, with the same parallelism, measured
in the same run.

The data is a real TFDS `imagenet2012` dataset (the registered builder's
features) of generated natural-looking JPEGs with ImageNet's typical sizes
(mostly 500x375, 375x500, 500x333) and quality 90, so that file sizes and
decode costs are like ImageNet's (~110 KB per image). It is generated once
and cached in `--data_dir`.

Two more bare rows do, in plain TF, the minimal work of our pipelines
(train: decode only an inception crop; eval: resize the shorter side to 256,
crop 224): their ratio to the bare limit is the ceiling for ours.

Every phase runs in a fresh subprocess, so its peak RSS is its own and no
tf.data state or Python heap of another phase carries over. Train phases
time batches after a warm-up (within the first epoch by default); eval
phases time whole passes over the validation split, without the iterator's
teardown. Prints a markdown table: images/s, images/s/core, the ratio to the
bare limit on the same split, CPU time per image (all threads of the
process: on a shared machine the steadier measure of cost) and its ratio,
the cores the phase kept busy, and peak RSS. `--repeats N` runs every phase
N times, interleaved, and keeps the fastest run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterator

import numpy as np

# TensorFlow and our data modules are imported where needed, so that the
# parent process and tests that only format tables stay light.

IMAGE_SIZE = 224
# The train pipelines as configs/vit_i1k.py runs them: its inception crop
# (aspect ratios up to 4/3, 32 tries, resize rounded) and uint8 images, which
# become floats on the device (config.device_value_range); tests check that
# RANDAUG_PP is that config's string for randaug(2, 15).
_CONFIG_CROP = (f"decode_jpeg_and_inception_crop({IMAGE_SIZE}, "
                "ratio_max=1.3333333333333333, max_attempts=32, "
                "rounding='round')|flip_lr")
TRAIN_PP = f"{_CONFIG_CROP}|onehot(1000)"
RANDAUG_PP = f"{_CONFIG_CROP}|randaug(2, 15)|onehot(1000)"
# The same with the float conversion on the host, as pp strings without
# device_value_range do: 4x the bytes per batch.
HOST_FLOAT_RANDAUG_PP = (f"{_CONFIG_CROP}|randaug(2, 15)|value_range(-1, 1)|"
                         "onehot(1000)")
# The classic spelling of the eval crop; EVAL_PP decodes only the crop.
# Bilinear and rounded, like the bare pipeline it is compared with
# (big_vision's resize_small defaults to method="area", truncated).
RESIZE_SMALL_EVAL_PP = (
    "decode|resize_small(256, method='bilinear', rounding='round')|"
    f"central_crop({IMAGE_SIZE})|value_range(-1, 1)|onehot(1000)")
# Our eval pipeline leaves uint8 images: the float conversion runs on the
# device (config.device_value_range), as in configs/vit_i1k.py.
EVAL_PP = f"decode_jpeg_and_central_crop({IMAGE_SIZE})|onehot(1000)"
HOST_FLOAT_EVAL_PP = (f"decode_jpeg_and_central_crop({IMAGE_SIZE})|"
                      "value_range(-1, 1)|onehot(1000)")
DATASET = "imagenet2012"
# Bump when the generated images change, so stale caches are not reused.
_GENERATOR_VERSION = 2
_RESULT_PREFIX = "BENCHMARK_INPUT_RESULT "
_STATS_FILE = "benchmark_input_stats.json"

# (height, width) of generated images and how often each occurs; ImageNet's
# most common sizes, plus a few odd ones.
_SHAPES = ((375, 500), (500, 375), (333, 500), (500, 333), (400, 500),
           (500, 500), (300, 450))
_SHAPE_P = (0.55, 0.17, 0.14, 0.04, 0.04, 0.03, 0.03)

# Rows of the YCbCr (JPEG's full-range) to RGB matrix.
_YCC_TO_RGB = np.array([[1.0, 0.0, 1.402],
                        [1.0, -0.344136, -0.714136],
                        [1.0, 1.772, 0.0]], np.float32)


@dataclasses.dataclass(frozen=True)
class Phase:
  """One row of the table: a pipeline measured in its own process."""
  title: str
  pp: str  # Our pp string, or what the bare pipeline does.
  split: str
  bare: str | None = None  # The bare phase it is compared with.
  target: float | None = None  # Required ratio to that bare phase.


_BARE = f"decode_jpeg|resize({IMAGE_SIZE}, {IMAGE_SIZE})"
PHASES = {
    "bare_train": Phase("bare limit (train files)", _BARE, "train"),
    "bare_train_crop": Phase(
        "bare, train's work: inception crop", "extract_jpeg_shape|"
        "sample_distorted_bounding_box|decode_and_crop_jpeg|"
        f"resize({IMAGE_SIZE}, {IMAGE_SIZE})", "train", "bare_train"),
    "train": Phase("ours: make_train_iterator", TRAIN_PP, "train",
                   "bare_train", 0.8),
    "train_randaug": Phase("ours: make_train_iterator + randaug", RANDAUG_PP,
                           "train", "bare_train", 0.85),
    "train_randaug_host_float": Phase(
        "ours: make_train_iterator + randaug, value_range on the host",
        HOST_FLOAT_RANDAUG_PP, "train", "bare_train"),
    "bare_eval": Phase("bare limit (validation files)", _BARE, "validation"),
    "bare_eval_work": Phase(
        "bare, eval's work: resize_small + crop", "decode_jpeg|resize(shorter "
        f"side 256)|crop({IMAGE_SIZE}, {IMAGE_SIZE})", "validation",
        "bare_eval"),
    "eval": Phase("ours: make_eval_iterator", EVAL_PP, "validation",
                  "bare_eval", 0.9),
    "eval_host_float": Phase(
        "ours: make_eval_iterator, value_range on the host",
        HOST_FLOAT_EVAL_PP, "validation", "bare_eval"),
    "eval_resize_small": Phase(
        "ours: make_eval_iterator, resize_small(256) + central_crop",
        RESIZE_SMALL_EVAL_PP, "validation", "bare_eval"),
}


# --------------------------------------------------------------- the data


def _power_law_fields(rng: np.random.Generator, n: int, height: int,
                      width: int, alpha: float) -> np.ndarray:
  """`n` random fields with a 1/f^alpha amplitude spectrum, unit variance.

  Natural images have roughly 1/f amplitude spectra: structure at every
  scale, which is what makes their JPEGs as large as they are.
  """
  fy = np.fft.fftfreq(height).astype(np.float32)[:, None]
  fx = np.fft.rfftfreq(width).astype(np.float32)[None, :]
  freq = np.sqrt(fy**2 + fx**2)
  freq[0, 0] = np.inf  # No DC component: the mean is set separately.
  shape = (n, height, fx.shape[1])
  spectrum = (rng.standard_normal(shape, np.float32)
              + 1j * rng.standard_normal(shape, np.float32)) * freq**-alpha
  fields = np.fft.irfft2(spectrum, s=(height, width)).astype(np.float32)
  return fields / fields.std(axis=(1, 2), keepdims=True)


def natural_image(rng: np.random.Generator, height: int, width: int
                  ) -> np.ndarray:
  """A uint8 RGB image with natural-image statistics (not a real scene).

  Power-law luminance texture, smoother colour, a few flat-coloured textured
  objects with sharp edges, and a little sensor noise. At JPEG quality 90 a
  500x375 image is ~80-135 KB (mean ~110 KB), like ImageNet's.
  """
  alpha = rng.uniform(0.75, 1.05)  # Lower: more fine detail, bigger files.
  contrast = rng.uniform(35, 55)
  texture = _power_law_fields(rng, 2, height, width, alpha)
  colour = _power_law_fields(rng, 2, height, width, alpha + 0.8)
  y = rng.uniform(90, 150) + contrast * texture[0]
  cb = rng.normal(0, 12) + 18 * colour[0]
  cr = rng.normal(0, 12) + 18 * colour[1]
  for _ in range(rng.integers(2, 7)):  # Elliptic objects.
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    ry = rng.uniform(height / 12, height / 2.5)
    rx = rng.uniform(width / 12, width / 2.5)
    y0, y1 = int(max(cy - ry, 0)), int(min(cy + ry + 1, height))
    x0, x1 = int(max(cx - rx, 0)), int(min(cx + rx + 1, width))
    inside = (((np.arange(y0, y1, dtype=np.float32)[:, None] - cy) / ry)**2
              + ((np.arange(x0, x1, dtype=np.float32)[None, :] - cx) / rx)**2
              < 1)
    window = np.s_[y0:y1, x0:x1]
    y[window][inside] = (rng.uniform(30, 220) + contrast
                         * rng.uniform(0.3, 1.5) * texture[1][window][inside])
    cb[window][inside] = rng.normal(0, 30)
    cr[window][inside] = rng.normal(0, 30)
  y += rng.uniform(1, 4) * rng.standard_normal((height, width), np.float32)
  rgb = np.stack([y, cb, cr], -1) @ _YCC_TO_RGB.T
  return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _examples(split: str, n: int, seed: int, quality: int,
              class_names: list[str], sizes: list[int]
              ) -> Iterator[dict[str, Any]]:
  """imagenet2012-style examples whose `image` is the JPEG bytes, as is."""
  import tensorflow as tf

  rng = np.random.default_rng([seed, 0 if split == "train" else 1])
  for i in range(n):
    height, width = _SHAPES[rng.choice(len(_SHAPES), p=_SHAPE_P)]
    jpeg = tf.io.encode_jpeg(natural_image(rng, height, width),
                             quality=quality).numpy()
    sizes.append(len(jpeg))
    label = int(rng.integers(0, len(class_names)))
    if split == "train":
      file_name = f"{class_names[label]}_{i}.JPEG"
    else:
      file_name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
    # TFDS stores `bytes` for an Image feature unchanged (no re-encoding).
    yield {"image": jpeg, "label": label, "file_name": file_name}


def prepare_dataset(cache_dir: str, *, train_examples: int, val_examples: int,
                    quality: int = 90, seed: int = 0,
                    num_shards: int = 4) -> tuple[str, dict[str, Any]]:
  """Writes (once) the generated imagenet2012 dataset; returns its data dir.

  The TFDS data dir is a subdirectory of `cache_dir` named by the generation
  parameters, so different sizes are cached side by side. Also returns
  statistics of the JPEGs (mean bytes, generation time).
  """
  from big_vision_like.data import tfds_writer

  if train_examples < 1 or val_examples < 1:
    raise ValueError(f"Need at least one train and one validation example, "
                     f"got {train_examples} and {val_examples}.")
  if not 1 <= quality <= 100:
    raise ValueError(f"--quality must be in [1, 100], got {quality}.")
  name = (f"{DATASET}_v{_GENERATOR_VERSION}_t{train_examples}_"
          f"v{val_examples}_q{quality}_s{seed}_sh{num_shards}")
  data_dir = os.path.join(os.path.expanduser(cache_dir), name)
  stats_path = os.path.join(data_dir, _STATS_FILE)
  if os.path.exists(stats_path):
    with open(stats_path) as f:
      return data_dir, {**json.load(f), "cached": True}
  # Write next to the final place, then rename: an interrupted run leaves no
  # half-written dataset that a later run would take for a cached one.
  os.makedirs(os.path.dirname(data_dir), exist_ok=True)
  tmp_dir = tempfile.mkdtemp(prefix=name + ".tmp-",
                             dir=os.path.dirname(data_dir))
  info = tfds_writer.registered_builder_info(DATASET)
  class_names = info.features["label"].names
  sizes = {"train": [], "validation": []}
  start = time.perf_counter()
  tfds_writer.write_like_registered(DATASET, tmp_dir, {
      "train": _examples("train", train_examples, seed, quality, class_names,
                         sizes["train"]),
      "validation": _examples("validation", val_examples, seed, quality,
                              class_names, sizes["validation"]),
  }, num_shards=num_shards)
  all_sizes = sizes["train"] + sizes["validation"]
  stats = {
      "train_examples": train_examples, "val_examples": val_examples,
      "quality": quality, "mean_jpeg_bytes": float(np.mean(all_sizes)),
      "min_jpeg_bytes": int(np.min(all_sizes)),
      "max_jpeg_bytes": int(np.max(all_sizes)),
      "generate_s": time.perf_counter() - start,
  }
  with open(os.path.join(tmp_dir, _STATS_FILE), "w") as f:
    json.dump(stats, f)
  try:
    os.rename(tmp_dir, data_dir)
  except OSError:  # Another run finished the same dataset first: use it.
    import shutil
    shutil.rmtree(tmp_dir, ignore_errors=True)
    if not os.path.exists(stats_path):
      raise
  return data_dir, {**stats, "cached": False}


# ------------------------------------------------------------ the phases


def _peak_rss_mib() -> float:
  # Linux reports ru_maxrss in KiB.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _bare_dataset(data_dir: str, phase: str, batch: int, *, repeat: bool):
  """A bare pipeline: read, parse, decode, resize, batch. Nothing else.

  `bare_*` phases decode the whole JPEG and resize it to 224x224; the
  `*_crop`/`*_work` ones do the minimal work of our train/eval pp in plain TF
  (so their ratio to the bare limit is the best our pipeline could reach).
  """
  import tensorflow as tf
  from big_vision_like.data import tfds_source

  builder = tfds_source.get_builder(DATASET, data_dir)
  files = [os.fspath(p) for p in
           builder.info.splits[PHASES[phase].split].filepaths]
  features = {"image": tf.io.FixedLenFeature([], tf.string),
              "label": tf.io.FixedLenFeature([], tf.int64)}
  size = [IMAGE_SIZE, IMAGE_SIZE]

  def limit(jpeg, _):
    return tf.image.resize(tf.io.decode_jpeg(jpeg, channels=3), size)

  def train_work(jpeg, index):
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.image.extract_jpeg_shape(jpeg),
        tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=tf.stack([tf.constant(0, tf.int64), index]),
        min_object_covered=0.0, area_range=(0.05, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3),
        max_attempts=32, use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
    return tf.image.resize(
        tf.image.decode_and_crop_jpeg(jpeg, window, channels=3), size)

  def eval_work(jpeg, _):
    image = tf.io.decode_jpeg(jpeg, channels=3)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    hw = tf.cast(tf.round(hw * 256 / tf.reduce_min(hw)), tf.int32)
    image = tf.image.resize(image, hw)
    top, left = (hw[0] - IMAGE_SIZE) // 2, (hw[1] - IMAGE_SIZE) // 2
    return image[top:top + IMAGE_SIZE, left:left + IMAGE_SIZE]

  work = {"bare_train_crop": train_work,
          "bare_eval_work": eval_work}.get(phase, limit)

  def decode(record, index=None):
    example = tf.io.parse_single_example(record, features)
    return {"image": work(example["image"], index), "label": example["label"]}

  ds = tf.data.TFRecordDataset(files)
  if repeat:
    ds = ds.repeat()
  if work is train_work:  # Position -> seed of the random crop.
    ds = ds.enumerate().map(lambda index, record: (record, index))
  # The plainest pipeline a researcher writes: AUTOTUNE and tf.data's default
  # options (autotuning on), while ours runs with fixed parallelism and no
  # autotuner (`tf_options`); the ratio compares the two as each would run.
  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch, drop_remainder=repeat).prefetch(2)


class _NumpyPasses:
  """Re-iterable numpy batches of a finite dataset (like EvalIterable)."""

  def __init__(self, ds):
    self._ds = ds

  def __iter__(self):
    return self._ds.as_numpy_iterator()


class _Clock:
  """Wall time and this process's CPU time (all threads) since start."""

  def __init__(self):
    self.wall, self.cpu = time.perf_counter(), time.process_time()

  def stop(self) -> tuple[float, float]:
    return (time.perf_counter() - self.wall, time.process_time() - self.cpu)


def _time_stream(batches: Iterator[dict[str, np.ndarray]], warmup: int,
                 count: int) -> tuple[float, float, int]:
  """Wall s, CPU s and images for `count` batches after `warmup` ones."""
  for _ in range(warmup):
    next(batches)
  images = 0
  clock = _Clock()
  for _ in range(count):
    images += len(next(batches)["image"])
  return (*clock.stop(), images)


def _time_passes(iterable, num_batches: int, warmup: int, passes: int
                 ) -> tuple[float, float, int, float]:
  """Wall s, CPU s and real (unpadded) images of `passes` full passes.

  Each pass is timed from creating its iterator to receiving its last
  batch. Ending the iterator is timed apart (the 4th value: mean seconds
  per pass): with tf.data's autotuner on (the bare pipelines; ours before
  `tf_options`) deleting an iterator joins its model thread, ~0.5 s per
  short pass here (up to a minute after a long run), noise on a
  50,000-image validation set but most of our short passes.
  """
  wall = cpu = teardown = 0.0
  images = 0
  for i in range(warmup + passes):
    clock = _Clock()
    batches = iter(iterable)
    n = 0
    for _ in range(num_batches):
      batch = next(batches)
      n += (int(batch["_mask"].sum()) if "_mask" in batch
            else len(batch["image"]))
    pass_wall, pass_cpu = clock.stop()
    end = time.perf_counter()
    leftover = sum(1 for _ in batches)  # Ends the pass (and the iterator).
    del batches
    if leftover:
      raise RuntimeError(f"{leftover} batches more than the expected "
                         f"{num_batches} in an eval pass.")
    if i >= warmup:
      wall, cpu, images = wall + pass_wall, cpu + pass_cpu, images + n
      teardown += time.perf_counter() - end
  return wall, cpu, images, teardown / passes


def run_phase(phase: str, data_dir: str, *, batch: int, warmup_batches: int,
              batches: int, eval_passes: int, shuffle_buffer: int,
              seed: int = 0) -> dict[str, Any]:
  """Runs one phase in this process; returns its measurements."""
  import tensorflow as tf
  from big_vision_like import registry
  from big_vision_like.data import input_pipeline
  from big_vision_like.data import tfds_source

  if phase not in PHASES:
    raise ValueError(f"Unknown phase {phase!r}; known: {sorted(PHASES)}.")
  spec = PHASES[phase]
  if "randaug" in spec.pp and "randaug" not in registry.PP_OPS:
    return {"missing": "randaug"}
  rss_start = _peak_rss_mib()
  out: dict[str, Any] = {}
  data = {"name": DATASET, "split": spec.split, "data_dir": data_dir}
  if spec.split == "train":
    if phase.startswith("bare"):
      stream = _bare_dataset(data_dir, phase, batch,
                             repeat=True).as_numpy_iterator()
    else:
      stream = input_pipeline.make_train_iterator(
          data, spec.pp, batch, seed=seed, shuffle_buffer_size=shuffle_buffer)
      out["shuffle_buffer"] = shuffle_buffer
    seconds, cpu_seconds, images = _time_stream(stream, warmup_batches, batches)
  else:
    if phase.startswith("bare"):
      iterable = _NumpyPasses(_bare_dataset(data_dir, phase, batch,
                                            repeat=False))
      num_batches = -(-tfds_source.num_examples(
          DATASET, spec.split, data_dir) // batch)
    else:
      # No cache: every pass decodes again, as on a real validation set.
      iterable, num_batches = input_pipeline.make_eval_iterator(
          data, spec.pp, batch, cache=False)
    seconds, cpu_seconds, images, teardown = _time_passes(
        iterable, num_batches, 1, eval_passes)
    out["teardown_s"] = teardown
  cores = len(os.sched_getaffinity(0))
  out.update({
      "images": images, "seconds": seconds, "img_per_sec": images / seconds,
      "cores": cores, "img_per_sec_per_core": images / seconds / cores,
      "cpu_ms_per_img": cpu_seconds / images * 1e3,
      "rss_before_mib": rss_start, "peak_rss_mib": _peak_rss_mib(),
      "tf_version": tf.__version__,
  })
  return out


def _run_phase_subprocess(phase: str, args: argparse.Namespace
                          ) -> dict[str, Any]:
  command = [sys.executable, "-m", "big_vision_like.tools.benchmark_input",
             "--phase", phase, "--data_dir", args.tfds_data_dir,
             "--batch", str(args.batch),
             "--warmup_batches", str(args.warmup_batches),
             "--batches", str(args.batches),
             "--eval_passes", str(args.eval_passes),
             "--shuffle_buffer", str(args.shuffle_buffer),
             "--seed", str(args.seed)]
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  proc = subprocess.run(command, capture_output=True, text=True, env=env,
                        check=False)
  for line in proc.stdout.splitlines():
    if line.startswith(_RESULT_PREFIX):
      return json.loads(line[len(_RESULT_PREFIX):])
  raise RuntimeError(f"Phase {phase!r} failed (exit {proc.returncode}):\n"
                     f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


# ------------------------------------------------------------ the report


_COLUMNS = ("pipeline", "pp", "images", "img/s", "img/s/core", "vs bare",
            "target", "CPU ms/img", "CPU vs bare", "cores busy", "peak RSS")


def format_table(results: dict[str, dict[str, Any]]) -> str:
  """The markdown table of all phases (ratios against their bare phase).

  "vs bare" compares throughput (img/s); "CPU vs bare" compares the CPU time
  per image (bare / ours), which other load on the machine disturbs less.
  "cores busy" (CPU s / wall s) shows whether a phase had the machine: a
  throughput ratio between rows with different values measures the load.
  """
  rows = ["| " + " | ".join(_COLUMNS) + " |",
          "|" + " --- |" * len(_COLUMNS)]
  for phase, spec in PHASES.items():
    title, pp, bare, target = spec.title, spec.pp, spec.bare, spec.target
    r = results.get(phase)
    if r is None:
      continue
    pp = pp.replace("|", "\\|")  # A literal `|` inside a table cell.
    if "missing" in r:
      cells = [title, f"`{pp}`", f"n/a (op missing: {r['missing']})"]
      rows.append("| " + " | ".join(cells + [""] * (len(_COLUMNS) - 3))
                  + " |")
      continue
    ratio = goal = cpu_ratio = ""
    base = results.get(bare or "", {})
    if "img_per_sec" in base:
      value = r["img_per_sec"] / base["img_per_sec"]
      ratio = f"{value:.2f}"
      cpu_ratio = f"{base['cpu_ms_per_img'] / r['cpu_ms_per_img']:.2f}"
      if target:
        goal = f">= {target} ({'met' if value >= target else 'MISSED'})"
    rss = f"{r['peak_rss_mib']:,.0f} MiB"
    if "shuffle_buffer" in r:
      rss += f" (shuffle buffer {r['shuffle_buffer']:,})"
    cells = [title, f"`{pp}`", f"{r['images']:,}", f"{r['img_per_sec']:,.1f}",
             f"{r['img_per_sec_per_core']:,.1f}", ratio, goal,
             f"{r['cpu_ms_per_img']:.2f}", cpu_ratio,
             f"{r['img_per_sec'] * r['cpu_ms_per_img'] / 1e3:.2f}", rss]
    rows.append("| " + " | ".join(cells) + " |")
  return "\n".join(rows)


def paired_cpu_ratios(runs: dict[str, list[dict[str, Any]]]
                      ) -> dict[str, list[float]]:
  """Per phase with a bare phase: bare / ours CPU ms per image, per repeat.

  The table's ratios set the best run of each row against each other, and
  on a shared machine those can come from different moments of its load
  (RandAugment's ratio ranged over 0.75-1.11 between repeats of one run).
  Repeat i of a phase and repeat i of its bare phase ran minutes apart at
  most, so their ratio is the steadier number.
  """
  out = {}
  for phase, phase_runs in runs.items():
    bare = runs.get(PHASES[phase].bare or "", [])
    pairs = [(b, r) for b, r in zip(bare, phase_runs)
             if "cpu_ms_per_img" in b and "cpu_ms_per_img" in r]
    if pairs:
      out[phase] = [b["cpu_ms_per_img"] / r["cpu_ms_per_img"]
                    for b, r in pairs]
  return out


def _best(old: dict[str, Any] | None, new: dict[str, Any]
          ) -> dict[str, Any]:
  """The faster of two runs of a phase, with the larger peak RSS."""
  if old is None or "missing" in new:
    return new
  best = dict(max(old, new, key=lambda r: r["img_per_sec"]))
  best["peak_rss_mib"] = max(old["peak_rss_mib"], new["peak_rss_mib"])
  return best


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--data_dir", default=os.path.join(tempfile.gettempdir(),
                                         "bvl_benchmark_input"),
      help="cache dir for the generated dataset (reused across runs)")
  parser.add_argument("--train_examples", type=int, default=2000)
  parser.add_argument("--val_examples", type=int, default=500)
  parser.add_argument("--quality", type=int, default=90)
  parser.add_argument("--num_shards", type=int, default=4,
                      help="TFRecord files per split")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--warmup_batches", type=int, default=3,
                      help="train phases: batches before timing")
  parser.add_argument("--batches", type=int, default=10,
                      help="train phases: timed batches")
  parser.add_argument("--eval_passes", type=int, default=3,
                      help="eval phases: timed passes over the validation "
                           "split (after one warm-up pass)")
  parser.add_argument("--shuffle_buffer", type=int, default=10_000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--repeats", type=int, default=1,
                      help="runs of every phase (interleaved); the table "
                           "shows the fastest")
  parser.add_argument("--phases", default=",".join(PHASES),
                      help=f"comma-separated subset of {', '.join(PHASES)}")
  # Internal: run one phase on a prepared TFDS data dir and print JSON.
  parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  for flag in ("batch", "batches", "eval_passes", "shuffle_buffer",
               "repeats", "train_examples", "val_examples", "num_shards"):
    if getattr(args, flag) < 1:
      parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}.")
  if args.warmup_batches < 0:
    parser.error(f"--warmup_batches must be >= 0, got {args.warmup_batches}.")
  if args.phase:  # Child process: one phase.
    result = run_phase(args.phase, args.data_dir, batch=args.batch,
                       warmup_batches=args.warmup_batches,
                       batches=args.batches, eval_passes=args.eval_passes,
                       shuffle_buffer=args.shuffle_buffer, seed=args.seed)
    print(_RESULT_PREFIX + json.dumps(result), flush=True)
    return 0
  phases = [p.strip() for p in args.phases.split(",") if p.strip()]
  unknown = [p for p in phases if p not in PHASES]
  if unknown or not phases:
    parser.error(f"--phases: unknown {unknown}; known: {', '.join(PHASES)}.")
  args.tfds_data_dir, stats = prepare_dataset(
      args.data_dir, train_examples=args.train_examples,
      val_examples=args.val_examples, quality=args.quality, seed=args.seed,
      num_shards=args.num_shards)
  print(f"dataset: {DATASET} features, {stats['train_examples']:,} train + "
        f"{stats['val_examples']:,} validation JPEGs (quality "
        f"{stats['quality']}), mean {stats['mean_jpeg_bytes'] / 1e3:.1f} KB "
        f"(min {stats['min_jpeg_bytes'] / 1e3:.1f}, max "
        f"{stats['max_jpeg_bytes'] / 1e3:.1f}); "
        + ("cached" if stats["cached"] else
           f"generated in {stats['generate_s']:.1f} s")
        + f" in {args.tfds_data_dir}", flush=True)
  results, runs = {}, {}
  for repeat in range(args.repeats):  # Interleaved, so drifts hit all.
    for phase in phases:
      r = _run_phase_subprocess(phase, args)
      print(f"  {repeat + 1}/{args.repeats} {phase}: " + (
          "n/a (op missing)" if "missing" in r else
          f"{r['img_per_sec']:.1f} img/s, {r['cpu_ms_per_img']:.2f} CPU "
          f"ms/img ({r['img_per_sec'] * r['cpu_ms_per_img'] / 1e3:.2f} "
          f"cores busy), peak RSS {r['peak_rss_mib']:.0f} MiB"
          + (f", iterator teardown {r['teardown_s']:.2f} s/pass (not timed)"
             if "teardown_s" in r else "")), flush=True)
      results[phase] = _best(results.get(phase), r)
      runs.setdefault(phase, []).append(r)
  cores = next((r["cores"] for r in results.values() if "cores" in r), None)
  print(f"\nbatch {args.batch}; train: {args.warmup_batches} warm-up + "
        f"{args.batches} timed batches; eval: 1 warm-up + {args.eval_passes} "
        f"timed passes (no cache); {cores} cores "
        f"(os.sched_getaffinity); ours: num_parallel_calls={cores}, no "
        f"autotuner; bare: AUTOTUNE, tf.data's defaults; "
        f"best of {args.repeats} fresh process(es) per row "
        f"(peak RSS: the largest)\n")
  print(format_table(results))
  paired = paired_cpu_ratios(runs)
  if paired and args.repeats > 1:
    print(f"\nCPU vs bare per repeat (bare and ours of one repeat ran "
          f"minutes apart at most, so a load that came and went hits both; "
          f"median "
          f"[min-max] of {args.repeats}): " + "; ".join(
              f"{phase} {statistics.median(ratios):.2f} "
              f"[{min(ratios):.2f}-{max(ratios):.2f}]"
              for phase, ratios in paired.items()))
  # The pipeline reads ahead about `prefetch` (2) batches of the consumer.
  timed = (args.warmup_batches + args.batches + 2) * args.batch
  if any(PHASES[p].split == "train" for p in phases) and (
      timed > args.train_examples):
    print(f"\nNote: the timed train batches reach the end of an epoch of "
          f"{args.train_examples:,} examples, so they include refilling the "
          f"per-epoch shuffle buffer (once per epoch; negligible on "
          f"ImageNet's 1.28 M). Use more --train_examples for steady state.")
  buffered = min(args.shuffle_buffer, args.train_examples)
  if any("shuffle_buffer" in r for r in results.values()):
    mean = stats["mean_jpeg_bytes"]
    print(f"\nThe train shuffle buffer holds encoded records: {buffered:,} x "
          f"{mean / 1e3:.0f} KB = {buffered * mean / 2**20:,.0f} MiB here "
          f"(a full {args.shuffle_buffer:,}-record buffer: "
          f"{args.shuffle_buffer * mean / 2**20:,.0f} MiB).")
  return 0


if __name__ == "__main__":
  sys.exit(main())
