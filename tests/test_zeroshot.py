"""Zero-shot evaluator: a hand-built two-tower "model" with known embeddings.

The model looks its embeddings up in tables: an image's embedding by the
image's pixel value (its id), a text's embedding by its exact token row.
So every class embedding, logit, prompt score and weight below is known by
hand. The geometry (3-d, two classes):

  prompt A "a photo of a {}."   cat -> e0,            dog -> e1
  prompts B, C (drawing/sketch) cat -> (0, .8, .6),   dog -> (.8, 0, .6)
  images 0, 1 are cats (e0), images 2, 3 dogs (e1); temperature t = 100.

A is right and confident; B and C point the wrong way, less sharply. The
plain mean of the three prompts is therefore wrong on every image, while
ZPE (scores s_A = t/2 = 50, s_B = s_C = .4 t = 40 by the formula in
`zeroshot.zpe_scores`) puts almost all weight on A and gets all right.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import glob  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from big_vision_like import registry  # noqa: E402
from big_vision_like import scorecard  # noqa: E402
from big_vision_like import sharding as sharding_lib  # noqa: E402
from big_vision_like.data import fashion_captions  # noqa: E402
from big_vision_like.evaluators import zeroshot  # noqa: E402
from big_vision_like.pp import ops_text  # noqa: E402
from big_vision_like.text import tokenizers  # noqa: E402
from tests.helpers import write_fashion_mnist_source, write_tfds  # noqa: E402

T = 100.0
L = 32
CLASSES = ["cat", "dog"]
PROMPTS = ["a photo of a {}.", "a drawing of a {}.", "a sketch of a {}."]
CLASS_EMB = {  # (prompt, class) -> embedding
    (0, 0): [1, 0, 0], (0, 1): [0, 1, 0],
    (1, 0): [0, .8, .6], (1, 1): [.8, 0, .6],
    (2, 0): [0, .8, .6], (2, 1): [.8, 0, .6],
}
IMAGES = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]], np.float32)
LABELS = [0, 0, 1, 1]
PP = "decode|keep('image', 'label')"
PP_TXT = f"tokenize({L})"


def make_params(text_emb: dict[str, list[float]], images=IMAGES, t=T):
  texts = sorted(text_emb)
  tok = tokenizers.get_tokenizer("bytes").encode_fixed(texts, L)
  return {"img": jnp.asarray(images, jnp.float32), "tok": jnp.asarray(tok),
          "txt": jnp.asarray([text_emb[s] for s in texts], jnp.float32),
          "t": jnp.asarray([t], jnp.float32)}


def predict(params, batch):
  """The two-tower predict_fn contract: zimg / ztxt if asked for, t, b."""
  out = {"t": params["t"], "b": jnp.zeros((1,), jnp.float32)}
  if batch.get("image") is not None:
    out["zimg"] = params["img"][batch["image"][:, 0, 0, 0].astype(jnp.int32)]
  if batch.get("text") is not None:
    hit = jnp.all(batch["text"][:, None, :] == params["tok"][None], axis=-1)
    out["ztxt"] = hit.astype(jnp.float32) @ params["txt"]  # unknown text -> 0
  return out


def toy_text_emb(transform=lambda s: s):
  return {transform(p.replace("{}", c)): CLASS_EMB[pi, ci]
          for pi, p in enumerate(PROMPTS) for ci, c in enumerate(CLASSES)}


PARAMS = make_params(toy_text_emb())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(2, 2, 1)),
      "label": tfds.features.ClassLabel(names=CLASSES),
      "real_label": tfds.features.Sequence(tfds.features.ClassLabel(names=CLASSES)),
      "file_name": tfds.features.Text(),
  })
  sets = [[0], [1], [1, 0], []]  # image 1 (a cat) is labelled dog only; 3 has none
  examples = [{"image": np.full((2, 2, 1), i, np.uint8), "label": LABELS[i],
               "real_label": sets[i], "file_name": f"img{i}"} for i in range(4)]
  return write_tfds(tmp_path_factory.mktemp("zs"), "zs_toy", {"test": examples},
                    features)["data_dir"]


def make(data_dir, **kw):
  kw.setdefault("class_names", CLASSES)
  kw.setdefault("prompts", PROMPTS)
  kw.setdefault("pp_txt", PP_TXT)
  kw.setdefault("label_key", "label")
  return registry.EVALUATORS.get("zeroshot")(
      kw.pop("predict", predict), data=dict(name="zs_toy", split="test", data_dir=data_dir),
      pp=kw.pop("pp", PP), batch_size=kw.pop("batch_size", 3),
      mesh=sharding_lib.make_mesh([("data", -1)]), data_axes=("data",), **kw)


def hand_weights(tau=1.0):
  s = np.array([T / 2, .4 * T, .4 * T]) / tau
  return np.exp(s - s.max()) / np.exp(s - s.max()).sum()


def test_mean_ensemble_is_clip_average_and_wrong_here(data_dir):
  ev = make(data_dir, ensemble="mean")
  emb, report = ev.class_embeddings(PARAMS)
  assert report == {}
  want = np.array([[1, 1.6, 1.2], [1.6, 1, 1.2]]) / math.sqrt(5)  # (A + B + C), renormalised
  np.testing.assert_allclose(emb, want, atol=1e-6)
  got = ev.run(PARAMS)
  assert got["prec@1"] == 0.0 and got["num_examples"] == 4
  # Loss of the zero-shot logits t * <zimg, class_emb>: cat image logits (1, 1.6) * t/sqrt5.
  margin = .6 * T / math.sqrt(5)
  assert got["loss"] == pytest.approx(margin + math.log1p(math.exp(-margin)), rel=1e-5)


def test_weighted_ensemble_zpe_weights_by_hand(data_dir):
  ev = make(data_dir, ensemble="weighted", top_prompts=2)
  got = ev.run(PARAMS, step=3)
  np.testing.assert_allclose(ev.last_scores, [50, 40, 40], rtol=1e-6)
  w = hand_weights()
  assert w[0] == pytest.approx(1 / (1 + 2 * math.exp(-10)))
  np.testing.assert_allclose(ev.last_weights, w, rtol=1e-6)
  assert got["prec@1"] == 1.0  # ZPE fixes what the mean got wrong
  assert got["prompt_weight_max"] == pytest.approx(w[0])
  assert got["prompt_weights_effective_num"] == pytest.approx(1 / np.sum(w ** 2))
  lines = got["prompt_weights"].splitlines()
  assert len(lines) == 2 and lines[0].startswith("1. 0.9999 (score 50)")
  assert lines[0].endswith("a photo of a {}.") and lines[1].endswith("a drawing of a {}.")
  emb, _ = ev.class_embeddings(PARAMS)
  wb = w[1]
  np.testing.assert_allclose(emb, [[w[0], 1.6 * wb, 1.2 * wb], [1.6 * wb, w[0], 1.2 * wb]],
                             rtol=1e-5, atol=1e-9)


def test_zpe_temperature_and_function_level_formula(data_dir):
  ev = make(data_dir, ensemble="weighted", zpe_tau=20.0)
  ev.run(PARAMS)
  np.testing.assert_allclose(ev.last_weights, hand_weights(20.0), rtol=1e-6)
  # Same formula, standalone: a prompt equal for both classes scores 0.
  per_prompt = np.array([[[1, 0], [0, 1]], [[0, 1], [0, 1]]], np.float32)
  zimg = np.array([[1, 0], [0, 1]], np.float32)
  np.testing.assert_allclose(zeroshot.zpe_scores(zimg, per_prompt, 1.0), [.5, 0.])
  np.testing.assert_allclose(zeroshot.zpe_weights([.5, 0.]),
                             [1 / (1 + math.exp(-.5)), 1 / (1 + math.exp(.5))])
  # Restricted to class 1 only, every prompt is equally (un)confident.
  np.testing.assert_allclose(zeroshot.zpe_scores(zimg, per_prompt, 1.0, [1]), [0., 0.])


def test_unlabelled_images_only(data_dir):
  """ZPE must not read labels: flipping every label leaves the weights alone."""
  ev = make(data_dir, ensemble="weighted", label_key="label")
  ev.run(PARAMS)
  flipped = make(data_dir, ensemble="weighted",
                 pp="decode|keep('image', 'label')|map_label([1, 0])")
  got = flipped.run(PARAMS)
  np.testing.assert_array_equal(flipped.last_weights, ev.last_weights)
  assert got["prec@1"] == 0.0


def test_multilabel_scorer_pass_through(data_dir, tmp_path):
  ev = make(data_dir, ensemble="weighted", scorer="multilabel", set_key="real_label",
            label_key="label", save_predictions=True, workdir=str(tmp_path), name="real",
            pp="decode|keep('image', 'label', 'real_label')")
  got = ev.run(PARAMS, step=5)
  # Predictions: cat, cat, dog, dog. Sets {0}, {1}, {0, 1}, {} (not counted).
  assert got["num_counted"] == 3 and got["num_empty"] == 1
  assert got["real@1"] == pytest.approx(2 / 3)
  assert glob.glob(f"{tmp_path}/predictions/real/step_00000005.npz")
  assert ev.drop_metrics == ("real@1", "real@5")


def test_calibration_scorer_and_per_class_names(data_dir, tmp_path):
  ev = make(data_dir, scorer="calibration", ensemble="mean", num_bins=2, diagram=False)
  got = ev.run(PARAMS)
  margin = .6 * T / math.sqrt(5)  # every image prefers the wrong class by this
  assert got["nll"] == pytest.approx(margin + math.log1p(math.exp(-margin)), rel=1e-5)
  assert got["accuracy"] == 0.0
  ev = make(data_dir, ensemble="mean", per_class=True, workdir=str(tmp_path), reference="val")
  got = ev.run(PARAMS)
  assert "cat (class 0): 0.0% of 2" in got["worst_classes"]
  assert ev.reference == "val"


def test_pp_txt_tokens_in_labels_and_canonical_text(data_dir):
  # Tokens may also land in "labels"; canonicalize_text changes the strings,
  # so the table holds the canonical forms.
  canon = lambda s: ops_text.canonicalize(tf.constant(s)).numpy().decode()
  params = make_params(toy_text_emb(canon))
  ev = make(data_dir, pp_txt=f"canonicalize_text|tokenize({L}, key_result='labels')",
            ensemble="weighted")
  assert ev.run(params)["prec@1"] == 1.0
  np.testing.assert_allclose(ev.last_weights, hand_weights(), rtol=1e-6)
  # Without canonicalisation no prompt is in the table: zero embeddings.
  ev = make(data_dir, pp_txt=f"tokenize({L})")
  with pytest.raises(ValueError, match="zero norm"):
    ev.run(params)


def test_text_embeddings_follow_the_params(data_dir):
  ev = make(data_dir, ensemble="mean")
  first, t = ev.text_embeddings(PARAMS)
  assert t == T and first.shape == (3, 2, 3)
  swapped = toy_text_emb()
  swapped["a photo of a cat."], swapped["a photo of a dog."] = [0, 1, 0], [1, 0, 0]
  second, _ = ev.text_embeddings(make_params(swapped))
  np.testing.assert_array_equal(second[0], [[0, 1, 0], [1, 0, 0]])
  np.testing.assert_array_equal(first[0], [[1, 0, 0], [0, 1, 0]])


def test_class_name_and_prompt_sources(tmp_path):
  names = zeroshot.resolve_class_names("imagenet2012")
  assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish"
  assert zeroshot.resolve_class_names("fashion_mnist")[9] == "ankle boot"
  f = tmp_path / "names.txt"
  f.write_text("cat\n\ndog\n")
  assert zeroshot.resolve_class_names(str(f)) == ["cat", "dog"]
  held = zeroshot.resolve_prompts("fashion_mnist_heldout")
  assert held == list(fashion_captions.HELDOUT_TEMPLATES)
  assert zeroshot.resolve_prompts("a {}") == ["a {}"]
  p = tmp_path / "prompts.txt"
  p.write_text("a {}.\nthe {}!\n")
  assert zeroshot.resolve_prompts(str(p)) == ["a {}.", "the {}!"]
  assert zeroshot.prompt_texts(["x", "y"], ["a {}", "b {}"]) == ["a x", "a y", "b x", "b y"]


def test_clip_imagenet_prompts_and_curated_class_names():
  templates = zeroshot.resolve_prompts("clip_imagenet")
  names = zeroshot.resolve_class_names("imagenet2012_clip")
  assert len(templates) == len(set(templates)) == 80
  assert templates[0] == "a bad photo of a {}." and templates[-1] == "a tattoo of the {}."
  assert len(names) == 1000 and names[:2] == ["tench", "goldfish"]
  # Unlike the WordNet first names, the two maillots differ...
  wordnet = zeroshot.resolve_class_names("imagenet2012")
  assert wordnet[638] == wordnet[639] == "maillot"
  assert [names[i] for i in (134, 517, 638, 639)] == [
      "crane bird", "construction crane", "tights", "one-piece bathing suit"]
  # ...but CLIP's published list repeats two names; kept as published.
  repeated = {n: [i for i, m in enumerate(names) if m == n]
              for n in names if names.count(n) > 1}
  assert repeated == {"missile": [657, 744], "sunglasses": [836, 837]}
  # Equal to what open_clip ships (make_golden.py recorded its hashes).
  golden = json.loads((pathlib.Path(__file__).parent / "fixtures" / "clip_tokenizer" /
                       "golden.json").read_text())["clip_imagenet_sha256"]
  for key, value in (("templates", templates), ("classnames", names)):
    digest = hashlib.sha256(json.dumps(value, ensure_ascii=True).encode()).hexdigest()
    assert digest == golden[key], key
  assert "MIT License" in zeroshot.clip_imagenet()["source"]
  texts = zeroshot.prompt_texts(names, templates)
  assert len(texts) == 80_000 and texts[1] == "a bad photo of a goldfish."


def test_bad_config_fails_naming_the_culprit(data_dir, tmp_path):
  with pytest.raises(ValueError, match="needs pp_txt"):
    make(data_dir, pp_txt=None)
  with pytest.raises(ValueError, match="'a photo' must hold exactly one"):
    make(data_dir, prompts=["a photo"])
  with pytest.raises(ValueError, match="unknown scorer 'retrieval'"):
    make(data_dir, scorer="retrieval")
  with pytest.raises(ValueError, match="unknown ensemble 'median'"):
    make(data_dir, ensemble="median")
  with pytest.raises(ValueError, match="class_names: cannot read file .*nope.txt"):
    make(data_dir, class_names=str(tmp_path / "nope.txt"))
  with pytest.raises(ValueError, match="must turn 'text' into integer tokens"):
    make(data_dir, pp_txt="canonicalize_text")
  with pytest.raises(ValueError, match="predict_fn returns"):
    make(data_dir, predict=lambda p, b: p["t"]).run(PARAMS)


def test_scorecard_helper_makes_every_eval_zeroshot():
  evals = scorecard.imagenet(pp_image="decode|resize(8)", log_steps=10, evaluator="zeroshot",
                             extra=dict(class_names="imagenet2012", prompts=["a photo of a {}."],
                                        pp_txt=PP_TXT, ensemble="weighted"))
  assert set(evals) == set(scorecard.NAMES)
  assert all(ev["type"] == "zeroshot" for ev in evals.values())
  assert evals["real"]["scorer"] == "multilabel" and evals["real"]["set_key"] == "real_label"
  assert evals["calibration"]["scorer"] == "calibration"
  assert evals["a"].get("scorer", "classification") == "classification"  # the default
  assert evals["a"]["class_subset"] == "imagenet_a"
  assert evals["val"]["class_names"] == "imagenet2012"
  assert all(ev["ensemble"] == "weighted" for ev in evals.values())
  with pytest.raises(ValueError, match="'retrieval' has no zero-shot form"):
    zeroshot.as_zeroshot({"type": "retrieval"})


def test_real_two_tower_model_through_the_train_predict_fn(tmp_path):
  """The evaluator on a (random) TwoTower via the experiment's predict_fn, on the
  embedded `fashion_mnist_captions`, against the same model applied by hand."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from big_vision_like import experiment  # pylint: disable=g-import-not-at-top
  source = write_fashion_mnist_source(tmp_path / "source")
  data_dir = fashion_captions.prepare(str(tmp_path / "tfds"), source)
  tiny = dict(width=32, depth=1, mlp_dim=64, num_heads=2)
  config = ml_collections.ConfigDict(dict(
      model_name="two_tower", loss="siglip", mesh=[("data", -1)], device_value_range=(-1, 1),
      model=dict(image_model="vit", image=dict(variant="Ti/7", **tiny),
                 text=dict(vocab_size=259, **tiny), embed_dim=16)))
  exp = experiment.build(config, input_spec={
      "image": jax.ShapeDtypeStruct((28, 28, 3), jnp.float32),
      "text": jax.ShapeDtypeStruct((16,), jnp.int32)})
  assert exp.task.name == "image_text"
  mesh = exp.mesh
  params = exp.init_params(jax.random.key(0))
  predict_fn = exp.predict_fn
  ev = registry.EVALUATORS.get("zeroshot")(
      predict_fn, data=dict(name="fashion_mnist_captions", split="test", data_dir=data_dir),
      pp="decode|keep('image', 'label')", batch_size=8, mesh=mesh, data_axes=("data",),
      class_names="fashion_mnist", prompts="fashion_mnist_heldout", label_key="label",
      pp_txt="canonicalize_text|tokenize(16)")
  got = ev.run(params)
  # By hand: the same prompts through the tokenizer's Python twin.
  canon = lambda s: ops_text.canonicalize(tf.constant(s)).numpy().decode()
  texts = [canon(p.replace("{}", c)) for p in fashion_captions.HELDOUT_TEMPLATES
           for c in fashion_captions.CLASS_NAMES]
  tokens = tokenizers.get_tokenizer("bytes").encode_fixed(texts, 16)
  ztxt = np.asarray(predict_fn(params, {"text": tokens})["ztxt"], np.float64)
  ztxt = ztxt.reshape(len(fashion_captions.HELDOUT_TEMPLATES), 10, -1)
  ztxt /= np.linalg.norm(ztxt, axis=-1, keepdims=True)
  class_emb = ztxt.mean(0) / np.linalg.norm(ztxt.mean(0), axis=-1, keepdims=True)
  exs = list(tfds.as_numpy(tfds.load("fashion_mnist_captions", split="test",
                                     data_dir=data_dir)))
  images = np.stack([np.repeat(e["image"], 3, axis=-1) for e in exs])
  zimg = np.asarray(predict_fn(params, {"image": images})["zimg"], np.float64)
  want = np.mean((zimg @ class_emb.T).argmax(1) == [e["label"] for e in exs])
  assert got["prec@1"] == pytest.approx(want) and got["num_examples"] == 23
