import numpy as np
import pytest
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import LinearRegression, Ridge

import ksurrogate as ks
from ksurrogate import surrogates


@pytest.mark.parametrize("kernel,sk_kernel,params", [
    ("rbf", "rbf", dict(gamma=0.07)),
    ("polynomial", "poly", dict(gamma=0.2, degree=3, coef0=1.0)),
    ("linear", "linear", dict()),
])
@pytest.mark.parametrize("center", [False, True])
def test_krr_equals_sklearn(rng, kernel, sk_kernel, params, center):
  S = np.unique(rng.random((80, 10)) < 0.5, axis=0)
  F = S @ rng.normal(size=(10, 3)) + rng.normal(size=(len(S), 3))
  T = np.unique(rng.random((30, 10)) < 0.5, axis=0)
  ours = ks.fit_kernel(S, F, kernel=kernel, ridge=0.3, center=center, **params)
  offset = F.mean(0) if center else 0.0
  ref = KernelRidge(alpha=0.3, kernel=sk_kernel, **params).fit(S.astype(float), F - offset)
  np.testing.assert_allclose(np.asarray(ours.predict(T)), ref.predict(T.astype(float)) + offset, rtol=1e-8, atol=1e-8)


def _brute_force_cv(S, F, gamma, ridge, cv, seed, center=True):
  """Explicit refits on each fold: the definition the block identity must reproduce."""
  idx, valid, _ = surrogates.cv_folds(len(S), cv, seed)
  resid = np.zeros_like(F)
  for f in range(cv):
    test = np.asarray(idx[f])[np.asarray(valid[f])]
    train = np.setdiff1d(np.arange(len(S)), test)
    mu = F[train].mean(0) if center else 0.0
    m = KernelRidge(alpha=ridge, kernel="rbf", gamma=gamma).fit(S[train].astype(float), F[train] - mu)
    resid[test] = F[test] - mu - m.predict(S[test].astype(float))
  return np.mean((resid ** 2).sum(0) / (len(S) * F.var(0)))


def test_kernel_cv_block_identity_equals_explicit_refits(rng):
  S = np.unique(rng.random((47, 9)) < 0.5, axis=0)   # odd size: unequal folds exercise the padding
  F = S @ rng.normal(size=(9, 2)) + 0.3 * rng.normal(size=(len(S), 2))
  gammas, ridges = np.array([0.05, 0.3]), np.array([1e-3, 0.1, 2.0])
  s = ks.fit_kernel(S, F, gamma_grid=gammas / ks.kernels.default_gamma("rbf", S), ridge_grid=ridges, cv=5, seed=3)
  for i, g in enumerate(np.asarray(s.gamma_grid)):
    for j, lam in enumerate(ridges):
      np.testing.assert_allclose(float(s.cv_scores[i, j]), _brute_force_cv(S, F, g, lam, 5, 3), rtol=1e-7)


def test_nystrom_with_all_points_equals_exact(rng):
  S = np.unique(rng.random((70, 8)) < 0.5, axis=0)
  F = S @ rng.normal(size=(8, 2)) + 0.3 * rng.normal(size=(len(S), 2))
  exact = ks.fit_kernel(S, F, gamma=0.2, ridge=0.05)
  nys = ks.fit_kernel(S, F, gamma=0.2, ridge=0.05, num_inducing=len(S))
  np.testing.assert_allclose(np.asarray(nys.predict(S)), np.asarray(exact.predict(S)), atol=1e-6)
  np.testing.assert_allclose(np.asarray(nys.predict_variance(S[:5])), np.asarray(exact.predict_variance(S[:5])), atol=1e-6)


def test_nystrom_cv_selects_on_the_grid(rng):
  S = np.unique(rng.random((300, 12)) < 0.5, axis=0)
  F = S @ rng.normal(size=(12, 2)) + 0.2 * rng.normal(size=(len(S), 2))
  s = ks.fit_kernel(S, F, num_inducing=100)
  assert s.basis.shape[0] == 100
  assert s.cv_scores.shape == (9, 9)
  assert float(s.ridge) in set(np.asarray(s.ridge_grid).tolist())


def test_posterior_variance_matches_gp_formula(rng):
  S = np.unique(rng.random((40, 7)) < 0.5, axis=0)
  F = rng.normal(size=(len(S), 1))
  s = ks.fit_kernel(S, F, gamma=0.3, ridge=0.2)
  T = (rng.random((6, 7)) < 0.5).astype(float)
  k = lambda A, B: np.exp(-0.3 * ((A[:, None] - B[None]) ** 2).sum(-1))  # noqa: E731
  X = S.astype(float)
  expect = 1.0 - np.einsum("ij,ji->i", k(T, X), np.linalg.solve(k(X, X) + 0.2 * np.eye(len(X)), k(X, T)))
  np.testing.assert_allclose(np.asarray(s.predict_variance(T)), expect, atol=1e-10)
  assert np.all(np.asarray(s.predict_variance(S)) < 0.2 + 1e-12)  # fitted points: below the noise level


