"""The selection summaries' shared regret comparisons: pairs from the families' declarations, one
re-split-corrected interval over selection seeds."""
import ml_collections
import numpy as np
import pytest

from ksurrogate import families, intervals
from ksurrogate_experiments.shared import selection


def _config(num_fit=16, num_subsets=40):
  c = ml_collections.ConfigDict()
  c.design = dict(num_fit=num_fit, num_subsets=num_subsets)
  return c


def test_regret_comparisons_report_each_declared_pair_with_the_resplit_interval():
  rng = np.random.default_rng(0)
  regret = {f"{f.name}_exact": rng.random(5) for f in families.standard()}
  regret["kernel_estimated"] = rng.random(5)
  pairs = families.counterpart_pairs(families.standard())
  out = selection.regret_comparisons(regret, pairs, _config())
  for a, b in pairs:
    ra, rb = regret[f"{a}_exact"], regret[f"{b}_exact"]
    expected = intervals.resplit_interval(ra - rb, test_fraction=1 - 16 / 40)
    assert out[f"{a}_minus_{b}_regret"] == pytest.approx(expected.mean)
    assert out[f"{a}_minus_{b}_regret_se"] == pytest.approx(expected.se)
    assert out[f"{a}_minus_{b}_regret_ci95"] == pytest.approx([expected.lo, expected.hi])
    assert out[f"{a}_minus_{b}_regret_verdict"] == expected.verdict(higher_is_better=False)
    assert out[f"{a}_vs_{b}_regret_reduction"] == pytest.approx(1 - ra.mean() / rb.mean())
    assert out[f"{a}_vs_{b}_regret_reduction_per_seed"] == pytest.approx(1 - ra / rb)
  assert len(out) == 6 * len(pairs)
  # wider than a t interval for independent seeds: the correction for overlapping fit sets
  plain = intervals.replicate_interval(regret["kernel_exact"] - regret["linear_exact"])
  assert out["kernel_minus_linear_regret_se"] > plain.se


def test_a_pair_with_an_unfitted_family_is_left_out_and_lower_regret_wins():
  regret = {"kernel_exact": np.zeros(4), "linear_exact": np.array([1.0, 1.1, 0.9, 1.0])}
  out = selection.regret_comparisons(regret, [("kernel", "linear"), ("kernel_official", "linear_official")], _config())
  assert set(out) == {"kernel_vs_linear_regret_reduction", "kernel_vs_linear_regret_reduction_per_seed",
                      "kernel_minus_linear_regret", "kernel_minus_linear_regret_se", "kernel_minus_linear_regret_ci95",
                      "kernel_minus_linear_regret_verdict"}
  assert out["kernel_minus_linear_regret_verdict"] == "wins" and out["kernel_vs_linear_regret_reduction"] == 1.0
  one_seed = selection.regret_comparisons({k: v[:1] for k, v in regret.items()}, [("kernel", "linear")], _config())
  assert one_seed["kernel_minus_linear_regret_verdict"] == "undetermined"
