"""Mesh construction and sharding rules, on 8 fake CPU devices in a subprocess."""

import os
import subprocess
import sys
import textwrap

import jax
import pytest

from big_vision_like import registry
from big_vision_like import sharding as sharding_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_with_devices(n: int, code: str) -> str:
  """Runs `code` in a fresh Python with `n` fake CPU devices; returns stdout."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc.stdout


def test_mesh_errors_name_config_mesh():
  devices = [jax.devices()[0]] * 8  # only the count matters for the checks
  with pytest.raises(ValueError, match=r"config\.mesh.*do not divide the 8 devices"):
    sharding_lib.make_mesh([("data", -1), ("fsdp", 3)], devices)
  with pytest.raises(ValueError, match=r"config\.mesh.*has 4 devices but 8"):
    sharding_lib.make_mesh([("data", 2), ("fsdp", 2)], devices)
  with pytest.raises(ValueError, match="at most one axis"):
    sharding_lib.make_mesh([("data", -1), ("fsdp", -1)], devices)
  with pytest.raises(ValueError, match="repeated axis"):
    sharding_lib.make_mesh([("data", 2), ("data", 4)], devices)
  with pytest.raises(ValueError, match=r"list of \(axis_name, size\)"):
    sharding_lib.make_mesh(["data"], devices)


def test_unknown_sharding_rule_and_unmatched_param():
  mesh = sharding_lib.make_mesh([("data", -1)])
  tree = {"a": jax.ShapeDtypeStruct((4, 4), "float32")}
  with pytest.raises(registry.UnknownNameError, match=r"'fdsp'.*'fsdp'"):
    sharding_lib.param_shardings(tree, mesh, [(".*", "fdsp")])
  with pytest.raises(ValueError, match=r"matches no rule for \['a'\]"):
    sharding_lib.param_shardings(tree, mesh, [("b", "replicate")])
  with pytest.raises(ValueError, match="no such mesh axis"):
    sharding_lib.param_shardings(tree, mesh, [(".*", "fsdp(axis='model')")])
  with pytest.raises(ValueError, match=r"config\.data_axes"):
    sharding_lib.data_axes(mesh, ["fsdp"])


def test_fsdp_and_batch_sharding_on_eight_devices():
  out = run_with_devices(8, """
      import jax, numpy as np
      from big_vision_like import sharding as s
      mesh = s.make_mesh([("data", 2), ("fsdp", -1)])
      assert dict(mesh.shape) == {"data": 2, "fsdp": 4}, mesh.shape
      tree = {"big": jax.ShapeDtypeStruct((6, 1024, 512), "float32"),
              "odd": jax.ShapeDtypeStruct((1023, 1025), "float32"),
              "small": jax.ShapeDtypeStruct((8, 8), "float32"),
              "head": jax.ShapeDtypeStruct((1024, 1024), "float32")}
      sh = s.param_shardings(tree, mesh, [("head", "replicate"),
                                          (".*", "fsdp(min_size_mb=1)")])
      print("big", sh["big"].spec)
      print("odd", sh["odd"].spec)
      print("small", sh["small"].spec)
      print("head", sh["head"].spec)
      # State shardings: optimizer moments follow their parameter's rule.
      state = {"params": tree, "opt": {"mu": tree, "count": jax.ShapeDtypeStruct((), "int32")}}
      st = s.state_shardings(state, mesh, [("head", "replicate"), (".*", "fsdp(min_size_mb=1)")])
      print("mu_big", st["opt"]["mu"]["big"].spec, "count", st["opt"]["count"].spec)
      axes = s.data_axes(mesh)
      batch = {"image": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}
      g = s.put_process_local_batch(batch, s.batch_sharding(mesh, axes))
      print("batch", g["image"].sharding.spec, len(g["image"].addressable_shards),
            g["image"].addressable_shards[0].data.shape)
      np.testing.assert_array_equal(np.asarray(g["image"]), batch["image"])
  """)
  lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
  # The largest dimension divisible by 4 is sharded; others replicated.
  assert lines["big"] == "P(None, 'fsdp', None)"
  assert lines["odd"] == "P()"      # no dimension divisible by 4
  assert lines["small"] == "P()"    # under the size threshold
  assert lines["head"] == "P()"     # first rule wins
  assert lines["mu_big"] == "P(None, 'fsdp', None) count P()"
  assert lines["batch"] == "P(('data', 'fsdp'),) 8 (2, 3)"


# ------------------------------------------------- logical axis names ----

from flax import linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from big_vision_like.models import common, resnet, text, two_tower, vit  # noqa: E402


def _boxed(model, *inputs):
  with common.collect_logical_axes():
    tree = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs))["params"]
  is_box = lambda x: isinstance(x, nn.Partitioned)
  return dict((sharding_lib.params_lib.path_to_str(p), x) for p, x in
              jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_box)[0])


IMG = jnp.zeros((1, 8, 8, 3))
TOK = jnp.zeros((1, 6), jnp.int32)


@pytest.mark.parametrize("model, inputs", [
    (vit.ViT(variant="mu/4", depth=2, num_classes=10, pool_type="map", rep_size=True,
             conv_stem=(8,), patch_size=2), (IMG,)),
    (vit.ViT(variant="mu/4", depth=3, num_classes=10, pool_type="tok", scan=True,
             remat_policy="nothing_saveable"), (IMG,)),
    (resnet.ResNet(depth=26, width=0.5, stem="small", num_classes=10), (IMG,)),
    (text.TextTransformer(vocab_size=50, variant="mu", num_classes=8), (TOK,)),
    (two_tower.TwoTower(image={"variant": "mu/4"}, text={"vocab_size": 50, "variant": "mu"},
                        embed_dim=8, bias_init=-10.0), (IMG, TOK)),
])
def test_every_param_has_logical_names_and_init_stays_plain(model, inputs):
  boxed = _boxed(model, *inputs)
  for name, leaf in boxed.items():
    assert isinstance(leaf, nn.LogicallyPartitioned), name
    assert len(leaf.names) == len(leaf.value.shape), (name, leaf.names, leaf.value.shape)
    assert all(n is None or n in common.LOGICAL_AXES for n in leaf.names), name
  # Outside collect_logical_axes, init gives plain arrays under the same paths.
  plain = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs))["params"]
  names = dict(sharding_lib.params_lib.flatten_with_names(plain))
  assert sorted(names) == sorted(boxed)
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in names.values())


def test_known_logical_names_of_vit_params():
  got = {k: v.names for k, v in _boxed(
      vit.ViT(variant="mu/4", depth=2, num_classes=10, pool_type="tok", scan=True),
      IMG).items()}
  blk = "Transformer/encoderblock/"
  assert got[blk + "MlpBlock_0/Dense_0/kernel"] == ("layers", "embed", "mlp")
  assert got[blk + "MlpBlock_0/Dense_1/kernel"] == ("layers", "mlp", "embed")
  assert got[blk + "MultiHeadDotProductAttention_0/query/kernel"] == (
      "layers", "embed", "heads", "kv")
  assert got[blk + "MultiHeadDotProductAttention_0/out/kernel"] == (
      "layers", "heads", "kv", "embed")
  assert got[blk + "LayerNorm_0/scale"] == ("layers", "norm")
  assert got["embedding/kernel"] == ("conv_h", "conv_w", "conv_in", "embed")
  assert got["pos_embedding"] == (None, "pos", "embed")
  assert got["head/kernel"] == ("embed", "classes")
  text_names = {k: v.names for k, v in _boxed(
      text.TextTransformer(vocab_size=50, variant="mu"), TOK).items()}
  assert text_names["embedding/embedding"] == ("vocab", "embed")


def test_rule_errors_name_the_culprit():
  mesh = sharding_lib.make_mesh([("data", -1)])
  tree = {"a": jax.ShapeDtypeStruct((4, 4), "float32")}
  with pytest.raises(ValueError, match=r"sharding_rules\[1\].*'model'.*not axes of "
                                       r"config\.mesh \('data',\)"):
    sharding_lib.param_shardings(tree, mesh, [(".*", "logical")],
                                 rules=[("embed", None), ("mlp", "model")])
  with pytest.raises(ValueError, match=r"sharding_rules\[0\].*logical axis name "
                                       r"'mpl'.*Did you mean 'mlp'"):
    sharding_lib.param_shardings(tree, mesh, [(".*", "logical")], rules=[("mpl", "data")])
  with pytest.raises(ValueError, match=r"sharding_rules\[0\] must be a"):
    sharding_lib.check_rules(["embed"], mesh)


def test_strategy_defaults_keep_old_configs():
  import ml_collections
  cfg = ml_collections.ConfigDict()
  assert sharding_lib.strategy_from_config(cfg) == [(".*", "replicate")]
  cfg.sharding_rules = [("mlp", "model")]
  assert sharding_lib.strategy_from_config(cfg) == [(".*", "logical")]
  cfg.sharding_strategy = [("head/.*", "replicate"), (".*", "logical")]
  assert sharding_lib.strategy_from_config(cfg) == cfg.sharding_strategy


def test_hybrid_device_array_is_slice_major():
  class FakeDevice:  # what create_hybrid_device_mesh reads of a device
    platform = device_kind = "fake"
    def __init__(self, i):
      self.id, self.slice_index, self.process_index = i, i // 4, 0
    def __repr__(self):
      return str(self.id)
  devices = [FakeDevice(i) for i in range(8)]
  array, names = sharding_lib.hybrid_device_array(
      [("data", -1), ("model", 2)], [("data", 2)], devices)
  assert names == ("data", "model")
  # Slice 0 (devices 0-3) fills the first half of "data", slice 1 the second.
  assert [[d.id for d in row] for row in array] == [[0, 1], [2, 3], [4, 5], [6, 7]]
  array, _ = sharding_lib.hybrid_device_array(
      [("data", 1), ("model", 4)], [("model", 2)], devices)
  assert [[d.id for d in row] for row in array] == [[0, 1, 2, 3, 4, 5, 6, 7]]
  with pytest.raises(ValueError, match=r"config\.mesh_dcn .*has 4 slices but 2"):
    sharding_lib.hybrid_device_array([("data", -1)], [("data", 4)], devices)
  with pytest.raises(ValueError, match=r"config\.mesh_dcn names axes \['fsdp'\]"):
    sharding_lib.hybrid_device_array([("data", -1)], [("fsdp", 2)], devices)
  with pytest.raises(ValueError, match=r"config\.mesh \(per slice.*has 8 devices per "
                                       r"slice but 4"):
    sharding_lib.hybrid_device_array([("data", 8)], [("data", 2)], devices)


def test_logical_rules_and_hybrid_mesh_on_eight_devices():
  out = run_with_devices(8, """
      import jax, jax.numpy as jnp, ml_collections, numpy as np
      from big_vision_like import experiment, sharding as s

      # Hybrid mesh on CPU: one process = one granule (slice).
      mesh = s.make_mesh([("data", -1), ("model", 2)], dcn=[("data", 1)])
      print("hybrid", dict(mesh.shape), [d.id for d in mesh.devices.flat])
      try:
        s.make_mesh([("data", -1)], dcn=[("data", 2)])
      except ValueError as e:
        print("dcn_error", e)

      model_fields = dict(variant="mu/4", depth=2, num_classes=8, pool_type="gap",
                          head_zeroinit=False)
      shape = (16, 16, 3)
      rng = np.random.default_rng(0)
      host = {"image": rng.normal(size=(16, *shape)).astype(np.float32),
              "labels": np.eye(8, dtype=np.float32)[rng.integers(0, 8, 16)]}
      spec = {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in host.items()}
      FSDP = [("embed", "fsdp")]
      TP = [("embed", "fsdp"), ("mlp", "model"), ("heads", "model")]
      setups = {"dp": ([("data", 8)], None, [(".*", "replicate")]),
                "fsdp": ([("data", 2), ("fsdp", 4)], FSDP, [(".*", "logical")]),
                "tp": ([("data", 2), ("fsdp", 2), ("model", 2)], TP,
                       [("head/.*", "replicate"), (".*", "logical")])}
      results = {}
      for name, (mesh_cfg, rules, strategy) in setups.items():
        config = ml_collections.ConfigDict(dict(
            model_name="vit", model=model_fields, mesh=mesh_cfg, sharding_strategy=strategy,
            loss="softmax_xent", optax_name="adam", lr=0.1,
            # eps >> the ~1e-9 float noise in the (mathematically zero) key-bias
            # gradient, which adam would otherwise blow up to +-lr.
            optax=dict(eps=1e-3),
            schedule=dict(decay_type="constant")))
        if rules:
          config.sharding_rules = rules
        exp = experiment.build(config, input_spec=spec, total_steps=10, batch_size=16)
        state = exp.init_state(exp.init_params(jax.random.key(0)))
        step = exp.jit_train_step()
        batch = s.put_process_local_batch(host, exp.batch_sharding)
        hlo = step.lower(state, batch, jnp.int32(0), jax.random.key(1)).as_text()
        losses = []
        for i in range(2):
          state, m = step(state, batch, jnp.int32(i), jax.random.key(1))
          losses.append(float(m["train/loss"]))
        b0 = "Transformer/encoderblock_0/"
        p = state["params"]["Transformer"]["encoderblock_0"]
        mu = state["opt"][0].mu["Transformer"]["encoderblock_0"]
        dense0 = p["MlpBlock_0"]["Dense_0"]["kernel"]
        print(name, "dense0", dense0.sharding.spec,
              "mu", mu["MlpBlock_0"]["Dense_0"]["kernel"].sharding.spec,
              "query", p["MultiHeadDotProductAttention_0"]["query"]["kernel"].sharding.spec,
              "head", state["params"]["head"]["kernel"].sharding.spec,
              "shard", dense0.addressable_shards[0].data.shape)
        print(name, "constraints", hlo.count("sharding_constraint"))
        # The MLP hidden activation [batch=16, tokens=16, mlp=128]:
        print(name, "mlp_act", '{"model"}]> : tensor<16x16x128xf32>' in hlo,
              '<@mesh, [{"data", "fsdp"}, {}, {}]> : tensor<16x16x32xf32>' in hlo)
        results[name] = (losses, jax.tree.map(np.asarray, state["params"]))
        print(name, "memory", s.memory_stats(state["params"])["max_device_bytes"],
              s.memory_stats(state["params"])["total_bytes"])
      for name in ("fsdp", "tp"):
        np.testing.assert_allclose(results[name][0], results["dp"][0], rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                     results[name][1], results["dp"][1])
      print("losses", results["dp"][0])

      # The predict fn under the TP rules (the evaluators jit it) = plain logits.
      tp_predict = exp.predict_fn
      plain = lambda p, b: exp.model.apply({"params": p}, b["image"], train=False)[0]
      x = {"image": jnp.asarray(host["image"])}
      np.testing.assert_allclose(jax.jit(tp_predict)(state["params"], x),
                                 jax.jit(plain)(state["params"], x),
                                 rtol=1e-5, atol=1e-6)
      print("predict ok", "model" in str(jax.jit(tp_predict).lower(state["params"], x).as_text()))

      # Errors: a mesh axis that does not divide the dimension.
      try:
        experiment.build(ml_collections.ConfigDict(dict(
            model_name="vit", model=dict(variant="mu/4", num_classes=8), loss="softmax_xent",
            mesh=[("data", 1), ("model", 8)], sharding_strategy=[(".*", "logical")],
            sharding_rules=[("heads", "model")])), input_spec=spec)
      except ValueError as e:
        print("divide_error", e)
  """)
  lines = {}
  for line in out.strip().splitlines():
    key, _, rest = line.partition(" ")
    lines.setdefault(key, []).append(rest)
  assert lines["hybrid"] == ["{'data': 4, 'model': 2} [0, 1, 2, 3, 4, 5, 6, 7]"]
  assert "config.mesh_dcn [('data', 2)] has 2 processes (slices) but 1" in lines["dcn_error"][0]
  assert lines["dp"][0] == ("dense0 P() mu P() query P() head P() shard (32, 128)")
  # FSDP: the embed dim (32) is split over 4 devices; moments follow.
  assert lines["fsdp"][0] == ("dense0 P('fsdp', None) mu P('fsdp', None) "
                              "query P('fsdp', None, None) head P('fsdp', None) "
                              "shard (8, 128)")
  # TP: MLP hidden and heads over "model", embed over "fsdp"; head replicated.
  assert lines["tp"][0] == ("dense0 P('fsdp', 'model') mu P('fsdp', 'model') "
                            "query P('fsdp', 'model', None) head P() shard (16, 64)")
  # Activation constraints are in the traced step only when rules are set.
  assert lines["dp"][1] == "constraints 0"
  assert int(lines["tp"][1].split()[1]) > 10
  # ... MLP hidden over "model" only with TP; the residual stream over the
  # data axes (the batch rule comes first even though "embed" -> "fsdp").
  assert lines["tp"][2] == "mlp_act True True"
  assert lines["fsdp"][2] == "mlp_act False True"
  # Per-device param bytes: replicated = total; TP/FSDP a fraction of it.
  dp_dev, total = map(int, lines["dp"][3].split()[1:])
  assert dp_dev == total
  fsdp_dev, _ = map(int, lines["fsdp"][3].split()[1:])
  assert fsdp_dev < total / 2
  assert lines["predict"] == ["ok True"]
  assert ("'Transformer/encoderblock_0/MultiHeadDotProductAttention_0/key/bias' of "
          "shape (2, 16) has logical axis 'heads' (dim 0, size 2) mapped to mesh axes "
          "'model' of size 8") in lines["divide_error"][0]


def test_named_layouts_shard_a_vit_as_documented():
  # The presets the configs use (configs/vit_i1k.py:sharding=...), on 8 devices.
  assert sharding_lib.layout("dp") == {"mesh": [("data", -1)], "sharding_rules": None}
  assert sharding_lib.layout("fsdp_tp", model_parallel=4)["mesh"] == [("fsdp", -1),
                                                                     ("model", 4)]
  with pytest.raises(ValueError, match="unknown sharding layout 'tp'.*dp, fsdp, fsdp_tp"):
    sharding_lib.layout("tp")
  out = run_with_devices(8, """
      import jax, ml_collections
      from big_vision_like import experiment, sharding
      for name in sharding.LAYOUTS:
        cfg = sharding.layout(name)
        exp = experiment.build(ml_collections.ConfigDict(dict(
            cfg, model_name="vit", loss="softmax_xent", model=dict(
                variant="mu/4", width=64, mlp_dim=128, num_heads=2, num_classes=10))),
            input_spec={"image": jax.ShapeDtypeStruct((8, 8, 3), "float32")})
        mesh, sh = exp.mesh, exp.param_shardings
        block = sh["Transformer"]["encoderblock_0"]
        print(name, dict(mesh.shape), block["MlpBlock_0"]["Dense_0"]["kernel"].spec,
              block["MultiHeadDotProductAttention_0"]["query"]["kernel"].spec)
  """)
  assert out.splitlines() == [
      "dp {'data': 8} P() P()",
      "fsdp {'fsdp': 8} P('fsdp', None) P('fsdp', None, None)",
      "fsdp_tp {'fsdp': 4, 'model': 2} P('fsdp', 'model') P('fsdp', 'model', None)"]
