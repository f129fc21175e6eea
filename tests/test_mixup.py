"""Mixup / CutMix: exact images and labels, exact CutMix areas, config errors, and
the jitted train step giving the same numbers on 1 and 8 (fake CPU) devices."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import linen as nn

from big_vision_like import config as config_lib
from big_vision_like import experiment
from big_vision_like import mixup as mixup_lib
from big_vision_like import train as train_lib
from big_vision_like.tasks import classification
from tests.helpers import TINY_MODEL, read_jsonl, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def constant_images(batch: int, height: int, width: int, channels: int = 2) -> np.ndarray:
  """Example i is filled with the value i + 1, so every pixel names its source."""
  values = np.arange(1, batch + 1, dtype=np.float32)
  return np.broadcast_to(values[:, None, None, None],
                         (batch, height, width, channels)).copy()


def mix(cfg: mixup_lib.MixupConfig, images, labels, seed: int = 0) -> mixup_lib.Mixed:
  out = jax.jit(mixup_lib.mix, static_argnums=3)(
      jax.random.key(seed), jnp.asarray(images), jnp.asarray(labels), cfg)
  return mixup_lib.Mixed(*(np.asarray(x) for x in out))


# ----------------------------------------------------------------- config


def test_from_config_parses_and_turns_off():
  assert mixup_lib.from_config(None) is None
  assert mixup_lib.from_config({}) is None  # both alphas default to 0: off
  assert mixup_lib.from_config(dict(mixup_alpha=0.0, cutmix_alpha=0)) is None
  assert mixup_lib.from_config(dict(mixup_alpha=0.2, prob=0.0)) is None
  got = mixup_lib.from_config(dict(mixup_alpha=0.2, cutmix_alpha=1, switch_prob=0.3,
                                   prob=0.8, mode="example"))
  assert got == mixup_lib.MixupConfig(mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=0.3,
                                      prob=0.8, mode="example")
  assert isinstance(got.cutmix_alpha, float)


@pytest.mark.parametrize("cfg, match", [
    (dict(mixup_alhpa=0.2), r"config\.mixup\.mixup_alhpa.*Did you mean 'mixup_alpha'.*"
                            r"Known keys: cutmix_alpha, mixup_alpha, mode, prob, switch_prob"),
    (dict(p=0.2), r"config\.mixup\.p\b.*Known keys"),
    (dict(mixup_alpha=-0.1), r"config\.mixup\.mixup_alpha must be a finite number >= 0"),
    (dict(cutmix_alpha=float("inf")), r"config\.mixup\.cutmix_alpha.*inf"),
    (dict(cutmix_alpha="1"), r"config\.mixup\.cutmix_alpha.*'1'"),
    (dict(mixup_alpha=0.2, prob=1.5), r"config\.mixup\.prob must be a probability "
                                      r"in \[0, 1\], got 1\.5"),
    (dict(mixup_alpha=0.2, switch_prob=-1), r"config\.mixup\.switch_prob"),
    (dict(mixup_alpha=True), r"config\.mixup\.mixup_alpha.*True"),
    (dict(mixup_alpha=0.2, mode="global"), r"config\.mixup\.mode.*batch, example.*'global'"),
    (0.2, r"config\.mixup must be a dict"),
])
def test_bad_mixup_config_names_the_key(cfg, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    mixup_lib.from_config(cfg)


def test_validate_accepts_mixup_and_rejects_bad_ones():
  config = config_lib.load_config("configs/fashion_vit.py:runlocal")
  config.mixup = dict(mixup_alpha=0.2, cutmix_alpha=1.0)
  config_lib.validate(config)
  config.mixup = None
  config_lib.validate(config)
  config.mixup = dict(mixup_alpha=0.2, cutmix_alhpa=1.0)
  with pytest.raises(config_lib.ConfigError, match=r"config\.mixup\.cutmix_alhpa"):
    config_lib.validate(config)


def test_bad_input_to_mix_is_named():
  cfg = mixup_lib.MixupConfig(mixup_alpha=1.0)
  images = np.zeros((4, 3, 3, 1), np.float32)
  with pytest.raises(ValueError, match="dense float labels.*onehot"):
    mix(cfg, images, np.arange(4))
  with pytest.raises(ValueError, match="float images.*value_range"):
    mix(cfg, images.astype(np.uint8), np.eye(4, dtype=np.float32))
  with pytest.raises(ValueError, match=r"cutmix_alpha needs images \[B, H, W, C\]"):
    mix(mixup_lib.MixupConfig(cutmix_alpha=1.0), np.zeros((4, 9), np.float32),
        np.eye(4, dtype=np.float32))


# ------------------------------------------------------------------ mixup


@pytest.mark.parametrize("mode", ["batch", "example"])
def test_mixup_is_a_convex_combination_with_the_rolled_batch(mode):
  rng = np.random.default_rng(0)
  images = rng.normal(size=(8, 5, 4, 3)).astype(np.float32)
  labels = np.eye(8, dtype=np.float32)  # example i has class i
  out = mix(mixup_lib.MixupConfig(mixup_alpha=0.4, mode=mode), images, labels)
  lam = out.own
  assert np.all((lam >= 0.5) & (lam <= 1.0)) and np.all(lam < 1.0)
  np.testing.assert_array_equal(out.partner, np.float32(1) - lam)
  if mode == "batch":
    assert len(set(lam.tolist())) == 1
  else:
    assert len(set(lam.tolist())) == 8
  # Partner of example i is example i - 1 (and of 0 the last one).
  partner_images = images[[7, 0, 1, 2, 3, 4, 5, 6]]
  expected = lam[:, None, None, None] * images + (1 - lam[:, None, None, None]) * partner_images
  np.testing.assert_allclose(out.image, expected, rtol=1e-6, atol=1e-6)
  # One-hot labels: own class gets lam, the partner's class 1 - lam, sum 1.
  for i in range(8):
    assert out.labels[i, i] == lam[i]
    assert out.labels[i, (i - 1) % 8] == np.float32(1) - lam[i]
  np.testing.assert_allclose(out.labels.sum(1), 1.0, rtol=1e-6)
  assert np.count_nonzero(out.labels) == 16


def test_mixup_preserves_label_sums_of_multi_hot_and_smoothed_labels():
  multi = np.zeros((6, 5), np.float32)
  for i in range(6):
    multi[i, [i % 5, (i + 2) % 5]] = 1.0  # two positives each: sum 2
  smoothed = np.full((6, 5), 0.02, np.float32)
  smoothed[np.arange(6), np.arange(6) % 5] = 0.92  # label smoothing 0.1: sum 1
  cfg = mixup_lib.MixupConfig(mixup_alpha=1.0, mode="example")
  images = np.zeros((6, 2, 2, 1), np.float32)
  np.testing.assert_allclose(mix(cfg, images, multi).labels.sum(1), 2.0, rtol=1e-6)
  out = mix(cfg, images, smoothed)
  np.testing.assert_allclose(out.labels.sum(1), 1.0, rtol=1e-6)
  assert out.labels.min() >= 0.02 - 1e-7


@pytest.mark.parametrize("cfg", [
    mixup_lib.MixupConfig(),  # both alphas 0
    mixup_lib.MixupConfig(mixup_alpha=0.5, cutmix_alpha=1.0, prob=0.0),
])
def test_nothing_to_do_is_the_identity(cfg):
  rng = np.random.default_rng(1)
  images = rng.normal(size=(4, 6, 6, 3)).astype(np.float32)
  labels = np.eye(4, dtype=np.float32)
  out = mix(cfg, images, labels)
  np.testing.assert_array_equal(out.image, images)
  np.testing.assert_array_equal(out.labels, labels)
  np.testing.assert_array_equal(out.own, 1.0)
  np.testing.assert_array_equal(out.partner, 0.0)


# ----------------------------------------------------------------- CutMix


def pasted_masks(images: np.ndarray, out: np.ndarray) -> np.ndarray:
  """[B, H, W] bool: where the output took the partner's (distinct) value."""
  partner_images = np.roll(images, 1, axis=0)
  changed = out[..., 0] != images[..., 0]
  # CutMix never blends: each pixel is its own or its partner's, in all channels.
  assert np.all(np.where(changed[..., None], out == partner_images, out == images))
  return changed


