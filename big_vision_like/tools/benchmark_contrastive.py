"""Memory and speed of the contrastive losses: dense vs chunked SigLIP, dense CLIP.

  python -m big_vision_like.tools.benchmark_contrastive [--batch 4096] \\
      [--width 768] [--repeats 5] [--devices 8]

The dense losses build the full [B, B] logit matrix (under jit each device
holds its [B/n, B] rows, plus all texts gathered); `chunked_siglip_loss`
passes text chunks around a ring and never holds more than one
[B/n, B/n] block. This tool shows what that buys: for each loss it jits one
training-like step, `value_and_grad` of the loss w.r.t. both embeddings,
with the embeddings and their gradients sharded over the batch on a
("data", n) mesh, and prints a table.

Memory comes from XLA's analysis of the compiled executable
(`compile().memory_analysis()`): the SPMD program every device runs, so the
sizes are per device. "temp" is the scratch memory of the step (logits,
gathered texts, ring buffers), the part that depends on the loss; "total"
adds the argument and output buffers (minus aliased ones). Runtime peaks
from `device.memory_stats()` are added when the platform reports them (GPU,
TPU; not CPU), as the process-wide peak after each row, rows run in the
printed order.

Step time is wall time per call after one warm-up call (compilation
excluded and reported apart), median and min of `--repeats`.

By default the step runs on `--devices` fake CPU devices (the tool sets
XLA_FLAGS before importing jax, so run it as its own process); with
`--devices 0` it uses the devices jax finds (e.g. GPUs or TPUs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Sequence

import numpy as np

# jax is imported in `run`, after XLA_FLAGS is set from the flags; tests
# that only format tables or build inputs stay free of a jax backend.

ROWS = {
    "siglip_chunked": "SigLIP, chunked (ring)",
    "siglip_dense": "SigLIP, dense",
    "clip_dense": "CLIP, dense (reference)",
}
T, B_BIAS = 10.0, -10.0  # SigLIP's initial scale and bias
MIB = 2.0 ** 20


def make_inputs(batch: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Seeded L2-normalised embeddings; each text is a noisy copy of its image."""
  rng = np.random.default_rng(seed)
  zimg = rng.normal(size=(batch, width))
  ztxt = zimg + 2.0 * rng.normal(size=(batch, width))
  zimg /= np.linalg.norm(zimg, axis=1, keepdims=True)
  ztxt /= np.linalg.norm(ztxt, axis=1, keepdims=True)
  return zimg.astype(np.float32), ztxt.astype(np.float32)


def _set_fake_devices(n: int) -> None:
  flag = f"--xla_force_host_platform_device_count={n}"
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count=")]
  os.environ["XLA_FLAGS"] = " ".join([*flags, flag])
  os.environ["JAX_PLATFORMS"] = "cpu"


def run(batch: int, width: int, repeats: int, devices: int) -> dict[str, Any]:
  """Compiles, measures and times every row; returns the numbers and setup."""
  if devices:
    _set_fake_devices(devices)
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P

  from big_vision_like import contrastive
  from big_vision_like import sharding as sharding_lib

  n = jax.device_count()
  if devices and n != devices:
    raise SystemExit(f"benchmark_contrastive: asked for --devices {devices} but jax "
                     f"has {n}; jax was initialised before XLA_FLAGS could be set "
                     "(run the tool as its own process)")
  if batch % n:
    raise SystemExit(f"benchmark_contrastive: --batch {batch} is not divisible by "
                     f"the {n} devices")
  mesh = sharding_lib.make_mesh([("data", n)])
  rows_sharding = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())
  zimg_np, ztxt_np = make_inputs(batch, width)
  zimg = jax.device_put(zimg_np, rows_sharding)
  ztxt = jax.device_put(ztxt_np, rows_sharding)
  t, b = jnp.float32(T), jnp.float32(B_BIAS)

  losses = {
      "siglip_chunked": lambda zi, zt: contrastive.chunked_siglip_loss(
          zi, zt, t, b, mesh=mesh, axis="data")[0],
      "siglip_dense": lambda zi, zt: contrastive.siglip_loss(zi, zt, t, b)[0],
      "clip_dense": lambda zi, zt: contrastive.clip_loss(zi, zt, t)[0],
  }
  has_stats = jax.devices()[0].memory_stats() is not None
  results, grads = {}, {}
  for name in ROWS:
    step = jax.jit(jax.value_and_grad(losses[name], argnums=(0, 1)),
                   out_shardings=(replicated, (rows_sharding, rows_sharding)))
    t0 = time.perf_counter()
    compiled = step.lower(zimg, ztxt).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    loss, grads[name] = jax.block_until_ready(compiled(zimg, ztxt))  # warm-up
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(zimg, ztxt))
      times.append(time.perf_counter() - t0)
    row = {
        "args_mib": mem.argument_size_in_bytes / MIB,
        "out_mib": mem.output_size_in_bytes / MIB,
        "temp_mib": mem.temp_size_in_bytes / MIB,
        "total_mib": (mem.argument_size_in_bytes + mem.output_size_in_bytes
                      + mem.temp_size_in_bytes - mem.alias_size_in_bytes) / MIB,
        "compile_s": compile_s,
        "step_ms_median": 1e3 * statistics.median(times),
        "step_ms_min": 1e3 * min(times),
        "loss": float(loss),
    }
    if has_stats:
      row["device_peak_mib"] = jax.devices()[0].memory_stats().get(
          "peak_bytes_in_use", float("nan")) / MIB
    results[name] = row
  # The chunked loss must be the dense one: say how close, next to the speed.
  max_grad_diff = max(
      float(jnp.max(jnp.abs(x - y)))
      for x, y in zip(grads["siglip_chunked"], grads["siglip_dense"]))
  return {
      "rows": results, "devices": n, "platform": jax.devices()[0].platform,
      "batch": batch, "width": width, "repeats": repeats, "has_stats": has_stats,
      "max_grad_diff": max_grad_diff,
  }


