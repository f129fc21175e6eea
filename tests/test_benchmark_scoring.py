"""Tests for the scorecard benchmark (tools/benchmark_scoring.py).

One end-to-end run at tiny sizes (2,000 x 100 logits, a 1-layer ViT on 16
images) checks that every row is there with numbers, and that the metrics
it reports are right: recomputed here with plain numpy from the files it
wrote. Timings are not asserted (the machine is shared); the table logic
that turns timings into overheads and pass/fail is tested on fixed numbers.
"""

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from big_vision_like.tools import benchmark_scoring as bs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(table: str) -> dict[str, list[str]]:
  """First cell -> cells, for every body row of a markdown table."""
  out = {}
  for line in table.splitlines():
    if line.startswith("| ") and not line.startswith("| ---"):
      cells = [c.strip() for c in line.strip().strip("|").split("|")]
      out[cells[0]] = cells
  return out


def _section(text: str, heading: str) -> str:
  start = text.index(heading)
  end = text.find("\n### ", start + 1)
  return text[start:] if end < 0 else text[start:end]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("bench_scoring"))
  proc = subprocess.run(
      [sys.executable, "-m", "big_vision_like.tools.benchmark_scoring",
       "--num_examples", "2000", "--num_classes", "100", "--variant", "mu/16",
       "--image_size", "32", "--eval_examples", "16", "--batch", "8",
       "--repeats", "2", "--workdir", workdir],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return workdir, proc.stdout


def test_header_names_the_machine(tiny_run):
  _, out = tiny_run
  m = re.search(r"machine: (\d+) CPUs \((\d+) usable\), jax \S+ cpu: (\d+) x cpu", out)
  assert m, out
  assert int(m.group(1)) == os.cpu_count()


def test_offline_rows_and_metrics_recomputed_from_the_inputs(tiny_run):
  workdir, out = tiny_run
  table = _section(out, "### Offline scorer speed")
  assert "logits [2,000, 100] float32" in table
  rows = _rows(table)
  assert rows.pop("case")[2] == "wall s (median of 2)"
  assert list(rows) == [c.title for c in bs.OFFLINE_CASES.values()]
  for title, cells in rows.items():
    assert float(cells[2]) >= float(cells[3]) > 0, cells  # median >= min > 0
  targets = {t: c[4] for t, c in rows.items()}
  assert targets["start-up + imports only"] == "" == targets["(c) ReaL + mAP"]
  for title in ("(a) ReaL labels", "(b) single labels: prec@k + calibration"):
    assert re.fullmatch(r"< 10 s \((pass|FAIL)\)", targets[title]), targets[title]

  # The numbers it reports, recomputed from the files it scored.
  d = os.path.join(workdir, "offline")
  logits = np.load(os.path.join(d, "logits.npy"))
  assert logits.shape == (2000, 100) and logits.dtype == np.float32
  with open(os.path.join(d, "names.txt")) as f:
    names = f.read().split()
  index = [int(n[len("ILSVRC2012_val_"):-len(".JPEG")]) - 1 for n in names]
  assert len(set(index)) == 2000 and index != sorted(index)  # a shuffled subset
  with open(os.path.join(d, "real_folded_100.json")) as f:
    real = json.load(f)
  with open(bs.DEFAULT_REAL_JSON) as f:
    original_real = json.load(f)
  # Folding keeps the empty sets where the real file has them.
  assert [len(s) == 0 for s in real] == [len(s) == 0 for s in original_real]
  labels = dict(line.split(",") for line in
                open(os.path.join(d, "single.csv")).read().split()[1:])
  assert len(labels) == 50_000
  top1 = logits.argmax(1)
  counted = [i for i, j in enumerate(index) if real[j]]
  real1 = np.mean([top1[i] in real[index[i]] for i in counted])
  prec1 = np.mean([top1[i] == int(labels[names[i]]) for i in range(2000)])
  assert 0.2 < prec1 < 0.95  # the logits have structure
  got = rows["(a) ReaL labels"][5]
  assert f"num_counted {len(counted):,}" in got
  assert float(re.search(r"real@1 ([0-9.]+)%", got).group(1)) == pytest.approx(
      100 * real1, abs=0.006)
  got = rows["(b) single labels: prec@k + calibration"][5]
  assert float(re.search(r"prec@1 ([0-9.]+)%", got).group(1)) == pytest.approx(
      100 * prec1, abs=0.006)
  assert re.search(r"ece [0-9.]+%, nll [0-9.]+$", got), got
  assert re.search(r"real@1 [0-9.]+%, mAP [0-9.]+%$", rows["(c) ReaL + mAP"][5])


def test_inloop_rows(tiny_run):
  _, out = tiny_run
  table = _section(out, "### In-loop overhead")
  # 16 images, every 5th ReaL set empty from the first: 12 counted; 2 batches.
  assert re.search(r"ViT-mu/16 \([0-9.]+ M params, random init\) at 32px on an "
                   r"imagenet2012_real stand-in of 16 validation images \(cached\), "
                   r"batch 8 \(2 batches\); real@1 [0-9.]+% of 12 counted", table), table
  rows = _rows(table)
  assert rows.pop("measurement")[1] == "wall s / pass (median of 2)"
  assert list(rows) == list(bs.INLOOP_ROWS.values())
  for cells in rows.values():
    wall, per_image, cpu = (float(cells[i]) for i in (1, 6, 7))
    assert wall >= 0 and cpu >= 0 and per_image >= 0
  bare, real, score, val = rows.values()
  assert bare[2] == bare[5] == bare[8] == bare[9] == ""
  for cells in (bare, real, val):
    assert re.fullmatch(r"[0-2] of 2( \(up to [0-9.]+ s\))?", cells[3]), cells
  for cells in (real, val):
    for i in (2, 8):
      assert re.fullmatch(r"[+-]\d+\.\d%", cells[i]), cells
  assert re.fullmatch(r"\d+\.\d\d% of bare", score[2]), score
  assert score[3] == ""
  assert real[9] in ("pass", "FAIL", "n/a"), real
  assert re.search(r"^(No pass ended in a stall|\d+ of 6 timed passes ended in a stall)",
                   table, re.M), table


def _result(wall, cpu, end):
  return {"wall": wall, "cpu": cpu, "end": end, "examples": 100}


def test_inloop_table_arithmetic_on_fixed_times():
  wall = {"bare": [2.0, 2.2, 2.1], "multilabel": [2.5, 2.31, 2.1],
          "score": [0.021, 0.02, 0.5], "classification": [2.0, 2.1, 2.0]}
  cpu = {"bare": [4.0, 4.0, 4.0], "multilabel": [4.1, 4.1, 4.2],
         "score": [0.04, 0.04, 0.04], "classification": [4.0, 3.8, 3.8]}
  no_stall = {"bare": [0.01] * 3, "multilabel": [0.0] * 3, "classification": [0.02] * 3}
  over = bs.overheads(_result(wall, cpu, no_stall))
  assert over["wall"]["multilabel"] == pytest.approx(2.31 / 2.1 - 1)  # medians: +10%
  assert over["wall"]["score"] == pytest.approx(0.021 / 2.1)          # a share: 1%
  assert over["wall"]["classification"] == pytest.approx(2.0 / 2.1 - 1)
  assert over["stall_free"] == over["wall"]
  assert over["cpu"]["multilabel"] == pytest.approx(4.1 / 4.0 - 1)
  rows = _rows(bs.format_inloop_table(_result(wall, cpu, no_stall), 3))
  assert rows[bs.INLOOP_ROWS["multilabel"]][1:] == [
      "2.310", "+10.0%", "0 of 3", "2.310", "+10.0%", "23.10", "4.100", "+2.5%", "FAIL"]
  assert rows[bs.INLOOP_ROWS["score"]][2:] == [
      "1.00% of bare", "", "0.021", "1.00% of bare", "0.21", "0.040", "1.00% of bare", ""]
  assert rows[bs.INLOOP_ROWS["classification"]][2] == "-4.8%"
  # Passes whose final next() stalled are left out of the stall-free medians:
  # bare [2.0, 2.1] -> 2.05, multilabel [2.1] -> 2.1 (+2.4%, a pass).
  stalls = {"bare": [0.01, 8.1, 0.01], "multilabel": [3.0, 0.3, 0.02],
            "classification": [9.0, 9.0, 9.0]}
  result = _result(wall, cpu, stalls)
  over = bs.overheads(result)
  assert over["wall"]["multilabel"] == pytest.approx(2.31 / 2.1 - 1)
  assert over["stall_free"]["multilabel"] == pytest.approx(2.1 / 2.05 - 1)
  assert over["stall_free"]["score"] == pytest.approx(0.021 / 2.05)
  assert over["stall_free"]["classification"] is None  # every pass stalled
  rows = _rows(bs.format_inloop_table(result, 3))
  assert rows[bs.INLOOP_ROWS["bare"]][3:5] == ["1 of 3 (up to 8.1 s)", "2.050"]
  assert rows[bs.INLOOP_ROWS["multilabel"]][3:7] == [
      "2 of 3 (up to 3.0 s)", "2.100", "+2.4%", "21.00"]
  assert rows[bs.INLOOP_ROWS["multilabel"]][9] == "pass"
  assert rows[bs.INLOOP_ROWS["classification"]][3:7] == [
      "3 of 3 (up to 9.0 s)", "n/a", "n/a", "n/a"]
  assert bs.stall_note(result) == (
      "6 of 9 timed passes ended in a stall: the eval iterator's final next() (ending "
      "the tf.data iterator) took 0.3 to 9.0 s; the other passes' took at most 0.020 s.")
  assert bs.stall_note(_result(wall, cpu, no_stall)).startswith(
      "No pass ended in a stall: the eval iterator's final next() took at most 0.020 s")


def test_end_timer_passes_batches_through_and_times_the_end():
  class Passes:
    skipped = 3

    def __iter__(self):
      yield from ({"i": i} for i in range(3))
      time.sleep(0.3)  # ending the pass is slow

  timer = bs._EndTimer(Passes())
  assert [b["i"] for b in timer] == [0, 1, 2]
  assert timer.last >= 0.3
  assert timer.skipped == 3  # other attributes are the wrapped iterable's
  assert [b["i"] for b in timer] == [0, 1, 2]  # re-iterable


def test_offline_table_pass_fail_on_the_median():
  results = {"real": {"times": [9.0, 12.0, 11.0], "metrics": {"real@1": 0.5, "real@5": 0.75,
                                                              "num_counted": 46837.0}},
             "single": {"times": [9.9, 9.0, 30.0], "metrics": {"prec@1": 0.125}}}
  rows = _rows(bs.format_offline_table(results, 3))
  assert rows["(a) ReaL labels"][2:] == [
      "11.00", "9.00", "< 10 s (FAIL)", "real@1 50.00%, real@5 75.00%, num_counted 46,837"]
  assert rows["(b) single labels: prec@k + calibration"][2:] == [
      "9.90", "9.00", "< 10 s (pass)", "prec@1 12.50%"]
  assert "start-up + imports only" not in rows


@pytest.mark.parametrize("argv, culprit", [
    (["--num_examples", "50001", "--skip_inloop"], "--num_examples must be in [1, 50,000]"),
    (["--num_classes", "1", "--skip_inloop"], "--num_classes must be >= 2"),
    (["--real_json", "/nonexistent/real.json", "--skip_inloop"],
     "--real_json /nonexistent/real.json does not exist"),
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--skip_offline", "--skip_inloop"], "leave nothing to measure"),
    (["--variant", "Q/16", "--skip_offline"],
     "--variant: model.variant='Q/16': unknown ViT size 'Q'"),
])
def test_bad_flags_name_the_culprit(argv, culprit, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    bs.main([*argv, "--workdir", str(tmp_path)])
  assert e.value.code == 2
  assert culprit in capsys.readouterr().err
