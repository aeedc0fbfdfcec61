"""A stored phase's result on disk: its arrays through orbax, everything else in its record's JSON,
and the stable names its types are stored under."""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from ksurrogate.harness.runs import config_view
from ksurrogate.harness.runs import errors
from ksurrogate.harness.runs import records

# Stored result types by stable name: a record names its result's type by the name the class was
# registered under (`stored`), never by its Python module path, so moving or renaming a class does
# not invalidate what is on disk.
_STORED: dict[str, type] = {}


def stored(name: str):
  """Class decorator: results of this dataclass are stored (and restored) under `name`.

  Args:
    name: a stable key of the form "experiment.thing" (e.g. "modular.theta0"). Changing it makes
      stored records of the class unreadable: they are recomputed, with one warning line.

  Returns:
    The decorator (it returns the class, with `STORED_AS` set).
  """
  if not isinstance(name, str) or not name or ":" in name:
    raise ValueError(f"name: a stored-result name is a non-empty string without ':', got {name!r}")

  def register(cls):
    if not dataclasses.is_dataclass(cls):
      raise TypeError(f"stored: {cls.__name__} is not a dataclass")
    known = _STORED.get(name)
    if known is not None and _qualified(known) != _qualified(cls):
      raise ValueError(f"name: {name!r} is already the stored name of {_qualified(known)}")
    _STORED[name] = cls
    cls.STORED_AS = name
    return cls
  return register


def _qualified(cls) -> str:
  return f"{cls.__module__}:{cls.__qualname__}"


def has_arrays(value) -> bool:
  return any(isinstance(x, (np.ndarray, jax.Array, np.generic)) for x in jax.tree.leaves(value))


def _split(result):
  """(type name, {field: arrays pytree}, {field: JSON value}) of a dataclass or dict result."""
  if dataclasses.is_dataclass(result):
    cls = type(result)
    kind = getattr(cls, "STORED_AS", None)
    if kind is None or _STORED.get(kind) is not cls:
      raise TypeError(f"result: {cls.__name__} is not registered for storage; decorate it with "
                      "@runs.stored(\"<experiment>.<name>\") (the stable name its records are kept under)")
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
  elif isinstance(result, dict):
    fields, kind = dict(result), "dict"
  else:
    raise TypeError(f"result: a stored phase must return a dataclass or a dict, got {type(result).__name__}")
  arrays = {k: v for k, v in fields.items() if has_arrays(v)}
  plain = {k: config_view.canonical(v) for k, v in fields.items() if k not in arrays}
  return kind, arrays, plain


def _join(kind: str, arrays: dict, plain: dict):
  fields = {**plain, **arrays}
  if kind == "dict":
    return fields
  cls = _STORED.get(kind)
  if cls is None:
    raise errors.Damaged(f"it holds a result stored as {kind!r}, a type no registered result has now")
  return cls(**fields)


def solo_options(process: int) -> ocp.options.MultiprocessingOptions:
  """Orbax options for a save or restore that one process makes alone (no barrier with the
  others, which are busy elsewhere)."""
  return ocp.options.MultiprocessingOptions(primary_host=process, active_processes={process})


def _checkpointer(solo: Optional[int] = None):
  """Orbax's checkpointer; `solo`: the process that uses it alone, in a group of several."""
  if solo is None:
    return ocp.StandardCheckpointer()
  return ocp.StandardCheckpointer(multiprocessing_options=solo_options(solo))


def save(directory: pathlib.Path, result, solo: Optional[int]) -> dict:
  """Writes a result's arrays to DIR/<phase>/result (orbax).

  Args:
    directory: the phase's directory (created; it must not exist).
    result: a dict or a registered dataclass.
    solo: the process saving alone in a group (None: one process).

  Returns:
    The record fields that describe the result: type, plain, array_fields, files.
  """
  kind, arrays, plain = _split(result)
  directory.mkdir(parents=True)
  if arrays:
    ck = _checkpointer(solo)
    ck.save((directory / "result").resolve(), jax.device_get(arrays), force=True)
    ck.wait_until_finished()
  return {"type": kind, "plain": plain, "array_fields": sorted(arrays), "files": records.file_digests(directory)}


def load(directory: pathlib.Path, record: dict, solo: Optional[int]):
  """The result a checked record describes; Damaged when a file is missing, altered or unreadable,
  or the result's type is not the code's now."""
  bad = records.check_digests(directory, record["files"])
  if bad:
    raise errors.Damaged(bad)
  arrays = {}
  if record["array_fields"]:
    try:
      arrays = _checkpointer(solo).restore((directory / "result").resolve())
    except Exception as e:  # orbax/tensorstore raise many types for unreadable data
      raise errors.Damaged(f"{directory / 'result'} cannot be read ({type(e).__name__})") from None
  try:
    return _join(record["type"], arrays, record["plain"])
  except (TypeError, AttributeError, ImportError, ValueError) as e:   # stored by code whose result type has changed
    raise errors.Damaged(f"{directory / records.RECORD} holds a result of another shape than the code makes now "
                         f"({e})") from None
