"""Nystrom kernel ridge regression, and the memory model that chooses it over exact KRR.

Nystrom KRR: features phi(s) = k(s, Z) P with P = K_ZZ^{-1/2} on r inducing rows Z, then ridge
regression on phi; the same CV criteria as exact KRR (`ksurrogate.surrogates.fit_kernel`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ksurrogate import _checks
from ksurrogate import _cv
from ksurrogate import kernels

_STATIC = ("kind", "degree", "coef0", "center", "cv_metric")

# Memory model of the fit, in bytes (float64). Measured on CPU, jax 0.10.2, K = 25, cv = 5:
# XLA's own buffer plan for the exact CV program (`memory_analysis()` of the compiled program) is
# 4.07 m^2 doubles of temporaries at m = 1000 / 2000 and 5.07 at m = 3000 / 4000 (the Gram matrix,
# its eigenvectors, the per-fold blocks V[idx] [cv, m/cv, m] and their scaled copy); the final
# solve plans 2 m^2 more and returns the m x m posterior matrix. The process's peak resident memory
# above its resting level over a whole fit was 6.33 / 6.09 / 8.52 / 7.22 m^2 doubles at m = 1000 /
# 2000 / 3000 / 4000 (LAPACK's eigh workspace, 2 m^2, and allocator slack on top of the plan), so
# the model takes the largest, 8.5. Targets add about 4 m T doubles (Y, V^T Y, held-out
# residuals). Nystrom CV with r inducing subsets was planned at 3.0 m r + 2.4 cv r^2 doubles
# (m = 4000..20000, r = 500..1000), its solve below that.
EXACT_M2_DOUBLES = 8.5
MEMORY_BUDGET = 2 ** 30
AUTO_INDUCING = 1000
MIN_AUTO_INDUCING = 100


def exact_krr_bytes(num_subsets: int, num_targets: int = 1) -> int:
  """Peak bytes of exact KRR with CV on m subsets: 8 (8.5 m^2 + 4 m T) (measured: see above).

  Args:
    num_subsets: m.
    num_targets: T.

  Returns:
    The int byte count.
  """
  m, T = int(num_subsets), int(num_targets)
  return int(8 * (EXACT_M2_DOUBLES * m * m + 4 * m * T))


def nystrom_bytes(num_subsets: int, num_inducing: int, num_targets: int = 1, cv: int = 5) -> int:
  """Peak bytes of Nystrom KRR with CV: 8 (3 m r + 2.5 cv r^2 + 4 m T) (XLA's plan, rounded up).

  Args:
    num_subsets: m.
    num_inducing: r.
    num_targets: T.
    cv: the number of folds (None or 0 counts as 1).

  Returns:
    The int byte count.
  """
  m, r, T = int(num_subsets), int(num_inducing), int(num_targets)
  return int(8 * (3 * m * r + 2.5 * max(int(cv or 1), 1) * r * r + 4 * m * T))


def _largest_inducing(m: int, T: int, cv, budget: float) -> int:
  """The largest r with nystrom_bytes(m, r, T, cv) <= budget (the positive root of a quadratic)."""
  a, b, c = 2.5 * max(int(cv or 1), 1), 3.0 * m, 4.0 * m * T - budget / 8
  return int(np.floor((-b + np.sqrt(b * b - 4 * a * c)) / (2 * a))) if c < 0 else 0


def _gib(n: float) -> str:
  return f"{n / 2 ** 30:.2f} GiB"


def _nystrom_map(kind, X, Z, g, degree, coef0):
  e, U = jnp.linalg.eigh(kernels.gram(kind, Z, Z, g, degree, coef0))
  keep = e > 1e-10 * jnp.max(e)
  P = U * jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, e, 1.0)), 0.0)
  return kernels.gram(kind, X, Z, g, degree, coef0) @ P, P


def _nystrom_cv_body(X, Y, Z, gammas, ridges, idx, valid, train_w, *, kind, degree, coef0, center, cv_metric):
  """K-fold CV of ridge regression on Nystrom features. Fold statistics come from the totals minus
  the held-out block (Phi_T^T Phi_T = Phi^T Phi - Phi_B^T Phi_B), and for the MSE criterion each
  ridge costs O(r^2) from per-fold quadratic forms instead of an O(b r T) prediction."""
  norm = X.shape[0] * jnp.var(Y, axis=0)
  Y_ranks = _cv.truth_ranks(Y, cv_metric)
  omega = 1.0 / norm
  mu = _cv.fold_means(Y, train_w, center)

  def per_gamma(g):
    Phi, _ = _nystrom_map(kind, X, Z, g, degree, coef0)
    A_all, PY_all, P1_all = Phi.T @ Phi, Phi.T @ Y, Phi.sum(0)

    def per_fold(ix, ok, mu_f):
      Pb = Phi[ix] * ok[:, None]
      Yb = Y[ix] * ok[:, None]
      A = A_all - Pb.T @ Pb
      b = (PY_all - Pb.T @ Yb) - jnp.outer(P1_all - Pb.sum(0), mu_f)   # Phi_T^T (Y_T - mu_f)
      e, W = jnp.linalg.eigh(A)
      e = jnp.maximum(e, 0.0)
      c = W.T @ b                                                        # [r, T]
      PbW = Pb @ W
      Rb = (Yb - mu_f) * ok[:, None]                                     # residual at prediction 0
      if cv_metric == "mse":
        const = jnp.sum(omega * jnp.sum(Rb ** 2, 0))
        u = jnp.sum((PbW.T @ Rb) * c * omega, axis=1)                    # [r]
        Q = (PbW.T @ PbW) * ((c * omega) @ c.T)                          # [r, r]
        def per_ridge(lam):
          dl = 1.0 / (e + lam)
          return const - 2.0 * dl @ u + dl @ Q @ dl
        return jax.vmap(per_ridge)(ridges)                               # [L] weighted SSE
      return jax.vmap(lambda lam: Rb - PbW @ (c / (e + lam)[:, None]) * ok[:, None])(ridges)   # [L, b, T]

    out = jax.vmap(per_fold, out_axes=1)(idx, valid, mu)
    if cv_metric == "mse":
      return out.sum(1) / Y.shape[1]
    return jax.vmap(lambda r: _cv.cv_score(Y, r, idx, norm, cv_metric, Y_ranks))(out)

  return jax.lax.map(per_gamma, gammas)


_nystrom_cv = jax.jit(_nystrom_cv_body, static_argnames=_STATIC)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _nystrom_cv_maps(Xs, Y, Zs, gammas, ridges, idx, valid, train_w, **static):
  """`_nystrom_cv` for each input map (features Xs [M, m, K], inducing Zs [M, r, K]): [M, G, R]."""
  return jax.lax.map(lambda a: _nystrom_cv_body(a[0], Y, a[1], a[2], ridges, idx, valid, train_w, **static),
                     (Xs, Zs, gammas))


@functools.partial(jax.jit, static_argnames=("kind", "degree", "coef0"))
def _nystrom_solve(X, Yc, Z, gamma, ridge, *, kind, degree, coef0):
  Phi, P = _nystrom_map(kind, X, Z, gamma, degree, coef0)
  A = Phi.T @ Phi + ridge * jnp.eye(P.shape[0])
  factor = jax.scipy.linalg.cho_factor(A, lower=True)
  alpha = P @ jax.scipy.linalg.cho_solve(factor, Phi.T @ Yc)
  # GP view with covariance phi(s)^T phi(s'): var = k(s,s) - k_Z^T (P P^T - ridge P A^-1 P^T) k_Z.
  M = P @ P.T - ridge * P @ jax.scipy.linalg.cho_solve(factor, P.T)
  return alpha, M


def _choose_solver(num_inducing, memory_budget, m: int, T: int, cv):
  """(solver, r) for m subsets and T targets: see `fit_kernel`."""
  budget = _checks.positive_number(memory_budget, "memory_budget")
  exact = exact_krr_bytes(m, T)
  if num_inducing is None:
    if exact > budget:
      raise ValueError(f"num_inducing: None forces exact KRR, which needs about {_gib(exact)} for {m} subsets and {T} "
                       f"targets, over memory_budget={_gib(budget)}; pass num_inducing='auto' or an int, or raise "
                       "memory_budget")
    return "exact", None
  if isinstance(num_inducing, str):
    if num_inducing != "auto":
      raise ValueError(f"num_inducing: expected 'auto', None or a positive integer, got {num_inducing!r}")
    if exact <= budget:
      return "exact", None
    r = min(AUTO_INDUCING, m, _largest_inducing(m, T, cv, budget))
    if r < MIN_AUTO_INDUCING:
      raise ValueError(f"memory_budget: {_gib(budget)} leaves room for {max(r, 0)} inducing subsets at {m} subsets and "
                       f"{T} targets (Nystrom needs 8 (3 m r + 2.5 cv r^2 + 4 m T) bytes); raise memory_budget or fit "
                       "fewer subsets or targets")
  else:
    r = _checks.positive_int(num_inducing, "num_inducing")
    if r > m:
      raise ValueError(f"num_inducing: {r} exceeds the {m} fitted subsets")
  need = nystrom_bytes(m, r, T, cv)
  if need > budget:
    raise ValueError(f"num_inducing: Nystrom KRR with {r} inducing subsets needs about {_gib(need)} for {m} subsets and "
                     f"{T} targets, over memory_budget={_gib(budget)}; pass a smaller num_inducing or raise memory_budget")
  return "nystrom", r