def format_table(r: dict[str, Any]) -> str:
  """The aligned text table (and setup lines) for `run`'s result."""
  n, batch, width = r["devices"], r["batch"], r["width"]
  local = batch // n
  cols = [("args MiB", "args_mib", ".2f"), ("out MiB", "out_mib", ".2f"),
          ("temp MiB", "temp_mib", ".2f"), ("total MiB", "total_mib", ".2f")]
  if r["has_stats"]:
    cols.append(("dev peak MiB", "device_peak_mib", ".2f"))
  cols += [("compile s", "compile_s", ".2f"),
           (f"step ms (med of {r['repeats']})", "step_ms_median", ".1f"),
           ("step ms (min)", "step_ms_min", ".1f"), ("loss", "loss", ".6f")]
  first = max(len("loss fn"), *(len(t) for t in ROWS.values()))
  widths = [max(len(title), 9) for title, _, _ in cols]
  lines = [
      f"value_and_grad w.r.t. zimg, ztxt [{batch:,}, {width}] float32, sharded "
      f"over ('data', {n}) on {n} x {r['platform']}: B_local = {local:,}",
      f"logits per device: dense [{local:,}, {batch:,}] = "
      f"{4 * local * batch / MIB:.2f} MiB; chunked block [{local:,}, {local:,}] = "
      f"{4 * local * local / MIB:.2f} MiB (float32)",
      "memory: XLA compiled memory_analysis(), per device"
      + ("; dev peak: device.memory_stats() peak_bytes_in_use, process-wide, "
         "cumulative over rows" if r["has_stats"] else
         f"; device.memory_stats(): not available on {r['platform']}"),
  ]
  header = f"{'loss fn':<{first}}  " + "  ".join(
      f"{title:>{w}}" for (title, _, _), w in zip(cols, widths))
  lines += ["-" * len(header), header, "-" * len(header)]
  for key, title in ROWS.items():
    row = r["rows"][key]
    lines.append(f"{title:<{first}}  " + "  ".join(
        f"{row[k]:>{w}{fmt}}" for (_, k, fmt), w in zip(cols, widths)))
  lines.append("-" * len(header))
  chunked, dense = r["rows"]["siglip_chunked"], r["rows"]["siglip_dense"]
  lines.append(
      f"chunked vs dense SigLIP: |loss diff| {abs(chunked['loss'] - dense['loss']):.2e}, "
      f"max |grad diff| {r['max_grad_diff']:.2e}; temp memory "
      f"{chunked['temp_mib'] / dense['temp_mib']:.2f}x, step time "
      f"{chunked['step_ms_median'] / dense['step_ms_median']:.2f}x of dense")
  return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=4096, help="global batch size")
  parser.add_argument("--width", type=int, default=768, help="embedding width")
  parser.add_argument("--repeats", type=int, default=5, help="timed calls per loss")
  parser.add_argument("--devices", type=int, default=8,
                      help="fake CPU devices; 0 = the devices jax finds")
  args = parser.parse_args(argv)
  if args.batch < 1:
    parser.error(f"--batch must be >= 1, got {args.batch}")
  if args.width < 1:
    parser.error(f"--width must be >= 1, got {args.width}")
  if args.repeats < 1:
    parser.error(f"--repeats must be >= 1, got {args.repeats}")
  if args.devices < 0:
    parser.error(f"--devices must be >= 0, got {args.devices}")
  if args.devices and args.batch % args.devices:
    parser.error(f"--batch {args.batch} is not divisible by --devices {args.devices}")
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  print(format_table(run(args.batch, args.width, args.repeats, args.devices)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
