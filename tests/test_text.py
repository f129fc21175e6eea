"""Tests for the tokenizers (bytes, sentencepiece) and the text pp ops."""

import io
import random

import numpy as np
import pytest
import sentencepiece
import tensorflow as tf

from big_vision_like import registry
from big_vision_like.pp import ops_text
from big_vision_like.pp.builder import PPError, get_preprocess_fn
from big_vision_like.text import tokenizers
from big_vision_like.text.tokenizers import get_tokenizer
from tests.helpers import assert_pp_error

# Byte ids are byte + 3: a=100, b=101, c=102, ' '=35; pad=0, eos=1, bos=2.
A, B, C, D, E, F = 100, 101, 102, 103, 104, 105


def run(pp, data):
  out = get_preprocess_fn(pp)(data)
  return {k: v.numpy() for k, v in out.items()}


def seed(a, b=0):
  return tf.constant([a, b], tf.int64)


# A small caption corpus: 30 English words and 100 made-up two-syllable
# words, so that a unigram model has enough distinct pieces for vocab 100.
_WORDS = ("a photo of the cat dog bird sitting on red blue green small large "
          "house tree car running jumping near under over with two three "
          "black white yellow field river").split()
_SYLLABLES = "ka to ri men sa lo pu ne di vo".split()
_WORDS += [x + y for x in _SYLLABLES for y in _SYLLABLES]


def _corpus():
  rng = random.Random(0)
  return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 9)))
          for _ in range(600)]


def _train_sentencepiece(path, **ids):
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(_corpus()), model_writer=model, vocab_size=100,
      model_type="unigram", minloglevel=2, **ids)
  path.write_bytes(model.getvalue())
  return str(path)


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
  """A T5-style layout: pad=0, eos=1, unk=2, no BOS."""
  return _train_sentencepiece(
      tmp_path_factory.mktemp("spm") / "t5_style.model",
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1)


@pytest.fixture(scope="module")
def spm_default_path(tmp_path_factory):
  """Sentencepiece's default layout: unk=0, bos=1, eos=2, no pad."""
  return _train_sentencepiece(
      tmp_path_factory.mktemp("spm") / "default.model")


# ---------------------------------------------------------------- bytes


def test_byte_tokenizer_ids_and_specials():
  tok = get_tokenizer("bytes")
  assert isinstance(tok, tokenizers.ByteTokenizer)
  assert (tok.vocab_size, tok.pad_id, tok.eos_id, tok.bos_id) == (259, 0, 1, 2)
  # "é" is c3 a9 in UTF-8, "日" is e6 97 a5.
  assert tok.encode(["ab", "é", "日", ""]) == [
      [A, B], [0xc3 + 3, 0xa9 + 3], [0xe6 + 3, 0x97 + 3, 0xa5 + 3], []]
  assert tok.decode([A, B, 1, 0, 0]) == "ab"
  assert tok.decode(tok.encode(["naïve 日本"])[0]) == "naïve 日本"
  with pytest.raises(TypeError, match="list of strings.*encode\\(\\[text\\]\\)"):
    tok.encode("ab")
  with pytest.raises(ValueError, match=r"\[259\].*outside \[0, 259\)"):
    tok.decode([A, 259])


def test_byte_tf_tokenize_in_tf_data_equals_python():
  tok = get_tokenizer("bytes")
  texts = ["ab", "é日", "", "a longer caption, with punctuation!"]
  ds = tf.data.Dataset.from_tensor_slices(texts).map(tok.tf_tokenize)
  assert ds.element_spec == tf.TensorSpec([None], tf.int32)
  got = [list(x) for x in ds.as_numpy_iterator()]
  assert got == tok.encode(texts)
  with pytest.raises(ValueError, match="ONE string.*shape \\(2,\\)"):
    tok.tf_tokenize(tf.constant(["a", "b"]))
  with pytest.raises(ValueError, match="needs a tf.string, got int32"):
    tok.tf_tokenize(tf.constant(3))


