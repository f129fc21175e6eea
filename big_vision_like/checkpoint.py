"""Checkpoints: save, auto-resume and partial loading, on top of orbax.

Why a wrapper at all: the trainer needs exactly four things from checkpointing
and each has a sharp edge we want handled in one place.

* Saving is sharded and asynchronous. Every process writes only the shards it
  owns (orbax does this for `jax.Array`s) and training continues as soon as the
  device->host copy is done.
* Resuming never trusts a half-written checkpoint. Orbax writes into a
  temporary directory and commits it at the end, so an interrupted save is not
  listed as a step at all. A committed step can still be unreadable (a file
  truncated or deleted later); `restore()` then falls back to the previous
  step, with a warning naming the bad one.
* Restoring reshards: the caller passes the *target* shardings, so a run may
  resume on a different mesh or number of devices.
* Fine-tuning loads only the `params` of another run's checkpoint, optionally
  re-initialising some of them (`skip=["head/.*"]`).

On-disk layout, one directory per step under `{workdir}/checkpoints`:

  {step}/state/   the pytree of arrays (params, optimizer state, ...)
  {step}/meta/    a small JSON dict (data position, config hash, ...)
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Sequence

import jax
import orbax.checkpoint as ocp
from etils import epath

from big_vision_like import params as params_lib

logger = logging.getLogger(__name__)

# Names of the two items stored in each step directory.
STATE = "state"
META = "meta"


class CheckpointRestoreError(RuntimeError):
  """No step of a checkpoint directory could be restored."""


def _preservation_policy(keep_last: int, keep_every_steps: int | None):
  """Keep the newest `keep_last` steps plus every multiple of keep_every_steps."""
  policies = ocp.checkpoint_managers
  keep = [policies.LatestN(n=keep_last)]
  if keep_every_steps is not None:
    keep.append(policies.EveryNSteps(interval_steps=keep_every_steps))
  return policies.AnyPreservationPolicy(keep)


def _check_abstract(abstract_state: Any) -> None:
  """Every array leaf of a restore target must say where it goes."""
  for name, leaf in params_lib.flatten_with_names(abstract_state):
    if isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding is None:
      raise ValueError(
          f"abstract_state leaf {name!r} (shape {leaf.shape}) has no "
          "sharding; build it with jax.ShapeDtypeStruct(shape, dtype, "
          "sharding=...) so that restore knows where to place the shards")
    if isinstance(leaf, jax.ShapeDtypeStruct):
      try:
        leaf.sharding.shard_shape(leaf.shape)
      except ValueError as e:  # E.g. a dimension not divisible by the mesh.
        raise ValueError(f"abstract_state leaf {name!r}: sharding "
                         f"{leaf.sharding} does not fit shape {leaf.shape}: "
                         f"{e}") from None


class Checkpointer:
  """Saves and restores `(state, meta)` pairs in one directory of steps.

  Multi-host: every process must call `save`, `restore` and `wait` with the
  same arguments (they contain collective barriers).
  """

  def __init__(self, directory: str, *, keep_last: int = 3,
               keep_every_steps: int | None = None,
               async_save: bool = True):
    if not isinstance(keep_last, int) or keep_last < 1:
      raise ValueError(f"Checkpointer keep_last must be an int >= 1, got "
                       f"{keep_last!r}")
    if keep_every_steps is not None and (
        not isinstance(keep_every_steps, int) or keep_every_steps < 1):
      raise ValueError("Checkpointer keep_every_steps must be None or an int "
                       f">= 1, got {keep_every_steps!r}")
    # orbax needs absolute paths; URIs such as gs://bucket/x are left as they are.
    if "://" not in str(directory):
      directory = os.path.abspath(directory)
    self.directory = epath.Path(directory)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=_preservation_policy(keep_last, keep_every_steps),
        enable_async_checkpointing=async_save,
        create=True,
        # Left-overs of a save killed half-way are never valid: drop them.
        cleanup_tmp_directories=True,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    """Newest committed step, or None if there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """All committed steps, ascending."""
    return sorted(self._manager.all_steps())

  def reload(self) -> None:
    """Re-reads the list of steps from disk (steps are cached otherwise).

    For a process that watches checkpoints written by another one, e.g. an
    evaluator following a training run.
    """
    self._manager.reload()

  def save(self, step: int, state: Any, meta: dict, *,
           force: bool = False) -> bool:
    """Starts saving `state` and `meta` as `step`; True if a save started.

    Returns once the arrays are copied to host memory; the write continues in
    the background (see `wait`). A step not newer than the latest saved one is
    skipped (returns False) unless `force`.
    """
    try:
      json.dumps(meta)
    except (TypeError, ValueError) as e:
      raise TypeError(f"Checkpoint meta for step {step} is not JSON-"
                      f"serializable: {e}") from None
    # A failed background write of the previous save must stop the run here,
    # not just be logged by orbax's finalize thread.
    self._manager.check_for_errors()
    args = ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(state),
        META: ocp.args.JsonSave(meta),
    })
    return self._manager.save(step, args=args, force=force)

  def restore(self, abstract_state: Any,
              step: int | None = None) -> tuple[Any, dict, int]:
    """Returns `(state, meta, step)` restored onto `abstract_state`'s shardings.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct`s with `.sharding`
    set (the layout wanted now, which may differ from the one saved). With
    `step=None` the newest step is used; if it cannot be read, older steps are
    tried in turn, each failure logged as a warning.
    """
    _check_abstract(abstract_state)
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f"No checkpoint found in {self.directory}")
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(
            f"No checkpoint for step {step} in {self.directory}; available "
            f"steps: {steps}")
      return self._restore_step(abstract_state, step)

    failures = []
    for candidate in reversed(steps):
      try:
        return self._restore_step(abstract_state, candidate)
      except Exception as e:  # pylint: disable=broad-except
        # Any read error (missing file, corrupt data, bad metadata) means this
        # step is unusable; an older one may still be fine.
        failures.append(f"step {candidate}: {type(e).__name__}: {e}")
        logger.warning("Could not restore checkpoint step %d from %s (%s: "
                       "%s); falling back to an older step.", candidate,
                       self.directory, type(e).__name__, e)
    raise CheckpointRestoreError(
        f"No checkpoint step in {self.directory} could be restored:\n  " +
        "\n  ".join(failures))

  def _restore_step(self, abstract_state: Any,
                    step: int) -> tuple[Any, dict, int]:
    args = ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(abstract_state),
        META: ocp.args.JsonRestore(),
    })
    restored = self._manager.restore(step, args=args)
    return restored[STATE], restored[META], step

  def reached_preemption(self, step: int) -> bool:
    """True once a preemption signal was received (multi-host synced)."""
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    """Blocks until all background saves are committed; re-raises their errors."""
    self._manager.wait_until_finished()
    self._manager.check_for_errors()

  def close(self) -> None:
    """Waits for pending saves and releases orbax's resources."""
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _find_step_dir(path: str) -> epath.Path:
  """A workdir, a checkpoints dir or a step dir -> the step dir to load."""
  p = epath.Path(path if "://" in str(path) else os.path.abspath(path))
  if not p.exists():
    raise FileNotFoundError(f"load_params: checkpoint path {path} does not "
                            "exist")
  if (p / STATE).is_dir():
    return p  # Already a step directory.
  if (p / "checkpoints").is_dir():
    p = p / "checkpoints"  # A workdir.
  options = ocp.CheckpointManagerOptions(read_only=True, create=False)
  with ocp.CheckpointManager(p, options=options) as manager:
    step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"load_params: no checkpoint step found in {p}")
  return p / str(step)


