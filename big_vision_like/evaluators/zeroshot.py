"""Zero-shot classification with an image-text (two-tower) model.

A contrastive model classifies without a trained head: every class name is
put into prompt templates ("a photo of a {}."), the text tower embeds the
prompts, and the image's logit for class c is `t * <zimg, class_emb[c]>`.
This module builds those class embeddings from the CURRENT params at every
run and hands the logits to an ordinary classification-style evaluator
(`scorer`: classification, multilabel or calibration), so everything those
offer works zero-shot too: ReaL and ImageNet-multilabel scoring, the 200-class
subsets of ImageNet-A/R, per-class views, prediction dumps, drops against a
reference. The inner evaluator gets `(params, class_emb)` as its params: its
jitted step is compiled once, the class embeddings are just an argument.

Config keys (everything else goes to the inner evaluator unchanged):

- `class_names`: a list, a text file (one name per line), "imagenet2012"
  (the first comma-separated name of each of the 1000 classes; note the
  two "maillot" classes then share a name),
  "imagenet2012_clip" (the 1000 names curated for CLIP's ImageNet notebook,
  e.g. "tights" / "one-piece bathing suit"; CLIP's list still names two
  classes "missile" and two "sunglasses", kept as published) or
  "fashion_mnist" (`fashion_captions.CLASS_NAMES`).
- `prompts`: a list of templates with one "{}", one template string, a file
  (one per line), or a named set: "clip_imagenet" (CLIP's 80 ImageNet
  templates), "fashion_mnist_heldout", "fashion_mnist_train". The CLIP
  names and templates ship as `data/resources/clip_imagenet.json`.
- `pp_txt`: the pp string applied to each prompt under key "text", e.g.
  "canonicalize_text|tokenize(16)". It must give integer tokens of a fixed
  length, in "text" (where `tokenize` puts them by default) or "labels".
- `ensemble`: how the per-prompt class embeddings (each L2-normalised) are
  combined:
    "mean": their average, renormalised (CLIP's prompt ensembling);
    "weighted": ZPE, the label-free prompt weighting of Allingham et al.,
      "A Simple Zero-shot Prompt Weighting Technique to Improve Prompt
      Ensembling in Text-Image Models", ICML 2023 (see `zpe_scores`).
- `zpe_tau`: the softmax temperature of the ZPE weights (1.0, as in the
  paper, on logits that include the model's scale `t`).
- `top_prompts`: how many of the highest-weighted prompts the text report
  lists ("weighted" only).
- `text_batch_size`: prompts embedded per step (default: `batch_size`).

The text embeddings of all (prompt, class) pairs are computed once per
params and shared by every zero-shot evaluator of that step (the ImageNet
scorecard has a dozen over the same 1000 classes).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from etils import epath

from big_vision_like import label_sources
from big_vision_like import registry
from big_vision_like import sharding as sharding_lib
from big_vision_like import soft_labels
from big_vision_like.evaluators import collect
from big_vision_like.pp import builder as pp_builder

SCORERS = ("classification", "multilabel", "calibration")
ENSEMBLES = ("mean", "weighted")
NAMED_PROMPTS = ("clip_imagenet", "fashion_mnist_heldout", "fashion_mnist_train")
NAMED_CLASS_NAMES = ("imagenet2012", "imagenet2012_clip", "fashion_mnist")
_HIGHEST = jax.lax.Precision.HIGHEST  # Exact f32 dots (TPUs default to bf16 passes).


# ----------------------------------------------------------------- text side


@functools.cache
def clip_imagenet() -> dict[str, Any]:
  """CLIP's ImageNet zero-shot set: {"templates": 80, "classnames": 1000, "source"}.

  From CLIP's Prompt_Engineering_for_ImageNet notebook as open_clip ships it
  (exported by tests/fixtures/clip_tokenizer/make_golden.py).
  """
  path = importlib.resources.files("big_vision_like.data") / "resources" / "clip_imagenet.json"
  data = json.loads(path.read_text(encoding="utf-8"))
  if len(data["templates"]) != 80 or len(data["classnames"]) != 1000:
    raise RuntimeError(f"{path} should hold 80 templates and 1000 class names, it holds "
                       f"{len(data['templates'])} and {len(data['classnames'])}")
  return data


def resolve_class_names(spec: str | Sequence[str], where: str = "zeroshot"
                        ) -> list[str]:
  """The zero-shot class names of `spec` (see the module docstring)."""
  if isinstance(spec, (list, tuple)):
    names = [str(n) for n in spec]
  elif spec == "imagenet2012":
    from big_vision_like.data import imagenet_classes  # pylint: disable=g-import-not-at-top
    names = [n.split(",")[0].strip() for n in imagenet_classes.class_names()]
  elif spec == "imagenet2012_clip":
    names = list(clip_imagenet()["classnames"])
  elif spec == "fashion_mnist":
    from big_vision_like.data import fashion_captions  # pylint: disable=g-import-not-at-top
    names = list(fashion_captions.CLASS_NAMES)
  elif isinstance(spec, str):
    names = _read_lines(spec, f"{where}: class_names")
  else:
    raise ValueError(f"{where}: class_names must be a list, a file or one of "
                     f"{NAMED_CLASS_NAMES}, got {spec!r}")
  if not names or any(not n.strip() for n in names):
    raise ValueError(f"{where}: class_names {_short(spec)} holds an empty name "
                     f"(or none at all)")
  return names


def resolve_prompts(spec: str | Sequence[str], where: str = "zeroshot") -> list[str]:
  """The prompt templates of `spec` (see the module docstring)."""
  if spec == "clip_imagenet":
    prompts = list(clip_imagenet()["templates"])
  elif isinstance(spec, str) and spec in NAMED_PROMPTS:
    from big_vision_like.data import fashion_captions  # pylint: disable=g-import-not-at-top
    prompts = fashion_captions.templates(spec.rsplit("_", 1)[1])
  elif isinstance(spec, str) and "{}" in spec:
    prompts = [spec]
  elif isinstance(spec, (list, tuple)):
    prompts = [str(p) for p in spec]
  elif isinstance(spec, str):
    prompts = _read_lines(spec, f"{where}: prompts")
  else:
    raise ValueError(f"{where}: prompts must be a list of templates, a file or one of "
                     f"{NAMED_PROMPTS}, got {spec!r}")
  if not prompts:
    raise ValueError(f"{where}: prompts {_short(spec)} holds no template")
  bad = [p for p in prompts if p.count("{}") != 1]
  if bad:
    raise ValueError(f"{where}: prompt template {bad[0]!r} must hold exactly one '{{}}' "
                     f"(where the class name goes)")
  if len(set(prompts)) != len(prompts):
    dup = next(p for p in prompts if prompts.count(p) > 1)
    raise ValueError(f"{where}: prompt template {dup!r} is given twice")
  return prompts


def _read_lines(path: str, what: str) -> list[str]:
  try:
    text = epath.Path(path).read_text()
  except (OSError, FileNotFoundError) as e:
    raise ValueError(f"{what}: cannot read file {path!r} ({e}); give a list, a "
                     f"readable file or a known name") from e
  return [line.strip() for line in text.splitlines() if line.strip()]


def _short(spec: Any) -> str:
  return repr(spec) if isinstance(spec, str) else f"({len(spec)} entries)"


def prompt_texts(class_names: Sequence[str], prompts: Sequence[str]) -> list[str]:
  """Every (prompt, class) text, prompt-major: text p * C + c."""
  return [p.replace("{}", c) for p in prompts for c in class_names]


def tokenize(texts: Sequence[str], pp_txt: str, where: str = "zeroshot") -> np.ndarray:
  """Runs `pp_txt` on each text (under key "text"): int32 tokens [len(texts), L]."""
  if not isinstance(pp_txt, str) or not pp_txt.strip():
    raise ValueError(f"{where}: pp_txt must be a pp string that tokenizes 'text', "
                     f"e.g. \"canonicalize_text|tokenize(16)\"; "
                     f"got {pp_txt!r}")
  for op in pp_builder.parse_ops(pp_txt):
    if pp_builder.is_random(op):
      raise pp_builder.PPError(f"{where}: pp_txt op {op.index} {op.token!r} is random; "
                               f"prompts need a deterministic pp: {pp_txt!r}")
  fn = pp_builder.get_preprocess_fn(pp_txt)
  ds = tf.data.Dataset.from_tensor_slices({"text": tf.constant(list(texts), tf.string)})
  ds = ds.map(tf.autograph.experimental.do_not_convert(fn))
  spec = ds.element_spec
  key = next((k for k in ("text", "labels")
              if k in spec and spec[k].dtype.is_integer), None)
  if key is None:
    got = ", ".join(f"{k}: {v.dtype.name}{v.shape}" for k, v in sorted(spec.items()))
    raise ValueError(f"{where}: pp_txt {pp_txt!r} must turn 'text' into integer "
                     f"tokens in 'text' or 'labels' (end it with tokenize(max_len)); "
                     f"it gives {{{got}}}")
  shape = spec[key].shape
  if shape.rank != 1 or shape[0] is None:
    raise ValueError(f"{where}: pp_txt {pp_txt!r} gives {key!r} of shape {shape}; each "
                     f"prompt needs a fixed-length token vector (tokenize(max_len))")
  ds = ds.map(lambda d: tf.cast(d[key], tf.int32)).batch(max(len(texts), 1))
  return next(iter(ds.as_numpy_iterator()))


def _check_embed_output(out: Any, key: str, where: str) -> None:
  if not isinstance(out, dict) or key not in out or "t" not in out:
    got = sorted(out) if isinstance(out, dict) else type(out).__name__
    raise ValueError(f"evaluator {where!r}: zero-shot needs a two-tower model whose "
                     f"predict_fn returns {{{key!r}, 't', ...}} (see tasks/image_text.py);"
                     f" got {got}")


class _TextCache:
  """The last per-prompt text embeddings, keyed by params and token identity.

  Every zero-shot evaluator of one step gets the same params object; they
  share one text-tower pass. Only the newest entry is kept. The params
  leaves are compared by identity (a new step's params are new arrays).
  """

  def __init__(self):
    self._key = None
    self._leaves: list[Any] = []
    self._value = None

  def get(self, key: tuple, params: Any):
    leaves = jax.tree.leaves(params)
    if (self._key == key and len(leaves) == len(self._leaves)
        and all(a is b for a, b in zip(leaves, self._leaves))):
      return self._value
    return None

  def put(self, key: tuple, params: Any, value: Any) -> None:
    self._key, self._leaves, self._value = key, jax.tree.leaves(params), value


_TEXT_CACHE = _TextCache()


# ------------------------------------------------------------------ ensembles


def _l2_normalize(x: np.ndarray) -> np.ndarray:
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  if not np.all(norm > 0):
    raise ValueError("zeroshot: a text embedding has zero norm; cannot normalise it")
  return x / norm


def mean_ensemble(per_prompt: np.ndarray) -> np.ndarray:
  """[P, C, D] -> [C, D]: mean of the L2-normalised prompts, renormalised (CLIP)."""
  return _l2_normalize(_l2_normalize(per_prompt.astype(np.float64)).mean(0)
                       ).astype(np.float32)


def weighted_ensemble(per_prompt: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """[P, C, D], [P] -> [C, D]: sum_p w_p * normalised z_{p,c} (ZPE; not renormalised).

  Allingham et al. average the per-prompt LOGITS with these weights; a
  weighted average of the embeddings gives exactly the same logits.
  """
  e = _l2_normalize(per_prompt.astype(np.float64))
  return np.einsum("p,pcd->cd", np.asarray(weights, np.float64), e).astype(np.float32)


@jax.jit
def _prompt_score(zimg: jax.Array, ztxt: jax.Array, t: jax.Array) -> jax.Array:
  logits = t * jnp.dot(zimg, ztxt.T, precision=_HIGHEST)              # [N, C]
  normalised = logits - logits.mean(axis=0, keepdims=True)            # per class
  return normalised.max(axis=1).mean()


def zpe_scores(zimg: np.ndarray, per_prompt: np.ndarray, t: float,
               class_subset: Sequence[int] | None = None) -> np.ndarray:
  """The ZPE score of every prompt, from unlabeled images (no labels used).

  With l[i, p, c] = t * <zimg_i, z_{p,c}> (both L2-normalised) the logit of
  image i for class c under prompt p, and N images:

      l^[i, p, c] = l[i, p, c] - (1/N) sum_j l[j, p, c]
      s_p         = (1/N) sum_i max_c l^[i, p, c]

  and the weights are w = softmax(s / tau) (tau = 1 in the paper). This is
  the paper's max-logit score with its logit normalisation against the
  word-frequency bias of class names: each (prompt, class) logit is
  centred on its average over images. The paper's main results centre on
  the average of two means, one over the test images and one over 20k
  pre-training (LAION) images; an evaluator has no pre-training images, so
  only the test-image mean is used (the paper's "test" ablation, as in the
  authors' code). The paper's optional prompt selection (keeping MAD
  outliers) is not applied. `class_subset` restricts the max to those
  classes (ImageNet-A/R), matching what the classifier ranks.
  """
  zimg = jnp.asarray(zimg, jnp.float32)
  e = _l2_normalize(np.asarray(per_prompt, np.float64)).astype(np.float32)
  if class_subset is not None:
    e = e[:, np.sort(np.asarray(class_subset, np.int64))]
  t = jnp.asarray(t, jnp.float32)
  return np.array([float(_prompt_score(zimg, jnp.asarray(e_p), t)) for e_p in e])


def zpe_weights(scores: np.ndarray, tau: float = 1.0) -> np.ndarray:
  """softmax(scores / tau) over prompts, in float64."""
  return soft_labels.softmax(np.asarray(scores).reshape(-1), tau)


# ------------------------------------------------------------------ evaluator


def _replicated(mesh: jax.sharding.Mesh, x: np.ndarray) -> jax.Array:
  """A host array (equal on every process) as a replicated global array."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


@registry.EVALUATORS.register("zeroshot")
class Evaluator:
  """Zero-shot classifier around an inner evaluator; see the module docstring."""

  @staticmethod
  def inner_type(ev: Any) -> str:
    """The evaluator type that scores the logits (for config validation)."""
    return ev.get("scorer", "classification")

  def __init__(self, predict_fn: Callable[[Any, dict], Any], *, data: dict, pp: str,
               batch_size: int, mesh: jax.sharding.Mesh, data_axes: tuple[str, ...],
               class_names: str | Sequence[str] | None = None,
               prompts: str | Sequence[str] = ("a photo of a {}.",),
               pp_txt: str | None = None, ensemble: str = "mean",
               scorer: str = "classification", zpe_tau: float = 1.0,
               top_prompts: int = 5, text_batch_size: int | None = None,
               name: str = "zeroshot", workdir: str | None = None, **kwargs):
    self.name = name
    where = f"evaluator {name!r}"
    if class_names is None:
      raise ValueError(f"{where}: zeroshot needs class_names (a list, a file or one of "
                       f"{NAMED_CLASS_NAMES})")
    if pp_txt is None:
      raise ValueError(f"{where}: zeroshot needs pp_txt, the pp string that tokenizes "
                       f"each prompt, e.g. \"tokenize(16)\"")
    if ensemble not in ENSEMBLES:
      raise ValueError(f"{where}: unknown ensemble {ensemble!r}; known: {ENSEMBLES}")
    if scorer not in SCORERS:
      raise ValueError(f"{where}: unknown scorer {scorer!r}; known: {SCORERS} (the "
                       f"classification-style evaluator that scores the logits)")
    if not zpe_tau > 0:
      raise ValueError(f"{where}: zpe_tau must be > 0, got {zpe_tau!r}")
    self.class_names = resolve_class_names(class_names, where)
    self.prompts = resolve_prompts(prompts, where)
    self.ensemble, self.zpe_tau, self.top_prompts = ensemble, float(zpe_tau), top_prompts
    self.mesh, self.data_axes = mesh, tuple(data_axes)
    self.predict_fn = predict_fn
    self.tokens = tokenize(prompt_texts(self.class_names, self.prompts), pp_txt, where)
    self._cache_key = (predict_fn, self.tokens.shape,
                       hashlib.sha1(self.tokens.tobytes()).hexdigest())
    dp = sharding_lib.data_parallel_size(mesh, data_axes)
    self.text_batch_size = -(-(text_batch_size or batch_size) // dp) * dp
    self._text_sharding = sharding_lib.batch_sharding(mesh, data_axes)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def embed_texts(params, tokens):
      out = predict_fn(params, {"text": tokens})
      _check_embed_output(out, "ztxt", name)
      return out["ztxt"].astype(jnp.float32), jnp.reshape(out["t"], ()).astype(jnp.float32)
    self._embed_texts = jax.jit(embed_texts, out_shardings=replicated)

    def image_batch(batch):
      return {k: v for k, v in batch.items() if k != "text"}

    def classify(params_and_classes, batch):
      params, class_emb = params_and_classes
      out = predict_fn(params, image_batch(batch))
      _check_embed_output(out, "zimg", name)
      t = jnp.reshape(out["t"], ()).astype(jnp.float32)
      return t * jnp.dot(out["zimg"].astype(jnp.float32), class_emb.T, precision=_HIGHEST)

    if scorer == "classification":
      kwargs.setdefault("class_names", self.class_names)  # for per-class views
    self.class_subset = label_sources.resolve_class_subset(kwargs.get("class_subset"))
    self.inner = registry.EVALUATORS.get(scorer)(
        classify, data=data, pp=pp, batch_size=batch_size, mesh=mesh,
        data_axes=data_axes, name=name, workdir=workdir, **kwargs)
    self.images = None
    if ensemble == "weighted":
      # ZPE needs the eval images' embeddings before the class embeddings.
      def embed_images(params, batch):
        out = predict_fn(params, image_batch(batch))
        _check_embed_output(out, "zimg", name)
        return out["zimg"].astype(jnp.float32)
      # Only the images: label sets of any length need no padding here.
      image_pp = f"{pp}|keep('image')" if pp.strip() else "keep('image')"
      self.images = collect.Collector(
          embed_images, data=data, pp=image_pp, batch_size=batch_size, mesh=mesh,
          data_axes=data_axes, name=name, topk=1, keep_logits=True,
          cache=kwargs.get("cache", True), skip_corrupt=kwargs.get("skip_corrupt", False),
          max_name_bytes=kwargs.get("max_name_bytes", 256))
    self.last_scores: np.ndarray | None = None
    self.last_weights: np.ndarray | None = None

  # The train loop reads these off every evaluator.
  @property
  def reference(self) -> str | None:
    return self.inner.reference

  @property
  def drop_metrics(self) -> tuple[str, ...]:
    return self.inner.drop_metrics

  def text_embeddings(self, params: Any) -> tuple[np.ndarray, float]:
    """Per-prompt class embeddings [P, C, D] (as the model gives them) and t."""
    cached = _TEXT_CACHE.get(self._cache_key, params)
    if cached is not None:
      return cached
    n, bs = len(self.tokens), self.text_batch_size
    padded = np.zeros((math.ceil(n / bs) * bs, self.tokens.shape[1]), np.int32)
    padded[:n] = self.tokens
    parts, t = [], None
    for start in range(0, len(padded), bs):
      chunk = padded[start:start + bs]
      tokens = jax.make_array_from_callback(chunk.shape, self._text_sharding,
                                            lambda index, c=chunk: c[index])
      z, t = self._embed_texts(params, tokens)
      parts.append(sharding_lib.to_host(z))
    z = np.concatenate(parts)[:n]
    if not np.isfinite(z).all():
      raise ValueError(f"evaluator {self.name!r}: the text tower gave NaN/inf embeddings "
                       f"for the prompts")
    value = (z.reshape(len(self.prompts), len(self.class_names), -1),
             float(sharding_lib.to_host(t)))
    _TEXT_CACHE.put(self._cache_key, params, value)
    return value

  def class_embeddings(self, params: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """The ensembled class embeddings [C, D] and the report of the weights."""
    per_prompt, t = self.text_embeddings(params)
    if self.ensemble == "mean":
      return mean_ensemble(per_prompt), {}
    zimg = self.images.run(params)["logits"]
    scores = zpe_scores(zimg, per_prompt, t, self.class_subset)
    weights = zpe_weights(scores, self.zpe_tau)
    self.last_scores, self.last_weights = scores, weights
    order = np.argsort(-weights, kind="stable")[:self.top_prompts]
    report = {
        "prompt_weights": "\n".join(
            f"{i + 1}. {weights[p]:.4f} (score {scores[p]:.4g}) {self.prompts[p]}"
            for i, p in enumerate(order)),
        "prompt_weight_max": float(weights.max()),
        # 1 / sum(w^2): how many prompts effectively count (P when uniform).
        "prompt_weights_effective_num": float(1.0 / np.sum(weights ** 2)),
    }
    return weighted_ensemble(per_prompt, weights), report

  def run(self, params: Any, step: int | None = None) -> dict[str, Any]:
    class_emb, report = self.class_embeddings(params)
    out = self.inner.run((params, _replicated(self.mesh, class_emb)), step)
    out.update(report)
    return out


# ------------------------------------------------------------------ scorecards


def as_zeroshot(ev: dict, **zeroshot: Any) -> dict:
  """One eval config made zero-shot: its type becomes the scorer.

  `as_zeroshot(dict(type="multilabel", set_key=...), class_names="imagenet2012",
  prompts=[...], pp_txt="...")` scores ReaL with a zero-shot classifier.
  """
  ev = dict(ev)
  kind = ev.pop("type", "classification")
  if kind == "zeroshot":
    return {**ev, "type": "zeroshot", **zeroshot}
  if kind not in SCORERS:
    raise ValueError(f"as_zeroshot: evaluator type {kind!r} has no zero-shot form; "
                     f"scorers: {SCORERS}")
  return {**ev, "type": "zeroshot", "scorer": kind, **zeroshot}

