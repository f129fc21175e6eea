"""Exports a trained workdir's weights for timm, open_clip or big_vision.

    python -m big_vision_like.tools.export --workdir DIR --format timm --out vit.safetensors
    python -m big_vision_like.tools.export --workdir DIR --format big_vision --out vit.npz \\
        --step 2000
    python -m big_vision_like.tools.export --workdir DIR --format open_clip \\
        --out clip.safetensors --config configs/x.py:arg --config.model.embed_dim=64

Reads the params of the newest (or `--step`) checkpoint in `DIR/checkpoints`
and the model's config: `DIR/config.json`, which train.py writes into every
workdir, unless `--config FILE.py[:ARG]` (plus `--config.*` overrides) is
given. The input shapes come from the checkpoint, as in eval.py. Formats:

- `timm`: a ViT (patchify stem, learned position embedding, `pool_type`
  "tok" or "gap", no `rep_size`) as timm's `VisionTransformer`, or a BiT
  ResNet (`stem="imagenet"`, `padding="symmetric"`) as timm's `ResNetV2`;
  `.safetensors`.
- `open_clip`: a two-tower ViT + causal text transformer laid out like CLIP
  (`ln_pre`, class-token pooling, `argmax` text pooling, no projection or
  patch-embedding biases) as open_clip's `CLIP`; `.safetensors`.
- `big_vision`: a ViT or a two-tower as a big_vision `.npz`, a ResNet in
  the BiT `.npz` layout of big_transfer.

Next to `OUT` goes `OUT.json`: what was written (format, our model name and
every model field, the input shapes, the checkpoint), how to build the
matching model in the target library (`load`: timm/open_clip constructor and
keyword arguments, plus a Python snippet) and `notes` on numerics that differ
from that library's defaults (each also logged as a warning). A model the
target library cannot represent is refused with one line saying why (exit
status 1) and nothing is written. An existing `OUT` is kept unless
`--overwrite`; both files are written to a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from etils import epath

from big_vision_like import checkpoint as ckpt_lib
from big_vision_like import config as config_lib
from big_vision_like import errors
from big_vision_like import experiment
from big_vision_like import registry
from big_vision_like.models import resnet as resnet_lib
from big_vision_like.weights import convert, files
from big_vision_like.weights import tree as tree_lib

logger = logging.getLogger(__name__)

# --format -> the file suffix it writes.
SUFFIXES = {"timm": ".safetensors", "open_clip": ".safetensors", "big_vision": ".npz"}
TIMM_VIT_LN_EPS = 1e-6  # timm's ViT LayerNorm
OPEN_CLIP_LN_EPS = 1e-5  # torch's LayerNorm default, which open_clip uses
# Parameters open_clip's CLIP does not have: exported only when zero (see
# weights/open_clip.py), so they are the only ones allowed to go missing.
_OPEN_CLIP_DROPPED = ("img/embedding/bias", "img/head/bias", "txt/head/bias")


class ExportError(ValueError):
  """A refusal or a bad argument; the CLI prints it as one line."""


# ---------------------------------------------------------------- the workdir


def workdir_config(workdir: str, config: Any = None, overrides: Sequence[str] = ()
                   ) -> tuple[ml_collections.ConfigDict, str]:
  """(config, where it came from) of a workdir's model.

  `config` (a ConfigDict or "FILE.py[:ARG]") if given, else the workdir's
  config.json; `overrides` ("a.b=value") are applied to either.
  """
  if config is None:
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
      raise ExportError(
          f"{path} does not exist (train.py writes it into every workdir): pass the "
          "model's config with --config CONFIG.py[:ARGS] and the --config.* overrides "
          "it was trained with")
    out = ml_collections.ConfigDict(json.loads(path.read_text()))
    source = str(path)
  elif isinstance(config, str):
    out, source = config_lib.load_config(config), config
  else:
    out, source = ml_collections.ConfigDict(config.to_dict()), "the given ConfigDict"
  for override in overrides:
    config_lib.apply_override(out, override)
  if not out.get("model_name"):
    raise ExportError(f"{source} has no model_name")
  return out, source


def _jsonable(x: Any) -> Any:
  if isinstance(x, (Mapping, ml_collections.ConfigDict)):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.generic):
    return x.item()
  if x is None or isinstance(x, (bool, int, float, str)):
    return x
  return str(x)


def _module_fields(module: Any) -> dict[str, Any]:
  """Every field of a model module, sizes resolved (a ViT's variant -> width, ...)."""
  out = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
         if f.name not in ("parent", "name")}
  dims = getattr(module, "_dims", None)  # ViT and text transformer: variant + overrides
  if callable(dims):
    out.update(dims())  # pylint: disable=not-callable
  return out


