"""Writes ReLabel label maps: a trained teacher's localized top-k predictions per image.

    python -m big_vision_like.tools.make_label_maps --workdir DIR [--step N] \\
        [--data NAME] [--split train] [--data_dir D] --out maps.npz \\
        [--method dense|sliding] [--grid G] [--window F] [--topk K] [--batch_size B]

Why it exists: ReLabel (Yun et al. 2021) trains a student on a teacher's
dense "label maps": for every training image a small grid of cells, each with
the teacher's top-k classes and their probabilities; the target of a random
crop is the map pooled over the crop's box (`soft_labels.pool`, the
`pp/ops_soft_labels` op). This tool makes those maps from a workdir of ours
and writes them in `soft_labels`' .npz format, keyed by file name.

The teacher is the workdir's checkpoint (newest, or `--step`) and
config.json, set up by `experiment.build`. Every example of the TFDS split
(default: the config's `input.data` name and data dir, split "train") is read
once, in order, by the eval iterator with the pp of the config's first
evaluator (deterministic ops only); datasets without a `file_name` feature
are named by record position, "train_00042", as the training pipeline names
them.

Methods:
  dense    (default; ReLabel's own) the model's head applied at every token
           of the final feature map, before global pooling. For a ViT with
           pool_type="gap" and no rep_size the head is linear after the mean,
           so the per-token logits are `encoded @ head/kernel + head/bias` on
           the token grid (aux "stem" gives its shape) and their mean is the
           model's own logits; that identity is checked on every batch. The
           grid is the token grid (`--grid` may only restate it). Other
           models (pool_type tok/map, rep_size, ResNet, two towers) are
           refused: use --method sliding.
  sliding  model-agnostic: for a G x G grid (`--grid`, default 4) the window
           of cell (i, j) is a square of side `--window` (a fraction of the
           image side, default 0.5) centred on the cell's centre and clipped
           to the image; it is cut from the preprocessed image, resized
           (bilinear) back to the model's input size and classified. One
           forward pass sees batch_size x G x G windows (default batch_size:
           128 windows' worth of images).
           The windows are zoomed-in views: a teacher trained on full images
           only (the Fashion-MNIST main job) labels them badly (BENCHMARKS.md,
           "Soft and localized labels"); use one trained with random crops.

Each cell keeps the softmax's top-k (`--topk`, default min(5, classes)).
meta_* records the workdir, step, method, grid, data, split, pp and the
teacher's accuracy on the split (global argmax vs the evaluator's label).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from big_vision_like import experiment
from big_vision_like import predict
from big_vision_like import soft_labels
from big_vision_like import tasks
from big_vision_like.data import input_pipeline
from big_vision_like.models import vit

METHODS = ("dense", "sliding")
DEFAULT_GRID = 4       # --method sliding
DEFAULT_WINDOW = 0.5   # --method sliding
DEFAULT_TOPK = 5
DEFAULT_BATCH = 128      # images per step (dense); sliding: windows per step


@dataclasses.dataclass
class Teacher:
  """A workdir's model, params and the eval pp/label key of its first evaluator."""
  workdir: str
  config: ml_collections.ConfigDict
  exp: experiment.Experiment
  params: Any
  step: int
  pp: str
  label_key: str

  @property
  def model_desc(self) -> str:
    model = self.exp.model
    pool = getattr(model, "pool_type", None)
    return f"{self.config.model_name}" + (f" (pool_type={pool!r})" if pool else "")


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config.json of a training workdir."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--workdir {workdir} does not exist")
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: not a workdir of train.py")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_teacher(workdir: str, step: int | None = None,
                 config: ml_collections.ConfigDict | None = None) -> Teacher:
  """The checkpoint (newest or `step`) of a training workdir, with its config.json."""
  config = read_config(workdir) if config is None else config
  first_eval = next(iter((config.get("evals") or {}).values()), None) or {}
  pp = first_eval.get("pp") or ""
  if not pp:
    raise ValueError(f"{workdir}: the config has no evaluator whose eval pp string the "
                     f"label maps could use")
  exp, params, step = predict.load_workdir(config, workdir, step)
  return Teacher(workdir, config, exp, params, step, pp,
                 first_eval.get("label_key") or "labels")