@pytest.mark.parametrize("max_len, eos, bos, want", [
    (4, "sticky", False, [A, B, C, 1]),          # Cut, EOS kept at the end.
    (4, "yes", False, [A, B, C, D]),             # Cut, EOS lost.
    (4, "none", False, [A, B, C, D]),
    (8, "sticky", False, [A, B, C, D, E, F, 1, 0]),  # Fits: EOS then pad.
    (8, "yes", False, [A, B, C, D, E, F, 1, 0]),
    (8, "none", False, [A, B, C, D, E, F, 0, 0]),
    (4, "sticky", True, [2, A, B, 1]),
    (9, "yes", True, [2, A, B, C, D, E, F, 1, 0]),
    (1, "sticky", False, [1]),
])
def test_tokenize_truncation_eos_and_padding(max_len, eos, bos, want):
  pp = f"tokenize({max_len}, eos={eos!r}, bos={bos})"
  out = run(pp, {"text": tf.constant("abcdef")})
  assert out["text"].dtype == np.int32
  assert out["text"].tolist() == want  # The tokens replace the text.
  # The Python twin (for zero-shot class names) gives the same ids.
  np.testing.assert_array_equal(
      get_tokenizer("bytes").encode_fixed(["abcdef"], max_len, eos=eos,
                                          bos=bos), [want])


def test_tokenize_pad_value_keys_and_static_shape():
  out = run("tokenize(5, key='caption', key_result='tokens', pad_value=-1)",
            {"caption": tf.constant("ab")})
  assert out["tokens"].tolist() == [A, B, 1, -1, -1]
  assert out["caption"] == b"ab"  # the text stays when key_result differs
  ds = tf.data.Dataset.from_tensor_slices({"text": ["ab", "abcdefgh"]}).map(
      get_preprocess_fn("tokenize(6)"))
  assert ds.element_spec["text"] == tf.TensorSpec([6], tf.int32)
  batch = next(ds.batch(2).as_numpy_iterator())["text"]
  assert batch.tolist() == [[A, B, 1, 0, 0, 0], [A, B, C, D, E, 1]]


def test_tokenize_several_captions_per_example():
  texts = tf.constant(["ab", "abcdef", ""])
  out = run("tokenize(4)", {"text": texts})
  assert out["text"].tolist() == [[A, B, 1, 0], [A, B, C, 1], [1, 0, 0, 0]]
  empty = run("tokenize(4)", {"text": tf.constant([], tf.string)})
  assert empty["text"].shape == (0, 4)
  # In tf.data with a varying number of captions per example.
  ds = tf.data.Dataset.from_generator(
      lambda: iter([["ab"], ["c", "abcdef"]]),
      output_signature=tf.TensorSpec([None], tf.string))
  ds = ds.map(lambda t: get_preprocess_fn("tokenize(3)")({"text": t}))
  assert ds.element_spec["text"] == tf.TensorSpec([None, 3], tf.int32)
  got = [x["text"].tolist() for x in ds.as_numpy_iterator()]
  assert got == [[[A, B, 1]], [[C, 1, 0], [A, B, 1]]]


@pytest.mark.parametrize("pp, data, fragments", [
    ("tokenize(0)", {"text": "a"}, ["op 0", "'tokenize(0)'",
                                    "max_len must be a positive int"]),
    ("tokenize(4, eos='maybe')", {"text": "a"},
     ["op 0 \"tokenize(4, eos='maybe')\"", "eos must be one of",
      "'sticky', 'yes', 'none'"]),
    ("tokenize(4, bos=1)", {"text": "a"}, ["bos must be True or False"]),
    ("tokenize(4, pad_value=0.5)", {"text": "a"}, ["pad_value must be"]),
    ("tokenize(4, tokenizer='byte')", {"text": "a"},
     ["Unknown tokenizer 'byte'", "Did you mean 'bytes'?",
      "Known tokenizers: bert, bytes, clip, sentencepiece"]),
    ("tokenize(4)", {"caption": "a"},
     ["op 0", "tokenize: key 'text' not in the example",
      "available keys: ['caption']"]),
    ("tokenize(4)", {"text": 3}, ["'text' must hold text (tf.string), "
                                  "got int32"]),
    ("tokenize(4)", {"text": [["a"]]}, ["one string or a 1-D tensor",
                                        "(1, 1)"]),
])
def test_tokenize_errors_name_the_op(pp, data, fragments):
  assert_pp_error(lambda: get_preprocess_fn(pp)({k: tf.constant(v) for k, v in data.items()}),
                  fragments)


# ---------------------------------------------------------------- text ops


def test_lower_and_canonicalize():
  out = run("lower|canonicalize_text(key='b', key_result='c')|"
            "clean_text(key='d')",
            {"text": tf.constant("ÉCOLE Ab"),
             "b": tf.constant(["  A  Dog's\tT-shirt!  ", "“Hello”, WORLD…",
                               "x\u00a0\u00a0y.", "[a]{b}\\c|d~e^f`g$h", ""]),
             "d": tf.constant("No change")})
  assert out["text"].decode() == "école ab"
  assert [s.decode() for s in out["c"]] == [
      "a dogs tshirt", "hello world", "x y", "abcdefgh", ""]
  assert out["d"] == b"no change"
  # The Python-callable twin gives the same strings.
  np.testing.assert_array_equal(
      ops_text.canonicalize(tf.constant(["  A  Dog's\tT-shirt!  "])).numpy(),
      [b"a dogs tshirt"])
  with pytest.raises(PPError, match="lower: 'label' must hold text"):
    run("lower(key='label')", {"label": tf.constant(1)})


