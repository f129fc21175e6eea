"""CLIP's BPE tokenizer ("clip") against open_clip's own ids, without torch.

tests/fixtures/clip_tokenizer/golden.json holds open_clip's ids for 106
strings (English, contractions, typographic quotes, numbers, emoji, accents,
CJK and other scripts, HTML entities, whitespace and control characters,
special-token look-alikes, texts longer than the context, and 50 ImageNet
prompts); make_golden.py next to it regenerates it from open_clip.
"""

import gzip
import hashlib
import html
import json
import pathlib

import ftfy
import numpy as np
import pytest
import tensorflow as tf

from big_vision_like.evaluators import zeroshot
from big_vision_like.pp.builder import get_preprocess_fn
from big_vision_like.text import clip_bpe
from big_vision_like.text import tokenizers
from big_vision_like.text.tokenizers import get_tokenizer

GOLDEN = json.loads((pathlib.Path(__file__).parent / "fixtures" / "clip_tokenizer" /
                     "golden.json").read_text())
CASES = GOLDEN["cases"]
TEXTS = [c["text"] for c in CASES]
SOT, EOT = 49406, 49407


def _row(ids, length=77):
  return list(ids) + [0] * (length - len(ids))


@pytest.fixture(scope="module")
def tok():
  return get_tokenizer("clip")


def test_bundled_vocabulary_is_open_clips_file(tok):
  data = clip_bpe.bundled_path().read_bytes()
  assert hashlib.sha256(data).hexdigest() == GOLDEN["vocab_sha256"]
  assert (clip_bpe.bundled_path().parent / "LICENSE-clip-bpe.txt").is_file()
  assert isinstance(tok, tokenizers.ClipTokenizer)
  assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (
      GOLDEN["vocab_size"], GOLDEN["sot"], GOLDEN["eot"], 0) == (49408, SOT, EOT, 0)
  assert get_tokenizer("clip").bpe is tok.bpe  # Loaded once, cache shared.


def test_python_ids_equal_open_clip(tok):
  assert len(CASES) >= 100
  assert tok.encode(TEXTS) == [c["encode"] for c in CASES]
  np.testing.assert_array_equal(tok.encode_fixed(TEXTS, 77, bos=True),
                                [_row(c["row77"]) for c in CASES])
  assert tok.bpe.encode_fixed(TEXTS) == [_row(c["row77"]) for c in CASES]
  for n in ("1", "2", "3", "5", "16"):
    want = [c["short"][n] for c in CASES]
    np.testing.assert_array_equal(tok.encode_fixed(TEXTS, int(n), bos=True), want)
    assert tok.bpe.encode_fixed(TEXTS, int(n)) == want
  # Long texts were cut: <end_of_text> stays last, as open_clip does it.
  long = [c for c in CASES if len(c["encode"]) > 75]
  assert len(long) >= 4 and all(len(c["row77"]) == 77 and c["row77"][-1] == EOT
                                for c in long)


def test_tf_data_and_pp_op_equal_open_clip(tok):
  pp = get_preprocess_fn("tokenize(77, tokenizer='clip', bos=True)")
  ds = tf.data.Dataset.from_tensor_slices({"text": TEXTS}).map(pp)
  assert ds.element_spec["text"] == tf.TensorSpec([77], tf.int32)
  got = np.stack([d["text"] for d in ds.as_numpy_iterator()])
  np.testing.assert_array_equal(got, [_row(c["row77"]) for c in CASES])
  # Raw ids in tf.data, and several captions per example (a [n] string tensor).
  raw = tf.data.Dataset.from_tensor_slices(TEXTS[:20]).map(tok.tf_tokenize)
  assert raw.element_spec == tf.TensorSpec([None], tf.int32)
  assert [list(x) for x in raw.as_numpy_iterator()] == [c["encode"] for c in CASES[:20]]
  latin1 = tf.data.Dataset.from_tensor_slices([b"caf\xe9"]).map(tok.tf_tokenize)
  with pytest.raises(tf.errors.InvalidArgumentError, match="'clip': text is not valid UTF-8"):
    list(latin1)
  out = get_preprocess_fn("tokenize(5, tokenizer='clip', bos=True)")(
      {"text": tf.constant(TEXTS[:6])})
  np.testing.assert_array_equal(out["text"], [c["short"]["5"] for c in CASES[:6]])


def test_captions_of_an_example_tokenize_in_one_call_with_the_same_ids(tok):
  # [n] captions -> [n, L] goes through ONE Python call per example; it must
  # give each caption's ids from the per-text graph path, in every EOS mode.
  captions = [TEXTS[i:i + 3] for i in range(0, 24, 3)]
  for eos, bos in [("sticky", True), ("yes", False), ("none", True)]:
    pp = get_preprocess_fn(f"tokenize(9, tokenizer='clip', bos={bos}, "
                           f"eos={eos!r}, key='captions')")
    ds = tf.data.Dataset.from_tensor_slices({"captions": captions}).map(pp)
    assert ds.element_spec["captions"] == tf.TensorSpec([3, 9], tf.int32)
    got = np.stack([d["captions"] for d in ds.as_numpy_iterator()])
    one = tf.data.Dataset.from_tensor_slices(TEXTS[:24]).map(
        lambda t: tok.tf_encode_fixed(t, 9, eos=eos, bos=bos))
    want = np.stack(list(one.as_numpy_iterator())).reshape(8, 3, 9)
    np.testing.assert_array_equal(got, want)
  bad = tf.data.Dataset.from_tensors({"text": tf.constant([b"ok", b"caf\xe9"])})
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="'clip': text is not valid UTF-8: b'caf"):
    list(bad.map(get_preprocess_fn("tokenize(5, tokenizer='clip')")))
  with pytest.raises(ValueError, match="tf_encode_fixed_many takes a 1-D"):
    tok.tf_encode_fixed_many(tf.constant([["a"]]), 5)


