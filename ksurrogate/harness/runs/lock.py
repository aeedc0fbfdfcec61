"""The run directory's lock, and, in a group of processes, the watch on the others' locks.

A run holds DIR/.lock (process p > 0 of a group DIR/.lock.<p>) with flock while it is in progress:
the kernel releases it when the process ends, however it ends. Leaving the run, a process writes
how it left into its lock file ("finished", or "stopped: <why>") before it lets go, so a lock
released with neither in it is a process that died: killed, or its machine lost.
"""
from __future__ import annotations

import fcntl
import os
import pathlib
import threading
from typing import Callable, Optional

from ksurrogate.harness.runs import storage

POLL_S = 1.0    # how often a process of a group checks the others' locks
GRACE_S = 2.0   # a peer that stopped: time for this process to stop by itself (a Ctrl-C reaches all)


def path_of(directory: pathlib.Path, process: int) -> pathlib.Path:
  return directory / (".lock" if process == 0 else f".lock.{process}")


class Lock:
  """One process's lock file (kept open while held)."""

  def __init__(self, directory: pathlib.Path, process: int, count: int):
    self.path = path_of(directory, process)
    self._label = f"pid {os.getpid()}" + (f", process {process} of {count}" if count > 1 else "")
    self._file = None

  def take(self) -> Optional[str]:
    """Takes the lock: None, or who holds it."""
    with storage.writing(self.path):
      self.path.parent.mkdir(parents=True, exist_ok=True)
      f = open(self.path, "a+")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      return holder
    self._file = f
    self._write(self._label)
    return None

  def _write(self, text: str) -> None:
    with storage.writing(self.path):
      self._file.seek(0)
      self._file.truncate()
      self._file.write(text)
      self._file.flush()

  def release(self, how: Optional[str] = None) -> None:
    """Lets go of the lock, first writing `how` the process leaves ("finished", "stopped: ...")."""
    if self._file is None:
      return
    if how is not None:
      try:
        self._write(f"{self._label}: {how}")
      except Exception:   # a full disk: the peers then take this process for dead, which it is about to be
        pass
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()
    self._file = None


def _peek(path: pathlib.Path) -> tuple[Optional[bool], str]:
  """(whether another process holds the lock file, what it says); (None, '') when it is missing."""
  try:
    f = open(path, "r")
  except FileNotFoundError:
    return None, ""
  with f:
    try:
      fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)   # shared: watchers never block one another
    except BlockingIOError:
      return True, f.read().strip()
    try:
      return False, f.read().strip()
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def held_by(path: pathlib.Path) -> Optional[str]:
  """What a lock file says when another process holds it; None when it is free (or missing)."""
  held, text = _peek(path)
  return (text or "a process of another run") if held else None


def group_lock_held(directory: pathlib.Path) -> Optional[str]:
  """Who holds a process lock (DIR/.lock.<p>) of a group, if any: a process of an earlier group
  whose process 0 is gone may still be writing."""
  for path in sorted(directory.glob(".lock.*")):
    holder = held_by(path)
    if holder is not None:
      return holder
  return None


def _left_as(path: pathlib.Path) -> Optional[str]:
  """How the process whose lock is `path` left: None while it holds the lock, else what it wrote
  (its last words after ': '), or '' when it wrote nothing: it died."""
  held, text = _peek(path)
  if held is not False:
    return None
  label, _, how = text.partition(": ")
  return how if label.startswith("pid ") else ""


class PeerWatch:
  """A thread that checks every POLL_S seconds that the other processes of the group still hold
  their locks; a process that died or stopped is reported once through `lost(message)` (which
  ends this process: the group cannot go on without it)."""

  def __init__(self, directory: pathlib.Path, me: int, count: int, lost: Callable[[str], None]):
    self._paths = {q: path_of(directory, q) for q in range(count) if q != me}
    self._count = count
    self._lost = lost
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._watch, name="ksurrogate-peer-watch", daemon=True)

  def start(self) -> "PeerWatch":
    self._thread.start()
    return self

  def stop(self) -> None:
    self._stop.set()

  def _watch(self) -> None:
    watching = dict(self._paths)
    while watching and not self._stop.wait(POLL_S):
      for q, path in list(watching.items()):
        how = _left_as(path)
        if how is None:
          continue
        if how == "finished":
          del watching[q]   # done with its part (process 0 evaluates on alone)
          continue
        if how:
          message = f"process {q} of {self._count} {how}"
          self._stop.wait(GRACE_S)
        else:
          message = (f"process {q} of {self._count} died (its lock {path} was released while it ran: killed, "
                     "or its machine lost)")
        if not self._stop.is_set():
          self._lost(message)
        return
