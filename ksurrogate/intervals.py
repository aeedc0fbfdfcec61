"""Intervals for the scores of `ksurrogate.metrics`: t intervals over re-splits and replicates,
and a bootstrap of leave-one-out scores over targets and seeds with paired differences between
methods (`ksurrogate.ceilings` says how well any method could score against a noisy truth).

Two sources of replication, two estimators:
- scores on held-out subsets (LDS, normalized error) are repeated over R random fit/held-out
  re-splits of the same subsets. The re-splits share subsets, so the plain standard error over
  them is too small; `resplit_interval` applies Nadeau & Bengio's correction (2003):
  var = (1/R + n_test/n_fit) s^2, with a t interval on R - 1 degrees of freedom.
- leave-one-out scores are averaged over targets against a truth averaged over training seeds:
  `bootstrap_loo` resamples targets (and seeds, where the truth has them) and recomputes every
  method's scores and every paired difference on the same resamples.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Interval:
  """A score with its uncertainty: mean, standard error, and the two-sided `level` interval."""
  mean: float
  se: float
  lo: float
  hi: float
  level: float = 0.95
  replicates: int = 0   # re-splits or bootstrap resamples behind it

  def verdict(self, higher_is_better: bool = True) -> str:
    """Of a paired difference a - b: "wins" (a better) or "loses" when the interval excludes 0,
    else "ties". NaN intervals say "undetermined".

    Args:
      higher_is_better: whether a larger score is better (False for errors).

    Returns:
      "wins", "loses", "ties" or "undetermined".
    """
    if not (np.isfinite(self.lo) and np.isfinite(self.hi)):
      return "undetermined"
    if self.lo > 0:
      return "wins" if higher_is_better else "loses"
    if self.hi < 0:
      return "loses" if higher_is_better else "wins"
    return "ties"

  def entries(self, key: str) -> dict:
    """Summary entries: `key` (the mean), `key_se`, `key_ci95` ([lo, hi]).

    Args:
      key: the score's name.

    Returns:
      {key: mean, key_se: se, key_ci<level>: [lo, hi]}, e.g. key_ci95 at level 0.95.
    """
    tag = f"ci{round(100 * self.level)}"
    return {key: self.mean, f"{key}_se": self.se, f"{key}_{tag}": [self.lo, self.hi]}


@functools.partial(jax.jit, static_argnames=("iters",))
def _t_quantile(p, df, iters: int = 80):
  """Quantile of Student's t (p > 0.5) by bisection on its CDF (regularized incomplete beta)."""
  def cdf(t):
    return 1.0 - 0.5 * jax.scipy.special.betainc(df / 2.0, 0.5, df / (df + t * t))

  def body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    below = cdf(mid) < p
    return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

  lo, hi = jax.lax.fori_loop(0, iters, body, (jnp.zeros_like(df), jnp.full_like(df, 1e3)))
  return 0.5 * (lo + hi)


def t_quantile(p: float, df: float) -> float:
  """Student's t quantile for p in (0.5, 1), e.g. t_quantile(0.975, 19) = 2.093.

  Args:
    p: the probability, in (0.5, 1).
    df: the degrees of freedom, positive.

  Returns:
    The float quantile.

  Raises:
    ValueError: when p or df is out of range.
  """
  if not 0.5 < p < 1 or not df > 0:
    raise ValueError(f"p: expected 0.5 < p < 1 and df > 0, got p={p}, df={df}")
  with jax.enable_x64(True):
    return float(_t_quantile(jnp.float64(p), jnp.float64(df)))


def resplit_interval(values_R, *, test_fraction: float, level: float = 0.95) -> Interval:
  """Mean and interval of a score (or a paired difference) over R random re-splits of one set of
  subsets, with Nadeau & Bengio's correction for the overlap between re-splits:
  se^2 = (1/R + n_test/n_fit) s^2. `test_fraction` is n_test / (n_fit + n_test). NaN splits (a
  score undefined on that split) are left out; fewer than 2 finite splits give a NaN interval.

  Args:
    values_R: [R] the score on each re-split.
    test_fraction: n_test / (n_fit + n_test), in (0, 1).
    level: the interval's two-sided level.

  Returns:
    An `Interval` (t on R - 1 degrees of freedom; `replicates` the finite splits).

  Raises:
    ValueError: when test_fraction is outside (0, 1).
  """
  if not 0 < test_fraction < 1:
    raise ValueError(f"test_fraction: must lie in (0, 1), got {test_fraction}")
  return _t_interval(values_R, lambda R: 1.0 / R + test_fraction / (1.0 - test_fraction), level)


def replicate_interval(values_R, *, level: float = 0.95) -> Interval:
  """Mean and t interval of a score over R independent replicates (e.g. fresh training seeds):
  se^2 = s^2 / R. NaN replicates are left out; fewer than 2 finite give a NaN interval.

  Args:
    values_R: [R] the score on each replicate.
    level: the interval's two-sided level.

  Returns:
    An `Interval`.
  """
  return _t_interval(values_R, lambda R: 1.0 / R, level)


