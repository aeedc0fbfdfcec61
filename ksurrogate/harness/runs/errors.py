"""How a run ends early: the errors it raises in one line, and the stop a signal requests."""
from __future__ import annotations

from ksurrogate.harness import store


class DifferentConfigError(ValueError):
  """The workdir holds a phase computed under other settings."""


class WorkdirInUse(ValueError):
  """Another process holds the run directory's lock."""


class NonFiniteOutcomes(ValueError):
  """A chunk of outcomes holds NaN or inf (refused before it is stored)."""


StorageError = store.StorageError   # a write failed for want of space or permission (one-line message)


class Damaged(Exception):
  """A stored record, result or chunk that cannot be trusted (its message says why): recomputed."""


_STOP = {"requested": False}


def request_stop(signum=None, frame=None):
  """Signal handler (SIGINT, SIGTERM): stops at once, and again at the next phase or chunk boundary
  in case a library swallowed the first KeyboardInterrupt.

  Args:
    signum: the signal number (unused; the signal handler's signature).
    frame: the interrupted frame (unused).

  Raises:
    KeyboardInterrupt: always.
  """
  del signum, frame
  _STOP["requested"] = True
  raise KeyboardInterrupt


def check_stop() -> None:
  """Raises KeyboardInterrupt when a stop was requested (the boundaries between phases and chunks)."""
  if _STOP["requested"]:
    raise KeyboardInterrupt
