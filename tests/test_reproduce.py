"""tools/reproduce: recorded values match BENCHMARKS.md, and its readers read real output."""

import os
import sys
import types

import pytest

from big_vision_like.tools import benchmark
from big_vision_like.tools import benchmark_input
from big_vision_like.tools import benchmark_scoring
from big_vision_like.tools import reproduce
from tests.helpers import tiny_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_recorded_value_is_written_in_benchmarks_md():
  with open(os.path.join(REPO, "BENCHMARKS.md")) as f:
    text = f.read()
  for headline in reproduce.HEADLINES:
    for metric, value in headline.recorded.items():
      assert value in text, (headline.name, metric, value)
      reproduce.recorded_number(value)  # parses


def test_reads_the_benchmark_tools_own_tables(capsys):
  def phase(ips, cpu_ms):
    return {"img_per_sec": ips, "img_per_sec_per_core": ips / 2, "cpu_ms_per_img": cpu_ms,
            "images": 100, "cores_busy": 1.9,
            "peak_rss_mib": 900.0}
  table = benchmark_input.format_table({
      "bare_train": phase(1000.0, 2.0), "train": phase(1100.0, 1.8),
      "train_randaug": phase(870.0, 2.3), "bare_eval": phase(900.0, 2.1),
      "eval": phase(855.0, 2.2)})
  got = reproduce.BY_NAME["input"].parse("", "noise\n" + table + "\nmore noise")
  assert got == pytest.approx({"train_vs_bare": 1.10, "randaug_vs_bare": 0.87,
                               "eval_vs_bare": 0.95})

  table = benchmark_scoring.format_offline_table(
      {"real": {"times": [1.3, 1.2, 1.25], "metrics": {}},
       "single": {"times": [2.5, 2.4, 2.3], "metrics": {}}}, repeats=3)
  assert reproduce.BY_NAME["scorer"].parse("", table) == {"real_s": 1.25, "single_s": 2.4}

  def row(step, ips, mfu):
    return {"step_time_s": step, "img_per_sec": ips, "mfu": mfu, "cpu_s": 2 * step,
            "compile_s": 8.0, "times": [step]}
  comparison = {"fwd_gflops": 9.2, "peak_all": 1.75e11, "peak_source": "measured",
                "rows": {"ours": row(7.47, 4.284, 0.6767),
                         "baseline": row(7.081, 4.519, 0.7138)},
                "ratio": 0.948, "cpu_ratio": 0.947, "baseline_dtype": "float32"}
  benchmark._print_comparison(  # pylint: disable=protected-access
      types.SimpleNamespace(model_name="vit", model={}),
      types.SimpleNamespace(image_size=224, batch=32, rounds=3, steps=3), comparison)
  out = capsys.readouterr().out
  assert reproduce.BY_NAME["vit_s16"].parse("", out) == pytest.approx(
      {"step_time_s": 7.47, "mfu": 0.6767, "ours_vs_baseline": 0.948})
  with pytest.raises(ValueError, match="ours/baseline"):
    reproduce.BY_NAME["vit_s16"].parse("", out.replace("ours/baseline (img/s)", "x"))


def test_runs_a_real_training_and_reads_its_workdir(fashion_mnist_data_dir, tmp_path):
  headline = reproduce.Headline(
      "tiny", "a 3-step run",
      ("{py}", "-m", "big_vision_like.train", "--config", "configs/fashion_vit.py:runlocal",
       "--workdir", "{workdir}", "--config.total_steps=3")
      + tuple("--config." + o for o in tiny_overrides(fashion_mnist_data_dir)),
      {"test/prec@1": "0.5", "train_min": "0 min 30 s"},
      reproduce.BY_NAME["main"].parse)
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    measured, command = reproduce.run(headline, str(tmp_path), {})
  finally:
    os.chdir(cwd)
  assert command.startswith(sys.executable)
  assert 0 <= measured["test/prec@1"] <= 1
  assert 0 < measured["train_min"] < 10
  table = reproduce.table([(headline, measured, command),
                           (reproduce.BY_NAME["scorer"], "FAILED", "")])
  assert "| tiny | test/prec@1 | 0.5 |" in table
  assert "| scorer | real_s | 1.22 | FAILED |" in table


def test_unknown_item_is_named(capsys):
  with pytest.raises(SystemExit):
    reproduce.main(["--only", "main,nope"])
  assert "nope" in capsys.readouterr().err