def _t_interval(values_R, variance_factor, level: float) -> Interval:
  """A t interval on R - 1 degrees of freedom with se^2 = variance_factor(R) * s^2."""
  v = np.asarray(values_R, np.float64).ravel()
  v = v[np.isfinite(v)]
  if len(v) < 2:
    mean = float(v[0]) if len(v) else float("nan")
    return Interval(mean, float("nan"), float("nan"), float("nan"), level, len(v))
  R = len(v)
  se = float(np.sqrt(variance_factor(R) * v.var(ddof=1)))
  half = t_quantile(0.5 + level / 2, R - 1) * se
  return Interval(float(v.mean()), se, float(v.mean() - half), float(v.mean() + half), level, R)


def _np_ranks(x, axis=0):
  """Average ranks along `axis` (ties share their mean rank, as `spearman`), any batch shape.
  Pairwise comparisons: O(n^2) per column, meant for the short task axis (n = K)."""
  x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
  below = (x[..., None, :] < x[..., :, None]).sum(-1)
  equal = (x[..., None, :] == x[..., :, None]).sum(-1)
  return np.moveaxis(below + (equal + 1) / 2.0, -1, axis)


def _columns_corr(P, T):
  """Pearson correlation down axis -2 of P [..., K, T] and T [..., K, T]: [..., T] (NaN if constant)."""
  Pc = P - P.mean(-2, keepdims=True)
  Tc = T - T.mean(-2, keepdims=True)
  denom = np.sqrt((Pc ** 2).sum(-2) * (Tc ** 2).sum(-2))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(denom > 0, (Pc * Tc).sum(-2) / np.where(denom > 0, denom, 1.0), np.nan)


def _nanmean(x):
  """Mean over the last axis of the defined (non-NaN) values; NaN, without a warning, where none is
  (a constant prediction, e.g. an additive fit's interactions, has no correlation)."""
  n = np.isfinite(x).sum(-1)
  with np.errstate(invalid="ignore"):
    return np.where(n > 0, np.nansum(x, -1) / np.maximum(n, 1), np.nan)


def _loo_stats(pred_KxT, truth_BxKxT, targets_BxT, pred_ranks=None, truth_ranks=None):
  """LOO scores of one prediction against B truths (or one, broadcast), each on its own resampled
  targets: {key: [B]} with `loo_correlation`'s keys and "magnitude_error". Ranks can be passed in
  precomputed, since they are shared across methods and resamples."""
  B = len(targets_BxT)
  rows = np.arange(B)[:, None] if truth_BxKxT.shape[0] > 1 else np.zeros((B, 1), int)
  pred_ranks = _np_ranks(pred_KxT, 0) if pred_ranks is None else pred_ranks
  truth_ranks = _np_ranks(truth_BxKxT, -2) if truth_ranks is None else truth_ranks
  per_p = _columns_corr(pred_KxT[None], truth_BxKxT)                  # [B or 1, T]
  per_s = _columns_corr(pred_ranks[None], truth_ranks)
  # each resample's own targets, gathered once: [B, K, T']
  Pg = np.moveaxis(pred_KxT[:, targets_BxT], 1, 0)
  if truth_BxKxT.shape[0] > 1:
    Tg = np.take_along_axis(truth_BxKxT, targets_BxT[:, None, :], axis=2)
  else:
    Tg = np.moveaxis(truth_BxKxT[0][:, targets_BxT], 1, 0)
  Pm, Tm = Pg.mean(2), Tg.mean(2)                                       # mean-target effects [B, K]
  Pe, Te = Pg.reshape(B, -1), Tg.reshape(B, -1)                         # every entry [B, K * T']
  norm = np.sqrt((Te ** 2).sum(1))
  with np.errstate(invalid="ignore", divide="ignore"):
    magnitude = np.where(norm > 0, np.sqrt(((Pe - Te) ** 2).sum(1)) / np.where(norm > 0, norm, 1.0), np.nan)
  return {
      "pearson_pooled": _columns_corr(Pe[..., None], Te[..., None])[:, 0],
      "magnitude_error": magnitude,
      "pearson": _nanmean(per_p[rows, targets_BxT]),
      "spearman": _nanmean(per_s[rows, targets_BxT]),
      "pearson_mean_target": _columns_corr(Pm[..., None], Tm[..., None])[:, 0],
      "spearman_mean_target": _columns_corr(_np_ranks(Pm, -1)[..., None], _np_ranks(Tm, -1)[..., None])[:, 0],
  }


def percentile_interval(point: float, replicates, level: float = 0.95) -> Interval:
  """A point with the standard deviation and the two-sided `level` quantiles of its bootstrap
  replicates (non-finite replicates dropped).

  Args:
    point: the score on the data as they are.
    replicates: the score on each resample.
    level: the interval's two-sided level.

  Returns:
    An Interval; se, lo and hi are NaN when the point is not finite or fewer than 2 replicates are.
  """
  r = np.asarray(replicates, np.float64)
  r = r[np.isfinite(r)]
  if not np.isfinite(point) or len(r) < 2:
    return Interval(point, float("nan"), float("nan"), float("nan"), level, len(r))
  a = (1 - level) / 2
  return Interval(float(point), float(r.std(ddof=1)), float(np.quantile(r, a)), float(np.quantile(r, 1 - a)), level, len(r))


