"""The model zoo: published checkpoints by name, like timm's pretrained configs.

Each `ZooEntry` says what a published checkpoint is (our model name and
fields), where it is published (a Hugging Face hub file, or a gs:// URL), in
which layout (`weights.convert.FORMATS`), how images are preprocessed for it
(an eval pp string: resolution, crop, normalisation) and which class names its
outputs mean.

    loaded = zoo.load("vit_base_patch16_224.augreg2_in21k_ft_in1k")   # hub cache
    loaded = zoo.load("ViT-B-32/openai", weights="/data/open_clip_model.safetensors")
    logits = loaded.predict_fn(loaded.params, {"image": images})

Weights come from `weights=PATH` (any format of the same architecture:
timm safetensors or the big_vision/vision_transformer .npz of the same model
both work), else from the entry's hub file through `huggingface_hub` (which
reads a populated cache offline), else from its gs:// URL. Numerical
conventions of the publishing library (GELU flavour, LayerNorm/GroupNorm eps,
padding) are part of the entry's fields, so imported logits equal the
reference implementation's.

Configs use entries as `model_init="zoo:NAME"` or `"zoo:NAME=PATH"`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from big_vision_like.weights import convert, files, fit as fit_lib

logger = logging.getLogger(__name__)

# Eval preprocessing as published (timm pretrained cfgs; CLIP; big_vision).
# crop_pct 0.9 at 224: resize the shorter side to int(224 / 0.9) = 248.
_TIMM_VIT_PP = "decode|resize_small(248, method='bicubic')|central_crop(224)|value_range(-1, 1)"
_CLIP_MEAN = (0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255)
_CLIP_STD = (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255)
_CLIP_PP = ("decode|resize_small(224, method='bicubic')|central_crop(224)|"
            f"vgg_value_range(mean={_CLIP_MEAN}, std={_CLIP_STD})")


@dataclasses.dataclass(frozen=True)
class ZooEntry:
  """One published checkpoint; see the module docstring."""
  name: str
  model: str  # our model registry name
  fields: dict[str, Any]  # our model's fields (what the tensors cannot tell)
  format: str  # the published layout (weights.convert.FORMATS)
  source: str  # "hf:REPO_ID/FILENAME" or a gs:// / https:// URL
  pp: str  # eval image preprocessing (decode ... normalise), as published
  resolution: int = 224
  class_names: str | None = None  # a zeroshot class_names spec ("imagenet2012")
  text_pp: str | None = None  # two-tower: texts -> token ids, as published
  text_len: int | None = None
  notes: str = ""


ZOO: dict[str, ZooEntry] = {}


def register(entry: ZooEntry) -> ZooEntry:
  if entry.name in ZOO:
    raise ValueError(f"zoo entry {entry.name!r} registered twice")
  ZOO[entry.name] = entry
  return entry


def _timm_vit(name: str, variant: str, classes: int, hub_repo: str, notes: str) -> None:
  register(ZooEntry(
      name=name, model="vit",
      fields=dict(variant=variant, pool_type="tok", num_classes=classes),
      format="timm_vit", source=f"hf:{hub_repo}/model.safetensors", pp=_TIMM_VIT_PP,
      class_names="imagenet2012" if classes == 1000 else None, notes=notes))


_timm_vit("vit_small_patch16_224.augreg_in21k_ft_in1k", "S/16", 1000,
          "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
          "AugReg (Steiner et al. 2021) S/16, ImageNet-21k then 1k; the same weights as "
          "vision_transformer's S_16-i21k-300ep-...-res_224.npz")
_timm_vit("vit_base_patch16_224.augreg2_in21k_ft_in1k", "B/16", 1000,
          "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
          "AugReg B/16 from ImageNet-21k, fine-tuned on 1k again by timm (augreg2)")
_timm_vit("vit_base_patch16_224.augreg_in21k", "B/16", 21843,
          "timm/vit_base_patch16_224.augreg_in21k",
          "AugReg B/16 ImageNet-21k (21,843 classes); as B_16-i21k-300ep-...npz")
_timm_vit("vit_large_patch16_224.augreg_in21k_ft_in1k", "L/16", 1000,
          "timm/vit_large_patch16_224.augreg_in21k_ft_in1k",
          "AugReg L/16, ImageNet-21k then 1k")

for _name, _depth, _classes, _res, _crop in (
    ("resnetv2_50x1_bit.goog_in21k_ft_in1k", 50, 1000, 448, 448),
    ("resnetv2_101x1_bit.goog_in21k", 101, 21843, 224, 256)):
  register(ZooEntry(
      name=_name, model="resnet",
      fields=dict(depth=_depth, width=1, num_classes=_classes, gn_groups=32,
                  padding="symmetric", std_eps=1e-8, gn_eps=1e-5),
      format="timm_resnetv2", source=f"hf:timm/{_name}/model.safetensors",
      pp=(f"decode|resize_small({_crop}, method='bilinear')|central_crop({_res})|"
          "value_range(-1, 1)"),
      resolution=_res, class_names="imagenet2012" if _classes == 1000 else None,
      notes="BiT (Kolesnikov et al. 2020) ResNet-v2, weight-standardised convs + GroupNorm; "
            "the big_transfer .npz of the same model also loads (weights=)"))


def _clip(name: str, variant: str, text_width: int, text_layers: int, embed: int,
          hub: str, quick_gelu: bool, notes: str) -> None:
  act = "quick_gelu" if quick_gelu else "gelu"
  image_variant, patch = variant.split("/")
  register(ZooEntry(
      name=name, model="two_tower",
      fields=dict(
          image_model="vit", embed_dim=embed, text_model="text_transformer",
          image=dict(variant=variant, pool_type="tok", ln_pre=True, ln_eps=1e-5,
                     mlp_act=act, head_zeroinit=False),
          text=dict(vocab_size=49408, width=text_width, depth=text_layers,
                    mlp_dim=4 * text_width, num_heads=text_width // 64,
                    pool_type="argmax", causal=True, ln_eps=1e-5, mlp_act=act),
          temperature_init=100.0),
      format="open_clip", source=f"hf:{hub}/open_clip_model.safetensors", pp=_CLIP_PP,
      class_names="imagenet2012_clip", text_pp="tokenize(77, tokenizer='clip', bos=True)",
      text_len=77, notes=notes))


_clip("ViT-B-32/openai", "B/32", 512, 12, 512, "timm/vit_base_patch32_clip_224.openai",
      True, "OpenAI CLIP (Radford et al. 2021), QuickGELU")
_clip("ViT-B-16/openai", "B/16", 512, 12, 512, "timm/vit_base_patch16_clip_224.openai",
      True, "OpenAI CLIP, QuickGELU")
_clip("ViT-L-14/openai", "L/14", 768, 12, 768, "timm/vit_large_patch14_clip_224.openai",
      True, "OpenAI CLIP, QuickGELU")
_clip("ViT-B-16/laion2b_s34b_b88k", "B/16", 512, 12, 512,
      "laion/CLIP-ViT-B-16-laion2B-s34B-b88K", False,
      "OpenCLIP trained on LAION-2B (Cherti et al. 2023), exact GELU")

register(ZooEntry(
    name="siglip/B/16-224", model="two_tower",
    fields=dict(image_model="vit", text_model="text_transformer", embed_dim=768,
                image=dict(variant="B/16", pool_type="map", head_zeroinit=False),
                text=dict(variant="B", vocab_size=32_000, pool_type="end"),
                temperature_init=10.0, bias_init=-10.0),
    format="big_vision", source="gs://big_vision/siglip/webli_en_b16_224_63724782.npz",
    pp="decode|resize(224)|value_range(-1, 1)", class_names="imagenet2012_clip",
    text_pp=("tokenize(64, tokenizer='sentencepiece:PATH/TO/c4_en.model', eos='sticky', "
             "pad_value=1)"), text_len=64,
    notes="SigLIP (Zhai et al. 2023) B/16 on WebLI; text: big_vision's c4_en "
          "SentencePiece model, texts padded with EOS (id 1)"))
for _ep in (90, 300):
  register(ZooEntry(
      name=f"vit_s16_i1k_{_ep}ep.big_vision", model="vit",
      fields=dict(variant="S/16", pool_type="gap", posemb="sincos2d", rep_size=True,
                  num_classes=1000),
      format="big_vision", source=f"gs://big_vision/vit_s16_i1k_{_ep}ep.npz",
      pp="decode|resize_small(256)|central_crop(224)|value_range(-1, 1)",
      class_names="imagenet2012",
      notes=f"big_vision's vit_s16_i1k.py recipe, {_ep} epochs (Beyer et al. 2022, "
            "'Better plain ViT baselines')"))


register(ZooEntry(
    name="lit/B16B", model="two_tower",
    fields=dict(image_model="vit", text_model="bert", embed_dim=768,
                image=dict(variant="B/16", pool_type="tok", head_zeroinit=False),
                text=dict(variant="B", vocab_size=30_522, max_len=512),
                temperature_init=10.0),
    format="big_vision", source="gs://vit_models/lit/LiT-B16B.npz",
    pp="decode|resize(224)|value_range(-1, 1)", class_names="imagenet2012_clip",
    text_pp="tokenize(16, tokenizer='bert:PATH/TO/LiT-B16B.txt', bos=True, eos='none')",
    text_len=16,
    notes="LiT (Zhai et al. 2022) 'mixed_B16B': AugReg ViT-B/16 image tower with a head, "
          "BERT-base text tower (models/bert.py); its WordPiece vocabulary is "
          "gs://vit_models/lit/LiT-B16B.txt; texts are [CLS] + word pieces, zero-padded"))

# DeiT III (Touvron et al. 2022) as converted by big_vision (its first layer takes
# [-1, 1] inputs, the position embedding has no class-token row); "21k" models are
# pre-trained on ImageNet-21k and fine-tuned on 1k. Eval pp as big_vision's DeiT III
# configs: resize to res/0.875, central crop.
for _size, _long in (("S", "small"), ("B", "base"), ("L", "large")):
  for _res in (224, 384):
    for _data in ("1k", "21k"):
      register(ZooEntry(
          name=f"deit3_{_size}_{_res}_{_data}.big_vision", model="vit",
          fields=dict(variant=f"{_size}/16", pool_type="tok", num_classes=1000),
          format="big_vision",
          source=f"gs://big_vision/zoo/deit3/bv_deit_3_{_long}_{_res}_{_data}.npz",
          pp=f"decode|resize({_res // 7 * 8})|central_crop({_res})|value_range(-1, 1)",
          resolution=_res, class_names="imagenet2012",
          notes=f"DeiT III {_size}/16 at {_res} px, ImageNet-{_data} (big_vision's "
                "conversion of the official checkpoint)"))


def get(name: str) -> ZooEntry:
  if name not in ZOO:
    from big_vision_like.errors import unknown_name_message
    raise ValueError(unknown_name_message("zoo model", name, ZOO))
  return ZOO[name]


# Tokenizer files that are published beside the weights (SigLIP's SentencePiece
# model, LiT's WordPiece vocabulary) appear in `text_pp` as PATH/TO/<file name>.
TEXT_FILE_PLACEHOLDER = "PATH/TO/"


def text_pp(entry: ZooEntry, text_file: str | None = None) -> str | None:
  """The entry's text pp with its tokenizer file filled in from `text_file`.

  Raises naming the file the entry needs when it needs one and none is given.
  """
  pp = entry.text_pp
  match = re.search(re.escape(TEXT_FILE_PLACEHOLDER) + r"([^'\"]+)", pp or "")
  if match is None:
    return pp
  if not text_file:
    raise ValueError(
        f"zoo {entry.name}: its texts are tokenized with {match.group(1)}, a file published "
        "with the weights; pass its path (Predictor.from_zoo(..., text_file=PATH), "
        "--text_file PATH, or configs/zoo_eval.py:...,text_file=PATH)")
  return pp.replace(match.group(0), text_file)


def resolve_source(entry: ZooEntry) -> str:
  """A readable path for the entry's published file (hub cache, or its URL)."""
  if entry.source.startswith("hf:"):
    repo_and_file = entry.source[3:]
    parts = repo_and_file.split("/")
    return files.hub_download("/".join(parts[:2]), "/".join(parts[2:]))
  return entry.source


