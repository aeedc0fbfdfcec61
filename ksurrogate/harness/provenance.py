"""Where a run's numbers come from: the command, the code's commit, the machine, the load and the
date, written into every summary so that a results table can cite each row without anyone
retyping it (and a reader can tell a 2-core laptop's minutes from a GPU's)."""
import datetime
import os
import pathlib
import platform
import shlex
import subprocess
import sys
from typing import Optional, Sequence


def _git(*args: str) -> Optional[str]:
  root = pathlib.Path(__file__).resolve().parents[2]
  try:
    out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() if out.returncode == 0 else None


def commit() -> dict:
  """The code's version: the git commit of the checkout the package runs from (and whether tracked
  files differ from it), or, for an installed copy, its package version alone.

  Returns:
    {"commit": hex or None, "dirty": bool or None, "version": the installed ksurrogate version}.
  """
  from importlib import metadata
  try:
    version = metadata.version("ksurrogate")
  except metadata.PackageNotFoundError:
    version = None
  head = _git("rev-parse", "HEAD")
  dirty = None
  if head is not None:
    status = _git("status", "--porcelain", "--untracked-files=no")
    dirty = bool(status) if status is not None else None
  return {"commit": head, "dirty": dirty, "version": version}


def _cpu_model() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine() -> dict:
  """The machine a run ran on, in the terms its timings depend on.

  Returns:
    {"cpu", "cores", "memory_gib", "accelerator" (JAX's default backend and device kind x count),
    "load" (1-minute load average when this is called), "python", "jax"}.
  """
  import jax
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  try:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
  except (ValueError, OSError):
    memory = None
  try:
    load = os.getloadavg()[0]
  except OSError:
    load = None
  return {"cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gib": None if memory is None else round(memory, 1),
          "accelerator": f"{jax.default_backend()}: {len(devices)} x {', '.join(kinds)}",
          "load": None if load is None else round(load, 2),
          "python": platform.python_version(), "jax": jax.__version__}


def command(argv: Optional[Sequence[str]] = None) -> str:
  """The command line that ran, as a user would type it (`ksurrogate-run ...` for the entry point,
  however it was started).

  Args:
    argv: the command line, default `sys.argv`.

  Returns:
    The shell-quoted command.
  """
  argv = list(sys.argv if argv is None else argv)
  program = pathlib.Path(argv[0]).name if argv else ""
  if program in ("main.py", "ksurrogate-run", "__main__.py", "-m"):
    program = "ksurrogate-run"
  return shlex.join([program, *argv[1:]])


def describe(argv: Optional[Sequence[str]] = None, code: Optional[dict] = None) -> dict:
  """Everything a results row cites: command, code version, machine, date.

  Args:
    argv: the command line (default `sys.argv`).
    code: `commit()` as taken when the run started (default: now). A long run's checkout can move
      under it; the code that ran is the one imported at the start.

  Returns:
    {"command", "date" (UTC, ISO 8601), **code, "machine": machine()}. The run's times are the
    summary's `timing` table.
  """
  now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  return {"command": command(argv), "date": now, **(commit() if code is None else code), "machine": machine()}
