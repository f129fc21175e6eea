"""Parameter trees addressed by "/"-joined path names and regexes.

Learning-rate multipliers, freezing, weight decay, sharding rules and
checkpoint partial loading all select parameters the same way: a regex that
must match the *whole* path, e.g. `head/kernel` or `.*/kernel`. This module is
the one place that turns a pytree into paths and regexes into per-leaf values.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax


def path_to_str(path: Sequence[Any]) -> str:
  """`(DictKey('a'), SequenceKey(0), GetAttrKey('b'))` -> "a/0/b"."""
  parts = []
  for k in path:
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def tree_paths(tree: Any) -> Any:
  """A tree of the same structure whose leaves are the leaves' path names."""
  return jax.tree_util.tree_map_with_path(lambda p, _: path_to_str(p), tree)


def flatten_with_names(tree: Any) -> list[tuple[str, Any]]:
  """[(path name, leaf), ...] in tree-flatten order."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(path_to_str(p), x) for p, x in leaves]


def _compile(rules: Sequence[tuple[str, Any]], what: str):
  compiled = []
  for i, rule in enumerate(rules):
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2):
      raise ValueError(f"{what}[{i}] must be a (regex, value) pair, got {rule!r}")
    pattern, value = rule
    try:
      compiled.append((re.compile(pattern), value))
    except re.error as e:
      raise ValueError(f"{what}[{i}]: bad regex {pattern!r}: {e}") from None
  return compiled


def match_rules(tree: Any, rules: Sequence[tuple[str, Any]], default: Any,
                what: str = "rules") -> Any:
  """Per-leaf value of the first `(regex, value)` rule whose regex fully matches.

  Leaves matched by no rule get `default`. `what` names the config key in
  error messages (a malformed rule fails naming its index).
  """
  compiled = _compile(rules, what)

  def value_for(name):
    for regex, value in compiled:
      if regex.fullmatch(name):
        return value
    return default

  return jax.tree.map(value_for, tree_paths(tree))


def unused_rules(tree: Any, patterns: Sequence[str]) -> list[str]:
  """Regexes that match no parameter path: almost always a typo in a config."""
  names = [n for n, _ in flatten_with_names(tree)]
  return [p for p in patterns if not any(re.fullmatch(p, n) for n in names)]
