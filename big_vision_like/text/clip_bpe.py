"""CLIP's byte-level BPE text encoding, id for id equal to open_clip's.

The tokenizer of CLIP (Radford et al. 2021, "Learning Transferable Visual
Models From Natural Language Supervision") and of every open_clip model that
uses `open_clip.tokenize`. This module is the encoding itself (plain Python,
no TensorFlow); `tokenizers.ClipTokenizer` wraps it as the `"clip"` tokenizer
of the registry (tf.data, fixed-length arrays, BOS/EOS modes).

The steps, each as CLIP does them:

1. Cleaning (`clean`): `ftfy.fix_text` (mojibake, but also curly quotes to
   straight ones, full-width to half-width forms, ligatures, NFC, control
   characters), HTML entities unescaped twice, runs of whitespace collapsed to
   one space, stripped, lower-cased. ftfy is a dependency because it is NOT
   the identity on ordinary text ("it’s" -> "it's", "，" -> ","); text made
   only of printable ASCII (no "&") and tab/newline, on which it provably
   changes nothing that matters, skips it (4x faster for English prompts).
2. Pre-tokenization (`regex` package, case-insensitive): the two special
   tokens written literally, the contractions 's 't 're 've 'm 'll 'd, runs
   of letters (\\p{L}+), single digits (\\p{N}), runs of anything else that
   is not whitespace.
3. Each piece's UTF-8 bytes become printable characters (`byte_to_unicode`,
   GPT-2's table), "</w>" is appended to the last one, and the merges of
   `bpe_simple_vocab_16e6.txt.gz` are applied, lowest rank first.
4. Ids: the 256 byte characters, the same with "</w>", the merged symbols in
   merge order (the first 49152 - 256 - 2 = 48894 merges of the file),
   then "<start_of_text>" (49406) and "<end_of_text>" (49407): 49408 ids.

Encoded pieces are cached per instance (CLIP caches too), so the 80 prompt
templates x 1000 ImageNet classes cost one BPE per distinct word. The cache
is emptied when it reaches `CACHE_SIZE` entries, bounding memory on web-scale
caption streams.

The vocabulary file is OpenAI's (MIT license), shipped in `resources/` with
its license; `bundled()` loads it once per process.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import re
from typing import Iterable, Sequence

import ftfy
import regex

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2   # CLIP's vocabulary: 49152 ids before 2 specials.
SOT, EOT = "<start_of_text>", "<end_of_text>"
CONTEXT_LENGTH = 77            # What every CLIP text tower reads.
CACHE_SIZE = 1 << 18           # Cached pieces per instance before a reset.
_END = "</w>"

# Text on which ftfy.fix_text + html.unescape change nothing (after the
# whitespace collapse): printable ASCII without "&", plus tab, LF and CR.
# ASCII cannot hold mojibake, quotes/ligatures/width forms are non-ASCII,
# entities need "&", and ftfy's control-character removal spares these.
_ASCII_CLEAN = re.compile(r"[\t\n\r\x20-\x25\x27-\x7e]*")


@functools.cache
def byte_to_unicode() -> dict[int, str]:
  """GPT-2's reversible map from the 256 byte values to printable characters.

  The 188 bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬',
  '®'..'ÿ') stand for themselves; the other 68 (controls, space, NBSP, soft
  hyphen), in increasing order, become U+0100, U+0101, ... (space is 'Ġ').
  The dict is ordered by the ids the characters get: printable bytes first.
  """
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  table = {b: chr(b) for b in printable}
  others = [b for b in range(256) if b not in table]
  table.update({b: chr(256 + i) for i, b in enumerate(others)})
  return table


def clean(text: str) -> str:
  """CLIP's text cleaning (step 1 of the module docstring)."""
  if not _ASCII_CLEAN.fullmatch(text):
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
  return " ".join(text.split()).lower()


def _pattern(specials: Sequence[str]) -> regex.Pattern:
  alternatives = [regex.escape(s, special_only=True) for s in specials]
  alternatives += ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d",
                   r"\p{L}+", r"\p{N}", r"[^\s\p{L}\p{N}]+"]
  return regex.compile("|".join(alternatives), regex.IGNORECASE)


def parse_merges(text: str, source: str) -> list[tuple[str, str]]:
  """The first `NUM_MERGES` merges of a vocabulary file's text.

  The first line is a header ("#version: 0.2"), then one merge "a b" per
  line. Fails naming `source` when the file is too short or malformed.
  """
  lines = text.rstrip("\n").split("\n")[1:NUM_MERGES + 1]
  merges = [tuple(line.split()) for line in lines]
  bad = next((i for i, m in enumerate(merges) if len(m) != 2), None)
  if bad is not None:
    raise ValueError(f"CLIP BPE vocabulary {source!r}: line {bad + 2} should be "
                     f"a merge 'a b', got {lines[bad][:80]!r}.")
  if len(merges) < NUM_MERGES:
    raise ValueError(f"CLIP BPE vocabulary {source!r} holds {len(merges)} "
                     f"merges; CLIP needs {NUM_MERGES}.")
  return merges  # type: ignore[return-value]


