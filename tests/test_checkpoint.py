"""Tests for big_vision_like.checkpoint with real orbax checkpoints on disk."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from big_vision_like import checkpoint


def _params(head_classes: int = 2):
  return {
      "embed": {"kernel": jnp.arange(12, dtype=jnp.float32).reshape(4, 3)},
      "head": {"kernel": jnp.full((3, head_classes), 0.5, jnp.float32),
               "bias": jnp.arange(head_classes, dtype=jnp.float32)},
  }


def _state():
  """params + adam state after one real update (non-zero moments) + step."""
  params = _params()
  tx = optax.adam(0.1)
  opt = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, opt = tx.update(grads, opt, params)
  params = optax.apply_updates(params, updates)
  return {"params": params, "opt": opt, "step": 7}


def _abstract(tree):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
      if isinstance(x, jax.Array) else x, tree)


def _assert_tree_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_roundtrip_params_adam_state_step_and_meta(tmp_path):
  state = _state()
  meta = {"data_position": 1234, "config_hash": "abc123", "nested": [1, 2]}
  with checkpoint.Checkpointer(str(tmp_path / "ckpt")) as ckpt:
    assert ckpt.save(5, state, meta)
    ckpt.wait()
    restored, restored_meta, step = ckpt.restore(_abstract(state))
  assert step == 5
  assert restored_meta == meta
  _assert_tree_equal(restored, state)
  # Adam's count is 1 after one update; mu = (1 - b1) * grad = 0.1.
  assert int(restored["opt"][0].count) == 1
  np.testing.assert_allclose(restored["opt"][0].mu["embed"]["kernel"], 0.1,
                             rtol=1e-6)
  assert type(restored["opt"][0]) is type(state["opt"][0])
  assert restored["step"] == 7
  kernel = restored["params"]["embed"]["kernel"]
  assert isinstance(kernel, jax.Array)
  assert kernel.sharding == state["params"]["embed"]["kernel"].sharding


def test_async_save_then_wait_commits(tmp_path):
  directory = tmp_path / "ckpt"
  state = _state()
  ckpt = checkpoint.Checkpointer(str(directory), async_save=True)
  assert ckpt.save(1, state, {"i": 1})
  ckpt.wait()
  # Committed: the final step dir exists and no temporary dir is left.
  assert "1" in os.listdir(directory)
  assert not [n for n in os.listdir(directory) if "tmp" in n]
  assert ckpt.latest_step() == 1
  ckpt.close()
  # A new process (here: a new Checkpointer) sees the committed step.
  with checkpoint.Checkpointer(str(directory)) as again:
    assert again.all_steps() == [1]
    # A watcher sees steps written later by another writer after reload().
    with checkpoint.Checkpointer(str(directory)) as writer:
      writer.save(2, state, {"i": 2})
    assert again.all_steps() == [1]
    again.reload()
    assert again.all_steps() == [1, 2]
    _, meta, step = again.restore(_abstract(state), step=1)
  assert (meta, step) == ({"i": 1}, 1)


def test_sync_save(tmp_path):
  state = _state()
  with checkpoint.Checkpointer(str(tmp_path), async_save=False) as ckpt:
    assert ckpt.save(3, state, {})
    assert ckpt.all_steps() == [3]
    restored, meta, _ = ckpt.restore(_abstract(state), step=3)
  assert meta == {}
  _assert_tree_equal(restored, state)


def test_keep_last_and_keep_every(tmp_path):
  state = {"w": jnp.ones((2,))}
  with checkpoint.Checkpointer(str(tmp_path), keep_last=2,
                               keep_every_steps=4) as ckpt:
    for step in range(1, 11):
      assert ckpt.save(step, state, {"step": step})
    ckpt.wait()
    assert ckpt.all_steps() == [4, 8, 9, 10]
    assert ckpt.latest_step() == 10
  on_disk = sorted(int(n) for n in os.listdir(tmp_path) if n.isdigit())
  assert on_disk == [4, 8, 9, 10]


def test_keep_last_only(tmp_path):
  with checkpoint.Checkpointer(str(tmp_path), keep_last=1) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, {"w": jnp.zeros(())}, {})
    ckpt.wait()
    assert ckpt.all_steps() == [3]


def test_empty_directory(tmp_path):
  directory = tmp_path / "work" / "checkpoints"
  with checkpoint.Checkpointer(str(directory)) as ckpt:
    assert directory.is_dir()  # Created.
    assert ckpt.latest_step() is None
    assert ckpt.all_steps() == []
    with pytest.raises(FileNotFoundError, match=str(directory)):
      ckpt.restore({"w": _abstract(jnp.zeros(()))})


def test_restore_unknown_step(tmp_path):
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(2, {"w": jnp.zeros(())}, {})
    ckpt.wait()
    with pytest.raises(FileNotFoundError, match=r"step 9 .*available steps: \[2\]"):
      ckpt.restore({"w": _abstract(jnp.zeros(()))}, step=9)


def test_save_older_step_is_skipped(tmp_path):
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.save(5, {"w": jnp.zeros(())}, {})
    assert not ckpt.save(3, {"w": jnp.zeros(())}, {})
    ckpt.wait()
    assert ckpt.all_steps() == [5]


def test_meta_must_be_json(tmp_path):
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    with pytest.raises(TypeError, match="meta for step 4 is not JSON"):
      ckpt.save(4, {"w": jnp.zeros(())}, {"bad": object()})


@pytest.mark.parametrize("kwargs, culprit", [
    ({"keep_last": 0}, "keep_last"),
    ({"keep_every_steps": 0}, "keep_every_steps"),
    ({"keep_every_steps": 2.5}, "keep_every_steps"),
])
def test_bad_keep_options(tmp_path, kwargs, culprit):
  with pytest.raises(ValueError, match=culprit):
    checkpoint.Checkpointer(str(tmp_path), **kwargs)


def test_restore_target_without_sharding(tmp_path):
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, {"a": {"w": jnp.zeros((2,))}}, {})
    ckpt.wait()
    target = {"a": {"w": jax.ShapeDtypeStruct((2,), jnp.float32)}}
    with pytest.raises(ValueError, match="'a/w'.*no sharding"):
      ckpt.restore(target)


def test_uncommitted_step_is_ignored(tmp_path):
  state = {"w": jnp.arange(3.0)}
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(2, state, {"v": 2})
    ckpt.wait()
  # A save of step 3 killed before its commit leaves a temporary directory.
  tmp_dir = tmp_path / "3.orbax-checkpoint-tmp-1700000000000000"
  shutil.copytree(tmp_path / "2", tmp_dir)
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.latest_step() == 2
    assert ckpt.all_steps() == [2]
    _, meta, step = ckpt.restore(_abstract(state))
    assert (meta, step) == ({"v": 2}, 2)
    # Resuming training saves step 3 again; the left-over is removed first.
    assert ckpt.save(3, state, {"v": 3})
    ckpt.wait()
    assert not tmp_dir.exists()
    assert ckpt.restore(_abstract(state))[1:] == ({"v": 3}, 3)


def _largest_array_file(step_dir):
  """The biggest data file of a step's arrays (OCDBT `d/` files)."""
  files = [p for p in step_dir.glob("state/**/d/*") if p.is_file()]
  assert files, list(step_dir.rglob("*"))
  return max(files, key=lambda p: p.stat().st_size)


