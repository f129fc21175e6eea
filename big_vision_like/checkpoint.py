"""Checkpoints: save, auto-resume and partial loading, on top of orbax.

Why a wrapper at all: the trainer needs exactly four things from checkpointing
and each has a sharp edge we want handled in one place.

* Saving is sharded and asynchronous. Every process writes only the shards it
  owns (orbax does this for `jax.Array`s) and training continues as soon as the
  device->host copy is done.
* Resuming never trusts a half-written checkpoint. What orbax 0.12.8 does on a
  local disk (verified by killing real runs, see tools/fault_injection.py): a
  save writes `{step}.orbax-checkpoint-tmp/` (items first as
  `state.orbax-checkpoint-tmp/`, renamed to `state/` when written), writes
  `commit_success.txt` into it and then renames it to `{step}/`; the rename is
  the commit. A process killed before the rename leaves only the tmp
  directory, which is never listed and is removed at the next start. Two
  things can still look committed and are handled here: a step directory
  whose deletion (old-step garbage collection) was killed half-way, and a
  committed step damaged later (files truncated, deleted or bit-flipped).
  Deletions are made atomic (renamed into `_deleted/` first); step dirs that
  lack orbax's commit markers are set aside as `{step}.incomplete-*`; and each
  step stores a checksum of every array, checked on restore, because orbax
  returns a flipped byte inside a compressed chunk as silently wrong numbers.
  `restore()` falls back to the newest readable step, with a warning naming
  each bad step directory, and sets the bad ones aside as
  `{step}.unreadable-*` so that training can write that step again.
* Restoring reshards: the caller passes the *target* shardings, so a run may
  resume on a different mesh, number of devices or number of processes.
* Fine-tuning loads only the `params` of another run's checkpoint, optionally
  re-initialising some of them (`skip=["head/.*"]`).

On-disk layout, one directory per step under `{workdir}/checkpoints`:

  {step}/state/       the pytree of arrays (params, optimizer state, ...)
  {step}/meta/        a small JSON dict (data position, config hash, ...)
  {step}/checksums/   JSON {leaf name: uint32 checksum} of every array leaf
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from big_vision_like import errors
from big_vision_like import params as params_lib
from big_vision_like.weights import spec as weights_spec

logger = logging.getLogger(__name__)

# Names of the items stored in each step directory.
STATE = "state"
META = "meta"
CHECKSUMS = "checksums"
# Written by orbax into a step (and into each item) just before its commit.
COMMIT_FILE = "commit_success.txt"
# Old steps are renamed in here (atomic) and only then deleted.
TRASH_DIR = "_deleted"


class CheckpointRestoreError(RuntimeError):
  """No step of a checkpoint directory could be restored."""


class CheckpointCorruptError(RuntimeError):
  """A step's arrays do not match the checksums stored with them."""


class CheckpointMismatchError(ValueError):
  """A readable checkpoint that holds another model than the one restored into.

  Not damage: falling back to older steps would not help (they hold the same
  model) and setting them aside would lose a good run.
  """


def _saved_tree(step_dir: epath.Path) -> Any:
  """The stored state's metadata tree (shapes, dtypes; no array is read)."""
  return ocp.PyTreeCheckpointer().metadata(step_dir / STATE).item_metadata.tree


