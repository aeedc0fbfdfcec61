"""Every bad input gets one clear ValueError whose message starts with the argument's name."""
import jax
import numpy as np
import pytest

import ksurrogate as ks


@pytest.fixture
def good(rng):
  S = np.unique(rng.random((30, 6)) < 0.5, axis=0)
  return S, rng.normal(size=(len(S), 3))


@pytest.mark.parametrize("fit", [ks.fit_kernel, ks.fit_linear])
def test_fit_rejects_bad_inputs(fit, good):
  S, F = good
  cases = [
      ((S[:-1], F), "^F: .*rows must match"),
      ((S.astype(int) - 1, F), "^S: weights must be non-negative"),
      ((S, np.where(np.arange(F.size).reshape(F.shape) == 4, np.nan, F)),
       r"^F: 1 non-finite values \(first nan at subset 1\) in subsets 1; targets 1$"),
      ((S, np.where(np.arange(F.size).reshape(F.shape) == 4, np.inf, F)), "^F: 1 non-finite values .*subsets 1;"),
      ((S[:4], F[:4]), r"^cv: 5 folds exceed the 4 distinct subsets \(after merging duplicates\); use cv <= 4"),
      # too few (or identical / no) subsets: the advice is to sample more, never an invalid cv
      ((S[:3], F[:3]), r"^cv: 5 folds exceed the 3 distinct subsets \(after merging duplicates\); use cv <= 3"),
      ((S[:2], F[:2]), r"^S: 2 distinct subsets \(after merging duplicates\); cross-validation needs at least 3"),
      ((np.repeat(S[:1], 6, 0), F[:6]), r"^S: 1 distinct subsets"),
      ((S[:0], F[:0]), r"^S: 0 distinct subsets"),
      ((S, np.c_[F, np.ones(len(F))]), "^F: target 3 has zero variance"),
      ((S[0], F), "^S: expected a 2-d"),
  ]
  for args, pattern in cases:
    with pytest.raises(ValueError, match=pattern):
      fit(*args)


def test_duplicates_warn_and_dedupe(good):
  S, F = good
  with pytest.warns(UserWarning, match="duplicate"):
    s = ks.fit_kernel(np.r_[S, S[:2]], np.r_[F, F[:2]])
  assert s.basis.shape[0] == len(S)


def test_unknown_kernel_and_options(good):
  S, F = good
  with pytest.raises(ValueError, match="^kernel: unknown"):
    ks.fit_kernel(S, F, kernel="laplace")
  with pytest.raises(ValueError, match="^cv_metric"):
    ks.fit_kernel(S, F, cv_metric="r2")
  with pytest.raises(ValueError, match="^num_inducing"):
    ks.fit_kernel(S, F, num_inducing=10_000)
  with pytest.raises(ValueError, match="^ridge"):
    ks.fit_kernel(S, F, ridge=-1.0)


@pytest.mark.parametrize("kw,pattern", [
    (dict(cv=0), "^cv: expected an integer number of folds >= 2, got 0$"),
    (dict(cv=1), "^cv: expected an integer"),
    (dict(cv=-3), "^cv: expected an integer"),
    (dict(cv=2.5), "^cv: expected an integer"),
    (dict(cv=None), "^cv: expected an integer"),
    (dict(cv=100), "^cv: 100 folds exceed the 2[0-9] distinct subsets"),
    (dict(ridge=float("nan")), "^ridge: must be finite and positive, got nan$"),
    (dict(ridge=float("inf")), "^ridge: must be finite and positive"),
    (dict(ridge=0.0), "^ridge: must be finite and positive"),
    (dict(gamma=float("nan")), "^gamma: must be finite and positive"),
    (dict(gamma=-1.0), "^gamma: must be finite and positive"),
    (dict(ridge_grid=[1.0, 0.0]), "^ridge_grid: entry 1 is 0.0; every entry must be finite and positive$"),
    (dict(ridge_grid=[1.0, float("nan")]), "^ridge_grid: entry 1 is nan"),
    (dict(ridge_grid=[]), "^ridge_grid: expected a non-empty"),
    (dict(gamma_grid=[1.0, float("inf")]), "^gamma_grid: entry 1 is inf"),
    (dict(gamma_grid=[1.0, -2.0]), "^gamma_grid: entry 1 is -2.0"),
    (dict(num_inducing="many"), "^num_inducing: expected 'auto', None or a positive integer"),
    (dict(num_inducing=0), "^num_inducing: expected a positive integer"),
    (dict(memory_budget=float("nan")), "^memory_budget: must be finite and positive"),
    (dict(memory_budget=-1), "^memory_budget: must be finite and positive"),
    (dict(kernel="polynomial", degree=0), "^degree: expected a positive integer"),
])
def test_fit_kernel_settings_one_line(good, kw, pattern):
  S, F = good
  with pytest.raises(ValueError, match=pattern):
    ks.fit_kernel(S, F, **kw)


