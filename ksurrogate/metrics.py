"""Scores of surrogates and attributions against ground truth.

`lds` is the linear datamodeling score as datamodels / TRAK / dattri define it: for each target,
the Spearman correlation across held-out subsets between predicted and true outcomes, averaged over
targets. Targets with a constant prediction or truth have no correlation and are left out of the
average (reported via `per_target=True` as NaN).

Two kinds of failure, kept apart so a caller can finish a run on one and not on the other:
  * bad input (wrong shapes, a wrong argument): `ValueError`;
  * a metric that is undefined on the data it is given (fewer than 2 rows, non-finite values, no
    target with a defined correlation, no target varying above a threshold): `Undefined`, a
    `ValueError` whose one-line message says why. The driver reports such a metric as absent
    with that reason; `attempt` does the same for any caller.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from ksurrogate._util import x64


class Undefined(ValueError):
  """The metric has no value on this data (its message says why); not a usage error."""


def attempt(skipped: dict, key: str, fn, *args, **kwargs):
  """fn(*args, **kwargs), or None when the metric is `Undefined` on the data, its reason then
  stored as skipped[key]. Bad input still raises."""
  try:
    return fn(*args, **kwargs)
  except Undefined as e:
    skipped[key] = str(e)
    return None


def _where(mask) -> str:
  """'rows [..], targets [..]' of the True entries of a [n, T] mask (a few of each)."""
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  show = lambda ids: ", ".join(map(str, ids[:5])) + (", ..." if len(ids) > 5 else "")  # noqa: E731
  return f"rows [{show(rows)}], targets [{show(cols)}]"


def _as_matrix(x, name, *, finite: bool = True):
  arr = np.asarray(x, np.float64)
  if arr.ndim == 1:
    arr = arr[:, None]
  if arr.ndim != 2:
    raise ValueError(f"{name}: expected [n] or [n, targets], got shape {arr.shape}")
  if finite and not np.isfinite(arr).all():
    bad = ~np.isfinite(arr)
    raise Undefined(f"{name}: {int(bad.sum())} non-finite values at {_where(bad)}")
  return arr


def _pair(pred, true, *, min_rows: int = 2):
  P, T = _as_matrix(pred, "pred", finite=False), _as_matrix(true, "true", finite=False)
  if P.shape != T.shape:
    raise ValueError(f"pred: shape {P.shape} does not match true {T.shape}")
  _as_matrix(T, "true")
  _as_matrix(P, "pred")
  if P.shape[0] < min_rows:
    raise Undefined(f"pred: need at least {min_rows} rows to score, got {P.shape[0]}")
  if P.shape[1] == 0:
    raise Undefined("pred: no targets to score")
  return jnp.asarray(P), jnp.asarray(T)


def _ranks(x):
  """Average ranks (ties share the mean rank, as scipy.stats.rankdata) along axis 0."""
  def col(v):
    s = jnp.sort(v)
    lo = jnp.searchsorted(s, v, side="left")
    hi = jnp.searchsorted(s, v, side="right")
    return (lo + hi + 1) / 2.0
  return jax.vmap(col, in_axes=1, out_axes=1)(x)


@jax.jit
def _pearson_cols(P, T):
  Pc, Tc = P - P.mean(0), T - T.mean(0)
  denom = jnp.sqrt(jnp.sum(Pc ** 2, 0) * jnp.sum(Tc ** 2, 0))
  return jnp.where(denom > 0, jnp.sum(Pc * Tc, 0) / jnp.where(denom > 0, denom, 1.0), jnp.nan)


@jax.jit
def spearman_columns(P, T):
  """Spearman correlation of each column of P [n, T] with the same column of T (NaN if constant)."""
  return _pearson_cols(_ranks(P), _ranks(T))


def _reduce(values, per_target, P, T):
  values = np.asarray(values)
  if per_target:
    return values
  if np.all(np.isnan(values)):
    flat_t = int(np.sum(np.ptp(np.asarray(T), axis=0) == 0))
    flat_p = int(np.sum(np.ptp(np.asarray(P), axis=0) == 0))
    raise Undefined(f"true: no target has both a varying truth and a varying prediction across the {P.shape[0]} rows "
                    f"(truth constant on {flat_t} of {P.shape[1]} targets, prediction on {flat_p})")
  return float(np.nanmean(values))


@x64
def pearson(pred, true, *, per_target: bool = False):
  """Pearson correlation down each column, averaged over columns."""
  P, T = _pair(pred, true)
  return _reduce(_pearson_cols(P, T), per_target, P, T)


@x64
def spearman(pred, true, *, per_target: bool = False):
  """Spearman correlation down each column (average ranks for ties), averaged over columns."""
  P, T = _pair(pred, true)
  return _reduce(spearman_columns(P, T), per_target, P, T)


def lds(pred, true, *, per_target: bool = False):
  """Linear datamodeling score: pred/true [num_subsets, num_targets]."""
  return spearman(pred, true, per_target=per_target)


def varying_targets(F, threshold: float = 0.0):
  """bool [T]: targets whose unbiased variance across subsets exceeds `threshold` (and is > 0)."""
  F = _as_matrix(F, "F")
  if len(F) < 2:
    raise Undefined(f"F: need at least 2 rows to measure a variance, got {len(F)}")
  var = F.var(axis=0, ddof=1)
  return (var > threshold) & (var > 0)


@x64
def normalized_error(pred, true, *, threshold: float = 0.1, per_target: bool = False):
  """MSE / unbiased variance of the truth, averaged over targets with variance >= threshold
  (and > 0). Below 1 beats predicting each target's mean; the reference README uses threshold 0.1.
  Undefined when no target's truth varies that much.
  """
  P, T = _pair(pred, true)
  var = np.asarray(jnp.var(T, axis=0, ddof=1))
  keep = (var >= threshold) & (var > 0)
  if not keep.any():
    raise Undefined(f"threshold: no target has variance >= {threshold:g} across the {P.shape[0]} rows "
                    f"(max {float(var.max()):.3g} over {len(var)} targets)")
  err = np.asarray(jnp.mean((P - T) ** 2, axis=0)) / np.where(keep, var, 1.0)
  return np.where(keep, err, np.nan) if per_target else float(err[keep].mean())


def _loo_parts(P, T) -> dict:
  """loo_correlation's keys, each its value or the `Undefined` raised computing it."""
  out = {}
  for key, fn, p, t in (("pearson", pearson, P, T), ("spearman", spearman, P, T),
                        ("pearson_mean_target", pearson, P.mean(1), T.mean(1)),
                        ("spearman_mean_target", spearman, P.mean(1), T.mean(1))):
    try:
      out[key] = fn(p, t)
    except Undefined as e:
      out[key] = e
  return out


