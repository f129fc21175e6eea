"""Few-shot linear probes: closed-form ridge regression on frozen features.

Why it exists: a model's representation is judged by more than its own head.
Fitting a linear classifier on k labelled images per class of another dataset
(1, 5, 10, 25 "shots") and scoring it on that dataset's test split is the
standard cheap probe of how well the features transfer (big_vision runs one
in its ImageNet configs). The fit is exact and takes milliseconds, so it runs
inside the training loop like any evaluator, and in `eval.py` on a trained,
imported (zoo) or zero-shot model: it reads `predict_fn.representation`
(experiment.py), the pre-logits of a classifier (ViT, ResNet: what the head
reads) or the image embedding of a two-tower model.

Config (`config.evals.NAME`), e.g. on Fashion-MNIST:

    fewshot=dict(type="fewshot", log_percent=50,
                 datasets={"fashion": ("fashion_mnist", "train", "test")},
                 shots=[1, 5, 10, 25], l2_reg=2.0 ** 10, seed=0,
                 pp_train=EVAL_PP, pp_eval=EVAL_PP)

reports `fewshot/fashion_1shot`, ..., `fewshot/fashion_25shot`: test accuracy
in [0, 1]. Keys:

- `datasets`: {name: (tfds_name, train_split, test_split)} or {name:
  dict(name=, train_split=, test_split=, data_dir=)}; `data_dir` (top level)
  is the default data dir of every dataset.
- `shots`: the numbers of training examples per class.
- `pp_train`, `pp_eval`: deterministic pp strings for the few-shot training
  examples and the test split; they must produce what the model reads
  ("image"). Labels are read from the dataset's `label_key` feature
  ("label", integer class ids) in the raw records, not from the pp output
  (for the test split, the pp must keep `label_key`).
- `l2_reg`: the ridge penalty lambda (default 2**10, see "Solver").
- `seed`: which examples are the shots (see "Selection").
- `cache`: keep the preprocessed shots and test examples in memory between
  runs (default True; turn off for ImageNet-size test splits).

Selection. The training split is read once (labels only, images left
encoded) at start-up. Its record positions are shuffled with
`np.random.default_rng(seed).permutation`, and the k-shot set of class c is
the first k positions of class c in that order. So the sets are nested (the
5-shot set holds the 1-shot one), depend only on the seed and the dataset's
record order (never on file names or the process count), and only
max(shots) x classes examples are preprocessed and embedded. A class with
fewer than max(shots) training examples fails at start-up, by name. Classes
are those present in the training split.

Solver. With X the [n, d] features of a k-shot set (float64 on the host) and
Y its targets:

- features are centred on the training mean and divided by ONE global scale,
  the root mean square of the centred entries. Centring replaces a bias
  column (the intercept is then just the target mean, fitted unpenalised).
  The global scale makes `l2_reg` mean the same for features of any
  magnitude (pre-logits vs unit-norm embeddings) while keeping the
  directions' relative variances: per-dimension standardisation would also
  blow up dimensions that are nearly constant on a handful of examples.
  After it each feature has unit variance on average, the regime in which
  lambda = 2**10 is the common choice for such probes.
- targets are one-hot mapped to {-1, +1}. With centred features and a fitted
  intercept this predicts exactly what centred 0/1 one-hot targets would:
  the ridge solution is linear in the targets and Y_pm = 2 Y_01 - 1, so
  every score is 2 x its 0/1 score - 1 and the argmax is the same. {-1, +1}
  is kept as the usual convention for least-squares classification.
- W = (X^T X + lambda I)^-1 X^T Y when n >= d, else the same W computed as
  X^T (X X^T + lambda I)^-1 Y (an n x n system: 10 x 10 for 1-shot), with
  `np.linalg.solve` in float64. `ridge_fit` is that solver; the tests check
  it against `np.linalg.lstsq` on the stacked system [X; sqrt(lambda) I].

One fixed lambda rather than a grid chosen on held-out shots: at 1-shot
there is nothing to hold out, and a number that moves with a per-run choice
is harder to compare across steps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from big_vision_like import registry
from big_vision_like import sharding as sharding_lib
from big_vision_like.data import input_pipeline
from big_vision_like.data import tf_options
from big_vision_like.data import tfds_source
from big_vision_like.evaluators import collect
from big_vision_like.pp import builder as pp_builder

DEFAULT_L2_REG = 2.0 ** 10


# --------------------------------------------------------------------- solver


@dataclasses.dataclass
class Probe:
  """A fitted linear probe: scores = ((x - mean) / scale) @ w + bias."""
  mean: np.ndarray   # [d]
  scale: float
  w: np.ndarray      # [d, C]
  bias: np.ndarray   # [C]
  classes: np.ndarray  # [C] the class id of each column

  def scores(self, features: np.ndarray) -> np.ndarray:
    x = (np.asarray(features, np.float64) - self.mean) / self.scale
    return x @ self.w + self.bias

  def predict(self, features: np.ndarray) -> np.ndarray:
    """Class ids (ties go to the lower column, i.e. the lower class id)."""
    return self.classes[np.argmax(self.scores(features), axis=1)]


def ridge_fit(x: np.ndarray, y: np.ndarray, l2_reg: float) -> np.ndarray:
  """argmin_W |x W - y|^2 + l2_reg |W|^2 in float64 (no intercept, no scaling)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  n, d = x.shape
  if n >= d:  # The d x d normal equations.
    return np.linalg.solve(x.T @ x + l2_reg * np.eye(d), x.T @ y)
  # Fewer examples than dimensions: the same W via the n x n kernel system.
  return x.T @ np.linalg.solve(x @ x.T + l2_reg * np.eye(n), y)


