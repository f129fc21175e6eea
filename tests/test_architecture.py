"""The shape of the code: no import cycles, a leaf errors module, a short train(),
README's config reference in step with the key table, no paths outside the repo.

Static checks over the source (ast), so they run in a blink and fail with the
offending module, function or key.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess

from big_vision_like import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "big_vision_like"


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
  """{module: package modules it imports}, function-level imports included.

  `from big_vision_like.x import y` counts as importing `x.y` when that is a
  module, else `x`; importing `a.b.c` also imports the packages `a.b` and `a`.
  """
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                   else node.module for a in node.names]
      for target in targets:
        while target and target not in modules:
          target = target.rpartition(".")[0]
        while target.startswith("big_vision_like"):
          deps.add(target)
          target = target.rpartition(".")[0]
    deps.discard(name)
    # A module's own parent packages are imported before it: not a dependency.
    deps -= {p for p in deps if name.startswith(p + ".")}
    graph[name] = deps
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_cycle_finder_finds_a_cycle():
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_inside_the_package():
  graph = import_graph()
  assert "big_vision_like.experiment" in graph["big_vision_like.train"]
  assert cycles(graph) == []


def test_errors_is_a_leaf_module():
  assert import_graph()["big_vision_like.errors"] == set()


def _function_lengths(path: pathlib.Path) -> dict[str, int]:
  tree = ast.parse(path.read_text())
  return {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
          if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_train_reads_at_a_glance():
  lengths = _function_lengths(PACKAGE / "train.py")
  assert lengths["train"] <= 80, lengths["train"]
  assert max(lengths.values()) <= 80, lengths


def test_entry_points_share_the_experiment_set_up():
  # Nobody but experiment.py builds params or the train step by hand.
  for path in [PACKAGE / "train.py", PACKAGE / "eval.py", *(PACKAGE / "tools").glob("*.py")]:
    if path.name == "baseline_vit.py":
      continue  # the hand-written yardstick tools/benchmark compares us against, on purpose
    text = path.read_text()
    for forbidden in ("model.init(", "param_shardings(", "state_shardings(", "make_optimizer("):
      assert forbidden not in text, (path.name, forbidden)


def test_readme_config_reference_lists_every_key():
  readme = (ROOT / "README.md").read_text()
  table = config_lib.markdown_table()
  assert table in readme, "README's config reference is stale: paste `python -m " \
      "big_vision_like.config` into it"
  for key in [*config_lib.KEYS, *(f"input.{k}" for k in config_lib.INPUT_KEYS)]:
    assert f"| `{key}` |" in readme, key


def test_nothing_refers_to_files_outside_the_repository():
  files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
  needle = "../" + "shared"  # (spelled so that this file does not match itself)
  offenders = []
  for name in files:
    path = ROOT / name
    if path.suffix in (".py", ".md", ".sh", ".sbatch", ".toml", ".txt", ".cfg") or \
        name.startswith(".ci/"):
      if needle in path.read_text(errors="replace"):
        offenders.append(name)
  assert offenders == [], offenders