def _truncate(step_dir):
  f = _largest_array_file(step_dir)
  f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])


def _flip_byte(step_dir):
  # Orbax/tensorstore read this back without error, as wrong numbers; only
  # the checksums catch it.
  f = _largest_array_file(step_dir)
  data = bytearray(f.read_bytes())
  data[len(data) // 2] ^= 0xFF
  f.write_bytes(bytes(data))


_DAMAGE = {
    "truncate_array_file": _truncate,
    "delete_array_file": lambda d: _largest_array_file(d).unlink(),
    "flip_byte_in_array_file": _flip_byte,
    "delete_manifest": lambda d: (d / "state" / "manifest.ocdbt").unlink(),
    "corrupt_array_metadata": lambda d: (d / "state" / "_METADATA").write_text(
        '{"tree_metadata": '),
    "corrupt_meta_json": lambda d: (d / "meta" / "metadata").write_text("{v: 2"),
}


@pytest.mark.parametrize("damage", sorted(_DAMAGE))
def test_damaged_newest_falls_back_with_warning(tmp_path, caplog, damage):
  # Random values: compressed chunks big enough that damage hits real data.
  values = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
  state1 = {"w": jnp.asarray(values)}
  state2 = {"w": jnp.asarray(values + 10)}
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, state1, {"v": 1})
    ckpt.save(2, state2, {"v": 2})
    ckpt.wait()
  # Damage the newest step after its commit (a lost or bad file).
  _DAMAGE[damage](tmp_path / "2")
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    # Asking for the damaged step explicitly fails instead of falling back.
    with pytest.raises(Exception):
      ckpt.restore(_abstract(state1), step=2)
    with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
      restored, meta, step = ckpt.restore(_abstract(state1))
    assert step == 1 and meta == {"v": 1}
    np.testing.assert_array_equal(restored["w"], values)
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING]
    # The warning names the bad step directory itself.
    assert any(f"step 2 from {tmp_path / '2'} (" in w for w in warnings), warnings
    # The bad step is kept for inspection but no longer listed, so the
    # resumed run can write step 2 again.
    aside = [n for n in os.listdir(tmp_path) if n.startswith("2.unreadable-")]
    assert len(aside) == 1 and not (tmp_path / "2").exists()
    assert ckpt.all_steps() == [1]
    assert ckpt.save(2, state2, {"v": "2 again"})
    ckpt.wait()
    restored, meta, step = ckpt.restore(_abstract(state1))
  assert (step, meta) == (2, {"v": "2 again"})
  np.testing.assert_array_equal(restored["w"], values + 10)


