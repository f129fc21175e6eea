"""tools/export.py: a workdir's checkpoint -> timm / open_clip / big_vision files.

Workdirs are made the way train.py leaves them (config.json, an orbax
checkpoint through `checkpoint.Checkpointer` with the input spec in its meta),
with seeded random params in the shapes of `experiment.build(...)`'s
`abstract_params` (no init to compile), so that no value is a default zero or
one. Each export is read back with `convert.import_weights` + `fit.fit` onto
the model's abstract params and must give the very same bits. That the files load into timm/open_clip themselves
and give their logits is checked where torch is installed:
tests/fixtures/zoo/check_export_in_torch.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from big_vision_like import checkpoint as ckpt_lib
from big_vision_like import config as config_lib
from big_vision_like import experiment
from big_vision_like import params as params_lib
from big_vision_like.tools import export
from big_vision_like.weights import convert, fit

REPO = pathlib.Path(__file__).resolve().parent.parent
IMAGE = jax.ShapeDtypeStruct((16, 16, 3), jnp.float32)
VIT = dict(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=4, num_classes=5)
RESNET = dict(depth=26, width=0.125, gn_groups=4, padding="symmetric", std_eps=1e-8,
              gn_eps=1e-5, num_classes=5)
CLIP_LIKE = dict(
    image=dict(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=4, pool_type="tok",
               ln_pre=True),
    text=dict(vocab_size=50, width=32, depth=2, mlp_dim=64, num_heads=2,
              pool_type="argmax", causal=True),
    embed_dim=16)
OPEN_CLIP_ZERO = ("img/embedding/bias", "img/head/bias", "txt/head/bias")


def _config(model_name: str, model: dict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      seed=0, total_steps=1, model_name=model_name, model=model,
      loss="clip" if model_name == "two_tower" else "softmax_xent",
      optax_name="adamw", lr=1e-3,
      input=dict(data=dict(name="unused", split="train"), pp="decode", batch_size=8)))


def _random_params(abstract, seed: int, zero=()):
  """Seeded N(0, 0.2) values (LayerNorm/GroupNorm scales around 1) in the shapes of
  `abstract`, the leaves named in `zero` 0: no value is a default zero or one."""
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    name = params_lib.path_to_str(path)
    value = rng.normal(0, 0.2, a.shape) + name.endswith("scale")
    return jnp.asarray(np.zeros(a.shape) if name in zero else value, a.dtype)
  return jax.tree_util.tree_map_with_path(leaf, abstract)


class Run:
  """A workdir as train.py leaves it: config.json + checkpoints of `steps`."""

  def __init__(self, root: pathlib.Path, name: str, model_name: str, model: dict,
               spec: dict, steps: dict[int, tuple[int, tuple]], write_config=True):
    self.workdir = str(root / name)
    self.config = _config(model_name, model)
    self.spec = spec
    self.exp = experiment.build(self.config, input_spec=spec)
    self.params = {step: _random_params(self.exp.abstract_params, seed, zero)
                   for step, (seed, zero) in steps.items()}
    os.makedirs(self.workdir)
    if write_config:
      pathlib.Path(self.workdir, "config.json").write_text(
          config_lib.to_json(config_lib.with_defaults(self.config)))
    with ckpt_lib.Checkpointer(os.path.join(self.workdir, "checkpoints"),
                               async_save=False) as ckpt:
      for step, params in self.params.items():
        ckpt.save(step, {"params": params},
                  {"step": step, "input_spec": experiment.spec_to_json(spec)}, force=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("export_runs")
  text = jax.ShapeDtypeStruct((8,), jnp.int32)
  return {
      "vit_tok": Run(root, "vit_tok", "vit", dict(VIT, pool_type="tok", mlp_act="gelu"),
                     {"image": IMAGE}, {3: (1, ())}),
      "vit_gap": Run(root, "vit_gap", "vit", dict(VIT, pool_type="gap"),
                     {"image": IMAGE}, {3: (2, ())}),
      "vit_scan": Run(root, "vit_scan", "vit", dict(VIT, pool_type="tok", scan=True),
                      {"image": IMAGE}, {3: (3, ())}),
      "resnet": Run(root, "resnet", "resnet", RESNET,
                    {"image": jax.ShapeDtypeStruct((32, 32, 3), jnp.float32)}, {3: (4, ())},
                    write_config=False),
      # Step 1 has the biases open_clip lacks non-zero, step 2 (the newest) zero.
      "clip": Run(root, "clip", "two_tower", CLIP_LIKE, {"image": IMAGE, "text": text},
                  {1: (5, ()), 2: (6, OPEN_CLIP_ZERO)}),
  }


def _assert_same_params(got, want):
  got = dict(params_lib.flatten_with_names(got))
  want = dict(params_lib.flatten_with_names(want))
  assert sorted(got) == sorted(want)
  for name, value in want.items():
    assert np.asarray(got[name]).dtype == np.asarray(value).dtype, name
    np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(value), err_msg=name)


def _round_trip(run: Run, fmt: str, out: pathlib.Path, step=None, **kw) -> dict:
  info = export.export_workdir(run.workdir, fmt, str(out), step=step, **kw)
  imported = convert.import_weights(str(out))
  back = fit.fit(imported.params, run.exp.abstract_params, source=out.name)
  _assert_same_params(back, run.params[step or max(run.params)])
  assert json.loads(pathlib.Path(f"{out}.json").read_text()) == info
  return info


@pytest.mark.parametrize("name", ["vit_tok", "vit_gap", "vit_scan"])
def test_vit_to_timm_and_back_is_bit_identical(runs, name, tmp_path):
  info = _round_trip(runs[name], "timm", tmp_path / "m.safetensors")
  kw = info["load"]["kwargs"]
  assert info["layout"] == "timm_vit" and info["load"]["model_name"] == "vit_base_patch16_224"
  assert (kw["img_size"], kw["patch_size"], kw["embed_dim"], kw["depth"], kw["num_heads"],
          kw["mlp_ratio"], kw["num_classes"]) == (16, 4, 32, 2, 2, 2.0, 5)
  tok = name != "vit_gap"
  assert (kw["global_pool"], kw["class_token"], kw["fc_norm"]) == (
      "token" if tok else "avg", tok, False)
  # Our default tanh-GELU is not timm's default exact GELU: said in the notes.
  gelu_notes = [n for n in info["notes"] if "mlp_act" in n]
  if name == "vit_tok":  # trained with mlp_act="gelu"
    assert gelu_notes == [] and kw["act_layer"] == "gelu"
  else:
    assert len(gelu_notes) == 1 and "'gelu_tanh'" in gelu_notes[0]
    assert kw["act_layer"] == "gelu_tanh"
  assert info["model"]["name"] == "vit" and info["model"]["fields"]["width"] == 32
  assert info["source"]["step"] == 3 and info["input_spec"]["image"][0] == [16, 16, 3]


def test_timm_vit_file_gives_the_source_models_logits(runs, tmp_path):
  run = runs["vit_tok"]
  out = tmp_path / "vit.safetensors"
  export.export_workdir(run.workdir, "timm", str(out))
  # A model built only from what the file says (timm's conventions: exact
  # GELU, eps 1e-6) plus the head count, which no tensor shows.
  imported = convert.import_weights(str(out))
  config = _config("vit", {**imported.fields, "num_heads": 2})
  exp = experiment.build(config, input_spec={"image": IMAGE})
  params = fit.fit(imported.params, exp.abstract_params)
  images = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
  want = np.asarray(run.exp.predict_fn(run.params[3], {"image": images}))
  got = np.asarray(exp.predict_fn(params, {"image": images}))
  assert np.abs(want).max() > 0.1  # not a zero head
  np.testing.assert_array_equal(got, want)


def test_resnet_to_timm_needs_symmetric_padding_and_to_bit_npz(runs, tmp_path):
  run = runs["resnet"]
  # This workdir has no config.json: the error says to pass --config.
  with pytest.raises(export.ExportError, match="config.json does not exist.*--config"):
    export.export_workdir(run.workdir, "timm", str(tmp_path / "r.safetensors"))
  info = _round_trip(run, "timm", tmp_path / "r.safetensors", config=run.config)
  assert info["layout"] == "timm_resnetv2"
  assert info["load"]["kwargs"]["layers"] == [2, 2, 2, 2]
  assert info["load"]["norm_layer"] == dict(cls="timm.layers.GroupNormAct", num_groups=4,
                                            eps=1e-5)
  # The same params under XLA's SAME padding would give other logits in timm.
  same = _config("resnet", dict(RESNET, padding="same"))
  with pytest.raises(export.ExportError, match="model.padding='same'"):
    export.export_workdir(run.workdir, "timm", str(tmp_path / "same.safetensors"),
                          config=same)
  assert not (tmp_path / "same.safetensors").exists()
  # --format big_vision writes a ResNet in the BiT .npz layout (big_transfer).
  info = _round_trip(run, "big_vision", tmp_path / "r.npz", config=run.config)
  assert info["layout"] == "bit" and "model.std_eps=1e-08 (BiT: 1e-10)" in info["notes"][0]


@pytest.mark.parametrize("name", ["vit_tok", "vit_scan", "clip"])
def test_big_vision_npz_and_back_is_bit_identical(runs, name, tmp_path):
  info = _round_trip(runs[name], "big_vision", tmp_path / "m.npz")
  assert info["layout"] == "big_vision"
  names = set(np.load(tmp_path / "m.npz").files)
  if name == "clip":
    assert {"txt/Embed_0/embedding", "img/cls", "t"} <= names
  elif name == "vit_scan":
    assert "Transformer/encoderblock/MlpBlock_0/Dense_0/kernel" in names  # stacked


def test_two_tower_to_open_clip_and_back(runs, tmp_path):
  run = runs["clip"]
  info = _round_trip(run, "open_clip", tmp_path / "clip.safetensors")
  kw = info["load"]["kwargs"]
  assert info["layout"] == "open_clip"
  assert kw["vision_cfg"]["head_width"] == 16 and kw["text_cfg"]["context_length"] == 8
  assert kw["quick_gelu"] is False
  # Our defaults (tanh-GELU, eps 1e-6) are carried as open_clip options.
  assert kw["text_cfg"]["act_kwargs"] == {"approximate": "tanh"}
  assert kw["vision_cfg"]["norm_kwargs"] == {"eps": 1e-6}
  # Step 1 has non-zero biases that open_clip has no place for: refused by name.
  with pytest.raises(export.ExportError, match="img/embedding/bias is not zero"):
    export.export_workdir(run.workdir, "open_clip", str(tmp_path / "s1.safetensors"), step=1)
  assert not (tmp_path / "s1.safetensors").exists()
  # A step that does not exist.
  with pytest.raises(export.ExportError, match=r"steps: \[1, 2\]"):
    export.export_workdir(run.workdir, "open_clip", str(tmp_path / "s7.safetensors"), step=7)


def test_refusals_and_overwrite(runs, tmp_path):
  run = runs["vit_tok"]
  out = tmp_path / "v.safetensors"
  with pytest.raises(export.ExportError, match="writes a .npz file"):
    export.export_workdir(run.workdir, "big_vision", str(out))
  # A text pooling open_clip computes differently is refused, not exported.
  config = _config("two_tower", dict(CLIP_LIKE, text=dict(CLIP_LIKE["text"],
                                                          pool_type="last")))
  with pytest.raises(export.ExportError, match="pool_type=.last. has no open_clip"):
    export.export_workdir(runs["clip"].workdir, "open_clip", str(out), config=config)
  export.export_workdir(run.workdir, "timm", str(out))
  stamp = out.stat().st_mtime_ns
  with pytest.raises(export.ExportError, match="exists; pass --overwrite"):
    export.export_workdir(run.workdir, "timm", str(out))
  assert out.stat().st_mtime_ns == stamp
  export.export_workdir(run.workdir, "timm", str(out), overwrite=True)
  assert not list(tmp_path.glob("*.tmp"))
  # What timm's VisionTransformer has no counterpart for is refused by name,
  # before any weight is read.
  config = _config("vit", dict(VIT, posemb="sincos2d", conv_stem=(8,), patch_size=2))
  with pytest.raises(export.ExportError,
                     match=r"timm: model.posemb='sincos2d', model.conv_stem=\[8\]"):
    export.export_workdir(run.workdir, "timm", str(tmp_path / "w.safetensors"),
                          config=config)
  # A --config file that does not exist: exit status 1, no traceback.
  rc = export.main(["--workdir", runs["resnet"].workdir, "--config", "no/such.py",
                    "--format", "timm", "--out", str(tmp_path / "x.safetensors")])
  assert rc == 1


def test_cli_wrong_format_is_one_line(runs, tmp_path, capsys):
  rc = export.main(["--workdir", runs["vit_gap"].workdir, "--format", "open_clip",
                    "--out", str(tmp_path / "x.safetensors")])
  err = capsys.readouterr().err.strip()
  assert rc == 1
  assert err.startswith("export: error: cannot export a 'vit' model as 'open_clip'")
  assert len(err.splitlines()) == 1
  assert not list(tmp_path.iterdir())


def test_cli_exports_a_checkpoint(runs, tmp_path):
  run = runs["vit_gap"]
  out = tmp_path / "out" / "vit.safetensors"
  proc = subprocess.run(
      [sys.executable, "-m", "big_vision_like.tools.export", "--workdir", run.workdir,
       "--format", "timm", "--out", str(out), "--step", "3"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary == {"format": "timm", "layout": "timm_vit", "file": "vit.safetensors",
                     "tensors": 3 + 12 * 2 + 2 + 2, "sidecar": f"{out}.json"}
  assert "gelu_tanh" in proc.stderr  # the GELU warning
  sidecar = json.loads(pathlib.Path(f"{out}.json").read_text())
  assert sidecar["source"]["config"] == os.path.join(run.workdir, "config.json")
  assert sidecar["load"]["kwargs"]["global_pool"] == "avg"
  assert "timm.create_model(\"vit_base_patch16_224\"" in sidecar["load"]["python"]
  back = fit.fit(convert.import_weights(str(out)).params, run.exp.abstract_params)
  _assert_same_params(back, run.params[3])


def test_predictor_from_workdir_gives_the_checkpoints_logits(runs):
  """predict.Predictor.from_workdir: config.json + newest checkpoint + a pp string."""
  from big_vision_like import predict
  run = runs["vit_tok"]
  p = predict.Predictor.from_workdir(run.workdir, pp="value_range(-1, 1)")
  images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
  want = run.exp.predict_fn(run.params[3], {"image": images / 127.5 - 1})
  np.testing.assert_allclose(p.predict(list(images)), np.asarray(want), atol=1e-5)
  assert p.embed_images(list(images)).shape == (3, 32)
  with pytest.raises(ValueError, match="no evaluator pp"):
    predict.Predictor.from_workdir(run.workdir)
