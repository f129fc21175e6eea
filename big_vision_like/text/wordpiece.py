"""BERT's WordPiece text encoding, id for id equal to tensorflow_text's.

big_vision's LiT models (e.g. LiT-B16B) read text tokenized by
`tensorflow_text.BertTokenizer(vocab, lower_case=True)` (its pp op
`bert_tokenize`). That class needs the `tensorflow-text` package, whose wheel
depends on the full `tensorflow` package (we pin `tensorflow-cpu`) and weighs
60 MB, so this module re-implements the same encoding in plain Python (no
TensorFlow); `tokenizers.WordPieceTokenizer` wraps it as the `"bert:PATH"`
tokenizer of the registry. tests/test_wordpiece.py checks it id for id
against tensorflow_text itself, through golden ids that
tests/fixtures/wordpiece/make_golden.py produces with tensorflow_text and
with big_vision's own op.

The steps, with tensorflow_text's defaults (lower_case=True):

1. Case folding (tensorflow_text's `case_fold_utf8`: ICU's NFKC_Casefold):
   NFKC (full-width forms, ligatures, "½" -> "1⁄2", no-break and ideographic
   spaces -> " "), full Unicode case folding ("ß" -> "ss"), and the
   Default_Ignorable_Code_Points deleted (zero-width space and joiner, soft
   hyphen, variation selectors, ...): "a\\u200bb" is ONE word "ab".
2. NFD, then every nonspacing mark (category Mn) deleted: accents go,
   "Élan" -> "elan".
3. Every control or format character (Cc, Cf; tab, newline and CR among
   them) becomes a space.
4. Split into words: at runs of ASCII spaces (what RE2's `\\s` matches; other
   Unicode spaces survive steps 1-3 only if NFKC keeps them, e.g. U+1680 and
   U+2028, and then they are part of a word), and around every punctuation
   character and CJK ideograph, each of which is a word of its own.
   Punctuation is any ASCII character that is not a letter, digit or space
   ("$", "+", "^", "`" too), and any character of a Unicode P* category;
   other symbols ("€", emoji) are NOT split off, "a€b" is one word.
5. WordPiece on each word: longest vocabulary entry that is a prefix of the
   word, then the longest "##" + prefix of the rest, and so on. A word that
   cannot be covered this way, or that is longer than `MAX_BYTES_PER_WORD`
   UTF-8 bytes, becomes the single id of "[UNK]".

The vocabulary is a text file with one entry per line, the id of an entry
being its line number (from 0). Lines are taken whole (spaces included); a
trailing CR is dropped (as TensorFlow's text-file lookup tables do); an empty
line or an entry listed twice is an error, as it is for tensorflow_text. Where
this module is stricter: a file that is not UTF-8 is an error (tensorflow_text
would load it and never match its non-UTF-8 lines).

Unicode data: Python's `unicodedata` (Unicode 14.0 for Python 3.11) stands in
for tensorflow_text's ICU and RE2 tables (ICU 77, Unicode 16.0 in
tensorflow-text 2.21). Only characters assigned after Unicode 14.0 can be
treated differently.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

UNK, PAD, CLS, SEP = "[UNK]", "[PAD]", "[CLS]", "[SEP]"
SUFFIX = "##"                # Marks a piece that continues a word.
MAX_BYTES_PER_WORD = 100     # Longer words are "[UNK]" (tensorflow_text's).

# Default_Ignorable_Code_Point (Unicode's DerivedCoreProperties.txt): NFKC
# case folding deletes these characters.
_IGNORABLE_RANGES = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))
_IGNORABLE = frozenset(chr(c) for lo, hi in _IGNORABLE_RANGES
                       for c in range(lo, hi + 1))

# The CJK ideograph blocks that tensorflow_text's BERT splitter isolates
# (BERT's own list: Unified Ideographs, extensions A-E, compatibility ones).
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F), (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _splits_off(char: str) -> bool:
  """Whether `char` is a word of its own (punctuation or a CJK ideograph)."""
  code = ord(char)
  if code < 0x80:  # "!".."~" except letters and digits.
    return 0x21 <= code <= 0x7E and not char.isalnum()
  if unicodedata.category(char).startswith("P"):
    return True
  return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def nfkc_casefold(text: str) -> str:
  """ICU's NFKC_Casefold of `text`, up to normalization form (step 1).

  Unicode defines it as NFKC, case folding and deleting default ignorables,
  repeated until nothing changes. Composed or not, the result has the same
  NFD, which is all that step 2 looks at.
  """
  if text.isascii():
    return text.lower()  # ASCII: no compatibility forms, no ignorables.
  while True:
    folded = unicodedata.normalize("NFKC", text).casefold()
    folded = "".join(c for c in folded if c not in _IGNORABLE)
    folded = unicodedata.normalize("NFKC", folded)
    if folded == text:
      return folded
    text = folded


def normalize(text: str) -> str:
  """Steps 1-3: case folded, accents dropped, control characters as spaces."""
  text = nfkc_casefold(text)
  if not text.isascii():
    text = "".join(c for c in unicodedata.normalize("NFD", text)
                   if unicodedata.category(c) != "Mn")
  return "".join(" " if unicodedata.category(c) in ("Cc", "Cf") else c
                 for c in text)


def basic_tokenize(text: str) -> list[str]:
  """The words of `text` (steps 1-4), before WordPiece."""
  words: list[str] = []
  for chunk in normalize(text).split(" "):  # Empty chunks: runs of spaces.
    start = 0
    for i, char in enumerate(chunk):
      if _splits_off(char):
        words += [chunk[start:i], char] if i > start else [char]
        start = i + 1
    if start < len(chunk):
      words.append(chunk[start:])
  return words


def parse_vocab(data: bytes, source: str) -> list[str]:
  """The entries of a vocabulary file's bytes, one per line, in id order.

  Fails naming `source` (and the line) for a file that is empty, not UTF-8,
  has an empty line or lists an entry twice.
  """
  if not data:
    raise ValueError(f"BERT WordPiece vocabulary file {source!r} is empty.")
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"BERT WordPiece vocabulary file {source!r} is not UTF-8 "
                     f"text (one token per line): {e}") from e
  lines = text.split("\n")
  if lines[-1] == "":
    lines.pop()  # The file's final newline ends the last line.
  tokens = [line.removesuffix("\r") for line in lines]
  seen: dict[str, int] = {}
  for i, token in enumerate(tokens):
    if not token:
      raise ValueError(f"BERT WordPiece vocabulary file {source!r}: line "
                       f"{i + 1} is empty (tensorflow_text rejects empty "
                       f"lines too).")
    if token in seen:
      raise ValueError(f"BERT WordPiece vocabulary file {source!r}: {token!r} "
                       f"is on line {seen[token] + 1} and again on line "
                       f"{i + 1}.")
    seen[token] = i
  return tokens


class WordPiece:
  """The encoder of one vocabulary (see the module docstring).

  `encode(text)` gives the raw ids of the text: no [CLS], no [SEP].
  """

  def __init__(self, tokens: Iterable[str], source: str = "?"):
    self.source = source
    self.tokens = list(tokens)
    self.ids = {token: i for i, token in enumerate(self.tokens)}
    if len(self.ids) != len(self.tokens):
      raise ValueError(f"BERT WordPiece vocabulary {source!r} lists an entry "
                       f"twice.")
    missing = [t for t in (PAD, UNK, CLS, SEP) if t not in self.ids]
    if missing:
      raise ValueError(f"BERT WordPiece vocabulary {source!r} lacks "
                       f"{', '.join(missing)} (a BERT vocab.txt has [PAD], "
                       f"[UNK], [CLS] and [SEP]).")
    self.unk_id = self.ids[UNK]
    self.vocab_size = len(self.tokens)
    # No piece is longer than this many characters: bounds the search.
    self._longest = max(len(t.removeprefix(SUFFIX)) for t in self.tokens)

  @classmethod
  def from_file_bytes(cls, data: bytes, source: str) -> WordPiece:
    """Loads a vocabulary file's bytes (UTF-8, one token per line)."""
    return cls(parse_vocab(data, source), source)

  def encode_word(self, word: str) -> list[int]:
    """The ids of one word of `basic_tokenize` (step 5)."""
    if len(word.encode("utf-8", "surrogatepass")) > MAX_BYTES_PER_WORD:
      return [self.unk_id]
    ids, start = [], 0
    while start < len(word):
      prefix = SUFFIX if start else ""
      for end in range(min(len(word), start + self._longest), start, -1):
        piece_id = self.ids.get(prefix + word[start:end])
        if piece_id is not None:
          ids.append(piece_id)
          start = end
          break
      else:  # Nothing in the vocabulary starts here: the whole word is unknown.
        return [self.unk_id]
    return ids

  def encode(self, text: str) -> list[int]:
    """The raw ids of `text` (no [CLS] / [SEP])."""
    return [i for word in basic_tokenize(text) for i in self.encode_word(word)]

  def decode(self, ids: Iterable[int]) -> str:
    """The words of `ids`, "##" pieces glued to the piece before them.

    Not the input text: it is lower-cased, without accents, with spaces
    around punctuation, and an unknown word reads "[UNK]". A "##" piece
    with nothing before it starts a word.
    """
    words: list[str] = []
    for i in ids:
      token = self.tokens[int(i)]
      if token.startswith(SUFFIX) and words:
        words[-1] += token.removeprefix(SUFFIX)
      else:
        words.append(token.removeprefix(SUFFIX))
    return " ".join(words)

  def __repr__(self) -> str:
    return f"WordPiece({self.source!r}, vocab_size={self.vocab_size})"
