"""Inference throughput of ViT-B/16 at 224 px: our jitted predict_fn vs timm on torch CPU.

    .venv/bin/python -m big_vision_like.tools.predict_throughput run \\
        --ref_python /tmp/refvenv/bin/python [--batch 32] [--steps 10] [--rounds 2]

`run` (in the project's venv) writes one batch of random images to a scratch
folder, then runs two workers in turn, `--rounds` times (ours, timm, ours,
timm, ...), each in its own process: `ours` (this venv) and `timm` (the
reference venv, given by `--ref_python`; it needs torch and timm, not jax).
Both use the same weights: timm's `vit_base_patch16_224` (random init) saved
as safetensors and loaded by ours through the zoo entry
`vit_base_patch16_224.augreg2_in21k_ft_in1k`. Each worker times `--steps`
forward passes of the same float32 batch after warm-up (ours: compile plus
2 calls, each timed with `block_until_ready`; timm: `torch.inference_mode()`,
`torch.set_num_threads(cores)`, 2 untimed calls) and reports the median.
The first batch's logits of both are compared as a check that the two
compute the same thing.

Before starting it reads the load average (other processes share this
machine): above `--max_load` it waits (up to `--max_wait` seconds) and
reports the load it measured under; around each run it also measures how
many cores other processes kept busy (/proc/stat less the worker's own CPU
time). Prints a markdown table: img/s of each, the ratio ours/timm, machine,
versions and loads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

TIMM_NAME = "vit_base_patch16_224"
ZOO_NAME = "vit_base_patch16_224.augreg2_in21k_ft_in1k"
RES = 224
WARMUP = 2


def _loadavg() -> tuple[float, float, float]:
  with open("/proc/loadavg") as f:
    return tuple(float(v) for v in f.read().split()[:3])


def _cpu_busy_s() -> float:
  """CPU seconds all processes spent busy since boot (all cores, from /proc/stat)."""
  with open("/proc/stat") as f:
    fields = [float(v) for v in f.readline().split()[1:]]
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
  return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
  import resource
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _time(fn, steps: int) -> list[float]:
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


# ----------------------------------------------------------------------------
# workers (one process each)
# ----------------------------------------------------------------------------

def worker_timm(args) -> dict:
  import safetensors.torch
  import timm
  import torch

  cores = os.cpu_count() or 1
  torch.set_num_threads(cores)
  model = timm.create_model(TIMM_NAME, pretrained=False, num_classes=1000).float().eval()
  if os.path.exists(args.weights):
    model.load_state_dict(safetensors.torch.load_file(args.weights))
  else:  # first call: the random init becomes the weights both sides use
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                args.weights)
  images = np.load(args.images)
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  with torch.inference_mode():
    for _ in range(WARMUP):
      logits = model(x)
    times = _time(lambda: model(x), args.steps)
  np.save(args.logits, logits.numpy())
  return {"times": times, "threads": torch.get_num_threads(),
          "versions": {"torch": torch.__version__, "timm": timm.__version__,
                       "python": platform.python_version()}}


def worker_ours(args) -> dict:
  import flax
  import jax
  import jaxlib

  from big_vision_like import zoo

  loaded = zoo.load(ZOO_NAME, weights=args.weights, resolution=RES)
  predict = jax.jit(loaded.predict_fn)
  params = loaded.params
  batch = {"image": jax.device_put(np.load(args.images))}
  t0 = time.perf_counter()
  logits = predict(params, batch).block_until_ready()
  compile_s = time.perf_counter() - t0
  for _ in range(WARMUP):
    logits = predict(params, batch).block_until_ready()
  times = _time(lambda: predict(params, batch).block_until_ready(), args.steps)
  np.save(args.logits, np.asarray(logits))
  return {"times": times, "compile_s": compile_s, "devices": len(jax.devices()),
          "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                       "flax": flax.__version__, "numpy": np.__version__,
                       "python": platform.python_version()},
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


# ----------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------

def _wait_for_quiet(max_load: float, max_wait: float) -> tuple[float, float, float]:
  waited = 0.0
  load = _loadavg()
  while load[0] > max_load and waited < max_wait:
    print(f"load average {load[0]:.2f} > {max_load}: waiting 30 s", flush=True)
    time.sleep(30)
    waited += 30
    load = _loadavg()
  return load


def _worker(python: str, which: str, common: list[str], out: str) -> dict:
  """Runs one worker; adds `others_cores`: the mean number of cores that other
  processes kept busy meanwhile (all CPU time on the machine less the worker's)."""
  cmd = [python, "-m", "big_vision_like.tools.predict_throughput", which, *common,
         "--logits", os.path.join(out, f"logits_{which}.npy"),
         "--json", os.path.join(out, f"{which}.json")]
  busy0, mine0, t0 = _cpu_busy_s(), _children_cpu_s(), time.time()
  subprocess.run(cmd, check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__)))))
  others = (_cpu_busy_s() - busy0) - (_children_cpu_s() - mine0)
  with open(os.path.join(out, f"{which}.json")) as f:
    res = json.load(f)
  res["others_cores"] = max(0.0, others / (time.time() - t0))
  return res


