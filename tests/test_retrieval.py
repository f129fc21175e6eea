"""Retrieval evaluator: recall@k both ways on constructed cases, by hand.

The "model" looks embeddings up in tables (an image by its pixel value, a
caption by its exact token row). Images are unit vectors e_i, so the score
of image i and caption j is simply entry i of caption j's vector: the score
matrix S below IS the model, and every rank is read off it by hand.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from big_vision_like import registry  # noqa: E402
from big_vision_like import sharding as sharding_lib  # noqa: E402
from big_vision_like.data import fashion_captions  # noqa: E402
from big_vision_like.evaluators import retrieval  # noqa: E402
from big_vision_like.text import tokenizers  # noqa: E402
from tests.helpers import write_fashion_mnist_source, write_tfds  # noqa: E402

L = 40
# Captions per image (image 3 has none). Texts in order: j0..j5.
CAPTIONS = [["c0a", "c0b"], ["c1a"], ["c2a", "c2b", "c2c"], []]
#              j0   j1   j2   j3   j4   j5
S = np.array([[.1, .5, .9, .2, .3, .0],    # image 0: own j0, j1
              [.8, .1, .4, .7, .6, .2],    # image 1: own j2
              [.3, .2, .1, .5, .9, .4],    # image 2: own j3, j4, j5
              [.9, .0, .3, .1, .2, .6]],   # image 3: no captions
             np.float32)
# image -> text, best own caption's 0-based rank in its row:
#   image 0: j2 .9 > j1 .5 -> 1;  image 1: j0, j3, j4 > j2 -> 3;  image 2: j4 first -> 0
# text -> image, own image's rank in its column:
#   j0 [.1 .8 .3 .9] -> 3; j1 -> 0; j2 [.9 .4 ..] -> 1; j3 [.2 .7 .5 .1] -> 1;
#   j4 -> 0; j5 [.0 .2 .4 .6] -> 1
WANT = {"img2txt/recall@1": 1 / 3, "img2txt/recall@2": 2 / 3, "img2txt/recall@5": 1.0,
        "txt2img/recall@1": 2 / 6, "txt2img/recall@2": 5 / 6, "txt2img/recall@5": 1.0,
        "num_images": 3.0, "num_texts": 6.0}


def make_params(images, text_emb, t=1.0):
  texts = sorted(text_emb)
  tok = tokenizers.get_tokenizer("bytes").encode_fixed(texts, L)
  return {"img": jnp.asarray(images, jnp.float32), "tok": jnp.asarray(tok),
          "txt": jnp.asarray([text_emb[s] for s in texts], jnp.float32),
          "t": jnp.asarray(t, jnp.float32)}


def predict(params, batch):
  out = {"t": params["t"], "b": jnp.zeros((), jnp.float32)}
  if batch.get("image") is not None:
    out["zimg"] = params["img"][batch["image"][:, 0, 0, 0].astype(jnp.int32)]
  if batch.get("text") is not None:
    hit = jnp.all(batch["text"][:, None, :] == params["tok"][None], axis=-1)
    out["ztxt"] = hit.astype(jnp.float32) @ params["txt"]
  return out


TEXTS = [c for caps in CAPTIONS for c in caps]
PARAMS = make_params(np.eye(4), {c: S[:, j] for j, c in enumerate(TEXTS)})
PP = f"decode|tokenize({L}, key='captions')|keep('image', 'captions')"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(2, 2, 1)),
      "captions": tfds.features.Sequence(tfds.features.Text()),
      "file_name": tfds.features.Text(),
  })
  # Written in reverse file-name order: the evaluator must sort by file name.
  examples = [{"image": np.full((2, 2, 1), i, np.uint8), "captions": CAPTIONS[i],
               "file_name": f"img{i}"} for i in reversed(range(4))]
  return write_tfds(tmp_path_factory.mktemp("ret"), "ret_toy", {"test": examples},
                    features)["data_dir"]


def make(data, **kw):
  return registry.EVALUATORS.get("retrieval")(
      kw.pop("predict", predict), data=data, pp=kw.pop("pp", PP),
      batch_size=kw.pop("batch_size", 3), mesh=sharding_lib.make_mesh([("data", -1)]),
      data_axes=("data",), **kw)


def test_recall_function_by_hand():
  text_image = np.array([0, 0, 1, 2, 2, 2])
  got = retrieval.recall_at_k(np.eye(4), S.T, text_image, ks=(1, 2, 5))
  assert got == pytest.approx(WANT, abs=1e-12)
  with_text, i2t, t2i = retrieval.ranks(np.eye(4), S.T, text_image)
  np.testing.assert_array_equal(with_text, [0, 1, 2])
  np.testing.assert_array_equal(i2t, [1, 3, 0])
  np.testing.assert_array_equal(t2i, [3, 0, 1, 1, 0, 1])


def test_ties_go_to_the_lower_index():
  # Both texts have the same embedding: every score ties.
  zimg = np.eye(2, dtype=np.float32)
  ztxt = np.ones((2, 2), np.float32)
  with_text, i2t, t2i = retrieval.ranks(zimg, ztxt, np.array([1, 0]))
  # image 0's own text is j1, behind the tied j0; image 1 owns j0 (first).
  np.testing.assert_array_equal(i2t, [1, 0])
  # text j0 belongs to image 1, behind the tied image 0; j1 to image 0.
  np.testing.assert_array_equal(t2i, [1, 0])
  assert retrieval.recall_at_k(zimg, ztxt, np.array([1, 0]), ks=(1,)) == {
      "img2txt/recall@1": .5, "txt2img/recall@1": .5, "num_images": 2.0,
      "num_texts": 2.0}


def test_chunks_cover_more_queries_than_one_block():
  rng = np.random.default_rng(0)
  zimg = rng.normal(size=(700, 8)).astype(np.float32)
  ztxt = zimg[np.repeat(np.arange(700), 2)] + rng.normal(size=(1400, 8)).astype(np.float32)
  text_image = np.repeat(np.arange(700), 2)
  _, i2t, t2i = retrieval.ranks(zimg, ztxt, text_image)
  s = zimg @ ztxt.T
  for i in (0, 511, 512, 699):  # both sides of the 512-query chunk boundary
    order = sorted(range(1400), key=lambda j: (-s[i, j], j))
    assert i2t[i] == min(order.index(j) for j in (2 * i, 2 * i + 1))
  for j in (0, 1023, 1024, 1399):
    order = sorted(range(700), key=lambda i: (-s[i, j], i))
    assert t2i[j] == order.index(j // 2)


def test_evaluator_on_a_tfds_dataset_with_missing_captions(data_dir):
  data = dict(name="ret_toy", split="test", data_dir=data_dir)
  ev = make(data, num_captions=3, ks=(1, 2, 5))
  got = ev.run(PARAMS)
  assert got == pytest.approx(WANT, abs=1e-7)
  zimg, ztxt, text_image = ev.embeddings(PARAMS)
  np.testing.assert_array_equal(zimg, np.eye(4))  # file-name order
  np.testing.assert_array_equal(text_image, [0, 0, 1, 2, 2, 2])
  np.testing.assert_allclose(ztxt, S.T)
  assert ev.drop_metrics == ("img2txt/recall@1", "txt2img/recall@1")


def test_caption_count_must_be_fixed(data_dir):
  data = dict(name="ret_toy", split="test", data_dir=data_dir)
  with pytest.raises(ValueError, match="Set num_captions"):
    make(data)
  with pytest.raises(ValueError, match="num_captions must be a positive int"):
    make(data, num_captions=0)
  with pytest.raises(ValueError, match="pad_value -1 does not fit 'captions' of dtype "
                     "string"):  # untokenized captions
    make(data, num_captions=3, pp="decode|keep('image', 'captions')")
  with pytest.raises(ValueError, match="the pp output has no 'captions'"):
    make(data, pp="decode|keep('image')").run(PARAMS)
  ev = make(data, num_captions=2)  # image 2 has 3 captions: nothing is cut
  with pytest.raises(Exception, match="larger than the wanted shape"):
    ev.run(PARAMS)


def test_fashion_mnist_captions_end_to_end(tmp_path):
  """The embedded dataset through the real tokenizer pp, against brute force.

  Images embed as their class (pixel id % 10); a caption as the class its
  phrasing names. Many images share a class and many captions a string,
  so the ranks are decided by the tie rule: checked against a plain
  sorted() over (-score, index).
  """
  source = write_fashion_mnist_source(tmp_path / "source")
  data_dir = fashion_captions.prepare(str(tmp_path / "tfds"), source)
  classes = np.eye(10, dtype=np.float32)
  images = classes[np.arange(256) % 10]
  text_emb = {}
  for c, phrases in enumerate(fashion_captions.CLASS_PHRASES):
    for p in phrases:
      for t in fashion_captions.TRAIN_TEMPLATES:
        text_emb[fashion_captions.fill(t, p)] = classes[c] * (1 + len(p) / 100)
  params = make_params(images, text_emb)
  data = dict(name="fashion_mnist_captions", split="test", data_dir=data_dir)
  got = make(data, batch_size=8).run(params)
  ds = tfds.as_numpy(tfds.load("fashion_mnist_captions", split="test", data_dir=data_dir))
  exs = sorted(ds, key=lambda e: e["file_name"])
  zimg = np.stack([images[e["image"][0, 0, 0]] for e in exs])
  texts = [(i, c.decode()) for i, e in enumerate(exs) for c in e["captions"]]
  ztxt = np.stack([text_emb[c] for _, c in texts])
  s = zimg @ ztxt.T
  i2t = [min(sorted(range(len(texts)), key=lambda j: (-s[i, j], j)).index(j)
             for j, (owner, _) in enumerate(texts) if owner == i) for i in range(len(exs))]
  t2i = [sorted(range(len(exs)), key=lambda i: (-s[i, j], i)).index(owner)
         for j, (owner, _) in enumerate(texts)]
  assert got["num_images"] == len(exs) == 23 and got["num_texts"] == 3 * 23
  for k in (1, 5, 10):
    assert got[f"img2txt/recall@{k}"] == pytest.approx(np.mean(np.array(i2t) < k))
    assert got[f"txt2img/recall@{k}"] == pytest.approx(np.mean(np.array(t2i) < k))
  assert 0 < got["txt2img/recall@1"] < got["txt2img/recall@10"] <= 1
