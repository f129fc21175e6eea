"""Published weights in and out: timm, open_clip and big_vision formats.

- `files`: read/write `.safetensors` and `.npz` (never pickle), Hugging Face
  hub cache look-ups.
- `timm`, `open_clip`, `big_vision`: key layouts of each library, mapped to
  this codebase's parameter trees and back (`to_ours` / `from_ours`).
- `fit`: big_vision's `model_load` semantics: load a converted tree into a
  model's freshly initialised params (skip regexes, position-embedding
  resampling, scan/loop block layouts, a mismatch report naming every
  missing, unexpected and mis-shaped parameter).
- `convert`: format detection and the one entry point `import_weights`.
"""
