"""big_vision / vision_transformer `.npz` layouts <-> our params.

Our ViT and two-tower parameter names follow big_vision's, so most of the
work is undoing history:

- the file's tree may sit under `params/` (optax-era checkpoints) or
  `opt/target/` (flax.optim-era);
- the original vision_transformer checkpoints number modules across classes
  (LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3) and
  keep the position embedding in `Transformer/posembed_input`;
- big_vision adds the position embedding *before* concatenating the class
  token, so its `pos_embedding` has no class-token row; ours has one (as the
  original ViT and timm), which is zero for such checkpoints (equivalent);
- big_vision's text tower is `Embed_0` + `Encoder_0`, ours `embedding` +
  `Transformer`; LiT's BERT text tower is flaxformer's `BertEncoder_0/...`
  with 2-D attention kernels ([D, heads*head_dim], row-major), ours `bert`
  with [D, heads, head_dim] (`bert_to_ours` / `bert_from_ours`);
- scanned checkpoints (`encoderblock` with a leading depth axis) load into
  loop models and back (`weights.fit`).

Export writes our names (with the class-token row), which big_vision's own
loaders read (its `fix_old_checkpoints` folds that row into `cls`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from big_vision_like.weights import tree as tree_lib


def _strip_prefix(tree: dict) -> dict:
  if "params" in tree and isinstance(tree["params"], dict):
    return tree["params"]
  if "opt" in tree and isinstance(tree["opt"], dict) and "target" in tree["opt"]:
    return tree["opt"]["target"]
  return tree


def _fix_vit(p: dict) -> dict:
  p = tree_lib.renumber_modules(dict(p))
  t = dict(p.get("Transformer", {}))
  if "posembed_input" in t:
    p["pos_embedding"] = t.pop("posembed_input")["pos_embedding"]
  if "pos_embedding" in t:
    p["pos_embedding"] = t.pop("pos_embedding")
  p["Transformer"] = t
  if "probe" in p:  # MAP head inlined (early ViT-G checkpoints)
    p["MAPHead_0"] = {k: p.pop(k) for k in
                      ("probe", "MlpBlock_0", "MultiHeadDotProductAttention_0", "LayerNorm_0")}
  if "cls" in p and "pos_embedding" in p:
    pe = np.asarray(p["pos_embedding"])
    n = pe.shape[1]
    if int(round(n ** 0.5)) ** 2 == n:  # big_vision layout: no class-token row
      p["pos_embedding"] = np.concatenate([np.zeros_like(pe[:, :1]), pe], axis=1)
  return p


def _block0(enc: dict) -> tuple[dict, int]:
  if "encoderblock" in enc:
    b = enc["encoderblock"]
    return b, int(np.shape(b["LayerNorm_0"]["scale"])[0])
  n = len([k for k in enc if k.startswith("encoderblock_")])
  return enc["encoderblock_0"], n


def _encoder_fields(enc: dict, stacked_axis: bool) -> dict:
  b, depth = _block0(enc)
  q = np.shape(b["MultiHeadDotProductAttention_0"]["query"]["kernel"])[int(stacked_axis):]
  mlp = np.shape(b["MlpBlock_0"]["Dense_0"]["kernel"])[-1]
  return dict(width=int(q[0]), depth=depth, num_heads=int(q[1]), mlp_dim=int(mlp),
              scan="encoderblock" in enc)


def vit_to_ours(p: dict) -> tuple[str, dict, dict]:
  p = _fix_vit(p)
  fields = _encoder_fields(p["Transformer"], "encoderblock" in p["Transformer"])
  fields["patch_size"] = int(np.shape(p["embedding"]["kernel"])[0])
  fields["pool_type"] = "tok" if "cls" in p else "map" if "MAPHead_0" in p else "gap"
  fields["num_classes"] = int(np.shape(p["head"]["kernel"])[1]) if "head" in p else None
  if "pre_logits" in p:
    fields["rep_size"] = int(np.shape(p["pre_logits"]["kernel"])[1])
  return "vit", fields, p


def text_to_ours(p: dict) -> tuple[str, dict, dict]:
  p = tree_lib.renumber_modules(dict(p))
  out = {k: v for k, v in p.items() if k not in ("Embed_0", "Encoder_0")}
  if "Embed_0" in p:
    out["embedding"] = p["Embed_0"]
  if "Encoder_0" in p:
    enc = dict(p["Encoder_0"])
    extra = enc.pop("pos_embedding", None)  # some checkpoints added it twice
    if extra is not None:
      out["pos_embedding"] = np.asarray(out["pos_embedding"]) + np.asarray(extra)
    out["Transformer"] = enc
  fields = _encoder_fields(out["Transformer"], "encoderblock" in out["Transformer"])
  fields["vocab_size"] = int(np.shape(out["embedding"]["embedding"])[0])
  fields["pool_type"] = "map" if "MAPHead_0" in out else "end"
  fields["num_classes"] = int(np.shape(out["head"]["kernel"])[1]) if "head" in out else None
  return "text_transformer", fields, out


# flaxformer's BertEncoder names -> ours (models/bert.py), per block and outside.
_BERT_TABLES = {"embedders_token_ids": "embedding", "embedders_position_ids": "pos_embedding",
                "embedders_segment_ids": "segment_embedding"}
_BERT_BLOCK = {("attention_block", "layer_norm"): "attention_norm",
               ("mlp_block", "mlp", "dense_layer"): ("mlp", "Dense_0"),
               ("mlp_block", "dense_layer"): ("mlp", "Dense_1"),
               ("mlp_block", "layer_norm"): "mlp_norm"}
# BERT sizes name 64-channel heads; a 2-D kernel cannot tell the head count.
BERT_HEAD_DIM = 64


def bert_to_ours(p: dict) -> tuple[str, dict, dict]:
  """big_vision's `proj.flaxformer.bert` tower ({"BertEncoder_0": ..., "head"})."""
  enc = p["BertEncoder_0"]
  out: dict[str, Any] = {_BERT_TABLES[k]: np.asarray(v["embedding"])
                         for k, v in enc["embedder"].items()}
  out["embedding_norm"] = dict(enc["layer_norm"])
  width = out["embedding"].shape[1]
  heads = width // BERT_HEAD_DIM
  layers = enc["encoder_block"]["layer_sequence"]
  for i in range(len(layers)):
    src = layers[f"layers_{i}"]
    att = src["attention_block"]
    block: dict[str, Any] = {"attention": {
        name: {"kernel": np.asarray(att["attention_layer"][name]["kernel"]).reshape(
                   width, heads, -1),
               "bias": np.asarray(att["attention_layer"][name]["bias"]).reshape(heads, -1)}
        for name in ("query", "key", "value")}}
    block["attention"]["out"] = {
        "kernel": np.asarray(att["dense_layer"]["kernel"]).reshape(heads, -1, width),
        "bias": np.asarray(att["dense_layer"]["bias"])}
    for path, ours in _BERT_BLOCK.items():
      leaf = src
      for k in path:
        leaf = leaf[k]
      if isinstance(ours, tuple):
        block.setdefault(ours[0], {})[ours[1]] = dict(leaf)
      else:
        block[ours] = dict(leaf)
    out[f"block_{i}"] = block
  fields = dict(vocab_size=int(out["embedding"].shape[0]), width=int(width),
                depth=len(layers), num_heads=int(heads),
                mlp_dim=int(np.shape(out["block_0"]["mlp"]["Dense_0"]["kernel"])[1]),
                max_len=int(out["pos_embedding"].shape[0]),
                num_segments=int(out["segment_embedding"].shape[0]))
  fields["num_classes"] = int(np.shape(p["head"]["kernel"])[1]) if "head" in p else None
  if "head" in p:
    out["head"] = dict(p["head"])
  return "bert", fields, out