def run(args) -> int:
  out = args.workdir or tempfile.mkdtemp(prefix="predict_throughput_")
  os.makedirs(out, exist_ok=True)
  images = os.path.join(out, "images.npy")
  np.save(images, np.random.default_rng(0).uniform(-1, 1, (args.batch, RES, RES, 3))
          .astype(np.float32))
  weights = args.weights or os.path.join(out, f"{TIMM_NAME}.safetensors")
  common = ["--images", images, "--weights", weights, "--steps", str(args.steps)]
  start_load = _wait_for_quiet(args.max_load, args.max_wait)
  print(f"load average at start: {start_load}", flush=True)
  results = {"ours": [], "timm": []}
  loads = []
  order = ["timm", "ours"] if not os.path.exists(weights) else ["ours", "timm"]
  for r in range(args.rounds):
    for which in order:
      load = _loadavg()
      python = args.ref_python if which == "timm" else sys.executable
      res = _worker(python, which, common, out)
      res["load_before"] = load
      results[which].append(res)
      loads.append(load[0])
      med = statistics.median(res["times"])
      print(f"round {r + 1} {which}: median {med:.3f} s/batch = {args.batch / med:.2f} img/s "
            f"(load before {load[0]:.2f}; other processes used {res['others_cores']:.2f} "
            "cores meanwhile)", flush=True)
  diff = float(np.max(np.abs(np.load(os.path.join(out, "logits_ours.npy"))
                             - np.load(os.path.join(out, "logits_timm.npy")))))
  _table(args, results, start_load, loads, diff)
  return 0


def _table(args, results, start_load, loads, diff) -> None:
  ips = {k: [args.batch / statistics.median(r["times"]) for r in v] for k, v in results.items()}
  best = {k: statistics.median(v) for k, v in ips.items()}
  ours_v, timm_v = results["ours"][0]["versions"], results["timm"][0]["versions"]
  print()
  print(f"machine: {_cpu_model()}, {os.cpu_count()} cores; load average at start "
        f"{start_load[0]:.2f} / {start_load[1]:.2f} / {start_load[2]:.2f} (1/5/15 min), "
        f"before each run {', '.join(f'{v:.2f}' for v in loads)} (our own runs count "
        "in it)")
  print(f"ours: jax {ours_v['jax']}, jaxlib {ours_v['jaxlib']}, flax {ours_v['flax']}, "
        f"{results['ours'][0]['devices']} XLA CPU device(s), "
        f"XLA_FLAGS={results['ours'][0]['xla_flags']!r}, compile "
        f"{results['ours'][0]['compile_s']:.1f} s; timm: torch {timm_v['torch']}, "
        f"timm {timm_v['timm']}, {results['timm'][0]['threads']} threads")
  print(f"ViT-B/16, {RES} px, float32, batch {args.batch}, median of {args.steps} timed "
        f"batches per run, {args.rounds} run(s) each, alternating; max |logit diff| ours vs "
        f"timm {diff:.2e}")
  print()
  print("| implementation | img/s per run | img/s (median of runs) | ms/img | ratio ours/timm "
        "| cores busy with other processes, per run |")
  print("| --- | --- | ---: | ---: | ---: | --- |")
  for k, label in (("ours", "ours: jit(zoo predict_fn), JAX/XLA CPU"),
                   ("timm", "timm forward, torch CPU, inference_mode")):
    ratio = best["ours"] / best["timm"] if k == "ours" else 1.0
    others = ", ".join(f"{r['others_cores']:.2f}" for r in results[k])
    print(f"| {label} | {', '.join(f'{v:.2f}' for v in ips[k])} | {best[k]:.2f} | "
          f"{1000 / best[k]:.0f} | {ratio:.2f} | {others} |")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("command", choices=("run", "ours", "timm"))
  parser.add_argument("--ref_python", default="/tmp/refvenv/bin/python",
                      help="python of a venv with torch and timm")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=10, help="timed batches per run")
  parser.add_argument("--rounds", type=int, default=2, help="runs of each, alternating")
  parser.add_argument("--max_load", type=float, default=1.5)
  parser.add_argument("--max_wait", type=float, default=600.0)
  parser.add_argument("--workdir", default=None, help="scratch folder (default: a new tmp dir)")
  parser.add_argument("--weights", default=None, help="timm ViT-B/16 safetensors "
                      "(default: the random init of the first timm run, saved)")
  # worker-only
  parser.add_argument("--images")
  parser.add_argument("--logits")
  parser.add_argument("--json")
  args = parser.parse_args(argv)
  if args.command == "run":
    return run(args)
  res = worker_ours(args) if args.command == "ours" else worker_timm(args)
  with open(args.json, "w") as f:
    json.dump(res, f)
  return 0


if __name__ == "__main__":
  sys.exit(main())
