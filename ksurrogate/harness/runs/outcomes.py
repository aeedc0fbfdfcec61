"""One chunked outcomes phase (`Run.outcomes`): the resumable map of an outcome source over row
chunks of the subsets, stored chunk by chunk; in a group, the missing chunks dealt round-robin."""
from __future__ import annotations

import time

import jax
import numpy as np
from tqdm.auto import tqdm

from ksurrogate.harness import store
from ksurrogate.harness.runs import checks
from ksurrogate.harness.runs import chunks
from ksurrogate.harness.runs import config_view
from ksurrogate.harness.runs import distributed
from ksurrogate.harness.runs import errors
from ksurrogate.harness.runs import records
from ksurrogate.harness.runs import storage
from ksurrogate.harness.runs.timing import PhaseTiming
from ksurrogate.harness.runs.timing import stopwatch


class Chunked:
  """The state of one outcomes phase while it runs: its record, the chunks in hand, the manager."""

  def __init__(self, run, name, fn, config, S, inputs, chunk_size: int, allow_nonfinite: bool):
    self.run, self.name, self.fn, self.config, self.inputs = run, name, fn, config, inputs
    # Subsets returned by an earlier phase (e.g. sets chosen from its outcomes) carry its lineage.
    self.upstream, self.prints = run._upstream((S, *inputs))
    self.S = np.asarray(S)
    self.chunk_size = int(chunk_size)
    self.num_chunks = -(-len(self.S) // self.chunk_size)
    self.allow_nonfinite = allow_nonfinite
    self.directory = run.dir / name
    self.key = {"phase": name, "subsets": records.digest_array(self.S), "chunk_size": self.chunk_size,
                "args": records.arguments(fn, inputs)}
    self.record, self.parts, self.manager = None, {}, None
    self.reused = self.repaired = 0

  def rows(self, i: int) -> str:
    return f"subsets {i * self.chunk_size}-{min((i + 1) * self.chunk_size, len(self.S)) - 1}"

  # -- process 0: the stored phase ---------------------------------------------------------------
  def open(self) -> None:
    """The stored record and chunks that pass their checks (damaged ones dropped, one warning
    each), and, in a group, the chunks handed over before an interruption."""
    record = self.run._read_record(self.directory, "outcomes", self.key["args"])
    if record is not None:
      self.run._refuse_if_different(self.name, self.config, record)
      if self.run._inputs_changed(self.name, record, self.prints):   # the subsets may come from a recomputed input
        storage.remove(self.directory)
        record = None
      elif record["subsets"] != self.key["subsets"] or record["chunk_size"] != self.chunk_size:
        raise errors.DifferentConfigError(
            f"workdir: phase {self.name!r} in {self.run.dir} was computed for other subsets or chunking; "
            f"{config_view.USE_ANOTHER}")
    self.record = record or {
        "kind": "outcomes", "phase": self.name, "args": self.key["args"], "reads": dict(self.upstream),
        "inputs": self.prints, "subsets": self.key["subsets"], "chunk_size": self.chunk_size,
        "num_chunks": self.num_chunks, "chunks": {}, "seconds": 0.0, "started": time.time()}
    self.manager = chunks.manager(self.directory, self.run._solo)
    for i in range(self.num_chunks):
      self._load_stored(i)
    if self.run.process_count > 1:
      self.reused += self._receive(set(range(self.num_chunks)) - set(self.parts))
      store.save_json(self.directory / records.RECORD, records.seal(self.record))   # what the others read next

  def _load_stored(self, i: int) -> None:
    entry = self.record["chunks"].get(str(i))
    if entry is None:
      return
    try:
      self.parts[i] = chunks.load(self.manager, self.directory, i, entry, chunks.identity(self.key, i), self.config)
      self.reused += 1
    except errors.Damaged as e:
      self.run.warn(f"{self.name}: chunk {i} is damaged ({e}); recomputing it")
      del self.record["chunks"][str(i)]
      self.repaired += 1
      return
    if not self.allow_nonfinite:
      checks.refuse_nonfinite(self.name, i, self.parts[i], self.record["reads"], set(), self.rows(i),
                              stored_in=self.directory)

  def _store(self, i: int, out, own: dict, seconds: float, seconds_compile: float) -> None:
    """Saves chunk i and lists it in the record (written after the step: a chunk the record lists
    is on disk)."""
    ident = chunks.identity(self.key, i, {**self.upstream, **own})
    files = chunks.save(self.manager, self.directory, i, out, ident)
    self.record["reads"].update(own)
    self.record["chunks"][str(i)] = {"files": files, "seconds": seconds, "seconds_compile": seconds_compile}
    self.record["seconds"] = sum(c["seconds"] for c in self.record["chunks"].values())
    store.save_json(self.directory / records.RECORD, records.seal(self.record))

  def _receive(self, wanted: set) -> int:
    def keep(i, out, meta):
      self._store(i, out, meta["reads"], meta["seconds"], meta["seconds_compile"])
      self.parts[i] = out
    return distributed.receive(self.directory, wanted, self.key, keep)

  # -- every process: the chunks to compute ------------------------------------------------------
  def compute(self, i: int):
    """Chunk i computed here (refused when not finite), then stored (process 0) or handed over."""
    errors.check_stop()
    own = {}
    with stopwatch() as sw:
      out = jax.device_get(self.fn(config_view.ConfigView(self.config, own),
                                   self.S[i * self.chunk_size:(i + 1) * self.chunk_size], i, *self.inputs))
    if not self.allow_nonfinite:
      checks.refuse_nonfinite(self.name, i, out, {**self.record["reads"], **own}, set(own), self.rows(i),
                              kept=len(self.record["chunks"]))
    if self.run.is_primary:
      self._store(i, out, own, sw.seconds, sw.compile_seconds)
    else:
      distributed.hand_over(self.directory, i, out, {**self.key, "process": self.run.process_index,
                                                     "seconds": sw.seconds, "seconds_compile": sw.compile_seconds,
                                                     "reads": own})
    return out, sw

  def compute_share(self, todo: list) -> None:
    """This process's share of the missing chunks, with the time left said after the first."""
    run = self.run
    mine = todo[run.process_index::run.process_count]
    share = "" if run.process_count == 1 else f" ({len(mine)} in this process)"
    done = self.num_chunks - len(todo)
    if done and todo:
      run.log(f"{self.name}: {done} of {self.num_chunks} chunks reused, computing {len(todo)}{share}")
    elif todo:
      run.log(f"{self.name}: computing {self.num_chunks} chunks of {self.chunk_size} subsets{share} ...")
    of = "" if run.process_count == 1 else " of this process"
    bar = tqdm(total=len(mine), desc=self.name, unit="chunk", disable=not run.progress or not mine, leave=False)
    compiled = False
    for j, i in enumerate(mine):
      self.parts[i], sw = self.compute(i)
      # The time left after the first chunk: the chunks left cost what it did without its
      # compilation. A chunk that compiled also paid for its program's first run, which no event
      # reports, so then the second chunk (a steady one) says it again.
      if (j == 0 or (j == 1 and compiled)) and j + 1 < len(mine):
        compiled = sw.compile_seconds > 0
        left = (sw.seconds - sw.compile_seconds) * (len(mine) - j - 1)
        run.log(f"{self.name}: chunk {j + 1}/{len(mine)}{of} took {sw.seconds:.1f} s"
                + (f" ({sw.compile_seconds:.1f} s compiling)" if compiled else "") + f", ~{left:.0f} s left")
      bar.update(1)
    bar.close()

  # -- process 0: the end of the phase -----------------------------------------------------------
  def finish(self, todo: list) -> None:
    """Stores what the others handed over (computing what they did not), recomputes chunks of
    another structure, and says how the phase went."""
    if self.run.process_count > 1:
      self._receive(set(todo) - set(self.parts))
      for i in sorted(set(todo) - set(self.parts)):   # a process passed the barrier without handing its chunk over
        self.run.warn(f"{self.name}: chunk {i} was not handed over; computing it here")
        self.parts[i], _ = self.compute(i)
    if todo:
      # Chunks stored by code whose chunk function returned other fields cannot be stacked with
      # the new ones: recomputed, so every chunk comes from the code that runs now.
      shape = jax.tree.structure(self.parts[todo[-1]])
      stale = [i for i in sorted(self.parts) if jax.tree.structure(self.parts[i]) != shape]
      if stale:
        self.run.warn(f"{self.name}: chunks {', '.join(map(str, stale))} were stored by code returning other "
                      "fields; recomputing them")
        for i in stale:
          self.parts[i], _ = self.compute(i)
    self.manager.close()
    total = self.record["seconds"]
    compile_total = sum(c.get("seconds_compile", 0.0) for c in self.record["chunks"].values())
    status = "reused" if not todo else ("repaired" if self.repaired else ("resumed" if self.reused else "computed"))
    self.run.timings[self.name] = PhaseTiming(total, status, compile_total)
    if not todo:
      self.run.log(f"{self.name}: reused {self.num_chunks} chunks (computed in {total:.1f} s)")
    else:
      self.run.log(f"{self.name}: {status}; {self.num_chunks} chunks, {total:.1f} s of compute")

  # -- processes p > 0: what process 0 stored ----------------------------------------------------
  def shared_record(self) -> dict:
    """The record process 0 has just written for this phase."""
    record, why = records.inspect(self.directory / records.RECORD, "outcomes", self.key["args"])
    if record is None or record["subsets"] != self.key["subsets"] or record["chunk_size"] != self.chunk_size:
      raise RuntimeError(f"{self.name}: process 0 left no record of these subsets at {self.directory / records.RECORD} "
                         f"({why or 'other subsets or chunking'}); do all processes run the same config?")
    return record

  def load_shared(self) -> None:
    """Every chunk of the phase, as process 0 stored it."""
    self.record = self.shared_record()
    mgr = chunks.manager(self.directory, self.run._solo, read_only=True)
    try:
      for i in range(self.num_chunks):
        entry = self.record["chunks"].get(str(i))
        if entry is None:
          raise RuntimeError(f"{self.name}: process 0 stored no chunk {i} in {self.directory}")
        try:
          self.parts[i] = chunks.load(mgr, self.directory, i, entry, chunks.identity(self.key, i), self.config)
        except errors.Damaged as e:
          raise RuntimeError(f"{self.name}: chunk {i} as process 0 stored it cannot be loaded here ({e})") from None
    finally:
      mgr.close()
    self.run.timings[self.name] = PhaseTiming(self.record["seconds"], "loaded", sum(
        c.get("seconds_compile", 0.0) for c in self.record["chunks"].values()))
    self.run.log(f"{self.name}: loaded {self.num_chunks} chunks (stored by process 0)")

  # -- the whole phase -------------------------------------------------------------------------
  def __call__(self):
    run = self.run
    if run.is_primary:
      self.open()
    run.barrier(f"{self.name}:opened")
    if not run.is_primary:
      self.record = self.shared_record()
    done = set(self.parts) if run.is_primary else {int(k) for k in self.record["chunks"]}
    todo = [i for i in range(self.num_chunks) if i not in done]
    run.barrier(f"{self.name}:planned")
    self.compute_share(todo)
    run.barrier(f"{self.name}:computed")
    if run.is_primary:
      self.finish(todo)
    run.barrier(f"{self.name}:stored")
    if not run.is_primary:
      self.load_shared()
    result = jax.tree.map(lambda *t: np.concatenate(t), *[self.parts[i] for i in range(self.num_chunks)])
    own = (self.name, records.fingerprint({i: c["files"] for i, c in self.record["chunks"].items()}))
    return run._track(result, self.record["reads"], self.prints, own)
