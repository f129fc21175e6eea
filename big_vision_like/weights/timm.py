"""timm's key layouts for ViT and BiT ResNet-v2 <-> this codebase's params.

timm stores torch tensors: Linear weights are [out, in] (ours [in, out]),
convs [out, in, h, w] (ours [h, w, in, out]), the attention's q/k/v as one
`qkv` Linear. These functions only rename, transpose and split/merge; the
numerical conventions that must match for equal logits (exact GELU, LayerNorm
eps 1e-6 for ViT; symmetric padding, StdConv eps 1e-8 and GroupNorm eps 1e-5
for BiT) are in `MODEL_DEFAULTS`, which an import puts into the model config.

Each `*_to_ours(sd)` returns `(model_name, fields, params)`: the fields that
can be read off the tensors (width, depth, classes, ...). What cannot
(attention heads of a ViT, GroupNorm groups of a ResNet) comes from the zoo
entry or the target model. Keys a converter does not understand are an
error naming them, never silently dropped.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from big_vision_like.models import resnet as resnet_lib
from big_vision_like.weights import tree as tree_lib

MODEL_DEFAULTS = {
    "vit": dict(mlp_act="gelu", ln_eps=1e-6),
    "resnet": dict(padding="symmetric", std_eps=1e-8, gn_eps=1e-5, stem="imagenet"),
}


def _linear(sd: dict, prefix: str, used: set, bias: bool = True) -> dict:
  used.add(f"{prefix}.weight")
  out = {"kernel": sd[f"{prefix}.weight"].T}
  if bias:
    used.add(f"{prefix}.bias")
    out["bias"] = sd[f"{prefix}.bias"]
  return out


def _norm(sd: dict, prefix: str, used: set) -> dict:
  used.update({f"{prefix}.weight", f"{prefix}.bias"})
  return {"scale": sd[f"{prefix}.weight"], "bias": sd[f"{prefix}.bias"]}


def _conv(w: np.ndarray) -> np.ndarray:
  return np.transpose(w, (2, 3, 1, 0))  # [out, in, h, w] -> [h, w, in, out]


def _check_all_used(sd: dict, used: set, what: str) -> None:
  left = sorted(set(sd) - used)
  if left:
    raise ValueError(f"{what}: keys this converter does not understand (an architecture "
                     f"feature we do not have?): {left[:12]}{' ...' if len(left) > 12 else ''}")


def _transformer_block(sd: dict, p: str, used: set, qkv: tuple[str, str], proj: str,
                       norms: tuple[str, str], fc: tuple[str, str]) -> dict:
  """One pre-LN block (timm or open_clip naming) in our layout, heads merged.

  `qkv` names the fused q/k/v (weight, bias) tensors within the block.
  """
  w_key, b_key = f"{p}.{qkv[0]}", f"{p}.{qkv[1]}"
  w, b = sd[w_key], sd[b_key]
  used.update({w_key, b_key})
  width = w.shape[1]
  attn = {name: {"kernel": w[i * width:(i + 1) * width].T, "bias": b[i * width:(i + 1) * width]}
          for i, name in enumerate(("query", "key", "value"))}
  attn["out"] = _linear(sd, f"{p}.{proj}", used)
  return {"LayerNorm_0": _norm(sd, f"{p}.{norms[0]}", used),
          "MultiHeadDotProductAttention_0": attn,
          "LayerNorm_1": _norm(sd, f"{p}.{norms[1]}", used),
          "MlpBlock_0": {"Dense_0": _linear(sd, f"{p}.{fc[0]}", used),
                         "Dense_1": _linear(sd, f"{p}.{fc[1]}", used)}}


def block_from_ours(block: dict, p: str, qkv: tuple[str, str], proj: str,
                    norms: tuple[str, str],
                    fc: tuple[str, str]) -> dict[str, np.ndarray]:
  """The inverse of `_transformer_block` (our per-head kernels are merged)."""
  attn = block["MultiHeadDotProductAttention_0"]
  width = attn["query"]["kernel"].shape[0]
  kern = lambda n: np.asarray(attn[n]["kernel"]).reshape(width, -1)
  bias = lambda n: np.asarray(attn[n]["bias"]).reshape(-1)
  w = np.concatenate([kern(n).T for n in ("query", "key", "value")])
  b = np.concatenate([bias(n) for n in ("query", "key", "value")])
  out = {f"{p}.{qkv[0]}": w, f"{p}.{qkv[1]}": b}
  out[f"{p}.{proj}.weight"] = np.asarray(attn["out"]["kernel"]).reshape(-1, width).T
  out[f"{p}.{proj}.bias"] = np.asarray(attn["out"]["bias"])
  for ours, theirs in zip(("LayerNorm_0", "LayerNorm_1"), norms):
    out[f"{p}.{theirs}.weight"] = np.asarray(block[ours]["scale"])
    out[f"{p}.{theirs}.bias"] = np.asarray(block[ours]["bias"])
  for ours, theirs in zip(("Dense_0", "Dense_1"), fc):
    out[f"{p}.{theirs}.weight"] = np.asarray(block["MlpBlock_0"][ours]["kernel"]).T
    out[f"{p}.{theirs}.bias"] = np.asarray(block["MlpBlock_0"][ours]["bias"])
  return out


def _depth(sd: dict, pattern: str) -> int:
  idx = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
  if not idx or idx != set(range(max(idx) + 1)):
    raise ValueError(f"weights: transformer blocks {sorted(idx)} are not numbered 0..n-1")
  return max(idx) + 1


_TIMM_BLOCK = dict(qkv=("attn.qkv.weight", "attn.qkv.bias"), proj="attn.proj",
                   norms=("norm1", "norm2"),
                   fc=("mlp.fc1", "mlp.fc2"))


def vit_to_ours(sd: dict[str, np.ndarray]) -> tuple[str, dict, dict]:
  """A timm VisionTransformer state dict -> ("vit", fields, params)."""
  used: set = set()
  unsupported = [k for k in sd if re.search(r"\.ls\d\.|q_norm|k_norm|fc_norm\.|attn_pool|"
                                            r"reg_token|norm_pre\.", k)]
  if unsupported:
    raise ValueError("timm ViT: layer scale, qk-norm, fc_norm (norm after pooling), "
                     "attention-pool heads, register tokens and norm_pre are not "
                     f"supported by our ViT: {unsupported[:6]}")
  w = sd["patch_embed.proj.weight"]
  used.update({"patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed"})
  width, patch = w.shape[0], w.shape[2]
  params: dict[str, Any] = {"embedding": {"kernel": _conv(w),
                                          "bias": sd["patch_embed.proj.bias"]}}
  pos = sd["pos_embed"]
  has_cls = "cls_token" in sd
  if has_cls:
    used.add("cls_token")
    params["cls"] = sd["cls_token"]
    grid = pos.shape[1] - 1
    if int(round(grid ** 0.5)) ** 2 != grid:
      # timm's no_embed_class models (DeiT III): the class token has no position.
      pos = np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)
  params["pos_embedding"] = pos
  depth = _depth(sd, r"blocks\.(\d+)\.")
  enc = {f"encoderblock_{i}": _transformer_block(sd, f"blocks.{i}", used, **_TIMM_BLOCK)
         for i in range(depth)}
  enc["encoder_norm"] = _norm(sd, "norm", used)
  params["Transformer"] = enc
  fields = dict(MODEL_DEFAULTS["vit"], width=width, depth=depth, patch_size=patch,
                mlp_dim=sd["blocks.0.mlp.fc1.weight"].shape[0],
                pool_type="tok" if has_cls else "gap", num_classes=None)
  if "pre_logits.fc.weight" in sd:
    params["pre_logits"] = _linear(sd, "pre_logits.fc", used)
    fields["rep_size"] = int(sd["pre_logits.fc.weight"].shape[0])
  if "head.weight" in sd:
    params["head"] = _linear(sd, "head", used)
    fields["num_classes"] = int(sd["head.weight"].shape[0])
  _check_all_used(sd, used, "timm ViT")
  return "vit", fields, params


def vit_from_ours(params: dict, fields: dict) -> dict[str, np.ndarray]:
  """Our ViT params -> a timm VisionTransformer state dict."""
  bad = {k: fields.get(k) for k, ok in (("pool_type", ("tok", "gap")), ("ln_pre", (False, None)),
                                        ("conv_stem", ((), [], None)), ("rep_size", (False, None)),
                                        ("posemb", ("learn", None)))
         if fields.get(k) not in ok}
  if bad:
    raise ValueError("export to timm: these ViT fields have no equivalent in timm's "
                     f"VisionTransformer: {bad} (it needs pool_type 'tok'/'gap', a learned "
                     "position embedding, no conv stem, ln_pre or pre-logits layer)")
  params = tree_lib.unstack_blocks_in(params)
  p = {k: np.asarray(v) for k, v in tree_lib.flatten(params).items()}
  out = {"patch_embed.proj.weight": np.transpose(p["embedding/kernel"], (3, 2, 0, 1)),
         "patch_embed.proj.bias": p["embedding/bias"], "pos_embed": p["pos_embedding"]}
  if "cls" in p:
    out["cls_token"] = p["cls"]
  enc = params["Transformer"]
  depth = len([k for k in enc if k.startswith("encoderblock_")])
  for i in range(depth):
    out.update(block_from_ours(enc[f"encoderblock_{i}"], f"blocks.{i}", **_TIMM_BLOCK))
  out["norm.weight"] = p["Transformer/encoder_norm/scale"]
  out["norm.bias"] = p["Transformer/encoder_norm/bias"]
  if "pre_logits/kernel" in p:
    out["pre_logits.fc.weight"] = p["pre_logits/kernel"].T
    out["pre_logits.fc.bias"] = p["pre_logits/bias"]
  if "head/kernel" in p:
    out["head.weight"] = p["head/kernel"].T
    out["head.bias"] = p["head/bias"]
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def resnetv2_to_ours(sd: dict[str, np.ndarray]) -> tuple[str, dict, dict]:
  """A timm ResNetV2 (BiT, pre-activation, StdConv + GroupNorm) -> ("resnet", fields, params)."""
  used: set = set()
  if any(k.startswith("stem.") and k != "stem.conv.weight" for k in sd):
    raise ValueError("timm ResNetV2: only the single 7x7 conv stem of the BiT models is "
                     f"supported; stem keys: {[k for k in sd if k.startswith('stem.')]}")
  used.add("stem.conv.weight")
  params: dict[str, Any] = {"stem_conv": {"kernel": _conv(sd["stem.conv.weight"])}}
  blocks = []
  for s in range(4):
    n = len({m.group(1) for k in sd if (m := re.match(rf"stages\.{s}\.blocks\.(\d+)\.", k))})
    blocks.append(n)
    stage = {}
    for b in range(n):
      p = f"stages.{s}.blocks.{b}"
      block = {}
      for i in (1, 2, 3):
        block[f"gn{i}"] = _norm(sd, f"{p}.norm{i}", used)
        used.add(f"{p}.conv{i}.weight")
        block[f"conv{i}"] = {"kernel": _conv(sd[f"{p}.conv{i}.weight"])}
      if f"{p}.downsample.conv.weight" in sd:
        used.add(f"{p}.downsample.conv.weight")
        block["conv_proj"] = {"kernel": _conv(sd[f"{p}.downsample.conv.weight"])}
      stage[f"block_{b + 1}"] = block
    params[f"stage_{s + 1}"] = stage
  depth = {v: k for k, v in resnet_lib.BLOCKS_PER_STAGE.items()}.get(tuple(blocks))
  if depth is None:
    raise ValueError(f"timm ResNetV2: blocks per stage {blocks} match no depth of ours "
                     f"({resnet_lib.BLOCKS_PER_STAGE})")
  params["norm_pre_head"] = _norm(sd, "norm", used)
  fields = dict(MODEL_DEFAULTS["resnet"], depth=depth, num_classes=None,
                width=sd["stem.conv.weight"].shape[0] / resnet_lib.BASE_WIDTH)
  if "head.fc.weight" in sd:
    used.update({"head.fc.weight", "head.fc.bias"})
    params["head"] = {"kernel": sd["head.fc.weight"][:, :, 0, 0].T, "bias": sd["head.fc.bias"]}
    fields["num_classes"] = int(sd["head.fc.weight"].shape[0])
  if float(fields["width"]).is_integer():
    fields["width"] = int(fields["width"])
  _check_all_used(sd, used, "timm ResNetV2")
  return "resnet", fields, params


def resnetv2_from_ours(params: dict, fields: dict) -> dict[str, np.ndarray]:
  """Our ResNet params -> a timm ResNetV2 state dict."""
  if fields.get("padding", "symmetric") != "symmetric":
    raise ValueError(f"export to timm: model.padding={fields.get('padding')!r}; timm's "
                     "ResNetV2 pads symmetrically, so its logits would differ (train with "
                     "padding='symmetric')")
  if fields.get("stem", "imagenet") != "imagenet":
    raise ValueError(f"export to timm: ResNetV2 has the 7x7 'imagenet' stem; this model "
                     f"has stem={fields.get('stem')!r}")
  p = {k: np.asarray(v) for k, v in tree_lib.flatten(params).items()}
  conv = lambda k: np.transpose(k, (3, 2, 0, 1))
  out = {"stem.conv.weight": conv(p["stem_conv/kernel"])}
  for name, v in p.items():
    m = re.match(r"stage_(\d+)/block_(\d+)/(\w+)/(\w+)$", name)
    if not m:
      continue
    s, b, mod, leaf = int(m.group(1)) - 1, int(m.group(2)) - 1, m.group(3), m.group(4)
    pre = f"stages.{s}.blocks.{b}"
    if mod == "conv_proj":
      out[f"{pre}.downsample.conv.weight"] = conv(v)
    elif mod.startswith("conv"):
      out[f"{pre}.{mod}.weight"] = conv(v)
    else:
      out[f"{pre}.norm{mod[2:]}.{'weight' if leaf == 'scale' else 'bias'}"] = v
  out["norm.weight"], out["norm.bias"] = p["norm_pre_head/scale"], p["norm_pre_head/bias"]
  if "head/kernel" in p:
    out["head.fc.weight"] = p["head/kernel"].T[:, :, None, None]
    out["head.fc.bias"] = p["head/bias"]
  return {k: np.ascontiguousarray(v) for k, v in out.items()}
