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
  # For a model linear in its parameters the Gauss-Newton matrix IS the Hessian.
  flat, unravel = ravel_pytree(params)
  total = lambda f, X_, y_: jnp.sum(cross_entropy(logreg(unravel(f), X_), y_))  # noqa: E731
  H = np.asarray(jax.hessian(total)(flat, X, y))
  lam = 0.1 * np.trace(H) / flat.size
  for curvature in ("gauss_newton", "hessian"):
    got = baselines.influence(logreg, params, X, y, tasks, Xt, yt, num_tasks=4, damping=0.1, curvature=curvature,
                              num_probes=4096)
    g_K = np.stack([np.asarray(jax.grad(total)(flat, X[tasks == k], y[tasks == k])) for k in range(4)])
    g_T = np.stack([np.asarray(jax.grad(total)(flat, Xt[i:i + 1], yt[i:i + 1])) for i in range(5)])
    expect = g_K @ np.linalg.solve(H + lam * np.eye(flat.size), g_T.T)      # = -I_k, the predicted LOO
    np.testing.assert_allclose(got, expect, rtol=2e-2, atol=1e-4)   # Hutchinson's lambda is an estimate


def mlp(params, X):
  return jnp.tanh(X @ params["w1"]) @ params["w2"]


def test_gauss_newton_influence_matches_the_dense_solve_on_a_non_convex_model():
  r = np.random.default_rng(3)
  X = r.normal(size=(60, 3)).astype(np.float32)
  y = r.integers(0, 3, 60)
  Xt, yt, tasks = X[:6], y[:6], np.arange(60) % 5
  params = {"w1": r.normal(0, 1.5, (3, 16)).astype(np.float32), "w2": r.normal(0, 1.5, (16, 3)).astype(np.float32)}
  flat, unravel = ravel_pytree(params)
  total = lambda f, X_, y_: jnp.sum(cross_entropy(mlp(unravel(f), X_), y_))  # noqa: E731
  assert np.linalg.eigvalsh(np.asarray(jax.hessian(total)(flat, X, y))).min() < -1e-2   # really non-convex
  J = np.asarray(jax.jacrev(lambda f: mlp(unravel(f), X))(flat))                        # [N, C, D]
  p = np.asarray(jax.nn.softmax(mlp(params, X)))
  lam_out = np.stack([np.diag(q) - np.outer(q, q) for q in p])                          # CE Hessian in logits
  G = np.einsum("ncd,nce,nef->df", J, lam_out, J)
  lam = 0.1 * np.trace(G) / flat.size
  got = baselines.influence(mlp, params, X, y, tasks, Xt, yt, num_tasks=5, num_probes=4096, cg_iters=500)
  g_K = np.stack([np.asarray(jax.grad(total)(flat, X[tasks == k], y[tasks == k])) for k in range(5)])
  g_T = np.stack([np.asarray(jax.grad(total)(flat, Xt[i:i + 1], yt[i:i + 1])) for i in range(6)])
  expect = g_K @ np.linalg.solve(G + lam * np.eye(flat.size), g_T.T)
  np.testing.assert_allclose(got, expect, rtol=3e-2, atol=3e-3 * np.abs(expect).max())


def _cg(A, b, x, iters):
  """Plain conjugate gradient in float64 from x, the textbook recurrence jax.scipy's cg follows."""
  r = b - A @ x
  p = r.copy()
  for _ in range(iters):
    a = r @ r / (p @ A @ p)
    x, r_new = x + a * p, r - a * (A @ p)
    p, r = r_new + (r_new @ r_new) / (r @ r) * p, r_new
  return x


def test_influence_raises_damping_until_every_solve_converges():
  params, X, y, Xt, yt, tasks = _setup()
  X = X * np.array([4.0, 1.0, 1.0], np.float32)       # spread the curvature's eigenvalues
  scores, info = baselines.influence(logreg, params, X, y, tasks, Xt, yt, num_tasks=4, damping=0.01, cg_iters=4,
                                     cg_tol=1e-3, return_info=True)
  # Replay the same solves densely in float64: 4 CG iterations from the previous damping's answer.
  flat, unravel = ravel_pytree(params)
  total = lambda f, X_, y_: jnp.sum(cross_entropy(logreg(unravel(f), X_), y_))  # noqa: E731
  G = np.asarray(jax.hessian(total)(flat, X, y), np.float64)
  g_K = np.stack([np.asarray(jax.grad(total)(flat, X[tasks == k], y[tasks == k]), np.float64) for k in range(4)])
  mean_eig = info["lambda"] / info["damping"]          # Hutchinson's estimate, as used
  x, worst = np.zeros_like(g_K), []
  for d in (0.01, 0.1, 1.0, 10.0):
    A = G + d * mean_eig * np.eye(len(G))
    x = np.stack([_cg(A, g, x0, 4) for g, x0 in zip(g_K, x)])
    worst.append(max(np.linalg.norm(g - A @ xk) / np.linalg.norm(g) for g, xk in zip(g_K, x)))
  assert min(worst[:3]) > 2e-3 and worst[3] < 1e-4    # the first three dampings cannot converge in 4 iterations
  assert info["damping_requested"] == 0.01 and info["damping_raises"] == 3 and info["damping"] == pytest.approx(10.0)
  assert info["max_relative_residual"] <= 1e-3 and info["cg_iters"] == 4
  g_T = np.stack([np.asarray(jax.grad(total)(flat, Xt[i:i + 1], yt[i:i + 1])) for i in range(5)])
  expect = g_K @ np.linalg.solve(G + info["lambda"] * np.eye(len(G)), g_T.T)
  np.testing.assert_allclose(scores, expect, rtol=1e-3, atol=1e-5 * np.abs(expect).max())
  # Converged at the first damping: nothing raised, and the plain call still returns the scores alone.
  plain = baselines.influence(logreg, params, X, y, tasks, Xt, yt, num_tasks=4, damping=10.0, cg_iters=4, cg_tol=1e-3)
  _, info10 = baselines.influence(logreg, params, X, y, tasks, Xt, yt, num_tasks=4, damping=10.0, cg_iters=4,
                                  cg_tol=1e-3, return_info=True)
  assert info10["damping_raises"] == 0 and info10["damping"] == 10.0
  np.testing.assert_allclose(plain, expect, rtol=1e-3, atol=1e-5 * np.abs(expect).max())
  with pytest.raises(ValueError, match=r"^damping: conjugate gradient did not converge for \d of 4 tasks even at "
                                       r"damping 1 \(2 tenfold raises from 0.01"):
    baselines.influence(logreg, params, X, y, tasks, Xt, yt, num_tasks=4, damping=0.01, cg_iters=4, cg_tol=1e-3,
                        max_damping_raises=2)


def test_influence_bad_settings_one_line():
  params, X, y, Xt, yt, tasks = _setup()
  run = lambda **kw: baselines.influence(logreg, params, X, y, tasks, Xt, yt, num_tasks=4, **kw)  # noqa: E731
  for kw, pattern in [(dict(damping=float("nan")), "^damping: must be finite"), (dict(damping=-1.0), "^damping"),
                      (dict(cg_iters=0), "^cg_iters"), (dict(cg_tol=0.0), "^cg_tol"),
                      (dict(max_damping_raises=-1), "^max_damping_raises"), (dict(curvature="fisher"), "^curvature")]:
    with pytest.raises(ValueError, match=pattern):
      run(**kw)
  nan_params = {"w": params["w"] * np.nan, "b": params["b"]}
  with pytest.raises(ValueError, match="^params: "):
    baselines.influence(logreg, nan_params, X, y, tasks, Xt, yt, num_tasks=4)


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