# ----------------------------------------------------------------------------- dense


def check_dense(model: Any, task_name: str = "classification") -> None:
  """Raises ValueError unless `model` is one whose head can be applied per token.

  That is a ViT with global average pooling, no pre-logits layer and a head:
  its logits are then linear in the mean of the final tokens.
  """
  name = type(model).__name__
  pool = getattr(model, "pool_type", None)
  what = f"model {name}" + (f" with pool_type={pool!r}" if pool is not None else "")
  hint = "; use --method sliding (model-agnostic)"
  if task_name != "classification":
    raise ValueError(f"--method dense: {what} is a {task_name!r} model (not a classifier "
                     f"with a linear head over pooled tokens){hint}")
  if not isinstance(model, vit.ViT):
    raise ValueError(f"--method dense needs a ViT with pool_type='gap'; {what} has no "
                     f"per-position head of its own{hint}")
  if pool != "gap":
    raise ValueError(f"--method dense needs pool_type='gap' (the head then reads the mean "
                     f"of the tokens); {what} pools otherwise{hint}")
  if model.rep_size:
    raise ValueError(f"--method dense: {what} has rep_size={model.rep_size!r}, a non-linear "
                     f"pre-logits layer after the pooling{hint}")
  if not model.num_classes:
    raise ValueError(f"--method dense: {what} has no classifier head (num_classes="
                     f"{model.num_classes!r})")


def dense_logits(params: Any, aux: dict[str, jax.Array]) -> jax.Array:
  """Per-token logits [B, h, w, C] of a GAP ViT from its aux output and params.

  `encoded @ head/kernel + head/bias` (float32), the tokens laid out on the
  grid of aux "stem" [B, h, w, D]. Their mean over (h, w) is the model's
  logits (see `check_dense_consistency`).
  """
  encoded, stem = aux["encoded"], aux["stem"]
  batch, h, w, _ = stem.shape
  if encoded.shape[1] != h * w:
    raise ValueError(f"aux 'encoded' has {encoded.shape[1]} tokens, the stem grid {h}x{w} "
                     f"has {h * w}: not a GAP ViT's tokens")
  kernel = jnp.asarray(params["head"]["kernel"], jnp.float32)
  bias = jnp.asarray(params["head"]["bias"], jnp.float32)
  logits = jnp.einsum("btd,dc->btc", encoded.astype(jnp.float32), kernel) + bias
  return logits.reshape(batch, h, w, -1)


def check_dense_consistency(cell_logits: np.ndarray, logits: np.ndarray, *,
                            rtol: float = 1e-4, where: str = "the model") -> None:
  """Raises ValueError unless the mean of the cell logits is the [B, C] logits.

  `cell_logits`: [B, h, w, C], or their mean over the cells already [B, C].
  """
  mean = np.asarray(cell_logits, np.float64)
  if mean.ndim == 4:
    mean = mean.mean(axis=(1, 2))
  logits = np.asarray(logits, np.float64)
  atol = rtol * max(1.0, float(np.abs(logits).max(initial=0.0)))
  if mean.shape != logits.shape or not np.allclose(mean, logits, rtol=rtol, atol=atol):
    err = (float(np.abs(mean - logits).max()) if mean.shape == logits.shape
           else f"shapes {mean.shape} vs {logits.shape}")
    raise ValueError(f"--method dense: the mean of the per-position logits of {where} is "
                     f"not its global logits (max difference {err}, tolerance {atol:.2g}): "
                     f"its head is not linear after global average pooling; use --method "
                     f"sliding")


# --------------------------------------------------------------------------- sliding


