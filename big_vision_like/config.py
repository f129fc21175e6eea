"""Loading configs from `file.py:arg` strings, command-line overrides, validation.

A config file defines `get_config(arg: str | None) -> ConfigDict`. On the
command line a run is `--config configs/x.py:runlocal,variant=S/16` plus any
number of `--config.a.b=value` overrides. `parse_arg` turns the `:arg` part
into a typed ConfigDict for the config file to read.

`validate` checks the whole config before anything expensive happens: unknown
keys, unknown model/loss/optimizer/pp op/evaluator names all fail here with the
culprit and the known names.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import inspect
import json
import os
from typing import Any, Sequence

import ml_collections

from big_vision_like import registry


class ConfigError(ValueError):
  """A config is malformed; the message names the key."""


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
  given. Keys without a default are errors (they would be silently ignored).
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
      raise ConfigError(_unknown_key_msg(f"config argument {key!r}", key, defaults))
    default = defaults[key]
    if isinstance(default, bool) and not isinstance(value, bool):
      raise ConfigError(f"config argument {key!r} is a flag; got {raw!r}")
    if default is not None and not isinstance(default, bool):
      try:
        value = type(default)(value)
      except (TypeError, ValueError):
        raise ConfigError(f"config argument {key}={raw!r} is not a "
                          f"{type(default).__name__}") from None
    out[key] = value
  return out


def _unknown_key_msg(what: str, key: str, known: Any) -> str:
  known = sorted(known)
  msg = f"Unknown {what}."
  close = difflib.get_close_matches(key, known, n=1)
  if close:
    msg += f" Did you mean {close[0]!r}?"
  return msg + f" Known keys: {', '.join(known)}."


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]` and applies `a.b=value` overrides."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise ConfigError(f"Config file not found: {path!r}")
  module_spec = importlib.util.spec_from_file_location(
      "bvl_config_" + os.path.basename(path).removesuffix(".py"), path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} defines no get_config(arg)")
  config = module.get_config(arg or None)
  for override in overrides:
    apply_override(config, override)
  return config


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
  """Applies one `a.b.c=value` override; the key must exist (no silent typos)."""
  key, sep, raw = override.partition("=")
  if not sep:
    raise ConfigError(f"Override {override!r} must look like key.path=value")
  parts = key.split(".")
  node = config
  for i, part in enumerate(parts[:-1]):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ConfigError(_unknown_key_msg(
          f"config key 'config.{'.'.join(parts[:i + 1])}'", part,
          node.keys() if isinstance(node, ml_collections.ConfigDict) else []))
    node = node[part]
  last = parts[-1]
  # `config.model.X` may add a field: build_model checks it against the model's
  # dataclass fields (so a typo still fails, naming the known fields).
  adds_model_field = parts[:-1] == ["model"]
  # Any key the trainer knows may be added, e.g. --config.profile=5 on a
  # config that does not mention profiling.
  adds_known_key = ((len(parts) == 1 and last in KNOWN_KEYS) or
                    (parts[:-1] == ["input"] and last in KNOWN_INPUT_KEYS))
  if last not in node and not (adds_model_field or adds_known_key):
    raise ConfigError(_unknown_key_msg(f"config key 'config.{key}'", last, node.keys()))
  value = _literal(raw)
  old = node.get(last)
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  with node.ignore_type():
    node[last] = value


# Top-level keys the train loop understands. Anything else is a typo.
KNOWN_KEYS = {
    "seed", "total_steps", "total_epochs", "total_examples",
    "input", "model_name", "model", "model_init", "model_init_skip", "loss",
    "optax_name", "optax", "lr", "wd", "wd_mults", "lr_mults", "frozen",
    "schedule", "grad_clip_norm", "grad_accum_steps",
    "mesh", "mesh_dcn", "sharding_strategy", "sharding_rules", "data_axes",
    "log_training_steps", "log_training_epochs", "log_training_examples",
    "log_training_percent",
    "ckpt_steps", "ckpt_epochs", "ckpt_examples", "ckpt_percent",
    "keep_ckpt_last", "keep_ckpt_steps", "ckpt_async",
    "evals", "num_classes", "peak_flops", "init_head_bias", "mixup",
    "device_value_range", "profile",
}
KNOWN_INPUT_KEYS = {"data", "pp", "batch_size", "shuffle_buffer_size", "cache", "skip_corrupt",
                    "prefetch", "order"}
# Every evaluator takes these; the rest are its constructor's keyword arguments.
EVAL_LOOP_KEYS = {"type", "log_steps", "log_epochs", "log_examples", "log_percent"}
# Constructor arguments the train loop fills in or that are internal.
_EVAL_INTERNAL = {"self", "predict_fn", "mesh", "data_axes", "name", "workdir", "kwargs",
                  "label_keys", "set_keys", "keep_logits", "per_example_loss"}


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


def _check_keys(section: Any, known: set[str], where: str) -> None:
  for key in section.keys():
    if key not in known:
      raise ConfigError(_unknown_key_msg(f"config key '{where}.{key}'", key, known))


def validate(config: ml_collections.ConfigDict) -> None:
  """Fails early, naming the culprit, on anything the run would trip over later."""
  from big_vision_like.pp import builder as pp_builder  # pylint: disable=g-import-not-at-top
  from big_vision_like import mixup as mixup_lib  # pylint: disable=g-import-not-at-top
  from big_vision_like.data import input_pipeline  # pylint: disable=g-import-not-at-top

  _check_keys(config, KNOWN_KEYS, "config")
  for required in ("input", "model_name", "loss"):
    if required not in config:
      raise ConfigError(f"config.{required} is required")
  _check_keys(config.input, KNOWN_INPUT_KEYS, "config.input")
  for required in ("data", "pp", "batch_size"):
    if required not in config.input:
      raise ConfigError(f"config.input.{required} is required")

  dvr = config.get("device_value_range")
  if dvr is not None and not (
      isinstance(dvr, (list, tuple)) and len(dvr) == 2
      and all(isinstance(v, (int, float)) for v in dvr) and dvr[0] != dvr[1]):
    raise ConfigError(f"config.device_value_range must be None or (vmin, vmax) with "
                      f"vmin != vmax, got {dvr!r}")
  order = config.input.get("order", "global")
  if order not in input_pipeline.ORDERS:
    raise ConfigError(f"config.input.order={order!r} is not one of {input_pipeline.ORDERS}")
  try:
    input_pipeline.data_sources(config.input.data)
  except ValueError as e:
    raise ConfigError(f"config.{e}") from None
  model_cls = registry.MODELS.get(config.model_name)
  if getattr(model_cls, "is_two_tower", False):
    from big_vision_like import contrastive  # pylint: disable=g-import-not-at-top
    if config.loss not in contrastive.LOSS_NAMES:
      raise ConfigError(f"config.loss={config.loss!r}: a two-tower model trains with a "
                        f"contrastive loss, one of {', '.join(contrastive.LOSS_NAMES)}")
  else:
    registry.LOSSES.get(config.loss)
  pp_builder.get_preprocess_fn(config.input.pp)
  mixup_lib.from_config(config.get("mixup"))
  from big_vision_like import profiling  # pylint: disable=g-import-not-at-top
  profiling.parse(config.get("profile"), 0)
  for name, ev in config.get("evals", {}).items():
    if "type" not in ev:
      raise ConfigError(f"config.evals.{name}.type is required")
    try:
      cls = registry.EVALUATORS.get(ev.type)
    except registry.UnknownNameError as e:
      raise ConfigError(f"config.evals.{name}.type: {e}") from None
    _check_keys(ev, evaluator_keys(cls, ev), f"config.evals.{name}")
    ref = ev.get("reference")
    if ref is not None and ref not in config.evals:
      raise ConfigError(f"config.evals.{name}.reference={ref!r} is not an evaluator "
                        f"in config.evals ({sorted(config.evals)})")
    if "pp" in ev:
      pp_builder.get_preprocess_fn(ev.pp)


def to_json(config: ml_collections.ConfigDict) -> str:
  """A stable JSON rendering (tuples become lists)."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)
