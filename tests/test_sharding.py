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
