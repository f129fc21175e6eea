"""Tokenizers for the text tower, looked up by a short spec string.

A config names its tokenizer as `"bytes"` (UTF-8 bytes, no files needed),
`"sentencepiece:/path/to/model.model"` (also `gs://...`), `"clip"` (CLIP's
byte-level BPE with its bundled vocabulary, `"clip:/path/vocab.txt.gz"` for
another file; see `ClipTokenizer`: CLIP's ids need `bos=True`) or
`"bert:/path/to/vocab.txt"` (BERT's WordPiece, as big_vision's LiT models
use it; see `WordPieceTokenizer`: big_vision's ids need `bos=True,
eos="none"`). Training captions are tokenized inside tf.data
(`Tokenizer.tf_tokenize`) and zero-shot class names in Python
(`Tokenizer.encode_fixed`); both go through the same object,
so the ids, the EOS handling and the padding cannot drift apart between
training and evaluation.

Special tokens (EOS, BOS) are NOT added by `encode` / `tf_tokenize`: they are
the raw text ids. Adding them, truncating and padding to a fixed length is
done by `encode_fixed` / `tf_encode_fixed` (and by the `tokenize` pp op),
with one of the `EOS_MODES`:
  "sticky": append EOS; when the text is too long it is cut so that EOS is
    still the last token (the text tower can read the sentence end).
  "yes": append EOS, then cut to `max_len` (a long text loses its EOS).
  "none": no EOS, just cut.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece
import tensorflow as tf

from big_vision_like import registry
from big_vision_like.registry import TOKENIZERS
from big_vision_like.text import clip_bpe, wordpiece

EOS_MODES = ("sticky", "yes", "none")
SPEC_HELP = ("A tokenizer spec is 'name' or 'name:argument', e.g. 'bytes', "
             "'sentencepiece:/path/to/model.model' (gs:// paths work too), "
             "'clip' or 'bert:/path/to/vocab.txt'.")


class Tokenizer(abc.ABC):
  """Text <-> int ids. Subclasses define the vocabulary and raw encoding."""

  spec: str  # The string `get_tokenizer` was called with (for messages).

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids; every id (specials included) is in [0, vocab_size)."""

  @property
  @abc.abstractmethod
  def pad_id(self) -> int:
    """The id that fills fixed-length token arrays after the text."""

  @property
  @abc.abstractmethod
  def eos_id(self) -> int | None:
    """End-of-sequence id, or None if the vocabulary has none."""

  @property
  @abc.abstractmethod
  def bos_id(self) -> int | None:
    """Beginning-of-sequence id, or None if the vocabulary has none."""

  @abc.abstractmethod
  def _encode(self, texts: list[str]) -> list[list[int]]:
    """Raw ids of each text (no specials)."""

  @abc.abstractmethod
  def _decode(self, ids: list[int]) -> str:
    """Text of ids that contain no special ids."""

  @abc.abstractmethod
  def tf_tokenize(self, text: tf.Tensor) -> tf.Tensor:
    """Raw ids (no specials) of a scalar tf.string, as int32 of shape [None].

    Usable inside `tf.data` maps and `tf.function`s.
    """

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    """Raw ids (no EOS/BOS) of each text in `texts` (a list, not one str)."""
    if isinstance(texts, (str, bytes)):
      # A bare str is a sequence of 1-char strings: refuse, don't mis-encode.
      raise TypeError(f"tokenizer {self.spec!r}: encode takes a list of "
                      f"strings, got one {type(texts).__name__} {texts!r}; "
                      f"use encode([text]).")
    texts = list(texts)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
      raise TypeError(f"tokenizer {self.spec!r}: encode takes strings, got "
                      f"{type(bad[0]).__name__} {bad[0]!r}.")
    return self._encode(texts)

  def decode(self, ids: Iterable[int]) -> str:
    """The text of `ids`; pad, EOS and BOS ids are dropped first."""
    specials = {self.pad_id, self.eos_id, self.bos_id}
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    bad = [i for i in ids if not 0 <= i < self.vocab_size]
    if bad:
      raise ValueError(f"tokenizer {self.spec!r}: ids {bad[:5]} are outside "
                       f"[0, {self.vocab_size}).")
    return self._decode([i for i in ids if i not in specials])

  def check_options(self, eos: str, bos: bool, pad_value: int | None,
                    where: str) -> int:
    """Validates fixed-length options; returns the pad value to use.

    `where` prefixes the messages (e.g. the pp op's name).
    """
    if eos not in EOS_MODES:
      raise ValueError(f"{where}: eos must be one of {EOS_MODES}, got "
                       f"{eos!r}.")
    if eos != "none" and self.eos_id is None:
      raise ValueError(f"{where}: eos={eos!r} but tokenizer {self.spec!r} "
                       f"has no EOS id; use eos='none'.")
    if not isinstance(bos, bool):
      raise ValueError(f"{where}: bos must be True or False, got {bos!r}.")
    if bos and self.bos_id is None:
      raise ValueError(f"{where}: bos=True but tokenizer {self.spec!r} has "
                       f"no BOS id.")
    if pad_value is None:
      return self.pad_id
    if (isinstance(pad_value, bool) or not isinstance(pad_value, int)
        or not -2**31 <= pad_value < 2**31):
      raise ValueError(f"{where}: pad_value must be an int32, got "
                       f"{pad_value!r}.")
    return pad_value

  def encode_fixed(self, texts: Sequence[str], max_len: int, *,
                   eos: str = "sticky", bos: bool = False,
                   pad_value: int | None = None) -> np.ndarray:
    """Ids of texts with BOS/EOS, cut and padded: int32 [len(texts), max_len].

    The Python twin of `tf_encode_fixed` (and of the `tokenize` pp op), e.g.
    for the class names of a zero-shot evaluator.
    """
    _check_max_len(max_len, "encode_fixed")
    pad = self.check_options(eos, bos, pad_value, "encode_fixed")
    encoded = self.encode(texts)
    out = np.full((len(encoded), max_len), pad, np.int32)
    for row, ids in zip(out, encoded):
      ids = ([self.bos_id] if bos else []) + ids
      if eos == "sticky":
        ids = ids[:max_len - 1] + [self.eos_id]
      elif eos == "yes":
        ids = (ids + [self.eos_id])[:max_len]
      else:
        ids = ids[:max_len]
      row[:len(ids)] = ids
    return out

  def tf_encode_fixed(self, text: tf.Tensor, max_len: int, *,
                      eos: str = "sticky", bos: bool = False,
                      pad_value: int | None = None) -> tf.Tensor:
    """`encode_fixed` of ONE scalar tf.string: int32 of static shape [max_len].
    """
    _check_max_len(max_len, "tf_encode_fixed")
    pad = self.check_options(eos, bos, pad_value, "tf_encode_fixed")
    ids = self.tf_tokenize(text)
    if bos:
      ids = tf.concat([[self.bos_id], ids], 0)
    if eos == "sticky":
      ids = tf.concat([ids[:max_len - 1], [self.eos_id]], 0)
    elif eos == "yes":
      ids = tf.concat([ids, [self.eos_id]], 0)[:max_len]
    else:
      ids = ids[:max_len]
    ids = tf.pad(ids, [[0, max_len - tf.shape(ids)[0]]], constant_values=pad)
    return tf.reshape(ids, [max_len])  # Static shape, for batching and jit.

  def tf_encode_fixed_many(self, texts: tf.Tensor, max_len: int, *,
                           eos: str = "sticky", bos: bool = False,
                           pad_value: int | None = None) -> tf.Tensor:
    """`encode_fixed` of a 1-D tf.string (e.g. an example's captions).

    int32 of shape [n, max_len]. Here `tf_encode_fixed` is mapped over the
    texts; `PythonTokenizer` encodes all n in one Python call instead.
    """
    pad, texts = self._check_many(texts, max_len, eos, bos, pad_value)
    return tf.map_fn(
        lambda t: self.tf_encode_fixed(t, max_len, eos=eos, bos=bos,
                                       pad_value=pad),
        texts, fn_output_signature=tf.TensorSpec([max_len], tf.int32))

  def _check_many(self, texts, max_len: int, eos: str, bos: bool,
                  pad_value: int | None) -> tuple[int, tf.Tensor]:
    """Validated pad value and `texts` as a 1-D tf.string tensor."""
    _check_max_len(max_len, "tf_encode_fixed_many")
    pad = self.check_options(eos, bos, pad_value, "tf_encode_fixed_many")
    texts = tf.convert_to_tensor(texts)
    if texts.dtype != tf.string or texts.shape.rank != 1:
      raise ValueError(f"tokenizer {self.spec!r}: tf_encode_fixed_many takes "
                       f"a 1-D tf.string, got {texts.dtype.name} of shape "
                       f"{texts.shape}.")
    return pad, texts

  def __repr__(self) -> str:
    return (f"{type(self).__name__}({self.spec!r}, vocab_size="
            f"{self.vocab_size}, pad_id={self.pad_id}, eos_id={self.eos_id}, "
            f"bos_id={self.bos_id})")


