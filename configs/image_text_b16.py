"""CLIP or SigLIP from scratch: ViT-B/16 image tower + B text transformer, batch 32k.

  python -m big_vision_like.train --config configs/image_text_b16.py:loss=siglip,tokenizer=/path/spm.model \\
      --workdir gs://...
  python -m big_vision_like.train --config configs/image_text_b16.py:loss=clip,... --workdir ...
  python -m big_vision_like.train --config configs/image_text_b16.py:runlocal --workdir /tmp/x

Recipes:
- "siglip" / "chunked_siglip" (Zhai et al. 2023, "Sigmoid Loss for Language
  Image Pre-Training"): t = 10 and b = -10 at init, Adam(b2=0.95), lr 1e-3,
  weight decay 1e-4, 16 text tokens, MAP pooling in the image tower, 768-d
  embedding. `chunked_siglip` computes the same loss passing text
  embeddings around the data axis (memory O(B_global x B_local)).
- "clip" (Radford et al. 2021): t = 1/0.07, AdamW(b2=0.98, eps 1e-6),
  lr 5e-4, weight decay 0.2, 77 text tokens.
Both: batch 32,768, 10k warmup steps and cosine decay, 3B examples seen
(`examples=`), `gap`-free text pooling "last" for CLIP, "map" for SigLIP.

The data is any TFDS image-text dataset with an image and one caption per
example (`data=laion400m/images`, `text_key=caption`; a dataset that is not
prepared stops at start-up with the command to prepare it). The tokenizer
is a sentencepiece model from a path (`tokenizer=`; 32k vocab as in SigLIP);
without one the dependency-free byte tokenizer is used.

`lit_init=WORKDIR` turns the recipe into LiT: the image tower (the
`configs/vit_i1k.py:variant=B/16` architecture) is loaded from that
supervised run and locked; only the text tower trains.

Evaluation: the zero-shot ImageNet scorecard (val, ReaL, v2, A, R, Sketch,
...) with the standard class names and prompts as data; `evals=val+real`
keeps only the named ones.

`runlocal` keeps the recipe but trains a tiny model for 10 steps on the
embedded Fashion-MNIST captions with the byte tokenizer.
"""

import ml_collections

from big_vision_like import scorecard
from big_vision_like.config import parse_arg

RECIPES = {
    "siglip": dict(optax="adam", optax_kw=dict(b1=0.9, b2=0.95), lr=1e-3, wd=1e-4,
                   t=10.0, b=-10.0, text_len=16, img_pool="map", txt_pool="map"),
    "clip": dict(optax="adamw", optax_kw=dict(b1=0.9, b2=0.98, eps=1e-6), lr=5e-4,
                 wd=0.2, t=1 / 0.07, b=None, text_len=77, img_pool="tok",
                 txt_pool="last"),
}
# A few of CLIP's ImageNet prompt templates (the full list of 80 can be
# given as a file with `prompts=`); held out from any training captions.
PROMPTS = ("a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.",
           "a sculpture of a {}.", "a rendering of a {}.", "graffiti of a {}.",
           "a cropped photo of the {}.", "a tattoo of a {}.", "a sketch of a {}.",
           "a photo of the large {}.", "art of the {}.", "a drawing of a {}.")


