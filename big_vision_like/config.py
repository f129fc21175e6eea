"""Configs: `file.py:arg` loading, command-line overrides, and the one table of keys.

A config file defines `get_config(arg: str | None) -> ConfigDict`. On the
command line a run is `--config configs/x.py:runlocal,variant=S/16` plus any
number of `--config.a.b=value` (or `--config.a.b value`) overrides.
`parse_arg` turns the `:arg` part into a typed ConfigDict for the file to read.

`KEYS` and `INPUT_KEYS` list every key the trainer understands, with its type,
default and meaning (README's config reference is generated from them:
`python -m big_vision_like.config`). `resolve` checks a config against them
before anything is written (unknown keys, wrong types, unknown
model/loss/optimizer/pp op/evaluator names, all naming the culprit) and returns
a copy with every default filled in, which is what the code reads: nobody
calls `config.get(key, default)` with a default of their own.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import inspect
import json
import math
import os
import sys
import types
from typing import Any, Mapping, Sequence

import ml_collections

from big_vision_like import distributed
from big_vision_like import durations
from big_vision_like import errors
from big_vision_like import registry

ConfigError = errors.ConfigError  # Raised for every malformed config.


def _literal(text: str) -> Any:
  """Python literal if it parses as one, else the raw string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses `"runlocal,variant=S/16,epochs=300"` into a ConfigDict.

  A bare word is a flag set to True. Values are Python literals when they parse
  as one, strings otherwise, and are cast to the type of the default when one is
  given (an int default refuses 2.7 rather than truncating it). Keys without a
  default are errors (they would be silently ignored).
  """
  out = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return out
  for item in arg.split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, raw = item.partition("=")
    key = key.strip()
    value = _literal(raw.strip()) if sep else True
    if key not in defaults:
      raise ConfigError(errors.unknown_key_message(f"config argument {key!r}", key, defaults))
    default = defaults[key]
    if isinstance(default, bool) and not isinstance(value, bool):
      raise ConfigError(f"config argument {key!r} is a flag; got {raw!r}")
    if default is not None and not isinstance(default, bool):
      lossy = (isinstance(default, int) and isinstance(value, float)
               and not value.is_integer())
      try:
        if lossy:
          raise ValueError
        value = type(default)(value)
      except (TypeError, ValueError):
        raise ConfigError(f"config argument {key}={raw!r} is not of type "
                          f"{type(default).__name__}") from None
    out[key] = value
  return out


def load_module(path: str) -> types.ModuleType:
  """The config file at `path` as a module (its constants, its get_config)."""
  if not os.path.exists(path):
    raise ConfigError(f"Config file not found: {path!r}")
  module_spec = importlib.util.spec_from_file_location(
      "bvl_config_" + os.path.basename(path).removesuffix(".py"), path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]` and applies `a.b=value` overrides."""
  path, _, arg = spec.partition(":")
  module = load_module(path)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} defines no get_config(arg)")
  config = module.get_config(arg or None)
  for override in overrides:
    apply_override(config, override)
  return config


def parse_cli(argv: Sequence[str], description: str = "") -> tuple[ml_collections.ConfigDict, str]:
  """`--config path[:arg]`, `--workdir DIR` and any `--config.a.b=value` overrides.

  Overrides may also be written `--config.a.b value`. Multi-process runs (see
  distributed.py): `--coordinator_address HOST:PORT --num_processes N
  --process_id I` (e.g. localhost), else the environment variables
  BVL_COORDINATOR_ADDRESS/BVL_NUM_PROCESSES/BVL_PROCESS_ID, else
  `--distributed` (JAX finds them on Cloud TPU VMs, SLURM); nothing: one
  process. `--heartbeat_timeout_s` bounds how long a dead peer goes unnoticed.
  """
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--config", required=True, help="path/to/config.py[:arg]")
  parser.add_argument("--workdir", required=True)
  distributed.add_flags(parser)
  args, rest = parser.parse_known_args(list(argv))
  overrides, i = [], 0
  while i < len(rest):
    item = rest[i]
    if not item.startswith("--config."):
      parser.error(f"unrecognized argument {item!r}")
    item = item[len("--config."):]
    if "=" not in item:  # The space form: --config.lr 0.1
      if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
        parser.error(f"--config.{item} needs a value (--config.{item}=VALUE)")
      item, i = f"{item}={rest[i + 1]}", i + 1
    overrides.append(item)
    i += 1
  try:
    distributed.initialize_from_args(args)
  except distributed.DistributedSetupError as e:
    parser.error(str(e))
  return load_config(args.config, overrides), args.workdir