def model_fields(model_name: str, model: Any) -> dict[str, Any]:
  """All fields of the built model (defaults included), as JSON-able values.

  A two-tower's `image`/`text` are completed the same way, with the
  projection size the towers are built with (`num_classes=embed_dim`).
  """
  fields = _module_fields(model)
  if model_name == "two_tower":
    for which, name in (("image", fields["image_model"]), ("text", fields["text_model"])):
      cls = registry.MODELS.get(name)
      kwargs = {**dict(fields[which] or {}), "num_classes": fields["embed_dim"]}
      if "head_zeroinit" in getattr(cls, "__dataclass_fields__", {}):
        kwargs["head_zeroinit"] = False  # as TwoTower builds its towers
      fields[which] = _module_fields(cls(**kwargs))
  return _jsonable(fields)


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split())


def _open_checkpoint(workdir: str, config: ml_collections.ConfigDict, step: int | None
                     ) -> tuple[experiment.Experiment, epath.Path, dict]:
  """(experiment, step dir, meta) of a workdir's checkpoint; no arrays are read."""
  ckpt_dir = epath.Path(workdir) / "checkpoints"
  if not ckpt_dir.is_dir():
    raise ExportError(f"no checkpoints in {ckpt_dir}: train first, or pass the workdir "
                      "of a run that saved one")
  ckpt = ckpt_lib.Checkpointer(str(ckpt_dir), async_save=False, read_only=True)
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise ExportError(f"no complete checkpoint step in {ckpt_dir}")
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise ExportError(f"no checkpoint of step {step} in {ckpt_dir}; steps: {steps}")
    meta = ckpt.read_meta(step)
  finally:
    ckpt.close()
  if "input_spec" not in meta:
    raise ExportError(f"checkpoint {ckpt_dir / str(step)} records no input_spec (saved "
                      "before train.py recorded one): resume training for one step to "
                      "re-save it")
  try:
    exp = experiment.build(config, input_spec=experiment.spec_from_json(meta["input_spec"]))
  except (errors.ConfigError, errors.UnknownNameError, TypeError, ValueError) as e:
    raise ExportError(f"cannot build the model of the config: {_one_line(e)}") from None
  return exp, ckpt_dir / str(step), {**meta, "step": step}


def _load_params(exp: experiment.Experiment, step_dir: epath.Path) -> Any:
  try:
    params = ckpt_lib.load_params(str(step_dir), exp.abstract_params)
  except ValueError as e:  # the config's model is not the checkpoint's
    raise ExportError(f"the config does not describe the checkpoint's model: "
                      f"{_one_line(e)}") from None
  return jax.device_get(params)


# ------------------------------------------------- what each library needs


def _image_shape(spec: dict) -> list[int]:
  """[height, width, channels] of the training images."""
  if "image" not in spec:
    raise ExportError(f"the checkpoint's input_spec has no 'image' ({sorted(spec)})")
  return [int(s) for s in spec["image"][0]]


def _size_arg(hw: list[int]) -> Any:
  return hw[0] if hw[0] == hw[1] else hw


def _ratio(f: dict) -> float:
  ratio = f["mlp_dim"] / f["width"]
  if int(f["width"] * ratio) != f["mlp_dim"]:  # how timm/open_clip size their MLPs
    raise ExportError(f"mlp_dim={f['mlp_dim']} is not reproducible as int(width * "
                      f"mlp_ratio) for width={f['width']}")
  return ratio


