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
  pdoc.pdoc("ksurrogate", output_directory=tmp_path)
  assert (tmp_path / "ksurrogate.html").is_file() and (tmp_path / "ksurrogate" / "surrogates.html").is_file()
  bare = [n for n in dir(ks) if not n.startswith("_") and inspect.isfunction(getattr(ks, n))
          and not inspect.getdoc(getattr(ks, n))]
  assert bare == []
