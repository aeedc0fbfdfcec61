"""Records: the JSON that says a phase is done, and the digests that tie it to its files.

A record carries a checksum of its own content (a record without one is damage), the phase it was
computed for (its name and the plain arguments it got, e.g. a seed) and the config fields it
read, and the SHA-256 of every file it stored. It is checked for all of that, and for the fields
and types its kind needs, before anything in it is trusted.
"""
from __future__ import annotations

import functools
import hashlib
import json
import pathlib
from typing import Callable, Optional

import numpy as np

from ksurrogate.harness import store
from ksurrogate.harness.runs import config_view
from ksurrogate.harness.runs import errors

RECORD = "record.json"
FORMAT = 2   # records without this (format 1: no identity) are refused, never reinterpreted


# ----------------------------------------------------------------------------------------------
# Digests.

def file_digests(directory: pathlib.Path) -> dict:
  """{path relative to `directory`: SHA-256} of every file below it."""
  out = {}
  for path in sorted(directory.rglob("*")):
    if path.is_file():
      out[str(path.relative_to(directory))] = hashlib.sha256(path.read_bytes()).hexdigest()
  return out


def check_digests(directory: pathlib.Path, digests: dict) -> Optional[str]:
  """The first missing or altered file under `directory`, else None."""
  for rel, digest in digests.items():
    path = directory / rel
    if not path.is_file():
      return f"{path} is missing"
    if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
      return f"{path} does not match its checksum"
  return None


def fingerprint(files: dict) -> str:
  """One digest of a stored phase's content (its files' digests)."""
  return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def digest_array(a) -> str:
  a = np.ascontiguousarray(np.asarray(a))
  return hashlib.sha256(str((a.shape, a.dtype.str)).encode() + a.tobytes()).hexdigest()


def checksum(record: dict) -> str:
  return hashlib.sha256(store.dumps({k: v for k, v in record.items() if k != "checksum"}).encode()).hexdigest()


def seal(record: dict) -> dict:
  """The record with the checksum of its content (and the current format)."""
  record = {k: v for k, v in record.items() if k != "checksum"}
  record["format"] = FORMAT
  record["checksum"] = checksum(record)
  return record


# ----------------------------------------------------------------------------------------------
# Identity: what a phase was computed for besides the config it read.

_SCALARS = (bool, int, float, str, np.integer, np.floating, np.bool_)


def _plain(value) -> bool:
  if value is None or isinstance(value, _SCALARS):
    return True
  return isinstance(value, (tuple, list)) and 0 < len(value) <= 64 and all(
      v is None or isinstance(v, _SCALARS) for v in value)


def arguments(fn: Callable, inputs) -> dict:
  """The plain arguments (numbers, strings, short tuples of them) a phase gets besides the config
  and the results of other phases: its inputs ("input<j>", by position) and the arguments bound
  to `fn` by functools.partial (by keyword, or "partial<j>"). Seeds and problem names come this
  way; they are part of what a stored phase was computed for."""
  out = {}
  while isinstance(fn, functools.partial):
    for k, v in fn.keywords.items():
      if _plain(v):
        out.setdefault(str(k), config_view.canonical(v))
    for j, v in enumerate(fn.args):
      if _plain(v):
        out.setdefault(f"partial{j}", config_view.canonical(v))
    fn = fn.func
  for j, v in enumerate(inputs):
    if _plain(v):
      out[f"input{j}"] = config_view.canonical(v)
  return out


def describe(args: dict) -> str:
  return ", ".join(f"{k}={v!r}" for k, v in sorted(args.items())) or "no plain arguments"


def identity_problem(record: dict, phase: str, args: Optional[dict] = None) -> Optional[str]:
  """Why a well-formed record is not the record of `phase` (computed for `args`), else None."""
  if record["phase"] != phase:
    return f"it is the record of phase {record['phase']!r}, not {phase!r}: copied from there"
  if args is not None and record["args"] != args:
    return f"it was computed for {describe(record['args'])}, not {describe(args)}"
  return None


# ----------------------------------------------------------------------------------------------
# Record checks.

def is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_digests(x) -> bool:
  return isinstance(x, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in x.items())


