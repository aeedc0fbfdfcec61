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

Their uncertainty lives in `ksurrogate.intervals` and the ceilings a noisy truth allows in
`ksurrogate.ceilings`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ksurrogate._util import x64


class Undefined(ValueError):
  """The metric has no value on this data (its message says why); not a usage error."""


def attempt(skipped: dict, key: str, fn, *args, **kwargs):
  """fn(*args, **kwargs), or None when the metric is `Undefined` on the data, its reason then
  stored as skipped[key]. Bad input still raises.

  Args:
    skipped: a dict the reason is stored in.
    key: the metric's name in `skipped`.
    fn: the metric.
    *args: fn's positional arguments.
    **kwargs: fn's keyword arguments.

  Returns:
    fn's value, or None.
  """
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


def rank_columns(x):
  """Average ranks (ties share the mean rank, as scipy.stats.rankdata) down each column of x [n, T].

  Args:
    x: [n, T].

  Returns:
    float [n, T], ranks 1..n.
  """
  def col(v):
    s = jnp.sort(v)
    lo = jnp.searchsorted(s, v, side="left")
    hi = jnp.searchsorted(s, v, side="right")
    return (lo + hi + 1) / 2.0
  return jax.vmap(col, in_axes=1, out_axes=1)(x)


@jax.jit
def pearson_columns(P, T):
  """Pearson correlation of each column of P [n, T] with the same column of T (NaN if constant).

  Args:
    P: float [n, T].
    T: float [n, T].

  Returns:
    float [T].
  """
  Pc, Tc = P - P.mean(0), T - T.mean(0)
  denom = jnp.sqrt(jnp.sum(Pc ** 2, 0) * jnp.sum(Tc ** 2, 0))
  return jnp.where(denom > 0, jnp.sum(Pc * Tc, 0) / jnp.where(denom > 0, denom, 1.0), jnp.nan)


@jax.jit
def spearman_columns(P, T):
  """Spearman correlation of each column of P [n, T] with the same column of T (NaN if constant).

  Args:
    P: float [n, T].
    T: float [n, T].

  Returns:
    float [T].
  """
  return pearson_columns(rank_columns(P), rank_columns(T))


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
  """Pearson correlation down each column, averaged over columns.

  Args:
    pred: [n] or [n, T] predictions.
    true: the same shape, the truth.
    per_target: return the per-column values instead of their mean.

  Returns:
    A float (the mean over columns with a defined correlation), or float [T] with NaN where a
    column is constant.

  Raises:
    ValueError: when the shapes differ or are not [n] / [n, T].
    Undefined: on fewer than 2 rows, non-finite values, or no column with a defined correlation.
  """
  P, T = _pair(pred, true)
  return _reduce(pearson_columns(P, T), per_target, P, T)


@x64
def spearman(pred, true, *, per_target: bool = False):
  """Spearman correlation down each column (average ranks for ties), averaged over columns.

  Args:
    pred: [n] or [n, T] predictions.
    true: the same shape, the truth.
    per_target: return the per-column values instead of their mean.

  Returns:
    A float, or float [T] (NaN where a column is constant).

  Raises:
    ValueError: when the shapes differ or are not [n] / [n, T].
    Undefined: on fewer than 2 rows, non-finite values, or no column with a defined correlation.
  """
  P, T = _pair(pred, true)
  return _reduce(spearman_columns(P, T), per_target, P, T)


@x64
def lds(pred, true, *, per_target: bool = False):
  """Linear datamodeling score: the Spearman correlation of pred/true [num_subsets, num_targets]
  down each target, averaged over targets.

  A target whose prediction is constant across the subsets while its truth varies ranks nothing:
  it scores 0 (no information), so it lowers the mean instead of leaving it. A target whose truth
  is constant has nothing to rank and is left out (NaN per target); undefined when every truth is.

  Args:
    pred: [m] or [m, T] predicted outcomes on held-out subsets.
    true: the same shape, the real outcomes.
    per_target: return the per-target values instead of their mean.

  Returns:
    A float, or float [T].

  Raises:
    ValueError: when the shapes differ or are not [m] / [m, T].
    Undefined: on fewer than 2 rows, non-finite values, or a constant truth on every target.
  """
  P, T = _pair(pred, true)
  values = np.asarray(spearman_columns(P, T))
  flat_pred = (np.ptp(np.asarray(P), axis=0) == 0) & (np.ptp(np.asarray(T), axis=0) > 0)
  return _reduce(np.where(flat_pred, 0.0, values), per_target, P, T)