def loo_correlation(pred_loo, true_loo):
  """Agreement of predicted and real leave-one-out effects across tasks.

  pred_loo/true_loo: [K] or [K, T]. Returns Pearson and Spearman per target averaged over targets,
  and on the mean over targets (the leave-one-out effect on the average target loss). Undefined
  (naming the key) when any of the four is.
  """
  parts = _loo_parts(*_pair(pred_loo, true_loo))
  for key, value in parts.items():
    if isinstance(value, Undefined):
      raise Undefined(f"{value} ({key})")
  return parts


def split_half_ceiling(effects_SxKxT):
  """How well seed-averaged effects (e.g. leave-one-out effects [seeds, K, T]) can be predicted.

  Reliability: for every split of the seeds into two halves, the `loo_correlation` of the halves'
  mean effects, averaged over splits and Spearman-Brown corrected to the full number of seeds
  (2r / (1 + r)). A predictor of the noise-free effects correlates with the noisy seed average at
  most sqrt(reliability): that is the ceiling. Returns (ceiling, reliability), dicts with
  `loo_correlation`'s keys (NaN where the reliability is not positive or, on every split,
  undefined).
  """
  E = np.asarray(effects_SxKxT, np.float64)
  if E.ndim != 3 or E.shape[0] < 2:
    raise ValueError(f"effects_SxKxT: expected [seeds >= 2, K, T], got shape {E.shape}")
  if not np.isfinite(E).all():
    bad = ~np.isfinite(E)
    raise Undefined(f"effects_SxKxT: {int(bad.sum())} non-finite values at seeds "
                    f"{np.flatnonzero(bad.any((1, 2))).tolist()}, {_where(bad.any(0))}")
  n = E.shape[0]
  rows = []
  for half in itertools.combinations(range(n), n // 2):
    rest = [i for i in range(n) if i not in half]
    a, b = E[list(half)].mean(0), E[rest].mean(0)
    rows.append(_loo_parts(*_pair(a, b)) if len(a) >= 2 else {})
  reliability = {}
  for k in ("pearson", "spearman", "pearson_mean_target", "spearman_mean_target"):
    values = [row[k] for row in rows if k in row and not isinstance(row[k], Undefined)]
    r = float(np.mean(values)) if values else float("nan")
    reliability[k] = 2 * r / (1 + r) if r > -1 else float("nan")
  ceiling = {k: float(np.sqrt(r)) if r > 0 else float("nan") for k, r in reliability.items()}
  return ceiling, reliability


def relative_error(estimate, truth, *, eps: float = 1e-12):
  """|estimate - truth| / |truth| elementwise, with summary statistics (undefined on empty or
  non-finite input)."""
  E, T = np.asarray(estimate, np.float64), np.asarray(truth, np.float64)
  if E.shape != T.shape:
    raise ValueError(f"estimate: shape {E.shape} does not match truth {T.shape}")
  for name, a in (("truth", T), ("estimate", E)):
    if not np.isfinite(a).all():
      bad = ~np.isfinite(a)
      where = _where(bad.reshape(len(bad), -1)) if bad.ndim else "the value"
      raise Undefined(f"{name}: {int(bad.sum())} non-finite values at {where}")
  if E.size == 0:
    raise Undefined("estimate: no values to compare")
  rel = np.abs(E - T) / np.maximum(np.abs(T), eps)
  return {"median": float(np.median(rel)), "mean": float(np.mean(rel)), "values": rel}
