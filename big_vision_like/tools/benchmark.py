"""Train-step throughput and MFU of a config's model, on synthetic batches.

  python -m big_vision_like.tools.benchmark --config configs/vit_i1k.py:variant=S/16 \
      --batch 32 --image_size 224 --steps 10
  # ours against a hand-written flax ViT + optax.adamw step (tools/baseline_vit.py):
  python -m big_vision_like.tools.benchmark --config configs/vit_i1k.py:variant=S/16 \
      --batch 32 --baseline --steps 2 --rounds 3
  # step time and memory per device for ViT-Ti/S/B at batch 8, 16, 32:
  python -m big_vision_like.tools.benchmark --config configs/vit_i1k.py --sweep

Builds the config's model, optimizer, mesh and sharded jitted train step with
`experiment.build`, as `train.py` does, feeds random images (so the input pipeline is not
measured) and prints a table: step time, img/s, img/s/core, model GFLOPs per
image (forward, from XLA's cost analysis), achieved TFLOP/s and MFU against the
device peak (on CPU: a measured large-matmul peak, also printed).

`--baseline` answers "what does our machinery cost over the plainest code?": it
also builds the baseline step with the same sizes, batch, image size and dtype,
times both in one process in alternating blocks (so load from other processes
hits both alike) and prints both rows and ours/baseline. Both MFUs use our
model's forward FLOPs, so they compare like for like.

`--sweep` lets a user predict cost before launching: for each ViT size and
batch it compiles our step, reads XLA's memory analysis (per device: arguments
+ outputs - donated aliases + temporaries) and times a few steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from big_vision_like import config as config_lib
from big_vision_like import experiment
from big_vision_like import metrics as metrics_lib
from big_vision_like import sharding as sharding_lib
from big_vision_like.models import vit as vit_lib
from big_vision_like.tools import baseline_vit

SWEEP_VARIANTS = ("Ti/16", "S/16", "B/16")
SWEEP_BATCHES = (8, 16, 32)


@dataclasses.dataclass
class Stepper:
  """A compiled train step with its live state; `run(n)` times n steps."""
  name: str
  call: Callable[[Any, int], tuple[Any, Any]]  # (state, step index) -> (state, out)
  state: Any
  compiled: Any
  compile_s: float
  done: int = 0
  cpu_times: list[float] = dataclasses.field(default_factory=list)

  def run(self, n: int) -> list[float]:
    """Wall seconds of each of n steps; their process CPU seconds go to `cpu_times`."""
    times = []
    for _ in range(n):
      t0, c0 = time.perf_counter(), time.process_time()
      self.state, out = self.call(self.state, self.done)
      jax.block_until_ready(out)
      times.append(time.perf_counter() - t0)
      self.cpu_times.append(time.process_time() - c0)
      self.done += 1
    return times

  def memory_bytes(self) -> dict[str, int]:
    """XLA's per-device memory analysis of the compiled step."""
    m = self.compiled.memory_analysis()
    out = {k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0)
           for k in ("argument", "output", "alias", "temp")}
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def _compile(jitted: Callable, *args: Any) -> tuple[Any, float]:
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - t0


def build_ours(config, *, batch: int, image_size: int, channels: int
               ) -> tuple[Stepper, experiment.Experiment]:
  """Our train step, as train.py builds it, on one random batch."""
  # Only the step's cost matters here: a schedule needing no dataset size.
  config = config.copy_and_resolve_references()
  config.schedule = dict(warmup_steps=1, decay_type="cosine")
  num_classes = config.model.get("num_classes") or 1000
  image_shape = (image_size, image_size, channels)
  exp = experiment.build(
      config, total_steps=1000, batch_size=batch,
      input_spec={"image": jax.ShapeDtypeStruct(image_shape, jnp.float32),
                  "labels": jax.ShapeDtypeStruct((num_classes,), jnp.float32)})
  state = exp.init_state(exp.init_params(jax.random.key(0)))
  rng = np.random.default_rng(0)
  host_batch = {
      "image": rng.uniform(-1, 1, (batch, *image_shape)).astype(np.float32),
      "labels": np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, batch)],
  }
  gbatch = sharding_lib.put_process_local_batch(host_batch, exp.batch_sharding)
  key = jax.random.key(1)
  compiled, secs = _compile(exp.jit_train_step(), state, gbatch, jnp.int32(0), key)
  return Stepper("ours", lambda s, i: compiled(s, gbatch, jnp.int32(i), key),
                 state, compiled, secs), exp


