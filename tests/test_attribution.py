import jax
import numpy as np
import pytest

import ksurrogate as ks
from conftest import planted_xor


def test_planted_xor_pair_ranked_first_and_kernel_beats_linear(rng):
  pair = (3, 7)
  S, F = planted_xor(rng, 400, pair=pair)
  S, idx = np.unique(S, axis=0, return_index=True)
  F = F[idx]
  fit, test = np.arange(250), np.arange(250, len(S))
  kern = ks.fit_kernel(S[fit], F[fit])
  lin = ks.fit_linear(S[fit], F[fit])
  inter = np.abs(np.asarray(ks.interactions(kern))).mean(axis=2)
  top = np.unravel_index(np.argmax(np.triu(inter, 1)), inter.shape)
  assert tuple(sorted(top)) == pair
  lds_k = ks.metrics.lds(kern.predict(S[test]), F[test])
  lds_l = ks.metrics.lds(lin.predict(S[test]), F[test])
  assert lds_k > lds_l + 0.05, (lds_k, lds_l)


def test_linear_readouts_are_exact(rng):
  S = np.unique(rng.random((60, 6)) < 0.5, axis=0)
  F = rng.normal(size=(len(S), 2))
  lin = ks.fit_linear(S, F, ridge=0.5)
  np.testing.assert_allclose(np.asarray(ks.predicted_loo(lin)), -np.asarray(lin.coef), atol=1e-12)
  np.testing.assert_allclose(np.asarray(ks.interactions(lin)), 0.0, atol=1e-12)
  values, se = ks.shapley(lin, 6, jax.random.key(0), 8)
  np.testing.assert_allclose(np.asarray(values), np.asarray(lin.coef), atol=1e-12)   # additive game
  np.testing.assert_allclose(np.asarray(se), 0.0, atol=1e-12)


def test_shapley_efficiency_and_determinism(rng):
  S, F = planted_xor(rng, 200, K=8)
  S, idx = np.unique(S, axis=0, return_index=True)
  kern = ks.fit_kernel(S, F[idx])
  values, se = ks.shapley(kern, 8, jax.random.key(1), 64)
  total = np.asarray(kern.predict(np.ones((1, 8))) - kern.predict(np.zeros((1, 8))))[0]
  np.testing.assert_allclose(np.asarray(values).sum(0), total, atol=1e-9)
  again, _ = ks.shapley(kern, 8, jax.random.key(1), 64)
  np.testing.assert_array_equal(np.asarray(values), np.asarray(again))
  assert np.all(np.asarray(se) >= 0)


def test_shapley_exact_for_small_game(rng):
  """Against the exact Shapley formula on 5 tasks (enumerating all permutations)."""
  import itertools
  S, F = planted_xor(rng, 32, K=5, pair=(0, 2))
  S, idx = np.unique(S, axis=0, return_index=True)
  kern = ks.fit_kernel(S, F[idx], gamma=0.3, ridge=0.1)
  exact = np.zeros((5, F.shape[1]))
  perms = list(itertools.permutations(range(5)))
  for perm in perms:
    mask = np.zeros(5, bool)
    prev = np.asarray(kern.predict(mask[None]))[0]
    for t in perm:
      mask[t] = True
      cur = np.asarray(kern.predict(mask[None]))[0]
      exact[t] += (cur - prev) / len(perms)
      prev = cur
  values, se = ks.shapley(kern, 5, jax.random.key(0), 4000)
  np.testing.assert_allclose(np.asarray(values), exact, atol=5 * float(np.asarray(se).max()) + 1e-6)


def test_predicted_loo_sign_convention(rng):
  S = np.unique(rng.random((80, 5)) < 0.5, axis=0)
  F = (1.0 - 0.8 * S[:, 2])[:, None] + 0.01 * rng.normal(size=(len(S), 1))   # task 2 lowers the loss
  loo = np.asarray(ks.predicted_loo(ks.fit_kernel(S, F)))
  assert np.argmax(loo[:, 0]) == 2 and loo[2, 0] > 0.5   # removing it raises the loss


