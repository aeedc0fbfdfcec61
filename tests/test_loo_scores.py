"""Leave-one-out scores that see scale and interactions: the pooled correlation, the magnitude
error, its noise floor, and their intervals and verdicts in the driver."""
import numpy as np
import pytest

from ksurrogate import ceilings
from ksurrogate import intervals
from ksurrogate import metrics


def _substitutes(K=8, T=4):
  """True LOO effects where tasks 0 and 1 substitute for each other (removing either costs
  nothing; removing both would cost 1) and the others act alone; and the prediction of an additive
  fit, which splits the drop-both jump between the two members."""
  rng = np.random.default_rng(0)
  alone = rng.uniform(0.2, 1.0, size=(K, T))
  true = alone.copy()
  true[:2] = 0.0
  additive = alone.copy()
  additive[:2] = 0.5
  return true, additive


def test_magnitude_error_is_zero_for_exact_one_for_no_effect_and_undefined_at_zero_truth():
  true, _ = _substitutes()
  assert metrics.loo_magnitude_error(true, true) == 0.0
  assert metrics.loo_magnitude_error(np.zeros_like(true), true) == pytest.approx(1.0)
  with pytest.raises(metrics.Undefined, match="^true_loo: every effect is 0"):
    metrics.loo_magnitude_error(true, np.zeros_like(true))
  with pytest.raises(ValueError, match="^pred"):
    metrics.loo_magnitude_error(true[:, :2], true)


def test_pooled_correlation_sees_what_the_per_target_one_cannot():
  rng = np.random.default_rng(1)
  true = rng.normal(size=(10, 3)) * np.array([1.0, 10.0, 0.1])   # targets of very different scale
  pred = true / np.array([1.0, 10.0, 0.1]) ** 2                    # each column's order kept, scales swapped
  out = metrics.loo_correlation(pred, true)
  assert out["pearson"] == pytest.approx(1.0)
  assert out["pearson_pooled"] < 0.5
  assert metrics.loo_correlation(true, true)["pearson_pooled"] == pytest.approx(1.0)


def test_substitutes_an_additive_fit_is_off_in_magnitude():
  true, additive = _substitutes()
  err = metrics.loo_magnitude_error(additive, true)
  assert err > 0.3
  assert metrics.loo_magnitude_error(true + 0.01, true) < 0.05


def test_magnitude_floor_matches_the_seed_means_real_noise():
  rng = np.random.default_rng(2)
  truth = rng.normal(size=(30, 40))
  for n in (2, 3, 5):
    E = truth[None] + 0.7 * rng.normal(size=(n, 30, 40))
    ceiling, reliability = ceilings.split_half_ceiling(E)
    real = metrics.loo_magnitude_error(truth, E.mean(0))   # what the noise-free effects score
    assert ceiling["magnitude_error"] == pytest.approx(real, rel=0.15)
    assert "magnitude_error" not in reliability
    iv = ceilings.ceiling_interval(E, num_resamples=200)["magnitude_error"]
    assert iv.lo <= ceiling["magnitude_error"] <= iv.hi
  same = np.repeat(truth[None], 3, 0)
  assert ceilings.split_half_ceiling(same)[0]["magnitude_error"] == 0.0


def test_bootstrap_points_equal_the_direct_scores_and_lower_error_wins():
  rng = np.random.default_rng(3)
  truth = rng.normal(size=(20, 50))
  E = truth[None] + 0.3 * rng.normal(size=(3, 20, 50))
  preds = {"good": truth + 0.2 * rng.normal(size=truth.shape), "bad": 3 * truth}
  out = intervals.bootstrap_loo(preds, E, pairs=[("good", "bad")], num_resamples=300)
  for name, p in preds.items():
    iv = out["methods"][name]["magnitude_error"]
    assert iv.mean == pytest.approx(metrics.loo_magnitude_error(p, E.mean(0)), rel=1e-6)
    assert iv.lo <= iv.mean <= iv.hi
    pooled = out["methods"][name]["pearson_pooled"]
    assert pooled.mean == pytest.approx(metrics.loo_correlation(p, E.mean(0))["pearson_pooled"], abs=1e-6)
  diff = out["pairs"]["good-bad"]["magnitude_error"]
  assert diff.hi < 0 and diff.verdict(higher_is_better=False) == "wins"
  # bad is a perfect correlate at three times the scale: per-target and pooled Pearson say it wins
  assert out["pairs"]["good-bad"]["pearson"].verdict() == "loses"