def _act_note(which: str, act: str, library: str, fix: str) -> str:
  how = "slightly different" if act == "gelu_tanh" else "different"
  return (f"{which}mlp_act={act!r}: {library}'s default MLP activation is exact GELU "
          f"(torch.nn.GELU), so a model built with {library}'s defaults gives {how} "
          "logits than this one (they agree only for models trained with "
          f"mlp_act='gelu'); {fix} reproduces this model")


def _timm_vit(f: dict, spec: dict) -> tuple[dict, list[str], list[str]]:
  unsupported = {k: f[k] for k, ok in (("pool_type", f["pool_type"] in ("tok", "gap")),
                                        ("posemb", f["posemb"] == "learn"),
                                        ("conv_stem", not f["conv_stem"]),
                                        ("ln_pre", not f["ln_pre"]),
                                        ("rep_size", not f["rep_size"])) if not ok}
  if unsupported:
    raise ExportError(
        "timm: " + ", ".join(f"model.{k}={v!r}" for k, v in unsupported.items())
        + ": timm's VisionTransformer has a patchify stem, a learned position embedding, "
        "pool_type 'tok' or 'gap', no ln_pre and no pre-logits layer (rep_size); export "
        "to big_vision instead")
  if f["mlp_act"] not in ("gelu", "gelu_tanh", "quick_gelu", "relu"):
    raise ExportError(f"timm: model.mlp_act={f['mlp_act']!r} is not a timm activation")
  tok = f["pool_type"] == "tok"
  h, w, c = _image_shape(spec)
  kwargs = dict(pretrained=False, num_classes=f["num_classes"] or 0,
                img_size=_size_arg([h, w]), in_chans=c, patch_size=f["patch_size"],
                embed_dim=f["width"], depth=f["depth"], num_heads=f["num_heads"],
                mlp_ratio=_ratio(f), global_pool="token" if tok else "avg",
                class_token=tok, fc_norm=False, act_layer=f["mlp_act"])
  notes, info, extra = [], [], ""
  if f["mlp_act"] != "gelu":
    notes.append(_act_note("model.", f["mlp_act"], "timm",
                           f"act_layer={f['mlp_act']!r} (as in load.kwargs)"))
  if f["ln_eps"] != TIMM_VIT_LN_EPS:
    extra = f", norm_layer=functools.partial(torch.nn.LayerNorm, eps={f['ln_eps']!r})"
    notes.append(f"model.ln_eps={f['ln_eps']!r}: timm's ViT LayerNorms use eps "
                 f"{TIMM_VIT_LN_EPS}; pass norm_layer with eps={f['ln_eps']!r} (as in "
                 "load.python) for the same logits")
  if not tok:
    info.append("global average pooling: timm needs fc_norm=False (the final LayerNorm "
                 "before pooling, as here), which load.kwargs sets")
  args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
  python = ("import functools, torch, timm, safetensors.torch\n"
            f"model = timm.create_model(\"vit_base_patch16_224\", {args}{extra})\n"
            "model.load_state_dict(safetensors.torch.load_file(PATH))\nmodel.eval()")
  load = dict(library="timm", function="timm.create_model",
              model_name="vit_base_patch16_224", kwargs=kwargs,
              norm_eps=f["ln_eps"], python=python)
  return load, notes, info


