"""The shared driver on synthetic problems: every family on every outcome source, scores over
seeded re-splits with intervals, paired comparisons with verdicts, ceilings, readouts by declared
capability, the outcome sign, one summary schema whatever the number of problems, the end of a
run in one direction (evaluate -> summary -> figures)."""
import dataclasses
import json
import pathlib

import ml_collections
import numpy as np
import pytest

import ksurrogate as ks
from ksurrogate import families
from ksurrogate.harness import driver, report, runs

K, T = 8, 3
FAST = dict(resplit_count=4, num_bootstrap=100)


def _problem(name, seed, higher_is_better=False, m=60, seeds=3):
  r = np.random.default_rng(seed)
  S = r.random((m, K)) < 0.5
  beta = r.normal(size=(K, T))
  F = S @ beta + 2.0 * (S[:, :1] & S[:, 1:2]) + 0.05 * r.normal(size=(m, T))   # one planted pair
  full = np.ones(K) @ beta + 2.0
  loo = np.stack([(np.ones(K) - np.eye(K)[k]) @ beta + 2.0 * (k not in (0, 1)) for k in range(K)]) - full
  effects = loo[None] + 0.1 * r.normal(size=(seeds, K, T))        # a truth measured on `seeds` training seeds
  return driver.Problem(name=name, S=S, F=F, splits=[(np.arange(40), np.arange(40, m))],
                        truths={"loo": driver.Truth(effects, predictions={"oracle": loo})},
                        info={"estimator": {"seed": seed}},
                        higher_is_better=higher_is_better, outcome_name="return" if higher_is_better else "loss")


def _families(config=None, name=None):
  return [f for f in families.standard(cv=3) if f.name in ("kernel", "linear")]


def test_evaluate_scores_every_family_with_intervals_and_reads_out_by_capability():
  res = driver.evaluate(_problem("a", 0), _families(), threshold=0.0, **FAST)
  k, lin = res.scores["kernel_exact"], res.scores["linear_exact"]
  assert k["lds"] > 0.8 and lin["lds"] > 0.8 and k["lds"] > lin["lds"]
  for key in ("lds", "normalized_error", "loo_pearson"):
    assert k[f"{key}_se"] > 0 and k[f"{key}_ci95"][0] <= k[key] <= k[f"{key}_ci95"][1]
  assert k["lds_declared"] == pytest.approx(float(np.mean([k["lds_declared"]])))
  assert res.scores["oracle"]["loo_pearson"] > 0.99
  assert "kernel_exact/interactions" in res.arrays and "linear_exact/interactions" not in res.arrays   # linear declares none
  inter = res.arrays["kernel_exact/interactions"].mean(-1)
  assert np.argmax(np.abs(inter[np.triu_indices(K, 1)])) == 0                   # the planted (0, 1) pair
  assert res.arrays["kernel_exact/predicted_loo"].shape == (K, T)
  pair = res.comparisons["kernel_exact-linear_exact"]
  assert pair["lds"] > 0 and pair["lds_verdict"] in ("wins", "ties") and "loo_pearson_verdict" in pair
  assert res.comparisons["kernel_exact-oracle"]["loo_pearson"] < 0 and "lds" not in res.comparisons["kernel_exact-oracle"]
  assert res.ceiling["loo_pearson"] > 0.9 and res.reliability["loo_repeats"] == 3
  assert res.seeds_needed["loo_pearson"] >= 1


def test_resplits_keep_the_declared_sizes_and_are_seeded():
  p = _problem("a", 0)
  a, b = driver.resplits(p, 5, seed=1), driver.resplits(p, 5, seed=1)
  assert all(np.array_equal(x[0], y[0]) for x, y in zip(a, b))
  assert {(len(f), len(h)) for f, h in a} == {(40, 20)}
  assert all(not set(f) & set(h) for f, h in a)
  assert len({tuple(f) for f, _ in a}) == 5


