"""Low-precision matmuls with float32 results, forward and backward.

Why this exists: flax's `dtype=jnp.bfloat16` makes every Dense a bf16 x bf16
-> bf16 dot, and its gradient dots too. On CPUs with AVX512_BF16 (AMD Zen 4,
Intel Sapphire Rapids) XLA runs bf16 dots at about twice the float32 rate
only when they return float32, and only in some operand layouts; a dot with
a bf16 result, or with a contracting dimension leading both operands, is
upcast to float32 and runs at the float32 rate or below. Measured on a
2-core AMD EPYC (Zen 4), jax 0.10.2, [3136, 384] x [384, 1536]
(BENCHMARKS.md, "Train step vs a plain JAX baseline"):

  float32                              ~190 GFLOP/s
  bf16 -> bf16 (flax's dtype=bf16)     ~165
  bf16 -> f32, x @ w  (NN)             ~370
  bf16 -> f32, g @ w^T (NT, dx)        ~335
  bf16 -> f32, x^T @ g (TN, dW)        ~165  (upcast); ~370 with x^T laid out

`matmul` computes y = x @ w with bf16 (or fp16) operands and a float32
result; its custom VJP computes dx as an NT dot and dW as an NN dot of a
transposed copy of x, both with float32 results, so all three dots of a
Dense layer take the fast path. The activations between matmuls stay
float32 (the cheap elementwise ops of a CPU prefer them, and precision is
better); params stay float32 masters as before. On accelerators the same
math is plain mixed precision (bf16 operands, f32 accumulation), but the
float32 activations double the memory traffic of bf16 ones: there, keep
flax's bf16 results (`model.dtype_mm_out` unset).

`dot_general` has `jax.lax.dot_general`'s signature so that flax's Dense,
DenseGeneral and MultiHeadDotProductAttention take it as their
`dot_general`; contractions it does not cover (batch dimensions, contracting
dims not trailing the lhs and leading the rhs) fall back to
`lax.dot_general` with a float32 result.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

_NN = (((1,), (0,)), ((), ()))  # [M, K] x [K, N]
_NT = (((1,), (1,)), ((), ()))  # [M, N] x [K, N] -> [M, K]


def _laid_out_transpose(x: jax.Array) -> jax.Array:
  """x.T as an array XLA keeps in memory, not folded into the next dot.

  A plain `x.T` feeding a dot is folded into the dot's dimension numbers,
  which makes the dot a TN one that XLA's CPU backend upcasts; the same
  permutation written through a unit axis is kept as a copy (~1% of the dot
  it feeds).
  """
  m, k = x.shape
  return x.reshape(m, k, 1).transpose(1, 2, 0).reshape(k, m)


@jax.custom_vjp
def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """[M, K] @ [K, N] of low-precision operands, as float32 [M, N]."""
  return lax.dot_general(x, w, _NN, preferred_element_type=jnp.float32)


def _matmul_fwd(x, w):
  return matmul(x, w), (x, w)


def _matmul_bwd(residuals, g):
  x, w = residuals
  g = g.astype(x.dtype)
  dx = lax.dot_general(g, w, _NT, preferred_element_type=jnp.float32)
  dw = lax.dot_general(_laid_out_transpose(x), g, _NN,
                       preferred_element_type=jnp.float32)
  return dx.astype(x.dtype), dw.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any,
                precision: Any = None, preferred_element_type: Any = None
                ) -> jax.Array:
  """`lax.dot_general` with a float32 result, through `matmul` where it can.

  Covers what flax's dense layers ask for: no batch dimensions, the lhs
  contracting over its trailing dims and the rhs over its leading dims, in
  the same order. The operands are used in the dtype they come in (flax
  casts them to the module's `dtype` first).
  """
  del preferred_element_type  # Always float32 here.
  (lc, rc), (lb, rb) = dimension_numbers
  lc, rc = tuple(lc), tuple(rc)
  n = len(lc)
  if (lb or rb or lhs.dtype != rhs.dtype or not n
      or lc != tuple(range(lhs.ndim - n, lhs.ndim)) or rc != tuple(range(n))
      or jnp.dtype(lhs.dtype).itemsize != 2):
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=jnp.float32)
  free_l, free_r = lhs.shape[:lhs.ndim - n], rhs.shape[n:]
  k = math.prod(rhs.shape[:n])
  out = matmul(lhs.reshape(math.prod(free_l), k), rhs.reshape(k, math.prod(free_r)))
  return out.reshape(*free_l, *free_r)


OUT_DTYPES = ("float32",)


def for_config(dtype_mm_out: str | None, dtype_mm: Any) -> Any:
  """The `dot_general` a model's dense layers use, or None (flax's own).

  `model.dtype_mm_out`: None keeps flax's matmuls (results in `dtype_mm`);
  "float32" returns float32 results from low-precision operands (see the
  module docstring), which needs `dtype_mm` bfloat16 or float16.
  """
  if dtype_mm_out is None:
    return None
  if dtype_mm_out not in OUT_DTYPES:
    raise ValueError(f"model.dtype_mm_out={dtype_mm_out!r} is not supported; "
                     f"use None or one of {', '.join(OUT_DTYPES)}.")
  if jnp.dtype(dtype_mm).itemsize != 2:
    raise ValueError(f"model.dtype_mm_out={dtype_mm_out!r} needs a 16-bit "
                     f"model.dtype_mm (bfloat16 or float16), got "
                     f"{jnp.dtype(dtype_mm).name}.")
  return dot_general