def window_boxes(grid: int, window: float) -> np.ndarray:
  """[G, G, 4] boxes (ymin, xmin, ymax, xmax; fractions): side `window` around each
  cell's centre, clipped to the image."""
  centres = (np.arange(grid) + 0.5) / grid
  lo = np.clip(centres - window / 2, 0.0, 1.0)
  hi = np.clip(centres + window / 2, 0.0, 1.0)
  out = np.zeros((grid, grid, 4), np.float32)
  out[..., 0], out[..., 2] = lo[:, None], hi[:, None]
  out[..., 1], out[..., 3] = lo[None, :], hi[None, :]
  return out


def crop_windows(images: jax.Array, boxes: jax.Array, size: tuple[int, int]) -> jax.Array:
  """[B, K, h, w, C]: each box [K, 4] (fractions) of each image [B, H, W, C], resized
  bilinearly to `size`. Box edges fall between pixels: a box [0, 0, 1, 1] at the
  image's own size gives the image back."""
  _, height, width, channels = images.shape
  out_h, out_w = size
  images = images.astype(jnp.float32)

  def one(image, box):
    ymin, xmin, ymax, xmax = box[0], box[1], box[2], box[3]
    scale = jnp.stack([out_h / ((ymax - ymin) * height), out_w / ((xmax - xmin) * width)])
    shift = -jnp.stack([ymin * height, xmin * width]) * scale
    return jax.image.scale_and_translate(image, (out_h, out_w, channels), (0, 1), scale,
                                         shift, method="linear", antialias=False)

  per_image = jax.vmap(one, in_axes=(None, 0))
  return jax.vmap(per_image, in_axes=(0, None))(images, jnp.asarray(boxes, jnp.float32))


# ------------------------------------------------------------------------- the maps


def _step_fn(teacher: Teacher, method: str, grid: int, window: float, topk: int
             ) -> Callable:
  """jit (params, images) -> (global logits, cell ids, cell scores, cell-logit mean)."""
  exp = teacher.exp
  value_range = exp.config.device_value_range
  height, width = exp.input_spec["image"].shape[:2]
  boxes = window_boxes(grid, window).reshape(-1, 4) if method == "sliding" else None

  def apply(params, x):
    return exp.model.apply({"params": params}, x, train=False)

  def step(params, images):
    x = tasks.device_images(images, value_range)
    logits, aux = apply(params, x)
    if method == "dense":
      cells = dense_logits(params, aux)
      mean = cells.mean(axis=(1, 2))
    else:
      windows = crop_windows(x, boxes, (height, width))  # [B, G*G, H, W, C]
      flat = windows.reshape(-1, *windows.shape[2:]).astype(x.dtype)
      cells, _ = apply(params, flat)
      cells = cells.astype(jnp.float32).reshape(x.shape[0], grid, grid, -1)
      mean = logits
    probs = jax.nn.softmax(cells.astype(jnp.float32), axis=-1)
    scores, ids = jax.lax.top_k(probs, topk)
    return logits.astype(jnp.float32), ids.astype(jnp.int32), scores, mean

  return jax.jit(step)


def _labels(batch: dict[str, np.ndarray], key: str) -> np.ndarray | None:
  """Integer labels of a batch (one-hot/multi-hot -> argmax), or None without any."""
  for k in (key, "label"):
    if k in batch:
      value = np.asarray(batch[k])
      return value.argmax(-1) if value.ndim == 2 else value.reshape(len(value))
  return None


def _check_args(method: str, grid: int | None, window: float | None, topk: int | None,
                batch_size: int | None) -> None:
  if method not in METHODS:
    raise ValueError(f"--method {method!r}: known methods are {', '.join(METHODS)}")
  if grid is not None and (isinstance(grid, bool) or int(grid) != grid or grid < 1):
    raise ValueError(f"--grid {grid}: must be a positive integer")
  if window is not None:
    if method != "sliding":
      raise ValueError(f"--window {window}: applies to --method sliding only")
    if not 0.0 < window <= 1.0:
      raise ValueError(f"--window {window}: the window side is a fraction of the image "
                       f"side, in (0, 1]")
  if topk is not None and topk < 1:
    raise ValueError(f"--topk {topk}: must be >= 1")
  if batch_size is not None and batch_size < 1:
    raise ValueError(f"--batch_size {batch_size}: must be >= 1")


