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
- Every stored file's SHA-256 goes into the phase's record, and each artefact is checked on load: a
  missing or corrupt result, chunk or record is recomputed with one warning line naming it.
- Each record also holds a fingerprint of the stored phases it was computed from: when one of them
  is recomputed (repaired, or deleted by hand), everything computed from it is recomputed too.
- A lock refuses a second process on the same directory; timings (computed vs reused) and one line
  per phase go to the console, to absl logging and to DIR/run.log.

Layout: DIR/.lock, DIR/run.log, DIR/<phase>/record.json, DIR/<phase>/result/ (orbax),
DIR/<phase>/chunks/<i>/ (orbax steps).
"""
from __future__ import annotations

import dataclasses
import datetime
import fcntl
import hashlib
import importlib
import json
import os
import pathlib
import shutil
import sys
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from tqdm.auto import tqdm

from ksurrogate import store

RECORD = "record.json"


class DifferentConfigError(ValueError):
  """The workdir holds a phase computed under other settings."""


class WorkdirInUse(ValueError):
  """Another process holds the run directory's lock."""


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


def _config_difference(config, reads: dict) -> Optional[str]:
  """'path: stored vs now' for the first recorded read whose value changed, else None."""
  for path, stored in sorted(reads.items()):
    try:
      now = _canonical(_lookup(config, path))
    except KeyError:
      return f"{path}: {stored!r} when stored, absent from this config"
    if now != stored:
      return f"{path}={stored!r} when stored, {now!r} now"
  return None


# ----------------------------------------------------------------------------------------------
# Results on disk: arrays through orbax, everything else in the record's JSON.

def _checkpointer():
  return ocp.StandardCheckpointer()


def _has_arrays(value) -> bool:
  return any(isinstance(x, (np.ndarray, jax.Array, np.generic)) for x in jax.tree.leaves(value))


def _split(result):
  """(type name, {field: arrays pytree}, {field: JSON value}) of a dataclass or dict result."""
  if dataclasses.is_dataclass(result):
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    kind = f"{type(result).__module__}:{type(result).__qualname__}"
  elif isinstance(result, dict):
    fields, kind = dict(result), "dict"
  else:
    raise TypeError(f"result: a stored phase must return a dataclass or a dict, got {type(result).__name__}")
  arrays = {k: v for k, v in fields.items() if _has_arrays(v)}
  plain = {k: _canonical(v) for k, v in fields.items() if k not in arrays}
  return kind, arrays, plain


def _join(kind: str, arrays: dict, plain: dict):
  fields = {**plain, **arrays}
  if kind == "dict":
    return fields
  module, qualname = kind.split(":")
  cls = importlib.import_module(module)
  for part in qualname.split("."):
    cls = getattr(cls, part)
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
# The run.

@dataclasses.dataclass
class PhaseTiming:
  seconds: float          # compute time (of the run that computed it, when reused)
  status: str             # "computed", "reused", "resumed" (some chunks reused) or "repaired"


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