@pytest.mark.parametrize("alpha", [1.0, 0.1])
def test_cutmix_label_weights_equal_pasted_area(alpha):
  batch, height, width = 64, 10, 12
  images = constant_images(batch, height, width)
  labels = np.eye(batch, dtype=np.float32)
  out = mix(mixup_lib.MixupConfig(cutmix_alpha=alpha, mode="example"), images, labels)
  masks = pasted_masks(images, out.image)
  clipped = 0
  for i in range(batch):
    count = int(masks[i].sum())
    area = np.float32(count) / np.float32(height * width)
    # The label weight IS the counted area fraction, to the last bit of the
    # float32 division (XLA on CPU divides within 1 ulp, not correctly rounded).
    weight = out.labels[i, (i - 1) % batch]
    assert abs(weight - area) <= np.spacing(area), (i, count, weight, area)
    assert out.partner[i] == weight
    kept = np.float32(height * width - count) / np.float32(height * width)
    assert out.labels[i, i] == out.own[i]
    assert abs(out.own[i] - kept) <= np.spacing(kept)
    assert out.labels[i].sum() == pytest.approx(1, abs=3e-7)
    if count:
      # The pasted pixels form one axis-aligned rectangle.
      rows, cols = np.nonzero(masks[i].any(1))[0], np.nonzero(masks[i].any(0))[0]
      assert count == len(rows) * len(cols)
      assert rows[-1] - rows[0] + 1 == len(rows) and cols[-1] - cols[0] + 1 == len(cols)
      assert masks[i][np.ix_(rows, cols)].all()
      touches = rows[0] == 0 or cols[0] == 0 or rows[-1] == height - 1 or cols[-1] == width - 1
      clipped += touches and count < height * width
  # Boxes are clipped at the borders: partial boxes against an edge are common.
  assert clipped >= 5
  # Per-example boxes: many different areas.
  assert len(set(out.partner.tolist())) > 10


