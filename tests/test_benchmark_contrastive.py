"""The contrastive-loss benchmark (tools/benchmark_contrastive.py).

One run in its own process at a small size (batch 512, width 32, 8 fake CPU
devices) checks that every row is there with numbers, that the losses it
prints are the right ones (recomputed with numpy from the same seeded
inputs) and that the compiled chunked loss needs less scratch memory than
the dense one (XLA's memory analysis is deterministic; timings are not
asserted on a shared machine). Table formatting and flag errors are tested
on fixed numbers, without jax.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from big_vision_like.tools import benchmark_contrastive as bc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM = r"(-?[0-9]+\.[0-9]+)"


def _numpy_losses(zimg, ztxt, t, b):
  logits = t * zimg.astype(np.float64) @ ztxt.astype(np.float64).T
  n = len(logits)
  pos = np.diag(logits)
  lse = lambda x, axis: np.log(np.exp(x).sum(axis=axis))
  clip = 0.5 * (np.mean(lse(logits, 1) - pos) + np.mean(lse(logits, 0) - pos))
  labels = 2 * np.eye(n) - 1
  return clip, np.sum(np.logaddexp(0, -labels * (logits + b))) / n


def _table_rows(out: str) -> dict[str, list[float]]:
  rows = {}
  for title in bc.ROWS.values():
    line = next(l for l in out.splitlines() if l.startswith(title))
    rows[title] = [float(x) for x in line[len(title):].split()]
  return rows


@pytest.fixture(scope="module")
def small_run():
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  proc = subprocess.run(
      [sys.executable, "-m", "big_vision_like.tools.benchmark_contrastive",
       "--batch", "512", "--width", "32", "--repeats", "2"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


def test_small_run_prints_every_row_with_the_right_losses(small_run):
  out = small_run
  assert ("value_and_grad w.r.t. zimg, ztxt [512, 32] float32, sharded over "
          "('data', 8) on 8 x cpu: B_local = 64") in out
  assert "logits per device: dense [64, 512] = 0.12 MiB; chunked block [64, 64]" in out
  assert "memory: XLA compiled memory_analysis(), per device; " \
         "device.memory_stats(): not available on cpu" in out
  rows = _table_rows(out)
  # args, out, temp, total MiB, compile s, step ms median, min, loss
  chunked, dense, clip = (rows[t] for t in bc.ROWS.values())
  for cells in rows.values():
    assert len(cells) == 8
    args, outs, temp, total, compile_s, med, best, _ = cells
    assert args > 0 and outs > 0 and temp > 0 and compile_s > 0
    assert total == pytest.approx(args + outs + temp, abs=0.02)  # rounded cells
    assert med >= best > 0
  # Both embeddings [512, 32] float32 split over 8 devices: 2 x 8 KiB each.
  assert chunked[0] == dense[0] == clip[0] == 0.02
  # The dense step holds [64, 512] logits (and friends); the ring does not.
  assert chunked[2] < dense[2] / 2

  want_clip, want_siglip = _numpy_losses(*bc.make_inputs(512, 32), bc.T, bc.B_BIAS)
  assert chunked[7] == pytest.approx(want_siglip, abs=2e-6)
  assert dense[7] == pytest.approx(want_siglip, abs=2e-6)
  assert clip[7] == pytest.approx(want_clip, abs=2e-6)
  m = re.search(rf"chunked vs dense SigLIP: \|loss diff\| ([0-9.e+-]+), max \|grad diff\| "
                rf"([0-9.e+-]+); temp memory {NUM}x, step time {NUM}x of dense", out)
  assert m, out
  assert float(m.group(1)) < 1e-5 and float(m.group(2)) < 1e-6
  assert float(m.group(3)) == pytest.approx(chunked[2] / dense[2], abs=0.02)


def test_make_inputs_are_normalised_and_seeded():
  zimg, ztxt = bc.make_inputs(64, 64)
  np.testing.assert_allclose(np.linalg.norm(zimg, axis=1), 1, rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(ztxt, axis=1), 1, rtol=1e-6)
  np.testing.assert_array_equal(zimg, bc.make_inputs(64, 64)[0])
  # Texts are noisy copies: each pair is closer than an average pair.
  assert np.mean(np.sum(zimg * ztxt, 1)) > np.mean(zimg @ ztxt.T) + 0.2


def test_format_table_on_fixed_numbers():
  row = dict(args_mib=1.5, out_mib=1.5, temp_mib=8.0, total_mib=11.0, compile_s=0.3,
             step_ms_median=700.04, step_ms_min=650.0, loss=10.25)
  r = {"devices": 8, "platform": "gpu", "batch": 4096, "width": 768, "repeats": 3,
       "has_stats": True, "max_grad_diff": 3e-9,
       "rows": {"siglip_chunked": dict(row, device_peak_mib=20.0),
                "siglip_dense": dict(row, temp_mib=32.0, step_ms_median=875.05,
                                     device_peak_mib=60.0),
                "clip_dense": dict(row, loss=8.5, device_peak_mib=60.0)}}
  text = bc.format_table(r)
  assert "logits per device: dense [512, 4,096] = 8.00 MiB; chunked block [512, 512] = " \
         "1.00 MiB (float32)" in text
  assert "dev peak: device.memory_stats() peak_bytes_in_use" in text
  assert "step ms (med of 3)" in text
  rows = _table_rows(text)
  assert rows["SigLIP, dense"] == [1.5, 1.5, 32.0, 11.0, 60.0, 0.3, 875.0, 650.0, 10.25]
  assert rows["CLIP, dense (reference)"][-1] == 8.5
  assert text.splitlines()[-1] == ("chunked vs dense SigLIP: |loss diff| 0.00e+00, max "
                                   "|grad diff| 3.00e-09; temp memory 0.25x, step time "
                                   "0.80x of dense")


@pytest.mark.parametrize("argv, culprit", [
    (["--batch", "12"], "--batch 12 is not divisible by --devices 8"),
    (["--batch", "0"], "--batch must be >= 1"),
    (["--width", "0"], "--width must be >= 1"),
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--devices", "-1"], "--devices must be >= 0"),
])
def test_bad_flags_name_the_culprit(argv, culprit, capsys):
  with pytest.raises(SystemExit) as e:
    bc.main(argv)
  assert e.value.code == 2
  assert culprit in capsys.readouterr().err