def _timm_resnet(f: dict, spec: dict) -> tuple[dict, list[str], list[str]]:
  if f["padding"] != "symmetric":
    raise ExportError(
        f"timm: model.padding={f['padding']!r}: timm's ResNetV2 pads its convolutions "
        "symmetrically (and its stem max-pool with zeros), so it would not reproduce this "
        "model's logits; only ResNets trained with model.padding='symmetric' export to timm")
  stem = resnet_lib.BASE_WIDTH * f["width"]
  if stem != int(stem) or int(stem) % 8:
    raise ExportError(f"timm: model.width={f['width']!r} gives {stem} stem channels; "
                      "timm rounds ResNetV2 channels to multiples of 8")
  kwargs = dict(layers=list(resnet_lib.BLOCKS_PER_STAGE[f["depth"]]),
                channels=[256, 512, 1024, 2048], width_factor=f["width"],
                stem_type="fixed", in_chans=_image_shape(spec)[2],
                num_classes=f["num_classes"] or 0)
  args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
  python = (
      "import functools, timm, timm.layers, timm.models.resnetv2, safetensors.torch\n"
      f"model = timm.models.resnetv2.ResNetV2({args},\n"
      f"    conv_layer=functools.partial(timm.layers.StdConv2d, eps={f['std_eps']!r}),\n"
      f"    norm_layer=functools.partial(timm.layers.GroupNormAct, "
      f"num_groups={f['gn_groups']!r}, eps={f['gn_eps']!r}))\n"
      "model.load_state_dict(safetensors.torch.load_file(PATH))\nmodel.eval()")
  load = dict(library="timm", function="timm.models.resnetv2.ResNetV2", kwargs=kwargs,
              conv_layer=dict(cls="timm.layers.StdConv2d", eps=f["std_eps"]),
              norm_layer=dict(cls="timm.layers.GroupNormAct", num_groups=f["gn_groups"],
                              eps=f["gn_eps"]),
              python=python)
  bit = dict(std_eps=1e-8, gn_eps=1e-5, gn_groups=32)  # timm's resnetv2_*_bit models
  differ = [f"model.{k}={f[k]!r} (timm's BiT: {v!r})" for k, v in bit.items() if f[k] != v]
  info = [f"{', '.join(differ)}: build the model as load.python does, not with "
          "timm.create_model('resnetv2_..._bit')"] if differ else []
  return load, [], info


def _open_clip_tower(f: dict, which: str, cfg_name: str) -> tuple[dict, list[str]]:
  """open_clip's act_kwargs/norm_kwargs for one tower, and notes."""
  cfg, notes = {}, []
  if f["mlp_act"] not in ("gelu", "gelu_tanh", "quick_gelu"):
    raise ExportError(f"open_clip: model.{which}.mlp_act={f['mlp_act']!r}: open_clip's "
                      "CLIP has GELU or QuickGELU only")
  if f["mlp_act"] == "gelu_tanh":
    cfg["act_kwargs"] = {"approximate": "tanh"}
    notes.append(_act_note(f"model.{which}.", "gelu_tanh", "open_clip",
                           f"{cfg_name} act_kwargs={{'approximate': 'tanh'}} (as in "
                           "load.kwargs)"))
  if f["ln_eps"] != OPEN_CLIP_LN_EPS:
    cfg["norm_kwargs"] = {"eps": f["ln_eps"]}
    notes.append(f"model.{which}.ln_eps={f['ln_eps']!r}: open_clip's LayerNorms use eps "
                 f"{OPEN_CLIP_LN_EPS}; {cfg_name} norm_kwargs={{'eps': {f['ln_eps']!r}}} "
                 "(as in load.kwargs) gives the same outputs")
  return cfg, notes


