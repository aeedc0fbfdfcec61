"""Chunks of an outcomes phase on disk: one orbax step per chunk, each carrying its identity (the
phase, the chunk index, the subsets and chunking, the plain arguments and the config fields it
was computed with), checked on load so a chunk copied from another phase or place is damage."""
from __future__ import annotations

import pathlib
import shutil
from typing import Optional

import orbax.checkpoint as ocp

from ksurrogate.harness.runs import config_view
from ksurrogate.harness.runs import errors
from ksurrogate.harness.runs import records
from ksurrogate.harness.runs import results
from ksurrogate.harness.runs import storage


def manager(directory: pathlib.Path, solo: Optional[int], read_only: bool = False):
  """The orbax CheckpointManager over DIR/<phase>/chunks (one step per chunk).

  Args:
    directory: the phase's directory.
    solo: in a group, this process (the manager is its alone); None with one process.
    read_only: a process that only reads (never saves or cleans up).

  Returns:
    An open CheckpointManager (close it).
  """
  chunks = (directory / "chunks").resolve()
  with storage.writing(directory / "chunks"):
    if solo is None:
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
    if not read_only:
      chunks.mkdir(parents=True, exist_ok=True)
    return ocp.CheckpointManager(
        chunks,
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=False, max_to_keep=None,
                                             cleanup_tmp_directories=not read_only,
                                             multiprocessing_options=results.solo_options(solo)),
        item_handlers=ocp.StandardCheckpointHandler(multiprocessing_options=results.solo_options(solo)))


def identity(key: dict, i: int, reads: Optional[dict] = None) -> dict:
  """What chunk `i` of a phase (key: phase, subsets, chunk_size, args) was computed for, with the
  settings it read (stored with it; a wanted identity has none: the config is what it must match)."""
  return {**key, "chunk": int(i), **({} if reads is None else {"reads": reads})}


def save(mgr, directory: pathlib.Path, i: int, out, ident: dict) -> dict:
  """Saves chunk i as step i, its identity in the step's metadata.

  Returns:
    {file: SHA-256} of the step's files.
  """
  step_dir = directory / "chunks" / str(i)
  with storage.writing(step_dir, partial=lambda: [step_dir, *step_dir.parent.glob(f"{i}.orbax-checkpoint-tmp*")]):
    if i in mgr.all_steps():
      mgr.delete(i)
    shutil.rmtree(step_dir, ignore_errors=True)   # a step orbax never finalized
    mgr.save(i, args=ocp.args.StandardSave(out), force=True, custom_metadata=ident)
    mgr.wait_until_finished()
  return records.file_digests(step_dir)


def identity_problem(found, want: dict, config) -> Optional[str]:
  """Why a chunk's stored identity is not the one wanted (config: the current config, which the
  settings it was computed with must match), else None."""
  if not isinstance(found, dict):
    return "it carries no identity"
  if found.get("phase") != want["phase"]:
    return f"it is a chunk of phase {found.get('phase')!r}, copied here"
  if found.get("chunk") != want["chunk"]:
    return f"it is chunk {found.get('chunk')!r}, copied or swapped here"
  if found.get("subsets") != want["subsets"] or found.get("chunk_size") != want["chunk_size"]:
    return "it was computed for other subsets or chunking"
  if found.get("args") != want["args"]:
    return f"it was computed for {records.describe(found.get('args') or {})}, not {records.describe(want['args'])}"
  if not isinstance(found.get("reads"), dict):
    return "it does not say which settings it was computed with"
  diff = config_view.difference(config, found["reads"])
  return None if diff is None else f"it was computed with {diff.partition('; ')[0]}"


def load(mgr, directory: pathlib.Path, i: int, entry: dict, want: dict, config):
  """Chunk i as stored; Damaged when a file is missing or altered, it is not the chunk `want`
  describes, or it cannot be read."""
  step_dir = directory / "chunks" / str(i)
  bad = records.check_digests(step_dir, entry["files"])
  if bad:
    raise errors.Damaged(bad)
  try:
    found = mgr.metadata(i).custom_metadata
  except Exception as e:  # orbax raises many types for unreadable metadata
    raise errors.Damaged(f"{step_dir} has no readable metadata ({type(e).__name__})") from None
  why = identity_problem(found, want, config)
  if why is not None:
    raise errors.Damaged(f"{step_dir}: {why}")
  try:
    return mgr.restore(i, args=ocp.args.StandardRestore())
  except Exception as e:  # orbax/tensorstore raise many types for unreadable data
    raise errors.Damaged(f"{step_dir} cannot be read ({type(e).__name__})") from None
