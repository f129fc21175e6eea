"""The config a workdir was trained with, and what a resume may change in it.

Re-running a training command in a workdir that holds checkpoints resumes it.
That is only the same run if the new config trains the same thing: another
model, optimizer, schedule or data order on top of the old checkpoint is a
different experiment whose curves would be silently spliced onto the old
ones. So a resume compares the new (resolved) config with the one the workdir
was last started with:

- keys that only change what is observed, how often things are saved or how
  the arrays are laid out on devices (`SAFE_TO_CHANGE`: evals, logging and
  checkpoint cadence, profiling, the watchdog, peak FLOPs, mesh and sharding
  rules, the compilation cache) pass with one log line listing them;
- any other difference is refused with the list of differing keys, unless the
  user says so explicitly with `config.allow_config_change=True`.

Every start's config is kept: `config.json` is the current one and
`configs/start_{step}_{time}.json` one file per start, so an old run's
settings are never lost.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import time
from typing import Any

import ml_collections
from etils import epath

from big_vision_like import config as config_lib
from big_vision_like import errors

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
HISTORY_DIR = "configs"
# Dotted keys (fnmatch patterns) a resumed run may change without asking.
# The device layout is safe too: restores reshard onto any mesh (checkpoint.py).
SAFE_TO_CHANGE = ("evals", "evals.*", "log_training_*", "ckpt_*", "keep_ckpt_*", "profile",
                  "profile.*", "watchdog*", "platform", "peak_flops", "input.prefetch",
                  "allow_config_change", "mesh", "mesh_dcn", "data_axes", "sharding_*",
                  "compilation_cache*")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} -> {"a.b": 1}; an empty dict stays a leaf."""
  if isinstance(tree, dict) and tree:
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def differences(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
  """(dotted key, old value, new value) for every key that differs; absent is `<unset>`."""
  a, b = _flat(old), _flat(new)
  unset = "<unset>"
  return [(k, a.get(k, unset), b.get(k, unset)) for k in sorted(set(a) | set(b))
          if a.get(k, unset) != b.get(k, unset)]


def is_safe(key: str) -> bool:
  return any(fnmatch.fnmatchcase(key, p) for p in SAFE_TO_CHANGE)


def check_resume(workdir: epath.Path, config: ml_collections.ConfigDict,
                 resume_step: int) -> None:
  """Refuses to resume `workdir` at `resume_step` with a config that trains differently."""
  path = workdir / CONFIG_FILE
  if not path.exists():
    logger.warning("Resuming %s from step %d, but it has no %s: the config cannot be "
                   "compared with the one it was trained with.", workdir, resume_step,
                   CONFIG_FILE)
    return
  try:
    old = json.loads(path.read_text())
  except ValueError as e:
    raise errors.ConfigError(f"{path} is not valid JSON ({e}); cannot check that the "
                             "resumed run has the same config") from None
  new = json.loads(config_lib.to_json(config))
  diff = differences(old, new)
  safe = [d for d in diff if is_safe(d[0])]
  unsafe = [d for d in diff if not is_safe(d[0])]
  show = lambda ds: "\n".join(f"  {k}: {a!r} -> {b!r}" for k, a, b in ds)
  if safe:
    logger.info("Resuming with changed evaluation/logging keys (allowed):\n%s", show(safe))
  if not unsafe:
    return
  if config.allow_config_change:
    logger.warning("Resuming from step %d with a config that trains differently "
                   "(config.allow_config_change=True):\n%s", resume_step, show(unsafe))
    return
  raise errors.ConfigError(
      f"{workdir} holds a run at step {resume_step} trained with another config; these "
      f"keys differ (saved -> now):\n{show(unsafe)}\nUse a new --workdir for a new "
      "experiment, or set --config.allow_config_change=True to continue this run with "
      f"the new values anyway (the saved config is kept in {workdir / HISTORY_DIR}).")


def save(workdir: epath.Path, config: ml_collections.ConfigDict, start_step: int) -> None:
  """Writes `config.json` and this start's own copy under `configs/` (process 0 only)."""
  text = config_lib.to_json(config)
  history = workdir / HISTORY_DIR
  history.mkdir(parents=True, exist_ok=True)
  stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
  (history / f"start_{start_step:08d}_{stamp}_{time.time_ns() % 10**9:09d}.json"
   ).write_text(text)
  (workdir / CONFIG_FILE).write_text(text)