def _open_clip(f: dict, spec: dict) -> tuple[dict, list[str], list[str]]:
  if (f["image_model"], f["text_model"]) != ("vit", "text_transformer"):
    raise ExportError(f"open_clip: the towers are {f['image_model']!r} + "
                      f"{f['text_model']!r}; open_clip's CLIP layout is a 'vit' image tower "
                      "and a 'text_transformer'")
  img, txt = f["image"], f["text"]
  if img["posemb"] != "learn" or img["conv_stem"] or img["rep_size"]:
    raise ExportError("open_clip: the image tower needs a learned position embedding, "
                      f"no conv stem and no rep_size (model.image has posemb="
                      f"{img['posemb']!r}, conv_stem={img['conv_stem']!r}, "
                      f"rep_size={img['rep_size']!r})")
  # Ours -> open_clip's name for the same pooling ("last" there is our "end").
  text_pool = {"argmax": "argmax", "end": "last"}.get(txt["pool_type"])
  if text_pool is None:
    raise ExportError(
        f"open_clip: model.text.pool_type={txt['pool_type']!r} has no open_clip "
        "counterpart: open_clip pools with 'argmax' (the largest token id, CLIP's "
        "end-of-text) or 'last' (the final position, our 'end'), not the last "
        "non-padding token (our 'last')")
  if "text" not in spec:
    raise ExportError(f"the checkpoint's input_spec has no 'text' ({sorted(spec)})")
  h, w, c = _image_shape(spec)
  if c != 3:
    raise ExportError(f"open_clip: the model was trained on {c}-channel images; "
                      "open_clip's image tower takes RGB (3 channels)")
  quick = {which: t["mlp_act"] == "quick_gelu" for which, t in (("image", img),
                                                                ("text", txt))}
  if quick["image"] != quick["text"]:
    raise ExportError("open_clip: one tower uses quick_gelu and the other not "
                      f"(image {img['mlp_act']!r}, text {txt['mlp_act']!r}); open_clip's "
                      "CLIP has one quick_gelu flag for both")
  vision_extra, notes = _open_clip_tower(img, "image", "vision_cfg")
  text_extra, text_notes = _open_clip_tower(txt, "text", "text_cfg")
  notes += text_notes
  vision_cfg = dict(layers=img["depth"], width=img["width"],
                    head_width=img["width"] // img["num_heads"], mlp_ratio=_ratio(img),
                    patch_size=img["patch_size"], image_size=_size_arg([h, w]),
                    **vision_extra)
  text_cfg = dict(context_length=int(spec["text"][0][0]), vocab_size=txt["vocab_size"],
                  width=txt["width"], heads=txt["num_heads"], layers=txt["depth"],
                  mlp_ratio=_ratio(txt), pool_type=text_pool, **text_extra)
  kwargs = dict(embed_dim=f["embed_dim"], vision_cfg=vision_cfg, text_cfg=text_cfg,
                quick_gelu=quick["image"])
  if f["bias_init"] is not None:
    kwargs["init_logit_bias"] = float(f["bias_init"])  # creates logit_bias (loaded over)
  args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
  python = ("import open_clip, safetensors.torch\n"
            f"model = open_clip.model.CLIP({args})\n"
            "model.load_state_dict(safetensors.torch.load_file(PATH))\nmodel.eval()")
  load = dict(library="open_clip", function="open_clip.model.CLIP", kwargs=kwargs,
              python=python)
  return load, notes, []


def _big_vision(model_name: str, f: dict, spec: dict) -> tuple[dict, list[str], list[str]]:
  del spec
  towers = ([("model.", f)] if model_name == "vit" else
            [("model.image.", f["image"]), ("model.text.", f["text"])])
  notes = []
  for where, t in towers:
    if t.get("mlp_act", "gelu_tanh") != "gelu_tanh":
      notes.append(f"{where}mlp_act={t['mlp_act']!r}: big_vision's transformer MLPs use "
                   "flax's nn.gelu (tanh approximation, our 'gelu_tanh'); a big_vision model "
                   "gives slightly different outputs with these weights")
  load = dict(library="big_vision",
              python=("import numpy as np\n"
                      "params = dict(np.load(PATH, allow_pickle=False))  # flat "
                      "'a/b/c' names; nest them at '/' for big_vision"))
  info = ["parameter names are big_vision's; this codebase's options a big_vision model "
          "must match are all in model.fields (activation, LayerNorm eps, ln_pre, text "
          "pooling, causal text attention)"]
  image = f if model_name == "vit" else f["image"]
  if image.get("pool_type") == "tok" and image.get("posemb") == "learn":
    info.append("pos_embedding has a row for the class token (the original ViT and timm "
                "layout); big_vision's ViT adds position embeddings before prepending the "
                "class token: the same model is pos_embedding[:, 1:] with that first row "
                "added to cls")
  if model_name == "two_tower" and f.get("text_model") == "bert":
    info.append("txt/ is big_vision's proj.flaxformer.bert tower (flaxformer BertEncoder "
                "names under txt/BertEncoder_0, projection txt/head); texts are [CLS] + "
                "word pieces, zero-padded")
  return load, notes, info


