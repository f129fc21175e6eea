"""`fashion_mnist_captions`: an embedded image-text dataset for two-tower models.

Contrastive image-text training (CLIP, LiT, SigLIP) and its evaluators
(zero-shot classification, retrieval) need images with captions. No such
dataset can be downloaded on our offline machines, so, like Fashion-MNIST
itself, one is built locally: every Fashion-MNIST image gets a few short
captions, each a TRAINING template filled with one phrasing of its class
("a photo of a tee.", "a picture of the pair of pants."). A separate set of
HELD-OUT templates, disjoint from the training ones, is the prompt set for
zero-shot evaluation, so the zero-shot accuracy does not just measure
whether the model memorised the caption strings.

The dataset is an ordinary TFDS dataset in the data dir (written with
`tfds_writer` from the prepared `fashion_mnist`) and is prepared
automatically on first use by `tfds_source.get_builder`:

  features: image     Image (28, 28, 1) uint8, PNG (the bytes of fashion_mnist)
            label     ClassLabel, the 10 Fashion-MNIST names
            captions  Sequence(Text, length=CAPTIONS_PER_IMAGE): a fixed
                      count, so tokenized captions batch as [3, max_len]
            file_name Text, "{split}_{index:05d}"
  splits:   train (60,000), test (10,000)

`index` is the example's position in `tfds.load("fashion_mnist",
split=split)`, so `train_00042` holds the image of fashion_mnist train[42].
The captions depend only on the label, the split and `SEED`: the dataset is
the same on every machine.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from typing import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from big_vision_like.data import fashion_mnist
from big_vision_like.data import tfds_writer

NAME = "fashion_mnist_captions"
VERSION = "1.1.0"  # 1.1.0: 36 training templates instead of 10
SPLITS = ("train", "test")
CAPTIONS_PER_IMAGE = 3
SEED = 1729

# Class id -> phrasings used in captions; the first is the class's canonical
# name for zero-shot prompts. Every phrasing reads well after "a"/"the".
CLASS_PHRASES: tuple[tuple[str, ...], ...] = (
    ("t-shirt", "tee", "top", "tee shirt"),              # 0 T-shirt/top
    ("trouser", "pair of trousers", "pair of pants"),   # 1 Trouser
    ("pullover", "sweater", "jumper"),                   # 2 Pullover
    ("dress", "frock", "summer dress"),                  # 3 Dress
    ("coat", "jacket", "overcoat"),                      # 4 Coat
    ("sandal", "strappy sandal", "open shoe"),           # 5 Sandal
    ("shirt", "button-up shirt", "blouse"),              # 6 Shirt
    ("sneaker", "trainer", "running shoe"),              # 7 Sneaker
    ("bag", "handbag", "purse"),                         # 8 Bag
    ("ankle boot", "boot", "short boot"),                # 9 Ankle boot
)
CLASS_NAMES: tuple[str, ...] = tuple(p[0] for p in CLASS_PHRASES)

# Caption templates of the training data ("{}" is a phrasing). Many phrasings
# with the class name early, late and in the middle: with only a handful of
# templates the text tower learns the templates themselves and zero-shot
# accuracy with unseen prompts suffers (measured on the contrastive main job:
# 0.89 with the training templates as prompts, 0.74-0.80 with held-out ones,
# when there were 10 templates).
TRAIN_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of the {}.",
    "a grayscale photo of a {}.",
    "a small photo of a {}.",
    "a low resolution photo of the {}.",
    "a product photo of a {}.",
    "this is a {}.",
    "a {} on a plain background.",
    "a black and white picture of a {}.",
    "a cropped photo of the {}.",
    "a dark photo of the {}.",
    "a bright photo of a {}.",
    "a centered photo of the {}.",
    "a studio shot of a {}.",
    "an old photo of a {}.",
    "a simple picture of a {}.",
    "a thumbnail of the {}.",
    "a shop photo of the {}.",
    "a snapshot of a {}.",
    "a pixelated photo of the {}.",
    "here is a {}.",
    "look at this {}.",
    "my favourite {}.",
    "someone's {}.",
    "a {} for sale.",
    "the {}, seen from the front.",
    "the {} on a white backdrop.",
    "a {} in a shop window.",
    "a {} in black and white.",
    "one {}.",
    "the {} in the picture.",
    "a single {}, centered.",
    "a {}, small and grey.",
    "an item of clothing: a {}.",
    "a fashion photo of a {}.",
    "a {} photographed in a studio.",
)
# Zero-shot prompt templates never seen in training captions.
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "an image showing the {}.",
    "the {} in grayscale.",
    "a blurry photo of the {}.",
    "a close-up of the {}.",
    "a catalogue image of the {}.",
    "the {}, photographed from above.",
    "a tiny picture of the {}.",
    "a scan of the {}.",
)
TEMPLATE_SETS = {"train": TRAIN_TEMPLATES, "heldout": HELDOUT_TEMPLATES}

_SPLIT_SALT = {"train": 0, "test": 1}
_A_BEFORE_VOWEL = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")


@dataclasses.dataclass(frozen=True)
class PromptSet:
  """The text side of the dataset, for captions and zero-shot prompts."""
  class_names: tuple[str, ...]
  phrases: tuple[tuple[str, ...], ...]
  train_templates: tuple[str, ...]
  heldout_templates: tuple[str, ...]


def prompt_set() -> PromptSet:
  """Class names, phrasings and both template sets (checked for consistency)."""
  if set(TRAIN_TEMPLATES) & set(HELDOUT_TEMPLATES):
    raise RuntimeError("fashion_captions: a template is both a training and a "
                       "held-out one")
  for t in TRAIN_TEMPLATES + HELDOUT_TEMPLATES:
    if t.count("{}") != 1:
      raise RuntimeError(f"fashion_captions: template {t!r} needs exactly one {{}}")
  return PromptSet(CLASS_NAMES, CLASS_PHRASES, TRAIN_TEMPLATES, HELDOUT_TEMPLATES)


def templates(which: str) -> list[str]:
  """"train" (caption) or "heldout" (zero-shot prompt) templates."""
  if which not in TEMPLATE_SETS:
    raise ValueError(f"fashion_captions: unknown template set {which!r}; known: "
                     f"{sorted(TEMPLATE_SETS)}")
  return list(TEMPLATE_SETS[which])


def fill(template: str, phrase: str) -> str:
  """The template with its "{}" replaced by `phrase`, "a" -> "an" before a vowel."""
  return _A_BEFORE_VOWEL.sub(r"\1n ", template.replace("{}", phrase))


def make_captions(labels: np.ndarray, split: str) -> list[list[str]]:
  """CAPTIONS_PER_IMAGE captions per label: distinct templates, random phrasings.

  A pure function of (labels, split, SEED).
  """
  labels = np.asarray(labels, np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_PHRASES)):
    raise ValueError(f"fashion_captions: labels must be in [0, {len(CLASS_PHRASES)}), "
                     f"got {labels.min()}..{labels.max()}")
  rng = np.random.default_rng([SEED, _SPLIT_SALT[split]])
  n, k = len(labels), CAPTIONS_PER_IMAGE
  # k distinct templates per image: the first k of a random permutation.
  chosen = np.argsort(rng.random((n, len(TRAIN_TEMPLATES))), axis=1)[:, :k]
  counts = np.array([len(p) for p in CLASS_PHRASES])[labels]
  phrase = (rng.random((n, k)) * counts[:, None]).astype(np.int64)
  # Every (template, phrasing) string once; captions are looked up.
  table = {(t, c, p): fill(TRAIN_TEMPLATES[t], CLASS_PHRASES[c][p])
           for t in range(len(TRAIN_TEMPLATES)) for c in range(len(CLASS_PHRASES))
           for p in range(len(CLASS_PHRASES[c]))}
  return [[table[t, c, p] for t, p in zip(ts, ps)]
          for ts, c, ps in zip(chosen.tolist(), labels.tolist(), phrase.tolist())]


def features(label_names: Sequence[str]) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(28, 28, 1)),
      "label": tfds.features.ClassLabel(names=list(label_names)),
      "captions": tfds.features.Sequence(tfds.features.Text(),
                                         length=CAPTIONS_PER_IMAGE),
      "file_name": tfds.features.Text(),
  })


def _dataset_dir(data_dir: str) -> str:
  return os.path.join(data_dir, NAME, VERSION)


def is_prepared(data_dir: str | None = None) -> bool:
  """Whether the dataset is complete in `data_dir` (metadata is written last)."""
  data_dir = os.path.expanduser(data_dir or fashion_mnist.default_data_dir())
  return os.path.exists(os.path.join(_dataset_dir(data_dir), "dataset_info.json"))


class _Examples:
  """One split's examples, built lazily (a Sized iterable for `tfds_writer`)."""

  def __init__(self, split: str, images: np.ndarray, labels: np.ndarray):
    self.split, self.images, self.labels = split, images, labels
    self.captions = make_captions(labels, split)

  def __len__(self) -> int:
    return len(self.labels)

  def __iter__(self):
    for i, (image, label, caps) in enumerate(
        zip(self.images, self.labels.tolist(), self.captions)):
      yield {"image": image, "label": label, "captions": caps,
             "file_name": f"{self.split}_{i:05d}"}


