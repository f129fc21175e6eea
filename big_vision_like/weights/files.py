"""Reading and writing weight files without pickle.

Published checkpoints come as `.safetensors` (timm, open_clip on the Hugging
Face hub) or `.npz` (big_vision, vision_transformer, BiT). Both are read into
a flat `{name: np.ndarray}` dict. Pickle-based files (`.bin`, `.pth`, `.pt`,
`.ckpt`, `.pkl`) can run arbitrary code when loaded, so they are refused with
a message that says how to convert them; `.npz` is opened with
`allow_pickle=False`.

Paths may be local or any filesystem tf.io.gfile reads (gs://...). Hub
downloads go through `huggingface_hub.hf_hub_download`, which also resolves
files from a populated cache offline (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import io
import os
from typing import Mapping

import ml_dtypes
import numpy as np

PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl", ".pickle")
SUFFIXES = (".safetensors", ".npz")


def _open_bytes(path: str) -> bytes:
  if "://" in path:
    import tensorflow as tf  # only for remote filesystems (gs://)
    with tf.io.gfile.GFile(path, "rb") as f:
      return f.read()
  with open(path, "rb") as f:
    return f.read()


def _exists(path: str) -> bool:
  if "://" in path:
    import tensorflow as tf
    return tf.io.gfile.exists(path)
  return os.path.exists(path)


def _recover_dtype(x: np.ndarray) -> np.ndarray:
  """bfloat16 arrays saved by numpy come back as 2-byte void: view them."""
  if x.dtype.kind == "V" and x.dtype.itemsize == 2:
    return x.view(ml_dtypes.bfloat16)
  return x


def read(path: str) -> dict[str, np.ndarray]:
  """`{name: array}` of a `.safetensors` or `.npz` file (names as stored)."""
  path = os.fspath(path)
  lower = path.lower()
  if lower.endswith(PICKLE_SUFFIXES):
    raise ValueError(
        f"{path}: pickle-based weight files are refused (loading one can run "
        "arbitrary code). Convert it once, where torch is installed: "
        "`python -c \"import torch, safetensors.torch as st; sd = torch.load('"
        f"{os.path.basename(path)}', map_location='cpu', weights_only=True); "
        "st.save_file({k: v.contiguous() for k, v in sd.items()}, "
        "'model.safetensors')\"` and pass the .safetensors file.")
  if not lower.endswith(SUFFIXES):
    raise ValueError(f"{path}: unknown weight file type; expected one of "
                     f"{', '.join(SUFFIXES)} (pickle files {PICKLE_SUFFIXES} are refused).")
  if not _exists(path):
    raise FileNotFoundError(f"weight file {path} does not exist")
  data = _open_bytes(path)
  if lower.endswith(".safetensors"):
    from safetensors.numpy import load as st_load
    try:
      return dict(st_load(data))
    except Exception as e:  # safetensors raises its own error types
      raise ValueError(f"{path}: not a readable safetensors file: {e}") from None
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
      return {k: _recover_dtype(z[k]) for k in z.files}
  except ValueError as e:
    raise ValueError(f"{path}: cannot read it as .npz without pickle ({e}); object "
                     "arrays are not weights.") from None


def write(path: str, flat: Mapping[str, np.ndarray]) -> None:
  """Writes `flat` as `.safetensors` or `.npz` (by suffix), atomically."""
  path = os.fspath(path)
  arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in flat.items()}
  tmp = path + ".tmp"
  if path.endswith(".safetensors"):
    from safetensors.numpy import save_file
    save_file(arrays, tmp)
  elif path.endswith(".npz"):
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
  else:
    raise ValueError(f"{path}: write .safetensors or .npz")
  os.replace(tmp, path)


def hub_download(repo_id: str, filename: str, revision: str | None = None) -> str:
  """The local path of `filename` in hub repo `repo_id` (cache first).

  Offline (HF_HUB_OFFLINE=1, or no network) this still succeeds when the file
  is in the Hugging Face cache; otherwise it fails naming the repo and file
  and how to pass a local path instead.
  """
  import huggingface_hub
  try:
    return huggingface_hub.hf_hub_download(repo_id, filename, revision=revision)
  except Exception as e:  # LocalEntryNotFoundError, HTTP errors, ...
    raise FileNotFoundError(
        f"could not get {filename} of hub repo {repo_id!r} ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}). Download it where there is "
        "network (huggingface-cli download ...) into the cache, or pass its "
        "local path (--weights PATH / model_init='zoo:NAME=PATH').") from None
