"""Run directories: resumable, self-checking storage for an experiment's phases.

An experiment is a few named phase functions composed in a few lines:

    with runs.Run(workdir, name="modular") as run:
      data = run.phase("data", make_data, config, store=False)
      theta0 = run.phase("theta0", train_theta0, config, data)
      F = run.outcomes("retrain", retrain_chunk, config, design.S, data, theta0, chunk_size=8)

- A phase's cache key is the part of the config it READ: the phase gets a view of the config that
  records every field it touches (plus, transitively, what the phases whose results it takes
  read). Reuse checks those values against the current config; a different value is refused in
  one line that names the field, so results of another config are never mixed in or overwritten.
- `outcomes` is the resumable map over subsets: any outcome source `S_chunk -> F_chunk` (retraining,
  fine-tuning, an estimate, real inference) runs chunk by chunk, each chunk stored as one step of
  an orbax `CheckpointManager`; a killed run recomputes only the missing chunks.
- Every stored file's SHA-256 goes into the phase's record, and the record carries a checksum of
  its own content; each artefact is checked on load: a missing, corrupt, edited or malformed
  result, chunk or record is recomputed with one warning line naming it.
- Each record also holds a fingerprint of the stored phases it was computed from: when one of them
  is recomputed (repaired, or deleted by hand), everything computed from it is recomputed too.
- A lock refuses a second process on the same directory; timings (computed vs reused, with the JAX
  compile time apart: `stopwatch`) and one line per phase go to the console, to absl logging and
  to DIR/run.log.
- `Run(..., config=config)` checks every stored phase's settings on entry, so a changed setting
  is refused before anything is computed. A full disk or a permission error anywhere inside the
  run ends in one `StorageError` line naming the path and what to free or fix; chunked outcomes
  with NaN/inf values are refused (`NonFiniteOutcomes`) before they are stored.

- Several processes (`jax.distributed`: one per host or GPU, `initialize_distributed`) share one
  run directory: process 0 computes and stores every non-chunked phase while the others wait and
  then load it, so all hold the same inputs; the missing chunks of an `outcomes` phase are dealt
  round-robin over the processes, and process 0 stores what the others hand over. Only process 0
  writes records and results, so the store is the same whichever number of processes made it.

Layout: DIR/.lock (DIR/.lock.<p> for process p > 0 of a group), DIR/run.log, DIR/<phase>/record.json,
DIR/<phase>/result/ (orbax), DIR/<phase>/chunks/<i>/ (orbax steps), DIR/<phase>/incoming/ (chunks
handed to process 0, while a group runs).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import logging as pylogging
import os
import pathlib
import re
import shutil
import sys
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import serialization
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from ksurrogate.harness import store

RECORD = "record.json"


class DifferentConfigError(ValueError):
  """The workdir holds a phase computed under other settings."""


class WorkdirInUse(ValueError):
  """Another process holds the run directory's lock."""


class NonFiniteOutcomes(ValueError):
  """A chunk of outcomes holds NaN or inf (refused before it is stored)."""


StorageError = store.StorageError   # a write failed for want of space or permission (one-line message)


_STOP = {"requested": False}


def request_stop(signum=None, frame=None):
  """Signal handler (SIGINT, SIGTERM): stop at once, and again at the next phase or chunk
  boundary in case a library swallowed the first KeyboardInterrupt."""
  del signum, frame
  _STOP["requested"] = True
  raise KeyboardInterrupt


def _check_stop():
  if _STOP["requested"]:
    raise KeyboardInterrupt


# ----------------------------------------------------------------------------------------------
# Several processes on one run (jax.distributed).

# A barrier waits for the slowest process's share of a phase (hours at paper size), so its timeout
# is long; a process that dies is noticed by jax.distributed's heartbeat instead, which stops the
# others with an error naming the lost process.
BARRIER_TIMEOUT_S = 7 * 24 * 3600


def initialize_distributed(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> None:
  """Joins this process to its group (`jax.distributed.initialize`) before any JAX computation:
  with no arguments the group is read from the launcher (SLURM, Open MPI, Kubernetes, TPU pods),
  otherwise from the three values (the same coordinator host:port in every process, process ids
  0 .. num_processes - 1). CPU processes exchange the lock check through gloo collectives."""
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, ValueError):   # a JAX without the option (or with gloo built in)
    pass
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def _solo_options(process: int) -> ocp.options.MultiprocessingOptions:
  """Orbax options for a save or restore that one process makes alone (no barrier with the
  others, which are busy elsewhere)."""
  return ocp.options.MultiprocessingOptions(primary_host=process, active_processes={process})


# ----------------------------------------------------------------------------------------------
# Compile time apart from steady-state time.

class Stopwatch:
  """Wall time of a block and the part of it JAX spent compiling (tracing, lowering to MLIR and
  XLA compilation, as `jax.monitoring` reports them). `steady_seconds` is the rest: what the block
  costs once its programs are compiled, the same whichever phase or chunk happened to compile."""

  def __init__(self):
    self.seconds = 0.0
    self._spans: list[tuple[float, float]] = []

  @property
  def compile_seconds(self) -> float:
    total, end = 0.0, -float("inf")
    for a, b in sorted(self._spans):   # union: nested or overlapping events count once
      if b > end:
        total += b - max(a, end)
        end = b
    return min(total, self.seconds)

  @property
  def steady_seconds(self) -> float:
    return self.seconds - self.compile_seconds


_WATCHES: list[Stopwatch] = []
_LISTENING = {"registered": False}


def _on_time_span(event: str, start: float, end: float, **kwargs) -> None:
  del kwargs
  if _WATCHES and event.startswith("/jax/core/compile/"):
    for watch in _WATCHES:
      watch._spans.append((start, end))


def _listen() -> None:
  """Registers the compile-time listener with jax.monitoring once, at the first stopwatch (not on
  import: importing the harness changes no global state)."""
  if not _LISTENING["registered"]:
    jax.monitoring.register_event_time_span_listener(_on_time_span)
    _LISTENING["registered"] = True


@contextlib.contextmanager
def stopwatch():
  """`with stopwatch() as sw: ...` times the block (block on its results inside it): sw.seconds,
  sw.compile_seconds, sw.steady_seconds. Stopwatches nest."""
  _listen()
  watch = Stopwatch()
  _WATCHES.append(watch)
  t0 = time.perf_counter()
  try:
    yield watch
  finally:
    watch.seconds = time.perf_counter() - t0
    _WATCHES.remove(watch)