def test_suggest_subsets_new_distinct_high_variance(rng):
  S = np.asarray(ks.subsets.fixed_size(jax.random.key(0), 30, 10, 7))
  S = np.unique(S, axis=0)
  F = S @ rng.normal(size=(10, 2))
  kern = ks.fit_kernel(S, F)
  picked, var = ks.suggest_subsets(kern, jax.random.key(2), 8, num_candidates=500)
  picked, var = np.asarray(picked), np.asarray(var)
  assert picked.shape == (8, 10) and np.all(picked.sum(1) == 7)
  assert len(np.unique(picked, axis=0)) == 8
  assert not {r.tobytes() for r in picked} & {r.tobytes() for r in S}
  assert np.all(np.diff(var) <= 1e-12)   # greedy picks come in non-increasing conditional variance
  cand = np.unique(np.asarray(ks.subsets.fixed_size(jax.random.key(2), 500, 10, 7, distinct=False)), axis=0)
  assert var[0] == pytest.approx(float(np.asarray(kern.predict_variance(cand)).max()))
  with pytest.raises(ValueError, match="^surrogate"):
    ks.suggest_subsets(ks.fit_linear(S, F), jax.random.key(0), 2)


def test_suggest_subsets_from_a_given_pool(rng):
  S = np.unique(np.asarray(ks.subsets.bernoulli(jax.random.key(0), 40, 10, 0.7)), axis=0)
  kern = ks.fit_kernel(S, S @ rng.normal(size=(10, 2)))
  pool = np.concatenate([S[:5], np.unique(np.asarray(ks.subsets.bernoulli(jax.random.key(3), 60, 10, 0.7)), axis=0)])
  picked, var = ks.suggest_subsets(kern, None, 6, candidates=pool)
  picked = np.asarray(picked)
  pool_rows = {r.tobytes() for r in pool.astype(bool)}
  assert all(r.tobytes() in pool_rows for r in picked)                            # only pool members
  assert not {r.tobytes() for r in picked} & {r.tobytes() for r in S.astype(bool)}  # never a fitted one
  fresh = np.array([r for r in np.unique(pool.astype(bool), axis=0) if r.tobytes() not in {x.tobytes() for x in S.astype(bool)}])
  assert float(np.asarray(var)[0]) == pytest.approx(float(np.asarray(kern.predict_variance(fresh)).max()))
  with pytest.raises(ValueError, match="^candidates"):
    ks.suggest_subsets(kern, None, 2, candidates=pool[:, :5])


def test_one_task_every_readout_works_or_refuses_in_one_line(rng):
  """K = 1: the only subsets are {} and {0}. Fitting both needs fixed hyper-parameters (CV cannot
  train on one subset); the readouts that exist for one task are exact."""
  S, F = np.array([[0], [1]], bool), np.array([[2.0, 1.0], [0.5, 1.5]])
  with pytest.raises(ValueError, match=r"^S: 2 distinct subsets \(after merging duplicates\); cross-validation needs at least 3"):
    ks.fit_kernel(S, F, cv=2)
  with pytest.raises(ValueError, match=r"^S: 2 distinct subsets \(after merging duplicates\); cross-validation needs at least 3"):
    ks.fit_linear(S, F, cv=2)
  with pytest.warns(UserWarning, match="^S: only 2 distinct subsets"):
    kern = ks.fit_kernel(S, F, gamma=1.0, ridge=1e-8)
  with pytest.warns(UserWarning, match="^S: only 2 distinct subsets"):
    lin = ks.fit_linear(S, F, ridge=0.0)
  for g in (kern, lin):
    np.testing.assert_allclose(np.asarray(ks.predicted_loo(g)), (F[0] - F[1])[None], atol=1e-6)   # g({}) - g({0})
    values, se = ks.shapley(g, None, jax.random.key(0), 8)
    np.testing.assert_allclose(np.asarray(values), (F[1] - F[0])[None], atol=1e-6)
    np.testing.assert_allclose(np.asarray(se), 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="^surrogate: pairwise interactions need at least 2 tasks; this one has K=1$"):
      ks.interactions(g)
  with pytest.raises(ValueError, match="^n: all 2 subsets of K=1 tasks are fitted already; none is left to suggest"):
    ks.suggest_subsets(kern, jax.random.key(0), 1)