def get_config(arg=None):
  arg = parse_arg(arg, loss="siglip", data="laion400m/images", text_key="caption",
                  tokenizer="", examples=3_000_000_000, batch=32_768, data_dir="",
                  lit_init="", runlocal=False, evals="")
  recipe = RECIPES["clip" if arg.loss == "clip" else "siglip"]
  tokenizer = f"sentencepiece:{arg.tokenizer}" if arg.tokenizer else "bytes"
  vocab = 32_000 if arg.tokenizer else 259
  text_len = recipe["text_len"] if arg.tokenizer else 64  # bytes are longer
  pp_txt = f"canonicalize_text|tokenize({text_len}, tokenizer={tokenizer!r}, key='text')"
  data_dir = arg.data_dir or None

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_examples = arg.examples
  config.input = dict(
      data=dict(name=arg.data, split="train", data_dir=data_dir),
      # The crop as this config always had it (aspect ratios up to 4/3, 32
      # tries, resize rounded); big_vision's defaults differ slightly (up to
      # 1.33, 100 tries, truncated): see README "big_vision pp strings".
      pp=(f"decode_jpeg_and_inception_crop(224, area_min=50, "
          f"ratio_max=1.3333333333333333, max_attempts=32, rounding='round')"
          f"|flip_lr"
          f"|rename(text={arg.text_key!r})|{pp_txt}"
          f"|keep('image', 'text')"),
      batch_size=arg.batch, shuffle_buffer_size=250_000, cache=False,
      # Each host reads only its 1/P share of the records (on a pod, "global"
      # would make every host read the whole dataset); the data order then
      # depends on the process count.
      order="per_process")
  config.device_value_range = (-1, 1)

  config.model_name = "two_tower"
  config.model = dict(
      image_model="vit",
      image=dict(variant="B/16", pool_type=recipe["img_pool"], posemb="learn"),
      text_model="text_transformer",
      text=dict(variant="B", vocab_size=vocab, pool_type=recipe["txt_pool"]),
      embed_dim=768, temperature_init=recipe["t"], bias_init=recipe["b"])
  config.loss = arg.loss
  if arg.lit_init:
    # LiT (Zhai et al. 2022): the image tower comes from a supervised run of
    # this codebase (e.g. configs/vit_i1k.py:variant=B/16) and stays locked,
    # its fresh projection included; only the text tower learns.
    config.model_init = ml_collections.ConfigDict({"img": arg.lit_init})
    config.model_init_skip = ["img/head/.*"]
    config.frozen = ["img/.*"]
    config.model.image = dict(variant="B/16", pool_type="gap", posemb="sincos2d")

  config.optax_name = recipe["optax"]
  config.optax = dict(recipe["optax_kw"])
  config.lr = recipe["lr"]
  config.wd = recipe["wd"]
  config.schedule = dict(warmup_steps=10_000, decay_type="cosine")
  config.grad_clip_norm = 1.0

  config.sharding_strategy = [(".*", "fsdp(min_size_mb=4)")]
  config.mesh = [("data", -1), ("fsdp", 1)]
  config.log_training_steps = 50
  config.ckpt_steps = 1000
  config.keep_ckpt_steps = 10_000
  zeroshot = dict(class_names="imagenet2012", prompts=list(PROMPTS), pp_txt=pp_txt)
  config.evals = scorecard.imagenet(
      pp_image="decode_jpeg_and_central_crop(224)", data_dir=data_dir,
      log_steps=5000, evaluator="zeroshot", extra=zeroshot,
      include=scorecard.select(arg.evals, [n for n in scorecard.NAMES if n != "minival"]))

  if arg.runlocal:
    fashion_pp = ("decode(1)|value_range(-1, 1)"
                  "|choice(key='captions', key_result='text')|" + pp_txt
                  + "|keep('image', 'text')")
    config.total_examples = None
    config.total_steps = 10
    config.input.data = dict(name="fashion_mnist_captions", split="train", data_dir=data_dir)
    config.input.pp = fashion_pp
    config.input.batch_size = 16
    config.input.shuffle_buffer_size = 100
    config.device_value_range = None
    config.model.image = dict(variant="Ti/7", pool_type=recipe["img_pool"])
    config.model.text = dict(variant="Ti", vocab_size=vocab, pool_type=recipe["txt_pool"])
    config.model.embed_dim = 64
    config.schedule.warmup_steps = 2
    config.log_training_steps = 2
    config.ckpt_steps = 5
    config.keep_ckpt_steps = None
    config.evals = dict(zeroshot=dict(
        type="zeroshot", data=dict(name="fashion_mnist", split="test[:64]", data_dir=data_dir),
        pp="decode(1)|value_range(-1, 1)|keep('image', 'label')", label_key="label",
        class_names="fashion_mnist", prompts="fashion_mnist_heldout", pp_txt=pp_txt,
        batch_size=16, log_steps=5))
  return config