def bert_from_ours(p: dict) -> dict:
  """Our `bert` params -> big_vision's `{"BertEncoder_0": ..., "head": ...}`."""
  inverse = {v: k for k, v in _BERT_TABLES.items()}
  enc: dict[str, Any] = {"embedder": {inverse[k]: {"embedding": p[k]} for k in inverse},
                         "layer_norm": dict(p["embedding_norm"])}
  layers = {}
  depth = len([k for k in p if k.startswith("block_")])
  for i in range(depth):
    b = p[f"block_{i}"]
    width = np.shape(b["attention"]["out"]["bias"])[0]
    att = {name: {"kernel": np.asarray(b["attention"][name]["kernel"]).reshape(width, -1),
                  "bias": np.asarray(b["attention"][name]["bias"]).reshape(-1)}
           for name in ("query", "key", "value")}
    layer: dict[str, Any] = {"attention_block": {
        "attention_layer": att,
        "dense_layer": {"kernel": np.asarray(b["attention"]["out"]["kernel"]).reshape(
                            -1, width),
                        "bias": b["attention"]["out"]["bias"]}}}
    for path, ours in _BERT_BLOCK.items():
      leaf = b[ours[0]][ours[1]] if isinstance(ours, tuple) else b[ours]
      node = layer
      for k in path[:-1]:
        node = node.setdefault(k, {})
      node[path[-1]] = dict(leaf)
    layers[f"layers_{i}"] = layer
  enc["encoder_block"] = {"layer_sequence": layers}
  out: dict[str, Any] = {"BertEncoder_0": enc}
  if "head" in p:
    out["head"] = dict(p["head"])
  return out


