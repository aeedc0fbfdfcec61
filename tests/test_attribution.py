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
  cand = np.unique(np.asarray(ks.subsets.fixed_size(jax.random.key(2), 500, 10, 7)), axis=0)
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