def _bit(f: dict, spec: dict) -> tuple[dict, list[str], list[str]]:
  del spec
  # The conventions weights/big_vision.py reads a BiT .npz with.
  bit = dict(padding="symmetric", std_eps=1e-10, gn_eps=1e-5, stem="imagenet")
  differ = [f"model.{k}={f[k]!r} (BiT: {v!r})" for k, v in bit.items() if f[k] != v]
  notes = [f"{', '.join(differ)}: a BiT model (big_transfer) computes differently with "
           "these weights, and this codebase imports a BiT .npz with BiT's values: set "
           "these fields again to reproduce this model"] if differ else []
  load = dict(library="big_transfer (BiT)",
              python=("import numpy as np\n"
                      "params = dict(np.load(PATH, allow_pickle=False))  # "
                      "'resnet/block1/unit01/a/standardized_conv2d/kernel', ..."))
  info = ["big_transfer's BiT .npz layout (resnet/root_block, resnet/block{s}/unit{NN}/"
          "{a,b,c}, resnet/group_norm, resnet/head/conv2d)"]
  return load, notes, info


def library_plan(model_name: str, fields: dict, fmt: str, spec: dict
                 ) -> tuple[dict, list[str], list[str]] | None:
  """(`load` hints, warnings, other notes) for writing this model in `fmt`.

  Warnings are numerics of this model that the library's defaults do not
  reproduce (each says which `load` argument does).

  Raises ExportError for what the library cannot represent faithfully; None
  for a model/format pair that has no layout at all (`convert.export` refuses
  those, naming what each format takes).
  """
  if fmt == "timm" and model_name == "vit":
    return _timm_vit(fields, spec)
  if fmt == "timm" and model_name == "resnet":
    return _timm_resnet(fields, spec)
  if fmt == "open_clip" and model_name == "two_tower":
    return _open_clip(fields, spec)
  if fmt == "big_vision" and model_name in ("vit", "two_tower"):
    return _big_vision(model_name, fields, spec)
  if fmt == "big_vision" and model_name == "resnet":
    return _bit(fields, spec)
  return None  # weights/convert.py's export says why not


def _check_complete(params: Any, flat: dict[str, np.ndarray], fmt: str) -> None:
  """Every value of `params` made it into the file (nothing silently dropped)."""
  ours = {n: np.asarray(v) for n, v in tree_lib.flatten(_as_dict(params)).items()}
  dropped = set(_OPEN_CLIP_DROPPED) if fmt == "open_clip" else set()
  want = sum(v.size for n, v in ours.items() if n not in dropped)
  got = sum(np.asarray(v).size for v in flat.values())
  if got != want:
    raise ExportError(f"{fmt}: the converted file would hold {got} values but the model "
                      f"has {want}: parameters this layout has no place for")


def _as_dict(tree: Any) -> Any:
  if hasattr(tree, "items"):
    return {k: _as_dict(v) for k, v in tree.items()}
  return tree


# ------------------------------------------------------------------- export


def _write_json(path: str, data: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=2, sort_keys=False)
    f.write("\n")
  os.replace(tmp, path)


