"""Text preprocessing ops: caption choice, canonicalisation, tokenization.

Image-text training reads captions (a scalar tf.string, or a 1-D tensor of
several captions per image) and turns them into a fixed-length int32 token
array the text tower can batch. A typical pp string:
  "decode|resize(224)|value_range(-1, 1)|choice|canonicalize_text|
   tokenize(16, tokenizer='sentencepiece:gs://bucket/spm.model')"
The tokens land in "labels" by default, the key the training loop passes to
the model next to "image". The same canonicalisation and tokenizer must be
used for zero-shot class names; `canonicalize` and `Tokenizer.encode_fixed`
are their Python-callable twins.
"""

from __future__ import annotations

import string
from typing import Any, Callable

import tensorflow as tf

from big_vision_like.pp.builder import get_seed, random_op
from big_vision_like.registry import PP_OPS
from big_vision_like.text import tokenizers

Example = dict[str, Any]

# ASCII punctuation (Python's string.punctuation) and any Unicode punctuation
# (curly quotes, dashes, ...), as an RE2 class. Each ASCII char is escaped.
_PUNCTUATION = "[" + "".join("\\" + c for c in string.punctuation) + r"\p{P}]"
_WHITESPACE = r"[\s\p{Z}]+"


def _strings(data: Example, key: str, op: str) -> tf.Tensor:
  """`data[key]` as a tf.string tensor, or an error naming the op and key."""
  if key not in data:
    available = sorted(k for k in data if not k.startswith("_"))
    raise ValueError(f"{op}: key {key!r} not in the example; available keys: "
                     f"{available}.")
  value = tf.convert_to_tensor(data[key])
  if value.dtype != tf.string:
    raise ValueError(f"{op}: {key!r} must hold text (tf.string), got "
                     f"{value.dtype.name}.")
  return value


def lower(text: tf.Tensor) -> tf.Tensor:
  """Unicode-aware lower case ("ÉCOLE" -> "école") of a string tensor."""
  return tf.strings.lower(text, encoding="utf-8")


def canonicalize(text: tf.Tensor) -> tf.Tensor:
  """Lower-cases, deletes punctuation, collapses and strips whitespace.

  Works on string tensors of any shape: "A  Dog's  T-shirt!" -> "a dogs
  tshirt". Punctuation is deleted, not replaced by a space (so "dog's" and
  "dogs" agree), which is the CLIP/LiT-style canonical form of captions and
  class names. Call it eagerly on a list of class names to get the exact
  strings the pp op would produce.
  """
  text = lower(text)
  text = tf.strings.regex_replace(text, _PUNCTUATION, "")
  text = tf.strings.regex_replace(text, _WHITESPACE, " ")
  return tf.strings.strip(text)


@PP_OPS.register("lower")
def get_lower(key: str = "text",
              key_result: str | None = None) -> Callable[[Example], Example]:
  """Lower-cases `data[key]` (a string tensor of any shape, UTF-8 aware)."""
  key_result = key_result or key

  def lower_op(data):
    return {**data, key_result: lower(_strings(data, key, "lower"))}
  return lower_op


@PP_OPS.register("canonicalize_text")
@PP_OPS.register("clean_text")
def get_canonicalize_text(key: str = "text", key_result: str | None = None
                          ) -> Callable[[Example], Example]:
  """Canonical text: lower case, no punctuation, single spaces, stripped.

  `clean_text` is another name for the same op. See `canonicalize`.
  """
  key_result = key_result or key

  def canonicalize_text(data):
    text = _strings(data, key, "canonicalize_text")
    return {**data, key_result: canonicalize(text)}
  return canonicalize_text


@PP_OPS.register("tokenize")
def get_tokenize(max_len: int, tokenizer: str = "bytes", key: str = "text",
                 key_result: str | None = None, eos: str = "sticky",
                 bos: bool = False, pad_value: int | None = None
                 ) -> Callable[[Example], Example]:
  """Tokenizes text to exactly `max_len` int32 ids (cut or padded).

  `tokenizer` is a spec for `tokenizers.get_tokenizer` ("bytes" or
  "sentencepiece:PATH"). A scalar `data[key]` gives `[max_len]`; a 1-D
  tensor of n captions gives `[n, max_len]`. The result goes to
  `data[key_result]`, by default replacing the text in `key` (two-tower
  models read the tokens from "text").
  `eos` is "sticky" (append EOS, and keep it as the last token when the
  text is cut), "yes" (append EOS, then cut) or "none". `bos=True` prepends
  the tokenizer's BOS. Padding uses `pad_value`, by default the tokenizer's
  pad id (0 for "bytes").
  """
  op = "tokenize"
  key_result = key_result or key
  if (isinstance(max_len, bool) or not isinstance(max_len, int)
      or max_len < 1):
    raise ValueError(f"{op}: max_len must be a positive int, got "
                     f"{max_len!r}.")
  try:
    tok = tokenizers.get_tokenizer(tokenizer)
  except OSError as e:  # A missing or unreadable model file.
    raise ValueError(f"{op}: {e}") from e
  pad = tok.check_options(eos, bos, pad_value, op)

  def tokenize(data):
    text = _strings(data, key, op)
    if text.shape.rank == 0:
      ids = tok.tf_encode_fixed(text, max_len, eos=eos, bos=bos, pad_value=pad)
    elif text.shape.rank == 1:
      ids = tok.tf_encode_fixed_many(text, max_len, eos=eos, bos=bos,
                                     pad_value=pad)
    else:
      raise ValueError(f"{op}: {key!r} must be one string or a 1-D tensor of "
                       f"captions, got shape {text.shape}.")
    return {**data, key_result: ids}
  return tokenize


@PP_OPS.register("choice")
@random_op
def get_choice(key: str = "texts", key_result: str = "text"
               ) -> Callable[[Example], Example]:
  """Picks one entry along the first axis of `data[key]` at random.

  E.g. one caption of a 1-D string tensor, or one row of `[n, len]` tokens:
  tokenizing every caption in the cached deterministic prefix and choosing
  a token row afterwards spends the tokenizer once per example, not once
  per example per epoch. Uniform over the entries, stateless: the same
  example seed always picks the same index, whatever the entries' shape.
  An empty `data[key]` fails at run time.
  """
  op = "choice"

  def choice(data):
    if key not in data:
      available = sorted(k for k in data if not k.startswith("_"))
      raise ValueError(f"{op}: key {key!r} not in the example; available "
                       f"keys: {available}.")
    values = tf.convert_to_tensor(data[key])
    if values.shape.rank is None or values.shape.rank < 1:
      raise ValueError(f"{op}: {key!r} must have a leading axis to choose "
                       f"along (e.g. several captions, or their [n, len] "
                       f"tokens), got shape {values.shape}.")
    seed = get_seed(data, op)
    n = tf.shape(values)[0]
    check = tf.debugging.Assert(
        n > 0, [f"pp op choice: key={key} is empty, nothing to choose from"])
    with tf.control_dependencies([check]):
      index = tf.random.stateless_uniform([], seed, minval=0, maxval=n,
                                          dtype=tf.int32)
    return {**data, key_result: tf.gather(values, index)}
  return choice
