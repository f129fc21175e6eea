"""Metric output (TensorBoard + metrics.jsonl) and training progress numbers.

`MetricWriter` sends scalars to clu's TensorBoard writer and appends one JSON
object per logged step to `{workdir}/metrics.jsonl`; only process 0 writes.
The jsonl rows are written by a background thread (`JsonlWriter`), never by
the training thread: at once to a local file, but buffered for a remote one
(gs://...), where every append rewrites the whole object: at most once per
`remote_flush_s` (2 min), at `flush()`/`close()` and at interpreter exit.
`Progress` turns step timings into img/s, img/s/core, ETA and MFU.

MFU = model FLOPs per step / step time / peak FLOP/s of all devices. Model
FLOPs come from XLA's cost analysis of the *forward* pass times three (forward
plus backward), so rematerialisation does not inflate them. The peak is a
table lookup for known accelerators; on CPU there is no published number, so
it is measured once with a large jitted float32 matmul (and logged as such).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import threading
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from clu import metric_writers
from etils import epath

# Dense peak FLOP/s per device (bf16 for accelerators), from vendor datasheets.
_PEAK_FLOPS = {
    "TPU v2": 45e12 / 2, "TPU v3": 123e12 / 2, "TPU v4": 275e12,
    "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
    "NVIDIA B200": 2250e12, "NVIDIA L4": 121e12,
}


def measure_cpu_peak_flops(n: int = 2048, repeats: int = 10,
                           dtype: Any = jnp.float32) -> float:
  """FLOP/s of a large jitted matmul on the default device set (all cores).

  Operands in `dtype`, the result in float32: for bfloat16 that is the form
  CPUs with AVX512_BF16 run fastest (see models/mixed_matmul.py).
  """
  x = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  f(x, x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(x, x).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best


def peak_flops_per_device(override: float | None = None, dtype: Any = "float32"
                          ) -> tuple[float, str]:
  """(peak FLOP/s of one device, where the number came from).

  `dtype`: the model's matmul dtype; on CPU the peak is measured in it
  (accelerators: the datasheet's dense bf16 figure).
  """
  if override:
    return float(override), "config.peak_flops"
  kind = jax.devices()[0].device_kind
  for prefix, flops in _PEAK_FLOPS.items():
    if kind.startswith(prefix):
      return flops, f"datasheet ({kind})"
  if jax.devices()[0].platform == "cpu":
    # All fake/real CPU devices share the same cores: the matmul measures the host.
    name = jnp.dtype(dtype).name
    return (measure_cpu_peak_flops(dtype=name) / jax.device_count(),
            f"measured: jitted 2048x2048 {name} matmul on this CPU")
  return float("nan"), f"unknown device kind {kind!r}"


def forward_flops(fn, *args) -> float | None:
  """FLOPs of one call of `fn(*args)` according to XLA's cost analysis."""
  try:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


class MetricsWriteError(RuntimeError):
  """metrics.jsonl could not be written (raised in the thread that logs)."""


_FLUSH, _CLOSE = object(), object()
_OPEN_WRITERS: set[JsonlWriter] = set()  # started, not closed yet (closed at exit)


def is_remote(path) -> bool:
  """gs://, s3://, ...: object stores, where an append rewrites the object."""
  return "://" in str(path)


class JsonlWriter:
  """Appends JSON rows to one file from a background thread.

  `buffer_s` = 0 writes each row as soon as the thread gets it; otherwise rows
  wait until `buffer_s` seconds after the first unwritten one, or `flush()`,
  or `close()`. A failed write is raised as `MetricsWriteError` by the next
  `append`/`flush`/`close` call (in the caller's thread); the rows of that
  write are lost, later rows are not written.
  """

  def __init__(self, path: epath.Path, *, buffer_s: float):
    self.path, self.buffer_s = path, buffer_s
    self._queue: queue.Queue = queue.Queue()
    self._error: BaseException | None = None
    self._closed = False
    self._thread = threading.Thread(target=self._run, daemon=True,
                                    name=f"JsonlWriter({path})")
    self._thread.start()
    _OPEN_WRITERS.add(self)

  def append(self, row: Mapping[str, Any]) -> None:
    self._raise_if_failed()
    if self._closed:
      raise MetricsWriteError(f"{self.path}: append after close()")
    self._queue.put(json.dumps(row) + "\n")

  def flush(self) -> None:
    """Writes every row appended so far; returns when they are written."""
    if not self._closed:
      done = threading.Event()
      self._queue.put((_FLUSH, done))
      done.wait()
    self._raise_if_failed()

  def close(self) -> None:
    """Writes what is left and stops the thread (idempotent)."""
    if not self._closed:
      self._closed = True
      self._queue.put((_CLOSE, None))
      self._thread.join()
      _OPEN_WRITERS.discard(self)
    self._raise_if_failed()

  def _raise_if_failed(self) -> None:
    if self._error is not None:
      raise MetricsWriteError(
          f"writing {self.path} failed: {type(self._error).__name__}: {self._error}"
      ) from self._error

  def _write(self, lines: list[str]) -> None:
    if not lines or self._error is not None:
      return
    try:
      with self.path.open("a") as f:
        f.write("".join(lines))
    except Exception as e:  # noqa: BLE001  # pylint: disable=broad-except
      self._error = e  # raised by the next call in the caller's thread

  def _run(self) -> None:
    pending: list[str] = []
    deadline = None  # when the oldest pending row must be written
    while True:
      timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
      try:
        item = self._queue.get(timeout=timeout)
      except queue.Empty:
        item = None  # buffer_s is up
      if isinstance(item, str):
        pending.append(item)
        if deadline is None:
          deadline = time.monotonic() + self.buffer_s
        if self.buffer_s > 0 and time.monotonic() < deadline:
          continue
        while not self._queue.empty() and isinstance(self._queue.queue[0], str):
          pending.append(self._queue.get())  # rows queued meanwhile: one write
      self._write(pending)
      pending, deadline = [], None
      if isinstance(item, tuple):
        command, done = item
        if command is _CLOSE:
          return
        done.set()


@atexit.register
def _close_open_writers() -> None:
  """Writes the rows of writers nobody closed (e.g. a run that raised)."""
  for writer in list(_OPEN_WRITERS):
    try:
      writer.close()
    except MetricsWriteError as e:
      logging.getLogger(__name__).error("%s", e)


class MetricWriter:
  """Writes scalars/images to TensorBoard and scalars to metrics.jsonl."""

  def __init__(self, workdir: str, *, is_main: bool | None = None,
               remote_flush_s: float = 120.0):
    self.is_main = jax.process_index() == 0 if is_main is None else is_main
    self.workdir = epath.Path(workdir)
    # TensorBoard only (the train loop prints its own compact log line); other
    # processes write nothing.
    self._tb = (metric_writers.SummaryWriter(str(self.workdir / "tensorboard"))
                if self.is_main else metric_writers.MultiWriter([]))
    jsonl = self.workdir / "metrics.jsonl"
    self._jsonl = (JsonlWriter(jsonl, buffer_s=remote_flush_s if is_remote(jsonl) else 0)
                   if self.is_main else None)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    self._tb.write_scalars(step, scalars)
    if self._jsonl:
      self._jsonl.append({"step": int(step), **scalars})

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    self._tb.write_images(step, images)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    self._tb.write_texts(step, texts)

  def flush(self) -> None:
    """TensorBoard and metrics.jsonl hold everything written so far."""
    self._tb.flush()
    if self._jsonl:
      self._jsonl.flush()

  def close(self) -> None:
    self._tb.close()
    if self._jsonl:
      self._jsonl.close()


class Progress:
  """Throughput, ETA and MFU between two logged steps."""

  def __init__(self, *, total_steps: int, batch_size: int, num_devices: int,
               flops_per_step: float | None, peak_flops_per_device: float,
               start_step: int = 0):
    self.total_steps = total_steps
    self.batch_size = batch_size
    self.num_devices = num_devices
    self.flops_per_step = flops_per_step
    self.peak = peak_flops_per_device * num_devices
    self._last_step = start_step
    self._last_time = time.perf_counter()
    self._paused = 0.0

  def pause(self, seconds: float) -> None:
    """Excludes time spent in evals/checkpoints from the throughput numbers."""
    self._paused += seconds

  def measure(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    steps = step - self._last_step
    dt = now - self._last_time - self._paused
    self._last_step, self._last_time, self._paused = step, now, 0.0
    if steps <= 0 or dt <= 0:
      return {}
    step_time = dt / steps
    out = {
        "perf/step_time_sec": step_time,
        "perf/img_per_sec": self.batch_size / step_time,
        "perf/img_per_sec_per_core": self.batch_size / step_time / self.num_devices,
        "perf/eta_hours": (self.total_steps - step) * step_time / 3600,
    }
    if self.flops_per_step and self.peak > 0 and np.isfinite(self.peak):
      out["perf/mfu"] = self.flops_per_step / step_time / self.peak
    return out


def log_line(step: int, total: int, scalars: Mapping[str, float]) -> str:
  """`step 100/1000 | loss 0.4213 | lr 1.0e-03 | 1234 img/s | ...` for humans."""
  parts = [f"[{jax.process_index()}] step {step}/{total}"]
  fmt = {"train/loss": "loss {:.4f}", "train/lr": "lr {:.2e}",
         "train/grad_norm": "gnorm {:.3f}", "perf/img_per_sec": "{:.0f} img/s",
         "perf/img_per_sec_per_core": "{:.0f} img/s/core",
         "perf/eta_hours": "ETA {:.2f}h", "perf/mfu": "MFU {:.3f}"}
  for key, f in fmt.items():
    if key in scalars:
      parts.append(f.format(scalars[key]))
  return " | ".join(parts)


def setup_logging() -> None:
  """Log lines say which process speaks (multi-host runs interleave them)."""
  logging.basicConfig(
      level=logging.INFO,
      format=f"%(asctime)s [p{jax.process_index()}] %(levelname)s %(message)s",
      force=True)
  # orbax and tfds log every step of every save/load at INFO through absl.
  absl_logger = logging.getLogger("absl")
  absl_logger.setLevel(logging.WARNING)
  if not any(isinstance(f, _TfdsNoise) for f in absl_logger.filters):
    absl_logger.addFilter(_TfdsNoise())


class _TfdsNoise(logging.Filter):
  """Drops TFDS's "Variant folder ... has no dataset_info.json" warning.

  TFDS warns so for a dataset folder that is being prepared (or not yet),
  every time a builder looks at it: on a first run, twice before we prepare
  the embedded datasets. A folder that stays broken still fails loudly when
  it is read (`tfds_source` names the dataset and data dir).
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.msg == "Variant folder %s has no %s" and record.args
                and str(record.args[-1]) == "dataset_info.json")
