"""Kills a training process that is alive but makes no progress.

Why this module exists: a dead process is noticed (the scheduler sees its
exit; JAX's coordination service aborts its peers, see distributed.py), but
a live, stuck one is not: a hung collective, a stalled input pipeline, a
hung evaluation, or a peer stuck in Python that still heartbeats to the JAX
coordinator. Such a job burns its reservation silently.

`Watchdog` is a background thread that expects the training loop to report
progress. The loop calls `beat(step, activity)` at every step (a tuple
assignment: no device sync, nothing measurable) and `phase(text, factor)`
around the slow things (evaluations, checkpoint saves). When no report
arrives within the allowance of what the loop said it was doing, the
watchdog writes why (the phase, the time since the last report, the time of
that report) and every thread's Python stack to stderr and to the log, and
exits the process with `EXIT_CODE` (75, EX_TEMPFAIL of sysexits.h:
"temporary failure, retry") through `os._exit`, so that no hung thread can
block the exit. A scheduler that restarts the job resumes it from its last
checkpoint.

Allowances (config keys, see config.py): `watchdog` (default 10 min) for one
steady training step; `watchdog_compile_factor` times that for the first
step after start or resume (it includes the first batch and XLA
compilation); `watchdog_eval_factor` times that for each evaluation and each
checkpoint save. `watchdog=None` or 0 switches it off.

A backstop for hangs that the watchdog thread cannot see (a C extension that
keeps the GIL forever, or writing the report itself blocking): the thread
keeps `faulthandler.dump_traceback_later` armed slightly past the current
deadline; that C-level timer needs no GIL and dumps the stacks and exits
with code 1 if this thread failed to act.
"""

from __future__ import annotations

import datetime
import faulthandler
import logging
import math
import os
import re
import sys
import tempfile
import threading
import time
from typing import Any, Self

_log = logging.getLogger(__name__)
# The exit code of a process the watchdog stopped (EX_TEMPFAIL: retry it).
EXIT_CODE = 75
DEFAULT_TIMEOUT = "10min"
DEFAULT_COMPILE_FACTOR = 3.0
DEFAULT_EVAL_FACTOR = 3.0

# What the loop does between two beats (constants: beating formats nothing).
READING = "waiting for its batch"
TRAINING = "training it"

_UNITS = {"ms": 1e-3, "s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$")
# How long past a deadline the C-level backstop waits for this thread to act.
_BACKSTOP_S = 30.0


def parse_seconds(value: Any, where: str = "config.watchdog") -> float | None:
  """Seconds from `600`, `600.0`, `"90s"`, `"10min"`, `"1.5h"`, `"500ms"`.

  A bare number (or numeric string) is seconds. None, 0 and "0" mean off
  (returns None). Raises ValueError (TypeError for a wrong type) naming `where`.
  """
  if value is None:
    return None
  if isinstance(value, bool):
    raise TypeError(f"{where}={value!r} must be a duration like 600 or '10min', not a bool")
  if isinstance(value, (int, float)):
    seconds = float(value)
  elif isinstance(value, str):
    m = _DURATION.match(value.lower())
    if not m or m.group(2) not in ("", *_UNITS):
      raise ValueError(f"{where}={value!r} is not a duration: a number of seconds or a "
                       f"number with one of the units {', '.join(_UNITS)} (e.g. '10min')")
    seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
  else:
    raise TypeError(f"{where}={value!r} must be a number of seconds or a string like "
                     f"'10min', not {type(value).__name__}")
  if not math.isfinite(seconds) or seconds < 0:
    raise ValueError(f"{where}={value!r} must be a finite duration >= 0")
  return seconds or None