def test_canonicalize_then_tokenize_through_builder_on_tf_data():
  ds = tf.data.Dataset.from_tensor_slices(
      {"text": ["A Cat!", "  the   DOG, running... "], "label": [3, 4]})
  ds = ds.map(get_preprocess_fn("canonicalize_text|tokenize(16)"))
  got = next(ds.batch(2).as_numpy_iterator())
  assert got["text"].shape == (2, 16)
  want_cat = [A, 35, C, A, 116 + 3, 1] + [0] * 10  # "a cat" + EOS.
  assert got["text"][0].tolist() == want_cat
  tok = get_tokenizer("bytes")
  assert tok.decode(got["text"][1]) == "the dog running"
  assert got["label"].tolist() == [3, 4]


def test_choice_is_deterministic_and_covers_all_captions():
  captions = tf.constant(["first", "second", "third"])
  fn = get_preprocess_fn("choice")

  def pick(s):
    return fn({"texts": captions, "_seed": seed(s)})["text"].numpy()
  picks = [pick(s) for s in range(30)]
  assert picks == [pick(s) for s in range(30)]  # Same seed, same caption.
  assert set(picks) == {b"first", b"second", b"third"}
  # Works for any dtype and with key_result, and feeds tokenize.
  out = run("choice(key='ids', key_result='id')|choice|tokenize(3)",
            {"ids": tf.constant([7]), "texts": tf.constant(["ab"]),
             "_seed": seed(1)})
  assert out["id"] == 7 and out["text"].tolist() == [A, B, 1]
  assert "_seed" not in out


def test_choice_of_token_rows_equals_tokenizing_the_chosen_caption():
  # Tokenizing all captions first (cacheable) and choosing a row after picks
  # the same caption for the same seed as choosing first, then tokenizing.
  # Random ops draw from their position in the string, so `choice` sits at
  # position 1 in both (the captions are canonical already).
  captions = tf.constant(["a cat", "the dog running", "one bird", "two fish"])
  late = get_preprocess_fn(
      "canonicalize_text(key='captions')|choice(key='captions')|tokenize(8)")
  early = get_preprocess_fn("tokenize(8, key='captions')|choice(key='captions')")
  picked = set()
  for s in range(40):
    want = late({"captions": captions, "_seed": seed(s)})["text"].numpy()
    got = early({"captions": captions, "_seed": seed(s)})["text"].numpy()
    assert got.shape == (8,) and got.tolist() == want.tolist(), s
    picked.add(tuple(got.tolist()))
  assert len(picked) == 4  # Every caption gets picked: not a constant row.


def test_choice_errors():
  with pytest.raises(PPError, match="'choice' is random.*seed"):
    get_preprocess_fn("choice")({"texts": tf.constant(["a"])})
  with pytest.raises(PPError, match="choice: 'texts' must have a leading axis"):
    get_preprocess_fn("choice")({"texts": tf.constant("a"), "_seed": seed(0)})
  with pytest.raises(tf.errors.InvalidArgumentError, match="key=texts is empty"):
    get_preprocess_fn("choice")({"texts": tf.constant([], tf.string),
                                 "_seed": seed(0)})


# ---------------------------------------------------------------- registry


def test_tokenizer_registry_and_specs():
  assert registry.TOKENIZERS.names() == ["bert", "bytes", "clip", "sentencepiece"]
  tok = get_tokenizer("bytes")
  assert get_tokenizer(tok) is tok
  with pytest.raises(registry.UnknownNameError,
                     match="Unknown tokenizer 'spm'.*Known tokenizers: bert, bytes, "
                           "clip, sentencepiece.*'sentencepiece:/path/to/model"):
    get_tokenizer("spm:/x.model")
  with pytest.raises(ValueError, match="'bytes' takes no argument"):
    get_tokenizer("bytes:x")
  with pytest.raises(ValueError, match="needs the model path"):
    get_tokenizer("sentencepiece")
  with pytest.raises(TypeError, match="spec must be a str"):
    get_tokenizer(None)


# ---------------------------------------------------------------- sentencepiece