def parse_spec(spec: str) -> tuple[str, str | None]:
  """"zoo:NAME" or "zoo:NAME=PATH" -> (NAME, PATH or None)."""
  body = spec[len("zoo:"):] if spec.startswith("zoo:") else spec
  name, sep, path = body.partition("=")
  return name, (path if sep else None)


def model_config(entry: ZooEntry, imported_fields: dict | None = None
                 ) -> ml_collections.ConfigDict:
  """config.model_name / config.model for the entry (imported tensors win on sizes)."""
  fields = dict(entry.fields)
  for k, v in (imported_fields or {}).items():
    if isinstance(v, dict):
      fields[k] = {**dict(fields.get(k) or {}), **v}
    elif v is not None or k not in fields:
      fields[k] = v
  if entry.model == "vit" and "variant" in fields:
    # Explicit sizes from the tensors would duplicate the variant's.
    for k in ("width", "depth", "mlp_dim"):
      fields.pop(k, None)
  return ml_collections.ConfigDict({"model_name": entry.model, "model": fields})


@dataclasses.dataclass
class Loaded:
  """A zoo model with its params, ready to predict."""
  entry: ZooEntry
  config: ml_collections.ConfigDict
  experiment: Any  # experiment.Experiment
  params: Any

  @property
  def predict_fn(self) -> Callable[[Any, dict], Any]:
    return self.experiment.predict_fn


