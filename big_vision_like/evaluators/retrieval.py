"""Image-text retrieval: recall@k in both directions over a whole split.

The standard two-tower check besides zero-shot classification (COCO,
Flickr30k; here also `fashion_mnist_captions`): every image of the split is
a query against all the split's captions (image -> text), and every caption
a query against all images (text -> image). With several captions per
image:

- image -> text: an image is correct@k if ANY of its captions is among its
  k highest-scoring texts;
- text -> image: a caption is correct@k if ITS image is among its k
  highest-scoring images.

Scores are dot products of the model's (L2-normalised) embeddings; ties go
to the lower index (images in file-name order, or the split's order without
file names; texts by image, then caption slot), as in a stable sort.
Reported: `img2txt/recall@k`, `txt2img/recall@k` for k in `ks`, and
`num_images`, `num_texts` (the queries of each direction).

The eval pp must leave "image" and the tokenized captions in `captions_key`
with shape [n_captions, max_len] per example, e.g.
  "decode|value_range(-1, 1)|tokenize(16, key='captions')"
(`tokenize` on the 1-D caption tensor gives one row per caption). Batches
need a fixed n_captions: with `num_captions=n` the evaluator pads every
example to n rows of -1, and such rows are not captions (an image with fewer
captions simply has fewer texts; one with none is no image -> text query).

Every example counts once across devices and processes: the embeddings are
gathered with `collect.Collector`, which also drops the padding.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from big_vision_like import registry
from big_vision_like.evaluators import collect

_HIGHEST = jax.lax.Precision.HIGHEST  # Exact f32 dots: rankings must not depend on bf16.
_CHUNK = 512  # Queries scored at once (a [CHUNK, candidates] score block).


@functools.partial(jax.jit, static_argnames=("num_candidates",))
def _img2txt_ranks(queries: jax.Array, query_ids: jax.Array, texts: jax.Array,
                   text_image: jax.Array, num_candidates: int) -> jax.Array:
  """Best rank (0-based) of any own caption for each image query."""
  s = jnp.dot(queries, texts.T, precision=_HIGHEST)                  # [Q, M]
  own = text_image[None, :] == query_ids[:, None]
  best = jnp.max(jnp.where(own, s, -jnp.inf), axis=1, keepdims=True)
  index = jnp.arange(num_candidates)
  # The own caption that ranks first: the best score, lowest index on ties.
  first = jnp.min(jnp.where(own & (s == best), index, num_candidates), axis=1,
                  keepdims=True)
  return jnp.sum(s > best, axis=1) + jnp.sum((s == best) & (index < first), axis=1)


@functools.partial(jax.jit, static_argnames=("num_candidates",))
def _txt2img_ranks(queries: jax.Array, own: jax.Array, images: jax.Array,
                   num_candidates: int) -> jax.Array:
  """Rank (0-based) of each text query's own image."""
  s = jnp.dot(queries, images.T, precision=_HIGHEST)                 # [Q, N]
  own_score = jnp.take_along_axis(s, own[:, None], axis=1)
  index = jnp.arange(num_candidates)
  return (jnp.sum(s > own_score, axis=1)
          + jnp.sum((s == own_score) & (index < own[:, None]), axis=1))


