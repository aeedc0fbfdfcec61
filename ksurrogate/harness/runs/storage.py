"""Failed writes inside a run: one StorageError line naming what was being written, no orbax
tracebacks on the console for them, and nothing half-written left behind."""
from __future__ import annotations

import contextlib
import logging as pylogging
import pathlib
import shutil
import threading
from typing import Callable

from ksurrogate.harness import store


class _HeldErrors(pylogging.Filter):
  """Holds back what orbax's save threads report while a save runs: the ERROR records orbax logs
  (with tracebacks), asyncio's about the event loops those threads leave, and exceptions that end
  one of them. A failure that becomes one StorageError line drops them; any other failure (or
  none) lets them through as they came."""

  LOGGERS = ("absl", "asyncio")   # orbax logs through absl; asyncio reports loops closed under a task

  def __init__(self):
    super().__init__()
    self.records, self.threads = [], []
    self._hook = None

  def filter(self, record):
    if record.levelno >= pylogging.ERROR and ("orbax" in record.pathname or record.name == "asyncio"):
      self.records.append(record)
      return False
    return True

  def _thread_died(self, args):
    self.threads.append(args)

  def __enter__(self):
    for name in self.LOGGERS:
      pylogging.getLogger(name).addFilter(self)
    self._hook, threading.excepthook = threading.excepthook, self._thread_died
    return self

  def release(self, drop: bool) -> None:
    threading.excepthook = self._hook
    for name in self.LOGGERS:
      pylogging.getLogger(name).removeFilter(self)
    if not drop:
      for record in self.records:
        pylogging.getLogger(record.name).handle(record)
      for args in self.threads:
        self._hook(args)


@contextlib.contextmanager
def writing(path: pathlib.Path, partial: Callable[[], list] = lambda: [], name_path: bool = True):
  """Turns a failed write for want of space or permission inside the block into one StorageError.

  Args:
    path: what is being written (named in the message rather than a file deep inside it).
    partial: returns the paths the write leaves half-done, removed on failure so their space is
      free again.
    name_path: False: name the file the error names instead of `path`.

  Returns:
    A context manager.
  """
  held = _HeldErrors().__enter__()
  drop = False
  try:
    yield
  except Exception as e:
    failure = store.storage_error(e, path, name_path=name_path)
    if failure is None:
      raise
    drop = True
    for leftover in partial():
      shutil.rmtree(leftover, ignore_errors=True)
    raise failure from None
  finally:
    held.release(drop)


def remove(directory: pathlib.Path) -> None:
  """Removes a stored phase (to recompute it); a failure to is a StorageError, never ignored (a
  half-removed phase would be mixed with the new one)."""
  def failed(function, path, exc_info):
    del function
    if not isinstance(exc_info[1], FileNotFoundError):   # name the entry by its full path (rmtree may not)
      raise OSError(exc_info[1].errno, exc_info[1].strerror, path) from None

  with writing(directory, name_path=False):   # the entry that could not be removed
    shutil.rmtree(directory, onerror=failed)