def make_label_maps(workdir: str, *, step: int | None = None, data: str | None = None,
                    split: str = "train", data_dir: str | None = None,
                    method: str = "dense", grid: int | None = None,
                    window: float | None = None, topk: int | None = None,
                    batch_size: int | None = None, out: str | None = None
                    ) -> tuple[soft_labels.LabelMaps, dict[str, Any]]:
  """The label maps of every example of a split (see the module docstring).

  Returns (maps, summary); `out` (optional) is where they are saved and what
  `origin` names.
  """
  start = time.perf_counter()
  _check_args(method, grid, window, topk, batch_size)
  if jax.process_count() != 1:
    raise ValueError("make_label_maps runs in one process (it writes one file)")
  config = read_config(workdir)
  if method == "dense":  # Before reading any checkpoint.
    check_dense(experiment.build_model(config), tasks.for_config(config).name)
  teacher = load_teacher(workdir, step, config)
  exp = teacher.exp
  if "image" not in exp.input_spec:
    raise ValueError(f"{workdir}: model {teacher.model_desc} takes no images")
  if exp.task.name != "classification":
    raise ValueError(f"--method {method}: model {teacher.model_desc} is a {exp.task.name!r} "
                     f"model; label maps need class logits")

  # Shapes: the logits (class count) and, for dense, the token grid.
  dummy = jax.ShapeDtypeStruct((1, *exp.input_spec["image"].shape), jnp.float32)
  logits_shape, aux_shape = jax.eval_shape(
      lambda p, x: exp.model.apply({"params": p}, x, train=False), exp.abstract_params, dummy)
  num_classes = int(logits_shape.shape[-1])
  if method == "dense":
    token_grid = tuple(int(d) for d in aux_shape["stem"].shape[1:3])
    if grid is not None and (grid, grid) != token_grid:
      raise ValueError(f"--grid {grid}: with --method dense the grid is the model's token "
                       f"grid, {token_grid[0]}x{token_grid[1]}; leave --grid out, or use "
                       f"--method sliding for another grid")
    grid_hw = token_grid
  else:
    grid = DEFAULT_GRID if grid is None else int(grid)
    window = DEFAULT_WINDOW if window is None else float(window)
    grid_hw = (grid, grid)
  if topk is not None and topk > num_classes:
    raise ValueError(f"--topk {topk}: the model has only {num_classes} classes")
  k = min(DEFAULT_TOPK, num_classes) if topk is None else int(topk)

  source = _data_source(teacher.config, data, split, data_dir)
  if batch_size is None:  # sliding: about DEFAULT_BATCH windows per step
    cells = grid_hw[0] * grid_hw[1] if method == "sliding" else 1
    batch_size = max(1, DEFAULT_BATCH // cells)
  n_dev = exp.mesh.size
  batch = -(-batch_size // n_dev) * n_dev  # whole batches on every device
  iterable, _ = input_pipeline.make_eval_iterator(source, teacher.pp, batch, cache=False,
                                                  process_index=0, process_count=1)
  step_fn = _step_fn(teacher, method, grid_hw[0], window or 0.0, k)
  names, ids, scores, correct, labelled = [], [], [], 0, True
  for batch_arrays in iterable:
    mask = np.asarray(batch_arrays[input_pipeline.MASK_KEY], bool)
    images = jax.device_put(batch_arrays["image"], exp.batch_sharding)
    logits, cell_ids, cell_scores, mean = jax.device_get(step_fn(teacher.params, images))
    if method == "dense":
      check_dense_consistency(mean[mask], logits[mask],
                              rtol=1e-4 if exp.model.dtype_mm == "float32" else 2e-2,
                              where=f"model {teacher.model_desc}")
    names += [n.decode() if isinstance(n, bytes) else str(n)
              for n in batch_arrays[input_pipeline.FILE_NAME_KEY][mask]]
    ids.append(cell_ids[mask])
    scores.append(cell_scores[mask])
    labels = _labels(batch_arrays, teacher.label_key)
    if labels is None:
      labelled = False
    else:
      correct += int((logits.argmax(-1)[mask] == labels[mask]).sum())
  if not names:
    raise ValueError(f"{source['name']}:{source['split']} has no examples")
  accuracy = correct / len(names) if labelled else float("nan")
  meta = {"workdir": os.path.abspath(workdir), "step": teacher.step, "method": method,
          "grid": f"{grid_hw[0]}x{grid_hw[1]}", "data": source["name"],
          "split": source["split"], "pp": teacher.pp, "teacher_accuracy": accuracy,
          "topk": k, "model": teacher.model_desc}
  if method == "sliding":
    meta["window"] = window
  maps = soft_labels.LabelMaps(np.array(names), np.concatenate(ids), np.concatenate(scores),
                               num_classes, out or f"label maps of {workdir}", meta)
  summary = {"examples": len(names), "grid": grid_hw, "topk": k,
             "teacher_accuracy": accuracy, "seconds": time.perf_counter() - start,
             "data": source, "method": method, "step": teacher.step}
  return maps, summary


def _data_source(config: ml_collections.ConfigDict, data: str | None, split: str,
                 data_dir: str | None) -> dict[str, Any]:
  """{name, split, data_dir}: the flags, else the workdir config's input.data."""
  train_data = config.get("input", {}).get("data")
  if isinstance(train_data, (dict, ml_collections.ConfigDict)) and "name" in train_data:
    default_name, default_dir = train_data["name"], train_data.get("data_dir")
  else:
    default_name = default_dir = None
  name = data or default_name
  if not name:
    raise ValueError(f"the workdir config's input.data is not one dataset ({train_data!r}); "
                     f"pass --data NAME")
  if data_dir is None and name == default_name:
    data_dir = default_dir
  return {"name": name, "split": split, "data_dir": data_dir}


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True, help="a training workdir (the teacher)")
  ap.add_argument("--step", type=int, default=None, help="checkpoint step (default newest)")
  ap.add_argument("--data", default=None, help="TFDS name (default: config input.data)")
  ap.add_argument("--split", default="train", help="TFDS split (default train)")
  ap.add_argument("--data_dir", default=None, help="TFDS data dir (default: the config's)")
  ap.add_argument("--out", required=True, help="the label-map .npz to write")
  ap.add_argument("--method", default="dense", choices=METHODS)
  ap.add_argument("--grid", type=int, default=None,
                  help=f"cells per side (sliding: default {DEFAULT_GRID}; dense: the "
                  f"token grid)")
  ap.add_argument("--window", type=float, default=None,
                  help=f"sliding: window side, a fraction of the image (default "
                  f"{DEFAULT_WINDOW})")
  ap.add_argument("--topk", type=int, default=None,
                  help=f"classes kept per cell (default min({DEFAULT_TOPK}, classes))")
  ap.add_argument("--batch_size", type=int, default=None,
                  help=f"images per step, rounded up to a multiple of the devices "
                  f"(default: dense {DEFAULT_BATCH}, sliding {DEFAULT_BATCH} // G^2)")
  args = ap.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  try:
    maps, summary = make_label_maps(
        args.workdir, step=args.step, data=args.data, split=args.split,
        data_dir=args.data_dir, method=args.method, grid=args.grid, window=args.window,
        topk=args.topk, batch_size=args.batch_size, out=args.out)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    soft_labels.save(args.out, maps)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  gh, gw = summary["grid"]
  data = summary["data"]
  print(f"{summary['examples']} examples of {data['name']}:{data['split']}, "
        f"{summary['method']} grid {gh}x{gw}, top-{summary['topk']}, teacher accuracy "
        f"{summary['teacher_accuracy']:.4f} (step {summary['step']}), "
        f"{summary['seconds']:.1f} s -> {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