def test_flipped_byte_is_named_by_checksum(tmp_path):
  values = np.random.default_rng(1).normal(size=(64, 64)).astype(np.float32)
  state = {"params": {"a": {"w": jnp.asarray(values)}, "b": jnp.zeros((3,))}}
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, state, {})
    ckpt.wait()
  _flip_byte(tmp_path / "1")
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    with pytest.raises(checkpoint.CheckpointCorruptError,
                       match=r"checkpoint .*/1: array\(s\) params/a/w do not match"):
      ckpt.restore(_abstract(state), step=1)
  # load_params checks the same checksums.
  with pytest.raises(checkpoint.CheckpointCorruptError, match="params/a/w"):
    checkpoint.load_params(str(tmp_path / "1"), {"a": {"w": jnp.zeros((64, 64))}},
                           strict=False)
  # An undamaged param still loads.
  loaded = checkpoint.load_params(str(tmp_path / "1"), {"b": jnp.ones(3)},
                                  strict=False)
  np.testing.assert_array_equal(loaded["b"], np.zeros(3))


def test_array_checksums_known_values():
  # float32 1.0 and 2.0 are 0x3F800000 and 0x40000000; element i is weighted
  # by i * 0x9E3779B1 + 1 (mod 2**32): 0x3F800000 * 1 + 0x40000000 *
  # 0x9E3779B2 = 0x3F800000 + 0x80000000 = 0xBF800000 (mod 2**32).
  sums = checkpoint.array_checksums(
      {"x": jnp.array([1.0, 2.0], jnp.float32), "n": 3,
       "b": jnp.array([True, False, True])})
  assert sums["x"] == ["float32", 0xBF800000]
  # bools count as 0/1: 1 * 1 + 1 * (2 * 0x9E3779B1 + 1) mod 2**32.
  assert sums["b"] == ["bool", (2 + 2 * 0x9E3779B1) % 2**32]
  assert "n" not in sums  # Python scalars are not arrays.
  # Swapping two elements changes the checksum; equal values keep it.
  swapped = checkpoint.array_checksums({"x": jnp.array([2.0, 1.0])})["x"]
  assert swapped != sums["x"]
  assert checkpoint.array_checksums({"x": np.array([1.0, 2.0], np.float32)}) == {
      "x": sums["x"]}


def test_incomplete_step_dir_is_set_aside(tmp_path, caplog):
  """A step whose deletion was killed half-way must not look committed."""
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, {"w": jnp.arange(3.0)}, {"v": 1})
    ckpt.save(2, {"w": jnp.arange(3.0)}, {"v": 2})
    ckpt.wait()
  # What an interrupted `rm -r 2` leaves: the dir, minus some of its files.
  (tmp_path / "2" / "commit_success.txt").unlink()
  (tmp_path / "2" / "meta" / "metadata").unlink()
  # A reader ignores it (with a warning) and changes nothing on disk.
  with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
    with checkpoint.Checkpointer(str(tmp_path), read_only=True) as reader:
      assert reader.all_steps() == [1]
      assert reader.latest_step() == 1
  assert any(f"{tmp_path / '2'}: no commit_success.txt" in r.getMessage()
             for r in caplog.records)
  assert (tmp_path / "2").is_dir()
  assert checkpoint.step_problem(tmp_path / "2").startswith("no commit_success")
  assert checkpoint.step_problem(tmp_path / "1") is None
  # load_params picks the newest complete step too.
  assert checkpoint._find_step_dir(str(tmp_path)) == tmp_path / "1"
  # A writer sets it aside before orbax lists the steps, and can save step 2.
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.all_steps() == [1]
    assert [n for n in os.listdir(tmp_path) if n.startswith("2.incomplete-")]
    ckpt.save(2, {"w": jnp.ones(3)}, {"v": "new 2"})
    ckpt.wait()
    assert ckpt.restore({"w": _abstract(jnp.zeros(3))})[1:] == ({"v": "new 2"}, 2)


