"""The full ImageNet scorecard as one config line.

    from big_vision_like import scorecard
    config.evals = scorecard.imagenet(pp_image="decode_jpeg_and_central_crop(224)",
                                      log_steps=2500)

gives the evaluations that tell how good an ImageNet model really is:

| eval         | dataset                                  | evaluator                     |
| ------------ | ---------------------------------------- | ----------------------------- |
| val          | imagenet2012 validation                  | classification + per-class    |
| minival      | imagenet2012 train[99%:]                 | classification                |
| real         | imagenet2012_real validation             | multilabel (ReaL + strata)    |
| multilabel   | imagenet2012_multilabel validation       | multilabel, Shankar et al.    |
| imagenet_m   | imagenet2012_multilabel imagenet_m (68)  | multilabel, Shankar et al.    |
| v2_mf/t07/top| imagenet_v2 x3 configs                   | classification, drop vs val   |
| a, r         | imagenet_a, imagenet_r (200 classes)     | classification on the subset  |
| sketch       | imagenet_sketch                          | classification, drop vs val   |
| calibration  | imagenet2012 validation                  | calibration (ECE, NLL, Brier) |

`pp_image` is the image part of the eval pp (it must leave `image`); the
helper appends the label handling each dataset needs. `evaluator="zeroshot"`
scores every entry with a two-tower model's zero-shot classifier (give
class_names, prompts and pp_txt in `extra`); `extra` adds keyword arguments
to every evaluator. `include` picks a subset
of the names above; configs take it from their `:evals=val+real` argument
through `select`.

`small` turns one test-split evaluator into the small scorecard that the
Fashion-MNIST configs run (per-class views, calibration, prediction dumps).
"""

from __future__ import annotations

from typing import Any, Sequence

from big_vision_like.data import imagenet_variants

NAMES = ("val", "minival", "real", "multilabel", "imagenet_m", "v2_mf", "v2_t07",
         "v2_top", "a", "r", "sketch", "calibration")

_V2 = {"v2_mf": "matched-frequency", "v2_t07": "threshold-0.7", "v2_top": "topimages"}


def small(evaluator: dict[str, Any]) -> dict[str, Any]:
  """One test-split evaluator with the scorecard's views switched on.

  For small datasets (the Fashion-MNIST configs): the per-class accuracies
  with the worst classes by name and the top-confusions picture, calibration
  (ECE, NLL, Brier, reliability diagram) from the same pass's logits, and a
  prediction dump with logits that `tools/score_predictions` re-scores. A
  classification evaluator or a zeroshot one (whose scorer gets the options).
  """
  if evaluator.get("type") not in ("classification", "zeroshot"):
    raise ValueError(f"scorecard.small: a classification or zeroshot evaluator, got "
                     f"type={evaluator.get('type')!r}")
  return dict(evaluator, per_class=True, calibration=True, save_predictions=True,
              save_logits=True)


def select(spec: str, default: Sequence[str] = NAMES) -> tuple[str, ...]:
  """`"val+real"` -> ("val", "real"); `""` -> `default`; `"all"` -> every name.

  For a config's `:evals=` argument, so that a run on a machine without every
  ImageNet variant prepared can keep the ones it has.
  """
  if not spec:
    return tuple(default)
  if spec == "all":
    return NAMES
  names = tuple(n.strip() for n in spec.split("+") if n.strip())
  unknown = [n for n in names if n not in NAMES]
  if unknown or not names:
    raise ValueError(f"evals={spec!r}: unknown scorecard evals {unknown}; give names "
                     f"joined by '+' from {', '.join(NAMES)} (or 'all')")
  return names


def _keep(*keys: str) -> str:
  return "|keep(" + ", ".join(repr(k) for k in ("image", *keys)) + ")"


def imagenet(*, pp_image: str, data_dir: str | None = None,
             include: Sequence[str] = NAMES, evaluator: str = "classification",
             batch_size: int | None = None, save_predictions: bool = False,
             extra: dict[str, Any] | None = None, **log: Any) -> dict[str, dict]:
  """{name: eval config} for `config.evals`; `log` is e.g. log_steps=2500.

  Every evaluator runs at the same steps (so drops compare the same params);
  caching is off (decoded ImageNet-size sets do not fit in host memory).
  """
  unknown = [n for n in include if n not in NAMES]
  if unknown:
    raise ValueError(f"scorecard.imagenet: unknown evals {unknown}; known: {NAMES}")
  if not log:
    raise ValueError("scorecard.imagenet: say how often to evaluate, e.g. log_steps=2500")

  def data(name: str, split: str) -> dict:
    return dict(name=name, split=split, data_dir=data_dir)

  def single(name: str, split: str, **kw) -> dict:
    return dict(type=evaluator, data=data(name, split), label_key="label",
                pp=pp_image + _keep("label"), **kw)

  shankar = _keep("original_label", "correct_multi_labels", "unclear_multi_labels",
                  "is_problematic")
  evals = {
      "val": single("imagenet2012", "validation", per_class=True,
                    class_names="imagenet2012"),
      "minival": single("imagenet2012", imagenet_variants.MINIVAL_SPLIT),
      "real": dict(type="multilabel", data=data("imagenet2012_real", "validation"),
                   set_key="real_label", label_key="original_label",
                   pp=pp_image + _keep("original_label", "real_label")),
      "multilabel": dict(type="multilabel", scheme="shankar",
                         data=data("imagenet2012_multilabel", "validation"),
                         pp=pp_image + shankar),
      "imagenet_m": dict(type="multilabel", scheme="shankar",
                         data=data("imagenet2012_multilabel", "imagenet_m"),
                         pp=pp_image + shankar),
      **{name: single(f"imagenet_v2/{cfg}", "test", reference="val")
         for name, cfg in _V2.items()},
      "a": single("imagenet_a", "test", class_subset="imagenet_a", reference="val"),
      "r": single("imagenet_r", "test", class_subset="imagenet_r", reference="val"),
      "sketch": single("imagenet_sketch", "test", reference="val"),
      "calibration": dict(type="calibration", data=data("imagenet2012", "validation"),
                          label_key="label", pp=pp_image + _keep("label")),
  }
  out = {}
  for name in include:
    ev = dict(evals[name], cache=False, **log)
    if ev.get("reference") not in (None, *include):
      del ev["reference"]  # the reference is not part of this scorecard
    if batch_size is not None:
      ev["batch_size"] = batch_size
    if save_predictions:
      ev["save_predictions"] = True
    if evaluator == "zeroshot":  # every scorer (ReaL, calibration, ...) zero-shot
      from big_vision_like.evaluators import zeroshot  # pylint: disable=g-import-not-at-top
      ev = zeroshot.as_zeroshot(ev)
    ev.update(extra or {})
    out[name] = ev
  return out