def _resampled_loo(preds, E, targets_BxT, seeds_BxS, pred_ranks):
  """{method: {key: [B]}}: every method scored on the same resampled targets (and seeds)."""
  truth = E[seeds_BxS].mean(1) if seeds_BxS is not None else E.mean(0)[None]
  truth_ranks = _np_ranks(truth, -2)
  return {name: _loo_stats(p, truth, targets_BxT, pred_ranks[name], truth_ranks) for name, p in preds.items()}


def _check_effects(effects, name="effects"):
  E = np.asarray(effects, np.float64)
  if E.ndim == 2:
    E = E[None]
  if E.ndim != 3:
    raise ValueError(f"{name}: expected [K, T] or [seeds, K, T], got shape {E.shape}")
  if not np.all(np.isfinite(E)):
    raise ValueError(f"{name}: {int(np.sum(~np.isfinite(E)))} non-finite values")
  if E.shape[1] < 3:
    raise ValueError(f"{name}: need at least 3 tasks to correlate leave-one-out effects, got {E.shape[1]}")
  return E


def bootstrap_loo(preds, effects, *, pairs=(), num_resamples: int = 1000, seed: int = 0,
                  level: float = 0.95) -> dict:
  """Intervals of leave-one-out correlations, and of paired differences between methods.

  Every method is scored on the same resamples, so a paired difference keeps what the methods
  share. A method's own interval resamples targets. A paired difference also resamples seeds
  where S >= 2: a resampled truth holds fewer distinct seeds and is noisier, which pulls every
  correlation down; for one score that is a bias (the ceiling reports the truth's noise instead),
  for a difference it only shrinks both sides, so its verdict stays conservative. Intervals are
  percentile intervals of the resamples; the point values are the scores on all targets and seeds.

  Args:
    preds: {method: predicted LOO [K, T]}, finite.
    effects: the ground truth, [K, T], or per training seed [S, K, T] (the truth is their mean).
    pairs: (a, b) method names whose difference a - b gets an interval.
    num_resamples: bootstrap resamples, at least 2.
    seed: the resampling seed.
    level: the intervals' two-sided level.

  Returns:
    {"methods": {method: {key: Interval}}, "pairs": {"a-b": {key: Interval}}} with
    `loo_correlation`'s keys and "magnitude_error" (`loo_magnitude_error`; lower is better).

  Raises:
    ValueError: on effects that are not [K, T] / [S, K, T], non-finite, or with fewer than 3 tasks,
      a prediction of another shape or with non-finite values, a pair naming an unknown method,
      or num_resamples < 2.
  """
  E = _check_effects(effects)
  S_, K, T = E.shape
  preds = {name: np.asarray(p, np.float64) for name, p in preds.items()}
  for name, p in preds.items():
    if p.shape != (K, T):
      raise ValueError(f"preds: {name!r} has shape {p.shape}, the truth has {(K, T)}")
    if not np.all(np.isfinite(p)):
      raise ValueError(f"preds: {name!r} has {int(np.sum(~np.isfinite(p)))} non-finite values")
  for a, b in pairs:
    for name in (a, b):
      if name not in preds:
        raise ValueError(f"pairs: unknown method {name!r}; expected one of {sorted(preds)}")
  if num_resamples < 2:
    raise ValueError(f"num_resamples: need at least 2, got {num_resamples}")
  rng = np.random.default_rng(seed)
  ranks = {name: _np_ranks(p, 0) for name, p in preds.items()}
  full = {name: {k: float(v[0]) for k, v in stats.items()}
          for name, stats in _resampled_loo(preds, E, np.arange(T)[None], None, ranks).items()}
  paired = sorted({n for pair in pairs for n in pair})
  own = {name: {k: [] for k in full[name]} for name in preds}
  both = {name: {k: [] for k in full[name]} for name in paired}
  batch = 100   # resamples per vectorized step: bounds memory at ~batch K T floats
  for start in range(0, num_resamples, batch):
    B = min(batch, num_resamples - start)
    cols = rng.integers(0, T, size=(B, T))
    for name, stats in _resampled_loo(preds, E, cols, None, ranks).items():
      for k, v in stats.items():
        own[name][k].append(v)
    if paired:
      seeds = rng.integers(0, S_, size=(B, S_)) if S_ >= 2 else None
      for name, stats in _resampled_loo({n: preds[n] for n in paired}, E, cols, seeds, ranks).items():
        for k, v in stats.items():
          both[name][k].append(v)
  cat = lambda d: {n: {k: np.concatenate(v) for k, v in r.items()} for n, r in d.items()}  # noqa: E731
  own, both = cat(own), cat(both)
  return {
      "methods": {n: {k: percentile_interval(full[n][k], own[n][k], level) for k in full[n]} for n in preds},
      "pairs": {f"{a}-{b}": {k: percentile_interval(full[a][k] - full[b][k], both[a][k] - both[b][k], level)
                             for k in full[a]} for a, b in pairs},
  }
