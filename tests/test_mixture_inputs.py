"""Surrogates on real-valued inputs (task weights, mixture proportions) and their readouts; boolean
subsets keep the numbers they always had."""
import pathlib
import sys

import jax
import numpy as np
import pytest

import ksurrogate as ks
from ksurrogate import inputs

GOLDEN = pathlib.Path(__file__).parent / "golden"


def _mixtures(rng, m, K=5, T=2, alpha=0.6):
  """Rows on the simplex (3 decimals, like released mixtures) and outcomes that act through log(r):
  F_t = sum_k a_tk log(r_k + 1e-3) + a pair term + noise."""
  X = rng.dirichlet(np.full(K, alpha), m).round(3)
  X = X / X.sum(1, keepdims=True)
  a = rng.normal(size=(K, T))
  F = np.log(X + 1e-3) @ a + 0.5 * (np.log(X[:, 0] + 1e-3) * np.log(X[:, 1] + 1e-3))[:, None] / 10
  return X, F + 0.01 * rng.normal(size=F.shape)


@pytest.mark.parametrize("case", ["small", pytest.param("medium", marks=pytest.mark.slow)])
def test_boolean_inputs_keep_the_golden_numbers(case):
  """Every fit and readout on subsets equals what the library computed before it took real
  inputs (tests/golden/make_boolean_fits.py): to 1e-13 (the last bit depends on the thread count),
  posterior variances to 5e-9 absolute."""
  sys.path.insert(0, str(GOLDEN))
  import make_boolean_fits
  with pytest.warns(UserWarning, match="duplicate"):
    new = make_boolean_fits.values([case])
  with np.load(GOLDEN / "boolean_fits.npz") as old:
    assert {k for k in old.files if k.startswith(f"{case}/")} == set(new)
    for key, value in new.items():
      if key.endswith("variance"):
        # k(s, s) - k M k: a difference of terms of order the prior variance (1), so a change of
        # summation order moves it by ~1e-10 absolute, which is 4e-4 of a variance of 2e-6
        np.testing.assert_allclose(value, old[key], rtol=0, atol=5e-9, err_msg=key)
      else:   # the last bit moves with the BLAS / XLA thread count (one thread per pinned worker)
        np.testing.assert_allclose(value, old[key], rtol=1e-13, atol=0, err_msg=key)


def test_domains_are_read_from_the_values_and_bad_inputs_are_one_line(rng):
  X, _ = _mixtures(rng, 10)
  assert inputs.as_inputs(X)[1] == "simplex"
  assert inputs.as_inputs(2 * X)[1] == "weights"
  assert inputs.as_inputs(X > 0.3)[1] == "subsets"
  assert inputs.as_inputs(np.eye(5))[1] == "subsets" and inputs.as_inputs(np.eye(5), simplex=True)[1] == "simplex"
  cases = [
      (dict(S=np.where(np.eye(10, 5) > 0, -0.5, X)), "^S: weights must be non-negative, found -0.5 at row 0, column 0$"),
      (dict(S=np.where(np.eye(10, 5) > 0, np.nan, X)), r"^S: 5 non-finite values \(first nan at row 0\)"),
      (dict(S=np.where(np.eye(10, 5) > 0, np.inf, X)), "^S: 5 non-finite values"),
      (dict(S=0.5 * X, simplex=True), r"^S: row 0 sums to 0.5; simplex=True needs every row to sum to 1"),
      (dict(S=X[:, :, None]), "^S: expected a 2-d"),
      (dict(S=X, input_map="cube"), "^input_map: unknown map 'cube'"),
      (dict(S=X, input_map=[]), "^input_map: an empty sequence"),
  ]
  for fit in (ks.fit_kernel, ks.fit_linear):
    for kw, pattern in cases:
      kw = dict(kw)
      with pytest.raises(ValueError, match=pattern):
        fit(kw.pop("S"), rng.normal(size=(10, 2)), cv=2, **kw)
  with pytest.raises(ValueError, match="^input_map: log"):
    ks.InputMap("log", 0.0)
  g = ks.fit_kernel(X, rng.normal(size=(10, 2)), cv=2)
  with pytest.raises(ValueError, match="^S: row 0 sums to"):
    g.predict(0.5 * X)                     # a surrogate of mixtures predicts at mixtures only
  with pytest.raises(ValueError, match="^S: has 4 task columns but the surrogate was fitted on K=5"):
    g.predict(X[:, :4])