def build_baseline(exp: experiment.Experiment, *, batch: int, image_size: int,
                   channels: int, dtype: str | None = None) -> Stepper:
  """The plain flax + optax.adamw step with our model's sizes (ViT configs only).

  `dtype`: the baseline's compute dtype (None: our model's `dtype_mm`).
  """
  model = exp.model
  if not isinstance(model, vit_lib.ViT) or model.pool_type not in ("gap", "tok"):
    raise SystemExit("--baseline needs a ViT config with pool_type 'gap' or 'tok'")
  dims = model._dims()  # pylint: disable=protected-access
  step, state, dev_batch = baseline_vit.make_baseline(
      width=dims["width"], depth=dims["depth"], mlp_dim=dims["mlp_dim"],
      num_heads=dims["num_heads"], patch=dims["patch_size"],
      num_classes=model.num_classes or 1000, pool=model.pool_type,
      dtype=jnp.dtype(dtype or model.dtype_mm), batch=batch, image_size=image_size,
      channels=channels, devices=exp.mesh.devices.flatten())
  compiled, secs = _compile(step, state, dev_batch)
  return Stepper("baseline", lambda s, i: compiled(s, dev_batch), state, compiled, secs)


def _rates(batch: int, step_s: float, fwd: float, peak_all: float) -> dict[str, float]:
  return {"step_time_s": step_s, "img_per_sec": batch / step_s,
          "mfu": 3 * fwd * batch / step_s / peak_all}


def benchmark(config, *, batch: int, image_size: int, channels: int, steps: int,
              warmup: int = 2) -> dict[str, float]:
  """Our step alone: the one-table report (see the module docstring)."""
  ours, exp = build_ours(config, batch=batch, image_size=image_size, channels=channels)
  t0 = time.perf_counter()
  ours.run(warmup)
  compile_and_warmup = ours.compile_s + time.perf_counter() - t0
  step_time = float(np.median(ours.run(steps)))
  fwd = exp.forward_flops_per_example() or float("nan")
  peak, source = metrics_lib.peak_flops_per_device(
      exp.config.peak_flops, getattr(exp.model, "dtype_mm", "float32"))
  n = jax.device_count()
  rates = _rates(batch, step_time, fwd, peak * n)
  out = {
      "devices": n, "batch": batch, "compile+warmup_s": compile_and_warmup,
      "step_time_s": step_time, "img_per_sec": rates["img_per_sec"],
      "img_per_sec_per_core": rates["img_per_sec"] / n,
      "gflops_per_image_fwd": fwd / 1e9,
      "achieved_tflops": 3 * fwd * batch / step_time / 1e12,
      "peak_tflops_all_devices": peak * n / 1e12,
      "mfu": rates["mfu"],
      "params_millions": sum(x.size for x in jax.tree.leaves(exp.abstract_params)) / 1e6,
  }
  out["peak_source"] = source
  return out


