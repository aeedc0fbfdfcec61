"""The library never imports its harness: every module under ksurrogate/ outside
ksurrogate/harness/ is read for its imports (the harness imports the library, never the reverse)."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "ksurrogate"


def _imports(source: str, package: list) -> list[str]:
  """Every module `source` imports (relative imports resolved against its package's parts)."""
  out = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      out += [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
      module = ".".join(p for p in (base, node.module or "") if p)
      out += [module] + [f"{module}.{a.name}" for a in node.names]
  return out


def _library_files():
  return [p for p in ROOT.rglob("*.py") if "harness" not in p.relative_to(ROOT).parts]


def test_the_library_does_not_import_the_harness():
  offenders = {str(p.relative_to(ROOT.parent)): m for p in _library_files()
               for m in _imports(p.read_text(), ["ksurrogate", *p.parent.relative_to(ROOT).parts])
               if m == "ksurrogate.harness" or m.startswith("ksurrogate.harness.")}
  assert not offenders, offenders


def test_the_check_reads_relative_and_absolute_imports():
  """The reader finds the forms an import of the harness can take (so the test above can fail)."""
  for text in ("from ksurrogate.harness import store", "import ksurrogate.harness.runs",
               "from .harness import runs", "from . import harness", "def f():\n  from ksurrogate import harness"):
    assert any(m.startswith("ksurrogate.harness") for m in _imports(text, ["ksurrogate"])), text
  assert not any(m.startswith("ksurrogate.harness") for m in _imports("from ksurrogate import metrics", ["ksurrogate"]))
  assert len(_library_files()) > 10
