"""Train-step throughput and MFU of a config's model, on synthetic batches.

  python -m big_vision_like.tools.benchmark --config configs/vit_i1k.py:variant=S/16 \
      --batch 32 --image_size 224 --steps 10

Builds the config's model, optimizer, mesh and sharded jitted train step exactly
as `train.py` does, feeds random images (so the input pipeline is not
measured) and prints a table: step time, img/s, img/s/core, model GFLOPs per
image (forward, from XLA's cost analysis), achieved TFLOP/s and MFU against the
device peak (on CPU: a measured large-matmul peak, also printed).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from big_vision_like import metrics as metrics_lib
from big_vision_like import optim
from big_vision_like import sharding as sharding_lib
from big_vision_like import train as train_lib


def benchmark(config, *, batch: int, image_size: int, channels: int, steps: int,
              warmup: int = 2) -> dict[str, float]:
  mesh = sharding_lib.make_mesh(config.get("mesh", [("data", -1)]), dcn=config.get("mesh_dcn"))
  axes = sharding_lib.data_axes(mesh, config.get("data_axes"))
  bsharding = sharding_lib.batch_sharding(mesh, axes)
  model = train_lib.build_model(config)
  image_shape = (image_size, image_size, channels)
  strategy = sharding_lib.strategy_from_config(config)
  rules = config.get("sharding_rules")
  params, _ = train_lib.init_params(model, image_shape, jax.random.key(0), mesh, strategy,
                                    rules=rules)
  total = warmup + steps
  # Only the step's cost matters here: a schedule needing no dataset size.
  config = config.copy_and_resolve_references()
  config.schedule = dict(warmup_steps=1, decay_type="cosine")
  tx, schedule = optim.make_optimizer(config, params, total_steps=max(total, 10),
                                      batch_size=batch, num_examples=None)
  state, _, shardings = train_lib.init_state(params, tx, mesh, strategy, rules=rules)
  num_classes = config.model.get("num_classes") or 1000
  rng = np.random.default_rng(0)
  host_batch = {
      "image": rng.uniform(-1, 1, (batch, *image_shape)).astype(np.float32),
      "labels": np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, batch)],
  }
  gbatch = sharding_lib.put_process_local_batch(host_batch, bsharding)
  step_fn = train_lib.jit_train_step(config, model, tx, schedule, mesh, shardings,
                                     {k: bsharding for k in host_batch})
  key = jax.random.key(1)
  t0 = time.perf_counter()
  for i in range(warmup):
    state, m = step_fn(state, gbatch, jnp.int32(i), key)
  jax.block_until_ready(m)
  compile_and_warmup = time.perf_counter() - t0
  times = []
  for i in range(steps):
    t0 = time.perf_counter()
    state, m = step_fn(state, gbatch, jnp.int32(warmup + i), key)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  step_time = float(np.median(times))
  fwd = train_lib.forward_flops_per_image(model, params, image_shape)
  peak, source = metrics_lib.peak_flops_per_device(config.get("peak_flops"))
  n = jax.device_count()
  out = {
      "devices": n, "batch": batch, "compile+warmup_s": compile_and_warmup,
      "step_time_s": step_time, "img_per_sec": batch / step_time,
      "img_per_sec_per_core": batch / step_time / n,
      "gflops_per_image_fwd": (fwd or float("nan")) / 1e9,
      "achieved_tflops": 3 * (fwd or float("nan")) * batch / step_time / 1e12,
      "peak_tflops_all_devices": peak * n / 1e12,
      "mfu": 3 * (fwd or float("nan")) * batch / step_time / (peak * n),
      "params_millions": sum(x.size for x in jax.tree.leaves(params)) / 1e6,
  }
  out["peak_source"] = source
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--batch", type=int, default=None,
                      help="global batch (default: config.input.batch_size)")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--steps", type=int, default=10)
  args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
  config, _ = train_lib.parse_cli(["--config", args.config, "--workdir", "-", *rest])
  batch = args.batch or config.input.batch_size
  r = benchmark(config, batch=batch, image_size=args.image_size, channels=args.channels,
                steps=args.steps)
  print(f"\n{config.model_name} {dict(config.model)}  image {args.image_size}px  "
        f"on {r['devices']} x {jax.devices()[0].device_kind}")
  print(f"peak: {r.pop('peak_source')}")
  width = max(len(k) for k in r)
  print("-" * (width + 16))
  for k, v in r.items():
    print(f"{k:<{width}}  {v:>12.4g}" if isinstance(v, float) else f"{k:<{width}}  {v:>12}")
  print("-" * (width + 16))
  return 0


if __name__ == "__main__":
  sys.exit(main())
