"""Several processes on one run (jax.distributed): joining the group, barriers, and the hand-over
of chunks computed by processes p > 0 to process 0, which alone writes the store."""
from __future__ import annotations

import hashlib
import pathlib
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization
from jax.experimental import multihost_utils

from ksurrogate.harness import store
from ksurrogate.harness.runs import storage

# A barrier waits for the slowest process's share of a phase (hours at paper size), so its timeout
# is long; a process that dies is noticed by the peer watch on the locks (lock.PeerWatch) instead.
BARRIER_TIMEOUT_S = 7 * 24 * 3600


def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_group(coordinator_address: Optional[str], num_processes, process_id) -> None:
  """Refuses, in one line naming the flag, a group that cannot be joined as given.

  Args:
    coordinator_address: "host:port" (None: from the launcher).
    num_processes: the processes in the group (None: from the launcher).
    process_id: this process's index (None: from the launcher).

  Raises:
    ValueError: a count below 1, an index outside 0 .. num_processes - 1, or a coordinator
      address that is not host:port with a port in 1 .. 65535.
  """
  if num_processes is not None and (not _is_int(num_processes) or num_processes < 1):
    raise ValueError(f"--num_processes: {num_processes!r} is not a positive number of processes")
  if process_id is not None:
    top = "" if num_processes is None else f" .. {num_processes - 1}"
    if not _is_int(process_id) or process_id < 0 or (num_processes is not None and process_id >= num_processes):
      raise ValueError(f"--process_id: {process_id!r} is outside 0{top}"
                       + ("" if num_processes is None else f" (--num_processes={num_processes})")
                       + "; give each process of the group its own index in that range")
  if coordinator_address is not None:
    host, _, port = str(coordinator_address).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise ValueError(f"--coordinator_address: {coordinator_address!r} is not host:port (a port in 1 .. 65535), "
                       "e.g. --coordinator_address=10.0.0.1:8476, the same in every process")


def initialize_distributed(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None, *, on_error: Optional[Callable[[str], Any]] = None) -> None:
  """Joins this process to its group (`jax.distributed.initialize`) before any JAX computation.

  CPU processes exchange the lock check through gloo collectives.

  Args:
    coordinator_address: the same host:port in every process (None, with the other two: the
      group is read from the launcher: SLURM, Open MPI, Kubernetes, TPU pods).
    num_processes: the processes in the group.
    process_id: this process's index, 0 .. num_processes - 1.
    on_error: given, a refused setting or a failed join is passed to it as its one line (a
      command line's usage-error exit) instead of raised.

  Raises:
    ValueError: the settings cannot make a group (check_group), or joining it failed; one line.
  """
  try:
    check_group(coordinator_address, num_processes, process_id)
    try:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):   # a JAX without the option (or with gloo built in)
      pass
    try:
      jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except (RuntimeError, ValueError) as e:   # jaxlib's errors are RuntimeErrors
      first = " ".join(str(e).split())[:300]
      raise ValueError(f"--coordinator_address: joining the group at {coordinator_address or 'the launcher'} "
                       f"failed ({type(e).__name__}: {first})") from None
  except ValueError as e:
    if on_error is None:
      raise
    on_error(str(e))


def barrier(directory: pathlib.Path, number: int, name: str, count: int) -> None:
  """Waits until every process of the group has reached barrier `number` (`name`) of the run on
  `directory`. Every process passes the same barriers in the same order: they run the same phases."""
  tag = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:12]
  ocp.multihost.sync_global_processes(f"ksurrogate-{tag}-{number}-{name}", timeout=BARRIER_TIMEOUT_S,
                                      processes=set(range(count)))


def any_refused(refused: bool) -> Optional[int]:
  """The first process of the group that says `refused`, else None (every process calls it)."""
  flags = np.asarray(multihost_utils.process_allgather(np.int32(refused))).reshape(-1)
  return int(np.flatnonzero(flags)[0]) if flags.any() else None


# ----------------------------------------------------------------------------------------------
# Chunks handed over: DIR/<phase>/incoming/<i>.msgpack (the outcomes) and <i>.json (what they are).

def hand_over(directory: pathlib.Path, i: int, out, meta: dict) -> None:
  """A process p > 0: chunk i's outcomes for process 0 to store (written atomically; the JSON
  last, so a chunk whose JSON exists is complete).

  Args:
    directory: the phase's directory.
    i: the chunk's index.
    out: the chunk's outcomes (a pytree of arrays).
    meta: what the chunk is (its identity: phase, subsets, chunk_size, args, reads) and its timing.
  """
  payload = serialization.msgpack_serialize(out)
  inbox = directory / "incoming"
  with storage.writing(inbox / f"{i}.msgpack"):
    store.save_bytes(inbox / f"{i}.msgpack", payload)
    store.save_json(inbox / f"{i}.json", {**meta, "chunk": int(i), "sha256": hashlib.sha256(payload).hexdigest()})


def _usable(meta_path: pathlib.Path, wanted: set, key: dict):
  """(chunk, outcomes, meta) of a handed-over chunk of this phase (key: phase, subsets,
  chunk_size, args) that is wanted and intact, else None."""
  try:
    meta = store.load_json(meta_path)
    payload = meta_path.with_suffix(".msgpack").read_bytes()
    same = all(meta[k] == v for k, v in key.items())
    if not (same and int(meta["chunk"]) in wanted and hashlib.sha256(payload).hexdigest() == meta["sha256"]
            and isinstance(meta["reads"], dict)):
      return None
    return int(meta["chunk"]), serialization.msgpack_restore(payload), meta
  except (ValueError, OSError, KeyError, TypeError):
    return None


def receive(directory: pathlib.Path, wanted: set, key: dict, keep: Callable[[int, Any, dict], None]) -> int:
  """Process 0: passes each handed-over chunk it wants to `keep(i, outcomes, meta)` (which stores
  it), then removes every handed-over file.

  Args:
    directory: the phase's directory.
    wanted: the chunks still missing.
    key: the phase's identity (phase, subsets, chunk_size, args) a chunk must have been computed for.
    keep: stores one chunk.

  Returns:
    How many chunks were kept.
  """
  inbox = directory / "incoming"
  if not inbox.is_dir():
    return 0
  received = 0
  for meta_path in sorted(inbox.glob("*.json")):
    found = _usable(meta_path, wanted, key)
    if found is not None:
      keep(*found)
      received += 1
    with storage.writing(meta_path):
      meta_path.unlink(missing_ok=True)
      meta_path.with_suffix(".msgpack").unlink(missing_ok=True)
  for leftover in inbox.glob("*"):   # payloads whose JSON never came (a process killed mid-write)
    with storage.writing(leftover):
      leftover.unlink(missing_ok=True)
  with storage.writing(inbox):
    inbox.rmdir()
  return received
