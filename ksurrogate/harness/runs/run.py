"""The run: one run directory's phases, stored, checked and reused (see the package doc)."""
from __future__ import annotations

import datetime
import os
import pathlib
import sys
import time
from typing import Any, Callable, Optional

import jax
from absl import logging

from ksurrogate.harness import store
from ksurrogate.harness.runs import config_view
from ksurrogate.harness.runs import distributed
from ksurrogate.harness.runs import errors
from ksurrogate.harness.runs import lock
from ksurrogate.harness.runs import outcomes
from ksurrogate.harness.runs import records
from ksurrogate.harness.runs import results
from ksurrogate.harness.runs import storage
from ksurrogate.harness.runs.timing import PhaseTiming
from ksurrogate.harness.runs.timing import stopwatch
from ksurrogate.harness.runs.workdir import check_workdir


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


def _how_it_left(exc) -> str:
  if exc is None:
    return "finished"
  text = " ".join(str(exc).split())
  return f"stopped: {type(exc).__name__}" + (f": {text[:300]}" if text else "")


class Run:
  """One run directory (see the package doc). Use as a context manager: it holds the lock.

  With `config`, entering checks every stored phase's recorded settings against it first, so a
  changed setting is refused (DifferentConfigError) before any phase runs.

  In a group of processes (jax.distributed initialized, `initialize_distributed`) every process
  opens the same directory and runs the same phases: process 0 holds DIR/.lock, process p > 0
  DIR/.lock.<p>; the group goes ahead only when every process got its lock (an independent run,
  or another group, on the same directory is refused in every process). While it runs, each
  process watches the others' locks: one that dies or stops ends the others in one line.

  Args:
    workdir: the run directory (created if missing; `check_workdir`).
    name: the run's name: the console and log lines' label, and stored in DIR/run.json (entering a
      workdir that holds a run of another name is refused).
    progress: whether chunked phases show a tqdm bar.
    log: where `log` lines go besides absl logging and DIR/run.log (default print).
    config: the experiment's config, checked against every stored phase on entry (None: no
      check).

  Raises:
    ValueError: when the workdir cannot hold a run (`check_workdir`).
  """

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
    self.process_index = jax.process_index()
    self.process_count = jax.process_count()
    self._lock = lock.Lock(self.dir, self.process_index, self.process_count)
    self._watch = None
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

    Args:
      name: the barrier's name, part of its key beside the run directory and the barrier's number.
    """
    if self.process_count > 1:
      self._barriers += 1
      distributed.barrier(self.dir, self._barriers, name, self.process_count)

  # -- lifetime --------------------------------------------------------------------------------
  def _take_locks(self) -> None:
    """Takes this process's lock; in a group, first process 0's (which also checks that no process
    of another group still holds one), then the others', and the group goes on only when all did."""
    holder = None
    if self.is_primary:
      holder = self._lock.take() or lock.group_lock_held(self.dir)
      if holder is not None:
        self._lock.release()
    if self.process_count > 1:
      self.barrier("lock0")
      if not self.is_primary:
        holder = self._lock.take()
      self.barrier("locks")
      first = distributed.any_refused(holder is not None)   # every process has arrived: a short collective
      if first is not None and holder is None:
        self._lock.release()
        holder = f"process {first} of this group found it held"
    if holder is not None:
      raise errors.WorkdirInUse(f"workdir: {self.dir} is in use by another run ({holder}); wait for it or use "
                                "another --workdir")
    if self.process_count > 1:
      self._watch = lock.PeerWatch(self.dir, self.process_index, self.process_count, self._peer_lost).start()

  def _peer_lost(self, message: str) -> None:
    """The peer watch found a process of the group gone: this one cannot go on (its next barrier
    would wait for it), so it says so in one line and ends (exit code 1)."""
    self._write_line(f"[{self._label}] stopped: {message}; rerun the same command in every process to resume "
                     "(finished phases and chunks are kept)", to_stderr=True)
    self._lock.release(f"stopped: it lost a process of the group ({message})")
    sys.stdout.flush()
    os._exit(1)   # the main thread may be inside a barrier nothing else ends

  def __enter__(self):
    self._take_locks()
    try:
      owner = self.dir / "run.json"
      if owner.exists():
        try:
          stored = store.load_json(owner).get("name")
        except (ValueError, OSError, AttributeError):
          stored = None
        if stored not in (None, self.name):
          raise errors.DifferentConfigError(f"workdir: {self.dir} holds a {stored!r} run, not {self.name!r}; use "
                                            "another --workdir")
      if self._config is not None:
        self.check_config(self._config)
      if self.is_primary:
        store.save_json(owner, {"name": self.name})
    except BaseException as e:
      self.__exit__(type(e), e, None)
      raise
    return self

  def __exit__(self, exc_type=None, exc=None, tb=None):
    if self._watch is not None:
      self._watch.stop()
    # A full disk anywhere in the run, or a permission error inside the workdir (a phase, the
    # driver's summary and plots), ends in one line; what was stored before it stays.
    failure = None
    if isinstance(exc, Exception) and not isinstance(exc, errors.StorageError):
      failure = store.storage_error(exc, self.dir, within=self.dir)
    self._lock.release(_how_it_left(failure or exc))
    if failure is not None:
      raise failure from None
    return False

  def check_config(self, config) -> None:
    """Refuses, in one line, a config that differs from a stored phase's in a field that phase read.

    Every stored phase is checked, also those this run may not reach. Damaged records are left to
    the phase that reads them (recomputed there with a warning).

    Args:
      config: the run's config.

    Raises:
      DifferentConfigError: naming the phase computed first among those that differ, and the field.
    """
    differ = []
    for path in self.dir.glob(f"*/{records.RECORD}"):
      record, _ = records.inspect(path)
      if record is not None:
        diff = config_view.difference(config, record["reads"])
        if diff is not None:
          differ.append((records.started(record, path), path.parent.name, diff))
    if differ:
      # the phase computed first is named: the one a check at each phase would have met first
      _, name, diff = min(differ)
      more = f" (and {len(differ) - 1} more stored phase(s) differ)" if len(differ) > 1 else ""
      what, _, todo = diff.partition("; ")
      raise errors.DifferentConfigError(f"workdir: phase {name!r} in {self.dir} was computed with {what}{more}; {todo}")

  def _write_line(self, line: str, to_stderr: bool = False) -> None:
    if to_stderr:
      print(line, file=sys.stderr, flush=True)
    else:
      self._print(line)
    logging.info(line)
    path = self.dir / "run.log"
    with storage.writing(path), open(path, "a") as f:
      f.write(f"{datetime.datetime.now().isoformat(timespec='seconds')} {line}\n")

  def log(self, message: str) -> None:
    """One line to the console (the run's `log`), absl logging and DIR/run.log.

    Args:
      message: the line, prefixed with this process's label.
    """
    self._write_line(f"[{self._label}] {message}")

  def warn(self, message: str) -> None:
    """One warning line to stderr, absl logging and DIR/run.log.

    Args:
      message: the warning, prefixed with this process's label and "WARNING:".
    """
    self._write_line(f"[{self._label}] WARNING: {message}", to_stderr=True)

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
    """True (and says so) when a stored phase this one was computed from has been recomputed since."""
    if record["inputs"] == prints:
      return False
    changed = sorted(k for k in set(prints) | set(record["inputs"]) if prints.get(k) != record["inputs"].get(k))
    self.log(f"{name}: its input {', '.join(changed)} was recomputed since it was stored; recomputing it")
    return True

  def _read_record(self, directory: pathlib.Path, kind: str, args: dict) -> Optional[dict]:
    """The phase's record, or None (none stored, or damaged, or another phase's or arguments':
    then the phase is removed, with one warning line)."""
    path = directory / records.RECORD
    record, why = records.inspect(path, kind, args)
    if why is not None:
      self.warn(f"{path} is damaged ({why}); recomputing {directory.name}")
      storage.remove(directory)
    return record

  def _refuse_if_different(self, name: str, config, record: dict) -> None:
    diff = config_view.difference(config, record["reads"])
    if diff is not None:
      raise errors.DifferentConfigError(f"workdir: phase {name!r} in {self.dir} was computed with {diff}")

  # -- phases ----------------------------------------------------------------------------------
  def phase(self, name: str, fn: Callable, config, *inputs, store: bool = True):
    """Runs or reuses one phase: result = fn(config_view, *inputs).

    Args:
      name: the phase's name (its directory, DIR/name).
      fn: the phase function; it reads the config through the view it gets (what it reads keys it).
      config: the run's config.
      *inputs: results of earlier phases (their provenance is part of the key), and plain values
        (numbers, strings: part of what the phase is computed for, e.g. a seed).
      store: False: always computed, never stored (cheap phases).

    Returns:
      The result: a dict, or a dataclass registered with `stored`, of arrays / parameter pytrees /
      JSON-able values; reused from disk when the config fields it read (and those behind its
      inputs) and its plain inputs are unchanged.
    """
    errors.check_stop()
    upstream, prints = self._upstream(inputs)
    args = records.arguments(fn, inputs)
    directory = self.dir / name
    if not store:
      return self._compute_phase(name, fn, config, inputs, upstream, prints, args, directory, keep=False)
    if self.process_count > 1 and not self.is_primary:   # process 0 computes (or reuses) and stores
      self.barrier(f"{name}:stored")
      return self._phase_from_primary(name, config, prints, args, directory)
    result = self._reuse(name, config, prints, args, directory)
    if result is None:
      result = self._compute_phase(name, fn, config, inputs, upstream, prints, args, directory, keep=True)
    self.barrier(f"{name}:stored")
    return result

  def _reuse(self, name, config, prints, args, directory):
    """The result of a stored phase that passes every check, else None (the stored phase removed)."""
    record = self._read_record(directory, "phase", args)
    if record is not None:
      self._refuse_if_different(name, config, record)
      if not self._inputs_changed(name, record, prints):
        try:
          result = results.load(directory, record, self._solo)
          self.timings[name] = PhaseTiming(record["seconds"], "reused", record.get("seconds_compile", 0.0))
          self.log(f"{name}: reused (computed in {record['seconds']:.1f} s)")
          return self._track(result, record["reads"], prints, (name, records.fingerprint(record["files"])))
        except errors.Damaged as e:
          self.warn(f"{name}: {e}; recomputing it")
      storage.remove(directory)
    return None

  def _compute_phase(self, name, fn, config, inputs, upstream, prints, args, directory, *, keep: bool):
    reads = dict(upstream)
    self.log(f"{name}: computing ...")
    started = time.time()
    with stopwatch() as sw:
      result = fn(config_view.ConfigView(config, reads), *inputs)
    own = None
    if keep:
      record = {"kind": "phase", "phase": name, "args": args, "reads": reads, "inputs": prints, "seconds": sw.seconds,
                "seconds_compile": sw.compile_seconds, "started": started}
      own = (name, records.fingerprint(self._save_phase(directory, result, record)))
    self.timings[name] = PhaseTiming(sw.seconds, "computed", sw.compile_seconds)
    self.log(f"{name}: computed in {sw.seconds:.1f} s")
    return self._track(result, reads, prints, own)

  def _save_phase(self, directory: pathlib.Path, result, record: dict) -> dict:
    """Stores a computed phase: its result, then its record (written last: a phase without it is
    not done). Returns the digests of its files."""
    storage.remove(directory)
    with storage.writing(directory, partial=lambda: [directory]):
      described = results.save(directory, result, self._solo)
      record = {**record, **described, "finished": datetime.datetime.now().isoformat(timespec="seconds")}
      store.save_json(directory / records.RECORD, records.seal(record))
    return described["files"]

  def _phase_from_primary(self, name, config, prints, args, directory):
    """A process p > 0: the phase process 0 has just stored (or reused), loaded from disk."""
    record, why = records.inspect(directory / records.RECORD, "phase", args)
    if record is None:
      raise RuntimeError(f"{name}: process 0 left no usable record at {directory / records.RECORD} ({why or 'none'})")
    self._refuse_if_different(name, config, record)
    try:
      result = results.load(directory, record, self._solo)
    except errors.Damaged as e:
      raise RuntimeError(f"{name}: what process 0 stored cannot be loaded here ({e})") from None
    self.timings[name] = PhaseTiming(record["seconds"], "loaded", record.get("seconds_compile", 0.0))
    self.log(f"{name}: loaded (stored by process 0)")
    return self._track(result, record["reads"], prints, (name, records.fingerprint(record["files"])))

  def outcomes(self, name: str, fn: Callable, config, S, *inputs, chunk_size: int, allow_nonfinite: bool = False):
    """Runs or resumes a chunked phase: fn(config_view, S_chunk, chunk_index, *inputs) stacked over
    row chunks of S, stored chunk by chunk so a killed run resumes where it stopped.

    Every random choice inside fn must depend on the chunk index (and the config), never on timing,
    so a resumed run computes the same numbers. In a group of processes the missing chunks are
    dealt round-robin (process p computes the p-th, (p + n)-th, ... of them); processes p > 0 hand
    theirs to process 0 through DIR/<name>/incoming/, process 0 stores them, and then every
    process loads the whole phase. Chunks handed over by a group that was interrupted are stored
    by the next one, not recomputed.

    Args:
      name: the phase's name (DIR/name).
      fn: any outcome source; returns a pytree with one row per subset.
      config: the run's config.
      S: the subsets [m, K].
      *inputs: results of earlier phases, and plain values (as for `phase`).
      chunk_size: subsets per chunk.
      allow_nonfinite: for sources where NaN or inf is a legitimate outcome that later code handles.

    Returns:
      The stacked outcomes.

    Raises:
      NonFiniteOutcomes: a chunk holds NaN or inf in a float leaf (before it is stored; the chunks
        stored before it are kept): the phase, the chunk, how many rows and targets, and the
        settings it read, likeliest cause first.
    """
    return outcomes.Chunked(self, name, fn, config, S, inputs, chunk_size, allow_nonfinite)()

  # -- outputs ---------------------------------------------------------------------------------
  def timing_rows(self) -> list[dict]:
    """The phase timings as rows, in the order the phases ran.

    Returns:
      [{"phase", "seconds", "seconds_compile", "status"}], one per phase.
    """
    return [{"phase": k, "seconds": v.seconds, "seconds_compile": v.compile_seconds, "status": v.status}
            for k, v in self.timings.items()]
