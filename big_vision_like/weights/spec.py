"""`config.model_init` strings that name published weights rather than a workdir.

  "zoo:NAME"                 a zoo entry's published file (hub cache / URL)
  "zoo:NAME=PATH"            the same architecture from a local file
  "PATH.safetensors"         any supported layout, detected from the keys
  "PATH.npz" / "PATH.npz:img"  a big_vision checkpoint, or one part of it

Inside `model_init={"img": SPEC}` a two-tower file gives its own `img` part
(so the image tower of a CLIP/SigLIP initialises a LiT image tower).
Everything else in `model_init` is a workdir/checkpoint path (checkpoint.py).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from big_vision_like.weights import convert, files, fit as fit_lib

_FILE = re.compile(r"^(?P<path>.*?\.(?:npz|safetensors))(?::(?P<part>[\w/]+))?$")


def is_weights_spec(spec: Any) -> bool:
  if not isinstance(spec, str):
    return False
  return (spec.startswith("zoo:") or bool(_FILE.match(spec))
          or spec.lower().endswith(files.PICKLE_SUFFIXES))


def read(spec: str, part: str | None = None) -> tuple[str, dict[str, Any]]:
  """(the file read, its params in our layout) for a weights spec."""
  if spec.startswith("zoo:"):
    from big_vision_like import zoo
    name, path = zoo.parse_spec(spec)
    path = path or zoo.resolve_source(zoo.get(name))
    subtree = None
  else:
    m = _FILE.match(spec)
    path, subtree = (m.group("path"), m.group("part")) if m else (spec, None)
  imported = convert.import_weights(path, subtree=subtree)
  params = imported.params
  if part and imported.model == "two_tower" and part in params:
    params = params[part]
  return path, params


def load_into(params: Any, spec: str, skip: Sequence[str] = (), part: str | None = None
              ) -> Any:
  """`params` (fresh, possibly sharded) with the weights of `spec` fitted in."""
  source, loaded = read(spec, part)
  return fit_lib.fit(loaded, params, skip=skip, source=source)