def test_the_input_map_is_chosen_by_cv_named_and_overridable(rng):
  X_all, F_all = _mixtures(rng, 320)
  X, F, held_X, held_F = X_all[:120], F_all[:120], X_all[120:], F_all[120:]
  g = ks.fit_kernel(X, F, cv=4)
  assert g.domain == "simplex" and len(g.input_maps) == 5
  assert np.asarray(g.cv_scores).shape == (5, 9, 9) and np.asarray(g.gamma_grid).shape == (5, 9)
  assert g.input_map.name == "log", g.input_map            # the outcomes act through log(r)
  best = np.nanmin(np.asarray(g.cv_scores).reshape(5, -1), axis=1)
  assert g.input_maps[int(np.argmin(best))] == g.input_map
  raw = ks.fit_kernel(X, F, cv=4, input_map="identity")
  assert raw.input_map == ks.InputMap() and raw.input_maps == () and np.asarray(raw.cv_scores).shape == (9, 9)
  fixed = ks.fit_kernel(X, F, cv=4, input_map=ks.InputMap("log", 1e-2))
  assert str(fixed.input_map) == "log(1 + r / 0.01)"
  logs = ks.fit_kernel(X, F, cv=4, input_map="log")
  assert [m.eps for m in logs.input_maps] == list(inputs.EPS_GRID)
  lin = ks.fit_linear(X, F, cv=4)
  assert lin.input_map.name == "log" and np.asarray(lin.cv_scores).shape == (5, 9)
  lds = {n: ks.metrics.lds(s.predict(held_X), held_F) for n, s in (("map", g), ("raw", raw))}
  assert lds["map"] > lds["raw"] + 0.02, lds


def test_the_map_is_part_of_the_prediction(rng):
  """predict and apply see phi(x): a kernel fitted on phi(X) by hand predicts the same."""
  X, F = _mixtures(rng, 40)
  m = ks.InputMap("log", 1e-3)
  g = ks.surrogates.solve_kernel(X, F, gamma=0.01, ridge=0.1, input_map=m)
  by_hand = ks.surrogates.solve_kernel(np.asarray(m(X)), F, gamma=0.01, ridge=0.1)
  np.testing.assert_allclose(np.asarray(g.predict(X[:7])), np.asarray(by_hand.predict(np.asarray(m(X[:7])))),
                             rtol=1e-12)
  np.testing.assert_allclose(np.asarray(g.apply(X[:7])), np.asarray(g.predict(X[:7])), rtol=1e-12)
  official = ks.inputs.mapped(ks.parity.official_krr, m)(X, F, ridge=1e-2)
  assert official.input_map == m and official.domain == "simplex"
  np.testing.assert_allclose(np.asarray(official.predict(X[:3])),
                             np.asarray(ks.parity.official_krr(np.asarray(m(X)), F, ridge=1e-2).predict(np.asarray(m(X[:3])))),
                             rtol=1e-12)
  lstsq = ks.parity.official_lstsq(X, F)
  assert lstsq.domain == "simplex" and np.asarray(lstsq.predict(X)).shape == F.shape
  with pytest.raises(ValueError, match="^input_map: mapped"):
    ks.inputs.mapped(ks.parity.official_krr, "log")


def test_removal_readouts_renormalize_on_the_simplex(rng):
  X, F = _mixtures(rng, 60)
  g = ks.fit_kernel(X, F, cv=3)
  K = X.shape[1]
  u = np.full(K, 1.0 / K)
  loo = np.asarray(ks.predicted_loo(g))
  drop = np.full((K, K), 1.0 / (K - 1)) * (1 - np.eye(K))           # the uniform mixture without k
  np.testing.assert_allclose(loo, np.asarray(g.predict(drop)) - np.asarray(g.predict(u[None])), rtol=1e-10)
  at = X[0]
  loo_at = np.asarray(ks.predicted_loo(g, at=at))
  np.testing.assert_allclose(loo_at[at == 0], 0.0, atol=1e-12)          # absent domains: nothing to remove
  inter = np.asarray(ks.interactions(g, at=u))
  j, k = 1, 3
  rest = np.where(np.isin(np.arange(K), [j, k]), 0.0, 1.0 / (K - 2))
  want = (g.predict(u[None]) - g.predict(drop[[j]]) - g.predict(drop[[k]]) + g.predict(rest[None]))[0]
  np.testing.assert_allclose(inter[j, k], np.asarray(want), rtol=1e-9)
  np.testing.assert_allclose(inter, np.swapaxes(inter, 0, 1), atol=1e-12)
  with pytest.raises(ValueError, match="^surrogate: Shapley values are a game on subsets; this surrogate was fitted on "
                                       "simplex inputs"):
    ks.shapley(g, None, jax.random.key(0))
  with pytest.raises(ValueError, match=r"^at: removing tasks \[0\] leaves no weight"):
    ks.predicted_loo(g, at=np.eye(K)[0])
  weights = ks.fit_linear(2 * X, F, cv=3, input_map="identity")     # task weights: removal sets 0, no renormalizing
  np.testing.assert_allclose(np.asarray(ks.predicted_loo(weights)), -np.asarray(weights.coef), atol=1e-12)