def test_cutmix_batch_mode_pastes_one_box_everywhere():
  batch, height, width = 8, 16, 16
  images = constant_images(batch, height, width)
  labels = np.eye(batch, dtype=np.float32)
  cfg = mixup_lib.MixupConfig(cutmix_alpha=1.0, mode="batch")
  for seed in range(3):
    out = mix(cfg, images, labels, seed=seed)
    masks = pasted_masks(images, out.image)
    assert 0 < masks[0].sum() < height * width
    for i in range(batch):
      np.testing.assert_array_equal(masks[i], masks[0])
    area = np.float32(masks[0].sum()) / np.float32(height * width)
    np.testing.assert_array_equal(out.partner, out.partner[0])
    assert abs(out.partner[0] - area) <= np.spacing(area)
    np.testing.assert_allclose(out.labels.sum(1), 1.0, atol=3e-7)


def test_switch_and_prob_choose_per_example():
  batch = 400
  images = constant_images(batch, 8, 8, channels=1)
  labels = np.eye(batch, dtype=np.float32)
  cfg = mixup_lib.MixupConfig(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5,
                              prob=0.5, mode="example")
  out = mix(cfg, images, labels)
  own_value = images[:, 0, 0, 0][:, None, None]
  partner_value = np.roll(own_value, 1, axis=0)
  img = out.image[..., 0]
  unmixed = np.all(img == own_value, axis=(1, 2))
  pure = np.all((img == own_value) | (img == partner_value), axis=(1, 2))
  cut = pure & ~unmixed
  blended = ~pure  # mixup: every pixel is a blend of both values
  assert np.all(np.all(img == img[:, :1, :1], axis=(1, 2))[blended])
  # Each kind's label weights agree with what happened to its pixels.
  np.testing.assert_array_equal(out.own[unmixed], 1.0)
  np.testing.assert_array_equal(out.partner[unmixed], 0.0)
  pasted = (img == partner_value).mean(axis=(1, 2), dtype=np.float32)
  np.testing.assert_allclose(out.partner[cut], pasted[cut], rtol=1e-7)
  np.testing.assert_allclose(out.image[blended, 0, 0, 0],
                             out.own[blended] * own_value[blended, 0, 0]
                             + out.partner[blended] * partner_value[blended, 0, 0],
                             rtol=1e-6)
  # About half mixed; of those about half CutMix (binomial sd ~ 0.025 / 0.035).
  assert 0.4 < 1 - unmixed.mean() < 0.6
  assert 0.35 < cut.sum() / (cut.sum() + blended.sum()) < 0.65
  # switch_prob 0 / 1 pick one method only.
  only_mixup = mix(mixup_lib.MixupConfig(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.0,
                                         mode="example"), images, labels)
  assert not np.any(np.all((only_mixup.image[..., 0] == own_value)
                           | (only_mixup.image[..., 0] == partner_value), axis=(1, 2)))
  only_cut = mix(mixup_lib.MixupConfig(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=1.0,
                                       mode="example"), images, labels)
  assert np.all((only_cut.image[..., 0] == own_value)
                | (only_cut.image[..., 0] == partner_value))


