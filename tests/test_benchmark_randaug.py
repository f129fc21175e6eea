"""tools/benchmark_randaug: a real (tiny) run, and the report's arithmetic."""

from __future__ import annotations

import re

from big_vision_like.pp import randaug
from big_vision_like.tools import benchmark_randaug as br


def test_tiny_run_prints_every_pipeline_with_numbers():
  lines = []
  assert br.main(["--rounds", "2", "--images", "6", "--batches", "1",
                  "--batch", "3", "--warmup", "1"], out=lines.append) == 0
  text = "\n".join(lines)
  for name in br.VARIANTS:
    row = re.search(rf"^\| {re.escape(name)} \| ([0-9.]+) \| "
                    rf"([0-9.]+)-([0-9.]+) \|", text, re.M)
    assert row, text
    median, low, high = map(float, row.groups())
    assert 0 < low <= median <= high, text
  assert re.search(r"lowered Case / now .* now cheaper in [0-2] of 2 rounds",
                   text), text
  assert "6 JPEGs, 1 batches of 3 per timing" in text
  # The module's switches are back as they were.
  assert randaug._CASE_CAN_STAY_FUNCTIONAL and randaug._XLA_LOOKUP


def test_report_takes_per_round_differences_and_counts_wins():
  times = {br.BASE: [1.0, 2.0, 1.5],
           "lowered Case": [2.0, 3.2, 1.9],
           br.NOW: [1.5, 3.4, 1.6]}
  report = br.format_report(times)
  # randaug's own cost per round: lowered 1.0, 1.2, 0.4; now 0.5, 1.4, 0.1:
  # medians 1.0 and 0.5 (differences of the medians would say 0.5 and 0.1).
  assert "| lowered Case | 2.000 | 1.900-3.200 | 1.000 |" in report, report
  assert f"| {br.NOW} | 1.600 | 1.500-3.400 | 0.500 |" in report, report
  assert f"| {br.BASE} | 1.500 | 1.000-2.000 |  |" in report, report
  assert "now cheaper in 2 of 3 rounds" in report
  # Ratios per round 1.333, 0.941, 1.1875: median 1.1875.
  assert re.search(r"lowered Case / now per round: median 1\.18[78];",
                   report), report