def test_old_steps_are_deleted_through_trash(tmp_path):
  with checkpoint.Checkpointer(str(tmp_path), keep_last=1) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, {"w": jnp.zeros(4)}, {})
    ckpt.wait()
    assert ckpt.all_steps() == [3]
  # Orbax renamed 1 and 2 into the trash dir (atomic); we emptied it.
  assert sorted(os.listdir(tmp_path)) == ["3", checkpoint.TRASH_DIR]
  assert os.listdir(tmp_path / checkpoint.TRASH_DIR) == []


def test_read_only_changes_nothing(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    checkpoint.Checkpointer(str(tmp_path / "nowhere"), read_only=True)
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, {"w": jnp.zeros(2)}, {})
  # A save in progress by another process: a reader must not remove it.
  in_progress = tmp_path / "2.orbax-checkpoint-tmp"
  in_progress.mkdir()
  with checkpoint.Checkpointer(str(tmp_path), read_only=True) as reader:
    assert reader.all_steps() == [1]
    with pytest.raises(RuntimeError, match="read_only; cannot save step 3"):
      reader.save(3, {"w": jnp.zeros(2)}, {})
  assert in_progress.is_dir()


_KILL_DURING_SAVE_SCRIPT = textwrap.dedent("""
  import sys, time
  import jax.numpy as jnp, numpy as np
  from big_vision_like import checkpoint
  directory, size = sys.argv[1], int(sys.argv[2])
  big = np.random.default_rng(0).normal(size=(size,)).astype(np.float32)
  with checkpoint.Checkpointer(directory) as ckpt:
    ckpt.save(1, {"w": jnp.zeros(4)}, {"v": 1})
    ckpt.wait()
    print("SAVED_1", flush=True)
    ckpt.save(2, {"w": jnp.asarray(big)}, {"v": 2})  # async: returns early
    print("SAVING_2", flush=True)
    time.sleep(600)
""")


