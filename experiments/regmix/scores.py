"""Test-run scores with intervals from re-drawn training sets and a bootstrap over test runs.

A bootstrap resample draws the test runs with replacement (counts c [n]) and the re-drawn
training sets with replacement; every family is scored on the same resamples, so differences
between families are paired. Spearman on resampled rows is computed without materializing them:
the resample's average ranks come from cumulative counts in sorted order (ties share their mean
rank, as scipy's rankdata on the expanded rows), and the correlation is the count-weighted
Pearson of those ranks. A constant prediction ranks nothing and scores 0 (LightGBM predicts a
constant when too few rows reach a leaf).
"""
from __future__ import annotations

import numpy as np

from ksurrogate import intervals

CHUNK = 50   # bootstrap resamples per block: keeps the [B, n, columns] rank arrays small


def resamples(seed, n_test: int, n_draws: int, count: int):
  """(test-run counts [B, n_test], draw weights [B, n_draws] summing to 1) of `count` resamples."""
  rng = np.random.default_rng(seed)
  counts = rng.multinomial(n_test, np.full(n_test, 1.0 / n_test), size=count).astype(np.float64)
  draws = rng.multinomial(n_draws, np.full(n_draws, 1.0 / n_draws), size=count) / n_draws
  return counts, draws


def weighted_ranks(V, counts):
  """Average ranks [B, n, C] of each column of V [n, C] in each resample (counts [B, n])."""
  n, C = V.shape
  B = len(counts)
  order = np.argsort(V, axis=0, kind="stable")
  Vs = np.take_along_axis(V, order, axis=0)
  flat = lambda idx: (idx * C + np.arange(C)).ravel()               # noqa: E731  ([n, C] -> into [n * C])
  Cs = counts[:, order.ravel()].reshape(B, n, C)                    # counts in each column's sorted order
  cum = np.cumsum(Cs, axis=1)
  ranks_sorted = cum - 0.5 * (Cs - 1.0)                              # no ties: the copies' mean rank
  tied = np.flatnonzero((Vs[1:] == Vs[:-1]).any(0))
  if len(tied):   # a tie group shares (count before it + count through it + 1) / 2
    Vt, pos = Vs[:, tied], np.arange(n)[:, None]
    new = np.r_[np.ones((1, len(tied)), bool), Vt[1:] != Vt[:-1]]
    last = np.r_[Vt[1:] != Vt[:-1], np.ones((1, len(tied)), bool)]
    start = np.maximum.accumulate(np.where(new, pos, 0), axis=0)
    end = np.flip(np.minimum.accumulate(np.flip(np.where(last, pos, n), 0), axis=0), 0)
    ct, cu = Cs[:, :, tied], cum[:, :, tied]
    k = len(tied)
    pick = lambda arr, idx: arr.reshape(B, n * k)[:, (idx * k + np.arange(k)).ravel()].reshape(B, n, k)  # noqa: E731
    ranks_sorted[:, :, tied] = 0.5 * (pick(cu - ct, start) + pick(cu, end) + 1.0)
  inverse = np.argsort(order, axis=0)
  return ranks_sorted.reshape(B, n * C)[:, flat(inverse)].reshape(B, n, C)


def resampled_scores(preds, truth, counts, draws):
  """Spearman and normalized error of predictions [D, n, T] against truth [n, T] on each resample:
  ({"spearman": [B], "spearman_per_target": [B, T], "normalized_error": [B]}) averaged over
  targets and over the resample's draws.

  Ranks in a resample of n rows average (n + 1) / 2 whatever the counts, so the correlation needs
  only count-weighted sums of rank products and squares; the errors come from count-weighted sums
  that are matrix products."""
  D, n, T = preds.shape
  P = np.moveaxis(preds, 0, 1).reshape(n, D * T)
  Yd = np.tile(truth, (1, D))                                              # [n, D * T], P's columns
  mid = 0.5 * (n + 1)
  out = {"spearman": [], "spearman_per_target": [], "normalized_error": []}
  for lo in range(0, len(counts), CHUNK):
    c, wd = counts[lo:lo + CHUNK], draws[lo:lo + CHUNK]
    b = len(c)
    rp = (weighted_ranks(P, c) - mid).reshape(b, n, D, T)
    rt = weighted_ranks(truth, c) - mid                                    # [b, n, T]
    crt = c[:, :, None] * rt
    cov = np.einsum("bndt,bnt->bdt", rp, crt)
    var_p = np.einsum("bn,bndt->bdt", c, rp * rp)
    var_t = np.einsum("bnt,bnt->bt", crt, rt)[:, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
      rho = np.where(var_p > 1e-9 * var_t, cov / np.sqrt(var_p * var_t), 0.0)     # [b, D, T]
    m = c.sum(1)[:, None]
    sse = c @ (P * P) - 2.0 * (c @ (P * Yd)) + c @ (Yd * Yd)               # [b, D * T]
    ybar = (c @ truth) / m
    var = c @ (truth * truth) / m - ybar ** 2                               # [b, T]
    err = (sse / m).reshape(b, D, T) / var[:, None, :]
    per_target = np.einsum("bdt,bd->bt", rho, wd)
    out["spearman_per_target"].append(per_target)
    out["spearman"].append(per_target.mean(1))
    out["normalized_error"].append(np.einsum("bdt,bd->b", err, wd) / T)
  return {k: np.concatenate(v) for k, v in out.items()}


def point_scores(preds, truth):
  """The same scores on the test runs as they are (every draw weighted equally)."""
  ones = np.ones((1, preds.shape[1]))
  r = resampled_scores(preds, truth, ones, np.full((1, preds.shape[0]), 1.0 / preds.shape[0]))
  return {k: v[0] for k, v in r.items()}


def interval(point: float, replicates) -> intervals.Interval:
  """The point with the standard deviation and 2.5 / 97.5 % quantiles of its bootstrap replicates."""
  return intervals.percentile_interval(point, replicates, 0.95)


def entries(key: str, iv: intervals.Interval) -> dict:
  """Summary entries of an interval (`key`, `key_se`, `key_ci95`), None where undefined."""
  def clean(x):
    return float(x) if np.isfinite(x) else None
  lo, hi = clean(iv.lo), clean(iv.hi)
  return {key: clean(iv.mean), f"{key}_se": clean(iv.se), f"{key}_ci95": None if lo is None else [lo, hi]}


def reach(sizes, curve, target: float, tolerance: float):
  """The first size at which `curve` reaches target - tolerance (the last size when it never
  does before)."""
  sizes, curve = np.asarray(sizes), np.asarray(curve)
  ok = np.flatnonzero(curve >= target - tolerance - 1e-12)
  return int(sizes[ok[0]]) if len(ok) else int(sizes[-1])
