"""Training targets read from a file keyed by file name: soft labels, LabelPooling.

  soft_labels('teacher.npz', 10)                    # the image's soft label
  inception_crop(224, box_key='crop_box')|...|label_pooling('maps.npz', 1000)

`soft_labels` writes, under `labels`, the class distribution the file gives
the example's `file_name`: a teacher's softmax (a prediction dump with
logits), a label set made uniform (ReaL-style JSON/CSV), or a label map
pooled over the whole image. `label_pooling` is ReLabel's LabelPooling
(Yun et al. 2021): the map pooled over the window the crop op actually took,
which the crop op records under `box_key` (`inception_crop`,
`decode_jpeg_and_inception_crop`, `random_crop`, `central_crop`). Flips and
resizes after the crop do not change which part of the image the crop shows,
so the target stays right; ops that move pixels within the crop (RandAugment's
rotate/shear/translate) are not accounted for.

File formats and the pooling rule are in `soft_labels.py`. The maps live in
memory as graph constants (`soft_labels.MAX_TABLE_BYTES`), loaded once per
process and file. Datasets without a `file_name` feature get the training
pipeline's position names (`train_00042`) when a pp string uses these ops,
which `tools/make_label_maps` writes too. An example whose name is not in
the file stops the run with the name and the file (the input pipeline adds
the record).

Mixup and CutMix (`config.mixup`) mix these targets like any dense labels:
CutMix weighs the two crops' pooled targets by the area actually pasted. The
ReLabel authors' training code does the same (CutMix on the batch of pooled
targets), rather than pooling the pasted patch's own region.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

import tensorflow as tf

from big_vision_like import soft_labels as soft_labels_lib
from big_vision_like.registry import PP_OPS

Example = dict[str, Any]

_LOCK = threading.Lock()
_TABLES: dict[tuple, "_Table"] = {}


class _Table:
  """One file's maps as TF constants and a file_name -> row hash table."""

  def __init__(self, maps: soft_labels_lib.LabelMaps):
    self.path, self.num_classes, self.grid = maps.origin, maps.num_classes, maps.grid
    n = len(maps.file_name)
    self.index = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(maps.file_name, tf.string), tf.range(n, dtype=tf.int64)),
        default_value=-1)
    self.ids = tf.constant(maps.ids.reshape(n, -1), tf.int32)        # [N, gh*gw*k]
    self.scores = tf.constant(maps.scores.reshape(n, -1), tf.float32)
    self.k = int(maps.ids.shape[-1])


def _table(path: str, num_classes: int | None, temperature: float,
           topk: int | None) -> _Table:
  stat = os.stat(path) if os.path.exists(path) else None
  key = (os.path.abspath(path), stat and stat.st_mtime_ns, stat and stat.st_size,
         num_classes, temperature, topk)
  with _LOCK:
    if key not in _TABLES:
      maps = soft_labels_lib.load(path, num_classes=num_classes,
                                  temperature=temperature, topk=topk)
      _TABLES[key] = _Table(maps)
    return _TABLES[key]


def _cell_weights(box: tf.Tensor, grid: tuple[int, int]) -> tf.Tensor:
  """[gh, gw] area of each cell inside box [ymin, xmin, ymax, xmax] (fractions)."""
  gh, gw = grid
  box = tf.clip_by_value(tf.cast(box, tf.float32), 0.0, 1.0)
  ys = tf.linspace(0.0, 1.0, gh + 1)
  xs = tf.linspace(0.0, 1.0, gw + 1)
  dy = tf.nn.relu(tf.minimum(box[2], ys[1:]) - tf.maximum(box[0], ys[:-1]))
  dx = tf.nn.relu(tf.minimum(box[3], xs[1:]) - tf.maximum(box[1], xs[:-1]))
  return dy[:, None] * dx[None, :]


def _make(op: str, path: str, num_classes: int | None, box_key: str | None,
          key: str, name_key: str, temperature: float, topk: int | None,
          keep_box: bool) -> Callable[[Example], Example]:
  if not isinstance(path, str) or not path:
    raise ValueError(f"{op}: the first argument is the label file's path, got {path!r}")
  table = _table(path, num_classes, temperature, topk)
  gh, gw = table.grid
  depth = table.num_classes

  def fn(data: Example) -> Example:
    if name_key not in data:
      raise ValueError(
          f"{op}: no {name_key!r} in the example to look {path} up by (keys: "
          f"{sorted(k for k in data if not k.startswith('_'))}); training pipelines "
          f"name records without one `{{split}}_{{index:05d}}`")
    if box_key is not None and box_key not in data:
      raise ValueError(
          f"{op}: no crop box {box_key!r} in the example; give the crop op "
          f"`box_key={box_key!r}` (inception_crop, decode_jpeg_and_inception_crop, "
          f"random_crop, central_crop) before {op}")
    name = tf.convert_to_tensor(data[name_key])
    row = table.index.lookup(name)
    # One string, so that the whole message stays on the error's first line.
    found = tf.debugging.Assert(row >= 0, [tf.strings.join(
        [f"pp op {op}: file_name '", name, f"' is not in {path}"])])
    with tf.control_dependencies([found]):
      row = tf.identity(row)
    ids = tf.gather(table.ids, row)
    scores = tf.reshape(tf.gather(table.scores, row), [gh, gw, table.k])
    if box_key is None:
      weights = tf.ones([gh, gw], tf.float32)
    else:
      weights = _cell_weights(data[box_key], (gh, gw))
    mass = tf.reshape(scores * weights[:, :, None], [-1])
    dense = tf.math.unsorted_segment_sum(mass, ids, depth)
    total = tf.reduce_sum(dense)
    covered = tf.debugging.Assert(total > 0, [tf.strings.join(
        [f"pp op {op}: the crop box {box_key} covers no label mass of '", name,
         "'"])])
    with tf.control_dependencies([covered]):
      dense = dense / total
    dense.set_shape([depth])
    out = {k: v for k, v in data.items() if keep_box or k != box_key}
    out[key] = dense
    return out
  return fn


@PP_OPS.register("soft_labels")
def get_soft_labels(path: str, num_classes: int | None = None, *,
                    box_key: str | None = None, key: str = "labels",
                    name_key: str = "file_name", temperature: float = 1.0,
                    topk: int | None = None, keep_box: bool = False
                    ) -> Callable[[Example], Example]:
  """The example's class distribution from `path`, keyed by `name_key`, as `key`.

  Label maps are pooled over the whole image, or over `box_key`'s window
  when given (then this is `label_pooling`). `num_classes` checks the file's
  class count (label sets take it as theirs). `temperature`/`topk` apply to a
  prediction dump's logits. The box key is dropped unless `keep_box`.
  """
  return _make("soft_labels", path, num_classes, box_key, key, name_key,
               temperature, topk, keep_box)


get_soft_labels.reads_file_name = True


@PP_OPS.register("label_pooling")
def get_label_pooling(path: str, num_classes: int | None = None, *,
                      box_key: str = "crop_box", key: str = "labels",
                      name_key: str = "file_name", keep_box: bool = False
                      ) -> Callable[[Example], Example]:
  """ReLabel's LabelPooling: the label map of `path` pooled over the crop window.

  The crop op must have recorded its window under `box_key`.
  """
  return _make("label_pooling", path, num_classes, box_key, key, name_key,
               1.0, None, keep_box)


get_label_pooling.reads_file_name = True