def export_workdir(workdir: str, fmt: str, out: str, config: Any = None,
                   step: int | None = None, *, overwrite: bool = False,
                   overrides: Sequence[str] = ()) -> dict:
  """Writes the params of `workdir`'s checkpoint to `out` in `fmt`, and `out + ".json"`.

  Args:
    workdir: a training workdir (with `checkpoints/`, and `config.json` unless
      `config` is given).
    fmt: "timm", "open_clip" or "big_vision".
    out: the file to write (.safetensors for timm/open_clip, .npz for big_vision).
    config: a ConfigDict or "FILE.py[:ARG]"; default: the workdir's config.json.
    step: the checkpoint step; default: the newest.
    overwrite: replace an existing `out`.
    overrides: "a.b=value" config overrides.

  Returns:
    The sidecar dict that was written to `out + ".json"`.

  Raises:
    ExportError: the model cannot be written in `fmt` (nothing is written), or
      an argument is wrong.
  """
  if fmt not in SUFFIXES:
    raise ExportError(f"--format {fmt!r} is unknown; known: {', '.join(SUFFIXES)}")
  out = os.fspath(out)
  if not out.endswith(SUFFIXES[fmt]):
    raise ExportError(f"--out {out}: --format {fmt} writes a {SUFFIXES[fmt]} file")
  sidecar = out + ".json"
  if not overwrite:
    for path in (out, sidecar):
      if os.path.exists(path):
        raise ExportError(f"{path} exists; pass --overwrite to replace it")
  cfg, config_source = workdir_config(workdir, config, overrides)
  exp, step_dir, meta = _open_checkpoint(workdir, cfg, step)
  step, spec = meta["step"], meta["input_spec"]
  model_name = exp.config.model_name
  fields = model_fields(model_name, exp.model)
  plan = library_plan(model_name, fields, fmt, spec)  # refusals before reading weights
  params = _load_params(exp, step_dir)
  try:
    flat = convert.export(params, model_name, fields, fmt)
  except (KeyError, ValueError) as e:
    raise ExportError(_one_line(e)) from None
  if plan is None:
    raise ExportError(f"cannot export a {model_name!r} model as {fmt!r}")
  load, warnings, other_notes = plan
  _check_complete(params, flat, fmt)
  for note in warnings:
    logger.warning("export: %s", note)

  load["python"] = f"PATH = {os.path.abspath(out)!r}\n" + load["python"]
  layout = convert.detect(flat)
  description = {
      "format": fmt,
      "layout": layout,
      "file": os.path.basename(out),
      "tensors": len(flat),
      "values": int(sum(np.asarray(v).size for v in flat.values())),
      "dtypes": sorted({str(np.asarray(v).dtype) for v in flat.values()}),
      "source": {"workdir": os.path.abspath(workdir), "step": step,
                 "config": config_source},
      "model": {"name": model_name, "fields": fields},
      "input_spec": spec,
      "input_pp": _jsonable(exp.config.get("input", {}).get("pp")),
      "images": ("NHWC here; torch models take NCHW: x.permute(0, 3, 1, 2), "
                 "preprocessed as input_pp does"),
      "load": load,
      "reload_here": ("big_vision_like.weights.convert.import_weights(PATH), then "
                      "weights.fit.fit(imported.params, <abstract params of a model built "
                      "from model.name and model.fields>)"),
      "notes": warnings + other_notes,
  }
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  files.write(out, flat)
  _write_json(sidecar, description)
  logger.info("export: wrote %s (%s, %d tensors) and %s", out, layout, len(flat), sidecar)
  return description


# ---------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m big_vision_like.tools.export",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a training workdir")
  parser.add_argument("--config", help="CONFIG.py[:ARGS] (default: WORKDIR/config.json)")
  parser.add_argument("--format", required=True, choices=sorted(SUFFIXES))
  parser.add_argument("--out", required=True,
                      help="the file to write (.safetensors: timm, open_clip; .npz: "
                      "big_vision); OUT.json describes it")
  parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
  args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
  overrides, i = [], 0
  while i < len(rest):  # --config.a.b=value or --config.a.b value
    item = rest[i]
    if not item.startswith("--config."):
      parser.error(f"unrecognized argument {item!r}")
    item = item[len("--config."):]
    if "=" not in item:
      if i + 1 >= len(rest):
        parser.error(f"--config.{item} needs a value")
      item, i = f"{item}={rest[i + 1]}", i + 1
    overrides.append(item)
    i += 1
  # Warnings (the notes) and the one-line error only; the summary goes to stdout.
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
  logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's read-only chatter
  try:
    info = export_workdir(args.workdir, args.format, args.out, args.config, args.step,
                          overwrite=args.overwrite, overrides=overrides)
  except (ExportError, errors.ConfigError, FileNotFoundError) as e:
    print(f"export: error: {_one_line(e)}", file=sys.stderr)
    return 1
  print(json.dumps({k: info[k] for k in ("format", "layout", "file", "tensors")}
                   | {"sidecar": args.out + ".json"}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
