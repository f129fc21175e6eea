"""The errors a user can meet, and the wording that names the culprit.

A leaf module (it imports nothing from the package), so any module can raise
these without importing the config loader or the registries, and no import
cycle can start here.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable


class ConfigError(ValueError):
  """A config is malformed; the message names the key."""


class UnknownNameError(ValueError):
  """A config referred to a name that no module registered."""


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or inf."""


def unknown_name_message(kind: str, name: Any, known: Iterable[str], *,
                         limit: int | None = None) -> str:
  """`Unknown {kind} 'x'. Did you mean 'y'? Known {kind}s: a, b, c.`

  With `limit`, a longer list of known names is not printed: only up to
  `limit` close ones (`Close {kind}s: y, z (of 445 known).`).
  """
  known = sorted(known)
  msg = f"Unknown {kind} {name!r}."
  close = difflib.get_close_matches(str(name), known, n=1)
  if close:
    msg += f" Did you mean {close[0]!r}?"
  if limit is not None and len(known) > limit:
    near = difflib.get_close_matches(str(name), known, n=limit, cutoff=0.5)
    return msg + f" Close {kind}s: {', '.join(near) or '(none)'} (of {len(known)} known)."
  return msg + f" Known {kind}s: {', '.join(known) or '(none)'}."


def unknown_key_message(what: str, key: str, known: Iterable[str]) -> str:
  """`Unknown {what}. Did you mean 'y'? Known keys: a, b.` for config keys."""
  known = sorted(known)
  msg = f"Unknown {what}."
  close = difflib.get_close_matches(key, known, n=1)
  if close:
    msg += f" Did you mean {close[0]!r}?"
  return msg + f" Known keys: {', '.join(known)}."


def check_keys(section: Any, known: Iterable[str], where: str) -> None:
  """Raises ConfigError naming `{where}.{key}` for a key of `section` not in `known`."""
  known = set(known)
  for key in section.keys():
    if key not in known:
      raise ConfigError(unknown_key_message(f"config key '{where}.{key}'", key, known))