def input_spec(entry: ZooEntry) -> dict[str, jax.ShapeDtypeStruct]:
  spec = {"image": jax.ShapeDtypeStruct((entry.resolution, entry.resolution, 3), jnp.float32)}
  if entry.model == "two_tower":
    spec["text"] = jax.ShapeDtypeStruct((entry.text_len or 16,), jnp.int32)
  return spec


def load(name: str, weights: str | None = None, *, skip: tuple[str, ...] = (),
         overrides: dict | None = None, resolution: int | None = None) -> Loaded:
  """Builds zoo model `name` and loads its weights (see the module docstring).

  `skip` regexes keep fresh params (e.g. a new head); `overrides` change
  model fields (e.g. num_classes for fine-tuning); `resolution` another image
  size (the position embedding is resampled).
  """
  from big_vision_like import experiment  # (experiment imports the task/model stack)
  entry = get(name)
  path = weights or resolve_source(entry)
  imported = convert.import_weights(path)
  config = model_config(entry, _shape_fields(imported))
  for k, v in (overrides or {}).items():
    config.model[k] = v
  if resolution:
    entry = dataclasses.replace(entry, resolution=resolution)
  exp = experiment.build(config, input_spec=input_spec(entry))
  target = exp.init_params() if skip else exp.abstract_params
  params = fit_lib.fit(imported.params, target, skip=skip, source=str(path))
  logger.info("zoo: loaded %s from %s (%s layout)", name, path, imported.format)
  return Loaded(entry=entry, config=config, experiment=exp, params=params)


def _shape_fields(imported: convert.Imported) -> dict:
  """The imported fields that describe numerics conventions, not sizes.

  Sizes are checked by `fit` against the entry's model; numerics (activation,
  eps, padding) follow the file's library (the same AugReg weights use exact
  GELU in timm's port and tanh-GELU in the original .npz).
  """
  keep = ("mlp_act", "ln_eps", "padding", "std_eps", "gn_eps", "scan")
  out = {k: v for k, v in imported.fields.items() if k in keep}
  for tower in ("image", "text"):
    if isinstance(imported.fields.get(tower), dict):
      out[tower] = {k: v for k, v in imported.fields[tower].items() if k in keep}
  return out