def compare_with_baseline(config, *, batch: int, image_size: int, channels: int,
                          steps: int, rounds: int, warmup: int = 1,
                          baseline_dtype: str | None = None) -> dict[str, Any]:
  """Ours and the baseline, timed in `rounds` alternating blocks of `steps` steps."""
  ours, exp = build_ours(config, batch=batch, image_size=image_size, channels=channels)
  base = build_baseline(exp, batch=batch, image_size=image_size, channels=channels,
                        dtype=baseline_dtype)
  for s in (ours, base):
    s.run(warmup)
    s.cpu_times.clear()
  times: dict[str, list[float]] = {"ours": [], "baseline": []}
  for r in range(rounds):
    order = (ours, base) if r % 2 == 0 else (base, ours)  # neither always goes first
    for s in order:
      times[s.name] += s.run(steps)
  fwd = exp.forward_flops_per_example() or float("nan")
  peak, source = metrics_lib.peak_flops_per_device(
      exp.config.peak_flops, getattr(exp.model, "dtype_mm", "float32"))
  peak_all = peak * jax.device_count()
  rows = {s.name: {**_rates(batch, float(np.median(times[s.name])), fwd, peak_all),
                   "cpu_s": float(np.median(s.cpu_times)),
                   "compile_s": s.compile_s, "times": times[s.name]}
          for s in (ours, base)}
  return {"rows": rows, "ratio": rows["ours"]["img_per_sec"] / rows["baseline"]["img_per_sec"],
          "cpu_ratio": rows["baseline"]["cpu_s"] / rows["ours"]["cpu_s"],
          "fwd_gflops": fwd / 1e9, "peak_source": source, "peak_all": peak_all,
          "baseline_dtype": jnp.dtype(baseline_dtype or exp.model.dtype_mm).name}


def sweep(config, *, variants=SWEEP_VARIANTS, batches=SWEEP_BATCHES, image_size: int,
          channels: int, steps: int, warmup: int = 1,
          on_row: Callable[[dict[str, Any]], None] = lambda row: None
          ) -> list[dict[str, Any]]:
  """One row per (variant, batch): memory per device and step time of our step.

  `on_row` sees each row as soon as it is measured (a long sweep prints as it goes).
  """
  peak, _ = metrics_lib.peak_flops_per_device(
      config.get("peak_flops"), config.model.get("dtype_mm", "float32"))
  peak_all = peak * jax.device_count()
  rows = []
  for variant in variants:
    for batch in batches:
      cfg = config.copy_and_resolve_references()
      cfg.model.variant = variant
      ours, exp = build_ours(cfg, batch=batch, image_size=image_size, channels=channels)
      mem = ours.memory_bytes()
      ours.run(warmup)
      ours.cpu_times.clear()
      step_s = float(np.median(ours.run(steps)))
      fwd = exp.forward_flops_per_example() or float("nan")
      rows.append({"variant": variant, "batch": batch, "compile_s": ours.compile_s,
                   **_rates(batch, step_s, fwd, peak_all),
                   "cpu_s": float(np.median(ours.cpu_times)),
                   **{f"{k}_mib": v / 2**20 for k, v in mem.items()}})
      on_row(rows[-1])
      del ours, exp
  return rows


def _print_report(config, args, r: dict[str, Any]) -> None:
  print(f"\n{config.model_name} {dict(config.model)}  image {args.image_size}px  "
        f"on {r['devices']} x {jax.devices()[0].device_kind}")
  print(f"peak: {r.pop('peak_source')}")
  width = max(len(k) for k in r)
  print("-" * (width + 16))
  for k, v in r.items():
    print(f"{k:<{width}}  {v:>12.4g}" if isinstance(v, float) else f"{k:<{width}}  {v:>12}")
  print("-" * (width + 16))