def to_ours(flat: dict[str, np.ndarray]) -> tuple[str, dict, dict]:
  """A big_vision `.npz` ({"a/b": array}) -> (model_name, fields, params)."""
  p = _strip_prefix(tree_lib.nest(flat))
  if "img" in p or "txt" in p:
    out: dict[str, Any] = {k: v for k, v in p.items() if k not in ("img", "txt")}
    fields: dict[str, Any] = {}
    if "img" in p:
      _, fields["image"], out["img"] = vit_to_ours(p["img"])
      fields["image_model"] = "vit"
      fields["embed_dim"] = fields["image"].pop("num_classes")
    if "txt" in p:
      fields["text_model"], fields["text"], out["txt"] = (
          bert_to_ours if "BertEncoder_0" in p["txt"] else text_to_ours)(p["txt"])
      fields["embed_dim"] = fields["text"].pop("num_classes")
    fields["bias_init"] = 0.0 if "b" in p else None
    return "two_tower", fields, out
  if "embedding" in p and "Transformer" in p:
    return vit_to_ours(p)
  raise ValueError("big_vision .npz: neither a ViT (embedding/, Transformer/) nor a "
                   f"two-tower (img/, txt/) checkpoint; top-level names: {sorted(p)[:10]}")


def from_ours(params: dict, model_name: str) -> dict[str, np.ndarray]:
  """Our params -> a flat big_vision `.npz` dict (big_vision's names)."""
  params = {k: v for k, v in params.items()}
  if model_name == "two_tower" and "txt" in params:
    txt = dict(params["txt"])
    if "segment_embedding" in txt:  # a BERT tower
      params["txt"] = bert_from_ours(txt)
    else:
      txt["Embed_0"] = txt.pop("embedding")
      txt["Encoder_0"] = txt.pop("Transformer")
      params["txt"] = txt
  elif model_name not in ("vit", "two_tower"):
    raise ValueError(f"export to big_vision: model {model_name!r} is not a ViT or a "
                     "two-tower (use --format timm for a ResNet)")
  return {k: np.asarray(v) for k, v in tree_lib.flatten(params).items()}


# -- BiT (Kolesnikov et al. 2020) as published by big_transfer: "resnet/..." keys.
# Unit groups a, b, c hold (GroupNorm, StdConv) pairs: our gn1+conv1, gn2+conv2,
# gn3+conv3; "a/proj" is the shortcut conv. Kernels are already HWIO.
_BIT_GROUPS = {"a": "1", "b": "2", "c": "3"}


def is_bit(flat: dict[str, np.ndarray]) -> bool:
  return any(k.startswith("resnet/root_block/") for k in flat)


