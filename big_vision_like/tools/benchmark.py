"""Train-step throughput and MFU of a config's model, on synthetic batches.

  python -m big_vision_like.tools.benchmark --config configs/vit_i1k.py:variant=S/16 \
      --batch 32 --image_size 224 --steps 10

Builds the config's model, optimizer, mesh and sharded jitted train step with
`experiment.build`, as `train.py` does, feeds random images (so the input pipeline is not
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

from big_vision_like import config as config_lib
from big_vision_like import experiment
from big_vision_like import metrics as metrics_lib
from big_vision_like import sharding as sharding_lib


def benchmark(config, *, batch: int, image_size: int, channels: int, steps: int,
              warmup: int = 2) -> dict[str, float]:
  total = warmup + steps
  # Only the step's cost matters here: a schedule needing no dataset size.
  config = config.copy_and_resolve_references()
  config.schedule = dict(warmup_steps=1, decay_type="cosine")
  num_classes = config.model.get("num_classes") or 1000
  image_shape = (image_size, image_size, channels)
  exp = experiment.build(
      config, total_steps=max(total, 10), batch_size=batch,
      input_spec={"image": jax.ShapeDtypeStruct(image_shape, jnp.float32),
                  "labels": jax.ShapeDtypeStruct((num_classes,), jnp.float32)})
  state = exp.init_state(exp.init_params(jax.random.key(0)))
  rng = np.random.default_rng(0)
  host_batch = {
      "image": rng.uniform(-1, 1, (batch, *image_shape)).astype(np.float32),
      "labels": np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, batch)],
  }
  gbatch = sharding_lib.put_process_local_batch(host_batch, exp.batch_sharding)
  step_fn = exp.jit_train_step()
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
  fwd = exp.forward_flops_per_example()
  peak, source = metrics_lib.peak_flops_per_device(exp.config.peak_flops)
  n = jax.device_count()
  out = {
      "devices": n, "batch": batch, "compile+warmup_s": compile_and_warmup,
      "step_time_s": step_time, "img_per_sec": batch / step_time,
      "img_per_sec_per_core": batch / step_time / n,
      "gflops_per_image_fwd": (fwd or float("nan")) / 1e9,
      "achieved_tflops": 3 * (fwd or float("nan")) * batch / step_time / 1e12,
      "peak_tflops_all_devices": peak * n / 1e12,
      "mfu": 3 * (fwd or float("nan")) * batch / step_time / (peak * n),
      "params_millions": sum(x.size for x in jax.tree.leaves(exp.abstract_params)) / 1e6,
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
  config, _ = config_lib.parse_cli(["--config", args.config, "--workdir", "-", *rest])
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