_COMMON = {"kind": str, "phase": str, "args": dict, "reads": dict, "inputs": _is_digests, "seconds": is_number}
_FIELDS = {
    "phase": {**_COMMON, "type": str, "plain": dict, "array_fields": list, "files": _is_digests},
    "outcomes": {**_COMMON, "subsets": str, "chunk_size": int, "num_chunks": int, "chunks": dict},
}


def _field_problem(record: dict, fields: dict) -> Optional[str]:
  for field, want in fields.items():
    if field not in record:
      return f"no field {field!r}"
    value = record[field]
    ok = want(value) if callable(want) and not isinstance(want, type) else (
        isinstance(value, want) and not isinstance(value, bool))
    if not ok:
      return f"field {field!r} holds {type(value).__name__} {str(value)[:40]!r}"
  return None


def _chunks_problem(record: dict) -> Optional[str]:
  for key, chunk in record["chunks"].items():
    if not (key.isdigit() and int(key) < record["num_chunks"]):
      return f"it lists a chunk {key!r} outside 0..{record['num_chunks'] - 1}"
    if not (isinstance(chunk, dict) and _is_digests(chunk.get("files")) and is_number(chunk.get("seconds"))):
      return f"chunk {key} has no files or seconds"
  return None


def _seal_problem(record) -> Optional[str]:
  if not isinstance(record, dict):
    return f"it holds a {type(record).__name__}, not a phase record"
  if "checksum" not in record:
    return "it has no checksum: edited by hand or written by other code"
  if record["checksum"] != checksum(record):
    return "it does not match its checksum: edited by hand or corrupted"
  return None


def _content_problem(record: dict, kind: Optional[str]) -> Optional[str]:
  found = record.get("kind")
  if found not in _FIELDS:
    return f"unknown kind {found!r}"
  if kind is not None and found != kind:
    return f"it is a record of kind {found!r}, not {kind!r}"
  why = _field_problem(record, _FIELDS[found])
  if why is not None or found == "outcomes":
    return why or _chunks_problem(record)
  if not all(isinstance(f, str) for f in record["array_fields"]):
    return "field 'array_fields' is not a list of names"
  return None if record["type"] else "field 'type' is empty"


def problem(record, kind: Optional[str] = None) -> Optional[str]:
  """Why `record` cannot be trusted as a record of a `kind` phase.

  Args:
    record: a record as read from its JSON.
    kind: "phase" / "outcomes" (None: either).

  Returns:
    None, or why: not an object, no checksum or one that does not match its content, a missing
    field or one of the wrong type. (Its format and identity are `inspect`'s to check.)
  """
  return _seal_problem(record) or _content_problem(record, kind)


def inspect(path: pathlib.Path, kind: Optional[str] = None, args: Optional[dict] = None,
            phase: Optional[str] = None) -> tuple[Optional[dict], Optional[str]]:
  """Reads the record at `path`, checked (and for its identity: `phase`, default its directory's
  name, and `args` when given).

  Args:
    path: DIR/<phase>/record.json.
    kind: "phase" / "outcomes" (None: either).
    args: the plain arguments the phase gets now (None: not checked).
    phase: the phase it must be the record of (None: the name of its directory).

  Returns:
    (record, None) for a trustworthy record, (None, why) for a damaged one, (None, None) for none.

  Raises:
    DifferentConfigError: a sealed record of an earlier record format (a workdir of an earlier
      version: refused, never reinterpreted).
  """
  if not path.exists():
    return None, None
  try:
    record = store.load_json(path)
  except (ValueError, OSError) as e:   # json.JSONDecodeError is a ValueError
    return None, f"{type(e).__name__}: {str(e)[:80]}"
  why = _seal_problem(record)
  if why is None and record.get("format") != FORMAT:
    raise errors.DifferentConfigError(
        f"workdir: phase {path.parent.name!r} in {path.parent.parent} was stored with record format="
        f"{record.get('format', 1)!r}, {FORMAT} now (an earlier version's run storage); use a new --workdir")
  why = why or _content_problem(record, kind) or identity_problem(record, phase or path.parent.name, args)
  return (None, why) if why else (record, None)


def started(record: dict, path: pathlib.Path) -> float:
  """When a stored phase was started (the file's time when the record does not say)."""
  if is_number(record.get("started")):
    return float(record["started"])
  return path.stat().st_mtime