def pm_one_targets(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
  """[n] class ids -> [n, C] targets, +1 at the label's column, -1 elsewhere."""
  return np.where(np.asarray(labels)[:, None] == np.asarray(classes)[None, :], 1.0, -1.0)


def fit_probe(features: np.ndarray, labels: np.ndarray, l2_reg: float,
              classes: np.ndarray | None = None) -> Probe:
  """The probe of the module docstring ("Solver") on one k-shot set."""
  x = np.asarray(features, np.float64)
  classes = np.unique(labels) if classes is None else np.asarray(classes)
  mean = x.mean(axis=0)
  centred = x - mean
  scale = float(np.sqrt(np.mean(centred ** 2)))
  if not scale > 0:  # Identical features for every shot: nothing to fit on.
    scale = 1.0
  y = pm_one_targets(labels, classes)
  # The unpenalised intercept of centred features is the target mean (centring
  # y as well changes no weight, since the columns of `centred` sum to zero).
  w = ridge_fit(centred / scale, y - y.mean(axis=0), l2_reg)
  return Probe(mean=mean, scale=scale, w=w, bias=y.mean(axis=0), classes=classes)


def select_shots(labels: np.ndarray, shots: int, seed: int, where: str = "fewshot",
                 class_names: Sequence[str] | None = None) -> dict[int, np.ndarray]:
  """{class id: the positions of its first `shots` examples in the seeded order}.

  Every class present in `labels` gets exactly `shots` positions (each class's
  list is in seeded order, so its first k entries are the k-shot set).
  """
  labels = np.asarray(labels)
  order = np.random.default_rng(seed).permutation(len(labels))
  # Grouped by class, each group still in seeded order (a stable sort): one
  # pass, also for 1000 classes x 1.28M records.
  grouped = order[np.argsort(labels[order], kind="stable")]
  classes, starts, counts = np.unique(labels[grouped], return_index=True, return_counts=True)
  out = {}
  for c, start, count in zip(classes, starts, counts):
    mine = grouped[start:start + count]
    if len(mine) < shots:
      name = f" ({class_names[c]})" if class_names is not None and c < len(class_names) else ""
      raise ValueError(f"{where}: class {int(c)}{name} has only {len(mine)} training "
                       f"examples, fewer than the {shots} shots asked for (max of shots)")
    out[int(c)] = mine[:shots]
  return out


# ------------------------------------------------------------------ evaluator


def _check_deterministic(pp: str, key: str, where: str) -> None:
  if not isinstance(pp, str):
    raise ValueError(f"{where}: {key} must be a pp string, got {pp!r}")
  for op in pp_builder.parse_ops(pp):
    if pp_builder.is_random(op):
      raise pp_builder.PPError(f"{where}: {key} op {op.index} {op.token!r} is random; "
                               f"frozen-feature probes need a deterministic pp: {pp!r}")


@dataclasses.dataclass
class _Dataset:
  """One probe dataset: its shots (fixed at start-up) and its test collector."""
  name: str
  tfds_name: str
  train_split: str
  data_dir: str | None
  builder: Any
  positions: np.ndarray  # the max-shot set, every class, sorted by class then seed order
  labels: np.ndarray     # their labels
  rank: np.ndarray       # their place in their class's seeded order (0 = first shot)
  test: collect.Collector
  train_cache: dict[str, np.ndarray] | None = None


def _parse_datasets(datasets: Any, data_dir: str | None, where: str
                    ) -> list[tuple[str, str, str, str, str | None]]:
  if hasattr(datasets, "to_dict"):  # a ConfigDict from the config
    datasets = datasets.to_dict()
  if not isinstance(datasets, Mapping) or not datasets:
    raise ValueError(f"{where}: datasets must be a non-empty dict {{name: (tfds_name, "
                     f"train_split, test_split)}}, got {datasets!r}")
  out = []
  for name, spec in datasets.items():
    if isinstance(spec, Mapping):
      missing = {"name", "train_split", "test_split"} - set(spec)
      if missing:
        raise ValueError(f"{where}: datasets[{name!r}] lacks {sorted(missing)}")
      out.append((str(name), spec["name"], spec["train_split"], spec["test_split"],
                  spec.get("data_dir", data_dir)))
    elif isinstance(spec, (list, tuple)) and len(spec) == 3:
      out.append((str(name), *spec, data_dir))
    else:
      raise ValueError(f"{where}: datasets[{name!r}] must be (tfds_name, train_split, "
                       f"test_split) or a dict with those keys, got {spec!r}")
  return out


def _read_labels(builder: Any, split: str, label_key: str, where: str) -> np.ndarray:
  """Every label of `split`, in record order; images stay encoded (cheap)."""
  features = builder.info.features
  if label_key not in features:
    raise ValueError(f"{where}: dataset {builder.info.name!r} has no feature "
                     f"{label_key!r} (features: {sorted(features)}); set label_key")
  ds = _records(builder, split, where)
  ds = ds.map(lambda ex: ex[label_key]).batch(8192)
  labels = np.concatenate([np.asarray(b) for b in ds.as_numpy_iterator()] or [[]])
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{where}: {builder.info.name!r} feature {label_key!r} must hold one "
                     f"integer class id per example, got {labels.dtype} {labels.shape}")
  return labels


