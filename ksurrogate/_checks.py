"""Input validation shared by every public entry point.

Each check raises ValueError whose single-line message starts with the offending argument's name,
so a user sees at once which input was wrong. Checks run on host (numpy) before anything is traced.
"""
from __future__ import annotations

import warnings

import numpy as np


def as_subsets(S, name: str = "S", num_tasks: int | None = None) -> np.ndarray:
  """Returns S as a bool [m, K] array; rejects anything that is not a 0/1 matrix."""
  arr = np.asarray(S)
  if arr.ndim != 2:
    raise ValueError(f"{name}: expected a 2-d [num_subsets, num_tasks] indicator matrix, got shape {arr.shape}")
  if arr.dtype != np.bool_:
    if not np.issubdtype(arr.dtype, np.number):
      raise ValueError(f"{name}: expected 0/1 or bool entries, got dtype {arr.dtype}")
    if not np.all((arr == 0) | (arr == 1)):
      bad = arr[(arr != 0) & (arr != 1)].ravel()[0]
      raise ValueError(f"{name}: indicator matrix must be binary (0/1), found value {bad!r}")
    arr = arr.astype(bool)
  if num_tasks is not None and arr.shape[1] != num_tasks:
    raise ValueError(f"{name}: has {arr.shape[1]} task columns but the surrogate was fitted on K={num_tasks}")
  return arr


def as_outcomes(F, num_rows: int, name: str = "F") -> np.ndarray:
  """Returns F as float64 [m, n_targets] (a 1-d F is one target)."""
  arr = np.asarray(F, dtype=np.float64)
  if arr.ndim == 1:
    arr = arr[:, None]
  if arr.ndim != 2:
    raise ValueError(f"{name}: expected [num_subsets] or [num_subsets, num_targets], got shape {arr.shape}")
  if arr.shape[0] != num_rows:
    raise ValueError(f"{name}: has {arr.shape[0]} rows but S has {num_rows} subsets (rows must match)")
  if not np.all(np.isfinite(arr)):
    i, j = np.argwhere(~np.isfinite(arr))[0]
    raise ValueError(f"{name}: contains non-finite value {arr[i, j]} at subset {i}, target {j}")
  return arr


def check_fit_inputs(S, F, cv: int, dedupe: bool = True):
  """Validates a (subsets, outcomes) pair for fitting; de-duplicates repeated subsets."""
  S = as_subsets(S)
  F = as_outcomes(F, S.shape[0])
  if dedupe:
    S, F = deduplicate(S, F)
  if cv is not None and cv > 0:
    if cv < 2:
      raise ValueError(f"cv: need at least 2 folds, got {cv}")
    if S.shape[0] < cv:
      raise ValueError(f"S: {S.shape[0]} distinct subsets is fewer than cv={cv} folds")
  elif S.shape[0] < 2:
    raise ValueError(f"S: need at least 2 distinct subsets to fit, got {S.shape[0]}")
  var = F.var(axis=0)
  if np.any(var == 0):
    j = int(np.flatnonzero(var == 0)[0])
    raise ValueError(
        f"F: target {j} has zero variance across subsets (nothing to fit); drop constant targets first,"
        " e.g. with ksurrogate.metrics.varying_targets")
  return S, F


def deduplicate(S: np.ndarray, F: np.ndarray, *, warn: bool = True):
  """Merges repeated subsets, averaging their outcomes (a repeated row makes the Gram singular)."""
  S, F = np.asarray(S), np.asarray(F, np.float64)
  if F.ndim == 1:
    F = F[:, None]
  uniq, inverse, counts = np.unique(S, axis=0, return_inverse=True, return_counts=True)
  if len(uniq) == len(S):
    return S, F
  if warn:
    warnings.warn(f"S: {len(S) - len(uniq)} duplicate subsets found; averaging their outcomes", stacklevel=3)
  inverse = inverse.ravel()
  F_sum = np.zeros((len(uniq), F.shape[1]))
  np.add.at(F_sum, inverse, F)
  # Keep first-occurrence order so results do not depend on np.unique's sort.
  first = np.full(len(uniq), len(S))
  np.minimum.at(first, inverse, np.arange(len(S)))
  order = np.argsort(first)
  return uniq[order], (F_sum / counts[:, None])[order]


def subsets_with_tasks(S, task_ids, num_examples: int):
  """Validates S [m, K] against each training example's task id; returns (S bool, task_ids int32).

  Rejects ids outside [0, K) and subsets that select no training example.
  """
  S = as_subsets(S)
  K = S.shape[1]
  task_ids = np.asarray(task_ids)
  if task_ids.shape != (num_examples,):
    raise ValueError(f"task_ids: expected shape ({num_examples},) (one task per training example), got {task_ids.shape}")
  if task_ids.min() < 0 or task_ids.max() >= K:
    raise ValueError(f"task_ids: ids must lie in [0, K={K}) for S with {K} columns; found {task_ids.min()}..{task_ids.max()}")
  sizes = S.astype(np.int64) @ np.bincount(task_ids, minlength=K)
  if np.any(sizes == 0):
    raise ValueError(f"S: subset {int(np.flatnonzero(sizes == 0)[0])} selects no training example (empty subset)")
  return S, task_ids.astype(np.int32)


def positive_int(value, name: str) -> int:
  if int(value) != value or value < 1:
    raise ValueError(f"{name}: expected a positive integer, got {value!r}")
  return int(value)


def choice(value, options, name: str):
  if value not in options:
    raise ValueError(f"{name}: unknown value {value!r}; expected one of {sorted(options)}")
  return value
