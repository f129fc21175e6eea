"""open_clip's CLIP layout (ViT image tower) <-> our two-tower params.

open_clip stores `visual.*` (conv1 without bias, class_embedding,
positional_embedding, ln_pre, resblocks with fused `in_proj` q/k/v, ln_post,
`proj` without bias), the text tower at the top level (token_embedding,
positional_embedding, causally masked resblocks, ln_final, text_projection)
and `logit_scale` (log of the temperature, like our `t`); SigLIP-style models
add `logit_bias` (our `b`).

Ours: `img/` is a ViT with `ln_pre=True`, class-token pooling (its
`encoder_norm` is open_clip's ln_post applied to every token, of which only
the class token is used), and a `head` whose bias is zero; `txt/` a
TextTransformer with `causal=True`, `pool_type="argmax"` (CLIP's end-of-text
token has the largest id) and a zero-bias head. Biases open_clip does not
have are loaded as zeros and must still be zero on export.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from big_vision_like.weights import timm as timm_lib
from big_vision_like.weights import tree as tree_lib

_BLOCK = dict(qkv=("attn.in_proj_weight", "attn.in_proj_bias"), proj="attn.out_proj",
              norms=("ln_1", "ln_2"),
              fc=("mlp.c_fc", "mlp.c_proj"))
# Facts of open_clip's models that the tensors do not show: torch's LayerNorm
# eps and open_clip's default head width of 64 channels.
HEAD_WIDTH = 64
LN_EPS = 1e-5


def _tower(sd: dict, prefix: str, used: set) -> dict:
  depth = timm_lib._depth(sd, rf"{re.escape(prefix)}transformer\.resblocks\.(\d+)\.")
  enc = {f"encoderblock_{i}": timm_lib._transformer_block(
      sd, f"{prefix}transformer.resblocks.{i}", used, **_BLOCK) for i in range(depth)}
  return enc


def to_ours(sd: dict[str, np.ndarray], quick_gelu: bool | None = None
            ) -> tuple[str, dict, dict]:
  """An open_clip CLIP state dict -> ("two_tower", fields, params).

  `quick_gelu` (OpenAI's models: True) cannot be read off the weights; None
  leaves `mlp_act` unset for the caller (a zoo entry) to fill in.
  """
  if "visual.conv1.weight" not in sd:
    raise ValueError("open_clip: only ViT image towers are supported (no visual.conv1: "
                     "a ModifiedResNet or timm tower?)")
  used: set = set()
  w = sd["visual.conv1.weight"]
  width, patch = w.shape[0], w.shape[2]
  used.update({"visual.conv1.weight", "visual.class_embedding",
               "visual.positional_embedding", "visual.proj"})
  img_enc = _tower(sd, "visual.", used)
  img_enc["encoder_norm"] = timm_lib._norm(sd, "visual.ln_post", used)
  proj = sd["visual.proj"]
  img = {"embedding": {"kernel": timm_lib._conv(w), "bias": np.zeros(width, w.dtype)},
         "cls": sd["visual.class_embedding"].reshape(1, 1, width),
         "pos_embedding": sd["visual.positional_embedding"][None],
         "ln_pre": timm_lib._norm(sd, "visual.ln_pre", used),
         "Transformer": img_enc,
         "head": {"kernel": proj, "bias": np.zeros(proj.shape[1], proj.dtype)}}
  tok = sd["token_embedding.weight"]
  used.update({"token_embedding.weight", "positional_embedding", "logit_scale"})
  txt_enc = _tower(sd, "", used)
  txt_enc["encoder_norm"] = timm_lib._norm(sd, "ln_final", used)
  if "text_projection.weight" in sd:  # some configs use a Linear
    tproj = timm_lib._linear(sd, "text_projection", used, bias="text_projection.bias" in sd)
    tproj.setdefault("bias", np.zeros(tproj["kernel"].shape[1], tproj["kernel"].dtype))
  else:
    used.add("text_projection")
    tp = sd["text_projection"]
    tproj = {"kernel": tp, "bias": np.zeros(tp.shape[1], tp.dtype)}
  txt = {"embedding": {"embedding": tok}, "pos_embedding": sd["positional_embedding"][None],
         "Transformer": txt_enc, "head": tproj}
  params: dict[str, Any] = {"img": img, "txt": txt,
                            "t": np.asarray(sd["logit_scale"]).reshape(1)}
  if "logit_bias" in sd:
    used.add("logit_bias")
    params["b"] = np.asarray(sd["logit_bias"]).reshape(1)
  used.update(k for k in sd if k == "attn_mask")
  timm_lib._check_all_used(sd, used, "open_clip")

  twidth = tok.shape[1]
  act = {} if quick_gelu is None else {"mlp_act": "quick_gelu" if quick_gelu else "gelu"}
  image = dict(act, width=width, depth=len(img_enc) - 1, patch_size=patch,
               mlp_dim=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
               num_heads=width // HEAD_WIDTH, pool_type="tok", ln_pre=True, ln_eps=LN_EPS,
               head_zeroinit=False)
  text = dict(act, vocab_size=tok.shape[0], width=twidth, depth=len(txt_enc) - 1,
              mlp_dim=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
              num_heads=twidth // HEAD_WIDTH, pool_type="argmax", causal=True,
              ln_eps=LN_EPS)
  fields = dict(image_model="vit", image=image, text_model="text_transformer", text=text,
                embed_dim=int(proj.shape[1]), bias_init=None if "b" not in params else 0.0)
  return "two_tower", fields, params


def from_ours(params: dict, fields: dict) -> dict[str, np.ndarray]:
  """Our two-tower params -> an open_clip CLIP state dict (refuses what cannot map)."""
  image, text = dict(fields.get("image") or {}), dict(fields.get("text") or {})
  problems = []
  towers = (fields.get("image_model", "vit"), fields.get("text_model", "text_transformer"))
  if towers != ("vit", "text_transformer"):
    problems.append("towers must be vit + text_transformer")
  if image.get("pool_type") != "tok" or not image.get("ln_pre"):
    problems.append("the image tower needs pool_type='tok' and ln_pre=True")
  for field, ok in (("posemb", "learn"), ("conv_stem", ()), ("rep_size", False)):
    if image.get(field, ok) not in (ok, None) and image.get(field) != list(ok or []):
      problems.append(f"image.{field}={image.get(field)!r} has no open_clip equivalent")
  if not text.get("causal") or text.get("pool_type") not in ("argmax", "end"):
    problems.append("the text tower needs causal=True and pool_type 'argmax' (open_clip's "
                    "default) or 'end' (its 'last')")
  params = tree_lib.unstack_blocks_in(params)
  p = {k: np.asarray(v) for k, v in tree_lib.flatten(params).items()}
  for name in ("img/embedding/bias", "img/head/bias", "txt/head/bias"):
    if name in p and np.any(p[name] != 0):
      problems.append(f"{name} is not zero (open_clip has no such bias)")
  if problems:
    raise ValueError("export to open_clip: " + "; ".join(problems))
  width = p["img/embedding/kernel"].shape[-1]
  out = {"visual.conv1.weight": np.transpose(p["img/embedding/kernel"], (3, 2, 0, 1)),
         "visual.class_embedding": p["img/cls"].reshape(width),
         "visual.positional_embedding": p["img/pos_embedding"][0],
         "visual.ln_pre.weight": p["img/ln_pre/scale"], "visual.ln_pre.bias": p["img/ln_pre/bias"],
         "visual.ln_post.weight": p["img/Transformer/encoder_norm/scale"],
         "visual.ln_post.bias": p["img/Transformer/encoder_norm/bias"],
         "visual.proj": p["img/head/kernel"],
         "token_embedding.weight": p["txt/embedding/embedding"],
         "positional_embedding": p["txt/pos_embedding"][0],
         "ln_final.weight": p["txt/Transformer/encoder_norm/scale"],
         "ln_final.bias": p["txt/Transformer/encoder_norm/bias"],
         "text_projection": p["txt/head/kernel"],
         "logit_scale": p["t"].reshape(())}
  if "b" in p:
    out["logit_bias"] = p["b"].reshape(())
  for tower, prefix in (("img", "visual."), ("txt", "")):
    enc = params[tower]["Transformer"]
    for i in range(len([k for k in enc if k.startswith("encoderblock_")])):
      out.update(timm_lib.block_from_ours(enc[f"encoderblock_{i}"],
                                          f"{prefix}transformer.resblocks.{i}", **_BLOCK))
  return {k: np.ascontiguousarray(v) for k, v in out.items()}
