"""Image-text (two-tower) training: CLIP, SigLIP and chunked SigLIP losses.

The model embeds `image` and `text` (tokens); the loss (contrastive.py, tagged
`image_text` in the loss registry) sees the whole global batch. Evaluators get
a dict: "zimg" (when the batch has images), "ztxt" (when it has text), and the
temperature "t" and bias "b". Mixup, gradient accumulation (fewer negatives
per micro-batch would change the loss) and `init_head_bias` are refused.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax

from big_vision_like import config as config_lib
from big_vision_like import errors
from big_vision_like import registry
from big_vision_like import tasks
from big_vision_like.pp import builder as pp_builder
from big_vision_like.text import tokenizers


@registry.TASKS.register("image_text")
class ImageText(tasks.Task):
  """Two towers trained so that matching image and text embeddings agree."""

  name = "image_text"
  model_inputs = ("image", "text")
  batch_keys = ("image", "text")

  def check_config(self, config: Any) -> None:
    super().check_config(config)
    if config.get("mixup"):
      raise errors.ConfigError("config.mixup is for classification; a two-tower "
                               "model has no labels to mix")
    if (config.get("grad_accum_steps") or 1) > 1:
      raise errors.ConfigError(
          "config.grad_accum_steps > 1 would change a contrastive loss (fewer negatives "
          "per micro-batch); use a smaller batch or the chunked sigmoid loss instead")
    if config.get("init_head_bias") is not None:
      raise errors.ConfigError(
          "config.init_head_bias is for classification heads; the sigmoid loss's "
          "bias starts at config.model.bias_init")
    check_vocab(config)

  def make_loss(self, model, mesh, data_axes):
    loss_fn = registry.LOSSES.get(self.config.loss)(mesh, data_axes)

    def loss(params, batch, rng):
      zimg, ztxt, aux = model.apply({"params": params}, batch["image"], batch["text"],
                                    train=True, rngs={"dropout": rng})
      value, extra = loss_fn(zimg, ztxt, aux["t"], aux["b"])
      return value, {"train/t": aux["t"], "train/b": aux["b"],
                     **{f"train/{k}": v for k, v in extra.items()}}
    return loss

  def predict(self, model, params, batch: Mapping[str, jax.Array]) -> dict[str, Any]:
    zimg, ztxt, aux = model.apply({"params": params}, batch.get("image"),
                                  batch.get("text"), train=False)
    out = {"t": aux["t"], "b": aux["b"]}
    if zimg is not None:
      out["zimg"] = zimg
    if ztxt is not None:
      out["ztxt"] = ztxt
    return out

  def represent(self, model, params, batch: Mapping[str, jax.Array]) -> jax.Array:
    """The L2-normalised image embedding (what zero-shot classification reads)."""
    zimg, _, _ = model.apply({"params": params}, batch["image"], None, train=False)
    return zimg


def check_vocab(config: Any) -> None:
  """Every `tokenize` op's ids must fit the text tower's embedding table.

  An id past `config.model.text.vocab_size` would not fail in the model: the
  embedding lookup of an out-of-range id returns NaN (or a clamped row), so
  a tokenizer changed without the vocabulary would train on garbage. Checked
  when the config states a vocabulary size (zoo models bring their own).
  """
  text = (config.get("model") or {}).get("text") or {}
  vocab = text.get("vocab_size") if hasattr(text, "get") else None
  if vocab is None:
    return
  sizes: dict[str, int | None] = {}  # by spec: get_tokenizer reads model files anew
  for key, pp in config_lib.pp_strings(config):
    for op in pp_builder.parse_ops(pp):
      if op.name != "tokenize":
        continue
      spec = pp_builder.bound_arguments(op)["tokenizer"]
      if spec not in sizes:
        try:
          sizes[spec] = tokenizers.get_tokenizer(spec).vocab_size
        except (OSError, ValueError):
          sizes[spec] = None  # the pp op itself reports a bad spec or file when built
      ids = sizes[spec]
      if ids is not None and ids > vocab:
        raise errors.ConfigError(
            f"{key}: pp op {op.index} {op.token!r} gives token ids up to {ids - 1} "
            f"(tokenizer {spec!r}, {ids} ids) but config.model.text.vocab_size is "
            f"{vocab}; set vocab_size to {ids}")
