"""The preprocessing mini-language: `"decode|resize(32)|onehot(10)"` -> fn.

A config describes preprocessing as one string of ops separated by `|`. Each
op is `name` or `name(args)`, where the arguments are Python literals (parsed
with `ast`, never evaluated). Ops are factories registered in
`registry.PP_OPS`; calling a factory with the arguments gives a function
`dict -> dict` on ONE example of tf tensors, run inside `tf.data` map.

Randomness is stateless and per example: the input pipeline stores a seed in
`data["_seed"]`; before each op the builder replaces it by the seed folded
with the op's position in the string, so two random ops never share a seed,
and augmentation is a pure function of (global seed, example position). The
builder removes `_seed` from the result.

Random ops mark themselves with `@random_op`, which lets the input pipeline
cache the output of the deterministic prefix of a pp string (e.g. `decode`)
and run only the random rest every epoch.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from typing import Any, Callable

import tensorflow as tf

from big_vision_like import registry

SEED_KEY = "_seed"
Example = dict[str, Any]
Op = Callable[[Example], Example]

_CLOSING = {"(": ")", "[": "]", "{": "}"}


class PPError(ValueError):
  """A preprocessing string is malformed or an op cannot be built."""


@dataclasses.dataclass(frozen=True)
class ParsedOp:
  """One op of a pp string: its position, source text and arguments."""
  index: int
  token: str
  name: str
  args: tuple[Any, ...]
  kwargs: dict[str, Any]


def random_op(factory: Callable[..., Op]) -> Callable[..., Op]:
  """Marks a pp-op factory whose ops draw randomness from `data["_seed"]`."""
  factory.is_random = True
  return factory


def get_seed(data: Example, op_name: str) -> tf.Tensor:
  """The stateless seed for a random op, or a clear error if there is none."""
  if SEED_KEY not in data:
    raise PPError(
        f"pp op {op_name!r} is random and needs a per-example stateless seed "
        f"in data[{SEED_KEY!r}] (the training input pipeline adds it). It is "
        f"missing here: random ops cannot be used in evaluation pipelines or "
        f"on data without a seed.")
  seed = tf.convert_to_tensor(data[SEED_KEY])
  if seed.dtype not in (tf.int32, tf.int64):
    seed = tf.cast(seed, tf.int64)
  return seed


def _split_tokens(pp_str: str) -> list[str]:
  """Splits on `|` outside brackets and quotes; checks bracket balance."""
  tokens, stack, quote, start = [], [], None, 0
  i = 0
  while i < len(pp_str):
    c = pp_str[i]
    if quote:
      if c == "\\":
        i += 1  # Skip the escaped character.
      elif c == quote:
        quote = None
    elif c in "'\"":
      quote = c
    elif c in _CLOSING:
      stack.append(c)
    elif c in _CLOSING.values():
      if not stack or _CLOSING[stack[-1]] != c:
        raise PPError(
            f"Unbalanced {c!r} in pp op {len(tokens)} "
            f"{pp_str[start:i + 1].strip()!r} of {pp_str!r}.")
      stack.pop()
    elif c == "|" and not stack:
      tokens.append(pp_str[start:i])
      start = i + 1
    i += 1
  if quote or stack:
    what = f"quote {quote}" if quote else f"bracket {stack[-1]!r}"
    raise PPError(f"Unclosed {what} in pp op {len(tokens)} "
                  f"{pp_str[start:].strip()!r} of {pp_str!r}.")
  tokens.append(pp_str[start:])
  return tokens


def _literal(node: ast.AST, index: int, token: str) -> Any:
  try:
    return ast.literal_eval(node)
  except (ValueError, SyntaxError, TypeError) as e:
    raise PPError(
        f"pp op {index} {token!r}: argument {ast.unparse(node)!r} is not a "
        f"Python literal (numbers, strings, tuples, lists, dicts, True/False/"
        f"None only).") from e


def _parse_token(index: int, token: str) -> ParsedOp:
  try:
    node = ast.parse(token, mode="eval").body
  except SyntaxError as e:
    raise PPError(f"pp op {index} {token!r} is not valid syntax: {e.msg}"
                  ) from e
  if isinstance(node, ast.Name):
    return ParsedOp(index, token, node.id, (), {})
  if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
    raise PPError(f"pp op {index} {token!r} must be `name` or "
                  f"`name(literal args)`.")
  args = []
  for arg in node.args:
    if isinstance(arg, ast.Starred):
      raise PPError(f"pp op {index} {token!r}: *args are not allowed.")
    args.append(_literal(arg, index, token))
  kwargs = {}
  for kw in node.keywords:
    if kw.arg is None:
      raise PPError(f"pp op {index} {token!r}: **kwargs are not allowed.")
    kwargs[kw.arg] = _literal(kw.value, index, token)
  return ParsedOp(index, token, node.func.id, tuple(args), kwargs)


def parse(pp_str: str) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
  """Parses a pp string into `[(name, args, kwargs), ...]`.

  An empty (or all-whitespace) string is the identity: no ops.
  """
  return [(op.name, op.args, op.kwargs) for op in parse_ops(pp_str)]


def parse_ops(pp_str: str) -> list[ParsedOp]:
  """Like `parse`, but keeps each op's position and source token."""
  if not isinstance(pp_str, str):
    raise PPError(f"A pp string must be a str, got {type(pp_str).__name__}: "
                  f"{pp_str!r}")
  if not pp_str.strip():
    return []
  ops = []
  for index, token in enumerate(_split_tokens(pp_str)):
    token = token.strip()
    if not token:
      raise PPError(f"Empty pp op {index} in {pp_str!r} (stray '|'?).")
    ops.append(_parse_token(index, token))
  return ops


