"""The package's shape: no import cycle, read from the source by tools/import_graph.py."""

import importlib.util
import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _graph_tool():
  spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_vrt_jax_has_no_import_cycle():
  tool = _graph_tool()
  graph = tool.import_graph()
  assert {"vrt_jax.vrt", "vrt_jax.convert", "vrt_jax.checkpoint"} <= set(graph)
  cycle = tool.find_cycle(graph)
  assert cycle is None, f"import cycle in vrt_jax: {' -> '.join(cycle)}"
  # Conversion reads PyTorch files onto the model; it never depends on checkpoint I/O.
  assert "vrt_jax.checkpoint" not in graph["vrt_jax.convert"]


def test_cycles_are_found_through_lazy_and_relative_imports(tmp_path):
  tool = _graph_tool()
  pkg = tmp_path / "vrt_jax"
  pkg.mkdir()
  files = {
      "__init__.py": "from vrt_jax import a\n",
      "a.py": "from vrt_jax.b import thing\n",
      "b.py": "def thing():\n  from . import c\n  return c\n",
      "c.py": "import importlib\nm = importlib.import_module('vrt_jax.d')\n",
      "d.py": "x = 1\nif __name__ == '__main__':\n  from vrt_jax import a\n",
  }
  for name, text in files.items():
    (pkg / name).write_text(textwrap.dedent(text))
  graph = tool.import_graph(tmp_path)
  assert graph == {"vrt_jax": {"vrt_jax.a"}, "vrt_jax.a": {"vrt_jax.b"},
                   "vrt_jax.b": {"vrt_jax.c"}, "vrt_jax.c": {"vrt_jax.d"}, "vrt_jax.d": set()}
  assert tool.find_cycle(graph) is None  # The __main__ block of d is not an import of d.
  (pkg / "d.py").write_text("import vrt_jax.a as a\n")
  cycle = tool.find_cycle(tool.import_graph(tmp_path))
  assert cycle == ["vrt_jax.a", "vrt_jax.b", "vrt_jax.c", "vrt_jax.d", "vrt_jax.a"]


def test_architecture_doc_lists_the_imports_of_the_code():
  tool = _graph_tool()
  doc = (ROOT / "docs" / "architecture.md").read_text()
  listed = doc.split("<!-- dependencies: begin -->\n")[1].split("\n<!-- dependencies: end -->")[0]
  assert listed.splitlines() == tool.dependency_lines(tool.import_graph()), (
      "docs/architecture.md is out of date: paste the output of `python tools/import_graph.py` "
      "between its dependency markers (and describe any new module)")
  # Every module listed has its paragraph.
  modules = re.findall(r"^- `([^`]+)`", listed, re.M)
  described = set(re.findall(r"^\*\*`([^`]+)`\*\*", doc, re.M))
  assert not [m for m in modules if m not in described], "modules without a paragraph"