def _check_max_len(max_len: int, where: str) -> None:
  if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
    raise ValueError(f"{where}: max_len must be a positive int, got "
                     f"{max_len!r}.")


def _check_scalar_string(text: tf.Tensor, spec: str) -> tf.Tensor:
  text = tf.convert_to_tensor(text)
  if text.dtype != tf.string:
    raise ValueError(f"tokenizer {spec!r}: tf_tokenize needs a tf.string, got "
                     f"{text.dtype.name}.")
  if text.shape.rank is not None and text.shape.rank != 0:
    raise ValueError(f"tokenizer {spec!r}: tf_tokenize takes ONE string (a "
                     f"scalar), got shape {text.shape}; map over captions.")
  return text


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes as ids; no vocabulary file.

  pad=0, eos=1, bos=2, and byte b has id b + 3 (ByT5's layout plus a BOS),
  so vocab_size = 259. "ab" -> [100, 101]; "é" (bytes c3 a9) -> [198, 172].
  """

  PAD, EOS, BOS, OFFSET = 0, 1, 2, 3

  def __init__(self, spec: str = "bytes"):
    self.spec = spec

  @property
  def vocab_size(self) -> int:
    return 256 + self.OFFSET

  @property
  def pad_id(self) -> int:
    return self.PAD

  @property
  def eos_id(self) -> int:
    return self.EOS

  @property
  def bos_id(self) -> int:
    return self.BOS

  def _encode(self, texts: list[str]) -> list[list[int]]:
    return [[b + self.OFFSET for b in t.encode("utf-8")] for t in texts]

  def _decode(self, ids: list[int]) -> str:
    # A cut in the middle of a multi-byte character shows as U+FFFD.
    return bytes(i - self.OFFSET for i in ids).decode("utf-8", "replace")

  def tf_tokenize(self, text: tf.Tensor) -> tf.Tensor:
    text = _check_scalar_string(text, self.spec)
    return tf.cast(tf.io.decode_raw(text, tf.uint8), tf.int32) + self.OFFSET


def _read_model(path: str, what: str = "sentencepiece model file") -> bytes:
  """The bytes of a model file (local or any tf.io.gfile filesystem)."""
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      return f.read()
  except tf.errors.NotFoundError as e:
    raise FileNotFoundError(f"{what} {path!r} does not exist.") from e
  except tf.errors.OpError as e:
    raise OSError(f"cannot read {what} {path!r}: {e.message}") from e


def _utf8(raw: bytes, spec: str) -> str:
  """`raw` decoded as UTF-8, or an error naming the tokenizer and the text."""
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"tokenizer {spec!r}: text is not valid UTF-8: "
                     f"{raw[:80]!r}") from e


class PythonTokenizer(Tokenizer):
  """A tokenizer whose encoder is Python code (a library or our own BPE).

  Subclasses give `_encode_one(str) -> list[int]` and `_tf_op_name`; this
  class runs them inside TF graphs through `tf.numpy_function`: fine in
  tf.data maps, but such a pipeline cannot be serialized (tf.data service,
  SavedModel), and text that is not valid UTF-8 fails loudly at run time.
  `tf_encode_fixed_many` encodes all of an example's texts in ONE call: a
  call per text holds the GIL n times and pays TF's per-call overhead n
  times, which in a training stream competes with the step's own Python.
  """

  _tf_op_name: str  # Name of the numpy_function op (shows in TF errors).

  @abc.abstractmethod
  def _encode_one(self, text: str) -> list[int]:
    """Raw ids of one text (no specials)."""

  def _encode(self, texts: list[str]) -> list[list[int]]:
    return [self._encode_one(t) for t in texts]

  def tf_tokenize(self, text: tf.Tensor) -> tf.Tensor:
    text = _check_scalar_string(text, self.spec)

    def encode_one(raw) -> np.ndarray:
      raw = raw.item() if isinstance(raw, np.ndarray) else raw
      return np.asarray(self._encode_one(_utf8(raw, self.spec)), np.int32)

    ids = tf.numpy_function(encode_one, [text], tf.int32, stateful=False,
                            name=self._tf_op_name)
    ids.set_shape([None])
    return ids

  def tf_encode_fixed_many(self, texts: tf.Tensor, max_len: int, *,
                           eos: str = "sticky", bos: bool = False,
                           pad_value: int | None = None) -> tf.Tensor:
    pad, texts = self._check_many(texts, max_len, eos, bos, pad_value)

    def encode_all(raw: np.ndarray) -> np.ndarray:
      return self.encode_fixed([_utf8(t, self.spec) for t in raw], max_len,
                               eos=eos, bos=bos, pad_value=pad)

    ids = tf.numpy_function(encode_all, [texts], tf.int32, stateful=False,
                            name=self._tf_op_name + "_many")
    ids = tf.reshape(ids, [tf.shape(texts)[0], max_len])
    ids.set_shape([texts.shape[0], max_len])
    return ids


class SentencePieceTokenizer(PythonTokenizer):
  """A trained sentencepiece model (unigram or BPE), read from a file.

  The special ids are the model's own. A model without a pad piece
  (sentencepiece's default layout has pad_id=-1) pads with its <unk> id
  (0 in that default layout).
  """

  _tf_op_name = "sentencepiece_tokenize"

  def __init__(self, path: str, spec: str | None = None):
    self.spec = spec or f"sentencepiece:{path}"
    self.path = path
    proto = _read_model(path)
    if not proto:
      raise ValueError(f"sentencepiece model file {path!r} is empty.")
    try:
      self._sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
    except (RuntimeError, TypeError, ValueError) as e:
      raise ValueError(f"{path!r} is not a valid sentencepiece model "
                       f"({len(proto)} bytes): {e}") from e
    if self._sp.get_piece_size() <= 0:
      raise ValueError(f"{path!r} is not a valid sentencepiece model: it "
                       f"has no pieces.")

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def pad_id(self) -> int:
    pad = self._sp.pad_id()
    return pad if pad >= 0 else self._sp.unk_id()

  @property
  def eos_id(self) -> int | None:
    return self._sp.eos_id() if self._sp.eos_id() >= 0 else None

  @property
  def bos_id(self) -> int | None:
    return self._sp.bos_id() if self._sp.bos_id() >= 0 else None

  def _encode(self, texts: list[str]) -> list[list[int]]:
    return self._sp.encode(texts, out_type=int)

  def _decode(self, ids: list[int]) -> str:
    return self._sp.decode(ids)

  def _encode_one(self, text: str) -> list[int]:
    return self._sp.encode(text, out_type=int)


class ClipTokenizer(PythonTokenizer):
  """CLIP's byte-level BPE (`clip_bpe`), giving exactly open_clip's ids.

  49408 ids: pad=0 (open_clip pads with 0, which is also the id of "!"
  inside a word), bos=<start_of_text>=49406, eos=<end_of_text>=49407.
  `open_clip.tokenize(texts)` equals `encode_fixed(texts, 77, bos=True)`
  (eos="sticky", the default) and the pp op `tokenize(77, tokenizer="clip",
  bos=True)`: [sot] + ids + [eot], a long text cut so that <end_of_text>
  stays last, then zeros. CLIP always adds both specials; without bos=True
  the ids are NOT what a CLIP text tower was trained on. eos="yes" drops
  <end_of_text> from a long text (CLIP's towers read the sentence at its
  position, so avoid it), eos="none" never adds it.

  Do not canonicalize text before it (no `canonicalize_text` in the pp):
  CLIP's own cleaning runs inside `encode` (ftfy, HTML entities, whitespace,
  lower case) and CLIP keeps punctuation.
  """

  _tf_op_name = "clip_bpe_tokenize"

  def __init__(self, bpe: clip_bpe.ClipBPE, spec: str = "clip"):
    self.spec = spec
    self.bpe = bpe

  @property
  def vocab_size(self) -> int:
    return self.bpe.vocab_size

  @property
  def pad_id(self) -> int:
    return 0

  @property
  def eos_id(self) -> int:
    return self.bpe.eot_id

  @property
  def bos_id(self) -> int:
    return self.bpe.sot_id

  def _encode_one(self, text: str) -> list[int]:
    return self.bpe.encode(text)

  def _decode(self, ids: list[int]) -> str:
    return self.bpe.decode(ids)

  def decode(self, ids: Iterable[int]) -> str:
    """The text of a row: what lies between <start_of_text> and the first
    <end_of_text>; without <end_of_text>, trailing zeros are padding (pad=0
    is also the id of "!", so only those are dropped).
    """
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    bad = [i for i in ids if not 0 <= i < self.vocab_size]
    if bad:
      raise ValueError(f"tokenizer {self.spec!r}: ids {bad[:5]} are outside "
                       f"[0, {self.vocab_size}).")
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    else:
      while ids and ids[-1] == self.pad_id:
        ids.pop()
    return self._decode([i for i in ids if i != self.bos_id])


class WordPieceTokenizer(PythonTokenizer):
  """BERT's WordPiece (`wordpiece`), giving exactly big_vision's LiT ids.

  The vocabulary is a BERT vocab.txt (one token per line, id = line number;
  local or any tf.io.gfile path such as gs://), encoded like
  `tensorflow_text.BertTokenizer(vocab, lower_case=True)`: lower-cased,
  accents dropped, split at spaces, punctuation and CJK ideographs, then
  greedy longest-match word pieces ("##" continues a word), "[UNK]" for a
  word that has none. pad=[PAD] (must be id 0: big_vision pads with 0),
  bos=[CLS], eos=[SEP], vocab_size = the number of lines.

  big_vision's pp op `bert_tokenize(max_len=L, vocab_path=V)` is the pp op
  `tokenize(L, tokenizer='bert:V', bos=True, eos='none')` (and
  `encode_fixed(texts, L, bos=True, eos="none")`): [CLS], the first L - 1
  word-piece ids, zeros; no [SEP]. The default eos="sticky" would append
  [SEP], which big_vision's BERT text towers never saw. For a 1-D tensor of
  captions big_vision picks one at random; here `tokenize` them all (the op
  takes a 1-D tensor) and `choice` a row after it, or `choice` first. No
  text cleaning is needed before it (it lower-cases and splits punctuation
  itself).
  """

  _tf_op_name = "bert_wordpiece_tokenize"

  def __init__(self, encoder: wordpiece.WordPiece, spec: str):
    self.spec = spec
    self.encoder = encoder
    ids = encoder.ids
    if ids[wordpiece.PAD] != 0:
      raise ValueError(f"BERT WordPiece vocabulary file {encoder.source!r} "
                       f"has {wordpiece.PAD} on line {ids[wordpiece.PAD] + 1}; "
                       f"it must be the first line (id 0: BERT models and "
                       f"big_vision pad with 0).")
    self._cls, self._sep = ids[wordpiece.CLS], ids[wordpiece.SEP]

  @property
  def vocab_size(self) -> int:
    return self.encoder.vocab_size

  @property
  def pad_id(self) -> int:
    return 0

  @property
  def eos_id(self) -> int:
    return self._sep

  @property
  def bos_id(self) -> int:
    return self._cls

  def _encode_one(self, text: str) -> list[int]:
    return self.encoder.encode(text)

  def _decode(self, ids: list[int]) -> str:
    return self.encoder.decode(ids)


@TOKENIZERS.register("bytes")
def _bytes_tokenizer(arg: str | None, spec: str) -> Tokenizer:
  if arg:
    raise ValueError(f"tokenizer 'bytes' takes no argument, got {spec!r}.")
  return ByteTokenizer(spec)


@TOKENIZERS.register("sentencepiece")
def _sentencepiece_tokenizer(arg: str | None, spec: str) -> Tokenizer:
  if not arg:
    raise ValueError(f"tokenizer 'sentencepiece' needs the model path: "
                     f"'sentencepiece:/path/to/model.model', got {spec!r}.")
  return SentencePieceTokenizer(arg, spec)


@TOKENIZERS.register("clip")
def _clip_tokenizer(arg: str | None, spec: str) -> Tokenizer:
  if not arg:
    return ClipTokenizer(clip_bpe.bundled(), spec)  # Shared, with its cache.
  what = "CLIP BPE vocabulary file"
  data = _read_model(arg, what)
  if not data:
    raise ValueError(f"{what} {arg!r} is empty.")
  return ClipTokenizer(clip_bpe.ClipBPE.from_file_bytes(data, arg), spec)


@TOKENIZERS.register("bert")
def _bert_tokenizer(arg: str | None, spec: str) -> Tokenizer:
  if not arg:
    raise ValueError(f"tokenizer 'bert' needs the vocabulary path: "
                     f"'bert:/path/to/vocab.txt', got {spec!r}.")
  data = _read_model(arg, "BERT WordPiece vocabulary file")
  return WordPieceTokenizer(wordpiece.WordPiece.from_file_bytes(data, arg),
                            spec)


def get_tokenizer(spec: str | Tokenizer) -> Tokenizer:
  """The tokenizer for a spec: "bytes", "sentencepiece:PATH", "clip",
  "clip:PATH" (a CLIP BPE vocabulary such as bpe_simple_vocab_16e6.txt.gz)
  or "bert:PATH" (a BERT WordPiece vocab.txt).

  A `Tokenizer` is returned as is (so Python callers may pass one where a
  spec is expected). Unknown names fail listing the known tokenizers; a
  missing model file raises FileNotFoundError naming the path, a corrupt one
  ValueError naming the path. Model files are read on every call (no cache),
  so hold on to the result; only the bundled CLIP vocabulary is loaded once
  per process.
  """
  if isinstance(spec, Tokenizer):
    return spec
  if not isinstance(spec, str):
    raise TypeError(f"A tokenizer spec must be a str, got "
                    f"{type(spec).__name__} {spec!r}. {SPEC_HELP}")
  name, _, arg = spec.partition(":")
  try:
    factory = TOKENIZERS.get(name.strip())
  except registry.UnknownNameError as e:
    raise registry.UnknownNameError(f"{e} {SPEC_HELP}") from None
  return factory(arg.strip() or None, spec)
