"""Runs a model over an eval split and gathers per-example predictions on the host.

Every classification-style evaluator (classification, multilabel,
calibration) is "collect, then score": the device computes the logits and
their top-k ids/scores; these, the example's label fields, its mask and its
`file_name` come back to every process as global, replicated arrays (the
jitted step's output sharding does the all-gather, so several processes need
no extra communication). The host then drops padding, puts the examples in
file-name order and calls `scoring` -- the same code that
`tools/score_predictions` runs on a dump, which is why both agree exactly.

File names travel through the device as fixed-width uint8 rows
(`max_name_bytes`), so they are gathered with everything else.
"""

from __future__ import annotations

import io
import logging
import math
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from big_vision_like import sharding as sharding_lib
from big_vision_like.data import input_pipeline

FILE_NAME_KEY = "file_name"
_NAMES = "_file_name_bytes"


def _encode_names(names: np.ndarray, width: int, where: str) -> np.ndarray:
  names = [n if isinstance(n, bytes) else str(n).encode() for n in names]
  longest = max((len(n) for n in names), default=0)
  if longest > width:
    culprit = next(n for n in names if len(n) == longest)
    raise ValueError(f"{where}: file_name {culprit[:80]!r}... has {longest} bytes, more "
                     f"than max_name_bytes={width}; raise max_name_bytes")
  return np.frombuffer(b"".join(n.ljust(width, b"\0") for n in names),
                       np.uint8).reshape(len(names), width)


def _decode_names(rows: np.ndarray) -> np.ndarray:
  return np.array([bytes(r).rstrip(b"\0").decode("utf-8", "replace") for r in rows])


