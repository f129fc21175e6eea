"""One name -> factory registry for everything a config refers to by name.

Configs name models, losses, preprocessing ops, evaluators and sharding rules as
strings. Each kind has one `Registry`; looking up an unknown name fails at
start-up with the list of known names and the closest match, instead of a
KeyError deep inside the training loop.

Registries import the modules that populate them lazily (on first lookup), so
`import big_vision_like.registry` stays cheap and circular imports are avoided.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Iterable

from big_vision_like.errors import UnknownNameError, unknown_name_message  # pylint: disable=unused-import


class Registry:
  """Maps names to factories for one kind of component (e.g. "pp op")."""

  def __init__(self, kind: str, modules: Iterable[str] = ()):
    self.kind = kind
    self._modules = list(modules)
    self._items: dict[str, Any] = {}
    self._tags: dict[str, dict[str, Any]] = {}
    self._loaded = False

  def register(self, name: str, **tags: Any) -> Callable[[Any], Any]:
    """Decorator: `@REGISTRY.register("name")` on a function or class.

    `tags` describe the entry for whoever looks it up, e.g. the task a loss
    belongs to: `@LOSSES.register("clip", task="image_text")`.
    """
    def decorator(obj):
      if name in self._items and self._items[name] is not obj:
        raise ValueError(f"{self.kind} {name!r} is registered twice: "
                         f"{self._items[name]!r} and {obj!r}")
      self._items[name] = obj
      self._tags[name] = dict(tags)
      return obj
    return decorator

  def tags(self, name: str) -> dict[str, Any]:
    """The tags `name` was registered with (fails like `get` for unknown names)."""
    self.get(name)
    return dict(self._tags[name])

  def names_with(self, **tags: Any) -> list[str]:
    """The names registered with all of `tags`."""
    return [n for n in self.names()
            if all(self._tags[n].get(k) == v for k, v in tags.items())]

  def _load(self) -> None:
    # Mark loaded only once every module imported: a module that fails to
    # import must fail every lookup loudly, not leave a half-filled registry.
    if not self._loaded:
      for module in self._modules:
        if module.endswith(".*"):  # Every module of a package (tasks/: one file each).
          package = importlib.import_module(module[:-2])
          for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{info.name}")
        else:
          importlib.import_module(module)
      self._loaded = True

  def names(self) -> list[str]:
    self._load()
    return sorted(self._items)

  def __contains__(self, name: str) -> bool:
    self._load()
    return name in self._items

  def get(self, name: str) -> Any:
    """Returns the registered object, or fails naming the known names."""
    self._load()
    if name in self._items:
      return self._items[name]
    raise UnknownNameError(unknown_name_message(self.kind, name, self.names()))



MODELS = Registry("model", ["big_vision_like.models.vit",
                            "big_vision_like.models.resnet",
                            "big_vision_like.models.text",
                            "big_vision_like.models.bert",
                            "big_vision_like.models.two_tower"])
# Each loss is tagged with the task that trains with it (tasks/).
LOSSES = Registry("loss", ["big_vision_like.losses", "big_vision_like.contrastive"])
TASKS = Registry("task", ["big_vision_like.tasks.*"])  # a new task is a new file there
PP_OPS = Registry("pp op", ["big_vision_like.pp.ops_general",
                            "big_vision_like.pp.ops_image",
                            "big_vision_like.pp.randaug",
                            "big_vision_like.pp.ops_text",
                            "big_vision_like.pp.ops_soft_labels"])
EVALUATORS = Registry("evaluator", ["big_vision_like.evaluators.classification",
                                     "big_vision_like.evaluators.multilabel",
                                     "big_vision_like.evaluators.calibration",
                                     "big_vision_like.evaluators.zeroshot",
                                     "big_vision_like.evaluators.retrieval",
                                     "big_vision_like.evaluators.fewshot"])
TOKENIZERS = Registry("tokenizer", ["big_vision_like.text.tokenizers"])
