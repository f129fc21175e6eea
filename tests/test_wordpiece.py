"""BERT's WordPiece tokenizer ("bert:PATH") against tensorflow_text and big_vision.

tests/fixtures/wordpiece/golden.json holds, for 129 hand-written strings
(case, accents, punctuation runs, numbers, emoji, CJK, tabs and newlines,
zero-width and other format characters, words over 100 bytes, empty and
whitespace-only text) and 298 seeded random ones, the raw ids of
`tensorflow_text.BertTokenizer(vocab.txt, lower_case=True)` and the 16 ids of
big_vision's `bert_tokenize(max_len=16)` pp op; make_golden.py next to it
regenerates it from those two (neither is a dependency of this repository).
"""

import hashlib
import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from big_vision_like.pp.builder import get_preprocess_fn
from big_vision_like.text import tokenizers, wordpiece
from big_vision_like.text.tokenizers import get_tokenizer

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "wordpiece"
VOCAB = FIXTURES / "vocab.txt"
GOLDEN = json.loads((FIXTURES / "golden.json").read_text(encoding="utf-8"))
CASES = GOLDEN["cases"]
TEXTS = [c["text"] for c in CASES]
SPEC = f"bert:{VOCAB}"
# What a user writes for big_vision's bert_tokenize(max_len=16, vocab_path=V).
BIG_VISION_PP = f"tokenize(16, tokenizer='{SPEC}', bos=True, eos='none')"


@pytest.fixture(scope="module")
def tok():
  return get_tokenizer(SPEC)


def test_fixture_is_the_vocabulary_and_covers_the_cases(tok):
  assert hashlib.sha256(VOCAB.read_bytes()).hexdigest() == GOLDEN["vocab_sha256"]
  assert isinstance(tok, tokenizers.WordPieceTokenizer)
  lines = VOCAB.read_text(encoding="utf-8").splitlines()
  assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (
      GOLDEN["vocab_size"], 0, GOLDEN["cls_id"], lines.index("[SEP]")) == (
          len(lines), 0, 7, 8)
  assert len(CASES) >= 350 and GOLDEN["max_len"] == 16
  # The golden ids exercise what they should: unknown words, multi-piece
  # words, texts without any id, and texts longer than 15 ids.
  unk = lines.index("[UNK]")
  assert sum(unk in c["ids"] for c in CASES) >= 50
  assert sum(any(lines[i].startswith("##") for i in c["ids"]) for c in CASES) >= 100
  assert sum(not c["ids"] for c in CASES) >= 10
  assert sum(len(c["ids"]) > 15 for c in CASES) >= 20


def test_raw_ids_equal_tensorflow_text(tok):
  got = tok.encode(TEXTS)
  wrong = [(t, g, c["ids"]) for t, g, c in zip(TEXTS, got, CASES) if g != c["ids"]]
  assert not wrong, f"{len(wrong)} of {len(CASES)} differ, e.g. {wrong[:3]}"


def test_pp_op_in_tf_data_equals_big_vision_bert_tokenize():
  pp = get_preprocess_fn(BIG_VISION_PP)
  ds = tf.data.Dataset.from_tensor_slices({"text": TEXTS}).map(pp)
  assert ds.element_spec["text"] == tf.TensorSpec([16], tf.int32)
  got = np.stack([d["text"] for d in ds.as_numpy_iterator()])
  want = np.array([c["bv16"] for c in CASES])
  wrong = np.flatnonzero((got != want).any(axis=1))
  assert not wrong.size, [(TEXTS[i], got[i], want[i]) for i in wrong[:3]]


def test_python_fixed_ids_equal_big_vision(tok):
  np.testing.assert_array_equal(
      tok.encode_fixed(TEXTS, 16, bos=True, eos="none"), [c["bv16"] for c in CASES])
  # The default eos="sticky" would add [SEP], which big_vision never does.
  row = tok.encode_fixed(["a photo of a cat"], 16, bos=True)[0]
  assert tok.eos_id in row and tok.eos_id not in CASES[0]["bv16"]


def test_decode_round_trip(tok):
  for text in ("a photo of a cat", "the unwanted dogs playing", "tokenization"):
    assert tok.decode(tok.encode_fixed([text], 16, bos=True, eos="none")[0]) == text
  assert tok.decode(tok.encode(["Hello, World!"])[0]) == "hello , world !"
  assert tok.decode(tok.encode(["qwerty cat"])[0]) == "[UNK] cat"
  assert tok.encoder.decode([tok.encoder.ids["##s"]]) == "s"  # Nothing to glue to.


def test_normalization_and_splitting():
  # Zero-width characters are deleted (one word), other format and control
  # characters are spaces, U+2028 is part of a word, "€" is not punctuation.
  assert wordpiece.basic_tokenize("Ça\u200bVA\u00a0ﬁne\x00x\u2028y a€b") == [
      "cava", "fine", "x\u2028y", "a€b"]
  assert wordpiece.basic_tokenize("日本のcat!?") == ["日", "本", "のcat", "!", "?"]


def test_missing_and_bad_vocabulary_files(tmp_path):
  missing = tmp_path / "nope" / "vocab.txt"
  with pytest.raises(FileNotFoundError,
                     match=f"BERT WordPiece vocabulary file '{missing}' does not exist"):
    get_tokenizer(f"bert:{missing}")
  with pytest.raises(ValueError, match=f"tokenize: BERT WordPiece vocabulary file '{missing}'"):
    get_preprocess_fn(f"tokenize(16, tokenizer='bert:{missing}', bos=True, eos='none')")
  with pytest.raises(ValueError, match="needs the vocabulary path"):
    get_tokenizer("bert")

  def write(name, lines):
    path = tmp_path / name
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path

  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
  no_unk = write("no_unk.txt", ["[PAD]", "[CLS]", "[SEP]", "a"])
  with pytest.raises(ValueError, match=f"'{no_unk}' lacks \\[UNK\\]"):
    get_tokenizer(f"bert:{no_unk}")
  empty = write("empty.txt", [])
  with pytest.raises(ValueError, match=f"'{empty}' is empty"):
    get_tokenizer(f"bert:{empty}")
  pad_late = write("pad_late.txt", ["[UNK]", "[PAD]", "[CLS]", "[SEP]"])
  with pytest.raises(ValueError, match=f"'{pad_late}' has \\[PAD\\] on line 2"):
    get_tokenizer(f"bert:{pad_late}")
  twice = write("twice.txt", [*specials, "a", "b", "a"])
  with pytest.raises(ValueError, match=f"'{twice}': 'a' is on line 5 and again on line 7"):
    get_tokenizer(f"bert:{twice}")
  blank = write("blank.txt", [*specials, "", "a"])
  with pytest.raises(ValueError, match=f"'{blank}': line 5 is empty"):
    get_tokenizer(f"bert:{blank}")
  binary = tmp_path / "spm.model"
  binary.write_bytes(b"\n\x0b\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02\xff\xfe")
  with pytest.raises(ValueError, match=f"'{binary}' is not UTF-8"):
    get_tokenizer(f"bert:{binary}")
  # CRLF line ends read like LF ones (as TensorFlow's vocabulary tables do).
  crlf = tmp_path / "crlf.txt"
  crlf.write_bytes(b"[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\ncat\r\n##s")
  assert get_tokenizer(f"bert:{crlf}").encode(["cats dog"]) == [[4, 5, 1]]
