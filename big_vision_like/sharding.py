"""The device mesh from `config.mesh`, and parameter/batch shardings from rules.

One `Mesh` per run, e.g. `config.mesh = [("data", -1), ("fsdp", 1)]` (-1 takes
all remaining devices). For multi-slice runs `config.mesh_dcn` gives the
sizes of the axes across slices (the slow data-center network), e.g.
`[("data", 2)]` for two slices, and `config.mesh` is then the shape of ONE
slice (the fast ICI network); the hybrid mesh has axis sizes ici * dcn.

Parameters and optimizer state get a `NamedSharding` from
`config.sharding_strategy`, a list of `(regex, rule)` pairs matched against
"/"-joined parameter paths; the first matching rule wins:

  - `"replicate"`: a full copy on every device (the default strategy).
  - `"fsdp"` / `"fsdp(axis='fsdp', min_size_mb=4)"`: split the largest
    dimension that the axis size divides, for arrays above a size threshold
    (small arrays are cheaper replicated than gathered).
  - `"logical"`: MaxText-style. The models name every parameter dimension
    (models/common.py LOGICAL_AXES: embed, mlp, heads, kv, vocab, classes,
    conv_*, norm, layers, ...) and `config.sharding_rules` maps names to mesh
    axes, e.g. `[("embed", "fsdp"), ("mlp", "model"), ("heads", "model")]`.
    A name without a rule is not sharded; a mesh axis that does not divide
    the dimension is an error naming the parameter.

With `config.sharding_rules` set and no `config.sharding_strategy`, the
strategy is `[(".*", "logical")]` (see `strategy_from_config`); configs that
set neither keep replicating everything, exactly as before.

The same rules constrain the main activations ([batch, length, embed], MLP
hidden [batch, length, mlp], per-head [batch, length, heads, kv]) inside the
jitted train step and predict fn (`with_logical_rules`); "batch" defaults to
the data axes. Without rules the constraints are no-ops.

Batches are split along their first dimension over the data axes (by default
every mesh axis whose name is "data" or "fsdp": FSDP is data parallelism
with sharded parameters).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from big_vision_like import params as params_lib
from big_vision_like import registry
from big_vision_like.models import common as models_common

SHARDING_RULES = registry.Registry("sharding rule")
_UNMATCHED = "__no_rule__"


def _parse_axes(mesh_config: Any, key: str) -> tuple[list[str], list[int]]:
  """[(name, size), ...] -> (names, sizes), with errors naming `key`."""
  try:
    names = [str(name) for name, _ in mesh_config]
    sizes = [int(size) for _, size in mesh_config]
  except (TypeError, ValueError):
    raise ValueError(f"{key} must be a list of (axis_name, size) pairs, "
                     f"got {mesh_config!r}") from None
  if len(set(names)) != len(names):
    raise ValueError(f"{key} has a repeated axis name: {names}")
  if sizes.count(-1) > 1:
    raise ValueError(f"{key}: at most one axis may have size -1, got {mesh_config!r}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"{key}: axis sizes must be positive or -1, got {mesh_config!r}")
  return names, sizes


def _fill_sizes(sizes: list[int], n: int, mesh_config: Any, key: str,
                what: str) -> list[int]:
  """Resolves a -1 size so that the product is `n` (`what` names the n)."""
  sizes = list(sizes)
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n % fixed:
      raise ValueError(f"{key} {mesh_config!r}: the fixed axis sizes (product "
                       f"{fixed}) do not divide the {n} {what}")
    sizes[sizes.index(-1)] = n // fixed
  if math.prod(sizes) != n:
    raise ValueError(f"{key} {mesh_config!r} has {math.prod(sizes)} {what} "
                     f"but {n} are available")
  return sizes


def _granule_attr(devices: Sequence[Any]) -> str:
  """Slices are the DCN granules where devices know them (TPU), else processes.

  Multi-process CPU (and GPU) devices also carry a `slice_index`, but all 0:
  there the processes (hosts) are what the slow network connects.
  """
  indices = [getattr(d, "slice_index", None) for d in devices]
  if None not in indices and (len(set(indices)) > 1 or all(
      getattr(d, "platform", None) == "tpu" for d in devices)):
    return "slice_index"
  return "process_index"


def hybrid_device_array(mesh_config: Sequence[tuple[str, int]],
                        dcn_config: Sequence[tuple[str, int]],
                        devices: Sequence[Any]) -> tuple[np.ndarray, tuple[str, ...]]:
  """Devices arranged for a multi-slice mesh, and the axis names.

  `mesh_config` is the shape of one slice (ICI; -1 allowed), `dcn_config` the
  sizes across slices of some of its axes (others get 1; -1 allowed). Each
  axis of the result has size ici * dcn, slice-major: along a DCN axis the
  first ici-size block comes from the first slice, and so on. Slices are the
  devices' `slice_index` (TPU multi-slice) or, where devices have none (CPU,
  GPU), their processes.
  """
  names, ici = _parse_axes(mesh_config, "config.mesh")
  dcn_names, dcn_sizes = _parse_axes(dcn_config, "config.mesh_dcn")
  unknown = [a for a in dcn_names if a not in names]
  if unknown:
    raise ValueError(f"config.mesh_dcn names axes {unknown} that are not in "
                     f"config.mesh {names}; list every axis in config.mesh (the "
                     "per-slice shape, size 1 if the axis only spans slices)")
  attr = _granule_attr(devices)
  granules = sorted({getattr(d, attr) for d in devices})
  what = "slices" if attr == "slice_index" else "processes (slices)"
  dcn_sizes = _fill_sizes(dcn_sizes, len(granules), dcn_config, "config.mesh_dcn", what)
  dcn = dict(zip(dcn_names, dcn_sizes))
  per_granule = len(devices) // len(granules)
  counts = {g: sum(getattr(d, attr) == g for d in devices) for g in granules}
  if len(set(counts.values())) != 1:
    raise ValueError(f"config.mesh_dcn: the slices have different device counts {counts}")
  ici = _fill_sizes(ici, per_granule, mesh_config, "config.mesh (per slice, with "
                    "config.mesh_dcn)", "devices per slice")
  dcn_shape = [dcn.get(a, 1) for a in names]
  array = mesh_utils.create_hybrid_device_mesh(
      ici, dcn_shape, devices, process_is_granule=attr == "process_index")
  return array, tuple(names)


def make_mesh(mesh_config: Sequence[tuple[str, int]],
              devices: Sequence[jax.Device] | None = None, *,
              dcn: Sequence[tuple[str, int]] | None = None) -> Mesh:
  """Builds the mesh; errors name `config.mesh` and the device count.

  With `dcn` (`config.mesh_dcn`), a multi-slice hybrid mesh: see
  `hybrid_device_array`.
  """
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  if dcn:
    array, names = hybrid_device_array(mesh_config, dcn, devices)
    return Mesh(array, names, axis_types=(AxisType.Auto,) * len(names))
  names, sizes = _parse_axes(mesh_config, "config.mesh")
  sizes = _fill_sizes(sizes, n, mesh_config, "config.mesh", "devices")
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


# ---------------------------------------------------------------------------
# Logical axis rules (MaxText-style).

LogicalRules = tuple[tuple[str, Any], ...]


def check_rules(rules: Any, mesh: Mesh,
                key: str = "config.sharding_rules") -> LogicalRules:
  """Validates [(logical_name, mesh_axis | (mesh_axes...) | None), ...].

  Unknown logical names (not in models/common.py LOGICAL_AXES) and unknown
  mesh axes fail naming them; returns the rules as a tuple of pairs.
  """
  if rules is None:
    return ()
  out = []
  known = models_common.LOGICAL_AXES
  for i, rule in enumerate(rules):
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2
            and isinstance(rule[0], str)):
      raise ValueError(f"{key}[{i}] must be a (logical_name, mesh_axis | "
                       f"(mesh_axes...) | None) pair, got {rule!r}")
    name, axes = rule
    if name not in known:
      raise ValueError(f"{key}[{i}]: " + registry.unknown_name_message(
          "logical axis name", name, known))
    if isinstance(axes, list):
      axes = tuple(axes)
    flat = (axes,) if isinstance(axes, str) else tuple(axes or ())
    if not all(isinstance(a, str) for a in flat):
      raise ValueError(f"{key}[{i}] ({name!r}): mesh axes must be names, got {axes!r}")
    unknown = [a for a in flat if a not in mesh.axis_names]
    if unknown:
      raise ValueError(f"{key}[{i}] maps {name!r} to mesh axes {unknown}, which "
                       f"are not axes of config.mesh {tuple(mesh.axis_names)}")
    out.append((name, axes))
  return tuple(out)


def activation_rules(rules: Any, mesh: Mesh,
                     batch_axes: Sequence[str] | None = None) -> LogicalRules:
  """The rules for activation constraints: "batch" first, defaulting to the
  data axes.

  Flax assigns rules in order and a mesh axis only once per array, so with
  `("embed", "fsdp")` listed before `("batch", ("data", "fsdp"))` the batch
  of a [batch, length, embed] activation would lose "fsdp"; putting the
  batch rules first makes activations batch-sharded whatever the order.
  `batch_axes` (default: `data_axes(mesh)`) is "batch"'s default.
  """
  rules = check_rules(rules, mesh)
  if not rules:
    return ()
  batch = [r for r in rules if r[0] == "batch"]
  if not batch:
    batch = [("batch", tuple(batch_axes or data_axes(mesh)))]
  return tuple(batch) + tuple(r for r in rules if r[0] != "batch")


def with_logical_rules(fn: Callable[..., Any], mesh: Mesh, rules: Any,
                       batch_axes: Sequence[str] | None = None) -> Callable[..., Any]:
  """`fn` whose activation constraints (models/common.py `constrain`) apply
  `rules` on `mesh`; without rules, `fn` itself (constraints are no-ops).

  The constraints act when `fn` is traced, so wrap the function that
  `jax.jit` traces (the train step, the predict fn).
  """
  active = activation_rules(rules, mesh, batch_axes)
  if not active:
    return fn

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with models_common.activation_rules(mesh, active):
      return fn(*args, **kwargs)
  return wrapped


def strategy_from_config(config: Any) -> list[tuple[str, str]]:
  """`config.sharding_strategy`; if unset, "logical" for everything when
  `config.sharding_rules` is set, else "replicate" (the old default)."""
  strategy = config.get("sharding_strategy")
  if strategy:
    return [tuple(r) for r in strategy]
  if config.get("sharding_rules"):
    return [(".*", "logical")]
  return [(".*", "replicate")]


def logical_axes(model_init: Callable[[], Any]) -> dict[str, tuple[str | None, ...]]:
  """{param path: logical names} from `model_init() -> params` (traced only).

  `model_init` is traced with `jax.eval_shape` while the models box their
  params with names (models/common.py `collect_logical_axes`); nothing is
  computed or allocated.
  """
  with models_common.collect_logical_axes():
    boxed = jax.eval_shape(model_init)
  is_box = lambda x: isinstance(x, nn.Partitioned)
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(boxed, is_leaf=is_box)[0]:
    if is_box(leaf):
      out[params_lib.path_to_str(path)] = tuple(leaf.names)
  return out


@dataclasses.dataclass(frozen=True)
class ParamInfo:
  """What a rule may look at besides mesh and shape (the "logical" rule)."""
  name: str
  logical_axes: Mapping[str, tuple[str | None, ...]]
  rules: LogicalRules
  like: Mapping[str, tuple[tuple[int, ...], P]]


def _suffixes(name: str) -> list[str]:
  """"opt/0/mu/head/kernel" -> itself, "0/mu/head/kernel", ..., "kernel"."""
  parts = name.split("/")
  return ["/".join(parts[i:]) for i in range(len(parts))]


@SHARDING_RULES.register("logical")
def _logical(mesh: Mesh, shape: tuple[int, ...], *, info: ParamInfo) -> P:
  """The param's logical names mapped through config.sharding_rules.

  Optimizer-state leaves mirror their parameter: the longest path suffix that
  is a parameter of the same shape gives the sharding. Leaves with neither
  (step counts, factored statistics) are replicated.
  """
  for suffix in _suffixes(info.name):
    if suffix in info.like and info.like[suffix][0] == shape:
      return info.like[suffix][1]
    names = info.logical_axes.get(suffix)
    if names is not None and len(names) == len(shape):
      break
  else:
    return P()
  spec = nn.logical_to_mesh_axes(names, info.rules)
  for dim, (size, axes, lname) in enumerate(zip(shape, spec, names)):
    if axes is None:
      continue
    flat = (axes,) if isinstance(axes, str) else tuple(axes)
    n = math.prod(mesh.shape[a] for a in flat)
    if size % n:
      raise ValueError(
          f"config.sharding_rules: parameter {info.name!r} of shape {shape} has "
          f"logical axis {lname!r} (dim {dim}, size {size}) mapped to mesh axes "
          f"{axes!r} of size {n}, which does not divide {size}; change the rule "
          f"or the mesh, or replicate this parameter in config.sharding_strategy")
  return P(*spec)


def _parse_rule(text: str) -> Callable[..., P]:
  """`"fsdp(axis='fsdp', min_size_mb=1)"` -> a function (mesh, shape, info) -> spec."""
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
  if fn is _logical:
    return lambda mesh, shape, info: fn(mesh, shape, info=info, **kwargs)
  return lambda mesh, shape, info: fn(mesh, shape, **kwargs)


def param_shardings(abstract_tree: Any, mesh: Mesh,
                    strategy: Sequence[tuple[str, str]], *,
                    logical_axes: Mapping[str, tuple[str | None, ...]] | None = None,
                    rules: Any = None,
                    like: Mapping[str, tuple[tuple[int, ...], P]] | None = None) -> Any:
  """NamedSharding per leaf of `abstract_tree` (anything with `.shape`).

  `logical_axes` ({param path: names}, from `logical_axes`) and `rules`
  (`config.sharding_rules`) serve the "logical" rule; `like` ({param path:
  (shape, spec)}) lets state leaves mirror already-sharded params.
  """
  rules = check_rules(rules, mesh)
  parsed = [(regex, _parse_rule(rule)) for regex, rule in strategy]
  chosen = params_lib.match_rules(abstract_tree, parsed, _UNMATCHED,
                                  what="config.sharding_strategy")
  named = params_lib.flatten_with_names(chosen)
  unmatched = [name for name, rule in named if rule is _UNMATCHED]
  if unmatched:
    raise ValueError(f"config.sharding_strategy matches no rule for {unmatched[:5]}"
                     f"{' ...' if len(unmatched) > 5 else ''}; end it with "
                     "('.*', 'replicate')")
  logical_axes = dict(logical_axes or {})
  like = dict(like or {})

  def sharding(path, leaf, rule):
    info = ParamInfo(params_lib.path_to_str(path), logical_axes, rules, like)
    return NamedSharding(mesh, rule(mesh, tuple(np.shape(leaf)), info))
  return jax.tree_util.tree_map_with_path(sharding, abstract_tree, chosen)


def state_shardings(abstract_state: Any, mesh: Mesh,
                    strategy: Sequence[tuple[str, str]], *,
                    logical_axes: Mapping[str, tuple[str | None, ...]] | None = None,
                    rules: Any = None, like_params: Any = None) -> Any:
  """Shardings for a train state: optimizer moments follow their parameter's rule.

  Optimizer-state paths look like `opt/0/mu/encoder/.../kernel`; rules are
  written for parameter paths, so each regex is also tried against every
  suffix of the path (scalars such as step counts end up replicated).
  `like_params` (shardings in a tree like `abstract_state["params"]`, e.g.
  those of the initialised params) makes "logical" state leaves copy their
  parameter's sharding, so no logical names are needed here.
  """
  like = {}
  if like_params is not None:
    params = abstract_state["params"]
    for (name, leaf), sh in zip(params_lib.flatten_with_names(params),
                                jax.tree.structure(params).flatten_up_to(like_params)):
      like[name] = (tuple(np.shape(leaf)), sh.spec)
  widened = [(f"(?:.*/)?{regex}", rule) for regex, rule in strategy]
  return param_shardings(
      abstract_state, mesh, widened + [(".*", "replicate")],
      logical_axes=logical_axes, rules=rules, like=like)


# ---------------------------------------------------------------------------
# Memory accounting.


def memory_stats(tree: Any, shardings: Any = None) -> dict[str, int]:
  """Bytes of `tree` in total and on the fullest device.

  Leaves are sharded `jax.Array`s (measured from their addressable shards,
  i.e. this process's devices) or, with `shardings` (or a `.sharding` on
  each `jax.ShapeDtypeStruct`), abstract shapes (computed from the shard
  shape on every device). Returns {"total_bytes", "max_device_bytes",
  "min_device_bytes", "num_devices"}.
  """
  leaves = jax.tree.leaves(tree)
  shards = (jax.tree.structure(tree).flatten_up_to(shardings)
            if shardings is not None else [None] * len(leaves))
  per_device: dict[Any, int] = {}
  total = 0
  for leaf, sh in zip(leaves, shards):
    itemsize = np.dtype(leaf.dtype).itemsize
    total += math.prod(leaf.shape) * itemsize
    if sh is None and isinstance(leaf, jax.Array):
      for shard in leaf.addressable_shards:
        per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
      continue
    sh = sh if sh is not None else getattr(leaf, "sharding", None)
    if sh is None:
      raise ValueError("memory_stats: an abstract leaf has no sharding; pass shardings")
    for device, index in sh.devices_indices_map(tuple(leaf.shape)).items():
      n = math.prod(len(range(*sl.indices(dim))) for sl, dim in zip(index, leaf.shape))
      per_device[device] = per_device.get(device, 0) + n * itemsize
  sizes = list(per_device.values()) or [0]
  return {"total_bytes": total, "max_device_bytes": max(sizes),
          "min_device_bytes": min(sizes), "num_devices": len(per_device)}


def _mb(n: int) -> str:
  return f"{n / 2**20:,.1f} MiB"


def memory_report(state: Any, shardings: Any = None) -> str:
  """One line per part of a {"params", "opt"} train state, plus the sum:
  total bytes and bytes on the fullest device (see `memory_stats`)."""
  parts = state if isinstance(state, Mapping) else {"state": state}
  lines, total, device = [], 0, 0
  for key, sub in parts.items():
    stats = memory_stats(sub, None if shardings is None else shardings[key])
    total += stats["total_bytes"]
    device += stats["max_device_bytes"]
    lines.append(f"{key}: {_mb(stats['total_bytes'])} total, "
                 f"{_mb(stats['max_device_bytes'])} per device (max over "
                 f"{stats['num_devices']})")
  if len(parts) > 1:
    lines.append(f"sum: {_mb(total)} total, {_mb(device)} per device (max)")
  return "; ".join(lines)


# Named layouts for transformer models (ViT, text towers): the logical rules
# that give FSDP and FSDP + tensor parallelism over heads and MLP.
FSDP_RULES = (("embed", "fsdp"),)
TP_RULES = (("embed", "fsdp"), ("mlp", "model"), ("heads", "model"))
LAYOUTS = ("dp", "fsdp", "fsdp_tp")


def layout(name: str, *, model_parallel: int = 2) -> dict[str, Any]:
  """`config.mesh` and `config.sharding_rules` of a named layout.

  "dp": replicated params, batch over all devices; "fsdp": params and
  optimizer state split over all devices; "fsdp_tp": FSDP over
  devices / `model_parallel`, tensor parallelism (heads, MLP) over
  `model_parallel` devices. A config does `config.update(layout("fsdp"))`.
  """
  if name == "dp":
    return {"mesh": [("data", -1)], "sharding_rules": None}
  if name == "fsdp":
    return {"mesh": [("fsdp", -1)], "sharding_rules": list(FSDP_RULES)}
  if name == "fsdp_tp":
    if not isinstance(model_parallel, int) or model_parallel < 1:
      raise ValueError(f"layout('fsdp_tp', model_parallel={model_parallel!r}): needs a "
                       "positive int")
    return {"mesh": [("fsdp", -1), ("model", model_parallel)],
            "sharding_rules": list(TP_RULES)}
  raise ValueError(f"unknown sharding layout {name!r}; known layouts: {', '.join(LAYOUTS)}")


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
