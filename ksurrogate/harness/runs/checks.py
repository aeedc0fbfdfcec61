"""Outcome checks: chunks holding NaN or inf are refused before they are stored, naming the
settings likeliest to have caused them."""
from __future__ import annotations

import re

import jax
import numpy as np

from ksurrogate.harness.runs import errors

_RATE = re.compile(r"(^|[._])(lr|learning_rate|step_size)$")


def likely_causes(reads: dict, own: set, phase: str, limit: int = 4) -> str:
  """The settings a phase read, the likeliest cause of diverging numbers first.

  Args:
    reads: {dotted path: value} the phase read.
    own: the paths the failing chunk read itself.
    phase: the phase's name (its first word names its config section).
    limit: how many settings to show.

  Returns:
    'path=value, ...' ranked: learning rates, the phase's own section, what it read itself, the rest.
  """
  section = phase.split("_")[0]

  def rank(k):
    return (not _RATE.search(k), k.split(".")[0] != section, k not in own, k)

  keys = sorted(reads, key=rank)
  shown = ", ".join(f"{k}={reads[k]!r}" for k in keys[:limit])
  return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def nonfinite(out) -> list[str]:
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


def refuse_nonfinite(phase: str, i: int, out, reads: dict, own: set, rows: str, *, stored_in=None,
                     kept: int = 0) -> None:
  """Raises NonFiniteOutcomes when chunk `i` of `phase` holds NaN or inf.

  Args:
    phase: the phase's name.
    i: the chunk's index.
    out: the chunk's outcomes (a pytree).
    reads: the settings the phase read.
    own: those the chunk read itself.
    rows: which subsets the chunk holds ('subsets a-b').
    stored_in: the phase's directory when the chunk was stored (by a run with allow_nonfinite),
      None for a chunk just computed (not stored).
    kept: how many chunks were stored before it.
  """
  found = nonfinite(out)
  if not found:
    return
  if stored_in is not None:
    what = (f"{phase}: stored chunk {i} ({rows}) holds non-finite outcomes ({'; '.join(found)}), stored by a run that "
            f"allowed them; delete {stored_in} once the cause is fixed")
  else:
    what = (f"{phase}: chunk {i} ({rows}) has non-finite outcomes ({'; '.join(found)}); it was not stored"
            + (f" (the {kept} chunk(s) stored before it are kept)" if kept else ""))
  raise errors.NonFiniteOutcomes(f"{what}. Likely cause, among the settings this phase read: "
                                 f"{likely_causes(reads, own, phase)}")
