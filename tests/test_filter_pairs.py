"""tools/filter_pairs and tools/corrupt_captions on a tiny captioned dataset.

One tiny two-tower is trained for 2 steps on the tiny synthetic
`fashion_mnist_captions` (50 train images, pixels = id, label = id % 10); its
scores are checked against the model applied by hand, the written datasets
are read back through TFDS and compared with the originals byte for byte.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import csv  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from PIL import Image  # noqa: E402

from big_vision_like import config as config_lib  # noqa: E402
from big_vision_like import experiment  # noqa: E402
from big_vision_like import predict  # noqa: E402
from big_vision_like import train as train_lib  # noqa: E402
from big_vision_like.data import fashion_captions  # noqa: E402
from big_vision_like.data import tfds_source  # noqa: E402
from big_vision_like.pp import ops_text  # noqa: E402
from big_vision_like.text import tokenizers  # noqa: E402
from big_vision_like.tools import corrupt_captions  # noqa: E402
from big_vision_like.tools import filter_pairs  # noqa: E402
from tests.helpers import tiny_config, write_fashion_mnist_source, write_tfds  # noqa: E402

NAME = fashion_captions.NAME
TINY_IMAGE = dict(variant=None, width=32, depth=1, mlp_dim=64, num_heads=2,
                  conv_stem=(16, 32), patch_size=1, pool_type="gap", posemb="sincos2d")
TINY_TEXT = dict(width=32, depth=1, mlp_dim=64, num_heads=2, pool_type="last")
# configs/fashion_contrastive.py's text side (tokenizer spec, length, BOS), read
# from the config module so that the by-hand check below follows it.
CONTRASTIVE = config_lib.load_module("configs/fashion_contrastive.py")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """The tiny captions dataset and a 2-step two-tower workdir trained on it."""
  root = tmp_path_factory.mktemp("filter_pairs")
  data_dir = fashion_captions.prepare(str(root / "tfds"),
                                      write_fashion_mnist_source(root / "source"))
  config = config_lib.load_config("configs/fashion_contrastive.py:runlocal")
  with config.ignore_type():
    config.model.image = dict(TINY_IMAGE)
    config.model.text = dict(config.model.text.to_dict(), **TINY_TEXT)
    config.model.embed_dim = 16
    config.input.data.data_dir = data_dir
    config.input.batch_size = 16
    config.input.shuffle_buffer_size = 64
    config.total_steps = config.ckpt_steps = 2
    # The first evaluator's pp strings are what Predictor embeds with; keep only it,
    # made cheap: 16 images, one prompt, nothing but accuracy.
    zeroshot = config.evals.zeroshot.to_dict()
    zeroshot.update(data=dict(zeroshot["data"], data_dir=data_dir, split="test[:16]"),
                    batch_size=16, prompts="a photo of a {}.")
    for extra in ("per_class", "calibration", "save_logits", "save_predictions"):
      zeroshot.pop(extra, None)
    config.evals = dict(zeroshot=zeroshot)
  workdir = str(root / "workdir")
  train_lib.train(config, workdir)
  return types.SimpleNamespace(data_dir=data_dir, workdir=workdir,
                               predictor=filter_pairs.two_tower_predictor(workdir))


def read(name, data_dir):
  """Every example of `name`/train, images as stored bytes, via TFDS itself."""
  builder = tfds.builder(name, data_dir=data_dir)
  ds = builder.as_dataset(split="train", shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  return builder, list(tfds.as_numpy(ds))


def captions(example):
  return [c.decode() for c in example["captions"]]


def test_scores_are_mean_cosines_of_the_models_own_embeddings(tiny):
  p = tiny.predictor
  _, exs = read(NAME, tiny.data_dir)
  scores = filter_pairs.score_pairs(p, [e["image"] for e in exs], [captions(e) for e in exs])
  assert scores.shape == (50,)
  # By hand: PIL decodes, the tokenizer's Python side tokenizes, the flax
  # model is applied directly and the cosines are averaged here.
  canon = lambda s: ops_text.canonicalize(tf.constant(s)).numpy().decode()
  picks = [0, 7, 31, 49]
  images = np.stack([np.asarray(Image.open(io.BytesIO(exs[i]["image"])), np.float32)[..., None]
                     for i in picks]) / 255.0 * 2.0 - 1.0
  tokens = tokenizers.get_tokenizer(CONTRASTIVE.TOKENIZER).encode_fixed(
      [canon(c) for i in picks for c in captions(exs[i])], CONTRASTIVE.TEXT_LEN,
      bos=CONTRASTIVE.BOS)
  zimg, ztxt, _ = p.exp.model.apply({"params": jax.device_get(p.params)},
                                    image=jnp.asarray(images), text=jnp.asarray(tokens),
                                    train=False)
  zimg = np.asarray(zimg, np.float64)
  ztxt = np.asarray(ztxt, np.float64).reshape(len(picks), 3, -1)
  for row, i in enumerate(picks):
    cos = (ztxt[row] @ zimg[row]) / (np.linalg.norm(ztxt[row], axis=1)
                                     * np.linalg.norm(zimg[row]))
    assert scores[i] == pytest.approx(cos.mean(), abs=2e-5), i
  assert np.ptp(scores) > 1e-4  # a real spread: the check above can tell pairs apart
  # config.json sorts evaluators by name: the real config's "retrieval" (no pp_txt)
  # comes first; the text pp is then taken from the zeroshot one.
  with open(os.path.join(tiny.workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  with config.ignore_type():
    config.evals = {"a_retrieval": dict(type="retrieval", pp=config.evals.zeroshot.pp),
                    **config.evals.to_dict()}
  again = predict.Predictor.from_workdir(tiny.workdir, config=config)
  assert again.text_pp == p.text_pp == config.evals.zeroshot.pp_txt


def test_keep_fraction_and_min_score_write_exactly_the_kept_examples(tiny, tmp_path):
  builder, originals = read(NAME, tiny.data_dir)
  results = filter_pairs.filter_dataset(
      tiny.predictor, NAME, out_name="fmc_top60", keep_fraction=0.6,
      data_dir=tiny.data_dir, out_dir=str(tmp_path / "top"))
  scores = results[0].scores
  top = sorted(sorted(range(50), key=lambda i: (-scores[i], i))[:30])
  cut = np.sort(scores)[20]  # an actual score: ">=" keeps it
  by_min = [i for i in range(50) if scores[i] >= cut]
  filter_pairs.filter_dataset(tiny.predictor, NAME, out_name="fmc_min", min_score=float(cut),
                              data_dir=tiny.data_dir, out_dir=str(tmp_path / "min"))
  assert len(by_min) == 30
  for out_name, want, out_dir in (("fmc_top60", top, "top"), ("fmc_min", by_min, "min")):
    new_builder, kept = read(out_name, tiny.data_dir)
    assert new_builder.info.features.to_json() == builder.info.features.to_json()
    assert [e["file_name"].decode() for e in kept] == [f"train_{i:05d}" for i in want]
    for e in kept:
      orig = originals[int(e["file_name"].decode().split("_")[1])]
      assert e["image"] == orig["image"] and e["label"] == orig["label"]
      assert captions(e) == captions(orig)
    # What training reads it through.
    assert tfds_source.num_examples(out_name, "train", tiny.data_dir) == 30
    with open(tmp_path / out_dir / "scores.csv") as f:
      rows = list(csv.DictReader(f))
    assert [r["file_name"] for r in rows] == [f"train_{i:05d}" for i in range(50)]
    assert [i for i, r in enumerate(rows) if r["kept"] == "1"] == want
    np.testing.assert_allclose([float(r["score"]) for r in rows], scores, atol=1e-6)
    png = np.asarray(Image.open(tmp_path / out_dir / "score_histogram.png"))
    assert png.ndim == 3 and png.shape[0] > 100
    assert os.listdir(tmp_path / out_dir / "tensorboard")


def test_corruption_swaps_exactly_the_fraction_to_other_classes(tiny, tmp_path):
  info = corrupt_captions.corrupt(NAME, out_name="fmc_bad30", fraction=0.3, seed=3,
                                  data_dir=tiny.data_dir, json_path=str(tmp_path / "a.json"))
  with open(tmp_path / "a.json") as f:
    assert json.load(f) == info
  assert info["num_corrupted"] == len(info["corrupted"]) == 15  # round(0.3 * 50)
  _, originals = read(NAME, tiny.data_dir)
  _, new = read("fmc_bad30", tiny.data_dir)
  by_name = {e["file_name"].decode(): e for e in originals}
  # Every caption a class can have: a training template filled with its phrasing.
  class_captions = [{fashion_captions.fill(t, ph) for t in fashion_captions.TRAIN_TEMPLATES
                     for ph in phrases} for phrases in fashion_captions.CLASS_PHRASES]
  assert [e["file_name"] for e in new] == [e["file_name"] for e in originals]
  changed = 0
  for e, orig in zip(new, originals):
    assert e["image"] == orig["image"] and e["label"] == orig["label"]
    name = e["file_name"].decode()
    if name in info["corrupted"]:
      donor = by_name[info["corrupted"][name]]
      assert donor["label"] != e["label"] and captions(e) == captions(donor)
      assert all(c in class_captions[donor["label"]] and c not in class_captions[e["label"]]
                 for c in captions(e))
      changed += 1
    else:
      assert captions(e) == captions(orig)
  assert changed == 15
  # Seeded: the same seed again gives the same corruption, another seed another one.
  again = corrupt_captions.corrupt(NAME, out_name="fmc_bad30b", fraction=0.3, seed=3,
                                   data_dir=tiny.data_dir, json_path=str(tmp_path / "b.json"))
  assert again["corrupted"] == info["corrupted"]
  other = corrupt_captions.choose(np.arange(50) % 10, 0.3, seed=4)
  assert sorted(f"train_{i:05d}" for i in other) != sorted(info["corrupted"])
  # The kept-set rates, against a scores.csv whose order is known.
  bad = set(info["corrupted"])
  rows = [("train", f"train_{i:05d}", -float(i) if f"train_{i:05d}" in bad else float(i),
           False) for i in range(50)]  # every corrupted pair scores below every clean one
  filter_pairs.write_scores(str(tmp_path / "scores.csv"), rows)
  rates = corrupt_captions.kept_corruption_rates(str(tmp_path / "scores.csv"), list(bad),
                                                 [1.0, 0.7, 0.5])
  assert [(r["kept"], r["corrupted_kept"]) for r in rates] == [(50, 15), (35, 0), (25, 0)]
  assert rates[0]["corruption_rate"] == pytest.approx(0.3)
  assert rates[2]["clean_kept_recall"] == pytest.approx(25 / 35)


def test_contrastive_config_trains_on_a_named_dataset():
  default = config_lib.load_config("configs/fashion_contrastive.py")
  assert default.input.data.name == NAME
  named = config_lib.load_config("configs/fashion_contrastive.py:data=fmc_top60")
  assert named.input.data.name == "fmc_top60"
  assert named.to_dict() == {**default.to_dict(), "input": {
      **default.input.to_dict(), "data": dict(name="fmc_top60", split="train")}}


def test_bad_inputs_fail_naming_the_culprit(tiny, tmp_path, capsys):
  def error(*args):
    assert filter_pairs.main(["--workdir", tiny.workdir, "--data_dir", tiny.data_dir,
                              "--out_name", "never_written", *args]) == 2
    return capsys.readouterr().err

  assert "--dataset='no_such_pairs'" in error("--dataset", "no_such_pairs",
                                              "--keep_fraction", "0.5")
  assert "--keep_fraction must be in (0, 1], got 1.5" in error("--dataset", NAME,
                                                               "--keep_fraction", "1.5")
  assert "--keep_fraction must be in (0, 1], got 0.0" in error("--dataset", NAME,
                                                               "--keep_fraction", "0")
  assert "exactly one of --keep_fraction and --min_score" in error("--dataset", NAME)
  assert "--split: dataset 'fashion_mnist_captions' has no split 'validation'" in error("--dataset", NAME, "--split", "validation",
                                          "--keep_fraction", "0.5")
  assert "--text_key 'label'" in error("--dataset", NAME, "--text_key", "label",
                                       "--keep_fraction", "0.5")
  features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(28, 28, 1)),
                                         "label": tfds.features.ClassLabel(num_classes=2)})
  write_tfds(tmp_path, "images_only", {"train": [
      {"image": np.zeros((28, 28, 1), np.uint8), "label": i % 2} for i in range(4)]},
      features)
  msg = error("--dataset", "images_only", "--data_dir", str(tmp_path), "--keep_fraction", "1")
  assert "'images_only' has no caption feature" in msg
  assert "--out_name 'fashion_mnist'" in error("--dataset", NAME, "--keep_fraction", "0.5",
                                              "--out_name", "fashion_mnist")
  assert not os.path.exists(os.path.join(tiny.data_dir, "never_written"))
  # A classifier (the main job's model): no text tower.
  config = tiny_config(tiny.data_dir)
  exp = experiment.build(config, input_spec={
      "image": jax.ShapeDtypeStruct((28, 28, 1), jnp.float32)})
  classifier = predict.Predictor(exp, exp.init_params(jax.random.key(0)),
                                 pp="decode(1)|value_range(-1, 1)", name="tiny_vit")
  with pytest.raises(ValueError, match="model 'tiny_vit' has no text tower"):
    filter_pairs.filter_dataset(classifier, NAME, out_name="never_written",
                                keep_fraction=0.5, data_dir=tiny.data_dir)
  with pytest.raises(ValueError, match="--fraction must be in"):
    corrupt_captions.choose(np.arange(10) % 2, 1.2, seed=0)


def test_cli_end_to_end(tiny, tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "big_vision_like.tools.filter_pairs", "--workdir", tiny.workdir,
       "--dataset", NAME, "--data_dir", tiny.data_dir, "--split", "train",
       "--keep_fraction", "0.7", "--out_name", "fmc_cli", "--out_dir", str(tmp_path / "cli")],
      capture_output=True, text=True, timeout=300, check=False,
      env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1"))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "train: kept 35/50" in out.stdout
  assert tfds_source.num_examples("fmc_cli", "train", tiny.data_dir) == 35
  rows = filter_pairs.read_scores(str(tmp_path / "cli" / "scores.csv"))
  assert len(rows) == 50 and sum(r["kept"] for r in rows) == 35
  assert os.path.exists(tmp_path / "cli" / "score_histogram.png")
