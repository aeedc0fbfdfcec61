"""Scores of surrogates and attributions against ground truth.

`lds` is the linear datamodeling score as datamodels / TRAK / dattri define it: for each target,
the Spearman correlation across held-out subsets between predicted and true outcomes, averaged over
targets. Targets with a constant prediction or truth have no correlation and are left out of the
average (reported via `per_target=True` as NaN).
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from ksurrogate._util import x64


def _as_matrix(x, name):
  arr = np.asarray(x, np.float64)
  if arr.ndim == 1:
    arr = arr[:, None]
  if arr.ndim != 2:
    raise ValueError(f"{name}: expected [n] or [n, targets], got shape {arr.shape}")
  return arr


def _pair(pred, true):
  P, T = _as_matrix(pred, "pred"), _as_matrix(true, "true")
  if P.shape != T.shape:
    raise ValueError(f"pred: shape {P.shape} does not match true {T.shape}")
  if P.shape[0] < 2:
    raise ValueError(f"pred: need at least 2 rows to correlate, got {P.shape[0]}")
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


def _reduce(values, per_target):
  values = np.asarray(values)
  if per_target:
    return values
  if np.all(np.isnan(values)):
    return float("nan")
  return float(np.nanmean(values))


@x64
def pearson(pred, true, *, per_target: bool = False):
  """Pearson correlation down each column, averaged over columns."""
  return _reduce(_pearson_cols(*_pair(pred, true)), per_target)


@x64
def spearman(pred, true, *, per_target: bool = False):
  """Spearman correlation down each column (average ranks for ties), averaged over columns."""
  return _reduce(spearman_columns(*_pair(pred, true)), per_target)


def lds(pred, true, *, per_target: bool = False):
  """Linear datamodeling score: pred/true [num_subsets, num_targets]."""
  return spearman(pred, true, per_target=per_target)


def varying_targets(F, threshold: float = 0.0):
  """bool [T]: targets whose unbiased variance across subsets exceeds `threshold` (and is > 0)."""
  var = _as_matrix(F, "F").var(axis=0, ddof=1)
  return (var > threshold) & (var > 0)


@x64
def normalized_error(pred, true, *, threshold: float = 0.1, per_target: bool = False):
  """MSE / unbiased variance of the truth, averaged over targets with variance >= threshold.

  Below 1 beats predicting each target's mean; the reference README uses threshold 0.1.
  """
  P, T = _pair(pred, true)
  var = jnp.var(T, axis=0, ddof=1)
  keep = np.asarray(var >= threshold)
  if not keep.any():
    raise ValueError(f"threshold: no target has variance >= {threshold} (max {float(var.max()):.3g})")
  err = jnp.mean((P - T) ** 2, axis=0) / var
  return np.where(keep, np.asarray(err), np.nan) if per_target else float(np.asarray(err)[keep].mean())


def loo_correlation(pred_loo, true_loo):
  """Agreement of predicted and real leave-one-out effects across tasks.

  pred_loo/true_loo: [K] or [K, T]. Returns Pearson and Spearman per target averaged over targets,
  and on the mean over targets (the leave-one-out effect on the average target loss).
  """
  P, T = _pair(pred_loo, true_loo)
  return {
      "pearson": pearson(P, T), "spearman": spearman(P, T),
      "pearson_mean_target": pearson(P.mean(1), T.mean(1)),
      "spearman_mean_target": spearman(P.mean(1), T.mean(1)),
  }


def split_half_ceiling(effects_SxKxT):
  """How well seed-averaged effects (e.g. leave-one-out effects [seeds, K, T]) can be predicted.

  Reliability: for every split of the seeds into two halves, the `loo_correlation` of the halves'
  mean effects, averaged over splits and Spearman-Brown corrected to the full number of seeds
  (2r / (1 + r)). A predictor of the noise-free effects correlates with the noisy seed average at
  most sqrt(reliability): that is the ceiling. Returns (ceiling, reliability), dicts with
  `loo_correlation`'s keys (NaN where the reliability is not positive).
  """
  E = np.asarray(effects_SxKxT, np.float64)
  if E.ndim != 3 or E.shape[0] < 2:
    raise ValueError(f"effects_SxKxT: expected [seeds >= 2, K, T], got shape {E.shape}")
  n = E.shape[0]
  rows = []
  for half in itertools.combinations(range(n), n // 2):
    rest = [i for i in range(n) if i not in half]
    rows.append(loo_correlation(E[list(half)].mean(0), E[rest].mean(0)))
  reliability = {}
  for k in rows[0]:
    r = float(np.nanmean([row[k] for row in rows]))
    reliability[k] = 2 * r / (1 + r) if r > -1 else float("nan")
  ceiling = {k: float(np.sqrt(r)) if r > 0 else float("nan") for k, r in reliability.items()}
  return ceiling, reliability


def relative_error(estimate, truth, *, eps: float = 1e-12):
  """|estimate - truth| / |truth| elementwise, with summary statistics."""
  E, T = np.asarray(estimate, np.float64), np.asarray(truth, np.float64)
  if E.shape != T.shape:
    raise ValueError(f"estimate: shape {E.shape} does not match truth {T.shape}")
  rel = np.abs(E - T) / np.maximum(np.abs(T), eps)
  return {"median": float(np.median(rel)), "mean": float(np.mean(rel)), "values": rel}