def _may_add(parts: list[str]) -> bool:
  """Whether `config.{parts}` may be added by an override although absent.

  Known trainer keys may (e.g. --config.profile=5 on a config that does not
  mention profiling); so may model fields and evaluator options, which
  `resolve` checks against the model's fields and the evaluator's arguments.
  """
  if len(parts) == 1:
    return parts[0] in KEYS
  if parts[:-1] == ["input"]:
    return parts[-1] in INPUT_KEYS
  return parts[:-1] == ["model"] or (len(parts) == 3 and parts[0] == "evals")


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
  """Applies one `a.b.c=value` override; the key must exist (no silent typos).

  `evals.NAME=None` removes an evaluator. Setting a duration in one unit
  (`total_steps=3`) clears the same duration's other units (`total_epochs`):
  the command line wins over the file.
  """
  key, sep, raw = override.partition("=")
  if not sep:
    raise ConfigError(f"Override {override!r} must look like key.path=value")
  parts = key.split(".")
  node = config
  for i, part in enumerate(parts[:-1]):
    where = f"config.{'.'.join(parts[:i + 1])}"
    if not isinstance(node, ml_collections.ConfigDict):
      raise ConfigError(f"Override {override!r}: config.{'.'.join(parts[:i])} is a "
                        f"{type(node).__name__}, not a section with keys")
    if part not in node:
      raise ConfigError(errors.unknown_key_message(f"config key {where!r}", part, node.keys()))
    node = node[part]
  if not isinstance(node, ml_collections.ConfigDict):
    raise ConfigError(f"Override {override!r}: config.{'.'.join(parts[:-1])} is a "
                      f"{type(node).__name__}, not a section with keys")
  last = parts[-1]
  if last not in node and not _may_add(parts):
    raise ConfigError(errors.unknown_key_message(f"config key 'config.{key}'", last, node.keys()))
  value = _literal(raw)
  if parts[0] == "evals" and len(parts) == 2 and value is None:
    del node[last]
    return
  old = node.get(last)
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  prefix, _, unit = last.rpartition("_")
  if value is not None and unit in durations.UNITS and prefix:
    for other in durations.UNITS:
      if other != unit and node.get(f"{prefix}_{other}") is not None:
        node[f"{prefix}_{other}"] = None
  with node.ignore_type():
    node[last] = value


# ---------------------------------------------------------------------------
# The table of keys.

# Type names used in the table, and what each accepts (bool is never a number).
_TYPES = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "dict": lambda v: isinstance(v, (Mapping, ml_collections.ConfigDict)),
    "list": lambda v: isinstance(v, (list, tuple)),
}