def bit_to_ours(flat: dict[str, np.ndarray]) -> tuple[str, dict, dict]:
  """A BiT `.npz` (big_transfer layout) -> ("resnet", fields, params)."""
  import re
  flat = {re.sub(r"/standardized_conv2d_\d+/", "/standardized_conv2d/", k): v
          for k, v in flat.items()}
  used = set()

  def take(k):
    used.add(k)
    return np.asarray(flat[k])

  params: dict[str, Any] = {"stem_conv": {"kernel": take(
      "resnet/root_block/standardized_conv2d/kernel")}}
  blocks = []
  for s in range(1, 5):
    units = sorted({m.group(1) for k in flat
                    if (m := re.match(rf"resnet/block{s}/unit(\d+)/", k))})
    blocks.append(len(units))
    stage = {}
    for b, unit in enumerate(units, start=1):
      pre = f"resnet/block{s}/unit{unit}"
      block = {}
      for group, i in _BIT_GROUPS.items():
        block[f"gn{i}"] = {"scale": take(f"{pre}/{group}/group_norm/gamma").reshape(-1),
                           "bias": take(f"{pre}/{group}/group_norm/beta").reshape(-1)}
        block[f"conv{i}"] = {"kernel": take(f"{pre}/{group}/standardized_conv2d/kernel")}
      proj = f"{pre}/a/proj/standardized_conv2d/kernel"
      if proj in flat:
        block["conv_proj"] = {"kernel": take(proj)}
      stage[f"block_{b}"] = block
    params[f"stage_{s}"] = stage
  params["norm_pre_head"] = {"scale": take("resnet/group_norm/gamma").reshape(-1),
                             "bias": take("resnet/group_norm/beta").reshape(-1)}
  from big_vision_like.models import resnet as resnet_lib
  depth = {v: k for k, v in resnet_lib.BLOCKS_PER_STAGE.items()}.get(tuple(blocks))
  if depth is None:
    raise ValueError(f"BiT .npz: units per block {blocks} match no ResNet depth of ours")
  width = params["stem_conv"]["kernel"].shape[-1] / resnet_lib.BASE_WIDTH
  fields = dict(depth=depth, width=int(width) if width.is_integer() else width,
                padding="symmetric", std_eps=1e-10, gn_eps=1e-5, stem="imagenet",
                num_classes=None)
  if "resnet/head/conv2d/kernel" in flat:
    kernel = take("resnet/head/conv2d/kernel")
    params["head"] = {"kernel": kernel.reshape(kernel.shape[-2:]),
                      "bias": take("resnet/head/conv2d/bias")}
    fields["num_classes"] = int(kernel.shape[-1])
  left = sorted(set(flat) - used)
  if left:
    raise ValueError(f"BiT .npz: keys this converter does not understand: {left[:8]}")
  return "resnet", fields, params


def bit_from_ours(params: dict) -> dict[str, np.ndarray]:
  """Our ResNet params -> the BiT `.npz` layout."""
  out = {"resnet/root_block/standardized_conv2d/kernel": np.asarray(params["stem_conv"]["kernel"]),
         "resnet/group_norm/gamma": np.asarray(params["norm_pre_head"]["scale"]),
         "resnet/group_norm/beta": np.asarray(params["norm_pre_head"]["bias"])}
  for s in range(1, 5):
    for name, block in params[f"stage_{s}"].items():
      pre = f"resnet/block{s}/unit{int(name.split('_')[1]):02d}"
      for group, i in _BIT_GROUPS.items():
        out[f"{pre}/{group}/group_norm/gamma"] = np.asarray(block[f"gn{i}"]["scale"])
        out[f"{pre}/{group}/group_norm/beta"] = np.asarray(block[f"gn{i}"]["bias"])
        out[f"{pre}/{group}/standardized_conv2d/kernel"] = np.asarray(block[f"conv{i}"]["kernel"])
      if "conv_proj" in block:
        out[f"{pre}/a/proj/standardized_conv2d/kernel"] = np.asarray(block["conv_proj"]["kernel"])
  if "head" in params:
    out["resnet/head/conv2d/kernel"] = np.asarray(params["head"]["kernel"])[None, None]
    out["resnet/head/conv2d/bias"] = np.asarray(params["head"]["bias"])
  return out
