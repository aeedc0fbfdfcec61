"""How well any method could score against a ground truth measured on several seeds: the
split-half reliability and ceiling of leave-one-out correlations, the floor of the magnitude
error, their intervals, and the seeds a wanted reliability needs.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from ksurrogate.intervals import _check_effects, _loo_stats, percentile_interval
from ksurrogate.metrics import LOO_CORRELATIONS, Undefined, _loo_parts, _pair, _where


MAX_SPLITS = 256   # splits of the seeds into halves that a ceiling averages over (all of them up to 10 seeds)


def seed_halves(num_seeds: int, max_splits: int = MAX_SPLITS) -> list[tuple[list, list]]:
  """Splits of the seeds into two halves: every one while there are at most `max_splits` (10
  seeds: C(10, 5) = 252), else `max_splits` distinct ones drawn with a fixed seed (16 seeds have
  12,870: averaging all of them cost 20 s per call for no better an estimate).

  Args:
    num_seeds: n, at least 2.
    max_splits: the most splits returned.

  Returns:
    A list of (first half ids, the other ids), the first half of n // 2 seeds.
  """
  n = num_seeds
  if math.comb(n, n // 2) <= max_splits:
    firsts = list(itertools.combinations(range(n), n // 2))
  else:
    rng = np.random.default_rng(0)
    chosen = set()
    while len(chosen) < max_splits:
      chosen.add(tuple(sorted(rng.choice(n, n // 2, replace=False).tolist())))
    firsts = sorted(chosen)
  return [(list(h), [i for i in range(n) if i not in h]) for h in firsts]


def split_half_ceiling(effects_SxKxT):
  """How well seed-averaged effects (e.g. leave-one-out effects [seeds, K, T]) can be predicted.

  Reliability: for every split of the seeds into two halves (`seed_halves`: a fixed sample of 256
  of them beyond 10 seeds), the `loo_correlation` of the halves' mean effects, averaged over splits
  and Spearman-Brown corrected to the full number of seeds (2r / (1 + r)). A predictor of the
  noise-free effects correlates with the noisy seed average at most sqrt(reliability): that is the
  ceiling.

  Args:
    effects_SxKxT: [seeds >= 2, K, T] effects per training seed.

  Returns:
    (ceiling, reliability), dicts with `loo_correlation`'s keys of floats (NaN where the
    reliability is not positive or, on every split, undefined); ceiling also holds
    "magnitude_error": the `loo_magnitude_error` a predictor of the noise-free effects would
    score against the seed mean (its floor; the halves' differences give the mean's noise).

  Raises:
    ValueError: when the shape is not [seeds >= 2, K, T].
    Undefined: on non-finite values.
  """
  E = np.asarray(effects_SxKxT, np.float64)
  if E.ndim != 3 or E.shape[0] < 2:
    raise ValueError(f"effects_SxKxT: expected [seeds >= 2, K, T], got shape {E.shape}")
  if not np.isfinite(E).all():
    bad = ~np.isfinite(E)
    raise Undefined(f"effects_SxKxT: {int(bad.sum())} non-finite values at seeds "
                    f"{np.flatnonzero(bad.any((1, 2))).tolist()}, {_where(bad.any(0))}")
  rows = []
  for half, rest in seed_halves(E.shape[0]):
    a, b = E[half].mean(0), E[rest].mean(0)
    rows.append(_loo_parts(*_pair(a, b)) if len(a) >= 2 else {})
  floor = float(_magnitude_floors(E, np.arange(E.shape[2])[None])[0])
  reliability = {}
  for k in LOO_CORRELATIONS:
    values = [row[k] for row in rows if k in row and not isinstance(row[k], Undefined)]
    r = float(np.mean(values)) if values else float("nan")
    reliability[k] = 2 * r / (1 + r) if r > -1 else float("nan")
  ceiling = {k: float(np.sqrt(r)) if r > 0 else float("nan") for k, r in reliability.items()}
  ceiling["magnitude_error"] = floor
  return ceiling, reliability


def _magnitude_floors(E, targets_BxT):
  """The `loo_magnitude_error` that the noise-free effects would score against the mean of the
  seeds E [n, K, T], on each of B resampled target sets: [B]. The mean's noise is estimated from
  every split into halves of h and n - h seeds: the halves' difference has variance
  sigma^2 n / (h (n - h)) per entry where the n-seed mean has sigma^2 / n."""
  n = E.shape[0]
  if E.shape[1] < 2:   # as `loo_magnitude_error`, which needs 2 tasks
    return np.full(len(targets_BxT), np.nan)
  M = np.moveaxis(E.mean(0)[:, targets_BxT], 1, 0)                      # [B, K, T]
  norm2 = (M ** 2).sum((1, 2))
  noise2 = np.zeros(len(targets_BxT))
  halves = seed_halves(n)
  for half, rest in halves:
    D = np.moveaxis((E[half].mean(0) - E[rest].mean(0))[:, targets_BxT], 1, 0)
    noise2 += (D ** 2).sum((1, 2)) * len(half) * len(rest) / n ** 2
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(norm2 > 0, np.sqrt(noise2 / len(halves) / np.where(norm2 > 0, norm2, 1.0)), np.nan)


def ceiling_interval(effects_SxKxT, *, num_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
  """`split_half_ceiling` with an interval from resampling targets: {key: Interval} of the ceiling
  sqrt(reliability) for `loo_correlation`'s keys (NaN where the reliability is not positive), and
  the floor of "magnitude_error" (see `split_half_ceiling`).

  Args:
    effects_SxKxT: [seeds >= 2, K >= 3, T] finite effects per training seed.
    num_resamples: target resamples.
    seed: the resampling seed.
    level: the intervals' two-sided level.

  Returns:
    {key: Interval}, with `loo_correlation`'s keys and "magnitude_error".

  Raises:
    ValueError: on another shape, fewer than 2 seeds or 3 tasks, or non-finite values.
  """
  E = _check_effects(effects_SxKxT, "effects_SxKxT")
  n, K, T = E.shape
  if n < 2:
    raise ValueError(f"effects_SxKxT: need at least 2 seeds for a split-half ceiling, got {n}")
  halves = seed_halves(n)
  point, _ = split_half_ceiling(E)
  rng = np.random.default_rng(seed)
  cols = rng.integers(0, T, size=(num_resamples, T))
  per_split = [_loo_stats(E[a].mean(0), E[b].mean(0)[None], cols) for a, b in halves]
  out = {"magnitude_error": percentile_interval(point["magnitude_error"], _magnitude_floors(E, cols), level)}
  for k in LOO_CORRELATIONS:
    r = np.nanmean(np.stack([s[k] for s in per_split]), axis=0)
    with np.errstate(invalid="ignore"):
      rel = np.where(r > -1, 2 * r / (1 + r), np.nan)
      ceil = np.where(rel > 0, np.sqrt(np.where(rel > 0, rel, 0.0)), np.nan)
    out[k] = percentile_interval(point[k], ceil, level)
  return out


def seeds_for_reliability(reliability: float, num_seeds: int, target: float = 0.8) -> float:
  """Training seeds whose mean would reach `target` reliability, by the Spearman-Brown prophecy
  from the `reliability` measured with `num_seeds` (inf when the measured one is not positive).

  Args:
    reliability: the reliability measured, with `num_seeds` seeds.
    num_seeds: the seeds it was measured with, at least 1.
    target: the reliability wanted, in (0, 1).

  Returns:
    A float number of seeds (1.0 when the measured reliability is already >= 1, inf when it is not
    positive).

  Raises:
    ValueError: when target is outside (0, 1) or num_seeds < 1.
  """
  if not 0 < target < 1 or num_seeds < 1:
    raise ValueError(f"target: expected 0 < target < 1 and num_seeds >= 1, got {target}, {num_seeds}")
  if not reliability > 0:
    return float("inf")
  if reliability >= 1:
    return 1.0
  one = reliability / (num_seeds - (num_seeds - 1) * reliability)   # a single seed's reliability
  return float(target * (1 - one) / (one * (1 - target)))