@dataclasses.dataclass(frozen=True)
class Key:
  """One config key: its type(s) (`"int"`, `"str|dict"`), default and meaning.

  `required` keys have no default. Any other key may be absent or None (its
  default applies); set, it must hold a value of its type.
  """
  name: str
  type: str
  default: Any
  doc: str
  required: bool = False

  def check(self, value: Any, where: str) -> None:
    if value is None:  # Unset: the default applies.
      if self.required:
        raise ConfigError(f"{where}.{self.name} is required ({self.doc})")
      return
    if not any(_TYPES[t](value) for t in self.type.split("|")):
      raise ConfigError(f"{where}.{self.name}={value!r} must be {self.type}, "
                        f"not {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"{where}.{self.name}={value!r} must be finite")


def _duration_keys(prefix: str, what: str) -> list[Key]:
  return [Key(f"{prefix}_{unit}", "float" if unit in ("epochs", "percent") else "int",
              None, f"{what} in {unit}" if unit != "steps" else what)
          for unit in durations.UNITS]


KEYS: dict[str, Key] = {k.name: k for k in [
    Key("seed", "int", 0, "seed of params, dropout and the data order"),
    *_duration_keys("total", "training length (exactly one unit)"),
    Key("input", "dict", None, "the training data: see the `input.*` keys", required=True),
    Key("task", "str", None, "`classification` or `image_text`; default: from the model "
        "(two-tower models train image_text)"),
    Key("model_name", "str", None, "model registry name: `vit`, `resnet`, `two_tower`, "
        "`text_transformer`, `bert`", required=True),
    Key("model", "dict", {}, "the model's fields (e.g. `variant`, `num_classes`)"),
    Key("num_classes", "int", None, "fills `model.num_classes` (big_vision style); must "
        "agree with it when both are set"),
    Key("init_head_bias", "float", None, "initial classifier bias, e.g. -6.9 (= log 1/1000) "
        "with `sigmoid_xent`"),
    Key("model_init", "str|dict", None, "initialise from a workdir/checkpoint, published "
        "weights (`zoo:NAME`, `zoo:NAME=PATH`, a timm/open_clip `.safetensors` or big_vision "
        "`.npz`; position embeddings are resampled to the model's grid), or "
        "`{subtree: path}` (LiT: `{\"img\": run}`)"),
    Key("model_init_skip", "list", (), "regexes of params `model_init` leaves fresh"),
    Key("loss", "str", None, "`softmax_xent`, `sigmoid_xent`; image_text: `clip`, `siglip`, "
        "`chunked_siglip`", required=True),
    Key("mixup", "dict", None, "Mixup/CutMix on the global batch (classification)"),
    Key("optax_name", "str", None, "optimizer: `adamw`, `adam`, `sgd`, ... (see optim.py)",
        required=True),
    Key("optax", "dict", {}, "the optimizer's keyword arguments (e.g. `b2`)"),
    Key("lr", "float", None, "peak learning rate", required=True),
    Key("wd", "float", None, "decoupled weight decay (x schedule / peak lr)"),
    Key("schedule", "dict|list", None, "warmup and decay: `warmup_steps`, `decay_type` "
        "(`cosine`, `linear`, `rsqrt`, `constant`), ..."),
    Key("lr_mults", "list", None, "[(regex, mult)]: per-parameter lr multipliers"),
    Key("wd_mults", "list", None, "[(regex, mult)]: per-parameter weight decay multipliers"),
    Key("frozen", "list", None, "regexes of parameters that are not trained"),
    Key("grad_clip_norm", "float", None, "clip gradients to this global norm"),
    Key("grad_accum_steps", "int", 1, "micro-batches per step (gradients accumulated)"),
    Key("mesh", "list", [("data", -1)], "[(axis, size)]; -1: all remaining devices"),
    Key("mesh_dcn", "list", None, "[(axis, size)] across slices of a multi-slice mesh"),
    Key("data_axes", "list", None, "mesh axes the batch is split over (default: `data`, "
        "`fsdp`)"),
    Key("sharding_strategy", "list", None, "[(regex, rule)] per parameter: `replicate`, "
        "`fsdp(...)`, `logical`"),
    Key("sharding_rules", "list", None, "[(logical axis, mesh axes)], e.g. "
        "`sharding.layout(\"fsdp\")`"),
    Key("device_value_range", "list", None, "(lo, hi): uint8 images from the pp are "
        "converted on the device"),
    Key("peak_flops", "float", None, "peak FLOP/s per device for MFU (default: known or "
        "measured)"),
    Key("platform", "str", None, "`cpu`, `gpu` or `tpu`: start-up fails unless JAX's devices "
        "are on it (a GPU job on JAX's CPU build); unset: `$BVL_PLATFORM`, else any"),
    *_duration_keys("log_training", "training metrics period (default 50 steps)"),
    *_duration_keys("ckpt", "checkpoint period (default 1000 steps)"),
    Key("keep_ckpt_last", "int", 3, "checkpoints kept (newest)"),
    Key("keep_ckpt_steps", "int", None, "also keep every checkpoint at a multiple of this"),
    Key("ckpt_async", "bool", True, "write checkpoints in the background"),
    Key("allow_config_change", "bool", False, "resume a workdir even though keys that change "
        "training (model, optimizer, schedule, data) differ from its saved config"),
    Key("evals", "dict", {}, "{name: dict(type=..., log_steps=..., options)}; see "
        "Evaluations"),
    Key("profile", "int|bool|dict", None, "jax.profiler trace of N steps (or "
        "`dict(first_step, num_steps)`)"),
    Key("watchdog", "float|str", "10min", "a steady step making no progress this long "
        "(seconds, or `\"90s\"`, `\"10min\"`, `\"1h\"`) stops the process with exit code "
        "75 and every thread's stack; `0`: off (see watchdog.py)"),
    Key("watchdog_compile_factor", "float", 3.0, "the first step after start or resume "
        "(first batch, XLA compilation) may take this many times `watchdog`"),
    Key("watchdog_eval_factor", "float", 3.0, "each evaluation and checkpoint save may take "
        "this many times `watchdog`"),
    Key("compilation_cache", "str|bool", None, "JAX's persistent compilation cache, so that "
        "a resumed run and eval.py load the compiled steps: unset: "
        "`{workdir}/compilation_cache`; a path or gs:// URL shared by runs; `False`: off "
        "(see compile_cache.py)"),
    Key("compilation_cache_min_secs", "float", 0.5, "only programs that took this long to "
        "compile are written to the compilation cache"),
]}

INPUT_KEYS: dict[str, Key] = {k.name: k for k in [
    Key("data", "dict|list", None, "`dict(name, split, data_dir)`, or a weighted list of "
        "them (a mixture)", required=True),
    Key("pp", "str", None, "preprocessing string, e.g. `decode|resize(224)|value_range(-1, 1)`",
        required=True),
    Key("batch_size", "int", None, "global batch size", required=True),
    Key("shuffle_buffer_size", "int", 50_000, "examples in the shuffle buffer"),
    Key("cache", "bool", False, "cache the decoded records in memory"),
    Key("prefetch", "int", 2, "batches prepared ahead"),
    Key("skip_corrupt", "bool", False, "drop and count undecodable records instead of failing"),
    Key("order", "str", "global", "`global`: the same batches for any process count; "
        "`per_process`: each host reads its share"),
]}

# Every evaluator takes these; the rest are its constructor's keyword arguments.
EVAL_LOOP_KEYS = {"type", "log_steps", "log_epochs", "log_examples", "log_percent"}
# Constructor arguments the train loop fills in or that are internal.
_EVAL_INTERNAL = {"self", "predict_fn", "mesh", "data_axes", "name", "workdir", "kwargs",
                  "label_keys", "set_keys", "keep_logits", "per_example_loss"}


def markdown_table() -> str:
  """README's config reference, generated from `KEYS` and `INPUT_KEYS`."""
  rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
  for prefix, table in (("", KEYS), ("input.", INPUT_KEYS)):
    for key in table.values():
      default = "required" if key.required else f"`{key.default!r}`"
      rows.append(f"| `{prefix}{key.name}` | {key.type} | {default} | {key.doc} |")
  return "\n".join(rows)


def evaluator_keys(cls: Any, ev: Any = None) -> set[str]:
  """Config keys evaluator class `cls` accepts (its and its bases' __init__).

  An evaluator that hands keys on to an inner evaluator (zeroshot -> its
  `scorer`) accepts the inner one's keys too.
  """
  keys = set(EVAL_LOOP_KEYS)
  for klass in getattr(cls, "__mro__", (cls,)):
    init = klass.__dict__.get("__init__")
    if init is not None:
      keys |= set(inspect.signature(init).parameters)
  inner = getattr(cls, "inner_type", None)
  if inner is not None:
    keys |= evaluator_keys(registry.EVALUATORS.get(inner(ev or {})))
  return keys - _EVAL_INTERNAL


def _check_section(section: Any, table: Mapping[str, Key], where: str) -> None:
  errors.check_keys(section, table, where)
  for key in table.values():
    key.check(section.get(key.name), where)


def _check_num_classes(config: ml_collections.ConfigDict) -> None:
  """`config.num_classes` (big_vision's spelling) must reach the model's head."""
  n, model = config.get("num_classes"), config.get("model") or {}
  if n is None:
    return
  cls = registry.MODELS.get(config.model_name)
  fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else ()
  if "num_classes" not in fields:
    raise ConfigError(f"config.num_classes={n}: model {config.model_name!r} has no "
                      "num_classes field")
  if model.get("num_classes") not in (None, n):
    raise ConfigError(f"config.num_classes={n} disagrees with config.model.num_classes="
                      f"{model['num_classes']}; set one of them")


def pp_strings(config: ml_collections.ConfigDict) -> list[tuple[str, str]]:
  """(config key, pp string) of every pp the run builds: input and evaluators."""
  out = [("config.input.pp", (config.get("input") or {}).get("pp"))]
  for name, ev in (config.get("evals") or {}).items():
    if isinstance(ev, (Mapping, ml_collections.ConfigDict)):
      out.extend((f"config.evals.{name}.{key}", ev.get(key)) for key in ("pp", "pp_txt"))
  return [(k, v) for k, v in out if isinstance(v, str)]


def validate(config: ml_collections.ConfigDict) -> None:
  """Fails early, naming the culprit, on anything the run would trip over later."""
  # Imported here: they pull in TensorFlow and the pp registry, which a
  # config file importing `parse_arg` does not need.
  from big_vision_like import mixup as mixup_lib  # pylint: disable=g-import-not-at-top
  from big_vision_like import profiling  # pylint: disable=g-import-not-at-top
  from big_vision_like import tasks  # pylint: disable=g-import-not-at-top
  from big_vision_like.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from big_vision_like.pp import builder as pp_builder  # pylint: disable=g-import-not-at-top

  _check_section(config, KEYS, "config")
  _check_section(config.input, INPUT_KEYS, "config.input")
  for prefix in ("total", "log_training", "ckpt"):
    keys = durations.which_set(config, prefix)
    if len(keys) > 1:
      raise ConfigError(f"config: set only one of {', '.join(keys)}")
  if not durations.which_set(config, "total"):
    raise ConfigError("set one of config.total_steps|total_epochs|total_examples")

  dvr = config.get("device_value_range")
  if dvr is not None and not (
      len(dvr) == 2 and all(_TYPES["float"](v) for v in dvr) and dvr[0] != dvr[1]):
    raise ConfigError(f"config.device_value_range must be None or (vmin, vmax) with "
                      f"vmin != vmax, got {dvr!r}")
  platform = config.get("platform")
  if platform is not None and platform not in distributed.PLATFORMS:
    raise ConfigError(f"config.platform={platform!r} is not one of {distributed.PLATFORMS} "
                      "(None: any platform)")
  min_secs = config.get("compilation_cache_min_secs")
  if min_secs is not None and min_secs < 0:
    raise ConfigError(f"config.compilation_cache_min_secs={min_secs!r} must be >= 0")
  order = config.input.get("order", "global")
  if order not in input_pipeline.ORDERS:
    raise ConfigError(f"config.input.order={order!r} is not one of {input_pipeline.ORDERS}")
  try:
    input_pipeline.data_sources(config.input.data)
  except ValueError as e:
    raise ConfigError(f"config.{e}") from None
  registry.MODELS.get(config.model_name)
  _check_num_classes(config)
  tasks.for_config(config).check_config(config)
  for _, pp in pp_strings(config):
    pp_builder.get_preprocess_fn(pp)
  mixup_lib.from_config(config.get("mixup"))
  profiling.parse(config.get("profile"), 0)
  try:  # Durations like "10min", factors >= 1.
    from big_vision_like import watchdog as watchdog_lib  # pylint: disable=g-import-not-at-top
    watchdog_lib.parse_seconds(config.get("watchdog"), "config.watchdog")
    for key in ("watchdog_compile_factor", "watchdog_eval_factor"):
      if config.get(key) is not None:
        watchdog_lib.check_factor(config[key], f"config.{key}")
  except (TypeError, ValueError) as e:
    raise ConfigError(str(e)) from None
  for name, ev in config.get("evals", {}).items():
    if not isinstance(ev, (Mapping, ml_collections.ConfigDict)) or "type" not in ev:
      raise ConfigError(f"config.evals.{name}.type is required")
    try:
      cls = registry.EVALUATORS.get(ev.type)
    except errors.UnknownNameError as e:
      raise ConfigError(f"config.evals.{name}.type: {e}") from None
    errors.check_keys(ev, evaluator_keys(cls, ev), f"config.evals.{name}")
    ref = ev.get("reference")
    if ref is not None and ref not in config.evals:
      raise ConfigError(f"config.evals.{name}.reference={ref!r} is not an evaluator "
                        f"in config.evals ({sorted(config.evals)})")


def with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with every key of the table present (defaults filled).

  `config.num_classes` is moved into `config.model.num_classes`. Cheap and
  unchecked: `resolve` is `validate` + this.
  """
  out = ml_collections.ConfigDict(config.to_dict())  # A copy without type locks.
  with out.ignore_type():
    sections = [(KEYS, out)] + ([(INPUT_KEYS, out.input)] if out.get("input") else [])
    for table, node in sections:
      for key in table.values():
        if node.get(key.name) is None and not key.required:
          node[key.name] = key.default
    if out.num_classes is not None:
      out.model.num_classes = out.num_classes
  return out


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks `config` (see `validate`) and returns it with every default filled in."""
  validate(config)
  return with_defaults(config)


def to_json(config: ml_collections.ConfigDict) -> str:
  """A stable JSON rendering (tuples become lists)."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


if __name__ == "__main__":
  print(markdown_table())
  sys.exit(0)