def _nest(flat: dict[tuple[str, ...], Any]) -> dict[str, Any]:
  """{("a", "b"): x} -> {"a": {"b": x}}."""
  out: dict[str, Any] = {}
  for keys, value in flat.items():
    node = out
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = value
  return out


def _key_str(k: Any) -> str:
  return params_lib.path_to_str((k,))


def load_params(path: str, params_target: Any, *, skip: Sequence[str] = (),
                strict: bool = True) -> Any:
  """Loads the `params` of a checkpoint into the structure of `params_target`.

  Args:
    path: a workdir, its `checkpoints` dir (latest step is used) or one step
      dir.
    params_target: pytree of arrays (typically freshly initialised, with their
      shardings) giving the wanted structure, shapes, dtypes and shardings.
    skip: regexes; params whose "/"-joined name fully matches one keep their
      value from `params_target` (e.g. `["head/.*"]` to re-init the head).
    strict: if True, params in the checkpoint that the target does not have
      are an error; otherwise they are ignored with a warning.

  Returns:
    A tree like `params_target`, with the loaded values.
  """
  skip_res = []
  for i, pattern in enumerate(skip):
    try:
      skip_res.append(re.compile(pattern))
    except re.error as e:
      raise ValueError(f"load_params skip[{i}]: bad regex {pattern!r}: "
                       f"{e}") from None
  skipped = lambda name: any(r.fullmatch(name) for r in skip_res)

  step_dir = _find_step_dir(path)
  item_dir = step_dir / STATE
  saved = ocp.PyTreeCheckpointer().metadata(item_dir).item_metadata.tree
  if not isinstance(saved, dict) or "params" not in saved:
    keys = list(saved) if isinstance(saved, dict) else type(saved).__name__
    raise ValueError(f"load_params: checkpoint {item_dir} has no 'params' "
                     f"entry (top-level keys: {keys})")
  saved_params = dict(params_lib.flatten_with_names(saved["params"]))

  # Decide, per target leaf, whether to load it and whether it fits.
  to_load: dict[tuple[str, ...], jax.ShapeDtypeStruct] = {}
  missing, mismatched = [], []
  target_leaves, _ = jax.tree_util.tree_flatten_with_path(params_target)
  for keypath, leaf in target_leaves:
    name = params_lib.path_to_str(keypath)
    if skipped(name):
      continue
    if name not in saved_params:
      missing.append(name)
      continue
    saved_shape = tuple(saved_params[name].shape)
    if saved_shape != tuple(leaf.shape):
      mismatched.append(f"{name}: checkpoint shape {saved_shape} vs target "
                        f"shape {tuple(leaf.shape)}")
      continue
    to_load[tuple(_key_str(k) for k in keypath)] = jax.ShapeDtypeStruct(
        leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None))

  target_names = {params_lib.path_to_str(p) for p, _ in target_leaves}
  extra = [n for n in saved_params if n not in target_names and not skipped(n)]

  problems = []
  if mismatched:
    problems.append("shape mismatch (add to skip to re-initialise):\n    " +
                    "\n    ".join(mismatched))
  if missing:
    problems.append("params missing from the checkpoint:\n    " +
                    "\n    ".join(missing))
  if extra and strict:
    problems.append("params in the checkpoint but not in the model (use "
                    "strict=False to ignore):\n    " + "\n    ".join(extra))
  if problems:
    raise ValueError(f"load_params from {item_dir}:\n  " +
                     "\n  ".join(problems))
  if extra:
    logger.warning("load_params: ignoring %d params of %s that the model does "
                   "not have: %s", len(extra), item_dir, extra)
  unused = params_lib.unused_rules(params_target, skip)
  if unused:
    logger.warning("load_params: skip regexes %s match no param", unused)

  loaded = {}
  if to_load:
    item = {"params": _nest(to_load)}
    restored = ocp.PyTreeCheckpointer().restore(
        item_dir, args=ocp.args.PyTreeRestore(
            item=item,
            restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True))
    loaded = dict(params_lib.flatten_with_names(restored["params"]))
  logger.info("load_params: loaded %d params from %s, kept %d from the target",
              len(loaded), item_dir, len(target_leaves) - len(loaded))

  return jax.tree_util.tree_map_with_path(
      lambda p, x: loaded.get(params_lib.path_to_str(p), x), params_target)
