"""The import graph of the vrt_jax package, read from the source (ast), not by importing it.

  python tools/import_graph.py            # the module dependency list of docs/architecture.md

Every import of a vrt_jax module counts, at module level or inside a function (a lazy import is
still a dependency); the body of `if __name__ == "__main__":` does not, since it runs only when
the file is the program, never when the module is imported. tests/unit/test_architecture.py
fails on a cycle and when docs/architecture.md's list differs from this output.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "vrt_jax"
ROOT = Path(__file__).resolve().parent.parent


def _is_main_guard(node: ast.AST) -> bool:
  return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
          and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
          and any(isinstance(c, ast.Constant) and c.value == "__main__"
                  for c in node.test.comparators))


def _imports(tree: ast.AST, module: str, modules: set[str]) -> set[str]:
  """vrt_jax modules that `tree` (the source of `module`) imports."""
  found: set[str] = set()
  package = module if module == PACKAGE else module.rsplit(".", 1)[0]
  stack = [tree]
  while stack:
    node = stack.pop()
    if _is_main_guard(node):
      continue
    stack.extend(ast.iter_child_nodes(node))
    names: list[str] = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # Relative: resolve against this module's package.
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      # `from vrt_jax import convert` imports a module; `from vrt_jax.vrt import VRT` its parent.
      names = [f"{base}.{a.name}" for a in node.names] + [base]
    # importlib.import_module("vrt_jax.x") with a literal name is an import too.
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr == "import_module" and node.args
          and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
      names = [node.args[0].value]
    for name in names:
      while name and name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
      if name in modules and name != module and name != PACKAGE:
        found.add(name)
  return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
  """{module: the vrt_jax modules it imports}, for every .py file of the package.

  The package itself (vrt_jax/__init__.py) is left out as a target: every submodule import
  runs it, so it is everyone's dependency and says nothing.
  """
  files = {}
  for path in sorted((root / PACKAGE).rglob("*.py")):
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    files[".".join(parts)] = path
  modules = set(files)
  return {m: _imports(ast.parse(p.read_text(), str(p)), m, modules) for m, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as [a, b, ..., a], or None when the graph is acyclic."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(m: str) -> list[str] | None:
    state[m] = 1
    path.append(m)
    for d in sorted(graph.get(m, ())):
      if state.get(d) == 1:
        return path[path.index(d):] + [d]
      if d not in state and (cycle := visit(d)):
        return cycle
    path.pop()
    state[m] = 2
    return None

  for m in sorted(graph):
    if m not in state and (cycle := visit(m)):
      return cycle
  return None


def short(module: str) -> str:
  return module.removeprefix(PACKAGE + ".")


def dependency_lines(graph: dict[str, set[str]]) -> list[str]:
  """`- module: dep, dep` per module, in layers (a module comes after everything it uses)."""
  done: set[str] = set()
  order: list[str] = []
  remaining = set(graph)
  while remaining:
    ready = sorted(m for m in remaining if graph[m] <= done | {PACKAGE})
    if not ready:
      raise ValueError(f"import cycle: {' -> '.join(find_cycle(graph) or [])}")
    order += ready
    done |= set(ready)
    remaining -= set(ready)
  return [f"- `{short(m)}`: " + (", ".join(short(d) for d in sorted(graph[m])) or "(none)")
          for m in order]


if __name__ == "__main__":
  graph = import_graph()
  cycle = find_cycle(graph)
  if cycle:
    sys.exit(f"import cycle: {' -> '.join(cycle)}")
  print("\n".join(dependency_lines(graph)))
