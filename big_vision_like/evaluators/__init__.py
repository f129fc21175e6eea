"""Evaluators, and the two functions every entry point runs them with.

`make_evaluators` turns `config.evals` into evaluator objects (each type is a
registry entry: classification, multilabel, calibration, zeroshot,
retrieval, fewshot); `run_evals` runs the due ones and writes their scalars, texts and
pictures. `train.py` calls both inside the loop, `eval.py` once on a
checkpoint.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np

from big_vision_like import durations
from big_vision_like import errors
from big_vision_like import registry


def make_evaluators(config: Any, predict_fn: Callable, mesh: Any, data_axes: Any, *,
                    batch_size: int, total_steps: int, num_train_examples: int | None,
                    workdir: str | None = None) -> list[tuple[str, Any, int]]:
  """[(name, evaluator, every_n_steps)] from `config.evals`."""
  out = []
  for name, ev in (config.get("evals") or {}).items():
    ev = dict(ev)
    cls = registry.EVALUATORS.get(ev.pop("type"))
    every = durations.to_steps(ev, "log", batch_size=batch_size,
                               num_examples=num_train_examples,
                               total_steps=total_steps, where=f"config.evals.{name}")
    for unit in durations.UNITS:  # set or not (an override leaves the others at None)
      ev.pop(f"log_{unit}", None)
    ev.setdefault("batch_size", batch_size)
    try:
      evaluator = cls(predict_fn, mesh=mesh, data_axes=data_axes, name=name,
                      workdir=workdir, **ev)
    except (TypeError, ValueError, KeyError) as e:
      raise errors.ConfigError(f"config.evals.{name}: {e}") from e
    out.append((name, evaluator, every))
  everies = {name: every for name, _, every in out}
  for name, evaluator, every in out:
    ref = getattr(evaluator, "reference", None)
    if ref is not None and everies.get(ref, -1) != every:
      raise errors.ConfigError(
          f"config.evals.{name}.reference={ref!r}: " + (
              f"no evaluator {ref!r} in config.evals" if ref not in everies else
              f"it must run at the same steps (every {every} vs {everies[ref]}), "
              f"or the drop would compare different params"))
  return out


def run_evals(evaluators: list[tuple[str, Any, int]], params: Any, step: int, writer: Any,
              *, final: bool = False,
              before: Callable[[str], None] | None = None) -> dict[str, float]:
  """Runs the due evaluators; writes scalars, images and texts; returns scalars.

  `before(name)` is called before each evaluator runs (train.py's watchdog
  phase).

  An evaluator with `reference="val"` also gets `drop/{metric}` = val's
  value minus its own, for its `drop_metrics` both report.
  """
  results, images, texts, ran = {}, {}, {}, {}
  for name, evaluator, every in evaluators:
    if final or (every and step % every == 0):
      if before is not None:
        before(name)
      t0 = time.perf_counter()
      ran[name] = evaluator.run(params, step)
      for k, v in ran[name].items():
        if isinstance(v, str):
          texts[f"{name}/{k}"] = v
        elif isinstance(v, np.ndarray) and v.ndim == 3:
          images[f"{name}/{k}"] = v[None]
        else:
          results[f"{name}/{k}"] = float(v)
      logging.info("eval %s at step %d: %s (%.1fs)", name, step,
                   {k: round(v, 5) for k, v in results.items() if k.startswith(name + "/")},
                   time.perf_counter() - t0)
      for k, v in ran[name].items():
        if isinstance(v, str):
          logging.info("eval %s %s:\n%s", name, k, v)
  for name, evaluator, _ in evaluators:
    ref = getattr(evaluator, "reference", None)
    if name in ran and ref in ran:
      for metric in evaluator.drop_metrics:
        if metric in ran[name] and metric in ran[ref]:
          results[f"{name}/drop/{metric}"] = float(ran[ref][metric]) - float(ran[name][metric])
  if results:
    writer.write_scalars(step, results)
  if images:
    writer.write_images(step, images)
  if texts:
    writer.write_texts(step, texts)
  return results
