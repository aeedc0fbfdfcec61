"""Shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so this folder is on sys.path)."""
import pathlib
import shutil
import tempfile
import time

import jax


def timed(fn):
  """(result, wall seconds) of fn(), waiting for every array it returns."""
  t0 = time.perf_counter()
  out = fn()
  jax.block_until_ready(jax.tree.leaves(out))
  return out, time.perf_counter() - t0


def scratch_copy(workdir) -> pathlib.Path:
  """A private copy of a finished run's stored phases (not its lock), so that reading them never
  waits on, or disturbs, a job still holding the run. The caller removes it."""
  src = pathlib.Path(workdir)
  if not (src / "run.json").is_file():
    raise SystemExit(f"workdir: {src} holds no run (no run.json)")
  dst = pathlib.Path(tempfile.mkdtemp(prefix="sweep_"))
  for item in src.iterdir():
    if item.is_dir():
      shutil.copytree(item, dst / item.name)
  shutil.copy(src / "run.json", dst / "run.json")
  return dst


def apply_overrides(c, overrides: dict):
  """c with section.field = value for each item of `overrides` (values given as text are cast to
  the field's type): the settings a stored run was made with, or the one a benchmark varies."""
  for path, value in overrides.items():
    section, field = path.split(".")
    old = c[section][field]
    c[section][field] = type(old)(value) if old is not None and not isinstance(old, bool) else value
  return c