def check_fits(step_dir: epath.Path, target: Any, subtree: str | None = None) -> None:
  """Raises CheckpointMismatchError naming every param whose shape differs.

  `target` is the abstract state (or, with `subtree="params"`, the params)
  to restore into. Unreadable metadata is left to the restore itself (that
  is damage, handled by falling back).
  """
  try:
    saved = _saved_tree(step_dir)
  except Exception:  # pylint: disable=broad-except
    return
  if subtree is not None:
    if not isinstance(saved, dict) or subtree not in saved:
      return  # load_params names a missing subtree itself
    saved = saved[subtree]
  saved_shapes = {n: tuple(m.shape) for n, m in params_lib.flatten_with_names(saved)
                  if getattr(m, "shape", None) is not None}
  leaves = params_lib.flatten_with_names(target)
  wanted = {n: tuple(x.shape) for n, x in leaves
            if hasattr(x, "shape") and not jax.dtypes.issubdtype(
                getattr(x, "dtype", np.float32), jax.dtypes.prng_key)}
  names = {n for n, _ in leaves}  # Python scalars (a step count) included
  problems = [f"{n}: checkpoint {saved_shapes[n]} vs model {shape}"
              for n, shape in sorted(wanted.items())
              if n in saved_shapes and saved_shapes[n] != shape]
  problems += [f"{n}: in the model {shape}, not in the checkpoint"
               for n, shape in sorted(wanted.items()) if n not in saved_shapes]
  problems += [f"{n}: in the checkpoint {shape}, not in the model"
               for n, shape in sorted(saved_shapes.items()) if n not in names]
  if problems:
    # The params first: the optimizer state only repeats their shapes.
    problems.sort(key=lambda p: (not p.startswith("params/"), p))
    more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
    raise CheckpointMismatchError(
        f"checkpoint {step_dir} holds another model than this config builds "
        f"({len(problems)} parameter(s) differ; the files are fine):\n  " +
        "\n  ".join(problems[:12]) + more)


class _OrbaxNoise(logging.Filter):
  """Drops orbax warnings that describe how we use it, not a problem.

  Every read-only open (eval, load_params) logs that the directory is read only
  and that save_interval_steps became 0, every restore that the step has no
  checkpoint-level metadata file (we never write one: meta and checksums are
  items of the step), and a damaged step that its metadata is unreadable
  (restore then warns once, naming the step). Any other orbax message passes.
  """
  NOISE = ("CheckpointManagerOptions.read_only=True", "Given directory is read only",
           "Metadata file does not exist",
           # a damaged step's metadata: our own warning about that step follows
           "Failed to get item metadata from directory")

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno <= logging.WARNING and
                record.getMessage().startswith(self.NOISE))


logging.getLogger("absl").addFilter(_OrbaxNoise())


def _quiet_closed_event_loops() -> None:
  """After a failed read, tensorstore's remaining reads report to a closed loop.

  Each then prints a full `RuntimeError: Event loop is closed` traceback
  through sys.unraisablehook (hundreds for one damaged step, thousands for a
  big model), burying our one warning about that step. This hook drops just
  that error and passes everything else to the previous hook; asyncio's
  "Task exception was never retrieved" records (the same read errors again)
  are dropped too. Installed by the first restore, for the rest of the
  process.
  """
  previous = sys.unraisablehook
  if getattr(previous, "_bvl_quiet", False):
    return

  def hook(unraisable: Any) -> None:
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
      return
    previous(unraisable)

  hook._bvl_quiet = True  # type: ignore[attr-defined]
  sys.unraisablehook = hook
  # The same reads' futures, garbage-collected later, log "Task exception was
  # never retrieved" with the read error again, one per array.
  logging.getLogger("asyncio").addFilter(
      lambda r: not r.getMessage().startswith("Task exception was never retrieved"))


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


# ------------------------------------------------------------------ checksums


def _leaf_checksum(x: jax.Array) -> jax.Array:
  """uint32 position-weighted sum of the bits of `x` (wrapping arithmetic).

  Integer addition mod 2**32 is associative, so the result does not depend on
  the sharding or on the reduction order: a checkpoint saved on 8 devices and
  restored on 1 gives the same value. The weights depend on the element's
  flat index, so swapped elements are caught too.
  """
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  else:
    width = x.dtype.itemsize * 8
    bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{width}"))
    if width == 64:  # Only with jax_enable_x64: fold the high half in.
      bits = bits ^ (bits >> 32)
    bits = bits.astype(jnp.uint32)
  index = jnp.zeros(x.shape, jnp.uint32)
  stride = 1
  for d in reversed(range(x.ndim)):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, d) * jnp.uint32(
        stride % 2**32)
    stride *= x.shape[d]
  weights = index * jnp.uint32(0x9E3779B1) + jnp.uint32(1)
  return jnp.sum(bits * weights, dtype=jnp.uint32)


