"""The persistent compilation cache: a restarted run and eval.py load what the first run compiled.

The end-to-end test runs the real commands in new processes (a resume is
always a new process), reading their log lines; the others check the set-up
in-process, through JAX's own cache events.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from big_vision_like import compile_cache
from big_vision_like import config as config_lib
from big_vision_like import eval as eval_lib
from big_vision_like import train as train_lib
from tests.helpers import tiny_config, tiny_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADED = re.compile(r"this evaluation: (\d+) programs loaded from the cache .*, (\d+) compiled")


def _cli(module: str, workdir: str, overrides: list[str]) -> str:
  proc = subprocess.run(
      [sys.executable, "-m", module, "--config", "configs/fashion_vit.py:runlocal",
       "--workdir", workdir] + ["--config." + o for o in overrides],
      cwd=REPO, capture_output=True, text=True, timeout=400, check=False)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
  return proc.stdout + proc.stderr


def _entries(path) -> list[str]:
  return sorted(n for n in os.listdir(path) if n.endswith("-cache"))


def test_resume_and_eval_load_the_compiled_steps(fashion_mnist_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  cache = os.path.join(workdir, "compilation_cache")
  # Every program is written (min 0 s), so that a fast machine cannot make
  # the tiny train step too quick to be kept.
  overrides = tiny_overrides(fashion_mnist_data_dir, total_steps=4, ckpt_steps=2,
                             log_training_steps=2, compilation_cache_min_secs=0)
  first = _cli("big_vision_like.train", workdir, overrides)
  assert f"compilation cache: {cache} (0 entries)" in first, first[-3000:]
  assert "the train step was compiled" in first
  written = _entries(cache)
  assert any(n.startswith("jit_step_fn-") for n in written), written

  # As if preempted after step 2: a new process resumes and loads the train step.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
  second = _cli("big_vision_like.train", workdir, overrides)
  assert "Resumed from step 2" in second
  assert f"compilation cache: {cache} ({len(written)} entries)" in second
  assert "the train step was loaded from the cache" in second, second[-3000:]
  assert "the train step was compiled" not in second
  # Nothing new for the train step: the resume only adds restore programs.
  assert [n for n in _entries(cache) if n.startswith("jit_step_fn-")] == [
      n for n in written if n.startswith("jit_step_fn-")]

  # eval.py: its evaluation step is the one training compiled.
  evaluated = _cli("big_vision_like.eval", workdir, overrides)
  loaded, _ = map(int, LOADED.search(evaluated).groups())
  assert loaded >= 1, evaluated[-3000:]


def test_the_key_turns_it_off(fashion_mnist_data_dir, tmp_path, caplog):
  workdir = str(tmp_path / "run")
  config = tiny_config(fashion_mnist_data_dir, total_steps=2, compilation_cache=False)
  before = compile_cache.counts().snapshot()
  with caplog.at_level("INFO"):
    train_lib.train(config, workdir)
  assert "compilation cache: off (config.compilation_cache=False)" in caplog.text
  assert not os.path.exists(os.path.join(workdir, "compilation_cache"))
  assert compile_cache.counts().snapshot()[1] == before[1]  # no hit: JAX has no cache
  # eval.py too; and "" means off as False does.
  with config.ignore_type():
    config.compilation_cache = ""
  eval_lib.evaluate(config, workdir)
  assert not os.path.exists(os.path.join(workdir, "compilation_cache"))
  assert compile_cache.counts().snapshot()[1] == before[1]
  assert "the train step was" not in caplog.text  # nothing to report without a cache


def _cache_config(value, min_secs=0.0) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      dict(compilation_cache=value, compilation_cache_min_secs=min_secs))


def _compile_fresh(seed: float) -> None:
  """Compiles a program no earlier call in this process built."""
  jax.jit(lambda x: jnp.sin(x) * seed)(np.arange(3.0)).block_until_ready()


def test_in_process_use_is_scoped_and_a_second_use_hits(tmp_path):
  old = jax.config.jax_compilation_cache_dir
  path = str(tmp_path / "shared")
  with compile_cache.enabled(_cache_config(path), "unused") as got:
    assert got == path and jax.config.jax_compilation_cache_dir == path
    _compile_fresh(1.2345)
  assert jax.config.jax_compilation_cache_dir == old  # restored
  assert len(_entries(path)) == 1 and compile_cache.num_entries(path) == 1
  jax.clear_caches()  # as a new process: nothing compiled in memory
  with compile_cache.enabled(_cache_config(path), "unused"):
    before = compile_cache.counts().snapshot()
    _compile_fresh(1.2345)
    assert compile_cache.summary(before).startswith("1 programs loaded")


def test_off_overrides_a_cache_from_the_environment(tmp_path):
  """False turns off a cache JAX took from JAX_COMPILATION_CACHE_DIR, and restores it."""
  env_cache = str(tmp_path / "from_env")
  old = (jax.config.jax_compilation_cache_dir,
         jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", env_cache)  # what the env var does
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  try:
    with compile_cache.enabled(_cache_config(False), "unused") as got:
      assert got is None and not jax.config.jax_compilation_cache_dir
      _compile_fresh(4.25)
    assert not os.path.exists(env_cache) or _entries(env_cache) == []
    assert jax.config.jax_compilation_cache_dir == env_cache  # restored
  finally:
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
    compile_cache._reset()


def test_min_secs_and_read_only(tmp_path, monkeypatch, caplog):
  path = str(tmp_path / "cache")
  with compile_cache.enabled(_cache_config(path, min_secs=600.0), "unused"):
    _compile_fresh(2.5)
  assert _entries(path) == []  # compiled in well under 600 s: not written
  # A cache this process may not write to (a read-only workdir) is only read
  # (faked: root may write anywhere).
  monkeypatch.setattr(compile_cache.os, "access", lambda *_: False)
  with caplog.at_level("INFO"), compile_cache.enabled(_cache_config(path), "unused") as got:
    assert got == path
    _compile_fresh(3.5)
  assert "not writable: only read" in caplog.text
  assert _entries(path) == []


def test_directory_and_config_checks(fashion_mnist_data_dir):
  assert compile_cache.directory(None, "/w") == "/w/compilation_cache"
  assert compile_cache.directory(True, "gs://b/run") == "gs://b/run/compilation_cache"
  assert compile_cache.directory("gs://b/cache", "/w") == "gs://b/cache"
  assert compile_cache.directory(False, "/w") is None
  assert compile_cache.directory("", "/w") is None
  with pytest.raises(config_lib.ConfigError, match="compilation_cache_min_secs"):
    config_lib.resolve(tiny_config(fashion_mnist_data_dir, compilation_cache_min_secs=-1.0))
  with pytest.raises(config_lib.ConfigError, match="compilation_cache"):
    config_lib.resolve(tiny_config(fashion_mnist_data_dir, compilation_cache=3))
