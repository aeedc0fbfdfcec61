import numpy as np
import pytest
from scipy import stats

from ksurrogate import ceilings
from ksurrogate import metrics


def test_spearman_and_pearson_equal_scipy_with_ties(rng):
  P = np.round(rng.normal(size=(40, 6)), 1)   # rounding makes ties
  T = np.round(P + rng.normal(size=(40, 6)), 1)
  ours = metrics.spearman(P, T, per_target=True)
  ref = [stats.spearmanr(P[:, j], T[:, j]).statistic for j in range(6)]
  np.testing.assert_allclose(ours, ref, atol=1e-12)
  np.testing.assert_allclose(metrics.pearson(P, T, per_target=True),
                             [stats.pearsonr(P[:, j], T[:, j]).statistic for j in range(6)], atol=1e-12)
  assert metrics.lds(P, T) == pytest.approx(np.mean(ref), abs=1e-12)


def test_lds_counts_a_constant_prediction_as_zero_and_skips_a_constant_truth(rng):
  P, T = rng.normal(size=(10, 3)), rng.normal(size=(10, 3))
  P[:, 1] = 1.0
  per = metrics.lds(P, T, per_target=True)
  assert per[1] == 0.0 and metrics.lds(P, T) == pytest.approx(np.mean(per))
  # one constant column beside perfect ones: 2/3, not 1.0
  assert metrics.lds(np.stack([T[:, 0], np.ones(10), T[:, 2]], 1), T) == pytest.approx(2 / 3)
  T[:, 2] = 3.0
  per = metrics.lds(P, T, per_target=True)
  assert np.isnan(per[2]) and metrics.lds(P, T) == pytest.approx(np.nanmean(per))


def test_relative_error_at_zero_truth():
  out = metrics.relative_error(np.array([1.0, 2.0, 0.5]), np.array([0.0, 1.0, 1.0]))
  assert np.isnan(out["values"][0]) and out["num_zero_truth"] == 1 and out["median"] == pytest.approx(0.75)
  with pytest.raises(metrics.Undefined, match="^truth: all 3 values are 0"):
    metrics.relative_error(np.ones(3), np.zeros(3))


def test_normalized_error_by_hand(rng):
  T = rng.normal(size=(20, 4)) * np.array([1.0, 0.01, 2.0, 0.5])
  P = T + rng.normal(size=(20, 4)) * 0.3
  var = T.var(0, ddof=1)
  keep = var >= 0.1
  expect = np.mean(((P - T) ** 2).mean(0)[keep] / var[keep])
  assert metrics.normalized_error(P, T, threshold=0.1) == pytest.approx(expect, rel=1e-12)
  assert metrics.normalized_error(np.tile(T.mean(0), (20, 1)), T, threshold=0.1) == pytest.approx(19 / 20)
  with pytest.raises(metrics.Undefined, match="^threshold: no target has variance >= 100 across the 20 rows"):
    metrics.normalized_error(P, T, threshold=100.0)


def test_loo_correlation_and_relative_error(rng):
  true = rng.normal(size=(25, 5))
  pred = true + 0.1 * rng.normal(size=(25, 5))
  out = metrics.loo_correlation(pred, true)
  assert out["pearson"] == pytest.approx(np.mean([stats.pearsonr(pred[:, j], true[:, j]).statistic for j in range(5)]))
  assert out["spearman_mean_target"] == pytest.approx(stats.spearmanr(pred.mean(1), true.mean(1)).statistic)
  rel = metrics.relative_error(np.array([1.1, 2.0, -0.5]), np.array([1.0, 2.5, -0.5]))
  assert rel["median"] == pytest.approx(0.1) and rel["mean"] == pytest.approx((0.1 + 0.2) / 3)


def test_shape_mismatch_is_named():
  with pytest.raises(ValueError, match="^pred"):
    metrics.lds(np.zeros((5, 2)), np.zeros((5, 3)))