_tree_checksums = jax.jit(lambda leaves: [_leaf_checksum(x) for x in leaves])


def array_checksums(tree: Any) -> dict[str, list]:
  """{"/"-joined leaf name: [dtype name, uint32 checksum]} per array leaf.

  Works on global (sharded, multi-process) arrays: each process gets the same
  numbers. Non-array leaves (Python ints, strings) are left out; JSON-like
  values are compared exactly by orbax anyway.
  """
  named = [(n, x) for n, x in params_lib.flatten_with_names(tree)
           if isinstance(x, (jax.Array, np.ndarray)) and
           (x.dtype == np.bool_ or x.dtype.itemsize in (1, 2, 4, 8)) and
           not jnp.issubdtype(x.dtype, jnp.complexfloating)]
  if not named:
    return {}
  sums = _tree_checksums([x for _, x in named])
  # Results are replicated scalars; read the local copy (works multi-host).
  return {n: [np.dtype(x.dtype).name if not jax.dtypes.issubdtype(
              x.dtype, jax.dtypes.prng_key) else str(x.dtype),
              int(np.asarray(s.addressable_data(0)))]
          for (n, x), s in zip(named, sums)}


def _compare_checksums(where: str, saved: dict[str, list],
                       actual: dict[str, list]) -> None:
  """Raises if a leaf read back in its saved dtype has another checksum.

  Leaves restored into another dtype (e.g. float32 -> bfloat16) cannot be
  compared and are skipped.
  """
  bad = [f"{n}: saved {saved[n][1]}, read {actual[n][1]}"
         for n in sorted(saved)
         if n in actual and actual[n][0] == saved[n][0] and
         actual[n][1] != saved[n][1]]
  if bad:
    names = ", ".join(b.split(":")[0] for b in bad)
    raise CheckpointCorruptError(
        f"{where}: array(s) {names} do not match the checksums saved with "
        "them (the files were damaged after the save):\n  " + "\n  ".join(bad))


# ------------------------------------------------------- step dir completeness


def step_problem(step_dir: epath.PathLike) -> str | None:
  """Why `step_dir` is not a completely committed step, or None if it is.

  A cheap look at the commit markers (a few `stat`s; no array is read). It
  catches what survives a kill -9 in the wrong place: a step whose deletion
  was interrupted, or a directory copied in half-way. Damage to the array
  files themselves is found on restore (read errors, checksums).
  """
  step_dir = epath.Path(step_dir)
  if not (step_dir / COMMIT_FILE).exists():
    return f"no {COMMIT_FILE} (never committed, or partly deleted)"
  for item in (STATE, META):
    if not (step_dir / item / COMMIT_FILE).exists():
      return f"item {item!r} is missing or has no {COMMIT_FILE}"
  if not (step_dir / STATE / "_METADATA").exists():
    return f"item {STATE!r} has no _METADATA"
  return None


class StepUnreadableError(RuntimeError):
  """Some process could not read its part of a step (so none of them uses it)."""


def _restore_on_all_or_none(step_dir: epath.Path, args: Any) -> Any:
  """Every process reads its shards of `step_dir`; all succeed, or all raise.

  orbax's own restore ends in a barrier that a process whose read failed
  never reaches: the others would wait there and the processes fall out of
  step. Here each process reads through the item handlers (no barrier), then
  all processes exchange success flags (one all-gather that every process
  reaches, failed or not), so they all fall back to the same older step.
  """
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  error = None
  restored = None
  try:
    restored = ocp.CompositeCheckpointHandler().restore(step_dir, args=args)
  except Exception as e:  # pylint: disable=broad-except
    error = e
  ok = np.asarray(multihost_utils.process_allgather(np.array([error is None]))).reshape(-1)
  if not ok.all():
    bad = [i for i, good in enumerate(ok) if not good]
    raise StepUnreadableError(
        f"process(es) {bad} of {len(ok)} could not read their part of {step_dir}" +
        (f" (here: {_short(error)})" if error is not None else ""))
  return restored