def steady(work: Callable[[], Any], min_seconds: float = 0.5, max_calls: int = 50) -> tuple[Any, float, float]:
  """(result, steady seconds, one-time seconds) of `work()` (its result is blocked on).

  When the first call compiles anything it is not timed: the first call of a program also pays,
  besides the compilation `jax.monitoring` reports, for its first execution (on CPU, XLA
  finishes preparing the program then), which no event reports; a first run can take several
  times a steady one. Work that takes less than `min_seconds` is called again until the timed
  calls add up to it (at most `max_calls`), and the least time counts (as timeit does: load on a
  shared machine only ever adds time; a call of a few milliseconds varies several-fold). The
  one-time seconds are what the first call cost beyond the steady time. `work` must be
  deterministic (the last result is returned)."""
  with stopwatch() as first:
    result = jax.block_until_ready(work())
  compiled = first.compile_seconds > 0.0
  times = [] if compiled else [first.seconds]
  while not times or (sum(times) < min_seconds and len(times) < max_calls):
    with stopwatch() as again:
      result = jax.block_until_ready(work())
    times.append(again.steady_seconds)   # a work that compiles on every call: the events are all that can be taken out
  seconds = min(times)
  return result, seconds, max(first.seconds - seconds, 0.0) if compiled else 0.0


# ----------------------------------------------------------------------------------------------
# Config views that record what a phase reads.

def _canonical(value):
  """A config value as it reads back from JSON (tuples become lists, numpy scalars plain)."""
  return json.loads(store.dumps(value))


def _is_config(value) -> bool:
  return hasattr(value, "to_dict") and hasattr(value, "keys")


class ConfigView:
  """Read-only view of a (nested) ConfigDict that records each leaf it hands out, by dotted path."""

  def __init__(self, config, reads: dict, path: str = ""):
    object.__setattr__(self, "_config", config)
    object.__setattr__(self, "_reads", reads)
    object.__setattr__(self, "_path", path)

  def _child(self, name):
    value = self._config[name]
    full = f"{self._path}.{name}" if self._path else name
    if _is_config(value):
      return ConfigView(value, self._reads, full)
    self._reads[full] = _canonical(value)
    return value

  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    try:
      return self._child(name)
    except KeyError:
      raise AttributeError(f"config: no field {name!r} in {self._path or 'the config'}") from None

  def __getitem__(self, name):
    return self._child(name)

  def __contains__(self, name):
    return name in self._config

  def __setattr__(self, name, value):
    raise AttributeError(f"config: phases read the config, they never change it (tried to set {name!r})")

  def get(self, name, default=None):
    return self._child(name) if name in self._config else default

  def keys(self):
    return self._config.keys()

  def to_dict(self):
    """The whole sub-tree (recorded as read in full)."""
    value = self._config.to_dict()
    self._reads[self._path or "<config>"] = _canonical(value)
    return value


def _lookup(config, path: str):
  if path == "<config>":
    return config.to_dict()
  node = config
  for part in path.split("."):
    if not _is_config(node) or part not in node:
      raise KeyError(path)
    node = node[part]
  return node.to_dict() if _is_config(node) else node


_USE_ANOTHER = "use a new --workdir (or the stored settings)"
_RENAMED = ("use a new --workdir: a workdir made by a version with other config field names cannot be reused "
            "(the field was renamed or removed)")


def _config_difference(config, reads: dict) -> Optional[str]:
  """'path=stored when stored, now now; what to do' for the recorded read to report (a field the
  config no longer has first: then no setting of this config reproduces the stored phase), else
  None."""
  changed = None
  for path, stored in sorted(reads.items()):
    try:
      now = _canonical(_lookup(config, path))
    except KeyError:
      return f"{path}={stored!r} when stored, a field this config does not have; {_RENAMED}"
    if now != stored and changed is None:
      changed = f"{path}={stored!r} when stored, {now!r} now; {_USE_ANOTHER}"
  return changed


# ----------------------------------------------------------------------------------------------
# Results on disk: arrays through orbax, everything else in the record's JSON.

def _checkpointer(solo: Optional[int] = None):
  """Orbax's checkpointer; `solo`: the process that uses it alone, in a group of several."""
  if solo is None:
    return ocp.StandardCheckpointer()
  return ocp.StandardCheckpointer(multiprocessing_options=_solo_options(solo))


def _has_arrays(value) -> bool:
  return any(isinstance(x, (np.ndarray, jax.Array, np.generic)) for x in jax.tree.leaves(value))


# Stored result types by stable name: a record names its result's type by the name the class was
# registered under (`stored`), never by its Python module path, so moving or renaming a class does
# not invalidate what is on disk.
_STORED: dict[str, type] = {}


def stored(name: str):
  """Class decorator: results of this dataclass are stored (and restored) under `name`, a stable
  key of the form "experiment.thing" (e.g. "modular.theta0"). Changing the name makes stored
  records of it unreadable: they are recomputed, with one warning line."""
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
  arrays = {k: v for k, v in fields.items() if _has_arrays(v)}
  plain = {k: _canonical(v) for k, v in fields.items() if k not in arrays}
  return kind, arrays, plain


def _stored_type(kind: str) -> tuple[Optional[type], bool]:
  """(class, named by a legacy module:qualname) of a record's type; (None, ...) when none is
  registered under it. Records written before stable names (module:qualname) map to the
  registered class that has that qualified name now."""
  if ":" not in kind:
    return _STORED.get(kind), False
  return next((cls for cls in _STORED.values() if _qualified(cls) == kind), None), True


def _join(kind: str, arrays: dict, plain: dict):
  fields = {**plain, **arrays}
  if kind == "dict":
    return fields
  cls, _ = _stored_type(kind)
  if cls is None:
    raise _Damaged(f"it holds a result stored as {kind!r}, a type no registered result has now")
  return cls(**fields)


def _file_digests(directory: pathlib.Path) -> dict:
  out = {}
  for path in sorted(directory.rglob("*")):
    if path.is_file():
      out[str(path.relative_to(directory))] = hashlib.sha256(path.read_bytes()).hexdigest()
  return out


def _check_digests(directory: pathlib.Path, digests: dict) -> Optional[str]:
  """The first missing or altered file under `directory`, else None."""
  for rel, digest in digests.items():
    path = directory / rel
    if not path.is_file():
      return f"{path} is missing"
    if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
      return f"{path} does not match its checksum"
  return None


def _fingerprint(files: dict) -> str:
  """One digest of a stored phase's content (its files' digests)."""
  return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def _digest_array(a) -> str:
  a = np.ascontiguousarray(np.asarray(a))
  return hashlib.sha256(str((a.shape, a.dtype.str)).encode() + a.tobytes()).hexdigest()