def test_sentencepiece_loaded_by_path(spm_path):
  tok = get_tokenizer(f"sentencepiece:{spm_path}")
  assert isinstance(tok, tokenizers.SentencePieceTokenizer)
  assert (tok.vocab_size, tok.pad_id, tok.eos_id, tok.bos_id) == (100, 0, 1,
                                                                   None)
  texts = _corpus()[:20] + ["a photo of the cat"]
  ids = tok.encode(texts)
  for text, row in zip(texts, ids):
    assert tok.decode(row) == text
    assert all(3 <= i < 100 for i in row)  # No specials in raw ids.
  # Letters the model never saw become <unk> (id 2).
  assert 2 in tok.encode(["zzz"])[0]
  # Fixed length: EOS=1 sticky at the end of a cut caption, pad=0.
  long_caption = " ".join(_corpus()[:3])
  fixed = tok.encode_fixed(["a cat", long_caption], 8)
  assert fixed[0].tolist() == (tok.encode(["a cat"])[0] + [1] + [0] * 8)[:8]
  assert fixed[1].tolist() == tok.encode([long_caption])[0][:7] + [1]
  with pytest.raises(ValueError, match="bos=True but tokenizer .* has no BOS"):
    tok.encode_fixed(["a"], 4, bos=True)


def test_sentencepiece_default_layout_pads_with_unk(spm_default_path):
  tok = get_tokenizer(f"sentencepiece:{spm_default_path}")
  # unk=0, bos=1, eos=2 and no pad piece: padding falls back to <unk>.
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  row = tok.encode_fixed(["a cat"], 8, bos=True)[0].tolist()
  assert row == ([1] + tok.encode(["a cat"])[0] + [2] + [0] * 8)[:8]


def test_sentencepiece_tf_tokenize_in_tf_data_equals_python(spm_path):
  tok = get_tokenizer(f"sentencepiece:{spm_path}")
  texts = _corpus()[:40] + ["", "zzz naïve"]
  ds = tf.data.Dataset.from_tensor_slices(texts).map(
      tok.tf_tokenize, num_parallel_calls=4, deterministic=True)
  assert ds.element_spec == tf.TensorSpec([None], tf.int32)
  assert [list(x) for x in ds.as_numpy_iterator()] == tok.encode(texts)
  bad = tf.data.Dataset.from_tensors(tf.constant(b"\xff\xfe")).map(
      tok.tf_tokenize)
  with pytest.raises(tf.errors.InvalidArgumentError, match="not valid UTF-8"):
    list(bad)


def test_sentencepiece_pp_ops_through_builder(spm_path):
  texts = ["A Photo of the CAT!", "the dog, running near the river",
           " ".join(_corpus()[:4])]
  pp = (f"canonicalize_text|tokenize(12, tokenizer='sentencepiece:{spm_path}',"
        f" key_result='tokens')")
  ds = tf.data.Dataset.from_tensor_slices({"text": texts}).map(
      get_preprocess_fn(pp))
  assert ds.element_spec["tokens"] == tf.TensorSpec([12], tf.int32)
  got = next(ds.batch(3).as_numpy_iterator())["tokens"]
  tok = get_tokenizer(f"sentencepiece:{spm_path}")
  canonical = [s.decode() for s in
               ops_text.canonicalize(tf.constant(texts)).numpy()]
  np.testing.assert_array_equal(got, tok.encode_fixed(canonical, 12))
  assert tok.decode(got[0]) == "a photo of the cat"
  assert got[2, -1] == tok.eos_id  # Cut caption keeps its EOS.
  # Several captions of one example.
  out = run(pp, {"text": tf.constant(texts)})
  np.testing.assert_array_equal(out["tokens"], got)


def test_sentencepiece_bad_files(tmp_path):
  missing = str(tmp_path / "nope" / "missing.model")
  with pytest.raises(FileNotFoundError, match="missing.model.*does not exist"):
    get_tokenizer(f"sentencepiece:{missing}")
  corrupt = tmp_path / "corrupt.model"
  corrupt.write_bytes(b"this is not a sentencepiece model")
  with pytest.raises(ValueError,
                     match="corrupt.model' is not a valid sentencepiece"):
    get_tokenizer(f"sentencepiece:{corrupt}")
  empty = tmp_path / "empty.model"
  empty.write_bytes(b"")
  with pytest.raises(ValueError, match="empty.model' is empty"):
    get_tokenizer(f"sentencepiece:{empty}")
  # Through the pp builder the error also names the op.
  with pytest.raises(PPError) as e:
    get_preprocess_fn(f"tokenize(8, tokenizer='sentencepiece:{missing}')")
  assert "op 0" in str(e.value) and missing in str(e.value)
  assert "does not exist" in str(e.value)
