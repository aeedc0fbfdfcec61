"""The run directory's path, checked before anything runs: every way it cannot hold a run is
refused in one line that names --workdir."""
from __future__ import annotations

import errno
import os
import pathlib
import tempfile

from ksurrogate.harness import store

_ANOTHER = "use another --workdir"


def _refuse(message: str):
  raise ValueError(f"workdir: {message}")


def _dangling_link(path: pathlib.Path):
  """The first component of `path` that is a symbolic link to nothing, else None."""
  for prefix in (*reversed(path.parents), path):
    if prefix.is_symlink() and not prefix.exists():
      return prefix
  return None


def _nearest_existing(path: pathlib.Path) -> pathlib.Path:
  """The longest leading part of `path` that exists (a symbolic link counts, dangling or not)."""
  probe = path
  while not os.path.lexists(probe) and probe != probe.parent:   # False also for a name too long
    probe = probe.parent
  return probe


def _limit(probe: pathlib.Path, name: str, default: int) -> int:
  try:
    return os.pathconf(probe, name)
  except (OSError, ValueError):
    return default


def _check_names(path: pathlib.Path, probe: pathlib.Path) -> None:
  """Refuses a name the filesystem cannot hold (too long), before anything tries to create it."""
  longest = _limit(probe, "PC_NAME_MAX", 255)
  for part in path.relative_to(probe).parts:
    size = len(os.fsencode(part))
    if size > longest:
      _refuse(f"the name {part[:24]!r}... is {size} bytes, longer than the {longest} bytes a name may have on "
              f"the filesystem of {probe}; {_ANOTHER} with a shorter name")
  total, most = len(os.fsencode(str(path.absolute()))), _limit(probe, "PC_PATH_MAX", 4096)
  if total > most - 256:   # room for the files a run keeps inside it (phase, chunk and orbax names)
    _refuse(f"{str(path)[:40]}... is {total} bytes long, too long for the {most} bytes a path may have on the "
            f"filesystem of {probe} (with the run's own files inside); {_ANOTHER} with a shorter path")


def _check_creatable(probe: pathlib.Path) -> None:
  """Creates (and removes) a directory in `probe`: what answers whether a run can write there,
  also where permission bits say nothing (a pseudo-filesystem such as /proc or /sys, root)."""
  try:
    os.rmdir(tempfile.mkdtemp(prefix=".ksurrogate-probe-", dir=probe))
  except OSError as e:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
      raise store.StorageError(store.storage_message(probe, e.errno)) from None
    _refuse(f"nothing can be created in {probe} ({e.strerror}: a pseudo-filesystem such as /proc or /sys, or "
            f"one that takes no new directories); {_ANOTHER}")


def check_workdir(workdir) -> pathlib.Path:
  """Checks that `workdir` can hold a run.

  Args:
    workdir: the run directory (created if missing).

  Returns:
    The workdir as a path.

  Raises:
    ValueError: one line naming --workdir, for an empty name, a file, a path under a file, a
      dangling symbolic link, a name or path longer than its filesystem takes, a directory this
      user cannot write, or a place nothing can be created in (/proc, /sys, a read-only or full
      filesystem: a StorageError then).
  """
  if workdir is None or not str(workdir).strip():
    _refuse("empty; give the directory the run should write to, e.g. --workdir=runs/mine")
  path = pathlib.Path(workdir).expanduser()
  probe = _nearest_existing(path)
  _check_names(path, probe)   # first: a name too long makes every other look-up fail
  link = _dangling_link(path)
  if link is not None:
    _refuse(f"{link} is a symbolic link to {os.readlink(link)}, which does not exist; create it or {_ANOTHER}")
  if path.exists() and not path.is_dir():
    _refuse(f"{path} is a file, not a directory; {_ANOTHER}")
  if not probe.is_dir():
    _refuse(f"{path} is under {probe}, which is a file, not a directory; {_ANOTHER}")
  if not os.access(probe, os.W_OK | os.X_OK):
    _refuse(f"{probe} is not writable; make it writable by this user or {_ANOTHER}")
  _check_creatable(probe)
  return path