class _Damaged(Exception):
  pass


# ----------------------------------------------------------------------------------------------
# Records: the JSON that says a phase is done. Each carries a checksum of its own content and is
# checked for the fields and types its kind needs before anything in it is trusted.

def _checksum(record: dict) -> str:
  return hashlib.sha256(store.dumps({k: v for k, v in record.items() if k != "checksum"}).encode()).hexdigest()


def _seal(record: dict) -> dict:
  record = {k: v for k, v in record.items() if k != "checksum"}
  record["checksum"] = _checksum(record)
  return record


def _is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_digests(x) -> bool:
  return isinstance(x, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in x.items())


_FIELDS = {
    "phase": {"reads": dict, "type": str, "plain": dict, "array_fields": list, "files": _is_digests, "seconds": _is_number},
    "outcomes": {"reads": dict, "subsets": str, "chunk_size": int, "num_chunks": int, "chunks": dict, "seconds": _is_number},
}


def _record_kind(record: dict) -> str:
  return record.get("kind") or ("outcomes" if "chunks" in record else "phase")


def _record_problem(record, kind: Optional[str] = None) -> Optional[str]:
  """Why `record` cannot be trusted as a record of a `kind` phase ("phase" / "outcomes"; None:
  either), else None: not an object, a missing field or one of the wrong type, a checksum that
  does not match its content. Records without a checksum (written before records had one) pass."""
  if not isinstance(record, dict):
    return f"it holds a {type(record).__name__}, not a phase record"
  found = _record_kind(record)
  if found not in _FIELDS:
    return f"unknown kind {found!r}"
  if kind is not None and found != kind:
    return f"it is a record of kind {found!r}, not {kind!r}"
  for field, want in _FIELDS[found].items():
    if field not in record:
      return f"no field {field!r}"
    value = record[field]
    ok = want(value) if callable(want) and not isinstance(want, type) else (
        isinstance(value, want) and not isinstance(value, bool))
    if not ok:
      return f"field {field!r} holds {type(value).__name__} {str(value)[:40]!r}"
  if "inputs" in record and not _is_digests(record["inputs"]):
    return "field 'inputs' is not a map of phase names to fingerprints"
  if found == "phase":
    if not all(isinstance(f, str) for f in record["array_fields"]):
      return "field 'array_fields' is not a list of names"
    if not record["type"]:
      return "field 'type' is empty"
  else:
    for key, chunk in record["chunks"].items():
      if not (key.isdigit() and int(key) < record["num_chunks"]):
        return f"it lists a chunk {key!r} outside 0..{record['num_chunks'] - 1}"
      if not (isinstance(chunk, dict) and _is_digests(chunk.get("files")) and _is_number(chunk.get("seconds"))):
        return f"chunk {key} has no files or seconds"
  if "checksum" in record and record["checksum"] != _checksum(record):
    return "it does not match its checksum: edited by hand or corrupted"
  return None


def _started(record: dict, path: pathlib.Path) -> float:
  """When a stored phase was started (records of earlier versions: finished, or the file's time)."""
  if _is_number(record.get("started")):
    return float(record["started"])
  try:
    return datetime.datetime.fromisoformat(record["finished"]).timestamp()
  except (KeyError, TypeError, ValueError):
    return path.stat().st_mtime


def _inspect_record(path: pathlib.Path, kind: Optional[str] = None) -> tuple[Optional[dict], Optional[str]]:
  """(record, None) for a trustworthy record, (None, why) for a damaged one, (None, None) for none."""
  if not path.exists():
    return None, None
  try:
    record = store.load_json(path)
  except (ValueError, OSError) as e:   # json.JSONDecodeError is a ValueError
    return None, f"{type(e).__name__}: {str(e)[:80]}"
  problem = _record_problem(record, kind)
  return (None, problem) if problem else (record, None)


# ----------------------------------------------------------------------------------------------
# Outcome checks.

_RATE = re.compile(r"(^|[._])(lr|learning_rate|step_size)$")


def _likely_causes(reads: dict, own: set, phase: str, limit: int = 4) -> str:
  """The settings a phase read, most likely cause of diverging numbers first: learning rates,
  those of the phase's own config section, those it read itself, then the rest."""
  section = phase.split("_")[0]

  def rank(k):
    return (not _RATE.search(k), k.split(".")[0] != section, k not in own, k)

  keys = sorted(reads, key=rank)
  shown = ", ".join(f"{k}={reads[k]!r}" for k in keys[:limit])
  return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def _nonfinite(out) -> list[str]:
  """'leaf: r of R rows, t of T targets' for every float leaf of a chunk holding NaN or inf."""
  found = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(out):
    a = np.asarray(leaf)
    if not np.issubdtype(a.dtype, np.inexact):
      continue
    bad = ~np.isfinite(a)
    if not bad.any():
      continue
    name = jax.tree_util.keystr(path, simple=True, separator=".") or "outcomes"
    if a.ndim == 0:
      found.append(f"{name}: {a.item()}")
      continue
    per_row = bad.reshape(len(a), -1)
    text = f"{name}: {int(per_row.any(1).sum())} of {len(a)} rows"
    if a.ndim >= 2:
      text += f", {int(per_row.any(0).sum())} of {per_row.shape[1]} targets"
    found.append(text)
  return found


# ----------------------------------------------------------------------------------------------
# Failed writes: one StorageError line, and no orbax tracebacks on the console for them.

class _HeldErrors(pylogging.Filter):
  """Holds back the ERROR records orbax logs (with tracebacks) from its save threads while a save
  runs: a failure that becomes one StorageError line drops them, any other failure re-emits them."""

  def __init__(self):
    super().__init__()
    self.records = []

  def filter(self, record):
    if record.levelno >= pylogging.ERROR and "orbax" in record.pathname:
      self.records.append(record)
      return False
    return True


@contextlib.contextmanager
def _writing(path: pathlib.Path, partial: Callable[[], list] = lambda: [], name_path: bool = True):
  """Turns a failed write for want of space or permission into one StorageError naming `path`
  (what was being written, not a file deep inside it; name_path=False: the file the error names);
  the paths `partial()` lists (what the write left half-done) are removed so their space is free
  again."""
  logger = pylogging.getLogger("absl")
  held = _HeldErrors()
  logger.addFilter(held)
  try:
    yield
  except Exception as e:
    failure = store.storage_error(e, path, name_path=name_path)
    if failure is None:
      raise
    held.records.clear()
    for leftover in partial():
      shutil.rmtree(leftover, ignore_errors=True)
    raise failure from None
  finally:
    logger.removeFilter(held)
    for record in held.records:
      logger.handle(record)