@pytest.mark.parametrize("kw,pattern", [
    (dict(cv=0), "^cv: expected an integer"),
    (dict(ridge=float("nan")), "^ridge: must be finite and non-negative, got nan$"),
    (dict(ridge=float("inf")), "^ridge: must be finite and non-negative"),
    (dict(ridge=-1.0), "^ridge: must be finite and non-negative"),
    (dict(ridge_grid=[1.0, -1.0]), "^ridge_grid: entry 1 is -1.0; every entry must be finite and non-negative$"),
    (dict(ridge_grid=[1.0, float("nan")]), "^ridge_grid: entry 1 is nan"),
])
def test_fit_linear_settings_one_line(good, kw, pattern):
  S, F = good
  with pytest.raises(ValueError, match=pattern):
    ks.fit_linear(S, F, **kw)


def test_linear_ridge_zero_is_least_squares_and_single_grid_entry_skips_cv(good):
  S, F = good
  a = ks.fit_linear(S, F, ridge=0.0)
  b = ks.fit_linear(S, F, ridge_grid=[0.0])
  np.testing.assert_allclose(np.asarray(a.coef), np.asarray(b.coef))
  assert b.cv_scores is None


def test_parity_recipes_refuse_non_finite(good):
  S, F = good
  F_bad = F.copy()
  F_bad[[2, 5], 0] = np.nan
  with pytest.raises(ValueError, match=r"^F: 2 non-finite values \(first nan at subset 2\) in subsets 2, 5; targets 0$"):
    ks.parity.official_krr(S, F_bad, ridge=0.1)
  with pytest.raises(ValueError, match="^F: 2 non-finite"):
    ks.parity.official_lstsq(S, F_bad)
  with pytest.raises(ValueError, match="^ridge: must be finite"):
    ks.parity.official_krr(S, F, ridge=float("nan"))


def test_k_mismatch_on_predict_and_readouts(good):
  S, F = good
  s = ks.fit_kernel(S, F)
  with pytest.raises(ValueError, match="^S: has 5 task columns"):
    s.predict(S[:, :5])
  with pytest.raises(ValueError, match="^num_tasks"):
    ks.predicted_loo(s, 7)
  with pytest.raises(ValueError, match="^S: has 7 task columns"):
    ks.fit_linear(S, F).predict(np.zeros((2, 7)))


def test_sampler_arguments():
  with pytest.raises(ValueError, match="^size"):
    ks.subsets.fixed_size(jax.random.key(0), 3, 5, 6)
  with pytest.raises(ValueError, match="^p:"):
    ks.subsets.bernoulli(jax.random.key(0), 3, 5, 1.5)
  with pytest.raises(ValueError, match="^ids: row 1"):
    ks.subsets.from_ids([[0, 1], [2, 9]], 5)
  with pytest.raises(ValueError, match="^num_subsets"):
    ks.subsets.bernoulli(jax.random.key(0), 0, 5)