class Run:
  """One run directory (see the module doc). Use as a context manager: it holds the lock."""

  def __init__(self, workdir, *, name: str = "run", progress: bool = True, log: Callable[[str], None] = print):
    self.dir = check_workdir(workdir)
    self.name = name
    self.progress = progress
    self._print = log
    self.timings: dict[str, PhaseTiming] = {}
    # id(result) -> (result, config reads behind it, {stored phase: content fingerprint} behind it)
    self._lineage: dict[int, tuple[Any, dict, dict]] = {}
    self._lock_file = None

  # -- lifetime --------------------------------------------------------------------------------
  def __enter__(self):
    self.dir.mkdir(parents=True, exist_ok=True)
    f = open(self.dir / ".lock", "a+")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      raise WorkdirInUse(f"workdir: {self.dir} is in use by another run ({holder}); wait for it or use another --workdir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}")
    f.flush()
    self._lock_file = f
    owner = self.dir / "run.json"
    if owner.exists():
      try:
        stored = store.load_json(owner).get("name")
      except (ValueError, OSError, AttributeError):
        stored = None
      if stored not in (None, self.name):
        self.__exit__()
        raise DifferentConfigError(f"workdir: {self.dir} holds a {stored!r} run, not {self.name!r}; use another --workdir")
    store.save_json(owner, {"name": self.name})
    return self

  def __exit__(self, *exc):
    if self._lock_file is not None:
      fcntl.flock(self._lock_file, fcntl.LOCK_UN)
      self._lock_file.close()
      self._lock_file = None
    return False

  def log(self, message: str) -> None:
    line = f"[{self.name}] {message}"
    self._print(line)
    logging.info(line)
    with open(self.dir / "run.log", "a") as f:
      f.write(f"{datetime.datetime.now().isoformat(timespec='seconds')} {line}\n")

  def warn(self, message: str) -> None:
    line = f"[{self.name}] WARNING: {message}"
    print(line, file=sys.stderr, flush=True)
    logging.info(line)
    with open(self.dir / "run.log", "a") as f:
      f.write(f"{datetime.datetime.now().isoformat(timespec='seconds')} {line}\n")

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

  def _read_record(self, directory: pathlib.Path) -> Optional[dict]:
    path = directory / RECORD
    if not path.exists():
      return None
    try:
      record = store.load_json(path)
      if not isinstance(record, dict) or "reads" not in record:
        raise ValueError("not a phase record")
      return record
    except (ValueError, OSError) as e:   # json.JSONDecodeError is a ValueError
      self.warn(f"{path} is damaged ({type(e).__name__}: {str(e)[:80]}); recomputing {directory.name}")
      shutil.rmtree(directory, ignore_errors=True)
      return None

  def _refuse_if_different(self, name: str, config, record: dict) -> None:
    diff = _config_difference(config, record["reads"])
    if diff is not None:
      raise DifferentConfigError(f"workdir: phase {name!r} in {self.dir} was computed with {diff}; "
                                 "use a new --workdir (or the stored settings)")

  # -- phases ----------------------------------------------------------------------------------
  def phase(self, name: str, fn: Callable, config, *inputs, store: bool = True):
    """result = fn(config_view, *inputs), stored under DIR/name and reused when the config fields
    it read (and those behind its inputs) are unchanged. `inputs` are results of earlier phases
    (anything else is passed through, but its provenance is not part of the key). Stored results
    are dataclasses or dicts of arrays / parameter pytrees / JSON-able values."""
    _check_stop()
    upstream, prints = self._upstream(inputs)
    directory = self.dir / name
    if store:
      record = self._read_record(directory)
      if record is not None:
        self._refuse_if_different(name, config, record)
        if not self._inputs_changed(name, record, prints):
          try:
            result = self._load_result(directory, record)
            self.timings[name] = PhaseTiming(record["seconds"], "reused")
            self.log(f"{name}: reused (computed in {record['seconds']:.1f} s)")
            return self._track(result, record["reads"], prints, (name, _fingerprint(record["files"])))
          except _Damaged as e:
            self.warn(f"{name}: {e}; recomputing it")
        shutil.rmtree(directory, ignore_errors=True)
    reads = dict(upstream)
    t0 = time.perf_counter()
    self.log(f"{name}: computing ...")
    result = fn(ConfigView(config, reads), *inputs)
    seconds = time.perf_counter() - t0
    own = None
    if store:
      own = (name, _fingerprint(self._save_result(directory, result, reads, prints, seconds)))
    self.timings[name] = PhaseTiming(seconds, "computed")
    self.log(f"{name}: computed in {seconds:.1f} s")
    return self._track(result, reads, prints, own)

  def _save_result(self, directory: pathlib.Path, result, reads: dict, prints: dict, seconds: float) -> dict:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    kind, arrays, plain = _split(result)
    if arrays:
      ck = _checkpointer()
      ck.save((directory / "result").resolve(), jax.device_get(arrays), force=True)
      ck.wait_until_finished()
    record = {"phase": directory.name, "reads": reads, "inputs": prints, "type": kind, "plain": plain, "array_fields": sorted(arrays),
              "files": _file_digests(directory), "seconds": seconds,
              "finished": datetime.datetime.now().isoformat(timespec="seconds")}
    store.save_json(directory / RECORD, record)   # written last: a phase without it is not done
    return record["files"]

  def _load_result(self, directory: pathlib.Path, record: dict):
    bad = _check_digests(directory, record.get("files", {}))
    if bad:
      raise _Damaged(bad)
    arrays = {}
    if record.get("array_fields"):
      try:
        arrays = _checkpointer().restore((directory / "result").resolve())
      except Exception as e:  # orbax/tensorstore raise many types for unreadable data
        raise _Damaged(f"{directory / 'result'} cannot be read ({type(e).__name__})") from None
    try:
      return _join(record["type"], arrays, record["plain"])
    except (TypeError, AttributeError, ImportError) as e:   # stored by code whose result type has changed
      raise _Damaged(f"{directory / RECORD} holds a result of another shape than the code makes now ({e})") from None

  # -- chunked outcomes ------------------------------------------------------------------------
  def outcomes(self, name: str, fn: Callable, config, S, *inputs, chunk_size: int):
    """Stacked fn(config_view, S_chunk, chunk_index, *inputs) over row chunks of S [m, K]:
    any outcome source (a pytree with one row per subset), stored chunk by chunk so a killed run
    resumes where it stopped. Every random choice inside fn must depend on the chunk index (and
    the config), never on timing, so a resumed run computes the same numbers."""
    S = np.asarray(S)
    chunk_size = int(chunk_size)
    num_chunks = -(-len(S) // chunk_size)
    directory = self.dir / name
    upstream, prints = self._upstream(inputs)
    subsets_digest = _digest_array(S)
    record = self._read_record(directory)
    if record is not None:
      self._refuse_if_different(name, config, record)
      if self._inputs_changed(name, record, prints):   # the subsets may come from a recomputed input too
        shutil.rmtree(directory, ignore_errors=True)
        record = None
      elif record.get("subsets") != subsets_digest or record.get("chunk_size") != chunk_size:
        raise DifferentConfigError(f"workdir: phase {name!r} in {self.dir} was computed for other subsets or "
                                   "chunking; use a new --workdir (or the stored settings)")
    if record is None:
      record = {"phase": name, "reads": dict(upstream), "inputs": prints, "subsets": subsets_digest,
                "chunk_size": chunk_size, "num_chunks": num_chunks, "chunks": {}, "seconds": 0.0}
    manager = ocp.CheckpointManager(
        (directory / "chunks").resolve(),
        # Synchronous saves: the record lists a chunk only once it is on disk. Temporary folders of
        # a save killed midway are cleaned up when the manager opens.
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=True, max_to_keep=None,
                                             cleanup_tmp_directories=True),
        item_handlers=ocp.StandardCheckpointHandler())
    parts, reused, repaired = {}, 0, 0
    for i in range(num_chunks):
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
    todo = [i for i in range(num_chunks) if i not in parts]
    if reused and todo:
      self.log(f"{name}: {reused} of {num_chunks} chunks reused, computing {len(todo)}")
    elif todo:
      self.log(f"{name}: computing {num_chunks} chunks of {chunk_size} subsets ...")
    reads = record["reads"]
    bar = tqdm(total=len(todo), desc=name, unit="chunk", disable=not self.progress or not todo, leave=False)
    for i in todo:
      _check_stop()
      t0 = time.perf_counter()
      out = jax.device_get(fn(ConfigView(config, reads), S[i * chunk_size:(i + 1) * chunk_size], i, *inputs))
      seconds = time.perf_counter() - t0
      step_dir = directory / "chunks" / str(i)
      if i in manager.all_steps():
        manager.delete(i)
      shutil.rmtree(step_dir, ignore_errors=True)   # a step orbax never finalized
      manager.save(i, args=ocp.args.StandardSave(out), force=True)
      manager.wait_until_finished()
      record["chunks"][str(i)] = {"files": _file_digests(step_dir), "seconds": seconds}
      record["seconds"] = sum(c["seconds"] for c in record["chunks"].values())
      store.save_json(directory / RECORD, record)
      parts[i] = out
      bar.update(1)
    bar.close()
    manager.close()
    total = record["seconds"]
    status = "reused" if not todo else ("repaired" if repaired else ("resumed" if reused else "computed"))
    self.timings[name] = PhaseTiming(total, status)
    if not todo:
      self.log(f"{name}: reused {num_chunks} chunks (computed in {total:.1f} s)")
    else:
      self.log(f"{name}: {status}; {num_chunks} chunks, {total:.1f} s of compute")
    result = jax.tree.map(lambda *t: np.concatenate(t), *[parts[i] for i in range(num_chunks)])
    return self._track(result, reads, prints, (name, _fingerprint({i: c["files"] for i, c in record["chunks"].items()})))

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
    return [{"phase": k, "seconds": v.seconds, "status": v.status} for k, v in self.timings.items()]


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