# ----------------------------------------------------------------------------------------------
# The run.

@dataclasses.dataclass
class PhaseTiming:
  seconds: float          # compute time (of the run that computed it, when reused)
  status: str             # "computed", "reused", "resumed" (some chunks reused) or "repaired"
  compile_seconds: float = 0.0   # the part of `seconds` JAX spent compiling


def check_workdir(workdir) -> pathlib.Path:
  """The workdir as a path; one-line ValueError for an empty name, a file, or no write access."""
  if workdir is None or not str(workdir).strip():
    raise ValueError("workdir: empty; give the directory the run should write to, e.g. --workdir=runs/mine")
  path = pathlib.Path(workdir).expanduser()
  if path.exists() and not path.is_dir():
    raise ValueError(f"workdir: {path} is a file, not a directory")
  probe = path
  while not probe.exists():
    probe = probe.parent
  if not os.access(probe, os.W_OK | os.X_OK):
    raise ValueError(f"workdir: {probe} is not writable")
  return path


def _remove(directory: pathlib.Path) -> None:
  """Removes a stored phase (to recompute it); a failure to is a StorageError, never ignored (a
  half-removed phase would be mixed with the new one)."""
  def failed(function, path, exc_info):
    del function
    if not isinstance(exc_info[1], FileNotFoundError):   # name the entry by its full path (rmtree may not)
      raise OSError(exc_info[1].errno, exc_info[1].strerror, path) from None

  with _writing(directory, name_path=False):   # the entry that could not be removed
    shutil.rmtree(directory, onerror=failed)


