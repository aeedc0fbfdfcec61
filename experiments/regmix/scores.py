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

from ksurrogate import metrics

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
  order = np.argsort(V, axis=0, kind="stable")
  Vs = np.take_along_axis(V, order, axis=0)
  pos = np.arange(n)[:, None].repeat(C, 1)
  new = np.r_[np.ones((1, C), bool), Vs[1:] != Vs[:-1]]
  start = np.maximum.accumulate(np.where(new, pos, 0), axis=0)
  last = np.r_[Vs[1:] != Vs[:-1], np.ones((1, C), bool)]
  end = np.flip(np.minimum.accumulate(np.flip(np.where(last, pos, n), 0), axis=0), 0)
  Cs = counts[:, order]                                             # [B, n, C]
  cum = np.cumsum(Cs, axis=1)
  before = cum - Cs
  ranks_sorted = 0.5 * (np.take_along_axis(before, start[None], 1) + np.take_along_axis(cum, end[None], 1) + 1.0)
  inverse = np.argsort(order, axis=0)
  return np.take_along_axis(ranks_sorted, inverse[None], 1)


def _weighted_corr(X, Y, w):
  """Count-weighted Pearson along axis 1 of X, Y [B, n, ...] with weights w [B, n, 1...]; 0 where
  either side is constant."""
  total = w.sum(1, keepdims=True)
  xc = X - (w * X).sum(1, keepdims=True) / total
  yc = Y - (w * Y).sum(1, keepdims=True) / total
  num = (w * xc * yc).sum(1)
  den = np.sqrt((w * xc * xc).sum(1) * (w * yc * yc).sum(1))
  with np.errstate(invalid="ignore", divide="ignore"):
    r = num / den
  return np.where(den > 1e-12 * np.maximum(np.abs(num), 1.0), r, 0.0)


def resampled_scores(preds, truth, counts, draws):
  """Spearman and normalized error of predictions [D, n, T] against truth [n, T] on each resample:
  ({"spearman": [B], "spearman_per_target": [B, T], "normalized_error": [B]}) averaged over
  targets and over the resample's draws."""
  D, n, T = preds.shape
  P = np.moveaxis(preds, 0, 1).reshape(n, D * T)
  out = {"spearman": [], "spearman_per_target": [], "normalized_error": []}
  for lo in range(0, len(counts), CHUNK):
    c, wd = counts[lo:lo + CHUNK], draws[lo:lo + CHUNK]
    rp = weighted_ranks(P, c).reshape(len(c), n, D, T)
    rt = weighted_ranks(truth, c)[:, :, None, :]
    w = c[:, :, None, None]
    rho = _weighted_corr(rp, np.broadcast_to(rt, rp.shape), w)                 # [b, D, T]
    total = c.sum(1)[:, None, None]
    mse = (w * (np.moveaxis(preds, 0, 1)[None] - truth[None, :, None, :]) ** 2).sum(1) / total
    ybar = (c[:, :, None] * truth[None]).sum(1, keepdims=True) / c.sum(1)[:, None, None]
    var = (c[:, :, None] * (truth[None] - ybar) ** 2).sum(1) / c.sum(1)[:, None]  # [b, T]
    per_target = np.einsum("bdt,bd->bt", rho, wd)
    out["spearman_per_target"].append(per_target)
    out["spearman"].append(per_target.mean(1))
    out["normalized_error"].append(np.einsum("bdt,bd->b", mse / var[:, None, :], wd) / T)
  return {k: np.concatenate(v) for k, v in out.items()}


def point_scores(preds, truth):
  """The same scores on the test runs as they are (every draw weighted equally)."""
  ones = np.ones((1, preds.shape[1]))
  r = resampled_scores(preds, truth, ones, np.full((1, preds.shape[0]), 1.0 / preds.shape[0]))
  return {k: v[0] for k, v in r.items()}


def interval(point: float, replicates) -> metrics.Interval:
  """The point with the standard deviation and 2.5 / 97.5 % quantiles of its bootstrap replicates."""
  r = np.asarray(replicates, np.float64)
  r = r[np.isfinite(r)]
  if len(r) < 2 or not np.isfinite(point):
    return metrics.Interval(float(point), float("nan"), float("nan"), float("nan"), 0.95, len(r))
  return metrics.Interval(float(point), float(r.std(ddof=1)), float(np.quantile(r, 0.025)),
                          float(np.quantile(r, 0.975)), 0.95, len(r))


def entries(key: str, iv: metrics.Interval) -> dict:
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