# ------------------------------------------------------------ determinism


def test_same_key_same_result_and_step_keys_are_distinct():
  rng = np.random.default_rng(2)
  images = rng.normal(size=(16, 8, 8, 3)).astype(np.float32)
  labels = np.eye(16, dtype=np.float32)
  cfg = mixup_lib.MixupConfig(mixup_alpha=0.5, cutmix_alpha=1.0, mode="example", prob=0.8)
  base = jax.random.key(0)
  a = mix_with_key(cfg, mixup_lib.step_key(base, 7), images, labels)
  b = mix_with_key(cfg, mixup_lib.step_key(base, jnp.int32(7)), images, labels)
  c = mix_with_key(cfg, mixup_lib.step_key(base, 8), images, labels)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.image, c.image)
  # The mixup stream is not the dropout stream `fold_in(base, step)`.
  dropout_keys = {tuple(np.asarray(jax.random.key_data(jax.random.fold_in(base, s))))
                  for s in range(20)}
  for s in range(20):
    assert tuple(np.asarray(jax.random.key_data(mixup_lib.step_key(base, s)))) \
        not in dropout_keys


def mix_with_key(cfg, key, images, labels) -> mixup_lib.Mixed:
  return mixup_lib.Mixed(*(np.asarray(x) for x in mixup_lib.mix(key, images, labels, cfg)))


class _Linear(nn.Module):
  """A model that compiles in a blink: flatten, one dense layer."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    return nn.Dense(5)(x.reshape(x.shape[0], -1)), {}


def test_train_step_mixes_the_global_batch_with_the_step_key():
  rng = np.random.default_rng(3)
  batch = {"image": jnp.asarray(rng.normal(size=(8, 4, 4, 1)), jnp.float32),
           "labels": jax.nn.one_hot(jnp.asarray(rng.integers(0, 5, 8)), 5)}
  model, tx = _Linear(), optax.sgd(0.5)
  params = model.init(jax.random.key(0), batch["image"])["params"]
  state = {"params": params, "opt": tx.init(params)}
  mixup = dict(mixup_alpha=1.0, cutmix_alpha=1.0, mode="example")
  cfg = mixup_lib.from_config(mixup)
  def step_fn(accum, mixup):
    task = classification.Classification(
        ml_collections.ConfigDict(dict(loss="softmax_xent", mixup=mixup)))
    return jax.jit(experiment.make_train_step(task, task.make_loss(model, None, None), tx,
                                              lambda s: 0.5, accum))
  mixed_step, plain_step = step_fn(1, mixup), step_fn(1, None)
  base, step = jax.random.key(1), jnp.int32(3)
  mixed_state, mixed = mixed_step(state, batch, step, base)
  # The plain step on the batch mixed with step_key(base_rng, step), up to
  # float rounding (XLA fuses the mixing into the forward pass differently).
  pre = jax.jit(mixup_lib.mix, static_argnums=3)(
      mixup_lib.step_key(base, step), batch["image"], batch["labels"], cfg)
  want_state, want = plain_step(state, {"image": pre.image, "labels": pre.labels},
                                step, base)
  np.testing.assert_allclose(mixed["train/loss"], want["train/loss"], rtol=1e-6)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  jax.tree.map(close, mixed_state["params"], want_state["params"])
  _, plain = plain_step(state, batch, step, base)
  assert abs(plain["train/loss"] - mixed["train/loss"]) > 1e-3
  _, next_step = mixed_step(state, batch, step + 1, base)
  assert next_step["train/loss"] != mixed["train/loss"]  # a fresh draw every step
  # Gradient accumulation: the whole batch is mixed once, then split, so four
  # micro-batches give the update of one full (mixed) batch.
  accum_state, accum = step_fn(4, mixup)(state, batch, step, base)
  np.testing.assert_allclose(accum["train/loss"], mixed["train/loss"], rtol=1e-6)
  jax.tree.map(close, accum_state["params"], mixed_state["params"])


_STEP_SCRIPT = """
import hashlib, json
import jax, jax.numpy as jnp, numpy as np
from big_vision_like import config as config_lib, experiment, mixup as mixup_lib
from big_vision_like import sharding as sharding_lib