def test_a_method_scoring_above_the_ceiling_flags_it_unreliable():
  base = _problem("a", 0)
  truth = base.truths["loo"]
  # Two seeds whose noise cancels in their mean: they disagree with each other (low split-half
  # reliability, a low ceiling) while their mean is the noise-free truth the oracle predicts.
  noise = 0.7 * np.random.default_rng(3).normal(size=truth.mean.shape) * truth.mean.std()
  noisy = np.stack([truth.mean + noise, truth.mean - noise])
  oracle = truth.predictions["oracle"]
  p = dataclasses.replace(base, truths={"loo": driver.Truth(noisy, predictions={"oracle": oracle})})
  res = driver.evaluate(p, _families(), threshold=0.0, **FAST)
  assert "oracle" in res.unreliable.get("loo_pearson", [])     # the noise-free effects beat a noisy truth's ceiling


def test_estimated_sources_are_fitted_once_and_paired_with_their_real_source():
  base = _problem("a", 0)
  r = np.random.default_rng(1)
  S_est = r.random((200, K)) < 0.5
  p = dataclasses.replace(base, sources={"estimated": (S_est, S_est @ np.ones((K, T)))}, estimates_of={"estimated": "exact"})
  calls = []

  def counting_linear(S, F, **kw):
    calls.append(len(S))
    return ks.fit_linear(S, F, cv=3)

  fams = [families.Family("linear", counting_linear, baseline=True)]
  res = driver.evaluate(p, fams, threshold=0.0, **FAST)
  # declared split + 4 re-splits on the exact rows (at most 40 distinct subsets), the estimates once
  assert len(calls) == 1 + 4 + 1 and sum(n > 40 for n in calls) == 1
  assert "linear_estimated-linear_exact" in res.comparisons


def test_a_surrogate_without_declared_readouts_is_refused():
  @dataclasses.dataclass
  class Bare:
    def predict(self, S):
      return np.zeros((len(S), T))

  with pytest.raises(TypeError, match="^surrogate: Bare declares no READOUTS"):
    driver.evaluate(_problem("a", 0), [families.Family("bare", lambda S, F: Bare())], **FAST)


def _run(tmp_path, problems, across=None):
  protocol = driver.Protocol("synthetic", problems=lambda c, run, fam: iter(problems), families=_families,
                             across=across)
  config = ml_collections.ConfigDict({"normalized_error_threshold": 0.0, "seed": 0,
                                      "eval": {"resplits": 4, "bootstrap": 100}})
  with runs.Run(tmp_path, progress=False, log=lambda m: None) as run:
    return driver.run(protocol, config, run)


def test_summary_schema_is_the_same_for_one_and_many_problems(tmp_path, capsys):
  one = _run(tmp_path / "one", [_problem("a", 0)])
  two = _run(tmp_path / "two", [_problem("a", 0), _problem("b", 1, higher_is_better=True)])
  assert set(one) == set(two)
  assert one["datasets"]["a"]["kernel_exact"]["lds"] == two["datasets"]["a"]["kernel_exact"]["lds"]
  assert set(one["datasets"]["a"]["kernel_exact"]) == set(two["datasets"]["b"]["kernel_exact"])
  assert two["estimator"] == {"a": {"seed": 0}, "b": {"seed": 1}}
  assert set(two["comparisons"]["b"]) >= {"kernel_exact-linear_exact", "kernel_exact-oracle"}
  assert two["ceiling"]["a"]["loo_pearson_ci95"] and two["evaluation"]["resplits"] == 4
  on_disk = json.loads((tmp_path / "two" / "summary.json").read_text())
  for what, path in on_disk["files"].items():
    assert pathlib.Path(path).exists(), what
  assert {"a/top_tasks", "b/top_tasks", "a/interactions", "b/loo_real_vs_predicted", "a/scores", "summary"} <= set(on_disk["files"])
  out = capsys.readouterr().out
  assert " ± " in out and "ceiling a loo_pearson:" in out and "kernel_exact-linear_exact" in out


