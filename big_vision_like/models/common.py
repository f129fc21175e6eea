"""Small pieces shared by the image models (ViT, ResNet).

Both models take the same config knobs for compute dtype and classifier head
and must reject bad images the same way, so those checks live here once
instead of drifting apart in each model file. The logical axis names that
drive sharding (`LOGICAL_AXES`, `logical`, `constrain`) live here too, so
every model names its dimensions from one vocabulary.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator, Sequence

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
  return dense(num_classes, ("embed", "classes"), dtype=dtype,
               kernel_init=kernel_init, name="head")


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


def quick_gelu(x: jax.Array) -> jax.Array:
  """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP was trained with."""
  return x * jax.nn.sigmoid(1.702 * x)


# The MLP activations a model may name (`mlp_act`). Published weights need the
# one they were trained with: big_vision uses tanh-approximated GELU, timm and
# open_clip's LAION models the exact (erf) GELU, OpenAI's CLIP QuickGELU.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "quick_gelu": quick_gelu,
    "relu": nn.relu,
}


def activation(name: str, field: str = "mlp_act") -> Callable[[jax.Array], jax.Array]:
  """The activation called `name`; unknown names fail naming the config field."""
  if name not in ACTIVATIONS:
    raise ValueError(f"model.{field}={name!r} is unknown; known values: "
                     f"{', '.join(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


# ---------------------------------------------------------------------------
# Logical axis names (MaxText-style sharding).
#
# Every parameter dimension and the main activation dimensions carry a
# logical name; `config.sharding_rules` maps names to mesh axes (see
# big_vision_like/sharding.py). Activations reuse the parameter names
# ("embed", "mlp", "heads", "kv"), plus "batch" and "length".
LOGICAL_AXES: dict[str, str] = {
    "batch": "examples of an activation (never a parameter)",
    "length": "tokens of an activation (never a parameter)",
    "embed": "model width: residual stream, attention and MLP in/out",
    "mlp": "MLP hidden units",
    "heads": "attention heads",
    "kv": "channels per attention head",
    "vocab": "token vocabulary of an embedding table",
    "classes": "classifier (or two-tower projection) outputs",
    "rep": "pre-logits layer outputs",
    "pos": "positions of a learned position embedding",
    "norm": "LayerNorm / GroupNorm scale and bias",
    "conv_h": "conv kernel height",
    "conv_w": "conv kernel width",
    "conv_in": "conv input channels",
    "conv_out": "conv output channels",
    "layers": "the nn.scan axis of stacked transformer blocks",
}

# Boxing is switched on only while the sharding code asks for the names, so
# `model.init` everywhere else (tests, tools, checkpoint loading) keeps
# returning plain arrays with unchanged paths.
_COLLECT_AXES = contextvars.ContextVar("bvl_collect_logical_axes", default=False)
# (mesh, rules) while a jitted step/predict fn is traced; None = no constraints.
_ACTIVATION_RULES = contextvars.ContextVar("bvl_activation_rules", default=None)


def logical(init: Callable[..., Any], names: tuple[str | None, ...]
            ) -> Callable[..., Any]:
  """`init` annotated with one logical axis name per dimension.

  Inside `collect_logical_axes()` the initializer returns flax's
  `nn.LogicallyPartitioned` box (as `nn.with_logical_partitioning` does);
  otherwise the plain array, so parameter trees stay plain everywhere.
  """
  unknown = [n for n in names if n is not None and n not in LOGICAL_AXES]
  if unknown:  # a typo in model code
    raise ValueError(f"logical axis names {unknown} are not in LOGICAL_AXES")
  boxed = nn.with_logical_partitioning(init, names)

  # (No shape check here: DenseGeneral calls its init with a flattened shape
  # and reshapes the box; the sharding code checks names against shapes.)
  def wrapped(key, shape, dtype=jnp.float32):
    if not _COLLECT_AXES.get():
      return init(key, shape, dtype)
    return boxed(key, shape, dtype)
  return wrapped


@contextlib.contextmanager
def collect_logical_axes() -> Iterator[None]:
  """While active, `model.init` returns params boxed with logical names."""
  token = _COLLECT_AXES.set(True)
  try:
    yield
  finally:
    _COLLECT_AXES.reset(token)


@contextlib.contextmanager
def activation_rules(mesh: Any, rules: Sequence[tuple[str, Any]] | None
                     ) -> Iterator[None]:
  """Makes `constrain` apply `rules` on `mesh` (active while tracing)."""
  token = _ACTIVATION_RULES.set((mesh, tuple(rules)) if rules else None)
  try:
    yield
  finally:
    _ACTIVATION_RULES.reset(token)


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  """`nn.with_logical_constraint` under the active rules; a no-op without."""
  active = _ACTIVATION_RULES.get()
  if active is None:
    return x
  mesh, rules = active
  return nn.with_logical_constraint(x, names, rules=rules, mesh=mesh)


def dense(features: int, names: tuple[str | None, str | None], *,
          dtype: Any, kernel_init: Callable[..., Any] | None = None,
          bias_init: Callable[..., Any] | None = None,
          name: str | None = None, dot_general: Callable[..., Any] | None = None
          ) -> nn.Dense:
  """nn.Dense whose kernel is [names[0], names[1]] and bias [names[1]].

  `dot_general`: None (jax's) or e.g. `mixed_matmul.dot_general`.
  """
  kernel_init = kernel_init or nn.initializers.lecun_normal()
  bias_init = bias_init or nn.initializers.zeros
  return nn.Dense(features, dtype=dtype, name=name,
                  kernel_init=logical(kernel_init, names),
                  bias_init=logical(bias_init, names[1:]),
                  **({"dot_general": dot_general} if dot_general else {}))


def layer_norm(name: str | None = None, eps: float = 1e-6) -> nn.LayerNorm:
  """LayerNorm with logically named ("norm") scale and bias.

  `eps` is 1e-6 in big_vision and timm's ViTs, 1e-5 (torch's default) in CLIP.
  """
  return nn.LayerNorm(name=name, epsilon=eps,
                      scale_init=logical(nn.initializers.ones, ("norm",)),
                      bias_init=logical(nn.initializers.zeros, ("norm",)))