config = config_lib.load_config("configs/fashion_vit.py:runlocal", {overrides!r})
config.schedule = dict(warmup_steps=0, decay_type="constant")  # step 0 already learns
config.mixup = dict(mixup_alpha=0.5, cutmix_alpha=1.0, mode="example", prob=0.9)
config.mesh = [("data", -1)]
rng = np.random.default_rng(0)
host = {{"image": rng.uniform(-1, 1, (32, 28, 28, 1)).astype(np.float32),
        "labels": np.eye(10, dtype=np.float32)[rng.integers(0, 10, 32)]}}
exp = experiment.build(
    config, total_steps=10, batch_size=32,
    input_spec={{k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in host.items()}})
bs = exp.batch_sharding
batch = sharding_lib.put_process_local_batch(host, bs)

def losses():
  state = exp.init_state(exp.init_params(jax.random.key(0)))
  step_fn = exp.jit_train_step()
  out = []
  for i in range(2):
    state, m = step_fn(state, batch, jnp.int32(i), jax.random.key(1))
    out.append(float(m["train/loss"]))
  return out

cfg = mixup_lib.from_config(config.mixup)
image, labels = jax.jit(lambda k, im, lb: mixup_lib.mix(k, im, lb, cfg)[:2],
                        out_shardings=(bs, bs))(
    mixup_lib.step_key(jax.random.key(1), 1), batch["image"], batch["labels"])
image, labels = np.asarray(image), np.asarray(labels)
print(json.dumps(dict(
    devices=jax.device_count(), losses=losses(),
    digest=hashlib.sha256(image.tobytes() + labels.tobytes()).hexdigest(),
    changed=float(np.mean(np.any(image != host["image"], axis=(1, 2, 3)))))))
"""


def run_step_script(device_counts: tuple[int, ...]) -> list[dict]:
  """Runs `_STEP_SCRIPT` once per device count (in parallel); their JSON lines."""
  overrides = [f"model.{k}={v}" for k, v in TINY_MODEL.items()]
  code = textwrap.dedent(_STEP_SCRIPT.format(overrides=overrides))
  procs = [subprocess.Popen(
      [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={n}"))
      for n in device_counts]
  out = []
  for proc in procs:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout + stderr[-3000:]
    out.append(json.loads(stdout.strip().splitlines()[-1]))
  return out


def test_train_step_with_mixup_is_the_same_on_one_and_eight_devices():
  one, eight = run_step_script((1, 8))
  assert (one["devices"], eight["devices"]) == (1, 8)
  # The mixed batch is bit-identical whatever the sharding, and really mixed
  # (prob=0.9: 31 of the 32 examples with this seed).
  assert one["digest"] == eight["digest"]
  assert 0.6 < one["changed"] < 1.0
  np.testing.assert_allclose(one["losses"], eight["losses"], rtol=2e-5)
  assert all(math.isfinite(v) for v in one["losses"])
  assert one["losses"][1] < one["losses"][0]


# ------------------------------------------------------------- end to end


# 4 steps, 2 logged losses, no evals (the eval path is tested elsewhere).
SHORT_RUN = dict(total_steps=4, log_training_steps=2, evals={})


def test_train_with_mixup_runs_and_bad_config_fails_first(fashion_mnist_data_dir, tmp_path):
  mixup = dict(mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=0.5, mode="example")
  config = tiny_config(fashion_mnist_data_dir, **SHORT_RUN, mixup=mixup)
  workdir = tmp_path / "run"
  out = train_lib.train(config, str(workdir))
  assert out["step"] == 4
  rows = read_jsonl(workdir / "metrics.jsonl")
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
  assert json.load(open(workdir / "config.json"))["mixup"] == mixup

  bad = tiny_config(fashion_mnist_data_dir, **SHORT_RUN,
                    mixup=dict(mixup_alpha=0.2, mode="global"))
  with pytest.raises(config_lib.ConfigError, match=r"config\.mixup\.mode"):
    train_lib.train(bad, str(tmp_path / "bad"))
  assert not (tmp_path / "bad").exists()  # failed before touching the workdir
