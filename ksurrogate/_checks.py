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
      raise ValueError(f"{name}: indicator matrix must be binary (0/1), found value {bad.item()!r}")
    arr = arr.astype(bool)
  if num_tasks is not None and arr.shape[1] != num_tasks:
    raise ValueError(f"{name}: has {arr.shape[1]} task columns but the surrogate was fitted on K={num_tasks}")
  return arr


def as_outcomes(F, num_rows: int, name: str = "F", row: str = "subset") -> np.ndarray:
  """Returns F as float64 [m, n_targets] (a 1-d F is one target); refuses non-finite entries."""
  arr = np.asarray(F, dtype=np.float64)
  if arr.ndim == 1:
    arr = arr[:, None]
  if arr.ndim != 2:
    raise ValueError(f"{name}: expected [num_subsets] or [num_subsets, num_targets], got shape {arr.shape}")
  if arr.shape[0] != num_rows:
    raise ValueError(f"{name}: has {arr.shape[0]} rows but S has {num_rows} subsets (rows must match)")
  finite(arr, name, row=row)
  return arr


def _listed(ids, limit: int = 8) -> str:
  ids = [int(i) for i in ids]
  return ", ".join(map(str, ids[:limit])) + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def finite(arr, name: str, row: str = "subset", col: str = "target", offset: int = 0, what: str = "values"):
  """Refuses NaN / inf in a [rows, cols, ...] array with one line naming the rows and columns hit.

  `offset` shifts the row numbers (for an array checked in blocks)."""
  arr = np.asarray(arr)
  if np.issubdtype(arr.dtype, np.bool_) or np.issubdtype(arr.dtype, np.integer):
    return arr
  bad = ~np.isfinite(arr)
  if not bad.any():
    return arr
  if arr.ndim == 0:
    raise ValueError(f"{name}: must be finite, got {arr.item()}")
  first = tuple(np.argwhere(bad)[0])
  rows = np.flatnonzero(bad.reshape(len(arr), -1).any(1)) + offset
  where = f"{row}s {_listed(rows)}"
  if arr.ndim >= 2:
    cols = np.flatnonzero(bad.reshape(arr.shape[0], arr.shape[1], -1).any((0, 2)))
    where += f"; {col}s {_listed(cols)}"
  raise ValueError(f"{name}: {int(bad.sum())} non-finite {what} (first {arr[first]} at {row} {first[0] + offset}) in "
                   f"{where}")


def positive_number(value, name: str, *, allow_zero: bool = False) -> float:
  """A finite float > 0 (>= 0 with allow_zero); NaN, inf and non-numbers get one line."""
  try:
    x = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name}: expected a number, got {value!r}") from None
  if not np.isfinite(x) or x < 0 or (x == 0 and not allow_zero):
    raise ValueError(f"{name}: must be finite and {'non-negative' if allow_zero else 'positive'}, got {value!r}")
  return x


def grid(values, name: str, *, allow_zero: bool = False) -> np.ndarray:
  """A non-empty 1-d float64 grid of finite positive (or non-negative) values."""
  try:
    arr = np.atleast_1d(np.asarray(values, np.float64))
  except (TypeError, ValueError):
    raise ValueError(f"{name}: expected a sequence of numbers, got {values!r}") from None
  if arr.ndim != 1 or arr.size == 0:
    raise ValueError(f"{name}: expected a non-empty 1-d grid, got shape {arr.shape}")
  ok = np.isfinite(arr) & ((arr >= 0) if allow_zero else (arr > 0))
  if not ok.all():
    i = int(np.flatnonzero(~ok)[0])
    raise ValueError(f"{name}: entry {i} is {float(arr[i])}; every entry must be finite and "
                     f"{'non-negative' if allow_zero else 'positive'}")
  return arr


def check_fit_inputs(S, F, cv, *, uses_cv: bool = True, dedupe: bool = True, no_cv_hint: str = "", rows=as_subsets):
  """Validates a (subsets, outcomes) pair and the fold count for fitting; de-duplicates subsets.
  `rows` validates S (default: a 0/1 indicator matrix; `inputs.as_inputs` for real-valued rows).

  With `uses_cv`, every training fold must keep at least 2 distinct subsets: with fewer, every
  grid point's held-out error is the same (a fold trained on one subset predicts its value
  everywhere), so the "chosen" hyper-parameters would be the first grid entry, silently.
  Without CV (hyper-parameters given), 2 distinct subsets fit with one warning.
  """
  S = rows(S)
  F = as_outcomes(F, S.shape[0])
  if dedupe:
    S, F = deduplicate(S, F)
  m = S.shape[0]
  if uses_cv or cv is not None:
    if isinstance(cv, (bool, np.bool_)) or not isinstance(cv, (int, np.integer)) or cv < 2:
      raise ValueError(f"cv: expected an integer number of folds >= 2, got {cv!r}")
  if uses_cv:
    if m < 3:   # no number of folds leaves 2 per training fold (3 subsets do, with cv=3): advise no cv
      raise ValueError(f"S: {m} distinct subsets (after merging duplicates); cross-validation needs at least 3 "
                       f"(sample more distinct subsets{no_cv_hint})")
    if cv > m:
      raise ValueError(f"cv: {cv} folds exceed the {m} distinct subsets (after merging duplicates); use cv <= {m}")
    per_fold = m - -(-m // cv)          # training subsets left beside the largest held-out fold
    if per_fold < 2:
      raise ValueError(f"S: {m} distinct subsets leave {per_fold} per training fold with cv={cv}; cross-validation "
                       f"needs at least 2 (sample more subsets{no_cv_hint})")
  elif m < 2:
    raise ValueError(f"S: need at least 2 distinct subsets to fit, got {m}")
  elif m == 2:
    warnings.warn("S: only 2 distinct subsets; the fit interpolates those two and the given hyper-parameters "
                  "alone decide everything between them", stacklevel=3)
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


def class_labels(y, num_classes: int, name: str = "y") -> np.ndarray:
  """Refuses class labels that are not integers in [0, num_classes): an out-of-range label would
  be clamped by JAX's indexing into a real class and give finite, wrong numbers."""
  arr = np.asarray(y)
  if not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"{name}: class labels must be integers in [0, {num_classes}), got dtype {arr.dtype}")
  bad = (arr < 0) | (arr >= num_classes)
  if bad.any():
    i = int(np.flatnonzero(bad.reshape(len(arr), -1).any(1))[0]) if arr.ndim else 0
    raise ValueError(f"{name}: label {arr[bad].ravel()[0].item()} (example {i}) is outside [0, {num_classes}) for a "
                     f"model with {num_classes} classes")
  return arr