def test_zeroshot_prompts_tokenized_through_the_evaluator_path():
  cases = CASES[-50:]  # "a photo of a {}." with the first 50 curated names.
  names = zeroshot.resolve_class_names("imagenet2012_clip")[:50]
  texts = zeroshot.prompt_texts(names, ["a photo of a {}."])
  assert texts == [c["text"] for c in cases]
  got = zeroshot.tokenize(texts, "tokenize(77, tokenizer='clip', bos=True)")
  np.testing.assert_array_equal(got, [_row(c["row77"]) for c in cases])


def test_fast_path_of_the_cleaning_is_ftfys_result():
  # Printable-ASCII text skips ftfy; both ways give the same cleaned text.
  for text in TEXTS + ["a & b", "x\x0by", "\x1b[1mbold"]:
    slow = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split()).lower()
    assert clip_bpe.clean(text) == slow, text
  assert clip_bpe.clean("It’s  “ＯＫ” &amp;amp; ﬁne\t") == "it's \"ok\" & fine"


def test_bos_eos_modes_and_padding(tok):
  ids = tok.encode(["a photo of a cat."])[0]
  assert ids == [320, 1125, 539, 320, 2368, 269]
  assert tok.encode_fixed(["a photo of a cat."], 9, bos=True).tolist() == [
      [SOT, *ids, EOT, 0]]
  # Without bos the row is NOT CLIP's (documented: pass bos=True).
  assert tok.encode_fixed(["a photo of a cat."], 5).tolist() == [[*ids[:4], EOT]]
  assert tok.encode_fixed(["a photo of a cat."], 5, bos=True, eos="yes").tolist() == [
      [SOT, *ids[:4]]]
  assert tok.encode_fixed(["a photo of a cat."], 4, eos="none").tolist() == [ids[:4]]


def test_decode(tok):
  row = tok.encode_fixed(["A photo of a Cat!  Naïve 日本"], 77, bos=True)[0]
  assert tok.decode(row) == "a photo of a cat ! naïve 日本"
  assert tok.decode(tok.encode(["a!b"])[0]) == "a ! b"
  # Id 0 is both the pad and the byte "!" (not at a word's end): only the
  # padding after <end_of_text>, or trailing zeros without one, is dropped.
  assert tok.bpe.decode([0, 256]) == "!!"
  assert tok.decode([SOT, 0, 256, EOT, 0, 0]) == "!!"
  assert tok.decode([0, 256, 0, 0]) == "!!"
  with pytest.raises(ValueError, match=r"\[49408\].*outside \[0, 49408\)"):
    tok.decode([49408])


def test_word_cache_is_bounded(monkeypatch):
  bpe = clip_bpe.ClipBPE.from_file_bytes(clip_bpe.bundled_path().read_bytes(), "test")
  monkeypatch.setattr(clip_bpe, "CACHE_SIZE", 8)
  assert [bpe.encode(t) for t in TEXTS] == [c["encode"] for c in CASES]
  assert 0 < len(bpe._cache) <= 8  # pylint: disable=protected-access


def test_vocabulary_path_spec_and_bad_files(tmp_path):
  vocab = clip_bpe.bundled_path().read_bytes()
  path = tmp_path / "vocab.txt.gz"
  path.write_bytes(vocab)
  tok = get_tokenizer(f"clip:{path}")
  assert tok.bpe is not clip_bpe.bundled() and tok.spec == f"clip:{path}"
  assert tok.encode(TEXTS[:10]) == [c["encode"] for c in CASES[:10]]
  plain = tmp_path / "vocab.txt"  # Uncompressed works too.
  plain.write_bytes(gzip.decompress(vocab))
  assert get_tokenizer(f"clip:{plain}").encode(TEXTS[:3]) == [c["encode"] for c in CASES[:3]]

  missing = tmp_path / "nope" / "bpe_simple_vocab_16e6.txt.gz"
  with pytest.raises(FileNotFoundError, match=f"CLIP BPE vocabulary file '{missing}' does "
                                              "not exist"):
    get_tokenizer(f"clip:{missing}")
  with pytest.raises(ValueError, match=f"tokenize: CLIP BPE vocabulary file '{missing}'"):
    get_preprocess_fn(f"tokenize(77, tokenizer='clip:{missing}')")
  short = tmp_path / "short.txt.gz"
  short.write_bytes(gzip.compress(b"#version: 0.2\ni n\nt h\n"))
  with pytest.raises(ValueError, match=f"'{short}' holds 2 merges; CLIP needs 48894"):
    get_tokenizer(f"clip:{short}")
  junk = tmp_path / "junk.gz"
  junk.write_bytes(b"\x1f\x8b not really gzip")
  with pytest.raises(ValueError, match=f"'{junk}' is not a valid gzip file"):
    get_tokenizer(f"clip:{junk}")
  binary = tmp_path / "model.bin"
  binary.write_bytes(b"\xff\xfe\x00binary")
  with pytest.raises(ValueError, match=f"'{binary}' is neither gzip nor UTF-8"):
    get_tokenizer(f"clip:{binary}")
  empty = tmp_path / "empty.gz"
  empty.write_bytes(b"")
  with pytest.raises(ValueError, match=f"'{empty}' is empty"):
    get_tokenizer(f"clip:{empty}")