def _records(builder: Any, split: str, where: str) -> tf.data.Dataset:
  """The raw records of `split` in fixed order, image features left encoded."""
  features = builder.info.features
  decoders = {k: tfds.decode.SkipDecoding() for k, f in features.items()
              if isinstance(f, tfds.features.Image)}
  try:
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders or None,
                            read_config=tfds.ReadConfig(try_autocache=False))
  except (KeyError, ValueError, AssertionError) as e:
    raise ValueError(f"{where}: dataset {builder.info.name!r} has no split {split!r} "
                     f"(its splits: {sorted(builder.info.splits.keys())}): {e}") from e
  return tf_options.apply(ds)


@registry.EVALUATORS.register("fewshot")
class Evaluator:
  """Few-shot ridge-regression probes; see the module docstring."""

  # The train loop reads these off every evaluator.
  reference = None
  drop_metrics: tuple[str, ...] = ()

  def __init__(self, predict_fn: Callable[[Any, dict], Any], *, batch_size: int,
               mesh: jax.sharding.Mesh, data_axes: tuple[str, ...],
               datasets: Mapping[str, Any] | None = None,
               shots: Sequence[int] = (1, 5, 10, 25), pp_train: str | None = None,
               pp_eval: str | None = None, l2_reg: float = DEFAULT_L2_REG, seed: int = 0,
               label_key: str = "label", data_dir: str | None = None, cache: bool = True,
               name: str = "fewshot", workdir: str | None = None):
    del workdir  # Nothing is written besides the scalars.
    self.name = name
    where = f"evaluator {name!r}"
    represent = getattr(predict_fn, "representation", None)
    if represent is None:
      raise ValueError(f"{where}: fewshot needs frozen features, but this predict_fn has "
                       f"no `representation` (experiment.predict_fn provides the "
                       f"pre-logits or the image embedding)")
    shots = [shots] if isinstance(shots, (int, np.integer)) else list(shots or [])
    if not shots or any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1
                        for k in shots):
      raise ValueError(f"{where}: shots must be a list of positive ints, got {shots!r}")
    if not (isinstance(l2_reg, (int, float, np.floating)) and l2_reg > 0):
      raise ValueError(f"{where}: l2_reg must be a number > 0, got {l2_reg!r}")
    for key, pp in (("pp_train", pp_train), ("pp_eval", pp_eval)):
      if pp is None:
        raise ValueError(f"{where}: fewshot needs {key} (a deterministic pp string)")
      _check_deterministic(pp, key, where)
    self.shots = sorted({int(k) for k in shots})
    self.l2_reg, self.seed = float(l2_reg), int(seed)
    self.label_key, self.cache = label_key, cache
    self.mesh, self.data_axes = mesh, tuple(data_axes)
    self.pp_train = pp_builder.get_preprocess_fn(pp_train)
    # Any batch size works: round up to a multiple of the devices and processes.
    dp = sharding_lib.data_parallel_size(mesh, data_axes)
    multiple = dp * jax.process_count() // math.gcd(dp, jax.process_count())
    self.batch_size = -(-batch_size // multiple) * multiple
    self._sharding = sharding_lib.batch_sharding(mesh, data_axes)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def features(params, batch):
      return represent(params, batch).astype(jnp.float32)
    self._features = jax.jit(features, out_shardings=replicated)
    self.datasets = [self._make_dataset(spec, pp_eval, represent, where)
                     for spec in _parse_datasets(datasets, data_dir, where)]
    # The last run's features per dataset (tools/fewshot_probe.py checks on them).
    self.last_features: dict[str, dict[str, np.ndarray]] = {}

  def _make_dataset(self, spec: tuple, pp_eval: str, represent: Callable,
                    where: str) -> _Dataset:
    name, tfds_name, train_split, test_split, data_dir = spec
    where = f"{where} datasets[{name!r}]"
    builder = tfds_source.get_builder(tfds_name, data_dir, key=f"{where} name")
    labels = _read_labels(builder, train_split, self.label_key, where)
    feature = builder.info.features[self.label_key]
    names = list(feature.names) if hasattr(feature, "names") else None
    chosen = select_shots(labels, max(self.shots), self.seed,
                          f"{where} ({tfds_name} {train_split})", names)
    positions = np.concatenate(list(chosen.values()))
    rank = np.concatenate([np.arange(len(v)) for v in chosen.values()])
    test = collect.Collector(
        lambda params, batch: represent(params, batch).astype(jnp.float32),
        data=dict(name=tfds_name, split=test_split, data_dir=data_dir), pp=pp_eval,
        batch_size=self.batch_size, mesh=self.mesh, data_axes=self.data_axes,
        name=f"{self.name}/{name}", label_keys=(self.label_key,), topk=1,
        keep_logits=True, cache=self.cache)
    return _Dataset(name, tfds_name, train_split, data_dir, builder, positions,
                    labels[positions], rank, test)

  # -- Features.

  def _train_examples(self, ds: _Dataset) -> dict[str, np.ndarray]:
    """The preprocessed shots, in `ds.positions` order (device keys only)."""
    if ds.train_cache is not None:
      return ds.train_cache
    # Record position -> slot in `positions`; -1 for the records not chosen.
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(ds.positions, tf.int64),
                                            tf.range(len(ds.positions), dtype=tf.int64)),
        default_value=-1)
    features = ds.builder.info.features
    image_keys = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    pp = self.pp_train

    @tf.autograph.experimental.do_not_convert
    def prepare(index, example):
      example = dict(example)
      for key in image_keys:  # decoded here, only for the chosen records
        example[key] = features[key].decode_example(example[key])
      out = pp(example)
      return table.lookup(index), {k: v for k, v in out.items() if v.dtype != tf.string}

    records = _records(ds.builder, ds.train_split, self.name).enumerate()
    chosen = records.filter(lambda i, _: table.lookup(i) >= 0).map(prepare)
    items = sorted(chosen.as_numpy_iterator(), key=lambda item: item[0])
    if len(items) != len(ds.positions):
      raise RuntimeError(f"evaluator {self.name!r} datasets[{ds.name!r}]: read "
                         f"{len(items)} of the {len(ds.positions)} chosen records")
    try:
      out = {k: np.stack([ex[k] for _, ex in items]) for k in items[0][1]}
    except ValueError as e:
      raise ValueError(f"evaluator {self.name!r} datasets[{ds.name!r}]: pp_train gives "
                       f"examples of different shapes; end it with a fixed-size op "
                       f"(resize, central_crop): {e}") from e
    if self.cache:
      ds.train_cache = out
    return out

  def _embed(self, params: Any, examples: dict[str, np.ndarray]) -> np.ndarray:
    """Features [n, D] of host arrays, in global batches split over the processes."""
    n = len(next(iter(examples.values())))
    bs, count, index = self.batch_size, jax.process_count(), jax.process_index()
    local = bs // count
    parts = []
    for start in range(0, n, bs):
      batch = {}
      for k, v in examples.items():
        chunk = v[start:start + bs]
        if len(chunk) < bs:  # zero padding, dropped below
          chunk = np.concatenate([chunk, np.zeros((bs - len(chunk),) + v.shape[1:], v.dtype)])
        batch[k] = chunk[index * local:(index + 1) * local]
      batch = sharding_lib.put_process_local_batch(batch, self._sharding)
      parts.append(sharding_lib.to_host(self._features(params, batch)))
    return np.concatenate(parts)[:n]

  # -- Run.

  def run(self, params: Any, step: int | None = None) -> dict[str, float]:
    del step
    out = {}
    for ds in self.datasets:
      examples = self._train_examples(ds)
      x_train = self._embed(params, examples)
      test = ds.test.run(params)
      x_test, y_test = test["logits"], np.asarray(test[self.label_key])
      if y_test.ndim != 1:
        raise ValueError(f"evaluator {self.name!r} datasets[{ds.name!r}]: the pp_eval "
                         f"output {self.label_key!r} must be integer class ids, got shape "
                         f"{y_test.shape}")
      for what, x in (("train", x_train), ("test", x_test)):
        if not np.isfinite(x).all():
          raise ValueError(f"evaluator {self.name!r} datasets[{ds.name!r}]: the model gave "
                           f"NaN/inf features on {what} examples")
      self.last_features[ds.name] = dict(x_train=x_train, y_train=ds.labels,
                                         rank=ds.rank, x_test=x_test, y_test=y_test)
      classes = np.unique(ds.labels)
      for k in self.shots:
        use = ds.rank < k
        probe = fit_probe(x_train[use], ds.labels[use], self.l2_reg, classes)
        out[f"{ds.name}_{k}shot"] = float(np.mean(probe.predict(x_test) == y_test))
    return out