def _chunked(fn: Callable[..., jax.Array], queries: np.ndarray, per_query: np.ndarray,
             *args: Any, **kwargs: Any) -> np.ndarray:
  """fn over fixed-size chunks of the queries (one compilation), concatenated."""
  n = len(queries)
  padded = -(-n // _CHUNK) * _CHUNK
  q = np.zeros((padded, queries.shape[1]), np.float32)
  q[:n] = queries
  p = np.zeros((padded,), per_query.dtype)
  p[:n] = per_query
  out = [np.asarray(fn(jnp.asarray(q[i:i + _CHUNK]), jnp.asarray(p[i:i + _CHUNK]),
                       *args, **kwargs)) for i in range(0, padded, _CHUNK)]
  return np.concatenate(out)[:n]


def ranks(zimg: np.ndarray, ztxt: np.ndarray, text_image: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(image ids with captions, their image->text ranks, text->image ranks).

  `text_image[j]` is the index (row of `zimg`) of text j's image. A rank is
  the 0-based position of the first correct item in the query's stable
  descending order (ties -> lower index).
  """
  zimg = np.asarray(zimg, np.float32)
  ztxt = np.asarray(ztxt, np.float32)
  text_image = np.asarray(text_image, np.int32)
  if zimg.ndim != 2 or ztxt.ndim != 2 or zimg.shape[1] != ztxt.shape[1]:
    raise ValueError(f"retrieval: need zimg [N, D] and ztxt [M, D], got {zimg.shape} "
                     f"and {ztxt.shape}")
  if text_image.shape != (len(ztxt),) or (
      len(text_image) and not 0 <= text_image.min() <= text_image.max() < len(zimg)):
    raise ValueError(f"retrieval: text_image must give an image index in [0, "
                     f"{len(zimg)}) for each of the {len(ztxt)} texts")
  with_text = np.unique(text_image).astype(np.int32)
  i2t = _chunked(_img2txt_ranks, zimg[with_text], with_text, jnp.asarray(ztxt),
                 jnp.asarray(text_image), num_candidates=len(ztxt))
  t2i = _chunked(_txt2img_ranks, ztxt, text_image, jnp.asarray(zimg),
                 num_candidates=len(zimg))
  return with_text, i2t, t2i


def recall_at_k(zimg: np.ndarray, ztxt: np.ndarray, text_image: np.ndarray,
                ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """`img2txt/recall@k`, `txt2img/recall@k`, `num_images`, `num_texts`.

  Images without any text are not image -> text queries (they stay
  candidates of the text -> image direction).
  """
  if len(ztxt) == 0:
    raise ValueError("retrieval: there are no captions to retrieve")
  _, i2t, t2i = ranks(zimg, ztxt, text_image)
  out = {}
  for k in ks:
    out[f"img2txt/recall@{k}"] = float(np.mean(i2t < k))
    out[f"txt2img/recall@{k}"] = float(np.mean(t2i < k))
  out["num_images"] = float(len(i2t))
  out["num_texts"] = float(len(t2i))
  return out


@registry.EVALUATORS.register("retrieval")
class Evaluator:
  """Image <-> text recall@k; see the module docstring."""

  drop_metrics = ("img2txt/recall@1", "txt2img/recall@1")

  def __init__(self, predict_fn: Callable[[Any, dict], Any], *, data: dict, pp: str,
               batch_size: int, mesh: jax.sharding.Mesh, data_axes: tuple[str, ...],
               name: str = "retrieval", workdir: str | None = None,
               captions_key: str = "captions", num_captions: int | None = None,
               ks: Sequence[int] = (1, 5, 10), reference: str | None = None,
               cache: bool = True, skip_corrupt: bool = False, max_name_bytes: int = 256):
    del workdir  # Nothing is written.
    self.name, self.reference = name, reference
    self.captions_key = captions_key
    self.ks = tuple(int(k) for k in ks)
    if not self.ks or min(self.ks) < 1:
      raise ValueError(f"evaluator {name!r}: ks must be positive ints, got {ks!r}")
    if num_captions is not None:
      if isinstance(num_captions, bool) or not isinstance(num_captions, int) or (
          num_captions < 1):
        raise ValueError(f"evaluator {name!r}: num_captions must be a positive int, "
                         f"got {num_captions!r}")
      # Rows of -1 mark "no caption" (token ids are never negative).
      pp += f"|pad_to_shape(({num_captions}, None), pad_value=-1, key={captions_key!r})"
    self._layout: tuple[int, int] | None = None

    def packed(params, batch):
      """[B, D + n*D + n]: image, caption embeddings and caption validity."""
      if captions_key not in batch:
        raise ValueError(f"evaluator {name!r}: the pp output has no {captions_key!r} "
                         f"(keys: {sorted(batch)}); tokenize the captions into it")
      caps = batch[captions_key]
      if caps.ndim != 3 or not jnp.issubdtype(caps.dtype, jnp.integer):
        raise ValueError(f"evaluator {name!r}: {captions_key!r} must be int tokens of "
                         f"shape [n_captions, max_len] per example, got "
                         f"{caps.dtype}{tuple(caps.shape[1:])}")
      b, n, length = caps.shape
      valid = jnp.any(caps >= 0, axis=-1)
      out = predict_fn(params, {"image": batch["image"],
                                "text": jnp.maximum(caps, 0).reshape(b * n, length)})
      if not isinstance(out, dict) or "zimg" not in out or "ztxt" not in out:
        got = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise ValueError(f"evaluator {name!r}: retrieval needs a two-tower model whose "
                         f"predict_fn returns {{'zimg', 'ztxt', ...}}; got {got}")
      d = out["zimg"].shape[-1]
      self._layout = (n, d)
      return jnp.concatenate([out["zimg"].astype(jnp.float32),
                              out["ztxt"].astype(jnp.float32).reshape(b, n * d),
                              valid.astype(jnp.float32)], axis=-1)

    try:
      self.collector = collect.Collector(
          packed, data=data, pp=pp, batch_size=batch_size, mesh=mesh,
          data_axes=data_axes, name=name, topk=1, keep_logits=True, cache=cache,
          skip_corrupt=skip_corrupt, max_name_bytes=max_name_bytes)
    except ValueError as e:
      if captions_key in str(e) and "fixed shape" in str(e):
        raise ValueError(f"evaluator {name!r}: {e} Set num_captions to the largest "
                         f"number of captions per example.") from e
      raise

  def embeddings(self, params: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(zimg [N, D], ztxt [M, D], text_image [M]) of the whole split."""
    arrays = self.collector.run(params)
    packed = arrays["logits"]
    n, d = self._layout
    zimg = packed[:, :d]
    ztxt = packed[:, d:d + n * d].reshape(-1, d)
    valid = packed[:, d + n * d:].reshape(-1) > 0.5
    text_image = np.repeat(np.arange(len(packed), dtype=np.int32), n)
    return zimg, ztxt[valid], text_image[valid]

  def run(self, params: Any, step: int | None = None) -> dict[str, float]:
    del step
    zimg, ztxt, text_image = self.embeddings(params)
    if len(ztxt) == 0:
      raise ValueError(f"evaluator {self.name!r}: the split has no captions in "
                       f"{self.captions_key!r}")
    return recall_at_k(zimg, ztxt, text_image, self.ks)