def test_two_tasks_every_readout_is_exact_on_the_full_design():
  """K = 2: all 4 subsets fitted (cv=2 keeps 2 per training fold); with a tiny ridge the kernel
  surrogate reproduces the table, so the readouts equal their definitions on it."""
  S = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], bool)
  F = np.array([[3.0], [2.0], [1.5], [0.0]])       # interaction: 3 - 2 - 1.5 + 0 = -0.5
  assert ks.fit_kernel(S, F, cv=2).cv_scores.shape == (9, 9)
  assert ks.fit_linear(S, F, cv=2).cv_scores.shape == (9,)
  g = ks.fit_kernel(S, F, gamma=1.0, ridge=1e-9)
  np.testing.assert_allclose(np.asarray(g.predict(S)), F, atol=1e-6)
  np.testing.assert_allclose(np.asarray(ks.predicted_loo(g))[:, 0], [2.0 - 0.0, 1.5 - 0.0], atol=1e-6)
  inter = np.asarray(ks.interactions(g))[:, :, 0]
  np.testing.assert_allclose(inter, [[0.0, -0.5], [-0.5, 0.0]], atol=1e-6)
  values, _ = ks.shapley(g, None, jax.random.key(0), 64)
  # Exact Shapley of the 2-player game: each task's marginal averaged over the two orders.
  np.testing.assert_allclose(np.asarray(values)[:, 0], [0.5 * ((1.5 - 3) + (0 - 2)), 0.5 * ((2 - 3) + (0 - 1.5))],
                             atol=1e-6)
  with pytest.raises(ValueError, match="^n: all 4 subsets of K=2 tasks are fitted already"):
    ks.suggest_subsets(g, jax.random.key(0), 1)
  three = ks.fit_kernel(S[:3], F[:3], gamma=1.0, ridge=1e-3)
  picked, _ = ks.suggest_subsets(three, jax.random.key(0), 1)      # the one subset left: {0, 1}
  np.testing.assert_array_equal(np.asarray(picked), [[True, True]])
  with pytest.raises(ValueError, match="^n: only 1 of the 4 subsets of K=2 tasks are not fitted yet, fewer than n=2; "
                                       "ask for at most 1"):
    ks.suggest_subsets(three, jax.random.key(0), 2)


def test_suggest_subsets_says_which_limit_was_hit(rng):
  S = np.unique(np.asarray(ks.subsets.fixed_size(jax.random.key(0), 30, 10, 7)), axis=0)
  kern = ks.fit_kernel(S, S @ rng.normal(size=(10, 2)))
  # C(10, 7) = 120 subsets of the design's size exist; only a few draws were made.
  with pytest.raises(ValueError, match=r"^num_candidates: 5 draws gave \d new distinct subsets, fewer than n=20; raise "
                                       rf"num_candidates \({120 - len(S)} new subsets of size 7 exist\)$"):
    ks.suggest_subsets(kern, jax.random.key(1), 20, num_candidates=5)
  with pytest.raises(ValueError, match=rf"^n: only {120 - len(S)} of the 120 subsets of size 7 of K=10 tasks"):
    ks.suggest_subsets(kern, jax.random.key(1), 200)
  with pytest.raises(ValueError, match="^candidates: only 0 of the 3 given are distinct subsets not fitted yet"):
    ks.suggest_subsets(kern, None, 1, candidates=S[:3])
  with pytest.raises(ValueError, match="^candidates: indicator matrix must be binary"):
    ks.suggest_subsets(kern, None, 1, candidates=np.full((3, 10), np.nan))
  with pytest.raises(ValueError, match="^num_candidates: expected a positive integer"):
    ks.suggest_subsets(kern, jax.random.key(1), 1, num_candidates=0)


def test_readouts_refuse_a_surrogate_that_predicts_nan(rng):
  S = np.unique(rng.random((20, 4)) < 0.5, axis=0)
  g = ks.fit_kernel(S, rng.normal(size=(len(S), 2)), gamma=0.3, ridge=0.1)
  alpha = np.array(g.alpha)
  alpha[0, 1] = np.nan
  broken = g.replace(alpha=alpha)
  with pytest.raises(ValueError, match=r"^surrogate: 4 non-finite predicted leave-one-out values \(first nan at task 0\) "
                                       "in tasks 0, 1, 2, 3; targets 1$"):
    ks.predicted_loo(broken)
  with pytest.raises(ValueError, match="^surrogate: .* non-finite pairwise interactions"):
    ks.interactions(broken)
  with pytest.raises(ValueError, match="^surrogate: .* non-finite Shapley values"):
    ks.shapley(broken, None, jax.random.key(0), 8)
