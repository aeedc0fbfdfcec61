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

import dataclasses
import functools
import itertools
import math

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
  floor = float(np.mean(_magnitude_floors(E, np.arange(E.shape[2])[None])))
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


# ----------------------------------------------------------------------------------------------
# Uncertainty of scores and of paired differences between methods.
#
# Two sources of replication, two estimators:
# - scores on held-out subsets (LDS, normalized error) are repeated over R random fit/held-out
#   re-splits of the same subsets. The re-splits share subsets, so the plain standard error over
#   them is too small; `resplit_interval` applies Nadeau & Bengio's correction (2003):
#   var = (1/R + n_test/n_fit) s^2, with a t interval on R - 1 degrees of freedom.
# - leave-one-out correlations are averaged over targets against a truth averaged over training
#   seeds: `bootstrap_loo` resamples targets (and seeds, where the truth has them) and recomputes
#   every method's correlations and every paired difference on the same resamples.

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


_NAN_INTERVAL = Interval(float("nan"), float("nan"), float("nan"), float("nan"))


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
  # mean-target effects: the mean over each resample's own targets
  Pm = pred_KxT[:, targets_BxT].mean(2).T                               # [B, K]
  if truth_BxKxT.shape[0] > 1:
    Tm = np.take_along_axis(truth_BxKxT, targets_BxT[:, None, :], axis=2).mean(2)
  else:
    Tm = truth_BxKxT[0][:, targets_BxT].mean(2).T
  # every (task, resampled target) entry: [B, K * T]
  Pe = np.moveaxis(pred_KxT[:, targets_BxT], 1, 0).reshape(B, -1)
  if truth_BxKxT.shape[0] > 1:
    Te = np.take_along_axis(truth_BxKxT, targets_BxT[:, None, :], axis=2).reshape(B, -1)
  else:
    Te = np.moveaxis(truth_BxKxT[0][:, targets_BxT], 1, 0).reshape(B, -1)
  norm = np.sqrt((Te ** 2).sum(1))
  with np.errstate(invalid="ignore", divide="ignore"):
    magnitude = np.where(norm > 0, np.sqrt(((Pe - Te) ** 2).sum(1)) / np.where(norm > 0, norm, 1.0), np.nan)
  return {
      "pearson_pooled": _columns_corr(Pe[..., None], Te[..., None])[:, 0],
      "magnitude_error": magnitude,
      "pearson": np.nanmean(per_p[rows, targets_BxT], axis=1),
      "spearman": np.nanmean(per_s[rows, targets_BxT], axis=1),
      "pearson_mean_target": _columns_corr(Pm[..., None], Tm[..., None])[:, 0],
      "spearman_mean_target": _columns_corr(_np_ranks(Pm, -1)[..., None], _np_ranks(Tm, -1)[..., None])[:, 0],
  }


def _percentile_interval(point: float, replicates, level: float) -> Interval:
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
      "methods": {n: {k: _percentile_interval(full[n][k], own[n][k], level) for k in full[n]} for n in preds},
      "pairs": {f"{a}-{b}": {k: _percentile_interval(full[a][k] - full[b][k], both[a][k] - both[b][k], level)
                             for k in full[a]} for a, b in pairs},
  }


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
  out = {"magnitude_error": _percentile_interval(point["magnitude_error"], _magnitude_floors(E, cols), level)}
  for k in LOO_CORRELATIONS:
    r = np.nanmean(np.stack([s[k] for s in per_split]), axis=0)
    with np.errstate(invalid="ignore"):
      rel = np.where(r > -1, 2 * r / (1 + r), np.nan)
      ceil = np.where(rel > 0, np.sqrt(np.where(rel > 0, rel, 0.0)), np.nan)
    out[k] = _percentile_interval(point[k], ceil, level)
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