def check_factor(value: Any, where: str) -> float:
  """A factor that scales the step allowance: a number >= 1."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise TypeError(f"{where}={value!r} must be a number >= 1, not {type(value).__name__}")
  if not (math.isfinite(value) and value >= 1):
    raise ValueError(f"{where}={value!r} must be a number >= 1 (it scales "
                     "config.watchdog for a slower phase)")
  return float(value)


class Watchdog:
  """Exits the process when the loop stops reporting progress; see the module doc.

    with Watchdog(600, compile_factor=3, eval_factor=3) as dog:
      dog.start_steps(step)              # the next step compiles
      while ...:
        dog.beat(step, READING); batch = next(it)
        dog.beat(step, TRAINING); ...one step...
        dog.phase("evaluating 'val' at step 1200", dog.eval_factor); ...

  `timeout_s=None` (or 0) disables it: no thread, every call a no-op.
  """

  def __init__(self, timeout_s: float | None, *, compile_factor: float = DEFAULT_COMPILE_FACTOR,
               eval_factor: float = DEFAULT_EVAL_FACTOR, exit_code: int = EXIT_CODE):
    self.timeout_s = timeout_s or None
    self.compile_factor = check_factor(compile_factor, "compile_factor")
    self.eval_factor = check_factor(eval_factor, "eval_factor")
    self.exit_code = exit_code
    self._first_step = -1
    # The loop's last report: (monotonic time, step, activity), and the
    # phase that overrides it until the next beat: (text, allowance s).
    self._beat: tuple[float, int, str] = (time.monotonic(), 0, "starting")
    self._phase: tuple[str, float] | None = None
    self._wake = threading.Event()
    self._stopped = False
    self._thread: threading.Thread | None = None
    # How often the thread looks: detection comes at most this late.
    self._poll_s = min(1.0, (self.timeout_s or 0) / 10)

  @classmethod
  def from_config(cls, config: Any) -> Watchdog:
    """From `config.watchdog`, `watchdog_compile_factor`, `watchdog_eval_factor`."""
    return cls(parse_seconds(config.watchdog, "config.watchdog"),
               compile_factor=check_factor(config.watchdog_compile_factor,
                                           "config.watchdog_compile_factor"),
               eval_factor=check_factor(config.watchdog_eval_factor,
                                        "config.watchdog_eval_factor"))

  @property
  def enabled(self) -> bool:
    return self.timeout_s is not None

  def __enter__(self) -> Self:
    if self.enabled:
      self._beat = (time.monotonic(), self._beat[1], self._beat[2])
      self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
      self._thread.start()
      _log.info("Watchdog: a step may take %s, the first step %s, an evaluation or "
                "checkpoint save %s; then the process exits with code %d.",
                _fmt(self.timeout_s), _fmt(self.timeout_s * self.compile_factor),
                _fmt(self.timeout_s * self.eval_factor), self.exit_code)
    return self

  def __exit__(self, *exc: object) -> None:
    self._stopped = True
    self._wake.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
      faulthandler.cancel_dump_traceback_later()

  # -- What the loop calls. Cheap: assignments only, nothing is formatted.

  def start_steps(self, step: int) -> None:
    """The next step (0-based `step`) is the first since start: it compiles."""
    self._first_step = step
    self.beat(step, READING)

  def beat(self, step: int, activity: str) -> None:
    """Progress: step `step` (0-based) is now `activity` (READING, TRAINING)."""
    self._beat = (time.monotonic(), step, activity)
    self._phase = None

  def phase(self, text: str, factor: float = 1.0) -> None:
    """Progress, and now a phase that may take `factor` x the step allowance."""
    if self.timeout_s is not None:
      # The time first: the watcher never pairs the new phase with an old time.
      self._beat = (time.monotonic(), self._beat[1], self._beat[2])
      self._phase = (text, self.timeout_s * factor)

  # -- The watching thread.

  def _current(self) -> tuple[float, str, float]:
    """(time of the last report, what the loop is doing, its allowance in s)."""
    while True:  # Read a consistent pair (the loop may report in between).
      phase, (since, step, activity) = self._phase, self._beat
      if phase is self._phase:
        break
    if phase is not None:
      return since, phase[0], phase[1]
    if step == self._first_step:
      what = ("waiting for the first batch" if activity == READING else
              "training the first step (XLA compilation included)")
      return since, f"{what} (step {step + 1}, the first since start or resume)", (
          self.timeout_s * self.compile_factor)
    return since, f"step {step + 1}: {activity}", self.timeout_s

  def _watch(self) -> None:
    while not self._stopped:
      since, what, allowance = self._current()
      left = since + allowance - time.monotonic()
      if left > 0:
        # The C-level backstop fires only if this thread cannot act in time.
        faulthandler.dump_traceback_later(left + _BACKSTOP_S, exit=True)
        # Poll: the next phase may have a shorter allowance than this one.
        self._wake.wait(min(left, self._poll_s))
        continue
      if self._stopped:
        return
      self._fire(what, time.monotonic() - since, allowance, since)

  def _fire(self, what: str, silent_s: float, allowance: float, since: float) -> None:
    """Reports why and where, then exits without waiting for any other thread."""
    last = time.time() - (time.monotonic() - since)
    stamp = datetime.datetime.fromtimestamp(last, datetime.UTC)
    reason = (f"Watchdog: no progress for {silent_s:.1f} s (allowed {_fmt(allowance)}) "
              f"while {what}; last progress at {stamp:%Y-%m-%d %H:%M:%S.%f} UTC "
              f"(unix {last:.3f}). Exiting with code {self.exit_code} so that the job is "
              "restarted (it resumes from its last checkpoint). Stacks of every thread:")
    faulthandler.dump_traceback_later(_BACKSTOP_S, exit=True)  # If reporting hangs.
    # stderr first, without Python-level locks: a hung thread may hold the
    # logging lock. Then the log, for handlers that are not stderr.
    try:
      try:
        os.write(sys.stderr.fileno(), (reason + "\n").encode())
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
      except (AttributeError, OSError, ValueError):  # stderr closed or not a real file
        pass
      with tempfile.TemporaryFile("w+") as f:
        faulthandler.dump_traceback(file=f, all_threads=True)
        f.seek(0)
        stacks = f.read()
      _log.error("%s\n%s", reason, stacks)
      for handler in logging.getLogger().handlers:
        handler.flush()
    finally:
      os._exit(self.exit_code)  # pylint: disable=protected-access


def _fmt(seconds: float) -> str:
  if seconds >= 120:
    return f"{seconds / 60:g} min"
  return f"{seconds:g} s"