class Collector:
  """Per-example predictions of `predict_fn` on one split, gathered globally.

  Args:
    label_keys: batch keys passed through to the host unchanged (labels,
      label sets, flags). Set keys listed in `set_keys` are padded with -1
      to `max_labels` by appended `pad_to_shape` pp ops.
    topk: how many top ids/scores to keep per example.
    keep_logits: also gather the full logits (calibration, mAP, dumps).
    class_subset: restrict the logits to these classes before the top-k
      (ImageNet-A/R); ids stay in the model's numbering.
    per_example_loss: optional `(logits, batch) -> [B]`, gathered as `loss`.
  """

  def __init__(self, predict_fn: Callable[[Any, dict], jax.Array], *, data: dict,
               pp: str, batch_size: int, mesh: jax.sharding.Mesh,
               data_axes: tuple[str, ...], name: str,
               label_keys: Sequence[str] = (), set_keys: Sequence[str] = (),
               max_labels: int = 32, topk: int = 5, keep_logits: bool = False,
               class_subset: Sequence[int] | None = None,
               per_example_loss: Callable[[jax.Array, dict], jax.Array] | None = None,
               cache: bool = True, skip_corrupt: bool = False,
               max_name_bytes: int = 256):
    self.name = name
    self.label_keys = tuple(label_keys)
    self.max_name_bytes = max_name_bytes
    self.num_classes: int | None = None
    for key in set_keys:
      pp += f"|pad_to_shape(({max_labels},), pad_value=-1, key={key!r})"
    # Any batch size works: round up to a multiple of the data-parallel devices
    # (the padding is masked out, so the metrics do not change).
    dp = sharding_lib.data_parallel_size(mesh, data_axes)
    multiple = dp * jax.process_count() // math.gcd(dp, jax.process_count())
    batch_size = -(-batch_size // multiple) * multiple
    self.batches, self.num_batches = input_pipeline.make_eval_iterator(
        dict(data), pp, batch_size, cache=cache, skip_corrupt=skip_corrupt)
    self.skip_corrupt = skip_corrupt
    self.sharding = sharding_lib.batch_sharding(mesh, data_axes)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    # Sorted, so that ties go to the lower class id as everywhere else.
    subset = None if class_subset is None else jnp.asarray(np.sort(class_subset), jnp.int32)

    def per_example(params, batch):
      logits = predict_fn(params, batch)
      self.num_classes = int(logits.shape[-1])  # known once traced
      ranked = logits if subset is None else logits[..., subset]
      scores, ids = jax.lax.top_k(ranked, min(topk, ranked.shape[-1]))
      if subset is not None:
        ids = subset[ids]
      out = {"topk_ids": ids, "topk_scores": scores.astype(jnp.float32),
             "finite": jnp.isfinite(logits).all(-1),
             input_pipeline.MASK_KEY: batch[input_pipeline.MASK_KEY]}
      if keep_logits:
        out["logits"] = logits.astype(jnp.float32)
      if per_example_loss is not None:
        out["loss"] = per_example_loss(logits, batch)
      for k in self.label_keys:
        out[k] = batch[k]
      if _NAMES in batch:
        out[_NAMES] = batch[_NAMES]
      return out

    self._step = jax.jit(per_example, out_shardings=replicated)

  def run(self, params: Any) -> dict[str, np.ndarray]:
    """All real examples of the split, in file-name order when there are names.

    Returns numpy arrays: topk_ids, topk_scores, [logits], [loss], the label
    keys, and file_name when the dataset has one.
    """
    parts: list[dict[str, np.ndarray]] = []
    pending = None
    seen = 0
    for batch in self.batches:
      missing = [k for k in self.label_keys if k not in batch]
      if missing:
        raise KeyError(f"evaluator {self.name!r}: the pp output has no {missing} "
                       f"(keys: {sorted(batch)}); keep them in the eval pp")
      batch, host = input_pipeline.split_host_keys(batch)
      if FILE_NAME_KEY in host:
        batch[_NAMES] = _encode_names(host[FILE_NAME_KEY], self.max_name_bytes,
                                      f"evaluator {self.name!r}")
      batch = sharding_lib.put_process_local_batch(batch, self.sharding)
      out = self._step(params, batch)
      # Fetch the previous batch while this one computes.
      if pending is not None:
        parts.append(sharding_lib.to_host(pending))
      pending = out
      seen += 1
    if pending is not None:
      parts.append(sharding_lib.to_host(pending))
    if seen != self.num_batches:
      raise RuntimeError(f"evaluator {self.name!r}: expected {self.num_batches} batches, "
                         f"got {seen}")
    if not parts:
      raise ValueError(f"evaluator {self.name!r}: the split has no examples")
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    mask = merged.pop(input_pipeline.MASK_KEY).astype(bool)
    merged = {k: v[mask] for k, v in merged.items()}
    if not len(mask) or not mask.any():
      raise ValueError(f"evaluator {self.name!r}: the split has no examples")
    finite = merged.pop("finite")
    if not finite.all():
      raise ValueError(f"evaluator {self.name!r}: {int((~finite).sum())} examples got "
                       f"NaN/inf logits; refusing to score them")
    if _NAMES in merged:
      merged[FILE_NAME_KEY] = _decode_names(merged.pop(_NAMES))
      order = np.argsort(merged[FILE_NAME_KEY], kind="stable")
      merged = {k: v[order] for k, v in merged.items()}
    return merged


def save_predictions(path: str | os.PathLike, arrays: dict[str, np.ndarray],
                     **meta: Any) -> str:
  """Writes a prediction dump (npz) atomically; returns its path.

  Only process 0 writes (every process holds the same gathered arrays).
  """
  path = epath.Path(path)
  if jax.process_index() != 0:
    return str(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.tmp"
  payload = dict(arrays)
  for k, v in meta.items():
    payload[f"meta_{k}"] = np.asarray(v)
  # Built in memory: np.savez seeks in its file, which a gs:// file opened
  # for writing cannot do.
  buffer = io.BytesIO()
  np.savez(buffer, **payload)
  tmp.write_bytes(buffer.getvalue())
  tmp.replace(path)  # overwrites a dump of the same step (re-evaluation)
  logging.info("Saved %d predictions to %s", len(arrays["topk_ids"]), path)
  return str(path)


def class_names(spec: str | Sequence[str] | None, num_classes: int, data: dict
                ) -> list[str]:
  """Readable class names: "imagenet2012", a list, a file, or the dataset's own."""
  if isinstance(spec, (list, tuple)):
    names = [str(n) for n in spec]
  elif spec == "imagenet2012":
    from big_vision_like.data import imagenet_classes  # pylint: disable=g-import-not-at-top
    names = list(imagenet_classes.class_names())
  elif isinstance(spec, str):
    names = [line.strip() for line in epath.Path(spec).read_text().splitlines()
             if line.strip()]
  else:
    names = dataset_class_names(data) or [str(i) for i in range(num_classes)]
  if len(names) != num_classes:
    raise ValueError(f"class_names: {len(names)} names for {num_classes} classes")
  return names


def dataset_class_names(data: dict) -> list[str] | None:
  """The names of the dataset's `label` ClassLabel (None if it has none)."""
  from big_vision_like.data import tfds_source  # pylint: disable=g-import-not-at-top
  try:
    features = tfds_source.get_builder(data["name"], data.get("data_dir")).info.features
  except Exception:  # pylint: disable=broad-except
    return None
  for key in ("label", "original_label"):
    if key in features and hasattr(features[key], "names"):
      return list(features[key].names)
  return None

