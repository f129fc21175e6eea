"""The sharding benchmark's --quick mode, on 8 fake CPU devices in a subprocess."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(out: str, title: str) -> dict[str, list[str]]:
  """{setup: cells} of the markdown table printed under `title`."""
  lines = out.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith(title))
  rows = {}
  for line in lines[start + 3:]:
    if not line.startswith("|"):
      break
    cells = [c.strip() for c in line.strip("|").split("|")]
    rows[cells[0]] = cells[1:]
  return rows


def test_quick_benchmark_prints_memory_and_step_tables():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "big_vision_like.tools.benchmark_sharding",
                         "--quick"], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  out = proc.stdout
  # ViT-S/16 with a 1000-way head and a class token: 22,050,664 params.
  assert "Memory: ViT-S/16 (22.1M params, 84.1 MiB)" in out
  mem = _rows(out, "Memory:")
  assert list(mem) == ["replicated (DP)", "fsdp regex rule", "fsdp logical",
                       "fsdp4 + tp2 logical"]
  # Replicated: all params (84.1 MiB) and two fp32 Adam moments on each device.
  assert mem["replicated (DP)"][1:5] == ["84.1", "168.2", "252.3", "1.000"]
  # FSDP over 8 devices: ~1/8 (the small [mlp]/[heads, kv] biases and norms
  # stay replicated), and the materialised state measures the same.
  fsdp_total, ratio, measured = (float(mem["fsdp logical"][i]) for i in (3, 4, 5))
  assert 0.125 <= ratio < 0.135
  assert abs(fsdp_total - 252.3 / 8) < 0.05 * 252.3 / 8
  assert measured == fsdp_total
  # FSDP x4 + TP x2: also ~1/8 per device.
  assert 0.125 <= float(mem["fsdp4 + tp2 logical"][4]) < 0.14
  steps = _rows(out, "Step time:")
  assert list(steps) == ["replicated (DP)", "fsdp logical", "fsdp4 + tp2 logical"]
  # Same model, data, init and steps: every layout gives the same loss (up to
  # float reordering), near ln(1000) = 6.91 for a fresh 1000-way classifier.
  losses = [float(row[-1]) for row in steps.values()]
  assert max(losses) - min(losses) < 2e-3
  assert 6.0 < losses[0] < 7.5
  assert all(float(row[3]) > 0 for row in steps.values())
