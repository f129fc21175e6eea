"""What a new user meets: the main job's scorecard, first-batch picture, results table, and
TensorBoard itself serving them over HTTP (what the browser gets)."""

import io
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

from big_vision_like import batch_preview
from big_vision_like import train as train_lib
from big_vision_like.data import input_pipeline
from big_vision_like.pp import builder as pp_builder
from big_vision_like.tools import score_predictions
from tests.helpers import free_port, read_jsonl, tiny_config

FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture(scope="module")
def run(fashion_mnist_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("newcomer") / "run")
  out = train_lib.train(tiny_config(fashion_mnist_data_dir), workdir)
  return workdir, out


def test_results_table_holds_the_final_metrics(run):
  workdir, out = run
  record = json.load(open(os.path.join(workdir, "results.json")))
  assert record["step"] == out["step"] == 20 and record["train_seconds"] > 0
  for key in ("test/prec@1", "test/ece", "test/nll", "test/brier", "test/accuracy_per_class"):
    assert record["metrics"][key] == pytest.approx(out[key], abs=1e-12), key
  table = open(os.path.join(workdir, "results.md")).read()
  assert f"| test/prec@1 | {out['test/prec@1']:.4f} |" in table
  assert "tensorboard --logdir" in table and "score_predictions" in table


def test_scorecard_dump_rescored_offline_gives_the_in_loop_numbers(run):
  workdir, out = run
  dump = os.path.join(workdir, "predictions", "test", "step_00000020.npz")
  with np.load(dump) as z:
    names = [str(n) for n in z["file_name"]]
  # fashion_mnist has no file_name feature: records are named by position.
  assert names == [f"test_{i:05d}" for i in range(1000)]
  (scores,) = score_predictions.score_file(dump).values()
  for key in ("prec@1", "ece", "nll", "brier"):
    assert scores[key] == pytest.approx(out[f"test/{key}"], abs=1e-6), key
  per_class = json.load(open(os.path.join(workdir, "per_class", "test", "step_00000020.json")))
  assert [c["name"] for c in per_class] == FASHION_NAMES


def _get(port: int, path: str, **query) -> bytes:
  url = f"http://localhost:{port}{path}" + ("?" + urllib.parse.urlencode(query) if query else "")
  with urllib.request.urlopen(url, timeout=30) as r:
    return r.read()


@pytest.fixture(scope="module")
def tensorboard(run):
  workdir, _ = run
  port = free_port()
  proc = subprocess.Popen(
      [sys.executable, "-m", "tensorboard.main", "--logdir", os.path.join(workdir, "tensorboard"),
       "--port", str(port), "--host", "localhost"],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.time() + 120
    while True:
      try:
        if json.loads(_get(port, "/data/runs")) == ["."]:
          break
      except OSError:
        pass
      if proc.poll() is not None or time.time() > deadline:
        proc.kill()
        raise AssertionError("TensorBoard did not serve the run:\n" + proc.stdout.read()[-3000:])
      time.sleep(0.5)
    yield port
  finally:
    proc.terminate()
    proc.wait(timeout=30)


def test_tensorboard_serves_scalars_pictures_and_texts(run, tensorboard):
  workdir, out = run
  port = tensorboard
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  series = json.loads(_get(port, "/data/plugin/scalars/scalars", run=".", tag="test/prec@1"))
  assert [(s, round(v, 6)) for _, s, v in series] == [
      (r["step"], round(r["test/prec@1"], 6)) for r in rows if "test/prec@1" in r]
  assert series[-1][2] == pytest.approx(out["test/prec@1"], abs=1e-6)
  scalar_tags = json.loads(_get(port, "/data/plugin/scalars/tags"))["."]
  for tag in ("train/loss", "test/ece", "test/brier", "test/nll", "test/worst_class_accuracy"):
    assert tag in scalar_tags, tag

  image_tags = json.loads(_get(port, "/data/plugin/images/tags"))["."]
  assert {"train/first_batch", "test/confusions", "test/reliability"} <= set(image_tags)
  (first,) = json.loads(_get(port, "/data/plugin/images/images", run=".",
                             tag="train/first_batch", sample=0))
  assert first["step"] == 0
  picture = Image.open(io.BytesIO(_get(port, "/data/plugin/images/individualImage?"
                                       + first["query"])))
  assert picture.format == "PNG" and picture.width >= 800

  (captions,) = json.loads(_get(port, "/data/plugin/text/text", run=".",
                                tag="train/first_batch_captions"))
  # Rendered as an HTML list of "Name (id)", one per image of the batch.
  items = captions["text"].split("<li>")[1:]
  assert len(items) == batch_preview.COUNT
  for item in items:
    name, class_id = item.split("</li>")[0].rsplit(" (", 1)
    assert FASHION_NAMES[int(class_id.rstrip(")"))] == name
  (worst,) = [t for t in json.loads(_get(port, "/data/plugin/text/text", run=".",
                                         tag="test/worst_classes")) if t["step"] == 20]
  assert any(name in worst["text"] for name in FASHION_NAMES)


def test_image_text_batches_show_their_decoded_captions():
  pp = "canonicalize_text|tokenize(24, key='text')"
  texts = ["a photo of a Tee.", "a picture of the pair of pants."]
  fn = pp_builder.get_preprocess_fn(pp)
  tokens = np.stack([fn({"text": t})["text"].numpy() for t in texts])
  batch = {"image": np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32),
           "text": tokens}
  caps = batch_preview.captions(batch, pp=pp, data={"name": "whatever"})
  # What the model trains on: canonicalised, and cut at 24 tokens (EOS kept),
  # which is exactly what this picture is for noticing.
  assert caps == ["a photo of a tee", "a picture of the pair o"]
  grid, text = batch_preview.picture(batch, pp=pp, data={"name": "whatever"})
  assert grid.dtype == np.uint8 and grid.ndim == 3 and "1. a picture of the pair o" in text


def test_eval_batches_name_records_by_position_when_the_dataset_has_no_names(
    fashion_mnist_data_dir):
  data = dict(name="fashion_mnist", split="test[10:30]", data_dir=fashion_mnist_data_dir)
  names = []
  for index in range(2):  # two processes' shares: together every record once
    it, _ = input_pipeline.make_eval_iterator(data, "decode(1)|keep('image', 'label')", 8,
                                              process_index=index, process_count=2)
    for batch in it:
      names += [n.decode() for n, m in zip(batch["file_name"], batch["_mask"]) if m]
  assert sorted(names) == [f"test_{i:05d}" for i in range(10, 30)]