def test_linear_equals_sklearn(rng):
  S = np.unique(rng.random((50, 8)) < 0.5, axis=0)
  F = S @ rng.normal(size=(8, 2)) + 0.1 * rng.normal(size=(len(S), 2))
  s = ks.fit_linear(S, F, ridge=0.0)
  ref = LinearRegression().fit(S.astype(float), F)
  np.testing.assert_allclose(np.asarray(s.coef), ref.coef_.T, atol=1e-8)
  np.testing.assert_allclose(np.asarray(s.intercept), ref.intercept_, atol=1e-8)
  s2 = ks.fit_linear(S, F, ridge=2.0)
  ref2 = Ridge(alpha=2.0).fit(S.astype(float), F)
  np.testing.assert_allclose(np.asarray(s2.predict(S)), ref2.predict(S.astype(float)), atol=1e-8)


def test_linear_cv_equals_explicit_refits(rng):
  S = np.unique(rng.random((43, 6)) < 0.5, axis=0)
  F = S @ rng.normal(size=(6, 2)) + 0.3 * rng.normal(size=(len(S), 2))
  grid = np.array([1e-3, 1.0, 10.0])
  s = ks.fit_linear(S, F, ridge_grid=grid, cv=4, seed=1)
  idx, valid, _ = surrogates.cv_folds(len(S), 4, 1)
  for j, lam in enumerate(grid):
    resid = np.zeros_like(F)
    for f in range(4):
      test = np.asarray(idx[f])[np.asarray(valid[f])]
      train = np.setdiff1d(np.arange(len(S)), test)
      resid[test] = F[test] - Ridge(alpha=lam).fit(S[train].astype(float), F[train]).predict(S[test].astype(float))
    np.testing.assert_allclose(float(s.cv_scores[j]), np.mean((resid ** 2).sum(0) / (len(S) * F.var(0))), rtol=1e-7)


def test_lds_cv_metric_is_out_of_fold_spearman(rng):
  S = np.unique(rng.random((60, 8)) < 0.5, axis=0)
  F = S @ rng.normal(size=(8, 2)) + 0.3 * rng.normal(size=(len(S), 2))
  s = ks.fit_kernel(S, F, cv_metric="lds")
  scores = np.asarray(s.cv_scores)
  assert np.all(scores >= -1) and np.all(scores <= 1)
  i, j = np.unravel_index(np.argmin(scores), scores.shape)
  # The score is minus the Spearman of out-of-fold predictions, recomputed here by explicit refits.
  from scipy import stats
  idx, valid, _ = surrogates.cv_folds(len(S), 5, 0)
  oof = np.zeros_like(F)
  g, lam = float(s.gamma_grid[i]), float(s.ridge_grid[j])
  for f in range(5):
    test = np.asarray(idx[f])[np.asarray(valid[f])]
    train = np.setdiff1d(np.arange(len(S)), test)
    mu = F[train].mean(0)
    oof[test] = mu + KernelRidge(alpha=lam, kernel="rbf", gamma=g).fit(S[train].astype(float), F[train] - mu).predict(S[test].astype(float))
  expect = -np.mean([stats.spearmanr(oof[:, t], F[:, t]).statistic for t in range(2)])
  assert scores[i, j] == pytest.approx(expect, abs=1e-9)
  assert float(s.gamma) == pytest.approx(float(s.gamma_grid[i])) and float(s.ridge) == pytest.approx(float(s.ridge_grid[j]))


def test_surrogates_are_pytrees(rng):
  import jax
  S, F = rng.random((30, 5)) < 0.5, rng.normal(size=(30, 2))
  S = np.unique(S, axis=0); F = F[:len(S)]
  s = ks.fit_kernel(S, F, gamma=0.1, ridge=0.1)
  leaves = jax.tree.leaves(s)
  assert any(getattr(x, "shape", None) == s.alpha.shape for x in leaves)
  doubled = jax.tree.map(lambda x: x, s)
  np.testing.assert_allclose(np.asarray(doubled.predict(S)), np.asarray(s.predict(S)))


