"""Memory and step time of data parallelism vs FSDP vs FSDP + tensor parallelism.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python -m big_vision_like.tools.benchmark_sharding [--quick]

Why: sharding is chosen by config alone (`config.mesh`, `config.sharding_rules`,
`config.sharding_strategy`); this shows what each choice costs, with the
same set-up as `train.py` (`experiment.build`: sharded state, jitted train step).

Table 1, memory: per-device bytes of params + Adam state (fp32 moments) of a
ViT-L/16 (--quick: ViT-S/16), computed from abstract shapes and the
shardings (a replicated ViT-L on 8 fake CPU devices would need ~29 GB of
host RAM), and, for the FSDP setups, measured on the materialised state.

Table 2, step time: the real jitted train step of a ViT-B/16 at 224px,
batch 16 (--quick: ViT-mu/4 at 32px), on 8 fake CPU devices: median of a
few steps after compilation. On a CPU the 8 "devices" share the same cores,
so this measures the overhead of each layout, not a speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from big_vision_like import experiment
from big_vision_like import sharding as sharding_lib

# name -> (mesh, sharding_rules, sharding_strategy)
FSDP_RULES = list(sharding_lib.FSDP_RULES)
TP_RULES = list(sharding_lib.TP_RULES)
SETUPS: dict[str, tuple[list, list | None, list]] = {
    "replicated (DP)": ([("data", 8)], None, [(".*", "replicate")]),
    "fsdp regex rule": ([("fsdp", 8)], None, [(".*", "fsdp(min_size_mb=1)")]),
    "fsdp logical": ([("fsdp", 8)], FSDP_RULES, [(".*", "logical")]),
    "fsdp4 + tp2 logical": ([("fsdp", 4), ("model", 2)], TP_RULES, [(".*", "logical")]),
}
STEP_SETUPS = ("replicated (DP)", "fsdp logical", "fsdp4 + tp2 logical")


def _experiment(mesh: list, variant: str, rules: list | None, strategy: list,
                image_size: int, batch: int) -> experiment.Experiment:
  """A ViT classifier experiment with Adam, built as train.py builds one."""
  config = ml_collections.ConfigDict(dict(
      model_name="vit", model=dict(variant=variant, num_classes=1000, pool_type="tok"),
      loss="softmax_xent", optax_name="adam", lr=1e-3, mesh=mesh,
      schedule=dict(decay_type="constant"), sharding_strategy=strategy))
  if rules:
    config.sharding_rules = rules
  spec = {"image": jax.ShapeDtypeStruct((image_size, image_size, 3), jnp.float32),
          "labels": jax.ShapeDtypeStruct((1000,), jnp.float32)}
  return experiment.build(config, input_spec=spec, total_steps=100, batch_size=batch)


def _mib(n: float) -> str:
  return f"{n / 2**20:,.1f}"


def memory_table(variant: str, image_size: int, materialize: tuple[str, ...]
                 ) -> list[dict[str, Any]]:
  """Per-device bytes of params and Adam state for each setup; the setups in
  `materialize` are also created and measured."""
  rows = []
  for name, (mesh_cfg, rules, strategy) in SETUPS.items():
    exp = _experiment(mesh_cfg, variant, rules, strategy, image_size, batch=8)
    abstract, ssh = exp.abstract_state, exp.state_shardings
    stats = {k: sharding_lib.memory_stats(abstract[k], ssh[k]) for k in ("params", "opt")}
    row = dict(setup=name, mesh=" ".join(f"{a}={s}" for a, s in exp.mesh.shape.items()),
               num_params=sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"])),
               params_total=stats["params"]["total_bytes"],
               params_dev=stats["params"]["max_device_bytes"],
               opt_dev=stats["opt"]["max_device_bytes"], measured_dev=None)
    if name in materialize:
      state = exp.init_state(exp.init_params(jax.random.key(0)))
      measured = {k: sharding_lib.memory_stats(state[k]) for k in ("params", "opt")}
      row["measured_dev"] = sum(m["max_device_bytes"] for m in measured.values())
      del state
    rows.append(row)
  return rows


def step_table(variant: str, image_size: int, batch: int, steps: int
               ) -> list[dict[str, Any]]:
  """Median step time of the real jitted train step for each setup."""
  rows = []
  rng = np.random.default_rng(0)
  host = {"image": rng.uniform(-1, 1, (batch, image_size, image_size, 3)).astype(np.float32),
          "labels": np.eye(1000, dtype=np.float32)[rng.integers(0, 1000, batch)]}
  for name in STEP_SETUPS:
    mesh_cfg, rules, strategy = SETUPS[name]
    exp = _experiment(mesh_cfg, variant, rules, strategy, image_size, batch=batch)
    state = exp.init_state(exp.init_params(jax.random.key(0)))
    step_fn = exp.jit_train_step()
    gbatch = sharding_lib.put_process_local_batch(host, exp.batch_sharding)
    key = jax.random.key(1)
    t0 = time.perf_counter()
    state, m = step_fn(state, gbatch, jnp.int32(0), key)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(steps):
      t0 = time.perf_counter()
      state, m = step_fn(state, gbatch, jnp.int32(i + 1), key)
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t0)
    rows.append(dict(setup=name, mesh=" ".join(f"{a}={s}" for a, s in exp.mesh.shape.items()),
                     compile_s=compile_s, step_s=statistics.median(times),
                     loss=float(m["train/loss"])))
    del state
  return rows


def print_memory(rows: list[dict[str, Any]], title: str) -> None:
  print(f"\n{title}")
  print("| setup | mesh | params MiB/dev | adam MiB/dev | total MiB/dev | vs replicated "
        "| measured MiB/dev |")
  print("|---|---|---|---|---|---|---|")
  base = rows[0]["params_dev"] + rows[0]["opt_dev"]
  for r in rows:
    total = r["params_dev"] + r["opt_dev"]
    measured = "-" if r["measured_dev"] is None else _mib(r["measured_dev"])
    print(f"| {r['setup']} | {r['mesh']} | {_mib(r['params_dev'])} | {_mib(r['opt_dev'])} "
          f"| {_mib(total)} | {total / base:.3f} | {measured} |")


def print_steps(rows: list[dict[str, Any]], title: str) -> None:
  print(f"\n{title}")
  print("| setup | mesh | compile+1st step s | median step s | loss |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['setup']} | {r['mesh']} | {r['compile_s']:.1f} | {r['step_s']:.3f} "
          f"| {r['loss']:.4f} |")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="small models (ViT-S/16 memory, ViT-mu/4 steps), for tests")
  parser.add_argument("--steps", type=int, default=None, help="timed steps (median)")
  parser.add_argument("--no_materialize", action="store_true",
                      help="skip materialising the FSDP states (memory from shapes only)")
  args = parser.parse_args(argv)
  if jax.device_count() < 8:
    raise SystemExit(f"benchmark_sharding needs 8 devices, found {jax.device_count()}; on "
                     "a CPU set XLA_FLAGS=--xla_force_host_platform_device_count=8")
  devices = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
  if args.quick:
    mem_variant, mem_size, step_variant, step_size, batch = "S/16", 224, "mu/4", 32, 16
    steps = args.steps or 2
    materialize = ("fsdp logical",)
  else:
    mem_variant, mem_size, step_variant, step_size, batch = "L/16", 224, "B/16", 224, 16
    steps = args.steps or 3
    materialize = ("fsdp logical", "fsdp4 + tp2 logical")
  rows = memory_table(mem_variant, mem_size,
                      materialize=() if args.no_materialize else materialize)
  print_memory(rows, f"Memory: ViT-{mem_variant} ({rows[0]['num_params'] / 1e6:.1f}M "
               f"params, {_mib(rows[0]['params_total'])} MiB), Adam fp32 moments, "
               f"{devices}")
  steps_rows = step_table(step_variant, step_size, batch, steps)
  print_steps(steps_rows, f"Step time: ViT-{step_variant} at {step_size}px, batch {batch}, "
              f"median of {steps} steps, {devices}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