def _print_comparison(config, args, c: dict[str, Any]) -> None:
  print(f"\n{config.model_name} {dict(config.model)}  image {args.image_size}px  batch "
        f"{args.batch}  on {jax.device_count()} x {jax.devices()[0].device_kind}")
  print(f"FLOPs for both: our model's forward, {c['fwd_gflops']:.3f} GFLOPs/image x 3; "
        f"peak {c['peak_all'] / 1e9:.0f} GFLOP/s all devices ({c['peak_source']})")
  print(f"baseline compute dtype: {c['baseline_dtype']}; ours: model.dtype_mm="
        f"{config.model.get('dtype_mm', 'float32')}, model.dtype_mm_out="
        f"{config.model.get('dtype_mm_out')}")
  print(f"{args.rounds} alternating rounds of {args.steps} steps each; medians\n")
  print("| step | step time (s) | img/s | MFU | CPU s/step | compile (s) |")
  print("| --- | --- | --- | --- | --- | --- |")
  for name, row in c["rows"].items():
    print(f"| {name} | {row['step_time_s']:.4g} | {row['img_per_sec']:.4g} | "
          f"{row['mfu']:.4g} | {row['cpu_s']:.4g} | {row['compile_s']:.1f} |")
  print(f"\nours/baseline (img/s): {c['ratio']:.3f}")
  # On a shared machine wall time tracks the other processes' load; CPU seconds
  # (all threads of this process) track the work of each step much less noisily.
  print(f"ours/baseline by CPU seconds per step (baseline/ours): {c['cpu_ratio']:.3f}")
  for name, row in c["rows"].items():
    print(f"{name} step times: " + " ".join(f"{t:.3f}" for t in row["times"]))


def _print_sweep_header(args) -> None:
  print(f"\nViT at {args.image_size}px, our train step, {jax.device_count()} x "
        f"{jax.devices()[0].device_kind}; memory per device from XLA's memory analysis "
        "(args + outputs - donated + temporaries)\n")
  print("| model | global batch | step time (s) | img/s | MFU | CPU s/step "
        "| memory/device (MiB) | args | temp | compile (s) |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)


def _print_sweep_row(r: dict[str, Any]) -> None:
  print(f"| ViT-{r['variant']} | {r['batch']} | {r['step_time_s']:.3f} | "
        f"{r['img_per_sec']:.2f} | {r['mfu']:.3g} | {r['cpu_s']:.3g} | {r['total_mib']:.0f} | "
        f"{r['argument_mib']:.0f} | {r['temp_mib']:.0f} | {r['compile_s']:.1f} |", flush=True)


def _print_sweep_footer() -> None:
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"\nprocess peak RSS over the whole sweep: {rss:.0f} MiB")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--batch", type=int, default=None,
                      help="global batch (default: config.input.batch_size)")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--steps", type=int, default=10,
                      help="timed steps (per round with --baseline, per cell with --sweep)")
  parser.add_argument("--baseline", action="store_true",
                      help="also time the plain flax/optax step (tools/baseline_vit.py)")
  parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (--baseline)")
  parser.add_argument("--baseline_dtype", default=None,
                      help="the baseline's compute dtype (--baseline; default: our "
                           "model.dtype_mm), e.g. float32 against ours in bfloat16")
  parser.add_argument("--sweep", action="store_true",
                      help="ViT-Ti/S/B x batch 8/16/32: step time and memory per device")
  parser.add_argument("--variants", default=",".join(SWEEP_VARIANTS), help="(--sweep)")
  parser.add_argument("--batches", default=",".join(map(str, SWEEP_BATCHES)), help="(--sweep)")
  args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
  config, _ = config_lib.parse_cli(["--config", args.config, "--workdir", "-", *rest])
  args.batch = args.batch or config.input.batch_size
  kw = dict(image_size=args.image_size, channels=args.channels, steps=args.steps)
  if args.sweep:
    _print_sweep_header(args)
    sweep(config, variants=args.variants.split(","), on_row=_print_sweep_row,
          batches=[int(b) for b in args.batches.split(",")], **kw)
    _print_sweep_footer()
  elif args.baseline:
    _print_comparison(config, args, compare_with_baseline(
        config, batch=args.batch, rounds=args.rounds, baseline_dtype=args.baseline_dtype,
        **kw))
  else:
    _print_report(config, args, benchmark(config, batch=args.batch, **kw))
  return 0


if __name__ == "__main__":
  sys.exit(main())