def test_split_half_ceiling_of_noisy_seeds():
  r = np.random.default_rng(0)
  truth = r.normal(size=(20, 3))
  noise = 0.5
  seeds = truth[None] + noise * r.normal(size=(4, 20, 3))
  ceiling, reliability = ceilings.split_half_ceiling(seeds)
  # Reliability of a 4-seed mean with noise variance 0.25 per seed: 1 / (1 + 0.25 / 4) ~ 0.94.
  assert 0.85 < reliability["pearson"] < 0.99
  assert ceiling["pearson"] == pytest.approx(np.sqrt(reliability["pearson"]))
  same = np.repeat(truth[None], 3, 0)
  assert ceilings.split_half_ceiling(same)[1]["pearson"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="^effects_SxKxT"):
    ceilings.split_half_ceiling(truth[None])


def test_non_finite_values_are_undefined_and_named(rng):
  """Every metric refuses NaN / inf with one line naming the rows and targets (lds used to rank
  NaN: one target's 1.0 became 0.77)."""
  P = rng.normal(size=(10, 3))
  T = P.copy()
  assert metrics.lds(P, T) == pytest.approx(1.0)
  T[4, 1] = np.nan
  T[7, 1] = np.inf
  for fn in (metrics.lds, metrics.spearman, metrics.pearson, metrics.normalized_error, metrics.loo_correlation):
    with pytest.raises(metrics.Undefined, match=r"^true: 2 non-finite values at rows \[4, 7\], targets \[1\]$"):
      fn(P, T)
    with pytest.raises(metrics.Undefined, match=r"^pred: 2 non-finite values at rows \[4, 7\], targets \[1\]$"):
      fn(T, P)
  with pytest.raises(metrics.Undefined, match=r"^truth: 2 non-finite values at rows \[4, 7\], targets \[1\]"):
    metrics.relative_error(P, T)
  with pytest.raises(metrics.Undefined, match=r"^effects_SxKxT: 2 non-finite values at seeds \[1\]"):
    ceilings.split_half_ceiling(np.stack([P, T, P]))
  with pytest.raises(metrics.Undefined, match="^F: "):
    metrics.varying_targets(T)


def test_undefined_is_not_bad_input(rng):
  """Too few rows, constant data and nothing above the threshold are `Undefined` (a ValueError
  the driver reports as an absent metric); a shape mismatch stays a plain ValueError."""
  P, T = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
  for args in ((P[:1], T[:1]), (P, np.ones_like(T))):
    with pytest.raises(metrics.Undefined, match="^(pred|true): "):
      metrics.lds(*args)
  assert metrics.lds(np.ones_like(P), T) == 0.0   # a constant prediction ranks nothing
  with pytest.raises(metrics.Undefined, match=r"^threshold: no target has variance >= 0.001 across the 6 rows "
                                              r"\(max 0.000188 over 2 targets\)"):
    metrics.normalized_error(P, 0.0125 * T / T.std(0), threshold=1e-3)   # unbiased variance 1.9e-4 each
  with pytest.raises(metrics.Undefined):
    metrics.loo_correlation(P[:1], T[:1])                 # one task
  with pytest.raises(metrics.Undefined, match="^estimate: no values"):
    metrics.relative_error(np.zeros(0), np.zeros(0))
  try:
    metrics.lds(P, T[:, :1])
  except metrics.Undefined:
    pytest.fail("a shape mismatch is bad input, not an undefined metric")
  except ValueError as e:
    assert str(e).startswith("pred: shape")
  skipped = {}
  assert metrics.attempt(skipped, "lds", metrics.lds, P, np.ones_like(T)) is None
  assert skipped["lds"].startswith("true: no target has both a varying truth and a varying prediction")
  assert metrics.attempt(skipped, "ok", metrics.lds, P, P) == pytest.approx(1.0) and "ok" not in skipped


def test_split_half_ceiling_of_a_single_task_is_nan_not_an_error(rng):
  ceiling, reliability = ceilings.split_half_ceiling(rng.normal(size=(3, 1, 4)))
  assert all(np.isnan(v) for v in ceiling.values()) and all(np.isnan(v) for v in reliability.values())
