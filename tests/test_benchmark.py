"""Tests for the train-step benchmark (tools/benchmark.py): --baseline and --sweep."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_vision_like.tools import baseline_vit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config", "configs/vit_i1k.py:variant=S/16", "--config.model.variant=Ti/16",
        "--config.model.depth=2", "--image_size", "32", "--batch", "4"]


def _tool(*args: str) -> str:
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  proc = subprocess.run([sys.executable, "-m", "big_vision_like.tools.benchmark", *TINY, *args],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
                        check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


def _rows(out: str, header: str) -> dict[str, list[float]]:
  """{first cell: the other cells as numbers} of the markdown table after `header`."""
  lines = out[out.index(header):].splitlines()[2:]
  rows = {}
  for line in lines:
    if not line.startswith("|"):
      break
    cells = [c.strip() for c in line.strip("|").split("|")]
    rows[cells[0] if len(cells) < 10 else f"{cells[0]} {cells[1]}"] = [
        float(c) for c in (cells[1:] if len(cells) < 10 else cells[2:])]
  return rows


def test_baseline_table_has_both_rows_and_their_ratio():
  # Ours in mixed precision against the plain float32 step: the lines say so,
  # and the CPU peak is measured in our matmul dtype.
  out = _tool("--baseline", "--steps", "2", "--rounds", "2", "--baseline_dtype", "float32",
              "--config.model.dtype_mm=bfloat16", "--config.model.dtype_mm_out=float32")
  assert ("baseline compute dtype: float32; ours: model.dtype_mm=bfloat16, "
          "model.dtype_mm_out=float32") in out, out
  assert "2048x2048 bfloat16 matmul on this CPU" in out, out
  rows = _rows(out, "| step |")
  assert set(rows) == {"ours", "baseline"}, out
  for name, (step_s, img_s, mfu, cpu_s, compile_s) in rows.items():
    assert step_s > 0 and img_s > 0 and mfu > 0 and cpu_s > 0 and compile_s > 0, (name, out)
    assert np.isclose(img_s, 4 / step_s, rtol=0.01), (name, out)
  ratio = float(re.search(r"ours/baseline \(img/s\): ([0-9.]+)", out).group(1))
  assert np.isclose(ratio, rows["ours"][1] / rows["baseline"][1], rtol=0.01), out
  # Both MFUs come from the same FLOP count: MFU ratio == speed ratio.
  assert np.isclose(rows["ours"][2] / rows["baseline"][2], ratio, rtol=0.02), out
  cpu_ratio = float(re.search(r"CPU seconds per step \(baseline/ours\): ([0-9.]+)", out).group(1))
  assert np.isclose(cpu_ratio, rows["baseline"][3] / rows["ours"][3], rtol=0.05), out
  # 2 rounds of 2 steps each were timed for both.
  for name in rows:
    times = re.search(rf"^{name} step times: (.*)$", out, re.M).group(1).split()
    assert len(times) == 4, out


def test_sweep_table_has_one_row_per_cell_with_memory():
  out = _tool("--sweep", "--variants", "mu/16,Ti/16", "--batches", "2", "--steps", "1")
  rows = _rows(out, "| model |")
  assert list(rows) == ["ViT-mu/16 2", "ViT-Ti/16 2"], out
  for name, (step_s, img_s, mfu, cpu_s, mem, args, temp, compile_s) in rows.items():
    assert step_s > 0 and img_s > 0 and mfu > 0 and cpu_s > 0 and compile_s > 0, (name, out)
    assert mem >= args > 0 and temp >= 0, (name, out)
  # A bigger model holds more: Ti's params + Adam state exceed mu's.
  assert rows["ViT-Ti/16 2"][5] > rows["ViT-mu/16 2"][5], out


def test_baseline_model_matches_our_vit_size():
  step, state, batch = baseline_vit.make_baseline(
      width=192, depth=2, mlp_dim=768, num_heads=3, patch=16, num_classes=10, pool="tok",
      dtype=jnp.float32, batch=8, image_size=32)  # divides 1, 2, 4 or 8 devices
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  # patch conv + cls + pos(5 tokens) + 2 blocks + final LN + head
  block = 2 * 2 * 192 + 4 * (192 * 192 + 192) + 192 * 768 + 768 + 768 * 192 + 192
  expected = (16 * 16 * 3 * 192 + 192) + 192 + 5 * 192 + 2 * block + 2 * 192 + 192 * 10 + 10
  assert n_params == expected
  state, loss = step(state, batch)
  state, loss2 = step(state, batch)
  assert np.isfinite(float(loss)) and float(loss2) < float(loss)


def test_baseline_names_a_batch_that_does_not_split():
  two = [jax.devices()[0]] * 2  # checked before any mesh is built
  with pytest.raises(ValueError, match="batch 3 does not split over 2 devices"):
    baseline_vit.make_baseline(width=32, depth=1, mlp_dim=64, num_heads=2, patch=16,
                               num_classes=10, pool="gap", dtype=jnp.float32, batch=3,
                               image_size=32, devices=two)