def test_kill_9_during_async_save_resumes_from_previous_step(tmp_path):
  """SIGKILL while step 2 is being written: step 1 stays the newest."""
  script = tmp_path / "kill_during_save.py"
  script.write_text(_KILL_DURING_SAVE_SCRIPT)
  directory = tmp_path / "ckpt"
  tmp_step = directory / "2.orbax-checkpoint-tmp"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  # 32M random floats take a while to compress and write: kill in between.
  proc = subprocess.Popen([sys.executable, str(script), str(directory),
                           str(32 * 2**20)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  try:
    assert proc.stdout.readline().strip() == "SAVED_1"
    deadline = time.time() + 120
    while not tmp_step.exists() and time.time() < deadline:
      time.sleep(0.001)
    proc.kill()  # SIGKILL: no finaliser, no atexit.
    proc.wait(timeout=60)
  finally:
    proc.kill()
  # The write was interrupted: only the uncommitted tmp dir is there.
  assert tmp_step.exists() and not (directory / "2").exists(), os.listdir(directory)
  with checkpoint.Checkpointer(str(directory)) as ckpt:
    assert ckpt.all_steps() == [1]
    _, meta, step = ckpt.restore({"w": _abstract(jnp.zeros(4))})
    assert (step, meta) == (1, {"v": 1})
  assert not tmp_step.exists()  # cleaned up at start


def test_all_steps_corrupt_raises(tmp_path):
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, {"w": jnp.zeros(2)}, {})
    ckpt.save(2, {"w": jnp.zeros(2)}, {})
    ckpt.wait()
    for step in ("1", "2"):
      (tmp_path / step / "meta" / "metadata").unlink()
    with pytest.raises(checkpoint.CheckpointRestoreError,
                       match=r"(?s)step 2 \(.*/2\): .*step 1 \(.*/1\): "):
      ckpt.restore({"w": _abstract(jnp.zeros(2))})


# ---------------------------------------------------------------- load_params


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir whose checkpoints hold steps 1 and 2 (step 2 is the latest)."""
  wd = tmp_path_factory.mktemp("workdir")
  with checkpoint.Checkpointer(str(wd / "checkpoints")) as ckpt:
    for step in (1, 2):
      params = jax.tree.map(lambda x, s=step: x * s, _params())
      opt = optax.adam(0.1).init(params)
      ckpt.save(step, {"params": params, "opt": opt}, {})
    ckpt.wait()
  return wd


@pytest.mark.parametrize("where", ["workdir", "checkpoints", "step_dir"])
def test_load_params_skip_reinits_head(workdir, where):
  path = {"workdir": workdir, "checkpoints": workdir / "checkpoints",
          "step_dir": workdir / "checkpoints" / "2"}[where]
  target = jax.tree.map(jnp.zeros_like, _params(head_classes=5))
  loaded = checkpoint.load_params(str(path), target, skip=["head/.*"])
  # embed comes from step 2 (values doubled), head keeps the target's zeros.
  np.testing.assert_array_equal(loaded["embed"]["kernel"],
                                2 * np.arange(12).reshape(4, 3))
  np.testing.assert_array_equal(loaded["head"]["kernel"], np.zeros((3, 5)))
  np.testing.assert_array_equal(loaded["head"]["bias"], np.zeros(5))
  assert loaded["embed"]["kernel"].sharding == target["embed"]["kernel"].sharding


def test_load_params_specific_step_and_dtype(workdir):
  target = jax.tree.map(lambda x: jnp.zeros_like(x, jnp.bfloat16), _params())
  loaded = checkpoint.load_params(str(workdir / "checkpoints" / "1"), target)
  assert loaded["head"]["bias"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(loaded["head"]["bias"].astype(np.float32),
                                [0.0, 1.0])
  np.testing.assert_array_equal(loaded["head"]["kernel"].astype(np.float32),
                                np.full((3, 2), 0.5))


def test_load_params_shape_mismatch_names_path(workdir):
  target = _params(head_classes=5)
  with pytest.raises(ValueError) as e:
    checkpoint.load_params(str(workdir), target)
  msg = str(e.value)
  assert "head/kernel: checkpoint shape (3, 2) vs target shape (3, 5)" in msg
  assert "head/bias: checkpoint shape (2,) vs target shape (5,)" in msg
  assert "embed" not in msg


def test_load_params_missing_params(workdir):
  target = dict(_params(), new={"kernel": jnp.zeros((2, 2))})
  with pytest.raises(ValueError, match="missing from the checkpoint:\n.*new/kernel"):
    checkpoint.load_params(str(workdir), target)
  # Skipping the new param makes it legal: it keeps its init value.
  loaded = checkpoint.load_params(str(workdir), target, skip=["new/.*"])
  np.testing.assert_array_equal(loaded["new"]["kernel"], np.zeros((2, 2)))


def test_load_params_extra_params(workdir, caplog):
  target = {"embed": _params()["embed"]}
  with pytest.raises(ValueError, match=r"(?s)not in the model.*head/bias"):
    checkpoint.load_params(str(workdir), target)
  with caplog.at_level(logging.WARNING, logger=checkpoint.__name__):
    loaded = checkpoint.load_params(str(workdir), target, strict=False)
  assert any("head/kernel" in r.getMessage() for r in caplog.records)
  np.testing.assert_array_equal(loaded["embed"]["kernel"],
                                2 * np.arange(12).reshape(4, 3))
  # Extras matched by skip are ignored without complaint, even when strict.
  checkpoint.load_params(str(workdir), target, skip=["head/.*"])


def test_load_params_bad_inputs(tmp_path, workdir):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    checkpoint.load_params(str(tmp_path / "nowhere"), _params())
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no checkpoint step found"):
    checkpoint.load_params(str(tmp_path / "empty"), _params())
  with pytest.raises(ValueError, match=r"skip\[1\]: bad regex"):
    checkpoint.load_params(str(workdir), _params(), skip=["ok", "head/("])


def test_load_params_checkpoint_without_params(tmp_path):
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, {"weights": {"w": jnp.zeros(2)}}, {})
    ckpt.wait()
  with pytest.raises(ValueError, match=r"no 'params' entry.*\['weights'\]"):
    checkpoint.load_params(str(tmp_path), {"w": jnp.zeros(2)})


# ------------------------------------------------------- sharded, resharding

_MULTI_DEVICE_SCRIPT = textwrap.dedent("""
  import sys
  import jax, jax.numpy as jnp, numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from jax.sharding import SingleDeviceSharding
  from big_vision_like import checkpoint

  directory = sys.argv[1]
  devices = jax.devices()
  assert len(devices) == 8, devices

  # Save over a ("data", 8) mesh; w and b are split along axis 0.
  mesh8 = Mesh(np.array(devices), ("data",))
  values = {"w": np.arange(48, dtype=np.float32).reshape(16, 3),
            "b": np.arange(8, dtype=np.float32) - 4,
            "s": np.full((6,), 3.0, np.float32)}
  specs8 = {"w": P("data"), "b": P("data"), "s": P()}
  params = {k: jax.device_put(v, NamedSharding(mesh8, specs8[k]))
            for k, v in values.items()}
  assert len(params["w"].addressable_shards) == 8
  assert params["w"].addressable_shards[0].data.shape == (2, 3)
  # Checksums do not depend on the sharding (wrapping integer sums).
  assert checkpoint.array_checksums(params) == checkpoint.array_checksums(values)
  with checkpoint.Checkpointer(directory) as ckpt:
    ckpt.save(10, {"params": params, "step": 10}, {"pos": 99})
    ckpt.wait()

  def check(restored, shardings):
    for k, v in values.items():
      np.testing.assert_array_equal(np.asarray(restored[k]), v)
      assert restored[k].sharding == shardings[k], (k, restored[k].sharding)

  # Restore onto a 2x2 mesh of 4 devices with different layouts.
  mesh4 = Mesh(np.array(devices[:4]).reshape(2, 2), ("data", "model"))
  specs4 = {"w": P(("data", "model")), "b": P("model"), "s": P("data")}
  sh4 = {k: NamedSharding(mesh4, s) for k, s in specs4.items()}
  abstract = {"params": {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                                 sharding=sh4[k])
                         for k, v in values.items()}, "step": 0}
  with checkpoint.Checkpointer(directory) as ckpt:
    state, meta, step = ckpt.restore(abstract)
  assert (meta, step, state["step"]) == ({"pos": 99}, 10, 10)
  check(state["params"], sh4)
  assert state["params"]["w"].addressable_shards[0].data.shape == (4, 3)
  assert {d.id for d in state["params"]["w"].devices()} == {0, 1, 2, 3}

  # Restore onto a single device.
  sh1 = {k: SingleDeviceSharding(devices[5]) for k in values}
  abstract = {"params": {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                                 sharding=sh1[k])
                         for k, v in values.items()}, "step": 0}
  with checkpoint.Checkpointer(directory) as ckpt:
    state, _, _ = ckpt.restore(abstract)
  check(state["params"], sh1)

  # load_params onto the 4-device mesh too.
  target = {k: jax.device_put(np.zeros_like(v), sh4[k])
            for k, v in values.items()}
  loaded = checkpoint.load_params(directory, target, skip=["s"])
  np.testing.assert_array_equal(np.asarray(loaded["w"]), values["w"])
  np.testing.assert_array_equal(np.asarray(loaded["s"]), np.zeros(6))
  assert loaded["w"].sharding == sh4["w"]

  # A target sharding that cannot split the array fails naming the leaf.
  bad = {"params": {"b": jax.ShapeDtypeStruct((6,), np.float32,
                                              sharding=NamedSharding(mesh8, P("data")))}}
  try:
    with checkpoint.Checkpointer(directory) as ckpt:
      ckpt.restore(bad)
  except ValueError as e:
    assert "'params/b'" in str(e), e
  else:
    raise AssertionError("indivisible sharding was accepted")
  print("MULTI_DEVICE_OK")
""")


def test_sharded_save_and_reshard_on_8_fake_devices(tmp_path):
  script = tmp_path / "multi_device.py"
  script.write_text(_MULTI_DEVICE_SCRIPT)
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run(
      [sys.executable, str(script), str(tmp_path / "ckpt")], env=env,
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-5000:]
  assert "MULTI_DEVICE_OK" in proc.stdout