def _short(e: BaseException, limit: int = 300) -> str:
  """First line of an exception, capped: tensorstore errors span pages."""
  text = str(e).strip().split("\n", 1)[0]
  return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


class Checkpointer:
  """Saves and restores `(state, meta)` pairs in one directory of steps.

  Multi-host: every process must call `save`, `restore` and `wait` with the
  same arguments (they contain collective barriers).

  `read_only=True` is for processes that only read (an evaluator following a
  training run): it never creates, deletes or renames anything, in particular
  not the temporary directory of a save in progress.
  """

  def __init__(self, directory: str, *, keep_last: int = 3,
               keep_every_steps: int | None = None,
               async_save: bool = True, read_only: bool = False):
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
    self.read_only = read_only
    self._barriers = 0
    if read_only:
      if not self.directory.is_dir():
        raise FileNotFoundError(f"Checkpoint directory {self.directory} does "
                                "not exist")
      options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    else:
      # Before orbax lists the steps: what only looks committed goes aside.
      if jax.process_index() == 0 and self.directory.is_dir():
        self._set_aside_incomplete()
        self._empty_trash()
      self._sync("init")
      options = ocp.CheckpointManagerOptions(
          preservation_policy=_preservation_policy(keep_last, keep_every_steps),
          enable_async_checkpointing=async_save,
          create=True,
          # Left-overs of a save killed half-way are never valid: drop them.
          cleanup_tmp_directories=True,
          # Deleting in place can be killed half-way and leave a step dir
          # that lists as committed; a rename cannot.
          todelete_subdir=TRASH_DIR,
      )
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  # ------------------------------------------------------------- internals

  def _sync(self, what: str) -> None:
    """Barrier across processes (a no-op with one process)."""
    self._barriers += 1
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes(
          f"bvl_checkpointer_{what}_{self._barriers}")

  def _step_dirs(self) -> dict[int, epath.Path]:
    return {int(p.name): p for p in self.directory.iterdir()
            if p.name.isdigit() and p.is_dir()}

  def _set_aside(self, step_dir: epath.Path, why: str, tag: str) -> None:
    dest = step_dir.parent / f"{step_dir.name}.{tag}-{time.time_ns()}"
    step_dir.rename(dest)
    logger.warning("Checkpoint step dir %s %s; moved it to %s (not deleted).",
                   step_dir, why, dest)

  def _set_aside_incomplete(self) -> None:
    for _, step_dir in sorted(self._step_dirs().items()):
      problem = step_problem(step_dir)
      if problem:
        self._set_aside(step_dir, f"is incomplete: {problem}", "incomplete")

  def _empty_trash(self) -> None:
    trash = self.directory / TRASH_DIR
    if trash.is_dir():
      for entry in list(trash.iterdir()):
        entry.rmtree(missing_ok=True)

  # -------------------------------------------------------------- listing

  def latest_step(self) -> int | None:
    """Newest committed step, or None if there is none."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def all_steps(self) -> list[int]:
    """All committed steps, ascending (incomplete step dirs are left out)."""
    out = []
    for step in sorted(self._manager.all_steps()):
      problem = step_problem(self.directory / str(step))
      if problem:
        logger.warning("Ignoring checkpoint step dir %s: %s",
                       self.directory / str(step), problem)
      else:
        out.append(step)
    return out

  def reload(self) -> None:
    """Re-reads the list of steps from disk (steps are cached otherwise).

    For a process that watches checkpoints written by another one, e.g. an
    evaluator following a training run.
    """
    self._manager.reload()

  # ---------------------------------------------------------------- saving

  def save(self, step: int, state: Any, meta: dict, *,
           force: bool = False) -> bool:
    """Starts saving `state` and `meta` as `step`; True if a save started.

    Returns once the arrays are copied to host memory; the write continues in
    the background (see `wait`). A step not newer than the latest saved one is
    skipped (returns False) unless `force`.
    """
    if self.read_only:
      raise RuntimeError(f"Checkpointer of {self.directory} is read_only; "
                         f"cannot save step {step}")
    try:
      json.dumps(meta)
    except (TypeError, ValueError) as e:
      raise TypeError(f"Checkpoint meta for step {step} is not JSON-"
                      f"serializable: {e}") from None
    # A failed background write of the previous save must stop the run here,
    # not just be logged by orbax's finalize thread.
    self._manager.check_for_errors()
    if jax.process_index() == 0:
      self._empty_trash()
    args = ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(state),
        META: ocp.args.JsonSave(meta),
        CHECKSUMS: ocp.args.JsonSave(array_checksums(state)),
    })
    return self._manager.save(step, args=args, force=force)

  # ------------------------------------------------------------- restoring

  def restore(self, abstract_state: Any,
              step: int | None = None) -> tuple[Any, dict, int]:
    """Returns `(state, meta, step)` restored onto `abstract_state`'s shardings.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct`s with `.sharding`
    set (the layout wanted now, which may differ from the one saved). With
    `step=None` the newest step is used; if it cannot be read (read error or
    checksum mismatch), older steps are tried in turn, each failure logged as
    a warning naming the step dir. Unless read_only, the unreadable steps are
    then renamed to `{step}.unreadable-*` (kept for inspection) so that the
    resumed run can save those steps again. A checkpoint of another model
    (shapes differ) is a `CheckpointMismatchError` naming the parameters,
    never taken for damage.
    """
    _check_abstract(abstract_state)
    return self._restore_with_fallback(
        lambda s: self._restore_step(abstract_state, s), abstract_state, None, step)

  def restore_params(self, abstract_params: Any,
                     step: int | None = None) -> tuple[Any, dict, int]:
    """`(params, meta, step)`: only the params (evaluation), with `restore`'s fallback."""
    def one(s: int) -> tuple[Any, dict, int]:
      params = load_params(str(self.directory / str(s)), abstract_params)
      return params, self.read_meta(s), s
    return self._restore_with_fallback(one, abstract_params, "params", step)

  def _restore_with_fallback(self, restore_one: Any, target: Any, subtree: str | None,
                             step: int | None) -> tuple[Any, dict, int]:
    _quiet_closed_event_loops()  # before any read: a failing one reports late
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f"No checkpoint found in {self.directory}")
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(
            f"No checkpoint for step {step} in {self.directory}; available "
            f"steps: {steps}")
      check_fits(self.directory / str(step), target, subtree)
      return restore_one(step)

    failures = []
    for candidate in reversed(steps):
      step_dir = self.directory / str(candidate)
      check_fits(step_dir, target, subtree)  # another model: an error, not damage
      try:
        restored = restore_one(candidate)
      except CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        # Any read error (missing file, corrupt data, bad metadata) means this
        # step is unusable; an older one may still be fine.
        failures.append((step_dir, _short(e)))
        logger.warning("Could not restore checkpoint step %d from %s (%s); "
                       "falling back to an older step.", candidate, step_dir,
                       _short(e))
        continue
      if failures:
        logger.warning("Restored checkpoint step %d from %s after %d newer "
                       "step(s) failed: %s", candidate, step_dir,
                       len(failures), ", ".join(str(d) for d, _ in failures))
        if not self.read_only:
          if jax.process_index() == 0:
            for bad_dir, why in failures:
              self._set_aside(bad_dir, f"could not be restored ({why})",
                              "unreadable")
          self._sync("set_aside_unreadable")
          self._manager.reload()
      return restored
    raise CheckpointRestoreError(
        f"No checkpoint step in {self.directory} could be restored:\n  " +
        "\n  ".join(f"step {d.name} ({d}): {why}" for d, why in failures))

  def _restore_step(self, abstract_state: Any,
                    step: int) -> tuple[Any, dict, int]:
    step_dir = self.directory / str(step)
    items = {STATE: ocp.args.StandardRestore(abstract_state),
             META: ocp.args.JsonRestore()}
    has_checksums = (step_dir / CHECKSUMS).is_dir()
    if has_checksums:
      items[CHECKSUMS] = ocp.args.JsonRestore()
    if jax.process_count() > 1:
      restored = _restore_on_all_or_none(step_dir, ocp.args.Composite(**items))
    else:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    if has_checksums:
      _compare_checksums(f"checkpoint {step_dir}", restored[CHECKSUMS],
                         array_checksums(restored[STATE]))
    return restored[STATE], restored[META], step

  def read_meta(self, step: int) -> dict:
    """The meta dict saved with `step` (no arrays are read)."""
    path = self.directory / str(step) / META / "metadata"
    if not path.exists():
      raise FileNotFoundError(f"No checkpoint meta for step {step}: {path} is missing")
    return json.loads(path.read_text())

  def wait(self) -> None:
    """Blocks until all background saves are committed; re-raises their errors."""
    self._manager.wait_until_finished()
    self._manager.check_for_errors()
    if not self.read_only and jax.process_index() == 0:
      self._empty_trash()

  def close(self) -> None:
    """Waits for pending saves and releases orbax's resources."""
    self._manager.close()
    if not self.read_only and jax.process_index() == 0:
      self._empty_trash()

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
  with Checkpointer(str(p), read_only=True) as ckpt:
    step = ckpt.latest_step()  # The newest *complete* step.
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
  item_metadata = ocp.PyTreeCheckpointer().metadata(item_dir).item_metadata
  if item_metadata is None:
    raise ValueError(f"load_params: the metadata of {item_dir} cannot be read (damaged, "
                     "or not a checkpoint of this codebase)")
  saved = item_metadata.tree
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
    checksums_file = step_dir / CHECKSUMS / "metadata"
    if checksums_file.exists():
      saved_sums = json.loads(checksums_file.read_text())
      # Checksums are of the stored values: compare before any dtype cast.
      _compare_checksums(
          f"load_params from {item_dir}",
          {n: v for n, v in saved_sums.items() if n.startswith("params/")},
          {f"params/{n}": v for n, v in array_checksums(loaded).items()})
  logger.info("load_params: loaded %d params from %s, kept %d from the target",
              len(loaded), item_dir, len(target_leaves) - len(loaded))

  return jax.tree_util.tree_map_with_path(
      lambda p, x: loaded.get(params_lib.path_to_str(p), x), params_target)


