"""JAX's persistent compilation cache, so that a restart does not compile again.

Every start of train.py (a resume after a preemption included) and every
eval.py compiles the train step and the evaluation steps again: 15-20 s for
ViT-S/16 on a CPU, minutes on accelerators, paid before the first step. JAX can
keep compiled executables in a directory, keyed by the program, its devices and
compile options and the jax/XLA versions; a later process that builds the same
program loads it instead of compiling it. `enabled(config, workdir)` turns that
on for the duration of a train()/evaluate() call:

- `config.compilation_cache` unset (or True): `{workdir}/compilation_cache`,
  so a resumed run and eval.py of the same workdir find the programs the first
  run compiled; a path or gs:// URL (JAX reads it through etils.epath) to
  share one cache between runs: only the same program on the same kind of
  devices hits, so sharing is safe; False or "": off.
- `config.compilation_cache_min_secs` (0.5 s): only programs that took at least
  this long to compile are written. That keeps the train step, the evaluation
  steps and the model initialisation (seconds to minutes) and skips the many
  tiny programs of eager operations, which would cost one file (one object
  write on gs://) each and save next to nothing. JAX's own default is 1 s.

Every process reads the cache; JAX writes it from process 0 only (no write
contention on a bucket). A multi-host run therefore wants the cache on a file
system every host sees, which the default is when the workdir is (gs://); on
a host-local workdir the other hosts simply compile, as before. A cache that
exists but cannot be written (eval.py of a read-only workdir) is only read.

The cache is trusted code: whoever can write to it can make your jobs run
their executables (JAX's warning), so share a directory only among trusted
users. Entries are never evicted: delete the directory to reclaim its space.

Hits and compilations are counted from JAX's monitoring events; train.py logs,
after its first step, whether the train step came from the cache
(`first_call_report`), eval.py logs the totals (`summary`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from typing import Any, Callable, Iterator

import jax
import ml_collections
from etils import epath
from jax._src import compilation_cache as jax_cache
from jax._src import monitoring

logger = logging.getLogger(__name__)

SUBDIR = "compilation_cache"
_REQUESTS = "/jax/compilation_cache/compile_requests_use_cache"
_HITS = "/jax/compilation_cache/cache_hits"
_SAVED = "/jax/compilation_cache/compile_time_saved_sec"
# A compile-time threshold no compilation reaches: the cache is only read.
_READ_ONLY_MIN_SECS = 1e9


class _Counts:
  """Process-wide counts of JAX's cache events (a listener registered once)."""

  def __init__(self):
    self.requests = self.hits = 0
    self.saved_s = 0.0
    self._lock = threading.Lock()
    monitoring.register_event_listener(self._event)
    monitoring.register_event_duration_secs_listener(self._duration)

  def _event(self, event: str, **_: Any) -> None:
    if event in (_REQUESTS, _HITS):
      with self._lock:
        if event == _REQUESTS:
          self.requests += 1
        else:
          self.hits += 1

  def _duration(self, event: str, duration: float, **_: Any) -> None:
    if event == _SAVED:
      with self._lock:
        self.saved_s += duration

  def snapshot(self) -> tuple[int, int, float]:
    """(requests, hits, seconds of compiling saved) so far."""
    with self._lock:
      return self.requests, self.hits, self.saved_s


@functools.lru_cache(maxsize=None)
def counts() -> _Counts:
  return _Counts()


def directory(value: str | bool | None, workdir: str) -> str | None:
  """The cache directory `config.compilation_cache=value` means, or None (off)."""
  if value is None or value is True:
    return str(epath.Path(workdir) / SUBDIR)
  if value is False or value == "":
    return None
  return str(value)


def _prepare(path: str) -> str | None:
  """"rw", "r" (exists, cannot be written: only read) or None (unusable: off)."""
  p = epath.Path(path)
  try:
    p.mkdir(parents=True, exist_ok=True)
  except Exception as e:  # pylint: disable=broad-except  (OSError, tf.errors.*)
    if p.exists():
      return "r"
    logger.warning("compilation cache: off, %s cannot be created (%s)", path, e)
    return None
  return "rw" if "://" in path or os.access(path, os.W_OK) else "r"


def num_entries(path: str) -> int:
  """Executables in the cache directory (JAX names them `{key}-cache`)."""
  try:
    return sum(1 for _ in epath.Path(path).glob("*-cache"))
  except Exception:  # pylint: disable=broad-except  (a listing error must not stop a run)
    return -1


def _reset() -> None:
  """Makes JAX open the directory set now (it opens one once per process)."""
  if getattr(jax_cache, "_cache_initialized", True):
    jax_logger = logging.getLogger(jax_cache.__name__)
    level = jax_logger.level
    jax_logger.setLevel(logging.WARNING)  # its "Resetting cache at ..." line is noise here
    try:
      jax_cache.reset_cache()
    finally:
      jax_logger.setLevel(level)


@contextlib.contextmanager
def enabled(config: ml_collections.ConfigDict, workdir: str) -> Iterator[str | None]:
  """Uses the cache `config` asks for (resolved config) while in the block.

  Yields its directory (None: off). JAX's settings are process-global; they
  are restored on exit, so a train() call in a notebook or a test leaves
  nothing behind.
  """
  path = directory(config.compilation_cache, workdir)
  old = (jax.config.jax_compilation_cache_dir,
         jax.config.jax_persistent_cache_min_compile_time_secs)
  if path is None:
    logger.info("compilation cache: off (config.compilation_cache=%r)",
                config.compilation_cache)
    if not old[0]:
      yield None
      return
    # Off means off: a cache JAX took from JAX_COMPILATION_CACHE_DIR is not used.
    jax.config.update("jax_compilation_cache_dir", None)
    _reset()
    try:
      yield None
    finally:
      jax.config.update("jax_compilation_cache_dir", old[0])
      _reset()
    return
  mode = _prepare(path)
  if mode is None:
    yield None
    return
  writable = mode == "rw"
  min_secs = config.compilation_cache_min_secs if writable else _READ_ONLY_MIN_SECS
  counts()
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_secs))
  _reset()
  logger.info("compilation cache: %s (%d entries%s)", path, num_entries(path),
              "" if writable else "; not writable: only read")
  try:
    yield path
  finally:
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
    _reset()


def summary(since: tuple[int, int, float] = (0, 0, 0.0)) -> str:
  """"N loaded from the cache, M compiled" since a `counts().snapshot()`."""
  requests, hits, saved = (a - b for a, b in zip(counts().snapshot(), since))
  # (JAX records whole seconds of compile time, so short programs save "0 s".)
  return (f"{hits} programs loaded from the cache (about {max(saved, 0):.0f} s of "
          f"compiling saved), {requests - hits} compiled")


def first_call_report(fn: Callable, what: str) -> Callable:
  """`fn` (a jitted function) that logs, after its first call, whether it was compiled.

  The first call of a jitted function compiles (or loads) it before it
  returns, so the cache events during that call are this program's.
  """
  done = False

  def wrapped(*args, **kwargs):
    nonlocal done
    if done:
      return fn(*args, **kwargs)
    done = True
    if not jax.config.jax_compilation_cache_dir:
      return fn(*args, **kwargs)
    before, t0 = counts().snapshot(), time.perf_counter()
    out = fn(*args, **kwargs)
    requests, hits = (a - b for a, b in zip(counts().snapshot()[:2], before[:2]))
    if requests:
      source = "loaded from the cache" if hits == requests else "compiled"
      logger.info("compilation cache: the %s was %s (first call %.1f s); this process: %s",
                  what, source, time.perf_counter() - t0, summary())
    return out

  return wrapped