def test_gradient_and_hessian_match_finite_differences(rng):
  X, F = _mixtures(rng, 60)
  g = ks.fit_kernel(X, F, cv=3)
  K = X.shape[1]
  at = 0.7 * X[3] + 0.3 / K
  grad = np.asarray(ks.mixtures.gradient(g, at))
  h = 1e-6
  for k in range(K):
    d = np.full(K, -1.0 / K)
    d[k] += 1.0                                      # the tangent direction: to k from all evenly
    fd = (np.asarray(g.predict((at + h * d)[None])) - np.asarray(g.predict((at - h * d)[None])))[0] / (2 * h)
    np.testing.assert_allclose(grad[k], fd, rtol=1e-5, atol=1e-7)
  assert np.asarray(ks.mixtures.gradient(g, X[:4] * 0.9 + 0.02)).shape == (4, K, F.shape[1])
  H = np.asarray(ks.mixtures.hessian(g, at))
  np.testing.assert_allclose(H, np.swapaxes(H, 0, 1), rtol=1e-8, atol=1e-10)
  P = np.eye(K) - 1.0 / K
  fd_grad = lambda x: np.asarray(ks.mixtures.gradient(g, x))   # noqa: E731
  e = P[:, 0]
  np.testing.assert_allclose(H[:, 0], (fd_grad(at + 1e-5 * e) - fd_grad(at - 1e-5 * e)) / 2e-5, rtol=1e-4, atol=1e-6)
  lin = ks.fit_linear(2 * X, F, cv=3, input_map="identity")
  np.testing.assert_allclose(np.asarray(ks.mixtures.gradient(lin)), np.asarray(lin.coef), rtol=1e-12)
  with pytest.warns(UserWarning, match="duplicate"):
    sub = ks.fit_kernel(X > 0.2, F, cv=3)
  with pytest.raises(ValueError, match="^surrogate: the gradient is read on task weights or mixtures"):
    ks.mixtures.gradient(sub)


def test_pairwise_linear_model_reads_its_own_interactions(rng):
  S = np.unique(rng.random((200, 6)) < 0.5, axis=0)
  F = S @ rng.normal(size=(6, 2)) + 1.5 * (S[:, 1] & S[:, 4])[:, None]
  p = ks.fit_linear(S, F, pairwise=True, ridge=1e-9)
  assert isinstance(p, ks.PairwiseSurrogate) and p.coef.shape == (6 + 15, 2) and not p.squares
  inter = np.asarray(ks.interactions(p))
  np.testing.assert_allclose(inter[1, 4], [1.5, 1.5], atol=1e-6)      # exact on the full design
  np.testing.assert_allclose(np.delete(inter.reshape(36, 2), [1 * 6 + 4, 4 * 6 + 1], 0), 0.0, atol=1e-6)
  assert "interactions" in ks.families.readouts(p) and "interactions" not in ks.families.readouts(ks.fit_linear(S, F))
  X, G = _mixtures(rng, 80)
  q = ks.fit_linear(X, G, pairwise=True, cv=4)
  assert q.squares and q.coef.shape == (5 + 10 + 5, 2) and q.input_map in q.input_maps
  with pytest.raises(ValueError, match="^pairwise: expected True or False"):
    ks.fit_linear(X, G, pairwise="yes")