def test_the_driver_reports_both_with_the_error_lower_is_better():
  from ksurrogate.harness import driver
  from ksurrogate import families
  rng = np.random.default_rng(4)
  K, T, m = 6, 3, 60
  S = rng.random((m, K)) < 0.5
  w = rng.normal(size=(K, T))
  F = S @ w + 0.05 * rng.normal(size=(m, T))
  loo = np.stack([-w + 0.05 * rng.normal(size=w.shape) for _ in range(3)])
  problem = driver.Problem(name="toy", S=S, F=F, splits=[(np.arange(40), np.arange(40, 60))],
                           truths={"loo": driver.Truth(loo)})
  fams = [f for f in families.standard(cv=3) if f.name in ("kernel", "linear")]
  res = driver.evaluate(problem, fams, threshold=0.0, resplit_count=3, num_bootstrap=100)
  for method in ("linear_exact", "kernel_exact"):
    row = res.scores[method]
    assert row["loo_magnitude_error"] == pytest.approx(
        metrics.loo_magnitude_error(res.arrays[f"{method}/predicted_loo"], loo.mean(0)))
    lo, hi = row["loo_magnitude_error_ci95"]
    assert lo <= row["loo_magnitude_error"] <= hi
    assert row["loo_pearson_pooled"] == pytest.approx(
        metrics.loo_correlation(res.arrays[f"{method}/predicted_loo"], loo.mean(0))["pearson_pooled"])
  assert res.ceiling["loo_magnitude_error"] == pytest.approx(ceilings.split_half_ceiling(loo)[0]["magnitude_error"])
  comp = res.comparisons["kernel_exact-linear_exact"]
  lo, hi = comp["loo_magnitude_error_ci95"]
  assert lo <= comp["loo_magnitude_error"] <= hi


def _toy():
  """benchmarks/pair_scores.py's planted toy (loaded from its file: benchmarks are scripts)."""
  import importlib.util
  import pathlib
  path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "pair_scores.py"
  spec = importlib.util.spec_from_file_location("pair_scores", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_pair_truths_score_drop_two_effects_and_interactions_of_every_family():
  from ksurrogate import families
  from ksurrogate.harness import driver
  toy = _toy()
  problem = toy.problem()
  drop, pairs = problem.truths["drop_two"].mean, toy.PAIRS
  fams = [f for f in families.standard(cv=3) if f.name in ("kernel", "linear")]
  with pytest.warns(UserWarning, match="pair_interaction_pearson not computed for linear_exact"):
    res = driver.evaluate(problem, fams, threshold=0.0, resplit_count=3, num_bootstrap=100)
  lin, ker = res.scores["linear_exact"], res.scores["kernel_exact"]
  assert np.all(res.arrays["linear_exact/predicted_pair_interaction"] == 0.0)
  assert lin["pair_interaction_magnitude_error"] == pytest.approx(1.0)
  assert lin["pair_interaction_pearson"] is None    # a constant prediction has no correlation (one warning says so)
  assert ker["pair_interaction_magnitude_error"] < 0.5
  assert ker["drop_two_magnitude_error"] < lin["drop_two_magnitude_error"]
  assert ker["pair_interaction_pearson_pooled"] > 0.9
  # lower is better: the kernel's smaller errors are wins, with intervals for the additive fit too
  comp = res.comparisons["kernel_exact-linear_exact"]
  for key in ("loo_magnitude_error", "pair_interaction_magnitude_error"):
    assert comp[key] < 0 and comp[f"{key}_ci95"][1] < 0 and comp[f"{key}_verdict"] == "wins"
  lo, hi = lin["pair_interaction_magnitude_error_ci95"]
  assert lo <= lin["pair_interaction_magnitude_error"] <= hi
  with pytest.raises(ValueError, match="^effects: 2 rows for 3 pairs"):
    driver.Truth(drop[:2], pairs=pairs)
  with pytest.raises(ValueError, match="^pairs"):
    driver.Truth(drop, pairs=[(0, 0), (1, 2), (3, 4)])
  with pytest.raises(ValueError, match="^of"):
    driver.Truth(drop, pairs=pairs, of="both")
  with pytest.raises(ValueError, match="^of='interaction': needs pairs"):
    driver.Truth(drop, of="interaction")
  with pytest.raises(ValueError, match="^readout and pairs"):
    driver.Truth(drop, pairs=pairs, readout=lambda g: drop)
  with pytest.raises(ValueError, match="^pairs"):
    driver.Truth(drop, pairs=[(-1, 2), (1, 2), (3, 4)])
  outside = driver.Problem(name="toy", S=problem.S, F=problem.F, splits=problem.splits,
                           truths={"d": driver.Truth(drop, pairs=[(0, 1), (2, 3), (4, 6)])})
  with pytest.raises(ValueError, match="names a task outside"):
    driver.evaluate(outside, fams, threshold=0.0, resplit_count=3, num_bootstrap=100)
