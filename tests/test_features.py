import pathlib
import sys

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from ksurrogate import features

sys.path.insert(0, str(pathlib.Path(__file__).parent / "golden"))
import golden_models  # noqa: E402


@pytest.fixture(scope="module")
def mlp_data():
  r = np.random.default_rng(0)
  return golden_models.mlp, golden_models.mlp_params(0), r.normal(size=(10, 6)).astype(np.float32), r.integers(0, 3, 10)


def test_features_equal_projected_jacobian(mlp_data):
  f, p, X, y = mlp_data
  flat, unravel = ravel_pytree(p)
  key = jax.random.key(3)
  P = np.asarray(features.projection_matrix(key, flat.size, 64))
  J = np.stack([np.asarray(jax.jacrev(lambda q: f(unravel(q), x[None])[0])(flat)) for x in X])   # [N, C, D]
  got = features.featurize(f, p, X, y, key=key, dim=64, output="logits", batch_size=4)
  np.testing.assert_allclose(np.asarray(got.phi), J @ P, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got.offsets), np.asarray(f(p, X)), atol=1e-6)
  Jm = np.stack([np.asarray(jax.grad(lambda q: features.margin(f(unravel(q), x[None])[0], t))(flat)) for x, t in zip(X, y)])
  got_m = features.featurize(f, p, X, y, key=key, dim=64, output="margin")
  np.testing.assert_allclose(np.asarray(got_m.phi)[:, 0], Jm @ P, atol=1e-5)


def test_same_key_same_features_any_batch_size_and_path(mlp_data):
  f, p, X, y = mlp_data
  key = jax.random.key(7)
  a = features.featurize(f, p, X, y, key=key, dim=32, batch_size=3)
  b = features.featurize(f, p, X, y, key=key, dim=32, batch_size=10)
  c = features.featurize(f, p, X, y, key=key, dim=32, batch_size=4, chunk=100, materialize_bytes=0)   # streamed P
  d = features.featurize(f, p, X, y, key=key, dim=32, batch_size=4, chunk=100)                        # materialized P
  np.testing.assert_allclose(np.asarray(a.phi), np.asarray(b.phi), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(c.phi), np.asarray(d.phi), rtol=1e-5, atol=1e-5)  # float32 summation order
  e = features.featurize(f, p, X, y, key=jax.random.key(8), dim=32)
  assert np.abs(np.asarray(e.phi) - np.asarray(a.phi)).max() > 1e-3
  n = ravel_pytree(p)[0].size
  np.testing.assert_array_equal(np.asarray(features.projection_matrix(key, n, 32, chunk=100)),
                                np.asarray(features.projection_matrix(key, n, 32, chunk=100)))


@pytest.mark.parametrize("projection", ["gaussian", "rademacher"])
def test_projection_preserves_inner_products(projection):
  r = np.random.default_rng(0)
  G = r.normal(size=(20, 6000)).astype(np.float32) + 0.5 * r.normal(size=6000).astype(np.float32)   # correlated
  d = 2048
  P = np.asarray(features.projection_matrix(jax.random.key(0), 6000, d, projection, chunk=1000))
  exact, approx = G @ G.T, (G @ P) @ (G @ P).T
  norms = np.linalg.norm(G, axis=1)
  err = np.abs(approx - exact) / np.outer(norms, norms)
  assert err.max() < 5 * np.sqrt(2.0 / d), err.max()    # JL: std ~ sqrt((1 + cos^2) / d)
  assert np.abs(np.diag(approx) / norms ** 2 - 1).max() < 0.2


def test_memmap_path_streams_phi_to_disk(mlp_data, tmp_path):
  f, p, X, y = mlp_data
  key = jax.random.key(0)
  a = features.featurize(f, p, X, y, key=key, dim=16, memmap_path=str(tmp_path / "phi_stream.npy"))
  b = features.featurize(f, p, X, y, key=key, dim=16)
  assert isinstance(a.phi, np.memmap) and not isinstance(b.phi, np.memmap)
  np.testing.assert_array_equal(np.asarray(a.phi), np.asarray(b.phi))
  np.testing.assert_array_equal(a.offsets, b.offsets)


def test_bad_feature_arguments(mlp_data):
  f, p, X, y = mlp_data
  with pytest.raises(ValueError, match="^y:"):
    features.featurize(f, p, X, y[:-1], key=jax.random.key(0), dim=8)
  with pytest.raises(ValueError, match="^output"):
    features.featurize(f, p, X, y, key=jax.random.key(0), dim=8, output="probs")
  with pytest.raises(ValueError, match="^projection"):
    features.featurize(f, p, X, y, key=jax.random.key(0), dim=8, projection="sparse")
  with pytest.raises(ValueError, match="^dim"):
    features.featurize(f, p, X, y, key=jax.random.key(0), dim=8, projection="identity")
  with pytest.raises(ValueError, match="^apply_fn"):
    features.featurize(None, p, X, y, key=jax.random.key(0), dim=8, output="margin")
  with pytest.raises(ValueError, match="^output"):
    features.featurize(f, p, X, y, key=jax.random.key(0), dim=8, output="top2")   # 3 classes: at most top1


def test_custom_output_function_keeps_label_dtype_and_shape(mlp_data):
  # a regression-style output with float [N, 2] labels: featurize passes (x, y) through unchanged
  f, p, X, _ = mlp_data
  y = np.random.default_rng(1).normal(size=(len(X), 2)).astype(np.float32)

  def weighted(params, example):
    x, yi = example
    return f(params, x[None])[0, :2] * yi
  got = features.featurize(None, p, X, y, key=jax.random.key(0), dim=16, output=weighted)
  assert got.labels.dtype == np.float32 and got.labels.shape == (len(X), 2) and got.output == "weighted"
  np.testing.assert_allclose(got.offsets, np.asarray(f(p, X))[:, :2] * y, atol=1e-6)
  y_int = np.arange(len(X), dtype=np.int64) % 3
  assert features.featurize(f, p, X, y_int, key=jax.random.key(0), dim=8).labels.dtype == np.int64


def test_top_k_output_is_the_cross_entropy_and_sits_between_margin_and_logits():
  import optax
  from ksurrogate import estimation
  r = np.random.default_rng(2)
  W = r.normal(size=(4, 6)).astype(np.float32)
  apply_fn = lambda params, x: x @ params   # noqa: E731
  X, y = r.normal(size=(9, 4)).astype(np.float32), r.integers(0, 6, 9)
  ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(apply_fn(W, X), y))
  for k in (1, 2, 4):
    out = features.output_fn(apply_fn, f"top{k}")
    o = np.stack([np.asarray(out(W, (x, t))) for x, t in zip(X, y)])
    assert o.shape == (9, k + 1)
    np.testing.assert_allclose(estimation.COMPETITORS_CROSS_ENTROPY.values(o, y), ce, rtol=1e-5)
    # the first output is the strongest competitor at these parameters, relative to the label
    logits = apply_fn(W, X)
    strongest = np.where(np.arange(6) == y[:, None], -np.inf, logits).max(1)
    np.testing.assert_allclose(o[:, 0], strongest - logits[np.arange(9), y], rtol=1e-5)
  # linearized, top<k> keeps k competitors' logits exact: its Jacobian rows are logit differences
  J = jax.jacrev(lambda w: features.output_fn(apply_fn, "top4")(w, (X[0], y[0])))(W)
  assert np.all(np.isfinite(np.asarray(J)))
