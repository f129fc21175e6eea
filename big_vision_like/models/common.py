"""Small pieces shared by the image models (ViT, ResNet).

Both models take the same config knobs for compute dtype and classifier head
and must reject bad images the same way, so those checks live here once
instead of drifting apart in each model file.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Compute dtypes a config may ask for in `dtype_mm`. Params always stay float32.
_MM_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
              "float16": jnp.float16}


def resolve_dtype(name: Any, field: str = "dtype_mm") -> Any:
  """"bfloat16" -> jnp.bfloat16; unknown names fail naming the config field."""
  if isinstance(name, str):
    if name in _MM_DTYPES:
      return _MM_DTYPES[name]
  else:
    # Also accept a dtype object (jnp.bfloat16, np.dtype("float32"), ...).
    try:
      dtype_name = jnp.dtype(name).name
    except TypeError:
      dtype_name = None
    if dtype_name in _MM_DTYPES:
      return _MM_DTYPES[dtype_name]
  raise ValueError(f"model.{field}={name!r} is not supported; "
                   f"known values: {', '.join(sorted(_MM_DTYPES))}.")


def check_images(images: Any, model: str) -> None:
  """Images must be a float NHWC batch; anything else is a pipeline bug."""
  shape = getattr(images, "shape", None)
  if shape is None or len(shape) != 4:
    raise ValueError(f"{model} expects images of shape [batch, height, width, "
                     f"channels], got shape {shape}.")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"{model} expects float images, got dtype {images.dtype} "
                     f"(shape {shape}); add a value_range/convert pp op.")


def num_classes_or_none(num_classes: int | None) -> int | None:
  """`None` and `0` both mean "no head": the model returns its pre-logits."""
  if num_classes is None or num_classes == 0:
    return None
  if not isinstance(num_classes, int) or num_classes < 0:
    raise ValueError(f"model.num_classes must be a positive int, 0 or None; "
                     f"got {num_classes!r}.")
  return num_classes


def classifier_head(num_classes: int, zeroinit: bool, dtype: Any) -> nn.Dense:
  """The final linear layer, named "head" in every model.

  Zero-initialising the kernel makes the initial logits all equal (uniform
  prediction), which is the usual choice for training from scratch and for
  fine-tuning with a fresh head.
  """
  kernel_init = (nn.initializers.zeros if zeroinit
                 else nn.initializers.lecun_normal())
  return nn.Dense(num_classes, dtype=dtype, kernel_init=kernel_init,
                  name="head")


def head_output(pre_logits: jax.Array, aux: dict[str, jax.Array],
                num_classes: int | None, zeroinit: bool, dtype: Any
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Every model's `(logits, aux)` tail: the "head" layer, or no head at all.

  Call from inside a compact `__call__`, so that "head" becomes a child of the
  calling model. Without a head the pre-logits are returned as the output.
  """
  aux["pre_logits"] = pre_logits
  num_classes = num_classes_or_none(num_classes)
  if num_classes is None:
    return pre_logits, aux
  logits = classifier_head(num_classes, zeroinit, dtype)(pre_logits)
  aux["logits"] = logits
  return logits, aux
