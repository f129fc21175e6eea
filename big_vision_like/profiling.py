"""`config.profile`: a jax.profiler trace of a few training steps, for TensorBoard.

    config.profile = dict(first_step=10, num_steps=5)   # steps 10..14
    config.profile = 5                                  # 5 steps from the 3rd of this run

The trace is written under `{workdir}/tensorboard/plugins/profile/<run>/`,
where TensorBoard's profile plugin (`pip install tensorboard-plugin-profile`)
shows it next to the scalars; Perfetto also opens the `.xplane.pb` files.
Every process traces its own devices (one file per host). The default start
skips the first steps of a run, whose time is mostly compilation. Steps are
also marked with `StepTraceAnnotation`s, so the profiler's step view can
split the timeline per training step.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
from etils import epath

from big_vision_like import errors

# Steps after the start of this run before an int `config.profile` begins.
_WARMUP_STEPS = 2


def parse(spec: Any, start_step: int) -> tuple[int, int] | None:
  """`config.profile` -> (first_step, num_steps) in absolute steps, or None."""
  if spec is None or spec is False or spec == 0:
    return None
  if isinstance(spec, bool):
    raise errors.ConfigError("config.profile=True: give the number of steps "
                                 "(e.g. 5) or dict(first_step=..., num_steps=...)")
  if isinstance(spec, int):
    first, num = start_step + _WARMUP_STEPS, spec
  else:
    try:
      spec = dict(spec)
    except (TypeError, ValueError):
      raise errors.ConfigError(
          f"config.profile={spec!r}: give a number of steps or "
          "dict(first_step=..., num_steps=...)") from None
    unknown = sorted(set(spec) - {"first_step", "num_steps"})
    if unknown:
      raise errors.ConfigError(f"config.profile.{unknown[0]} is unknown; the keys "
                                   "are first_step and num_steps")
    first = spec.get("first_step", start_step + _WARMUP_STEPS)
    num = spec.get("num_steps", 5)
  for key, value, low in (("first_step", first, 0), ("num_steps", num, 1)):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise errors.ConfigError(f"config.profile {key}={value!r} must be an int "
                                   f">= {low}")
  return first, num


class StepProfiler:
  """Starts the trace before `first_step` and stops it after the last step.

  The loop calls `before(step)` with the number of the step about to run
  (0-based) and `after(step, outputs)` once it was dispatched; `after`
  waits for the outputs of the last traced step so that its device work is in
  the trace. A run that resumes past the window traces nothing.
  """

  def __init__(self, spec: Any, logdir: str, *, start_step: int = 0):
    self.window = parse(spec, start_step)
    self.logdir = str(epath.Path(logdir))
    self.active = False
    self.written = False

  def before(self, step: int) -> None:
    if self.window and not self.active and not self.written and step == self.window[0]:
      logging.info("Profiling steps %d..%d into %s", step,
                   step + self.window[1] - 1, self.logdir)
      jax.profiler.start_trace(self.logdir)
      self.active = True

  def annotation(self, step: int) -> Any:
    """Context manager marking one step on the trace timeline."""
    return jax.profiler.StepTraceAnnotation("train", step_num=step)

  def after(self, step: int, outputs: Any) -> None:
    if self.active and step == self.window[0] + self.window[1] - 1:
      jax.block_until_ready(outputs)
      self.stop()

  def stop(self) -> None:
    """Ends a trace still running (the run ended inside the window)."""
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      self.written = True
      logging.info("Profile written to %s", self.logdir)