def varying_targets(F, threshold: float = 0.0):
  """bool [T]: targets whose unbiased variance across subsets exceeds `threshold` (and is > 0).

  Args:
    F: [m] or [m, T] outcomes.
    threshold: the variance a target must exceed.

  Returns:
    bool [T] (numpy).

  Raises:
    Undefined: on fewer than 2 rows or non-finite values.
  """
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

  Args:
    pred: [m] or [m, T] predictions.
    true: the same shape, the truth.
    threshold: the smallest truth variance a target is scored at.
    per_target: return float [T] (NaN on the targets left out) instead of the mean.

  Returns:
    A float, or float [T].

  Raises:
    ValueError: when the shapes differ.
    Undefined: on fewer than 2 rows, non-finite values, or no target varying that much.
  """
  P, T = _pair(pred, true)
  var = np.asarray(jnp.var(T, axis=0, ddof=1))
  keep = (var >= threshold) & (var > 0)
  if not keep.any():
    raise Undefined(f"threshold: no target has variance >= {threshold:g} across the {P.shape[0]} rows "
                    f"(max {float(var.max()):.3g} over {len(var)} targets)")
  err = np.asarray(jnp.mean((P - T) ** 2, axis=0)) / np.where(keep, var, 1.0)
  return np.where(keep, err, np.nan) if per_target else float(err[keep].mean())


LOO_CORRELATIONS = ("pearson", "spearman", "pearson_mean_target", "spearman_mean_target", "pearson_pooled")


def loo_magnitude_error(pred_loo, true_loo) -> float:
  """Normalized error of predicted leave-one-out effects: ||pred - true||_F / ||true||_F.

  Unlike a correlation it sees scale. Where two tasks substitute for each other, the true effect
  of removing either is near zero; a linear surrogate spreads the drop-both jump over both and
  keeps its per-target correlation while its magnitudes are several times too large.

  Args:
    pred_loo: [K] or [K, T] predicted effects.
    true_loo: the same shape, the real effects.

  Returns:
    The error, a float (0 is exact; 1 is as far off as predicting no effect at all).

  Raises:
    ValueError: when the shapes differ.
    Undefined: on fewer than 2 tasks, non-finite values, or an all-zero truth.
  """
  P, T = _pair(pred_loo, true_loo)
  norm = float(jnp.sqrt(jnp.sum(T ** 2)))
  if not norm > 0:
    raise Undefined(f"true_loo: every effect is 0 over {T.shape[0]} tasks; a relative error of it is undefined")
  return float(jnp.sqrt(jnp.sum((P - T) ** 2))) / norm


def _loo_parts(P, T) -> dict:
  """loo_correlation's keys, each its value or the `Undefined` raised computing it."""
  out = {}
  for key, fn, p, t in (("pearson", pearson, P, T), ("spearman", spearman, P, T),
                        ("pearson_mean_target", pearson, P.mean(1), T.mean(1)),
                        ("spearman_mean_target", spearman, P.mean(1), T.mean(1)),
                        ("pearson_pooled", pearson, P.reshape(-1), T.reshape(-1))):
    try:
      out[key] = fn(p, t)
    except Undefined as e:
      out[key] = e
  return out


def loo_correlation(pred_loo, true_loo):
  """Agreement of predicted and real leave-one-out effects across tasks.

  Pearson and Spearman per target averaged over targets (blind to each target's scale), on the
  mean over targets (the leave-one-out effect on the average target loss), and Pearson pooled over
  every (task, target) entry, which a surrogate that gets each target's order right but its
  magnitudes wrong does not pass. `loo_magnitude_error` scores the magnitudes directly.

  Args:
    pred_loo: [K] or [K, T] predicted effects.
    true_loo: the same shape, the real effects.

  Returns:
    {"pearson", "spearman", "pearson_mean_target", "spearman_mean_target", "pearson_pooled"}: floats.

  Raises:
    ValueError: when the shapes differ.
    Undefined: (naming the key) when any of them is undefined.
  """
  parts = _loo_parts(*_pair(pred_loo, true_loo))
  for key, value in parts.items():
    if isinstance(value, Undefined):
      raise Undefined(f"{value} ({key})")
  return parts


def relative_error(estimate, truth, *, eps: float = 1e-12):
  """|estimate - truth| / |truth| elementwise, with summary statistics (undefined on empty or
  non-finite input).

  Where |truth| <= eps the ratio is undefined: `values` holds NaN there, the median and mean are
  over the other entries and `num_zero_truth` counts them; undefined (`Undefined`, which
  `attempt` records as skipped) when every truth is zero (compare absolute errors there).

  Args:
    estimate: an array of estimates.
    truth: the same shape.
    eps: |truth| at or below this counts as zero.

  Returns:
    {"median": float, "mean": float, "values": float64 array of truth's shape, "num_zero_truth": int}.

  Raises:
    ValueError: when the shapes differ.
    Undefined: on non-finite or empty input, or when every truth is zero.
  """
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
  zero = np.abs(T) <= eps
  if zero.all():
    raise Undefined(f"truth: all {T.size} values are 0 (|truth| <= {eps:g}), where a relative error is undefined; "
                    "compare absolute errors")
  rel = np.where(zero, np.nan, np.abs(E - T) / np.where(zero, 1.0, np.abs(T)))
  return {"median": float(np.nanmedian(rel)), "mean": float(np.nanmean(rel)), "values": rel,
          "num_zero_truth": int(zero.sum())}