def test_solver_is_chosen_by_memory_and_visible(rng):
  S = np.unique(rng.random((300, 12)) < 0.5, axis=0)
  F = S @ rng.normal(size=(12, 2)) + 0.2 * rng.normal(size=(len(S), 2))
  m = len(S)
  exact = ks.fit_kernel(S, F, gamma=0.1, ridge=0.1)            # default "auto": tiny, so exact
  assert exact.solver == "exact" and exact.num_inducing is None and exact.basis.shape[0] == m
  assert "solver=exact" in repr(exact)
  # A budget just below the exact program's estimate switches to Nystrom on min(1000, m) subsets.
  budget = surrogates.exact_krr_bytes(m, 2) - 1
  auto = ks.fit_kernel(S, F, gamma=0.1, ridge=0.1, memory_budget=budget)
  assert auto.solver == "nystrom" and auto.num_inducing == min(surrogates.AUTO_INDUCING, m)
  assert "solver=nystrom, num_inducing=" in repr(auto)
  # All m subsets as inducing points: the same fit as exact KRR.
  np.testing.assert_allclose(np.asarray(auto.predict(S)), np.asarray(exact.predict(S)), atol=1e-6)
  forced = ks.fit_kernel(S, F, gamma=0.1, ridge=0.1, num_inducing=50)
  assert forced.solver == "nystrom" and forced.num_inducing == 50 and forced.basis.shape[0] == 50
  with pytest.raises(ValueError, match=r"^num_inducing: None forces exact KRR, which needs about .* GiB for \d+ subsets "
                                       r"and 2 targets, over memory_budget="):
    ks.fit_kernel(S, F, num_inducing=None, memory_budget=budget)
  with pytest.raises(ValueError, match="^num_inducing: Nystrom KRR with 50 inducing subsets needs about"):
    ks.fit_kernel(S, F, num_inducing=50, memory_budget=1000)


def test_memory_model_is_the_documented_formula():
  assert surrogates.exact_krr_bytes(3000, 500) == 8 * (surrogates.EXACT_M2_DOUBLES * 3000 ** 2 + 4 * 3000 * 500)
  assert surrogates.nystrom_bytes(20000, 1000, 4, cv=5) == 8 * (3 * 20000 * 1000 + 2.5 * 5 * 1000 ** 2 + 4 * 20000 * 4)
  # The default budget keeps exact KRR where the experiments asked for it (up to 3000 subsets,
  # 500 targets) and sends 20,000 subsets (7 GB before the switch existed) to Nystrom.
  assert surrogates.exact_krr_bytes(3000, 500) <= surrogates.MEMORY_BUDGET < surrogates.exact_krr_bytes(20000, 1)
  assert surrogates.nystrom_bytes(20000, surrogates.AUTO_INDUCING, 500) <= surrogates.MEMORY_BUDGET


def test_two_distinct_subsets_refused_under_cv_and_warned_without(rng):
  S = np.array([[1, 0, 1], [0, 1, 1]], bool)
  F = np.array([[1.0], [2.0]])
  for fit in (ks.fit_kernel, ks.fit_linear):
    with pytest.raises(ValueError, match=r"^S: 2 distinct subsets \(after merging duplicates\); cross-validation "
                                         "needs at least 3"):
      fit(S, F, cv=2)
  with pytest.warns(UserWarning, match="^S: only 2 distinct subsets"):
    g = ks.fit_kernel(S, F, gamma=0.5, ridge=1e-6)
  np.testing.assert_allclose(np.asarray(g.predict(S)), F, atol=1e-5)   # it interpolates the two
  with pytest.warns(UserWarning, match="^S: only 2 distinct subsets"):
    ks.fit_linear(S, F, ridge=0.0)
  # Three subsets under cv=3 keep 2 per training fold: CV runs.
  S3, F3 = np.r_[S, [[1, 1, 0]]], np.array([[1.0], [2.0], [4.0]])
  assert ks.fit_kernel(S3, F3, cv=3).cv_scores.shape == (9, 9)
  with pytest.raises(ValueError, match="^S: 3 distinct subsets leave 1 per training fold with cv=2"):
    ks.fit_kernel(S3, F3, cv=2)


def test_every_grid_point_failing_is_one_line(rng):
  S = np.unique(rng.random((40, 6)) < 0.5, axis=0)
  F = rng.normal(size=(len(S), 1))
  # A degree-400 polynomial kernel overflows float64 at every grid point.
  with pytest.raises(ValueError, match=r"^gamma_grid: every \(gamma, ridge\) pair of the grid failed numerically"):
    ks.fit_kernel(S, F, kernel="polynomial", degree=400, gamma_grid=[1e3, 1e4])
  # Without CV the same kernel used to fit finite weights and predict NaN.
  with pytest.raises(ValueError, match="^gamma: the polynomial kernel overflows float64 on the fitted subsets at gamma=1000"):
    ks.fit_kernel(S, F, kernel="polynomial", degree=400, gamma=1e3, ridge=1.0)


def test_auto_inducing_shrinks_to_the_budget_and_refuses_below_100():
  m, T = 100_000, 1
  budget = surrogates.MEMORY_BUDGET
  r = surrogates._largest_inducing(m, T, 5, budget)
  assert 100 <= r < 1000
  assert surrogates.nystrom_bytes(m, r, T) <= budget < surrogates.nystrom_bytes(m, r + 1, T)
  assert surrogates._choose_solver("auto", budget, m, T, 5) == ("nystrom", r)
  with pytest.raises(ValueError, match="^memory_budget: 0.00 GiB leaves room for 0 inducing subsets"):
    surrogates._choose_solver("auto", 1e6, m, T, 5)
