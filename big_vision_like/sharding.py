"""The device mesh from `config.mesh`, and parameter/batch shardings from rules.

One `Mesh` per run, e.g. `config.mesh = [("data", -1), ("fsdp", 1)]` (-1 takes
all remaining devices). Parameters and optimizer state get a `NamedSharding`
from `config.sharding_strategy`, a list of `(regex, rule)` pairs matched
against "/"-joined parameter paths; the first matching rule wins:

  - `"replicate"`: a full copy on every device.
  - `"fsdp"` / `"fsdp(axis='fsdp', min_size_mb=4)"`: split the largest
    dimension that the axis size divides, for arrays above a size threshold
    (small arrays are cheaper replicated than gathered).

Batches are split along their first dimension over the data axes (by default
every mesh axis whose name is "data" or "fsdp": FSDP is data parallelism
with sharded parameters).
"""

from __future__ import annotations

import ast
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from big_vision_like import params as params_lib
from big_vision_like import registry

SHARDING_RULES = registry.Registry("sharding rule")
_UNMATCHED = "__no_rule__"


def make_mesh(mesh_config: Sequence[tuple[str, int]],
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the mesh; errors name `config.mesh` and the device count."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  try:
    names = [str(name) for name, _ in mesh_config]
    sizes = [int(size) for _, size in mesh_config]
  except (TypeError, ValueError):
    raise ValueError(f"config.mesh must be a list of (axis_name, size) pairs, "
                     f"got {mesh_config!r}") from None
  if len(set(names)) != len(names):
    raise ValueError(f"config.mesh has a repeated axis name: {names}")
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh: at most one axis may have size -1, got {mesh_config!r}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"config.mesh: axis sizes must be positive or -1, got {mesh_config!r}")
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n % fixed:
      raise ValueError(f"config.mesh {mesh_config!r}: the fixed axis sizes (product "
                       f"{fixed}) do not divide the {n} devices")
    sizes[sizes.index(-1)] = n // fixed
  if math.prod(sizes) != n:
    raise ValueError(f"config.mesh {mesh_config!r} has {math.prod(sizes)} devices "
                     f"but {n} are available")
  return jax.make_mesh(tuple(sizes), tuple(names), devices=devices,
                       axis_types=(AxisType.Auto,) * len(names))


def data_axes(mesh: Mesh, configured: Sequence[str] | None = None) -> tuple[str, ...]:
  """Mesh axes the batch dimension is split over."""
  if configured is None:
    axes = tuple(a for a in mesh.axis_names if a in ("data", "fsdp"))
  else:
    axes = tuple(configured)
    unknown = [a for a in axes if a not in mesh.axis_names]
    if unknown:
      raise ValueError(f"config.data_axes names {unknown}, not axes of the mesh "
                       f"{mesh.axis_names}")
  if not axes:
    raise ValueError(f"No data axis in mesh {mesh.axis_names}: name one 'data' or "
                     "set config.data_axes")
  return axes


def batch_sharding(mesh: Mesh, axes: Sequence[str]) -> NamedSharding:
  return NamedSharding(mesh, P(tuple(axes)))


def data_parallel_size(mesh: Mesh, axes: Sequence[str]) -> int:
  return math.prod(mesh.shape[a] for a in axes)


@SHARDING_RULES.register("replicate")
def _replicate(mesh: Mesh, shape: tuple[int, ...]) -> P:
  del mesh, shape
  return P()


@SHARDING_RULES.register("fsdp")
def _fsdp(mesh: Mesh, shape: tuple[int, ...], axis: str = "fsdp",
          min_size_mb: float = 4.0) -> P:
  """Shards the largest dimension divisible by the axis size."""
  if axis not in mesh.axis_names:
    raise ValueError(f"sharding rule fsdp(axis={axis!r}): no such mesh axis; "
                     f"mesh axes are {mesh.axis_names}")
  size = mesh.shape[axis]
  if size == 1 or math.prod(shape) * 4 < min_size_mb * 2**20:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % size == 0:
      spec = [None] * len(shape)
      spec[dim] = axis
      return P(*spec)
  return P()


def _parse_rule(text: str) -> Callable[[Mesh, tuple[int, ...]], P]:
  """`"fsdp(axis='fsdp', min_size_mb=1)"` -> a function (mesh, shape) -> spec."""
  name, _, rest = text.partition("(")
  name = name.strip()
  kwargs = {}
  if rest:
    try:
      call = ast.parse(f"f({rest}", mode="eval").body
      kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
      if call.args:
        raise ValueError("positional arguments")
    except (SyntaxError, ValueError) as e:
      raise ValueError(f"config.sharding_strategy: cannot parse rule {text!r} "
                       f"(use keyword literals): {e}") from None
  fn = SHARDING_RULES.get(name)
  return lambda mesh, shape: fn(mesh, shape, **kwargs)


def param_shardings(abstract_tree: Any, mesh: Mesh,
                    strategy: Sequence[tuple[str, str]]) -> Any:
  """NamedSharding per leaf of `abstract_tree` (anything with `.shape`)."""
  rules = [(regex, _parse_rule(rule)) for regex, rule in strategy]
  chosen = params_lib.match_rules(abstract_tree, rules, _UNMATCHED,
                                  what="config.sharding_strategy")
  named = params_lib.flatten_with_names(chosen)
  unmatched = [name for name, rule in named if rule is _UNMATCHED]
  if unmatched:
    raise ValueError(f"config.sharding_strategy matches no rule for {unmatched[:5]}"
                     f"{' ...' if len(unmatched) > 5 else ''}; end it with "
                     "('.*', 'replicate')")
  out = jax.tree.map(lambda leaf, rule: NamedSharding(mesh, rule(mesh, tuple(np.shape(leaf)))),
                     abstract_tree, chosen)
  return out


def state_shardings(abstract_state: Any, mesh: Mesh,
                    strategy: Sequence[tuple[str, str]]) -> Any:
  """Shardings for a train state: optimizer moments follow their parameter's rule.

  Optimizer-state paths look like `opt/0/mu/encoder/.../kernel`; rules are
  written for parameter paths, so each regex is also tried against every
  suffix of the path (scalars such as step counts end up replicated).
  """
  widened = [(f"(?:.*/)?{regex}", rule) for regex, rule in strategy]
  return param_shardings(abstract_state, mesh, widened + [(".*", "replicate")])


def put_process_local_batch(batch: dict[str, np.ndarray],
                            sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles the global batch from each process's local share."""
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in batch.items()}


def to_host(tree: Any) -> Any:
  """Fetches arrays to numpy on every process (metrics, eval sums, params).

  With several processes a global array is not fully addressable, so
  `jax.device_get` refuses it. A replicated one is complete on every process
  (its local shard is the value); a sharded one is gathered from all.
  """
  def fetch(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(fetch, tree)
