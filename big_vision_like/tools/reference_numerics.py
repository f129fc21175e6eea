"""Full-size imported models vs the reference libraries (timm, open_clip), float32.

Two halves, run in two virtual environments (the project's venv has no torch,
the reference venv no jax):

    # 1. torch side (a venv with torch timm open_clip_torch safetensors numpy):
    /tmp/refvenv/bin/python -m big_vision_like.tools.reference_numerics make --out /tmp/refnum
    # 2. our side (the project's venv):
    .venv/bin/python -m big_vision_like.tools.reference_numerics compare --out /tmp/refnum

`make` builds, with random weights (`pretrained=False`, nothing downloaded),
timm's `vit_base_patch16_224` and `resnetv2_50x1_bit` (1000 classes) and
open_clip's `ViT-B-32-quickgelu` (the architecture of OpenAI's ViT-B/32:
open_clip's plain "ViT-B-32" config uses exact GELU, OpenAI's weights
QuickGELU). Every state_dict entry that the library initialises to a
constant (norm scales 1, biases 0, zero-initialised convs, ...) or to a tiny
value is overwritten with seeded random values (norm scales 1 + 0.1*N(0,1),
norm shifts and biases 0.1*N(0,1), kernels N(0,1)/sqrt(fan_in), token and
position tables 0.5*N(0,1)... see `_perturb`), so no default init can hide a
mapping bug; the generator refuses to write a file that still has a constant
tensor. Each model's state_dict goes to `<out>/<name>.safetensors`; the
inputs (8 random 224x224 NHWC float32 images; for CLIP also 8 captions run
through open_clip's tokenizer) and torch's outputs (eval mode, float32) to
`<out>/<name>_io.npz`.

`compare` loads each file through the zoo entry of the same architecture
(`zoo.load(NAME, weights=FILE)`, so the zoo's fields and the converters are
what is tested), runs the same inputs and prints a markdown table of max
absolute (and relative: over max |reference|) differences. Nothing here is
run by CI; the numbers are recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

BATCH = 8
RES = 224
CAPTIONS = (
    "a photo of a dog.",
    "a diagram of a transformer encoder with twelve layers",
    "Two cats sleeping on a red sofa!",
    "an astronaut riding a horse on the moon, digital art",
    "ein Foto von einem Haus",
    "a blurry photo of the number 42",
    "",
    "a very long caption " + "that keeps repeating itself " * 20,  # > 77 tokens: truncated
)
# name -> (zoo entry, library, constructor name, seed)
MODELS = {
    "timm_vit_base_patch16_224": ("vit_base_patch16_224.augreg2_in21k_ft_in1k", "timm",
                                  "vit_base_patch16_224", 11),
    "timm_resnetv2_50x1_bit": ("resnetv2_50x1_bit.goog_in21k_ft_in1k", "timm",
                               "resnetv2_50x1_bit", 12),
    "open_clip_ViT-B-32-quickgelu": ("ViT-B-32/openai", "open_clip", "ViT-B-32-quickgelu", 13),
}


# ----------------------------------------------------------------------------
# torch side
# ----------------------------------------------------------------------------

def _perturb(model, seed: int) -> list[str]:
  """Re-draws the parameters a default init makes constant or tiny; returns their names."""
  import torch
  from torch import nn

  g = torch.Generator().manual_seed(seed)
  normal = lambda shape: torch.randn(tuple(shape), generator=g, dtype=torch.float32)
  norms = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)
  changed = []
  with torch.no_grad():
    for mod_name, module in model.named_modules():
      for p_name, p in module.named_parameters(recurse=False):
        full = f"{mod_name}.{p_name}" if mod_name else p_name
        flat = p.detach().reshape(-1)
        constant = bool(torch.all(flat == flat[0]))
        tiny = float(flat.abs().max()) < 1e-3
        if isinstance(module, norms):
          value = (1.0 + 0.1 * normal(p.shape)) if p_name == "weight" else 0.1 * normal(p.shape)
        elif p_name == "logit_scale":
          value = np.log(1 / 0.07) + 0.3 * normal(p.shape)
        elif not (constant or tiny):
          continue  # a random library init (e.g. trunc_normal(0.02)): kept
        elif p.ndim == 1 or p_name == "bias":
          value = 0.1 * normal(p.shape)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
          value = normal(p.shape) / np.sqrt(np.prod(p.shape[1:]))
        else:  # class tokens, position embeddings stored as bare parameters
          value = 0.5 * normal(p.shape)
        p.copy_(value)
        changed.append(full)
  for name, t in model.state_dict().items():
    flat = t.reshape(-1)
    if t.dtype.is_floating_point and flat.numel() > 1 and bool((flat == flat[0]).all()):
      raise AssertionError(f"{name} is still constant after _perturb")
  return changed


def _versions_torch() -> dict:
  import open_clip
  import safetensors
  import timm
  import torch
  return {"python": platform.python_version(), "torch": torch.__version__,
          "timm": timm.__version__, "open_clip": open_clip.__version__,
          "safetensors": safetensors.__version__, "numpy": np.__version__}


def make(out: str) -> None:
  import open_clip
  import safetensors.torch
  import timm
  import torch

  torch.set_num_threads(os.cpu_count() or 1)
  os.makedirs(out, exist_ok=True)
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (BATCH, RES, RES, 3)).astype(np.float32)
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  meta = {"versions": _versions_torch(), "models": {}}
  for name, (_, lib, ctor, seed) in MODELS.items():
    t0 = time.time()
    torch.manual_seed(seed)
    if lib == "timm":
      model = timm.create_model(ctor, pretrained=False, num_classes=1000)
    else:
      model = open_clip.create_model(ctor, pretrained=None)
    model = model.float().eval()
    changed = _perturb(model, seed)
    io = {"images": images}
    with torch.inference_mode():
      if lib == "timm":
        feats = model.forward_features(x)
        io["pre_logits"] = model.forward_head(feats, pre_logits=True).numpy()
        io["logits"] = model.forward_head(feats).numpy()
        np.testing.assert_allclose(io["logits"], model(x).numpy(), atol=1e-5)
      else:
        tokens = open_clip.get_tokenizer(ctor)(list(CAPTIONS))
        io["texts"] = tokens.numpy().astype(np.int32)
        io["image_features"] = model.encode_image(x).numpy()
        io["text_features"] = model.encode_text(tokens).numpy()
        io["image_features_normed"] = model.encode_image(x, normalize=True).numpy()
        io["text_features_normed"] = model.encode_text(tokens, normalize=True).numpy()
        io["logit_scale"] = model.logit_scale.detach().numpy()
      # The same model in float64: how far torch's own float32 is from exact
      # (the round-off floor that `compare` prints beside our differences).
      m64, x64 = model.double(), x.double()
      if lib == "timm":
        feats = m64.forward_features(x64)
        io["pre_logits_f64"] = m64.forward_head(feats, pre_logits=True).numpy()
        io["logits_f64"] = m64.forward_head(feats).numpy()
      else:
        io["image_features_f64"] = m64.encode_image(x64).numpy()
        io["text_features_f64"] = m64.encode_text(tokens).numpy()
        io["image_features_normed_f64"] = m64.encode_image(x64, normalize=True).numpy()
        io["text_features_normed_f64"] = m64.encode_text(tokens, normalize=True).numpy()
      model.float()
    sd = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()
          if k != "attn_mask"}
    safetensors.torch.save_file(sd, os.path.join(out, f"{name}.safetensors"))
    np.savez(os.path.join(out, f"{name}_io.npz"), **io)
    n_params = sum(p.numel() for p in model.parameters())
    meta["models"][name] = {"constructor": ctor, "library": lib, "seed": seed,
                            "params": int(n_params), "perturbed": len(changed),
                            "state_dict_keys": len(sd)}
    print(f"{name}: {n_params:,} params, {len(changed)} tensors re-drawn, "
          f"{time.time() - t0:.1f} s", flush=True)
  with open(os.path.join(out, "meta.json"), "w") as f:
    json.dump(meta, f, indent=1)


# ----------------------------------------------------------------------------
# our side
# ----------------------------------------------------------------------------

def _max_abs(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
  return float(np.max(np.abs(a - b)))


def _ours(loaded, io, lib: str) -> dict[str, np.ndarray]:
  """Our outputs under the reference's key names, plus the argmax agreement."""
  import jax
  import jax.numpy as jnp

  model, params = loaded.experiment.model, loaded.params
  images = jnp.asarray(io["images"])
  if lib == "timm":
    logits = jax.jit(loaded.predict_fn)(params, {"image": images})
    _, aux = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, images)
    return {"logits": logits, "pre_logits": aux["pre_logits"]}
  texts = jnp.asarray(io["texts"])
  pred = jax.jit(loaded.predict_fn)(params, {"image": images, "text": texts})
  # The towers alone give the unnormalised features (after the projections).
  img_tower = model._tower(model.image_model, model.image, "image", parent=None)
  txt_tower = model._tower(model.text_model, model.text, "text", parent=None)
  img_feats, _ = jax.jit(img_tower.apply)({"params": params["img"]}, images)
  txt_feats, _ = jax.jit(txt_tower.apply)({"params": params["txt"]}, texts)
  return {"image_features_normed": pred["zimg"], "text_features_normed": pred["ztxt"],
          "image_features": img_feats, "text_features": txt_feats,
          "logit_scale": np.log(np.asarray(pred["t"]))}


