"""The tf.data settings every pipeline of this codebase runs with.

Why fixed parallelism instead of tf.data's autotuner: with autotuning on,
every iterator owns a "model" thread that re-optimises the pipeline at a
period that doubles up to 60 s (`kOptimizationPeriodMaxMs` in TF's
`framework/model.h`), and deleting the iterator joins that thread. After a
long run the join waited 8 to 58 s in our runs (the main thread in
`RootDataset::Iterator::~Iterator` -> `Notification::WaitForNotification`,
native stack in BENCHMARKS.md, "Contrastive default"), between a run's final
results and its exit, and again for each evaluator's stream. With autotuning
off there is no such thread: an iterator ends at once.

What autotuning would choose instead: the map parallelism (here, the number
of CPUs this process may use, the size of tf.data's own thread pool) and the
prefetch depth (here, `config.input.prefetch` batches). On the 2-core box
we measured, the fixed values fed the training steps and the ImageNet-style
pipelines as fast as autotuning did, within the run-to-run spread (A/B in
BENCHMARKS.md, "Contrastive default" and "RandAugment"). tf.data's own
record parsing inside TFDS keeps AUTOTUNE, which without the autotuner
means min(16, CPUs) threads.
"""

from __future__ import annotations

import os

import tensorflow as tf


def parallelism() -> int:
  """Map parallelism: the CPUs this process may run on (its affinity mask)."""
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # Not on Linux.
    return max(1, os.cpu_count() or 1)


def resolve_parallelism(num_parallel_calls: int | None) -> int:
  """`num_parallel_calls` as given, or `parallelism()` for None/AUTOTUNE.

  AUTOTUNE is mapped too: with the autotuner off, tf.data would start it at
  min(16, CPUs) and leave it there, too few on a big accelerator host.
  """
  if num_parallel_calls is None or num_parallel_calls == tf.data.AUTOTUNE:
    return parallelism()
  if num_parallel_calls < 1:
    raise ValueError(f"num_parallel_calls must be >= 1, None or AUTOTUNE, "
                     f"got {num_parallel_calls}.")
  return int(num_parallel_calls)


def options() -> tf.data.Options:
  """Deterministic order, no autotuning thread (see the module doc)."""
  opts = tf.data.Options()
  opts.deterministic = True
  opts.autotune.enabled = False
  return opts


def apply(ds: tf.data.Dataset) -> tf.data.Dataset:
  """`ds` with `options()`; call it on the dataset an iterator is made from."""
  return ds.with_options(options())