def _read_fashion_mnist(builder: tfds.core.DatasetBuilder, split: str
                        ) -> tuple[np.ndarray, np.ndarray]:
  """(PNG bytes, labels) of a split, in `tfds.load` order, without decoding."""
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={"image": tfds.decode.SkipDecoding()})
  images, labels = [], []
  for batch in tfds.as_numpy(ds.batch(8192)):
    images.extend(batch["image"].tolist())
    labels.append(batch["label"])
  return np.array(images, dtype=object), np.concatenate(labels).astype(np.int64)


def prepare(data_dir: str | None = None, source_dir: str | None = None) -> str:
  """Writes `fashion_mnist_captions` into `data_dir` (once; returns the data dir).

  Prepares `fashion_mnist` there first if needed (from `source_dir`, see
  `fashion_mnist.prepare`). Concurrent callers wait on a file lock and only
  one of them writes.
  """
  data_dir = os.path.expanduser(data_dir or fashion_mnist.default_data_dir())
  if is_prepared(data_dir):
    return data_dir
  fashion_mnist.prepare(data_dir, source_dir)
  lock = os.path.join(data_dir, f".{NAME}.prepare.lock")
  with fashion_mnist._file_lock(lock):  # pylint: disable=protected-access
    if is_prepared(data_dir):  # Another process wrote it while we waited.
      return data_dir
    # Leftovers of a killed writer (no metadata yet) would clash; start over.
    if tf.io.gfile.exists(_dataset_dir(data_dir)):
      tf.io.gfile.rmtree(_dataset_dir(data_dir))
    logging.info("Writing TFDS %s in %s (first use only)...", NAME, data_dir)
    start = time.perf_counter()
    source = tfds.builder(fashion_mnist.NAME, data_dir=data_dir)
    label_names = source.info.features["label"].names
    splits = {split: _Examples(split, *_read_fashion_mnist(source, split))
              for split in SPLITS}
    tfds_writer.write_dataset(
        NAME, data_dir, splits, features=features(label_names), version=VERSION,
        description=(f"Fashion-MNIST with {CAPTIONS_PER_IMAGE} synthetic captions "
                     f"per image (templates x class phrasings, seed {SEED}); "
                     f"written by big_vision_like.data.fashion_captions."))
    logging.info("Wrote %s in %.0f s.", NAME, time.perf_counter() - start)
  return data_dir
