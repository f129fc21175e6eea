"""The contrastive main job: a two-tower image-text model on Fashion-MNIST captions, on CPU.

  python -m big_vision_like.train --config configs/fashion_contrastive.py --workdir DIR
  python -m big_vision_like.train --config configs/fashion_contrastive.py:loss=clip ...

Images of the embedded Fashion-MNIST paired with captions made from class
names through training templates (`fashion_mnist_captions`, prepared on
first use). Zero-shot classification of the Fashion-MNIST test set uses
prompt templates held out from the training captions; retrieval uses the
test captions.

Arguments: loss (siglip | clip | chunked_siglip), epochs, batch, runlocal, data
(the training dataset's TFDS name, default fashion_mnist_captions; e.g. a
copy written by tools/corrupt_captions or tools/filter_pairs), text (bpe |
bytes: the tokenizer, see `TEXT_SIDES`).
"""

import os

import ml_collections

from big_vision_like import config as config_lib
from big_vision_like import scorecard
from big_vision_like.config import parse_arg
from big_vision_like.text import tokenizers

_MAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fashion_vit.py")

# The text side, by the `text` argument: (tokenizer spec, tokenize length,
# BOS). Both lengths fit the longest canonicalised caption, so no class name
# is cut: 10 BPE tokens + <start> + <end>, or 47 bytes + EOS.
#
# "bpe" (the default) is CLIP's byte-level BPE with its bundled vocabulary.
# Against UTF-8 bytes it made held-out zero-shot higher and stable across
# seeds (mean ensemble 0.887-0.891 over three seeds, where bytes gave
# 0.79-0.88 by seed and machine), and the model 44% cheaper (0.028 instead
# of 0.050 GFLOPs per image: the text tower reads 12 tokens, not 48), so 3.5
# epochs now take less time than 4 did at half the speed. BENCHMARKS.md,
# "Contrastive default". A likely reason for the stability: each class name
# and template word is one token, so an unseen prompt word is one unfamiliar
# token rather than a new byte pattern around the class name, and "tshirt"
# (canonicalised "t-shirt") no longer contains "shirt". The price is a
# 49,408 x 128 embedding table, mostly rows no caption uses.
TEXT_SIDES = {"bpe": ("clip", 12, True), "bytes": ("bytes", 48, False)}
_TEXT_SIDE = "bpe"
TOKENIZER, TEXT_LEN, BOS = TEXT_SIDES[_TEXT_SIDE]


def pp_txt(text: str = _TEXT_SIDE, key: str = "text") -> str:
  """Canonicalise and tokenize `key` the way the text tower was trained."""
  if text not in TEXT_SIDES:
    raise ValueError(f"fashion_contrastive: text={text!r} is unknown; known: "
                     f"{sorted(TEXT_SIDES)}")
  tok, length, bos = TEXT_SIDES[text]
  return (f"canonicalize_text(key={key!r})"
          f"|tokenize({length}, tokenizer={tok!r}, bos={bos}, key={key!r})")


# The text tower: a 2-block transformer, pooled at the end token. (Dropout
# 0.1 in it was tried with the bytes tokenizer: +0.010 and -0.028 held-out
# zero-shot over two seeds; not kept.)
TEXT = dict(width=128, depth=2, mlp_dim=256, num_heads=4, pool_type="last")


def text_tower(text: str = _TEXT_SIDE) -> dict:
  """TEXT with the vocabulary size and pad id of the `text` side's tokenizer."""
  tok = tokenizers.get_tokenizer(TEXT_SIDES[text][0])
  return dict(TEXT, vocab_size=tok.vocab_size, pad_id=tok.pad_id)


def image_tower() -> dict:
  """The supervised main job's model (configs/fashion_vit.py) without its head.

  Read from that config rather than copied, so that the two stay the same
  model (the 6-block copy that once lived here had fallen behind when the
  main job went to 4 blocks). With the bytes text side, 4 blocks cost 15%
  fewer FLOPs per image than 6 at the same held-out zero-shot (0.8753 vs
  0.8763, one machine). See BENCHMARKS.md, "Contrastive default".
  """
  image = config_lib.load_config(_MAIN).model.to_dict()
  image.pop("num_classes")
  return image


def zeroshot_eval(split: str = "test", text: str = _TEXT_SIDE) -> dict:
  """Zero-shot Fashion-MNIST with held-out prompts (equal and ZPE-weighted)."""
  return dict(type="zeroshot", data=dict(name="fashion_mnist", split=split),
              pp="decode(1)|value_range(-1, 1)|keep('image', 'label')",
              label_key="label", class_names="fashion_mnist",
              prompts="fashion_mnist_heldout", pp_txt=pp_txt(text), batch_size=500,
              log_percent=50)


EPOCHS = 3.5


def get_config(arg=None):
  arg = parse_arg(arg, loss="siglip", epochs=EPOCHS, batch=256, runlocal=False,
                  data="fashion_mnist_captions", text=_TEXT_SIDE)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_epochs = arg.epochs

  # Every deterministic op comes before the first random one (`flip_lr`), so
  # the input pipeline caches all of them after the first epoch: all three
  # captions of an image are tokenized once, and `choice` picks a row of
  # tokens every epoch. Choosing first, then tokenizing, ran the Python BPE
  # tokenizer on every example of every epoch, which held the steps to
  # ~450-560 img/s against ~600 (BENCHMARKS.md, "Contrastive default").
  config.input = dict(
      data=dict(name=arg.data, split="train"),
      pp=("decode(1)|value_range(-1, 1)|" + pp_txt(arg.text, key="captions")
          + "|flip_lr|choice(key='captions', key_result='text')"
          "|keep('image', 'text')"),
      batch_size=arg.batch, shuffle_buffer_size=60_000, cache=True)

  config.model_name = "two_tower"
  siglip = "siglip" in arg.loss
  config.model = dict(image=image_tower(), text=text_tower(arg.text), embed_dim=128,
                      # SigLIP: t = 10, b = -10 (Zhai et al. 2023); CLIP: t = 1/0.07.
                      temperature_init=10.0 if siglip else 1 / 0.07,
                      bias_init=-10.0 if siglip else None)
  config.loss = arg.loss

  config.optax_name = "adamw"
  config.optax = dict(b2=0.99)
  config.lr = 2e-3
  config.wd = 1e-4
  config.schedule = dict(warmup_epochs=0.5, decay_type="cosine")
  config.grad_clip_norm = 1.0

  config.mesh = [("data", -1)]
  config.log_training_steps = 100
  config.ckpt_epochs = 1
  config.evals = dict(
      zeroshot=scorecard.small(zeroshot_eval(text=arg.text)),  # + per-class, calibration, dumps
      zeroshot_zpe=dict(zeroshot_eval(text=arg.text), ensemble="weighted"),
      retrieval=dict(type="retrieval",
                     data=dict(name="fashion_mnist_captions", split="test[:2000]"),
                     pp=("decode(1)|value_range(-1, 1)|" + pp_txt(arg.text, key="captions")
                         + "|keep('image', 'captions')"),
                     batch_size=500, log_percent=50),
  )

  if arg.runlocal:
    config.total_epochs = None
    config.total_steps = 20
    config.schedule = dict(warmup_steps=2, decay_type="cosine")
    config.log_training_steps = 5
    config.ckpt_epochs = None
    config.ckpt_steps = 10
    for ev in config.evals.values():
      ev.data.split = "test[:500]"
  return config