def test_across_takes_the_results_in_memory_and_the_summary_comes_before_the_figures(tmp_path):
  seen = {}

  def across(config, results, shared):
    seen["results"] = results
    seen["summary_on_disk"] = None

    def draw(path):   # figures are drawn after summary.json is written
      seen["summary_on_disk"] = (tmp_path / "summary.json").exists()
      report.save(report.subplots(figsize=(2, 2))[0], path)
    return {"across": {"n": len(results)}}, {"overview": draw}

  s = _run(tmp_path, [_problem("a", 0), _problem("b", 1)], across=across)
  assert set(seen["results"]) == {"a", "b"} and isinstance(seen["results"]["a"], driver.Result)
  assert seen["results"]["a"].arrays["kernel_exact/predicted_loo"].shape == (K, T)
  assert s["across"] == {"n": 2} and seen["summary_on_disk"] is True
  assert pathlib.Path(s["files"]["overview"]).stat().st_size > 0


def test_top_tasks_respect_the_outcome_sign(tmp_path, monkeypatch):
  seen = {}
  monkeypatch.setattr(report, "top_tasks", lambda path, loo, title, **kw: seen.setdefault(title, kw))
  _run(tmp_path, [_problem("loss", 0), _problem("ret", 0, higher_is_better=True)])
  assert seen["loss: kernel_exact"]["higher_is_better"] is False and seen["ret: kernel_exact"]["higher_is_better"] is True


def test_other_ground_truths_and_test_sets_are_scored_beside_the_primary_ones():
  base = _problem("a", 0)
  r = np.random.default_rng(5)
  loo = base.truths["loo"].mean
  noisy = loo + r.normal(size=loo.shape)        # a second, noisier truth
  S_test = r.random((30, K)) < 0.5
  F_test = S_test @ np.ones((K, T))             # another held-out set
  problem = dataclasses.replace(base, truths={**base.truths, "loo_alt": driver.Truth(noisy),
                                              "loo_same": driver.Truth(loo)},
                                other_tests={"extra": (S_test, F_test)})
  res = driver.evaluate(problem, _families(), threshold=0.0, **FAST)
  k = res.scores["kernel_exact"]
  direct = ks.metrics.loo_correlation(res.arrays["kernel_exact/predicted_loo"], loo)
  assert k["loo_same_pearson"] == pytest.approx(direct["pearson"])
  assert k["loo_alt_pearson"] < k["loo_same_pearson"]
  assert {"lds_extra", "normalized_error_extra", "loo_alt_spearman", "loo_pearson_of_ceiling"} <= set(k)
  assert "loo_alt_pearson_of_ceiling" not in k                        # one repeat: no ceiling
  assert np.array_equal(res.arrays["loo_alt_true"], noisy)


def test_the_summary_cites_the_commit_the_run_started_on(tmp_path, monkeypatch):
  # a long run's checkout can move before its summary is written; the code that ran is the start's
  from ksurrogate.harness import provenance
  head = {"commit": "a" * 40, "dirty": False, "version": "x"}
  monkeypatch.setattr(provenance, "commit", lambda: dict(head))

  def problems():   # the checkout moves while the phases run
    yield _problem("a", 0)
    head.update(commit="b" * 40, dirty=True)

  summary = _run(tmp_path, problems())
  assert summary["provenance"]["commit"] == "a" * 40 and summary["provenance"]["dirty"] is False


@pytest.mark.parametrize("domain, said", [("subsets", "g(1) - g(1-e_j)"), ("simplex", "the uniform mixture"),
                                          ("weights", "every weight 1")])
def test_readout_figures_say_which_point_a_removal_starts_from(tmp_path, monkeypatch, domain, said):
  # on mixtures "removed" means weight to 0 from the uniform mixture, renormalized: the labels say so
  drawn = []
  monkeypatch.setattr(report, "save", lambda fig, path: drawn.append(fig))
  rng = np.random.default_rng(0)
  report.interaction_heatmap(tmp_path / "i.png", rng.normal(size=(4, 4, 2)), "t", domain=domain)
  report.top_tasks(tmp_path / "t.png", rng.normal(size=(4, 2)), "t", domain=domain)
  heat, bars = drawn
  assert said in heat.axes[1].get_ylabel()
  xlabel = bars.axes[0].get_xlabel()
  assert ("uniform mixture" in xlabel) == (domain == "simplex") and ("weight 1 to 0" in xlabel) == (domain == "weights")