def get_factory(op: ParsedOp) -> Callable[..., Op]:
  """Looks up the op's factory; unknown names list the known ops."""
  try:
    return registry.PP_OPS.get(op.name)
  except registry.UnknownNameError as e:
    raise registry.UnknownNameError(
        f"{e} (pp op {op.index} {op.token!r})") from None


def bound_arguments(op: ParsedOp) -> dict[str, Any]:
  """The op's arguments by parameter name, defaults included."""
  factory = get_factory(op)
  try:
    bound = inspect.signature(factory).bind(*op.args, **op.kwargs)
  except TypeError as e:
    raise PPError(f"pp op {op.index} {op.token!r}: bad arguments for "
                  f"{op.name!r}: {e}") from e
  bound.apply_defaults()
  return dict(bound.arguments)


def reads_file_name(pp_str: str) -> bool:
  """Whether an op of the pp string looks examples up by `file_name`."""
  return any(getattr(get_factory(op), "reads_file_name", False)
             for op in parse_ops(pp_str))


def is_random(op: ParsedOp) -> bool:
  """Whether the op consumes randomness (was registered with @random_op)."""
  return bool(getattr(get_factory(op), "is_random", False))


def _build(op: ParsedOp) -> Op:
  factory = get_factory(op)
  try:
    fn = factory(*op.args, **op.kwargs)
  except (TypeError, ValueError) as e:
    raise PPError(f"pp op {op.index} {op.token!r}: cannot build "
                  f"{op.name!r}: {e}") from e
  if not callable(fn):
    raise PPError(f"pp op {op.index} {op.token!r}: factory {op.name!r} "
                  f"returned {fn!r}, not a function.")
  return fn


def _chain(ops: list[ParsedOp],
           drop_seed: bool) -> Callable[[Example], Example]:
  """Builds the ops now (so errors surface early) and chains them."""
  built = [(op, _build(op)) for op in ops]

  def preprocess(data: Example) -> Example:
    data = dict(data)
    seed = data.pop(SEED_KEY, None)
    for op, fn in built:
      if seed is not None:
        # A distinct stream per op position, even for two ops of one kind.
        data[SEED_KEY] = tf.random.experimental.stateless_fold_in(
            tf.cast(seed, tf.int64), op.index)
      try:
        data = fn(data)
      except (KeyError, ValueError, TypeError) as e:
        raise PPError(f"pp op {op.index} {op.token!r} failed: {e}") from e
      if not isinstance(data, dict):
        raise PPError(f"pp op {op.index} {op.token!r} returned "
                      f"{type(data).__name__}, not a dict.")
      data = dict(data)
      data.pop(SEED_KEY, None)
    if seed is not None and not drop_seed:
      data[SEED_KEY] = seed
    return data

  return preprocess


def get_preprocess_fn(pp_str: str) -> Callable[[Example], Example]:
  """Returns `fn(example) -> example` running every op of `pp_str` in order.

  Consumes (and removes) `data["_seed"]` if random ops need it.
  """
  return _chain(parse_ops(pp_str), drop_seed=True)


def split_deterministic_prefix(
    pp_str: str) -> tuple[Callable[[Example], Example],
                          Callable[[Example], Example], bool]:
  """Splits a pp string before its first random op.

  Returns `(prefix_fn, rest_fn, rest_is_random)`. `rest_fn(prefix_fn(x))`
  equals `get_preprocess_fn(pp_str)(x)` (ops keep their original positions,
  so seeds are unchanged). The prefix needs no seed, so its output can be
  cached and reused every epoch.
  """
  ops = parse_ops(pp_str)
  cut = next((i for i, op in enumerate(ops) if is_random(op)), len(ops))
  return (_chain(ops[:cut], drop_seed=False), _chain(ops[cut:], drop_seed=True),
          cut < len(ops))