def compare(out: str, tol: float = 1e-4) -> int:
  """Prints the table; returns 1 if any difference reaches `tol`."""
  import jax

  from big_vision_like import zoo

  with open(os.path.join(out, "meta.json")) as f:
    meta = json.load(f)
  rows, worst = [], 0.0
  for name, (entry, lib, _, _) in MODELS.items():
    io = np.load(os.path.join(out, f"{name}_io.npz"))
    loaded = zoo.load(entry, weights=os.path.join(out, f"{name}.safetensors"),
                      resolution=RES)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(loaded.params))
    ours = {k: np.asarray(v) for k, v in _ours(loaded, io, lib).items()}
    if lib == "timm":
      agree = np.argmax(ours["logits"], -1) == np.argmax(io["logits"], -1)
    else:  # each image's best caption
      sims = lambda i, t: i @ t.T
      agree = np.argmax(sims(ours["image_features_normed"], ours["text_features_normed"]), -1) \
          == np.argmax(sims(io["image_features_normed"], io["text_features_normed"]), -1)
    for key, value in ours.items():
      err = _max_abs(value, io[key])
      ref_scale = float(np.max(np.abs(io[key])))
      f64 = f"{key}_f64"
      floor = _max_abs(io[key], io[f64]) if f64 in io else None
      ours64 = _max_abs(value, io[f64]) if f64 in io else None
      worst = max(worst, err)
      rows.append((name, entry, n_params, meta["models"][name]["params"], key, ref_scale,
                   err, err / ref_scale if ref_scale else 0.0, ours64, floor,
                   float(np.mean(agree))))
  fmt = lambda v: "-" if v is None else f"{v:.2e}"
  print(f"reference (torch side): {meta['versions']}")
  print(f"ours: python {platform.python_version()}, jax {jax.__version__}, "
        f"backend {jax.default_backend()}, float32")
  print("| reference model | zoo entry | params (ours / torch) | output | max abs ref | "
        "max abs diff ours vs torch f32 | rel | ours vs torch f64 | torch f32 vs f64 | "
        "argmax agrees |")
  print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
  for (name, entry, ours_n, ref_n, key, scale, err, rel, o64, floor, agree) in rows:
    print(f"| `{name}` | `{entry}` | {ours_n:,} / {ref_n:,} | `{key}` | {scale:.3g} | "
          f"{err:.2e} | {rel:.2e} | {fmt(o64)} | {fmt(floor)} | {agree:.0%} |")
  ok = worst < tol
  print(f"worst max abs diff {worst:.2e}: {'OK' if ok else 'FAIL'} (tolerance {tol:g})")
  return 0 if ok else 1


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("command", choices=("make", "compare"))
  parser.add_argument("--out", default="/tmp/refnum", help="scratch folder for files")
  parser.add_argument("--tol", type=float, default=1e-4)
  args = parser.parse_args(argv)
  if args.command == "make":
    make(args.out)
    return 0
  return compare(args.out, args.tol)


if __name__ == "__main__":
  sys.exit(main())