class Run:
  """One run directory (see the module doc). Use as a context manager: it holds the lock.

  With `config`, entering checks every stored phase's recorded settings against it first, so a
  changed setting is refused (DifferentConfigError) before any phase runs.

  In a group of processes (jax.distributed initialized, `initialize_distributed`) every process
  opens the same directory and runs the same phases: process 0 holds DIR/.lock, process p > 0
  DIR/.lock.<p>; the group goes ahead only when every process got its lock (an independent run,
  or another group, on the same directory is refused in every process)."""

  def __init__(self, workdir, *, name: str = "run", progress: bool = True, log: Callable[[str], None] = print,
               config=None):
    self.dir = check_workdir(workdir)
    self.name = name
    self.progress = progress
    self._print = log
    self._config = config
    self.timings: dict[str, PhaseTiming] = {}
    # id(result) -> (result, config reads behind it, {stored phase: content fingerprint} behind it)
    self._lineage: dict[int, tuple[Any, dict, dict]] = {}
    self._lock_file = None
    self.process_index = jax.process_index()
    self.process_count = jax.process_count()
    self._barriers = 0
    self._label = name if self.process_count == 1 else f"{name} p{self.process_index}"
    # orbax in a group: every save or restore here is this process's alone
    self._solo = None if self.process_count == 1 else self.process_index

  @property
  def is_primary(self) -> bool:
    """Whether this process writes the store, the summary and the figures (process 0)."""
    return self.process_index == 0

  def barrier(self, name: str) -> None:
    """Waits until every process of the group has reached this point (nothing with one process).
    Every process passes the same barriers in the same order: they run the same phases."""
    if self.process_count == 1:
      return
    self._barriers += 1
    tag = hashlib.sha256(str(self.dir.resolve()).encode()).hexdigest()[:12]
    ocp.multihost.sync_global_processes(f"ksurrogate-{tag}-{self._barriers}-{name}", timeout=BARRIER_TIMEOUT_S,
                                        processes=set(range(self.process_count)))

  # -- lifetime --------------------------------------------------------------------------------
  def _take_lock(self, path: pathlib.Path) -> Optional[str]:
    """Takes the lock file `path` (kept open in self._lock_file); None, or who holds it."""
    with _writing(path):
      self.dir.mkdir(parents=True, exist_ok=True)
      f = open(path, "a+")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      return holder
    self._lock_file = f
    with _writing(path):
      f.seek(0)
      f.truncate()
      f.write(f"pid {os.getpid()}" + (f", process {self.process_index} of {self.process_count}"
                                      if self.process_count > 1 else ""))
      f.flush()
    return None

  def _group_lock_held(self) -> Optional[str]:
    """Who holds a process lock (DIR/.lock.<p>) of a group, if any: a process of an earlier group
    whose process 0 is gone may still be writing."""
    for path in sorted(self.dir.glob(".lock.*")):
      with open(path, "a+") as f:
        try:
          fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
          fcntl.flock(f, fcntl.LOCK_UN)
        except BlockingIOError:
          f.seek(0)
          return f.read().strip() or "a process of another run"
    return None

  def _lock(self) -> None:
    """Takes this process's lock; in a group, first process 0's (which also checks that no process
    of another group still holds one), then the others', and the group goes on only when all did."""
    holder = None
    if self.is_primary:
      holder = self._take_lock(self.dir / ".lock")
      if holder is None:
        holder = self._group_lock_held()
        if holder is not None:
          self._release()
    if self.process_count > 1:
      self.barrier("lock0")
      if not self.is_primary:
        holder = self._take_lock(self.dir / f".lock.{self.process_index}")
      self.barrier("locks")
      # every process has arrived: a short collective, well inside gloo's timeouts
      refused = np.asarray(multihost_utils.process_allgather(np.int32(holder is not None))).reshape(-1)
      if refused.any() and holder is None:
        self._release()
        first = int(np.flatnonzero(refused)[0])
        holder = f"process {first} of this group found it held"
    if holder is not None:
      raise WorkdirInUse(f"workdir: {self.dir} is in use by another run ({holder}); wait for it or use another --workdir")

  def _release(self) -> None:
    if self._lock_file is not None:
      fcntl.flock(self._lock_file, fcntl.LOCK_UN)
      self._lock_file.close()
      self._lock_file = None

  def __enter__(self):
    self._lock()
    try:
      owner = self.dir / "run.json"
      if owner.exists():
        try:
          stored = store.load_json(owner).get("name")
        except (ValueError, OSError, AttributeError):
          stored = None
        if stored not in (None, self.name):
          raise DifferentConfigError(f"workdir: {self.dir} holds a {stored!r} run, not {self.name!r}; use another --workdir")
      if self._config is not None:
        self.check_config(self._config)
      if self.is_primary:
        store.save_json(owner, {"name": self.name})
    except BaseException:
      self.__exit__()
      raise
    return self

  def __exit__(self, exc_type=None, exc=None, tb=None):
    self._release()
    # A full disk anywhere in the run, or a permission error inside the workdir (a phase, the
    # driver's summary and plots), ends in one line; what was stored before it stays.
    if isinstance(exc, Exception) and not isinstance(exc, StorageError):
      failure = store.storage_error(exc, self.dir, within=self.dir)
      if failure is not None:
        raise failure from None
    return False

  def check_config(self, config) -> None:
    """Refuses, in one line, a config that differs from a stored phase's in a field that phase read
    (every stored phase is checked, also those this run may not reach). Damaged records are left
    to the phase that reads them (recomputed there with a warning)."""
    differ = []
    for path in self.dir.glob(f"*/{RECORD}"):
      record, _ = _inspect_record(path)
      if record is not None:
        diff = _config_difference(config, record["reads"])
        if diff is not None:
          differ.append((_started(record, path), path.parent.name, diff))
    if differ:
      # the phase computed first is named: the one a check at each phase would have met first
      _, name, diff = min(differ)
      more = f" (and {len(differ) - 1} more stored phase(s) differ)" if len(differ) > 1 else ""
      what, _, todo = diff.partition("; ")
      raise DifferentConfigError(f"workdir: phase {name!r} in {self.dir} was computed with {what}{more}; {todo}")

  def _append_log(self, line: str) -> None:
    path = self.dir / "run.log"
    with _writing(path), open(path, "a") as f:
      f.write(f"{datetime.datetime.now().isoformat(timespec='seconds')} {line}\n")

  def log(self, message: str) -> None:
    line = f"[{self._label}] {message}"
    self._print(line)
    logging.info(line)
    self._append_log(line)

  def warn(self, message: str) -> None:
    line = f"[{self._label}] WARNING: {message}"
    print(line, file=sys.stderr, flush=True)
    logging.info(line)
    self._append_log(line)

  # -- bookkeeping -----------------------------------------------------------------------------
  def _upstream(self, inputs) -> tuple[dict, dict]:
    """(config reads, stored-phase fingerprints) behind a phase's inputs."""
    reads, prints = {}, {}
    for leaf in _flatten_inputs(inputs):
      entry = self._lineage.get(id(leaf))
      if entry is not None and entry[0] is leaf:
        reads.update(entry[1])
        prints.update(entry[2])
    return reads, prints

  def _track(self, result, reads: dict, prints: dict, own: Optional[tuple[str, str]] = None):
    prints = dict(prints)
    if own is not None:
      prints[own[0]] = own[1]
    self._lineage[id(result)] = (result, dict(reads), prints)
    return result

  def _inputs_changed(self, name: str, record: dict, prints: dict) -> bool:
    """True (and says so) when a stored phase this one was computed from has been recomputed since.
    Records written before fingerprints were kept have no "inputs" and are taken as they are."""
    if "inputs" not in record or record["inputs"] == prints:
      return False
    changed = sorted(k for k in set(prints) | set(record.get("inputs", {}))
                     if prints.get(k) != record.get("inputs", {}).get(k))
    self.log(f"{name}: its input {', '.join(changed)} was recomputed since it was stored; recomputing it")
    return True

  def _read_record(self, directory: pathlib.Path, kind: str) -> Optional[dict]:
    """The phase's record, or None (none stored, or damaged: then the phase is removed, with one
    warning line). A record written before records carried a checksum is accepted as it is: its
    files are still checked against their digests, and it is sealed once it has been reused."""
    path = directory / RECORD
    record, problem = _inspect_record(path, kind)
    if problem is not None:
      self.warn(f"{path} is damaged ({problem}); recomputing {directory.name}")
      _remove(directory)
    return record

  def _seal_legacy(self, directory: pathlib.Path, record: dict) -> None:
    if "checksum" not in record:
      store.save_json(directory / RECORD, _seal({**record, "kind": _record_kind(record)}))
      self.log(f"{directory.name}: its record predates record checksums; accepted as stored and sealed")

  def _rekey(self, directory: pathlib.Path, record: dict) -> None:
    """A record naming its result's type by module:qualname (written before stable names) is
    rewritten with the stable name of the class it was restored as, once."""
    cls, legacy = _stored_type(record["type"])
    if legacy and cls is not None:
      store.save_json(directory / RECORD, _seal({**record, "type": cls.STORED_AS}))
      self.log(f"{directory.name}: its record named its result type {record['type']!r}; re-keyed as {cls.STORED_AS!r}")

  def _refuse_if_different(self, name: str, config, record: dict) -> None:
    diff = _config_difference(config, record["reads"])
    if diff is not None:
      raise DifferentConfigError(f"workdir: phase {name!r} in {self.dir} was computed with {diff}")

  # -- phases ----------------------------------------------------------------------------------
  def phase(self, name: str, fn: Callable, config, *inputs, store: bool = True):
    """result = fn(config_view, *inputs), stored under DIR/name and reused when the config fields
    it read (and those behind its inputs) are unchanged. `inputs` are results of earlier phases
    (anything else is passed through, but its provenance is not part of the key). Stored results
    are dataclasses or dicts of arrays / parameter pytrees / JSON-able values."""
    _check_stop()
    upstream, prints = self._upstream(inputs)
    directory = self.dir / name
    if store and self.process_count > 1:
      # Process 0 computes (or reuses) and stores; the others load what it stored.
      if self.is_primary:
        result = self._phase_here(name, fn, config, inputs, upstream, prints, directory)
        self.barrier(f"{name}:stored")
        return result
      self.barrier(f"{name}:stored")
      return self._phase_from_primary(name, config, prints, directory)
    if not store:
      return self._compute_phase(name, fn, config, inputs, upstream, prints, directory, store=False)
    return self._phase_here(name, fn, config, inputs, upstream, prints, directory)

  def _phase_here(self, name, fn, config, inputs, upstream, prints, directory):
    """A stored phase reused from disk, or computed and stored."""
    record = self._read_record(directory, "phase")
    if record is not None:
      self._refuse_if_different(name, config, record)
      if not self._inputs_changed(name, record, prints):
        try:
          result = self._load_result(directory, record)
          self._seal_legacy(directory, record)
          self._rekey(directory, record)
          self.timings[name] = PhaseTiming(record["seconds"], "reused", record.get("seconds_compile", 0.0))
          self.log(f"{name}: reused (computed in {record['seconds']:.1f} s)")
          return self._track(result, record["reads"], prints, (name, _fingerprint(record["files"])))
        except _Damaged as e:
          self.warn(f"{name}: {e}; recomputing it")
      _remove(directory)
    return self._compute_phase(name, fn, config, inputs, upstream, prints, directory, store=True)

  def _compute_phase(self, name, fn, config, inputs, upstream, prints, directory, *, store: bool):
    reads = dict(upstream)
    self.log(f"{name}: computing ...")
    started = time.time()
    with stopwatch() as sw:
      result = fn(ConfigView(config, reads), *inputs)
    own = None
    if store:
      own = (name, _fingerprint(self._save_result(directory, result, reads, prints, sw, started)))
    self.timings[name] = PhaseTiming(sw.seconds, "computed", sw.compile_seconds)
    self.log(f"{name}: computed in {sw.seconds:.1f} s")
    return self._track(result, reads, prints, own)

  def _phase_from_primary(self, name, config, prints, directory):
    """A process p > 0: the phase process 0 has just stored (or reused), loaded from disk."""
    record, problem = _inspect_record(directory / RECORD, "phase")
    if record is None:
      raise RuntimeError(f"{name}: process 0 left no usable record at {directory / RECORD} ({problem or 'none'})")
    self._refuse_if_different(name, config, record)
    try:
      result = self._load_result(directory, record)
    except _Damaged as e:
      raise RuntimeError(f"{name}: what process 0 stored cannot be loaded here ({e})") from None
    self.timings[name] = PhaseTiming(record["seconds"], "loaded", record.get("seconds_compile", 0.0))
    self.log(f"{name}: loaded (stored by process 0)")
    return self._track(result, record["reads"], prints, (name, _fingerprint(record["files"])))

  def _save_result(self, directory: pathlib.Path, result, reads: dict, prints: dict, sw: Stopwatch,
                   started: float) -> dict:
    _remove(directory)
    kind, arrays, plain = _split(result)
    with _writing(directory, partial=lambda: [directory]):
      directory.mkdir(parents=True)
      if arrays:
        ck = _checkpointer(self._solo)
        ck.save((directory / "result").resolve(), jax.device_get(arrays), force=True)
        ck.wait_until_finished()
      record = {"kind": "phase", "phase": directory.name, "reads": reads, "inputs": prints, "type": kind, "plain": plain,
                "array_fields": sorted(arrays), "files": _file_digests(directory), "seconds": sw.seconds,
                "seconds_compile": sw.compile_seconds, "started": started,
                "finished": datetime.datetime.now().isoformat(timespec="seconds")}
      store.save_json(directory / RECORD, _seal(record))   # written last: a phase without it is not done
    return record["files"]

  def _load_result(self, directory: pathlib.Path, record: dict):
    bad = _check_digests(directory, record["files"])
    if bad:
      raise _Damaged(bad)
    arrays = {}
    if record["array_fields"]:
      try:
        arrays = _checkpointer(self._solo).restore((directory / "result").resolve())
      except Exception as e:  # orbax/tensorstore raise many types for unreadable data
        raise _Damaged(f"{directory / 'result'} cannot be read ({type(e).__name__})") from None
    try:
      return _join(record["type"], arrays, record["plain"])
    except (TypeError, AttributeError, ImportError, ValueError) as e:   # stored by code whose result type has changed
      raise _Damaged(f"{directory / RECORD} holds a result of another shape than the code makes now ({e})") from None

  # -- chunked outcomes ------------------------------------------------------------------------
  def outcomes(self, name: str, fn: Callable, config, S, *inputs, chunk_size: int, allow_nonfinite: bool = False):
    """Stacked fn(config_view, S_chunk, chunk_index, *inputs) over row chunks of S [m, K]:
    any outcome source (a pytree with one row per subset), stored chunk by chunk so a killed run
    resumes where it stopped. Every random choice inside fn must depend on the chunk index (and
    the config), never on timing, so a resumed run computes the same numbers.

    A chunk holding NaN or inf in any float leaf is refused before it is stored
    (NonFiniteOutcomes: the phase, the chunk, how many rows and targets, and the settings it read,
    likeliest cause first); the chunks stored before it are kept. `allow_nonfinite=True` is for
    sources where a non-finite value is a legitimate outcome that later code handles.

    In a group of processes the missing chunks are dealt round-robin (process p computes the
    p-th, (p + n)-th, ... of them); processes p > 0 hand theirs to process 0 through
    DIR/<name>/incoming/, process 0 stores them, and then every process loads the whole phase.
    A chunk's numbers depend on its index alone, so they are those a single process computes.
    Chunks handed over by a group that was interrupted are stored by the next one, not recomputed."""
    # Subsets returned by an earlier phase (e.g. sets chosen from its outcomes) carry its lineage.
    upstream, prints = self._upstream((S, *inputs))
    S = np.asarray(S)
    chunk_size = int(chunk_size)
    num_chunks = -(-len(S) // chunk_size)
    directory = self.dir / name
    key = {"subsets": _digest_array(S), "chunk_size": chunk_size}
    parts, reused, repaired, manager, sealed = {}, 0, 0, None, True
    if self.is_primary:
      record, sealed = self._open_outcomes(name, config, directory, upstream, prints, key, num_chunks)
      manager = self._chunk_manager(directory)
      parts, reused, repaired = self._stored_chunks(name, manager, directory, record)
      if not allow_nonfinite:
        for i, part in parts.items():
          self._refuse_nonfinite(name, i, part, record["reads"], set(), chunk_size, len(S), stored=True)
      if self.process_count > 1:
        reused += self._receive(directory, manager, record, parts, set(range(num_chunks)) - set(parts), key)
        store.save_json(directory / RECORD, _seal(record))   # what the other processes read next
    self.barrier(f"{name}:opened")
    if not self.is_primary:
      record = self._shared_record(name, directory, key)
    done = set(parts) if self.is_primary else {int(k) for k in record["chunks"]}
    todo = [i for i in range(num_chunks) if i not in done]
    self.barrier(f"{name}:planned")
    mine = todo[self.process_index::self.process_count]
    share = "" if self.process_count == 1 else f" ({len(mine)} in this process)"
    if len(done) and todo:
      self.log(f"{name}: {len(done)} of {num_chunks} chunks reused, computing {len(todo)}{share}")
    elif todo:
      self.log(f"{name}: computing {num_chunks} chunks of {chunk_size} subsets{share} ...")
    reads = record["reads"]

    def compute(i):
      out, sw, own = self._compute_chunk(name, fn, config, S, i, inputs, chunk_size, reads, allow_nonfinite,
                                         kept=len(record["chunks"]))
      if self.is_primary:
        self._store_chunk(manager, directory, record, i, out, sw.seconds, sw.compile_seconds)
      else:
        self._hand_over(directory, i, out, sw, own, key)
      return out, sw

    bar = tqdm(total=len(mine), desc=name, unit="chunk", disable=not self.progress or not mine, leave=False)
    compiled = False
    for j, i in enumerate(mine):
      parts[i], sw = compute(i)
      # The time left after the first chunk: the chunks left cost what it did without its
      # compilation. A chunk that compiled also paid for its program's first run, which no event
      # reports, so then the second chunk (a steady one) says it again.
      if (j == 0 or (j == 1 and compiled)) and j + 1 < len(mine):
        compiled = sw.compile_seconds > 0
        left = (sw.seconds - sw.compile_seconds) * (len(mine) - j - 1)
        self.log(f"{name}: chunk {j + 1}/{len(mine)}{'' if self.process_count == 1 else ' of this process'} took "
                 f"{sw.seconds:.1f} s" + (f" ({sw.compile_seconds:.1f} s compiling)" if compiled else "")
                 + f", ~{left:.0f} s left")
      bar.update(1)
    bar.close()
    self.barrier(f"{name}:computed")
    if self.is_primary:
      if self.process_count > 1:
        self._receive(directory, manager, record, parts, set(todo) - set(parts), key)
        for i in sorted(set(todo) - set(parts)):   # a process passed the barrier without handing its chunk over
          self.warn(f"{name}: chunk {i} was not handed over; computing it here")
          parts[i], _ = compute(i)
      if todo:
        # Chunks stored by code whose chunk function returned other fields cannot be stacked with
        # the new ones: recomputed, so every chunk comes from the code that runs now.
        shape = jax.tree.structure(parts[todo[-1]])
        stale = [i for i in sorted(parts) if jax.tree.structure(parts[i]) != shape]
        if stale:
          self.warn(f"{name}: chunks {', '.join(map(str, stale))} were stored by code returning other fields; recomputing them")
          for i in stale:
            parts[i], _ = compute(i)
      manager.close()
      if not sealed and not todo:
        self._seal_legacy(directory, record)
      total = record["seconds"]
      compile_total = sum(c.get("seconds_compile", 0.0) for c in record["chunks"].values())
      status = "reused" if not todo else ("repaired" if repaired else ("resumed" if reused else "computed"))
      self.timings[name] = PhaseTiming(total, status, compile_total)
      if not todo:
        self.log(f"{name}: reused {num_chunks} chunks (computed in {total:.1f} s)")
      else:
        self.log(f"{name}: {status}; {num_chunks} chunks, {total:.1f} s of compute")
    self.barrier(f"{name}:stored")
    if not self.is_primary:
      record, parts = self._load_shared_chunks(name, directory, key, num_chunks)
    result = jax.tree.map(lambda *t: np.concatenate(t), *[parts[i] for i in range(num_chunks)])
    return self._track(result, record["reads"], prints,
                       (name, _fingerprint({i: c["files"] for i, c in record["chunks"].items()})))

  def _open_outcomes(self, name, config, directory, upstream, prints, key, num_chunks) -> tuple[dict, bool]:
    """(record, sealed) of a chunked phase: the stored one when it holds this phase's subsets and
    chunking under the current settings, else a new one. `sealed`: the record has a checksum."""
    record = self._read_record(directory, "outcomes")
    if record is not None:
      self._refuse_if_different(name, config, record)
      if self._inputs_changed(name, record, prints):   # the subsets may come from a recomputed input too
        _remove(directory)
        record = None
      elif record["subsets"] != key["subsets"] or record["chunk_size"] != key["chunk_size"]:
        raise DifferentConfigError(f"workdir: phase {name!r} in {self.dir} was computed for other subsets or "
                                   "chunking; use a new --workdir (or the stored settings)")
    sealed = record is None or "checksum" in record
    if record is None:
      record = {"kind": "outcomes", "phase": name, "reads": dict(upstream), "inputs": prints, "subsets": key["subsets"],
                "chunk_size": key["chunk_size"], "num_chunks": num_chunks, "chunks": {}, "seconds": 0.0,
                "started": time.time()}
    return record, sealed

  def _chunk_manager(self, directory: pathlib.Path, read_only: bool = False):
    """The orbax CheckpointManager over DIR/<phase>/chunks (one step per chunk)."""
    chunks = (directory / "chunks").resolve()
    if self._solo is None:
      with _writing(directory / "chunks"):
        return ocp.CheckpointManager(
            chunks,
            # Synchronous saves: the record lists a chunk only once it is on disk. Temporary folders of
            # a save killed midway are cleaned up when the manager opens.
            options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=True, max_to_keep=None,
                                                 cleanup_tmp_directories=True),
            item_handlers=ocp.StandardCheckpointHandler())
    # In a group the manager is this process's alone (orbax would otherwise wait for the others at
    # every save), and orbax leaves creating the directory to its caller then. A reading process
    # never saves; orbax's own read-only mode would only add two warnings per phase.
    with _writing(directory / "chunks"):
      if not read_only:
        chunks.mkdir(parents=True, exist_ok=True)
      return ocp.CheckpointManager(
          chunks,
          options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=False, max_to_keep=None,
                                               cleanup_tmp_directories=not read_only,
                                               multiprocessing_options=_solo_options(self._solo)),
          item_handlers=ocp.StandardCheckpointHandler(multiprocessing_options=_solo_options(self._solo)))

  def _stored_chunks(self, name, manager, directory, record) -> tuple[dict, int, int]:
    """({chunk: outcomes}, reused, repaired): the stored chunks that pass their checks; a damaged
    one is dropped from the record (one warning) to be recomputed."""
    parts, reused, repaired = {}, 0, 0
    for i in range(record["num_chunks"]):
      entry = record["chunks"].get(str(i))
      if entry is None:
        continue
      try:
        parts[i] = self._load_chunk(manager, directory, i, entry)
        reused += 1
      except _Damaged as e:
        self.warn(f"{name}: chunk {i} is damaged ({e}); recomputing it")
        del record["chunks"][str(i)]
        repaired += 1
    return parts, reused, repaired

  def _compute_chunk(self, name, fn, config, S, i, inputs, chunk_size, reads, allow_nonfinite, kept):
    """(outcomes, stopwatch, config fields fn read) of chunk i, refused when not finite."""
    _check_stop()
    own = {}
    with stopwatch() as sw:
      out = jax.device_get(fn(ConfigView(config, own), S[i * chunk_size:(i + 1) * chunk_size], i, *inputs))
    reads.update(own)
    if not allow_nonfinite:
      self._refuse_nonfinite(name, i, out, reads, set(own), chunk_size, len(S), stored=False, kept=kept)
    return out, sw, own

  def _store_chunk(self, manager, directory, record, i, out, seconds, seconds_compile) -> None:
    """Saves chunk i as step i and lists it in the record (written after the step: a chunk the
    record lists is on disk)."""
    step_dir = directory / "chunks" / str(i)
    with _writing(step_dir, partial=lambda: [step_dir, *step_dir.parent.glob(f"{i}.orbax-checkpoint-tmp*")]):
      if i in manager.all_steps():
        manager.delete(i)
      shutil.rmtree(step_dir, ignore_errors=True)   # a step orbax never finalized
      manager.save(i, args=ocp.args.StandardSave(out), force=True)
      manager.wait_until_finished()
    record["chunks"][str(i)] = {"files": _file_digests(step_dir), "seconds": seconds, "seconds_compile": seconds_compile}
    record["seconds"] = sum(c["seconds"] for c in record["chunks"].values())
    store.save_json(directory / RECORD, _seal(record))

  def _hand_over(self, directory, i, out, sw: Stopwatch, own: dict, key: dict) -> None:
    """A process p > 0: chunk i's outcomes, for process 0 to store (written atomically; the JSON
    last, so a chunk whose JSON exists is complete)."""
    payload = serialization.msgpack_serialize(out)
    meta = {**key, "chunk": int(i), "process": self.process_index, "seconds": sw.seconds,
            "seconds_compile": sw.compile_seconds, "reads": own, "sha256": hashlib.sha256(payload).hexdigest()}
    inbox = directory / "incoming"
    with _writing(inbox / f"{i}.msgpack"):
      store.save_bytes(inbox / f"{i}.msgpack", payload)
      store.save_json(inbox / f"{i}.json", meta)

  def _receive(self, directory, manager, record, parts, wanted: set, key: dict) -> int:
    """Process 0: stores the handed-over chunks it wants (those of this phase's subsets and
    chunking, intact); removes every handed-over file. Returns how many it stored."""
    inbox = directory / "incoming"
    if not inbox.is_dir():
      return 0
    received = 0
    for meta_path in sorted(inbox.glob("*.json")):
      payload_path = meta_path.with_suffix(".msgpack")
      try:
        meta = store.load_json(meta_path)
        payload = payload_path.read_bytes()
        usable = (int(meta["chunk"]) in wanted and meta["subsets"] == key["subsets"] and
                  meta["chunk_size"] == key["chunk_size"] and hashlib.sha256(payload).hexdigest() == meta["sha256"])
      except (ValueError, OSError, KeyError, TypeError):
        usable = False
      if usable:
        i = int(meta["chunk"])
        out = serialization.msgpack_restore(payload)
        record["reads"].update(meta["reads"])
        self._store_chunk(manager, directory, record, i, out, meta["seconds"], meta["seconds_compile"])
        parts[i] = out
        received += 1
      with _writing(meta_path):
        meta_path.unlink(missing_ok=True)
        payload_path.unlink(missing_ok=True)
    for leftover in inbox.glob("*"):   # payloads whose JSON never came (a process killed mid-write)
      with _writing(leftover):
        leftover.unlink(missing_ok=True)
    with _writing(inbox):
      inbox.rmdir()
    return received

  def _shared_record(self, name, directory, key) -> dict:
    """A process p > 0: the record process 0 has just written for this phase."""
    record, problem = _inspect_record(directory / RECORD, "outcomes")
    if record is None or record["subsets"] != key["subsets"] or record["chunk_size"] != key["chunk_size"]:
      raise RuntimeError(f"{name}: process 0 left no record of these subsets at {directory / RECORD} "
                         f"({problem or 'other subsets or chunking'}); do all processes run the same config?")
    return record

  def _load_shared_chunks(self, name, directory, key, num_chunks) -> tuple[dict, dict]:
    """A process p > 0: every chunk of the phase, as process 0 stored it."""
    record = self._shared_record(name, directory, key)
    manager = self._chunk_manager(directory, read_only=True)
    parts = {}
    try:
      for i in range(num_chunks):
        entry = record["chunks"].get(str(i))
        if entry is None:
          raise RuntimeError(f"{name}: process 0 stored no chunk {i} in {directory}")
        try:
          parts[i] = self._load_chunk(manager, directory, i, entry)
        except _Damaged as e:
          raise RuntimeError(f"{name}: chunk {i} as process 0 stored it cannot be loaded here ({e})") from None
    finally:
      manager.close()
    self.timings[name] = PhaseTiming(record["seconds"], "loaded",
                                     sum(c.get("seconds_compile", 0.0) for c in record["chunks"].values()))
    self.log(f"{name}: loaded {num_chunks} chunks (stored by process 0)")
    return record, parts

  def _refuse_nonfinite(self, name, i, out, reads, own, chunk_size, m, *, stored, kept=0):
    found = _nonfinite(out)
    if not found:
      return
    rows = f"subsets {i * chunk_size}-{min((i + 1) * chunk_size, m) - 1}"
    if stored:
      what = (f"{name}: stored chunk {i} ({rows}) holds non-finite outcomes ({'; '.join(found)}), stored before "
              f"outcomes were checked; delete {self.dir / name} once the cause is fixed")
    else:
      what = (f"{name}: chunk {i} ({rows}) has non-finite outcomes ({'; '.join(found)}); it was not stored"
              + (f" (the {kept} chunk(s) stored before it are kept)" if kept else ""))
    raise NonFiniteOutcomes(f"{what}. Likely cause, among the settings this phase read: {_likely_causes(reads, own, name)}")

  def _load_chunk(self, manager, directory: pathlib.Path, i: int, entry: dict):
    step_dir = directory / "chunks" / str(i)
    bad = _check_digests(step_dir, entry["files"])
    if bad:
      raise _Damaged(bad)
    try:
      return manager.restore(i, args=ocp.args.StandardRestore())
    except Exception as e:  # orbax/tensorstore raise many types for unreadable data
      raise _Damaged(f"{step_dir} cannot be read ({type(e).__name__})") from None

  # -- outputs ---------------------------------------------------------------------------------
  def timing_rows(self) -> list[dict]:
    return [{"phase": k, "seconds": v.seconds, "seconds_compile": v.compile_seconds, "status": v.status}
            for k, v in self.timings.items()]


def _flatten_inputs(inputs):
  """The objects a phase receives, containers opened one level deep (a tuple of results counts)."""
  out = []
  for x in inputs:
    out.append(x)
    if isinstance(x, (tuple, list)):
      out.extend(x)
    elif isinstance(x, dict):
      out.extend(x.values())
  return out
