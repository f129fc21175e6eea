"""Label files that ship inside the package, so a plain clone or install has them.

- `resources/real.json`: the ReaL label sets of the 50,000 ImageNet
  validation images (Beyer et al. 2020, "Are we done with ImageNet?"), from
  https://github.com/google-research/reassessed-imagenet, Apache-2.0 (licence
  text in `resources/LICENSE-real.txt`). It is
  byte-for-byte the file TFDS's `imagenet2012_real` checksums.tsv lists
  (sha256 d83e9bff374c631aae8439eb064c7019acc56e1b3bc3f56b8380c2a710b0220b),
  so `prepare_imagenet` accepts it as it is.

Only the standard library is imported here: tools that keep their imports
light (`tools/benchmark_scoring`) read the path at import time.
"""

from __future__ import annotations

import importlib.resources
import os

REAL_JSON = "real.json"


def real_json_path() -> str:
  """Filesystem path of the packaged ReaL `real.json` (list of 50,000 sets)."""
  path = importlib.resources.files("big_vision_like.data") / "resources" / REAL_JSON
  # Installed packages are plain directories (not zips), so this is a real file.
  return os.fspath(path)
