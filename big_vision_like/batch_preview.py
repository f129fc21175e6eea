"""A picture of the first training batch: what the model actually sees.

Written once, at step 0 of a fresh run, to TensorBoard (`train/first_batch`
image, `train/first_batch_captions` text). A wrong crop size, a colour
channel swap, a value range off by 255, labels shuffled against images or a
caption cut by a too-short tokenizer length all show at a glance here, and
only here: the loss curve of such a run just looks "slow". Images are drawn
after the pp string (augmentations included); batch-level mixing that runs
inside the train step (mixup/CutMix) is not shown.

Each image is captioned by what the run trains on: its class name (from an
integer `label`, or the argmax of a one-hot/smoothed `labels` vector) or,
for image-text runs, its caption decoded from the `text` tokens with the
tokenizer the pp string's `tokenize` op used.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from big_vision_like.pp import builder as pp_builder

COUNT = 32  # images shown (4 rows of 8)


def _tokenizer(pp: str, key: str):
  """The tokenizer of the pp op that writes token ids to `key`, or None."""
  from big_vision_like.text import tokenizers  # pylint: disable=g-import-not-at-top
  for op in pp_builder.parse_ops(pp):
    if op.name != "tokenize":
      continue
    result = op.kwargs.get("key_result") or op.kwargs.get("key", "text")
    if result == key:
      return tokenizers.get_tokenizer(op.kwargs.get("tokenizer", "bytes"))
  return None


def _class_names(data: Any, num_classes: int | None) -> list[str] | None:
  if hasattr(data, "to_dict"):  # a ConfigDict
    data = data.to_dict()
  if not isinstance(data, Mapping) or "name" not in data:  # a mixture: ids only
    return None
  from big_vision_like.evaluators import collect  # pylint: disable=g-import-not-at-top
  names = collect.dataset_class_names(dict(data))
  return names if names and (num_classes is None or len(names) == num_classes) else None


def captions(batch: Mapping[str, np.ndarray], *, pp: str, data: Any,
             count: int = COUNT) -> list[str] | None:
  """One caption per shown image, or None if the batch has nothing to say."""
  if "text" in batch and np.issubdtype(np.asarray(batch["text"]).dtype, np.integer):
    tokens = np.asarray(batch["text"])[:count]
    tok = _tokenizer(pp, "text")
    if tok is None:
      return None
    if tokens.ndim == 3:  # several captions per image: show the first
      tokens = tokens[:, 0]
    return [tok.decode(row) for row in tokens]  # pad, EOS and BOS dropped
  for key in ("label", "labels"):
    if key not in batch:
      continue
    labels = np.asarray(batch[key])[:count]
    if labels.ndim == 2:  # one-hot, smoothed or multi-hot: the strongest class
      ids, num_classes = labels.argmax(-1), labels.shape[-1]
    elif labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer):
      ids, num_classes = labels, None
    else:
      return None
    names = _class_names(data, num_classes)
    return [f"{names[i]} ({i})" if names and 0 <= i < len(names) else str(int(i))
            for i in ids.tolist()]
  return None


def picture(batch: Mapping[str, np.ndarray], *, pp: str, data: Any,
            count: int = COUNT) -> tuple[np.ndarray | None, str | None]:
  """(image grid [H, W, 3] uint8, markdown list of the captions); (None, None)
  if the batch has no `image` of shape [N, H, W, 1 or 3]."""
  from big_vision_like import plots  # pylint: disable=g-import-not-at-top
  images = np.asarray(batch.get("image", np.zeros((0,))))
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    return None, None
  images = images[:count]
  try:
    caps = captions(batch, pp=pp, data=data, count=count)
  except Exception as e:  # pylint: disable=broad-except
    # A picture without captions is still worth having; say why they are missing.
    logging.warning("first batch picture: no captions (%s: %s)", type(e).__name__, e)
    caps = None
  shape = "x".join(str(d) for d in images.shape[1:])
  title = (f"first training batch after pp ({len(images)} of {len(batch['image'])}, "
           f"{shape}, values {float(images.min()):.2f}..{float(images.max()):.2f})")
  grid = plots.image_grid(images, caps, title=title)
  text = None if caps is None else "\n".join(f"{i}. {c}" for i, c in enumerate(caps))
  return grid, text


def write(writer: Any, batch: Mapping[str, np.ndarray], *, pp: str, data: Any,
          step: int = 0) -> None:
  """Writes the picture (and captions) of `batch` with a MetricWriter.

  A failure here is logged, never raised: the run matters more than its preview.
  """
  try:
    grid, text = picture(batch, pp=pp, data=data)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("first batch picture not written (%s: %s)", type(e).__name__, e)
    return
  if grid is not None:
    writer.write_images(step, {"train/first_batch": grid[None]})
  if text is not None:
    writer.write_texts(step, {"train/first_batch_captions": text})