def init_from_checkpoints(params: Any, model_init: Any, skip: Sequence[str] = ()) -> Any:
  """Loads `config.model_init` into `params`.

  `model_init` is a path (the whole model), published weights
  ("zoo:NAME[=PATH]", a .safetensors/.npz file: see weights/spec.py), or
  {subtree: path or weights} to load a
  checkpoint into one part of the model: `{"img": "<workdir of a supervised
  ViT>"}` fills the image tower of a two-tower model (LiT). `skip` regexes
  match full parameter names ("img/head/.*") and keep those params fresh.
  """
  if not hasattr(model_init, "items"):
    if weights_spec.is_weights_spec(model_init):
      out = weights_spec.load_into(params, model_init, list(skip))
      logger.info("Initialised params from %s (skipping %s)", model_init, list(skip))
      return out
    out = load_params(str(model_init), params, skip=list(skip))
    logger.info("Initialised params from %s (skipping %s)", model_init, list(skip))
    return out
  params = dict(params)
  for prefix, path in dict(model_init).items():
    if prefix not in params:
      raise errors.ConfigError(
          f"config.model_init.{prefix}: the model has no parameter subtree {prefix!r} "
          f"(it has {sorted(params)})")
    sub_skip = [s[len(prefix) + 1:] for s in skip if s.startswith(prefix + "/")]
    if weights_spec.is_weights_spec(path):
      params[prefix] = weights_spec.load_into(params[prefix], path, sub_skip, part=prefix)
    else:
      params[prefix] = load_params(str(path), params[prefix], skip=sub_skip)
    logger.info("Initialised %s/ from %s (skipping %s)", prefix, path, sub_skip)
  return params
