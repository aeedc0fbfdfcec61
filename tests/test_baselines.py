import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from ksurrogate import baselines, features
from ksurrogate.training import cross_entropy


def logreg(params, X):
  return X @ params["w"] + params["b"]


def _setup():
  r = np.random.default_rng(0)
  X = r.normal(size=(30, 3)).astype(np.float32)
  y = r.integers(0, 3, 30)
  Xt, yt = r.normal(size=(5, 3)).astype(np.float32), r.integers(0, 3, 5)
  params = {"w": r.normal(0, 0.5, (3, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}
  return params, X, y, Xt, yt, np.arange(30) % 4


def test_influence_equals_exact_inverse_hessian_formula():
  params, X, y, Xt, yt, tasks = _setup()
  got = baselines.influence(logreg, params, X, y, tasks, Xt, yt, num_tasks=4, damping=0.1, cg_iters=200)
  flat, unravel = ravel_pytree(params)
  total = lambda f, X_, y_: jnp.sum(cross_entropy(logreg(unravel(f), X_), y_))  # noqa: E731
  H = np.asarray(jax.hessian(total)(flat, X, y)) + 0.1 * np.eye(flat.size)
  g_K = np.stack([np.asarray(jax.grad(total)(flat, X[tasks == k], y[tasks == k])) for k in range(4)])
  g_T = np.stack([np.asarray(jax.grad(total)(flat, Xt[i:i + 1], yt[i:i + 1])) for i in range(5)])
  expect = g_K @ np.linalg.solve(H, g_T.T)      # = -I_k, the predicted LOO
  np.testing.assert_allclose(got, expect, rtol=1e-3, atol=1e-5)


def test_tracin_is_lr_weighted_gradient_dot_products():
  params, X, y, Xt, yt, tasks = _setup()
  p2 = jax.tree.map(lambda a: a * 0.5, params)
  got = baselines.tracin(logreg, [params, p2], [0.1, 0.2], X, y, tasks, Xt, yt, num_tasks=4)
  expect = 0
  for p, lr in [(params, 0.1), (p2, 0.2)]:
    flat, unravel = ravel_pytree(p)
    total = lambda f, X_, y_: jnp.sum(cross_entropy(logreg(unravel(f), X_), y_))  # noqa: E731
    g_K = np.stack([np.asarray(jax.grad(total)(flat, X[tasks == k], y[tasks == k])) for k in range(4)])
    g_T = np.stack([np.asarray(jax.grad(total)(flat, Xt[i:i + 1], yt[i:i + 1])) for i in range(5)])
    expect = expect + lr * g_K @ g_T.T
  np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="^checkpoints"):
    baselines.tracin(logreg, [params], [0.1, 0.2], X, y, tasks, Xt, yt, num_tasks=4)


def test_trak_matches_closed_form_and_needs_margins():
  params, X, y, Xt, yt, tasks = _setup()
  key = jax.random.key(0)
  tr = features.featurize(logreg, params, X, y, key=key, dim=12, projection="identity")
  te = features.featurize(logreg, params, Xt, yt, key=key, dim=12, projection="identity")
  got = baselines.trak(tr, tasks, te, num_tasks=4, ridge=1e-2)
  Phi, Phit = tr.phi[:, 0], te.phi[:, 0]
  q = 1 / (1 + np.exp(tr.offsets[:, 0]))
  A = Phi.T @ Phi
  A = A + 1e-2 * np.trace(A) / 12 * np.eye(12)
  expect = np.stack([(Phi[tasks == k] * q[tasks == k, None]).sum(0) for k in range(4)]) @ np.linalg.solve(A, Phit.T)
  np.testing.assert_allclose(got, expect, rtol=1e-3, atol=1e-5)
  lg = features.featurize(logreg, params, X, y, key=key, dim=12, projection="identity", output="logits")
  with pytest.raises(ValueError, match="^train: trak needs margin"):
    baselines.trak(lg, tasks, te, num_tasks=4)
