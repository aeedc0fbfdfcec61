"""The shared driver on synthetic problems: scoring, readouts by capability, methods per problem,
the outcome sign, one summary schema whatever the number of problems."""
import json
import pathlib

import numpy as np
import pytest

import ksurrogate as ks
from ksurrogate.harness import driver, report, runs

K, T = 6, 3


def _problem(name, seed, higher_is_better=False, m=60):
  r = np.random.default_rng(seed)
  S = r.random((m, K)) < 0.5
  beta = r.normal(size=(K, T))
  F = S @ beta + 2.0 * (S[:, :1] & S[:, 1:2]) + 0.05 * r.normal(size=(m, T))   # one planted pair
  full = np.ones(K) @ beta + 2.0
  loo = np.stack([(np.ones(K) - np.eye(K)[k]) @ beta + 2.0 * (k not in (0, 1)) for k in range(K)]) - full
  return driver.Problem(name=name, S=S, F=F, splits=[(np.arange(40), np.arange(40, m))], loo_true=loo,
                        extra_loo={"oracle": loo}, info={"estimator": {"seed": seed}},
                        higher_is_better=higher_is_better, outcome_name="return" if higher_is_better else "loss")


SEEN = []


def _methods(config, problem):
  SEEN.append(problem.name)
  return {"kernel": driver.Method("kernel", lambda S, F: ks.fit_kernel(S, F, cv=3)),
          "linear": driver.Method("linear", lambda S, F: ks.fit_linear(S, F, cv=3))}


def test_evaluate_scores_and_reads_out_by_capability():
  summary, arrays = driver.evaluate(_problem("a", 0), _methods(None, _problem("a", 0)), threshold=0.0)
  assert summary["kernel"]["lds"] > 0.8 and summary["linear"]["lds"] > 0.8
  assert summary["oracle"]["loo_pearson"] == pytest.approx(1.0)
  assert "kernel/interactions" in arrays and "linear/interactions" not in arrays   # linear declares none
  inter = arrays["kernel/interactions"].mean(-1)
  assert np.argmax(np.abs(inter[np.triu_indices(K, 1)])) == 0                   # the planted (0, 1) pair
  assert arrays["kernel/predicted_loo"].shape == (K, T)


def _run(tmp_path, problems):
  protocol = driver.Protocol("synthetic", problems=lambda c, run: iter(problems), methods=_methods, plot_method="kernel")
  import ml_collections
  config = ml_collections.ConfigDict({"normalized_error_threshold": 0.0})
  with runs.Run(tmp_path, progress=False, log=lambda m: None) as run:
    return driver.run(protocol, config, run)


def test_summary_schema_is_the_same_for_one_and_many_problems(tmp_path):
  SEEN.clear()
  one = _run(tmp_path / "one", [_problem("a", 0)])
  two = _run(tmp_path / "two", [_problem("a", 0), _problem("b", 1, higher_is_better=True)])
  assert SEEN == ["a", "a", "b"]                      # methods built per problem
  assert set(one) == set(two)
  assert one["datasets"]["a"]["kernel"]["lds"] == two["datasets"]["a"]["kernel"]["lds"]
  assert set(one["datasets"]["a"]["kernel"]) == set(two["datasets"]["b"]["kernel"])
  assert two["estimator"] == {"a": {"seed": 0}, "b": {"seed": 1}}
  on_disk = json.loads((tmp_path / "two" / "summary.json").read_text())
  for what, path in on_disk["files"].items():
    assert pathlib.Path(path).exists(), what
  assert {"a/top_tasks", "b/top_tasks", "a/interactions", "b/loo_real_vs_predicted", "summary"} <= set(on_disk["files"])


def test_top_tasks_respect_the_outcome_sign(tmp_path, monkeypatch):
  seen = {}
  monkeypatch.setattr(report, "top_tasks", lambda path, loo, title, **kw: seen.setdefault(title, kw))
  _run(tmp_path, [_problem("loss", 0), _problem("ret", 0, higher_is_better=True)])
  assert seen["loss: kernel"]["higher_is_better"] is False and seen["ret: kernel"]["higher_is_better"] is True


def test_a_method_on_missing_outcomes_is_one_line_error():
  p = _problem("a", 0)
  with pytest.raises(ValueError, match="^method: 'm' fits on 'estimated' outcomes, which problem 'a' lacks"):
    driver.evaluate(p, {"m": driver.Method("m", ks.fit_linear, data="estimated")})


def test_other_ground_truths_and_test_sets_are_scored_beside_the_primary_ones():
  import dataclasses
  base = _problem("a", 0)
  r = np.random.default_rng(5)
  noisy = base.loo_true + r.normal(size=base.loo_true.shape)        # a second, noisier truth
  S_test = r.random((30, K)) < 0.5
  F_test = base.F[:30] * 0 + (S_test @ np.ones((K, T)))             # another held-out set
  problem = dataclasses.replace(base, loo_ceiling={"pearson": 0.5},
                                other_loo_truths={"alt": (noisy, {"pearson": 0.25}), "same": (base.loo_true, None)},
                                other_tests={"extra": (S_test, F_test)})
  summary, arrays = driver.evaluate(problem, _methods(None, problem), threshold=0.0)
  o = summary["oracle"]
  assert o["loo_same_pearson"] == pytest.approx(1.0) and o["loo_pearson_of_ceiling"] == pytest.approx(2.0)
  assert o["loo_alt_pearson"] < 0.99
  assert o["loo_alt_pearson_of_ceiling"] == pytest.approx(o["loo_alt_pearson"] / 0.25)
  assert "loo_same_pearson_of_ceiling" not in o                        # no ceiling given for it
  k = summary["kernel"]
  assert {"lds_extra", "normalized_error_extra", "loo_alt_spearman", "loo_pearson_of_ceiling"} <= set(k)
  assert np.array_equal(arrays["loo_true_alt"], noisy)
