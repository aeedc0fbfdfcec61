"""The installed layout: experiments/ is the package `ksurrogate_experiments`, importable from
anywhere once installed, and nothing imports it under its folder's name."""
import pathlib
import re
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _listed_packages() -> set:
  return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def test_every_package_folder_is_listed():
  found = set()
  for top, name in (("ksurrogate", "ksurrogate"), ("experiments", "ksurrogate_experiments")):
    for init in (ROOT / top).rglob("__init__.py"):
      rel = init.parent.relative_to(ROOT / top).parts
      found.add(".".join((name, *rel)))
  missing = found - _listed_packages()
  assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


def test_nothing_imports_the_folder_name():
  pattern = re.compile(r"^\s*(from|import)\s+experiments\b", re.M)
  offenders = [str(p.relative_to(ROOT)) for d in ("ksurrogate", "experiments", "tests", "benchmarks", "examples")
               for p in (ROOT / d).rglob("*.py") if pattern.search(p.read_text())]
  assert not offenders, offenders


def test_importable_outside_the_checkout(tmp_path):
  code = "import ksurrogate_experiments.contract as c, ksurrogate_experiments.main; print(sorted(c.REGISTRY))"
  out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert "modular" in out.stdout


def _slug(title: str) -> str:
  """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
  return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def test_build_notes_contents_list_every_section_in_order():
  # a typed contents list goes stale unseen; this is what keeps it true
  text = (ROOT / "BUILD_NOTES.md").read_text()
  heads = [line[3:] for line in text.splitlines() if line.startswith("## ") and line != "## Contents"]
  listed = re.findall(r"^- \[(.+)\]\(#(.+)\)$", text.split("## Contents", 1)[1].split("\n## ", 1)[0], re.M)
  assert listed == [(h, _slug(h)) for h in heads]


def test_the_api_reference_builds_and_every_public_function_has_a_docstring(tmp_path):
  # docs/api.md's command, in process: a docstring pdoc cannot render, or a public name without
  # one, fails here rather than in a user's browser
  import inspect

  import pdoc
  import pdoc.render

  import ksurrogate as ks
  pdoc.render.configure(docformat="google")
  pdoc.pdoc("ksurrogate", "ksurrogate.families", "ksurrogate.nystrom", "ksurrogate.harness", output_directory=tmp_path)
  for page in ("ksurrogate.html", "ksurrogate/surrogates.html", "ksurrogate/families.html", "ksurrogate/harness/driver.html"):
    assert (tmp_path / page).is_file(), page
  bare = [n for n in dir(ks) if not n.startswith("_") and inspect.isfunction(getattr(ks, n))
          and not inspect.getdoc(getattr(ks, n))]
  assert bare == []


def _documented_modules() -> list:
  """Every public module of the library and the harness (no name part with a leading underscore),
  found by walking the package, so a new module is covered without being listed here. The run
  directory's modules are left out: its API is what `ksurrogate.harness.runs` re-exports."""
  import importlib
  import pkgutil

  import ksurrogate
  names = [m.name for m in pkgutil.walk_packages(ksurrogate.__path__, "ksurrogate.")
           if not any(part.startswith("_") for part in m.name.split("."))
           and not m.name.startswith("ksurrogate.harness.runs.")]
  return [importlib.import_module(n) for n in sorted(names)]


_SECTION = re.compile(r"^(Args|Arguments|Returns|Yields|Raises|Attributes|Example|Examples|Note|Notes):\s*$", re.M)


def _sections(doc: str) -> dict:
  """A Google-style docstring's sections by heading, each the text up to the next heading."""
  parts = _SECTION.split(doc)
  return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _returns_a_value(fn) -> bool:
  """Whether `fn`'s own body (not a nested function's) returns a value other than None, or yields."""
  import ast
  import inspect
  import textwrap
  try:
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
  except (OSError, TypeError):
    return False
  todo = list(ast.iter_child_nodes(tree.body[0]))
  while todo:
    node = todo.pop()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
      continue
    if isinstance(node, (ast.Yield, ast.YieldFrom)):
      return True
    if isinstance(node, ast.Return) and node.value is not None and not (
        isinstance(node.value, ast.Constant) and node.value.value is None):
      return True
    todo.extend(ast.iter_child_nodes(node))
  return False


def _check_callable(where: str, fn, doc: str, problems: list) -> None:
  import inspect
  params = [p for p in inspect.signature(fn).parameters.values() if p.name not in ("self", "cls")]
  if not doc:
    problems.append(f"{where}: no docstring")
    return
  sections = _sections(doc)
  if params:
    args = sections.get("Args", sections.get("Arguments"))
    if args is None:
      problems.append(f"{where}: parameters but no Args: section")
    else:
      missing = [p.name for p in params if not re.search(rf"^\s*\**{re.escape(p.name)}\b", args, re.M)]
      if missing:
        problems.append(f"{where}: Args: does not name {missing}")
  if _returns_a_value(fn) and "Returns" not in sections and "Yields" not in sections:
    problems.append(f"{where}: returns a value but no Returns: section")


def _public_members(module):
  """(qualified name, function, its own docstring or the one it inherits) for a module's public functions and
  the public methods of its public classes, each defined in that module."""
  import dataclasses
  import inspect
  for name, obj in vars(module).items():
    if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
      continue
    if inspect.isfunction(inspect.unwrap(obj)):   # jax.jit and functools.wraps wrappers included
      yield f"{module.__name__}.{name}", inspect.unwrap(obj), inspect.getdoc(obj)
    elif inspect.isclass(obj):
      generated = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
      for attr, raw in vars(obj).items():
        if attr.startswith("_") or attr in generated:
          continue
        fn = inspect.unwrap(raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw)
        # written in the class body, not added by a dataclass decorator (flax's `replace`)
        if inspect.isfunction(fn) and fn.__qualname__ == f"{obj.__qualname__}.{attr}":
          yield f"{module.__name__}.{name}.{attr}", fn, inspect.getdoc(getattr(obj, attr))
      init = vars(obj).get("__init__")
      if (inspect.isfunction(init) and init.__qualname__ == f"{obj.__qualname__}.__init__"
          and not dataclasses.is_dataclass(obj)):
        # a hand-written constructor: its parameters are documented on the class (or on __init__)
        yield f"{module.__name__}.{name}", init, inspect.getdoc(init) if init.__doc__ else inspect.getdoc(obj)


def _docstring_problems() -> list:
  import importlib

  from ksurrogate.harness import runs
  problems = []
  for module in _documented_modules():
    for where, fn, doc in _public_members(module):
      _check_callable(where, fn, doc, problems)
  # the run directory's API is what its package re-exports from its modules
  for name, obj in vars(runs).items():
    home = getattr(obj, "__module__", None) or ""
    if name.startswith("_") or not home.startswith("ksurrogate.harness.runs."):
      continue
    for where, fn, doc in _public_members(importlib.import_module(home)):
      if where[len(home) + 1:].split(".")[0] == name:
        _check_callable(where, fn, doc, problems)
  return problems


def test_every_public_function_documents_its_args_and_returns():
  # a parameter the reference does not explain, or a result whose shape it does not give, is
  # what this keeps from coming back; inspect and ast only, no import of JAX work beyond the modules'
  problems = _docstring_problems()
  assert not problems, "\n".join(problems)