class ClipBPE:
  """CLIP's encoder for one vocabulary (see the module docstring).

  `encode(text)` gives the ids of the text without <start_of_text> and
  <end_of_text>; `encode_fixed` adds them, cuts and pads like
  `open_clip.tokenize`.
  """

  def __init__(self, merges: Sequence[tuple[str, str]], source: str = "?"):
    self.source = source
    byte_chars = list(byte_to_unicode().values())
    vocab = [*byte_chars, *(c + _END for c in byte_chars),
             *(a + b for a, b in merges), SOT, EOT]
    # Later entries win for a repeated symbol, as in CLIP (its file has none).
    self._ids = {symbol: i for i, symbol in enumerate(vocab)}
    self._symbols = vocab
    self._ranks = {tuple(m): r for r, m in enumerate(merges)}
    self._specials = {SOT: len(vocab) - 2, EOT: len(vocab) - 1}
    self.sot_id, self.eot_id = self._specials[SOT], self._specials[EOT]
    self.vocab_size = len(vocab)
    self._bytes = byte_to_unicode()
    self._unbytes = {c: b for b, c in self._bytes.items()}
    self._split = _pattern(list(self._specials))
    self._cache: dict[str, tuple[int, ...]] = {}

  @classmethod
  def from_file_bytes(cls, data: bytes, source: str) -> "ClipBPE":
    """Loads a vocabulary file's bytes (gzip-compressed or plain UTF-8)."""
    if data[:2] == b"\x1f\x8b":
      try:
        data = gzip.decompress(data)
      except (OSError, EOFError) as e:
        raise ValueError(f"CLIP BPE vocabulary {source!r} is not a valid gzip "
                         f"file ({len(data)} bytes): {e}") from e
    try:
      text = data.decode("utf-8")
    except UnicodeDecodeError as e:
      raise ValueError(f"CLIP BPE vocabulary {source!r} is neither gzip nor "
                       f"UTF-8 text: {e}") from e
    return cls(parse_merges(text, source), source)

  def _merge(self, symbols: list[str]) -> list[str]:
    """Applies the lowest-ranked merge everywhere (left to right), repeatedly."""
    ranks = self._ranks
    while len(symbols) > 1:
      best, best_rank = None, NUM_MERGES + 1
      for pair in zip(symbols, symbols[1:]):
        rank = ranks.get(pair)
        if rank is not None and rank < best_rank:
          best, best_rank = pair, rank
      if best is None:
        break
      first, second = best
      merged, i, n = [], 0, len(symbols)
      while i < n:
        if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
          merged.append(first + second)
          i += 2
        else:
          merged.append(symbols[i])
          i += 1
      symbols = merged
    return symbols

  def _encode_piece(self, piece: str) -> tuple[int, ...]:
    chars = "".join(self._bytes[b] for b in piece.encode("utf-8"))
    if chars in self._specials:  # "<start_of_text>" written in the text.
      ids = (self._specials[chars],)
    else:
      symbols = [*chars[:-1], chars[-1] + _END]
      ids = tuple(self._ids[s] for s in self._merge(symbols))
    if len(self._cache) >= CACHE_SIZE:
      self._cache.clear()
    self._cache[piece] = ids
    return ids

  def encode(self, text: str) -> list[int]:
    """Ids of `text` (cleaned first), without <start_of_text>/<end_of_text>."""
    ids: list[int] = []
    cache = self._cache
    for piece in self._split.findall(clean(text)):
      piece_ids = cache.get(piece)
      ids.extend(piece_ids if piece_ids is not None
                 else self._encode_piece(piece))
    return ids

  def encode_fixed(self, texts: Iterable[str],
                   context_length: int = CONTEXT_LENGTH) -> list[list[int]]:
    """`open_clip.tokenize`'s rows as lists: [sot] + ids + [eot], cut, padded.

    A text too long keeps its first `context_length - 2` ids and ends with
    <end_of_text>; shorter rows are padded with 0.
    """
    if isinstance(context_length, bool) or not isinstance(context_length, int) \
        or context_length < 1:
      raise ValueError(f"encode_fixed: context_length must be a positive int, got "
                       f"{context_length!r}.")
    rows = []
    for text in texts:
      ids = [self.sot_id, *self.encode(text)][:context_length - 1] + [self.eot_id]
      rows.append(ids + [0] * (context_length - len(ids)))
    return rows

  def decode(self, ids: Iterable[int]) -> str:
    """The (cleaned) text of ids; a symbol ending in "</w>" ends a word.

    Special ids are written as their names; a cut inside a multi-byte
    character shows as U+FFFD.
    """
    out = bytearray()
    for i in ids:
      symbol = self._symbols[i]
      if symbol in self._specials:
        out += symbol.encode("utf-8")
      elif symbol.endswith(_END):
        out += bytes(self._unbytes[c] for c in symbol[:-len(_END)]) + b" "
      else:
        out += bytes(self._unbytes[c] for c in symbol)
    return out.decode("utf-8", "replace").strip()

  def __repr__(self) -> str:
    return f"ClipBPE({self.source!r}, vocab_size={self.vocab_size})"


def bundled_path():
  """The shipped vocabulary file (an importlib.resources Traversable)."""
  return importlib.resources.files("big_vision_like.text") / "resources" / VOCAB_FILE


@functools.cache
def bundled() -> ClipBPE:
  """CLIP's own vocabulary, shipped with the package; loaded once."""
  path = bundled_path()
  try:
    data = path.read_bytes()
  except OSError as e:
    raise FileNotFoundError(f"The bundled CLIP BPE vocabulary {path} cannot be "
                            f"read ({e}); is the package installed with its "
                            f"data files?") from e
  return ClipBPE.from_file_bytes(data, str(path))
