"""Tests for the input pipeline benchmark (tools/benchmark_input.py)."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from big_vision_like.tools import benchmark_input as bi

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _row(table: str, title: str) -> list[str]:
  """The cells of the table row whose first cell is `title`."""
  for line in table.splitlines():
    # Split on `|` that is not escaped (pp strings contain `\|`).
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
    if cells and cells[0] == title:
      return cells
  raise AssertionError(f"No row {title!r} in:\n{table}")


def _number(cell: str) -> float:
  return float(cell.replace(",", "").split()[0])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """One end-to-end run of the tool on 40 + 20 generated images."""
  cache = str(tmp_path_factory.mktemp("bench_input"))
  proc = subprocess.run(
      [sys.executable, "-m", "big_vision_like.tools.benchmark_input",
       "--data_dir", cache, "--train_examples", "40", "--val_examples", "20",
       "--batch", "8", "--warmup_batches", "1", "--batches", "2",
       "--eval_passes", "1"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return cache, proc.stdout


def test_end_to_end_table_has_every_phase_with_sane_numbers(tiny_run):
  _, out = tiny_run
  assert re.search(r"40 train \+ 20 validation JPEGs \(quality 90\), mean "
                   r"[0-9.]+ KB", out), out
  mean_kb = float(re.search(r"mean ([0-9.]+) KB", out).group(1))
  assert 60 < mean_kb < 170, mean_kb  # ImageNet-like JPEG sizes.
  table = out[out.index("| pipeline |"):]
  for phase, spec in bi.PHASES.items():
    cells = _row(table, spec.title)
    assert len(cells) == len(bi._COLUMNS), cells
    if "randaug" in spec.pp and cells[2].startswith("n/a"):
      assert cells[2] == "n/a (op missing: randaug)"
      continue
    images = _number(cells[2])
    # Train phases time 2 batches of 8; eval phases one pass of 20.
    assert images == (16 if spec.split == "train" else 20), (phase, cells)
    img_s, per_core, cpu_ms = (_number(cells[3]), _number(cells[4]),
                               _number(cells[7]))
    assert img_s > 0 and cpu_ms > 0, cells
    assert per_core == pytest.approx(img_s / len(os.sched_getaffinity(0)),
                                     rel=0.01)
    assert 0 < _number(cells[9]) <= 1.1 * len(os.sched_getaffinity(0))
    assert _number(cells[10]) > 100, cells  # Peak RSS MiB (TF alone > 100).
    if spec.bare:  # Ratios against the bare row of the same split.
      bare = _row(table, bi.PHASES[spec.bare].title)
      assert _number(cells[5]) == pytest.approx(
          img_s / _number(bare[3]), abs=0.01)
      assert _number(cells[8]) == pytest.approx(
          _number(bare[7]) / cpu_ms, abs=0.011)
    else:
      assert cells[5] == cells[8] == ""
    if spec.target:
      assert re.fullmatch(rf">= {spec.target} \((met|MISSED)\)", cells[6])
  assert "(shuffle buffer 10,000)" in _row(table,
                                           bi.PHASES["train"].title)[10]


def test_generated_dataset_is_real_tfds_with_jpeg_bytes_stored_as_is(tiny_run):
  import tensorflow as tf
  import tensorflow_datasets as tfds
  from big_vision_like.data import tfds_source
  from big_vision_like.data import tfds_writer

  cache, _ = tiny_run
  data_dir, stats = bi.prepare_dataset(cache, train_examples=40,
                                       val_examples=20)
  assert stats["cached"] and stats["train_examples"] == 40
  builder = tfds_source.get_builder("imagenet2012", data_dir)
  assert builder.info.splits["train"].num_examples == 40
  assert builder.info.splits["validation"].num_examples == 20
  ds = builder.as_dataset(split="validation", shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  stored = list(ds.take(2).as_numpy_iterator())
  # The generator is deterministic: regenerate the first two examples and
  # compare the exact bytes (TFDS must not have re-encoded them).
  names = tfds_writer.registered_builder_info("imagenet2012").features[
      "label"].names
  sizes = []
  expected = [ex for _, ex in zip(range(2), bi._examples(
      "validation", 20, 0, 90, names, sizes))]
  for got, want in zip(stored, expected):
    assert got["image"] == want["image"]
    assert got["image"][:2] == b"\xff\xd8"  # JPEG start-of-image marker.
    assert got["label"] == want["label"]
    assert got["file_name"].decode() == want["file_name"]
    shape = tuple(tf.image.extract_jpeg_shape(got["image"]).numpy()[:2])
    assert shape in bi._SHAPES
  assert [e["file_name"] for e in expected] == [
      "ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG"]


def test_natural_image_statistics():
  rng = np.random.default_rng(1)
  image = bi.natural_image(rng, 375, 500)
  assert image.shape == (375, 500, 3) and image.dtype == np.uint8
  # Uses most of the range, is not flat, and neighbours are correlated
  # (natural images are smooth at the pixel scale, unlike white noise).
  x = image.astype(np.float64)
  assert x.std() > 20 and x.max() - x.min() > 150
  corr = np.corrcoef(x[:, :-1].ravel(), x[:, 1:].ravel())[0, 1]
  assert corr > 0.6, corr  # 0.75-0.93 over seeds; white noise: ~0.


def test_format_table_ratios_targets_and_missing_op():
  def result(img_s, cpu_ms, **extra):
    return {"images": 100, "img_per_sec": img_s, "img_per_sec_per_core":
            img_s / 2, "cpu_ms_per_img": cpu_ms, "peak_rss_mib": 1000.0,
            **extra}
  table = bi.format_table({
      "bare_train": result(200.0, 2.0),
      "train": result(160.0, 2.5, shuffle_buffer=10_000),
      "train_randaug": {"missing": "randaug"},
      "bare_eval": result(100.0, 2.0),
      "eval": result(80.0, 4.0),
  })
  train = _row(table, "ours: make_train_iterator")
  # 160 / 200 is exactly the target: met.
  assert train[2:] == ["100", "160.0", "80.0", "0.80", ">= 0.8 (met)", "2.50",
                       "0.80", "0.40", "1,000 MiB (shuffle buffer 10,000)"]
  assert train[1] == ("`decode_jpeg_and_inception_crop(224, ratio_max="
                      "1.3333333333333333, max_attempts=32, rounding='round')"
                      "\\|flip_lr\\|onehot(1000)`")
  evaluation = _row(table, "ours: make_eval_iterator")
  assert evaluation[5:10] == ["0.80", ">= 0.9 (MISSED)", "4.00", "0.50",
                              "0.32"]
  randaug = _row(table, "ours: make_train_iterator + randaug")
  assert randaug[2] == "n/a (op missing: randaug)"
  assert randaug[3:] == [""] * 8
  assert "bare, eval's work" not in table  # Phases not run are left out.


def test_paired_ratios_set_each_repeat_against_the_same_repeat_of_bare():
  def result(cpu_ms):
    return {"cpu_ms_per_img": cpu_ms}
  runs = {
      # A load during repeat 2 slowed both bare and randaug.
      "bare_train": [result(1.2), result(1.8), result(1.0)],
      "train_randaug": [result(1.5), result(2.0), result(1.3)],
      "train": [result(1.0)],  # Fewer repeats: only the pairs that exist.
      "eval": [{"missing": "x"}, result(2.0)],  # No bare_eval run at all.
  }
  paired = bi.paired_cpu_ratios(runs)
  assert sorted(paired) == ["train", "train_randaug"]
  np.testing.assert_allclose(paired["train_randaug"],
                             [1.2 / 1.5, 1.8 / 2.0, 1.0 / 1.3])
  np.testing.assert_allclose(paired["train"], [1.2])
  # Best against best (the table's ratio) would say 1.0 / 1.3 = 0.77; the
  # median of the pairs says 0.80.
  assert round(float(np.median(paired["train_randaug"])), 2) == 0.80


def test_train_pipelines_are_the_imagenet_configs():
  # "ours" in the table is what configs/vit_i1k.py runs: B/16's pp string
  # (randaug(2, 15)), uint8 images converted on the device; the label key
  # spelled out there is the default here.
  from big_vision_like import config as config_lib
  config = config_lib.load_config(os.path.join(REPO,
                                               "configs/vit_i1k.py:variant=B/16"))
  assert config.device_value_range == (-1, 1)
  pp = config.input.pp.replace(", key='label', key_result='labels'", "")
  assert pp == bi.RANDAUG_PP
  assert bi.TRAIN_PP == pp.replace("|randaug(2, 15)", "")
  assert bi.HOST_FLOAT_RANDAUG_PP == pp.replace(
      "|onehot", "|value_range(-1, 1)|onehot")
