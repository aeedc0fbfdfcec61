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
      ((S.astype(int) * 2, F), "^S: .*binary"),
      ((S, np.where(np.arange(F.size).reshape(F.shape) == 4, np.nan, F)), "^F: .*non-finite"),
      ((S, np.where(np.arange(F.size).reshape(F.shape) == 4, np.inf, F)), "^F: .*non-finite"),
      ((S[:3], F[:3]), "^S: .*fewer than cv"),
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
