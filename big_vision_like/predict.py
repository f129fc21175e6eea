"""Classify or embed images with a zoo model or a trained workdir, in a few lines.

    from big_vision_like import predict
    p = predict.Predictor.from_zoo("vit_base_patch16_224.augreg2_in21k_ft_in1k",
                                   weights="model.safetensors")
    logits = p.predict(["cat.jpg", "dog.png"])          # [2, 1000]
    clip = predict.Predictor.from_zoo("ViT-B-32/openai", weights="open_clip_model.safetensors")
    scores = clip.zero_shot(["cat", "dog"]).predict(["cat.jpg"])   # [1, 2]

CLI (writes the evaluators' prediction-dump format, so
`python -m big_vision_like.tools.score_predictions preds.npz --labels ...`
scores it, and prints the top-k class names of each image):

    python -m big_vision_like.predict (--model NAME [--weights PATH] | --workdir DIR)
        --images DIR_OR_FILES... --out preds.npz [--save_logits] [--topk 5]
        [--pp PP_STRING] [--texts CLASS_NAMES_FILE]

Images are files (any format `decode` reads) or uint8 arrays [H, W, 3]; each
is preprocessed on its own with the model's eval pp string (the zoo entry's,
or the workdir config's first evaluator's; `pp=` overrides it), then batched.
The model is set up by `experiment.build`, as in training and eval.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from big_vision_like import checkpoint as ckpt_lib
from big_vision_like import experiment
from big_vision_like import zoo
from big_vision_like.data import tf_options
from big_vision_like.evaluators import zeroshot
from big_vision_like.pp import builder as pp_builder

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_BATCH = 32


class Predictor:
  """A model, its params and its preprocessing; see the module docstring."""

  def __init__(self, exp: experiment.Experiment, params: Any, *, pp: str,
               class_names: Sequence[str] | None = None, text_pp: str | None = None,
               name: str = "model"):
    self.exp, self.params, self.pp, self.name = exp, params, pp, name
    self.class_names = list(class_names) if class_names is not None else None
    self.text_pp = text_pp
    self.is_two_tower = exp.task.name == "image_text"
    self._pp_fn = tf.function(pp_builder.get_preprocess_fn(pp))
    self._apply = jax.jit(lambda p, x: exp.model.apply({"params": p}, x, train=False))

  # -- Construction.

  @classmethod
  def from_zoo(cls, name: str, weights: str | None = None, *, pp: str | None = None,
               text_file: str | None = None) -> "Predictor":
    """`text_file`: the tokenizer file published with a two-tower (SigLIP, LiT)."""
    loaded = zoo.load(name, weights)
    entry = loaded.entry
    names = None
    if entry.class_names:
      names = zeroshot.resolve_class_names(entry.class_names, f"zoo {name}")
    predictor = cls(loaded.experiment, loaded.params, pp=pp or entry.pp, class_names=names,
                    text_pp=entry.text_pp, name=name)
    if entry.text_pp and (text_file or zoo.TEXT_FILE_PLACEHOLDER not in entry.text_pp):
      predictor.text_pp = zoo.text_pp(entry, text_file)
    else:
      predictor._entry_needing_text_file = entry  # texts raise, naming the file
    return predictor

  @classmethod
  def from_workdir(cls, workdir: str, *, step: int | None = None, pp: str | None = None,
                   config: ml_collections.ConfigDict | None = None) -> "Predictor":
    """The newest (or `step`) checkpoint of a training workdir and its config.json."""
    if config is None:
      path = os.path.join(workdir, "config.json")
      if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: not a workdir of train.py")
      with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    exp, params, _ = load_workdir(config, workdir, step)
    first_eval = next(iter((config.get("evals") or {}).values()), None)
    pp = pp or image_pp((first_eval or {}).get("pp") or "")
    if not pp:
      raise ValueError(f"{workdir}: the config has no evaluator pp string to reuse; pass pp=")
    # The text pp: of the first evaluator that has one (config.json sorts evaluators by
    # name, so a contrastive config's "retrieval", which tokenizes captions inside its
    # image pp, may come before its "zeroshot").
    text_pp = next((ev.get("pp_txt") for ev in (config.get("evals") or {}).values()
                    if ev.get("pp_txt")), None)
    return cls(exp, params, pp=pp, text_pp=text_pp, name=os.path.basename(workdir.rstrip("/")))

  # -- Inference.

  def preprocess(self, images: Sequence[Any]) -> np.ndarray:
    """Each image (path, encoded bytes or uint8 array) through the pp string.

    Files and encoded bytes are decoded and preprocessed by a parallel tf.data
    pipeline; arrays (and mixed inputs) one by one.
    """
    if images and all(isinstance(i, (str, os.PathLike)) for i in images):
      return self._preprocess_files([os.fspath(i) for i in images])
    if images and all(isinstance(i, bytes) for i in images):
      return self._preprocess_encoded(
          tf.data.Dataset.from_tensor_slices(tf.constant(list(images), tf.string)),
          len(images))
    out = []
    for i, image in enumerate(images):
      if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
          image = f.read()
      value = tf.constant(image) if isinstance(image, bytes) else tf.constant(
          np.asarray(image, np.uint8))
      try:
        out.append(self._pp_fn({"image": value})["image"].numpy())
      except (tf.errors.InvalidArgumentError, ValueError) as e:
        raise ValueError(f"image {i} ({images[i] if isinstance(images[i], str) else 'array'})"
                         f": pp {self.pp!r} failed: {str(e).splitlines()[0]}") from None
    return self._stack(out)

  def _preprocess_files(self, paths: list[str]) -> np.ndarray:
    for path in paths:
      if not os.path.exists(path):
        raise FileNotFoundError(f"image {path} does not exist")
    return self._preprocess_encoded(
        tf.data.Dataset.from_tensor_slices(paths).map(
            tf.io.read_file, num_parallel_calls=tf_options.parallelism()),
        len(paths))

  def _preprocess_encoded(self, encoded: tf.data.Dataset, n: int) -> np.ndarray:
    """The pp string over a dataset of encoded images, in parallel, in order."""
    pp_fn = pp_builder.get_preprocess_fn(self.pp)
    ds = tf_options.apply(encoded.map(lambda image: pp_fn({"image": image})["image"],
                                      num_parallel_calls=tf_options.parallelism()))
    try:
      out = list(ds.as_numpy_iterator())
    except tf.errors.InvalidArgumentError as e:
      raise ValueError(f"pp {self.pp!r} failed on one of {n} images "
                       f"({str(e).splitlines()[0][:300]})") from None
    return self._stack(out)

  def _stack(self, images: list[np.ndarray]) -> np.ndarray:
    """One batch of preprocessed images, or an error if the pp left sizes differing."""
    shapes = {x.shape for x in images}
    if len(shapes) > 1:
      raise ValueError(f"pp {self.pp!r} gives images of different shapes {sorted(shapes)}; "
                       "end it with a fixed-size crop/resize")
    return np.stack(images)

  def _batched(self, fn, arrays: np.ndarray, batch: int = _BATCH) -> np.ndarray:
    n_dev = self.exp.mesh.size
    batch = -(-batch // n_dev) * n_dev
    outs = []
    for start in range(0, len(arrays), batch):
      chunk = arrays[start:start + batch]
      pad = (-len(chunk)) % n_dev
      padded = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk
      outs.append(np.asarray(fn(jax.device_put(padded, self.exp.batch_sharding)))[:len(chunk)])
    return np.concatenate(outs) if outs else np.zeros((0,))

  def predict(self, images: Sequence[Any]) -> np.ndarray:
    """Class logits [N, C] (a two-tower model: use `zero_shot(...)` first)."""
    if self.is_two_tower:
      raise ValueError(f"{self.name} is a two-tower model: it scores images against texts; "
                       "call zero_shot(class_names).predict(images)")
    x = self.preprocess(images)
    return self._batched(lambda b: self.exp.predict_fn(self.params, {"image": b}), x)

  def embed_images(self, images: Sequence[Any], batch_size: int = _BATCH) -> np.ndarray:
    """L2-normalised image embeddings (two-tower) or pre-logits (classifier)."""
    x = self.preprocess(images)
    if self.is_two_tower:
      return self._batched(lambda b: self.exp.predict_fn(self.params, {"image": b})["zimg"], x,
                           batch=batch_size)
    return self._batched(lambda b: self._apply(self.params, b)[1]["pre_logits"], x,
                         batch=batch_size)

  def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
    """L2-normalised text embeddings [N, D] of a two-tower model."""
    entry = getattr(self, "_entry_needing_text_file", None)
    if entry is not None:
      zoo.text_pp(entry)  # raises, naming the tokenizer file to pass
    if not self.is_two_tower or not self.text_pp:
      raise ValueError(f"{self.name} has no text tower (or no text pp to tokenize with)")
    tokens = zeroshot.tokenize(list(texts), self.text_pp, f"{self.name} texts")
    return self._batched(lambda b: self.exp.predict_fn(self.params, {"text": b})["ztxt"],
                         tokens, batch=256)

  def zero_shot(self, class_names: Sequence[str] | str,
                prompts: Sequence[str] | str = "clip_imagenet") -> "ZeroShot":
    """A classifier from class names: the mean of the prompts' normalised text
    embeddings, renormalised (CLIP's ensembling), scores = t * cosine."""
    names = zeroshot.resolve_class_names(class_names, f"{self.name} zero_shot")
    templates = zeroshot.resolve_prompts(prompts, f"{self.name} zero_shot")
    z = self.embed_texts(zeroshot.prompt_texts(names, templates))
    weights = zeroshot.mean_ensemble(z.reshape(len(templates), len(names), -1))
    t = float(self.exp.predict_fn(self.params, {"text": jax.numpy.zeros(
        (1, *self.exp.input_spec["text"].shape), jax.numpy.int32)})["t"])
    return ZeroShot(self, names, weights, t)


class ZeroShot:
  """Image scores against class-name embeddings ([C, D] `weights`)."""

  def __init__(self, predictor: Predictor, class_names: list[str], weights: np.ndarray,
               t: float):
    self.predictor, self.class_names, self.weights, self.t = (predictor, class_names,
                                                              weights, t)

  def predict(self, images: Sequence[Any]) -> np.ndarray:
    return self.t * self.predictor.embed_images(images) @ self.weights.T


def image_pp(pp: str) -> str:
  """The image ops of an eval pp string (labels, onehot, keep... dropped)."""
  keep = []
  for op in pp_builder.parse_ops(pp):
    module = pp_builder.get_factory(op).__module__
    args = pp_builder.bound_arguments(op)
    if module.endswith(("ops_image", "randaug")) and args.get("key", "image") == "image":
      keep.append(op.token)
  return "|".join(keep)


def load_workdir(config: ml_collections.ConfigDict, workdir: str, step: int | None = None
                 ) -> tuple[experiment.Experiment, Any, int]:
  """(experiment, params, step) of a workdir's checkpoint (input shapes from its meta)."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  with ckpt_lib.Checkpointer(ckpt_dir, async_save=False, read_only=True) as ckpt:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
    meta = ckpt.read_meta(step)
  exp = experiment.build(config, input_spec=experiment.spec_from_json(meta["input_spec"]))
  params = ckpt_lib.load_params(os.path.join(ckpt_dir, str(step)), exp.abstract_params)
  return exp, params, step


def list_images(paths: Sequence[str]) -> list[str]:
  """Files as given, directories expanded to their images (sorted, recursive)."""
  out = []
  for p in paths:
    if os.path.isdir(p):
      for root, _, names in sorted(os.walk(p)):
        out += [os.path.join(root, n) for n in sorted(names)
                if n.lower().endswith(IMAGE_SUFFIXES)]
    elif os.path.exists(p):
      out.append(p)
    else:
      raise FileNotFoundError(f"--images: {p} does not exist")
  if not out:
    raise ValueError(f"--images {list(paths)}: no image files found")
  names = [os.path.basename(p) for p in out]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ValueError(f"--images: file names must be unique (predictions are joined to "
                     f"labels on them); repeated: {dup[:5]}")
  return out


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--model", help="zoo name (see README 'Pretrained models')")
  src.add_argument("--workdir", help="a training workdir")
  ap.add_argument("--weights", help="weights file for --model (default: hub cache / URL)")
  ap.add_argument("--images", nargs="+", required=True)
  ap.add_argument("--out", required=True)
  ap.add_argument("--save_logits", action="store_true")
  ap.add_argument("--topk", type=int, default=5)
  ap.add_argument("--pp", help="image pp string (default: the model's eval pp)")
  ap.add_argument("--texts", help="class names file (one per line) for a two-tower model")
  ap.add_argument("--text_file", help="the tokenizer file published with a two-tower "
                  "(SigLIP's SentencePiece model, LiT's WordPiece vocabulary)")
  args = ap.parse_args(argv)
  try:
    if args.model:
      p = Predictor.from_zoo(args.model, args.weights, pp=args.pp, text_file=args.text_file)
    else:
      if args.weights:
        raise ValueError("--weights goes with --model, not --workdir")
      p = Predictor.from_workdir(args.workdir, pp=args.pp)
    files = list_images(args.images)
    if p.is_two_tower:
      names = args.texts or p.class_names
      if names is None:
        raise ValueError("a two-tower model needs --texts (class names, one per line)")
      zs = p.zero_shot(names)
      logits, class_names = zs.predict(files), zs.class_names
    else:
      logits, class_names = p.predict(files), p.class_names
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  k = min(args.topk, logits.shape[1])
  order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
  arrays = {"file_name": np.array([os.path.basename(f) for f in files]),
            "topk_ids": order.astype(np.int32),
            "topk_scores": np.take_along_axis(logits, order, 1).astype(np.float32)}
  if args.save_logits:
    arrays["logits"] = logits.astype(np.float32)
  meta = {"meta_evaluator": np.asarray(p.name), "meta_pp": np.asarray(p.pp)}
  if class_names is not None:
    meta["meta_class_names"] = np.asarray(class_names)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  tmp = args.out + ".tmp.npz"
  np.savez(tmp, **arrays, **meta)
  os.replace(tmp, args.out)
  for f, ids in zip(files, order):
    labels = [class_names[i] if class_names else str(i) for i in ids]
    print(f"{os.path.basename(f)}\t" + "\t".join(labels))
  return 0


if __name__ == "__main__":
  sys.exit(main())
