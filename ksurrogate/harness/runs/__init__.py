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
- Stored results are bound to their identity: each record carries the phase's name, the config
  fields it read and the plain arguments it got (a seed, a problem's name), each chunk carries
  those and its index, and both are checked on load. A phase or chunk copied from another phase,
  seed or place, like a missing, corrupt, edited or malformed result, chunk or record, is damage:
  recomputed with one warning line naming it. Every stored file's SHA-256 goes into the record, and
  the record carries a checksum of its own content; a record without one is damage too.
- Each record also holds a fingerprint of the stored phases it was computed from: when one of them
  is recomputed (repaired, or deleted by hand), everything computed from it is recomputed too.
- A lock refuses a second process on the same directory; timings (computed vs reused, with the JAX
  compile time apart: `stopwatch`) and one line per phase go to the console, to absl logging and
  to DIR/run.log.
- `Run(..., config=config)` checks every stored phase's settings on entry, so a changed setting
  (or a workdir of an earlier record format) is refused before anything is computed. A full disk
  or a permission error anywhere inside the run ends in one `StorageError` line naming the path
  and what to free or fix; chunked outcomes with NaN/inf values are refused (`NonFiniteOutcomes`)
  before they are stored. `check_workdir` refuses, in one line, a workdir that cannot hold a run.
- Several processes (`jax.distributed`: one per host or GPU, `initialize_distributed`) share one
  run directory: process 0 computes and stores every non-chunked phase while the others wait and
  then load it, so all hold the same inputs; the missing chunks of an `outcomes` phase are dealt
  round-robin over the processes, and process 0 stores what the others hand over. Only process 0
  writes records and results, so the store is the same whichever number of processes made it.
  A process that dies or stops ends the others in one line naming it (exit code 1).

Layout: DIR/.lock (DIR/.lock.<p> for process p > 0 of a group), DIR/run.log, DIR/<phase>/record.json,
DIR/<phase>/result/ (orbax), DIR/<phase>/chunks/<i>/ (orbax steps), DIR/<phase>/incoming/ (chunks
handed to process 0, while a group runs).

Modules, one concern each: `run` (the Run), `outcomes` (a chunked phase), `records` (records,
digests, checksums, identity), `results` and `chunks` (what is stored, through orbax),
`config_view` (read tracking), `lock` (the lock and the watch on a group's locks), `distributed`
(joining a group, barriers, the hand-over), `timing`, `checks` (non-finite outcomes), `storage`
(failed writes), `workdir` (the path), `errors`.
"""
from ksurrogate.harness.runs.distributed import BARRIER_TIMEOUT_S  # noqa: F401
from ksurrogate.harness.runs.distributed import check_group  # noqa: F401
from ksurrogate.harness.runs.distributed import initialize_distributed  # noqa: F401
from ksurrogate.harness.runs.errors import DifferentConfigError  # noqa: F401
from ksurrogate.harness.runs.errors import NonFiniteOutcomes  # noqa: F401
from ksurrogate.harness.runs.errors import StorageError  # noqa: F401
from ksurrogate.harness.runs.errors import WorkdirInUse  # noqa: F401
from ksurrogate.harness.runs.errors import request_stop  # noqa: F401
from ksurrogate.harness.runs.records import RECORD  # noqa: F401
from ksurrogate.harness.runs.results import stored  # noqa: F401
from ksurrogate.harness.runs.run import Run  # noqa: F401
from ksurrogate.harness.runs.timing import PhaseTiming  # noqa: F401
from ksurrogate.harness.runs.timing import Stopwatch  # noqa: F401
from ksurrogate.harness.runs.timing import steady  # noqa: F401
from ksurrogate.harness.runs.timing import stopwatch  # noqa: F401
from ksurrogate.harness.runs.workdir import check_workdir  # noqa: F401