def test_suggest_from_a_pool_of_mixtures_reads_the_declared_readouts(rng):
  X, F = _mixtures(rng, 120)
  g = ks.fit_kernel(X[:40], F[:40], cv=4)
  rows, var, idx = ks.suggest_subsets(g, None, 6, candidates=X, return_index=True)
  np.testing.assert_array_equal(np.asarray(rows), X[idx])
  assert not set(idx.tolist()) & set(range(40))                       # never a fitted run
  assert np.all(np.diff(np.asarray(var)) <= 1e-12)                    # each pick knows the earlier ones
  assert float(np.asarray(var)[0]) == pytest.approx(float(np.asarray(g.predict_variance(X[40:])).max()))
  with pytest.raises(ValueError, match="^candidates: a surrogate fitted on simplex inputs draws no candidates"):
    ks.suggest_subsets(g, jax.random.key(0), 3)
  with pytest.raises(ValueError, match="^candidates: only 0 of the 40 given are distinct rows not fitted yet"):
    ks.suggest_subsets(g, None, 1, candidates=X[:40])
  with pytest.raises(ValueError, match="^surrogate: suggest_subsets needs a surrogate that declares the 'variance' "
                                       r"readout .*LinearSurrogate declares \('loo', 'shapley'\)$"):
    ks.suggest_subsets(ks.fit_linear(X, F, cv=3), None, 1, candidates=X)


def test_dirichlet_prior_recovers_its_concentrations():
  alpha = np.array([0.3, 1.0, 2.0, 0.5])
  draws = np.asarray(ks.mixtures.sample_dirichlet(jax.random.key(0), alpha, 20000))
  np.testing.assert_allclose(draws.sum(1), 1.0, atol=1e-9)
  np.testing.assert_allclose(ks.mixtures.dirichlet_prior(draws), alpha, rtol=0.1)
  with pytest.raises(ValueError, match="^mixtures: row 0 sums to"):
    ks.mixtures.dirichlet_prior(2 * draws[:5])


def test_select_finds_the_predicted_best_mixture(rng):
  """On outcomes with a known best mixture, both methods land near it; the gradient method ends
  no worse than where it starts (the RegMix average)."""
  K = 4
  best = np.array([0.5, 0.3, 0.15, 0.05])
  X = rng.dirichlet(np.ones(K), 150)
  F = np.c_[np.sum((X - best) ** 2, 1), np.sum((X - best[::-1]) ** 2, 1)]
  g = ks.fit_kernel(X, F, cv=4, input_map="identity")
  key = jax.random.key(0)
  regmix = ks.select_mixture(g, prior=X, key=key, objective=0, num_samples=20000, top_k=50)
  grad = ks.select_mixture(g, method="gradient", prior=X, key=key, objective=0, num_samples=20000, steps=200)
  for s in (regmix, grad):
    assert s.mixture.shape == (K,) and s.mixture.sum() == pytest.approx(1.0)
    assert s.variance is not None and s.variance >= 0
    assert np.abs(s.mixture - best).max() < 0.08, (s.method, s.mixture)
  assert grad.objective <= regmix.objective + 1e-9
  assert np.abs(grad.mixture - best).max() < 0.03, grad.mixture
  mean = ks.select_mixture(g, prior=X, key=key, num_samples=5000, top_k=10)
  assert mean.objective == pytest.approx(float(np.asarray(mean.predicted).mean()))
  with pytest.raises(ValueError, match="^surrogate: select picks a mixture; this surrogate was fitted on subsets"):
    with pytest.warns(UserWarning, match="duplicate"):
      ks.select_mixture(ks.fit_kernel(X > 0.25, F, cv=3), prior=X, key=key)
  with pytest.raises(ValueError, match="^objective: target 5 is outside"):
    ks.select_mixture(g, prior=X, key=key, objective=5, num_samples=100, top_k=10)
  with pytest.raises(ValueError, match="^method: unknown value 'adam'"):
    ks.select_mixture(g, method="adam", prior=X, key=key)
  with pytest.raises(ValueError, match="^prior: pass the observed mixtures"):
    ks.select_mixture(g, key=key)


def test_every_standard_family_fits_mixtures(rng):
  """The families every experiment compares take real inputs: fitted, predicted and read out."""
  X, F = _mixtures(rng, 60)
  for family in ks.families.standard(cv=3):
    g = family(X, F)
    assert g.domain == "simplex", family.name
    assert np.all(np.isfinite(np.asarray(g.predict(X[:5])))), family.name
    assert np.asarray(ks.predicted_loo(g)).shape == (5, 2), family.name
