"""Evaluate a published model of the zoo on the ImageNet scorecard, no training.

  python -m big_vision_like.eval --workdir /tmp/eval_b16 --config \\
    'configs/zoo_eval.py:model=vit_base_patch16_224.augreg2_in21k_ft_in1k,evals=val+real'
  (add `,weights=/path/to/model.safetensors` for a local file instead of the hub cache)

Each eval preprocesses images with the zoo entry's published pp string (its
resolution, crop and normalisation). Classifiers are scored directly; a
two-tower model (CLIP, SigLIP) zero-shot, with CLIP's 80 prompts and curated
class names. Arguments: model (a zoo name), weights, evals (scorecard names
joined by '+', default all), data_dir, batch, text_file (the tokenizer file a
SigLIP or LiT model is published with, e.g. LiT-B16B.txt).
"""

import ml_collections

from big_vision_like import scorecard
from big_vision_like import zoo
from big_vision_like.config import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, model="", weights="", evals="", data_dir="", batch=64, text_file="")
  entry = zoo.get(arg.model)
  config = ml_collections.ConfigDict()
  config.update(zoo.model_config(entry))
  config.model_init = f"zoo:{entry.name}" + (f"={arg.weights}" if arg.weights else "")
  # Nothing trains: loss, optimizer and input are there because every config
  # has them; input names the first eval's data (never read by eval.py).
  config.optax_name = "sgd"
  config.lr = 0.0
  config.total_steps = 0
  config.loss = "softmax_xent" if entry.model != "two_tower" else (
      "siglip" if entry.fields.get("bias_init") is not None else "clip")
  evals = scorecard.imagenet(pp_image=entry.pp, data_dir=arg.data_dir or None,
                             include=scorecard.select(arg.evals), batch_size=arg.batch,
                             log_steps=1)
  if entry.model == "two_tower":
    from big_vision_like.evaluators import zeroshot
    evals = {k: zeroshot.as_zeroshot(ev, class_names=entry.class_names or "imagenet2012_clip",
                                     prompts="clip_imagenet",
                                     pp_txt=zoo.text_pp(entry, arg.text_file or None))
             for k, ev in evals.items()}
  config.evals = evals
  first = next(iter(evals.values()))
  config.input = dict(batch_size=arg.batch, data=first["data"], pp=entry.pp)
  return config
