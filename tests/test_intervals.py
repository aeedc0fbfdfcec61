"""Intervals of scores and paired differences (`intervals.resplit_interval`, `bootstrap_loo`) and
the ceilings of a noisy truth (`ceilings.ceiling_interval`, `seeds_for_reliability`)."""
import numpy as np
import pytest
from scipy import stats

from ksurrogate import ceilings
from ksurrogate import intervals
from ksurrogate import metrics


@pytest.mark.parametrize("p, df", [(0.975, 1), (0.975, 4), (0.975, 19), (0.95, 30), (0.995, 7)])
def test_t_quantile_matches_scipy(p, df):
  assert intervals.t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


def test_resplit_interval_by_hand():
  v = np.array([0.30, 0.25, 0.35, 0.28, 0.33, np.nan])   # one undefined split is left out
  out = intervals.resplit_interval(v, test_fraction=0.2)
  finite = v[np.isfinite(v)]
  se = np.sqrt((1 / 5 + 0.25) * finite.var(ddof=1))
  assert out.mean == pytest.approx(finite.mean()) and out.se == pytest.approx(se)
  assert out.hi - out.mean == pytest.approx(stats.t.ppf(0.975, 4) * se)
  assert out.replicates == 5
  assert np.isnan(intervals.resplit_interval([0.3], test_fraction=0.2).se)
  with pytest.raises(ValueError, match="^test_fraction"):
    intervals.resplit_interval(v, test_fraction=1.0)


def test_replicate_interval_by_hand():
  v = np.array([-0.08, -0.04, -0.75, 0.17, 0.03])       # independent seeds: no overlap correction
  out = intervals.replicate_interval(v)
  assert out.mean == pytest.approx(v.mean()) and out.se == pytest.approx(v.std(ddof=1) / np.sqrt(5))
  assert out.hi - out.mean == pytest.approx(stats.t.ppf(0.975, 4) * out.se) and out.verdict() == "ties"
  assert intervals.replicate_interval([0.1, 0.2, 0.15, 0.12]).verdict() == "wins"
  assert np.isnan(intervals.replicate_interval([0.3, np.nan]).lo)


def test_verdict_follows_the_interval():
  assert intervals.Interval(0.1, 0.02, 0.05, 0.15).verdict() == "wins"
  assert intervals.Interval(-0.1, 0.02, -0.15, -0.05).verdict() == "loses"
  assert intervals.Interval(0.01, 0.02, -0.03, 0.05).verdict() == "ties"
  assert intervals.Interval(0.1, 0.02, 0.05, 0.15).verdict(higher_is_better=False) == "loses"
  assert intervals.Interval(float("nan"), float("nan"), float("nan"), float("nan")).verdict() == "undetermined"
  entries = intervals.Interval(0.1, 0.02, 0.05, 0.15).entries("lds")
  assert entries == {"lds": 0.1, "lds_se": 0.02, "lds_ci95": [0.05, 0.15]}


def _noisy(rng, truth, sd):
  return truth + sd * rng.normal(size=truth.shape)


def test_bootstrap_loo_points_equal_loo_correlation_and_pairs_decide():
  rng = np.random.default_rng(0)
  truth = rng.normal(size=(25, 200))
  E = truth[None] + 0.5 * rng.normal(size=(3, 25, 200))
  preds = {"good": _noisy(rng, truth, 0.5), "bad": _noisy(rng, truth, 2.0)}
  out = intervals.bootstrap_loo(preds, E, pairs=[("good", "bad"), ("good", "good")], num_resamples=300)
  for name, p in preds.items():
    ref = metrics.loo_correlation(p, E.mean(0))
    for k, v in ref.items():
      iv = out["methods"][name][k]
      assert iv.mean == pytest.approx(v, abs=1e-6)   # loo_correlation averages in float32
      assert iv.lo <= iv.mean <= iv.hi
  assert out["pairs"]["good-bad"]["pearson"].verdict() == "wins"
  same = out["pairs"]["good-good"]["pearson"]
  assert same.mean == 0 and same.lo == 0 and same.hi == 0 and same.verdict() == "ties"


def test_bootstrap_loo_covers_the_population_mean():
  # Per-target correlations vary across targets; resampling targets must cover the mean over the
  # target population about 95 % of the time.
  rng = np.random.default_rng(1)
  K, T, runs = 25, 30, 120
  true_noise = np.linspace(0.3, 3.0, 400)            # the target population's noise levels
  population = []
  for sd in true_noise[::10]:   # a dense estimate of the population mean correlation
    t = rng.normal(size=(K, 2000))
    population.append(metrics.pearson(t + sd * rng.normal(size=t.shape), t))
  mean_pop = float(np.mean(population))
  hits = 0
  for _ in range(runs):
    sd = rng.choice(true_noise, size=T)
    truth = rng.normal(size=(K, T))
    pred = truth + sd * rng.normal(size=(K, T))
    iv = intervals.bootstrap_loo({"m": pred}, truth, num_resamples=300, seed=int(rng.integers(1 << 30)))["methods"]["m"]["pearson"]
    hits += iv.lo <= mean_pop <= iv.hi
  assert 0.85 <= hits / runs <= 0.99


def test_ceiling_interval_contains_the_point_and_shrinks_with_targets():
  rng = np.random.default_rng(2)
  truth = rng.normal(size=(20, 400))
  E = truth[None] + 0.8 * rng.normal(size=(4, 20, 400))
  point, _ = ceilings.split_half_ceiling(E)
  wide = ceilings.ceiling_interval(E[:, :, :40], num_resamples=300)
  narrow = ceilings.ceiling_interval(E, num_resamples=300)
  for k in point:
    assert narrow[k].mean == pytest.approx(point[k])
    assert narrow[k].lo <= narrow[k].mean <= narrow[k].hi
  assert narrow["pearson"].hi - narrow["pearson"].lo < wide["pearson"].hi - wide["pearson"].lo
  with pytest.raises(ValueError, match="^effects_SxKxT"):
    ceilings.ceiling_interval(E[:1])


def test_seeds_for_reliability_inverts_spearman_brown():
  one = 0.2
  for n in (1, 3, 8):
    rel_n = n * one / (1 + (n - 1) * one)
    assert ceilings.seeds_for_reliability(rel_n, n, target=rel_n) == pytest.approx(n)
  assert ceilings.seeds_for_reliability(-0.1, 3) == float("inf")
  assert ceilings.seeds_for_reliability(0.9, 3) < 3


def test_bad_input_is_one_line():
  good = np.zeros((5, 4))
  with pytest.raises(ValueError, match="^preds: 'm' has shape"):
    intervals.bootstrap_loo({"m": np.zeros((5, 3))}, good)
  with pytest.raises(ValueError, match="^pairs: unknown method"):
    intervals.bootstrap_loo({"m": good}, good, pairs=[("m", "x")])
  bad = good.copy()
  bad[0, 0] = np.nan
  with pytest.raises(ValueError, match="^effects: 1 non-finite"):
    intervals.bootstrap_loo({"m": good}, bad)
