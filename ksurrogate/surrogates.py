"""Linear and kernel surrogates g(s) ~= F(s), fitted with cross-validation in float64.

Every fitted surrogate is an immutable pytree with `predict(S) -> [n, n_targets]`; the kernel one
also has `predict_variance(S)` (posterior variance of the Gaussian-process view of the same KRR,
noise variance = ridge). Hyper-parameters are chosen by K-fold CV over a grid, and the whole grid is
one compiled program: one eigendecomposition per gamma serves every ridge value, and the held-out
residuals of each fold come from the block identity
  y_B - yhat_B^(-B) = [(G^-1)_BB]^-1 (G^-1 (y - mu_T))_B,   G = K + ridge I,
which is exact for KRR fitted on the other folds with their own target mean mu_T. So CV costs a few
m^3 eigendecompositions instead of |grid| x folds separate solves.
"""
from __future__ import annotations

import functools
from typing import ClassVar, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ksurrogate import _checks
from ksurrogate import batching
from ksurrogate import kernels
from ksurrogate import metrics
from ksurrogate._util import x64

GAMMA_SCALES = 10.0 ** (np.arange(-4, 5) / 2)  # gamma0 * 10^[-2..2] in half decades
RIDGE_GRID = 10.0 ** np.arange(-6, 3)     # 10^[-6..2]
_PREDICT_CHUNK = 8192


def _chunked(fn, X, surr):
  """A row-wise jitted fn in fixed-size chunks, so huge candidate sets never blow memory."""
  if X.shape[0] <= _PREDICT_CHUNK:
    return fn(X, surr)
  return batching.chunked_map(lambda X_c: fn(X_c, surr), X, chunk_size=_PREDICT_CHUNK)


@flax.struct.dataclass
class LinearSurrogate:
  """g(s) = intercept + s @ coef. Additive: its pairwise interactions are zero by construction."""
  READOUTS: ClassVar[tuple] = ("loo", "shapley")
  intercept: jax.Array       # [T]
  coef: jax.Array            # [K, T]
  ridge: jax.Array           # scalar
  cv_scores: Optional[jax.Array] = None   # [len(ridge_grid)]: CV criterion, lower is better
  ridge_grid: Optional[jax.Array] = None

  @property
  def num_tasks(self) -> int:
    return self.coef.shape[0]

  @x64
  def predict(self, S) -> jax.Array:
    X = jnp.asarray(_checks.as_subsets(S, num_tasks=self.num_tasks), jnp.float64)
    return self.intercept + X @ self.coef


@flax.struct.dataclass
class KernelSurrogate:
  """g(s) = offset + k(s, basis) @ alpha;  var(s) = k(s, s) - k(s, basis) M k(basis, s).

  `basis` is the fitted subsets (exact KRR) or the inducing subsets (Nystrom).
  """
  READOUTS: ClassVar[tuple] = ("loo", "interactions", "shapley", "variance")
  basis: jax.Array           # [r, K] float64
  alpha: jax.Array           # [r, T]
  offset: jax.Array          # [T]
  var_matrix: jax.Array      # [r, r]
  gamma: jax.Array
  ridge: jax.Array
  kernel: str = flax.struct.field(pytree_node=False, default="rbf")
  degree: int = flax.struct.field(pytree_node=False, default=2)
  coef0: float = flax.struct.field(pytree_node=False, default=1.0)
  cv_scores: Optional[jax.Array] = None   # [len(gamma_grid), len(ridge_grid)]: as LinearSurrogate
  gamma_grid: Optional[jax.Array] = None
  ridge_grid: Optional[jax.Array] = None

  @property
  def num_tasks(self) -> int:
    return self.basis.shape[1]

  def gram(self, X):
    """k(X, basis) [n, r] for float subsets X [n, K]."""
    return kernels.gram(self.kernel, X, self.basis, self.gamma, self.degree, self.coef0)

  @x64
  def predict(self, S) -> jax.Array:
    X = jnp.asarray(_checks.as_subsets(S, num_tasks=self.num_tasks), jnp.float64)
    return _chunked(_kernel_predict, X, self)

  @x64
  def predict_variance(self, S) -> jax.Array:
    """Posterior variance [n] of the GP with covariance k and noise variance `ridge`."""
    X = jnp.asarray(_checks.as_subsets(S, num_tasks=self.num_tasks), jnp.float64)
    return _chunked(_kernel_variance, X, self)


@jax.jit
def _kernel_predict(X, surr):
  return surr.offset + surr.gram(X) @ surr.alpha


@jax.jit
def _kernel_variance(X, surr):
  Kx = surr.gram(X)
  prior = kernels.diag(surr.kernel, X, surr.gamma, surr.degree, surr.coef0)
  return jnp.maximum(prior - jnp.sum((Kx @ surr.var_matrix) * Kx, axis=1), 0.0)


# ----------------------------------------------------------------------------------------------
# Cross-validation folds.

def cv_folds(m: int, cv: int, seed: int):
  """Seeded K-fold split as padded index blocks: (idx [cv, b], valid [cv, b], train_w [cv, m])."""
  parts = np.array_split(np.random.default_rng(seed).permutation(m), cv)
  b = max(len(p) for p in parts)
  idx = np.zeros((cv, b), np.int32)
  valid = np.zeros((cv, b), bool)
  train_w = np.ones((cv, m))
  for f, p in enumerate(parts):
    idx[f, :len(p)] = p
    valid[f, :len(p)] = True
    train_w[f, p] = 0.0
  return jnp.asarray(idx), jnp.asarray(valid), jnp.asarray(train_w)


def _fold_means(Y, train_w, center: bool):
  if not center:
    return jnp.zeros((train_w.shape[0], Y.shape[1]))
  return (train_w @ Y) / train_w.sum(1, keepdims=True)


CV_METRICS = ("mse", "lds")


def _cv_score(Y, resid, idx, norm, cv_metric):
  """CV criterion (lower is better) from out-of-fold residuals [cv, b, T]: the mean over targets of
  held-out MSE / variance ("mse"), or minus the out-of-fold LDS ("lds"; sorting makes it ~10x
  dearer on CPU, hence computed only when asked for)."""
  if cv_metric == "mse":
    return jnp.mean(jnp.sum(resid ** 2, axis=(0, 1)) / norm)
  R = jnp.zeros_like(Y).at[idx.reshape(-1)].add(resid.reshape(-1, Y.shape[1]))
  return -jnp.nanmean(metrics.spearman_columns(Y - R, Y))


def _select(scores, *grids):
  """Argmin of a CV score table; NaN (numerical failure) never wins."""
  scores = np.asarray(scores)
  scores = np.where(np.isfinite(scores), scores, np.inf)
  pos = np.unravel_index(np.argmin(scores), scores.shape)
  return tuple(float(g[i]) for g, i in zip(grids, pos))


# ----------------------------------------------------------------------------------------------
# Exact kernel ridge regression.

@functools.partial(jax.jit, static_argnames=("kind", "degree", "coef0", "center", "cv_metric"))
def _kernel_cv(X, Y, gammas, ridges, idx, valid, train_w, *, kind, degree, coef0, center, cv_metric):
  m = X.shape[0]
  norm = m * jnp.var(Y, axis=0)
  mu = _fold_means(Y, train_w, center)            # [cv, T]
  block_eye = jnp.eye(idx.shape[1])

  def per_gamma(g):
    e, V = jnp.linalg.eigh(kernels.gram(kind, X, X, g, degree, coef0))
    e = jnp.maximum(e, 0.0)
    VtY, Vt1 = V.T @ Y, V.T @ jnp.ones(m)

    def per_ridge(lam):
      inv = 1.0 / (e + lam)

      def per_fold(ix, ok, mu_f):
        Vb = V[ix]                                 # [b, m]
        Ginv_bb = jnp.where(ok[:, None] & ok[None, :], (Vb * inv) @ Vb.T, block_eye)
        rhs = (Vb @ (inv[:, None] * VtY)) - (Vb @ (inv * Vt1))[:, None] * mu_f
        return jnp.linalg.solve(Ginv_bb, rhs * ok[:, None])

      resid = jax.vmap(per_fold)(idx, valid, mu)    # [cv, b, T]; padded rows are exactly 0
      return _cv_score(Y, resid, idx, norm, cv_metric)

    return jax.lax.map(per_ridge, ridges)

  return jax.lax.map(per_gamma, gammas)


@functools.partial(jax.jit, static_argnames=("kind", "degree", "coef0"))
def _kernel_solve(X, Yc, gamma, ridge, *, kind, degree, coef0):
  K = kernels.gram(kind, X, X, gamma, degree, coef0)
  factor = jax.scipy.linalg.cho_factor(K + ridge * jnp.eye(X.shape[0]), lower=True)
  alpha = jax.scipy.linalg.cho_solve(factor, Yc)          # one factorization, every target
  inverse = jax.scipy.linalg.cho_solve(factor, jnp.eye(X.shape[0]))
  return alpha, inverse


@x64
def solve_kernel(S, F, *, gamma: float, ridge: float, kernel: str = "rbf", center: bool = True, degree: int = 2,
                 coef0: float = 1.0) -> KernelSurrogate:
  """Exact KRR with fixed hyper-parameters on S [m, K] as given (no CV, no de-duplication): the
  building block of `fit_kernel` and of recipes that must reproduce other code exactly."""
  _checks.choice(kernel, kernels.KERNELS, "kernel")
  S = _checks.as_subsets(S)
  F = _checks.as_outcomes(F, S.shape[0])
  if not ridge > 0:
    raise ValueError(f"ridge: must be positive for kernel ridge regression, got {ridge}")
  X, Y = jnp.asarray(S, jnp.float64), jnp.asarray(F)
  offset = Y.mean(0) if center else jnp.zeros(Y.shape[1])
  alpha, M = _kernel_solve(X, Y - offset, float(gamma), float(ridge), kind=kernel, degree=degree, coef0=coef0)
  return KernelSurrogate(basis=X, alpha=alpha, offset=offset, var_matrix=M, gamma=jnp.asarray(float(gamma)),
                         ridge=jnp.asarray(float(ridge)), kernel=kernel, degree=degree, coef0=coef0)


# ----------------------------------------------------------------------------------------------
# Nystrom KRR: features phi(s) = k(s, Z) P with P = K_ZZ^{-1/2}, then ridge regression on phi.

def _nystrom_map(kind, X, Z, g, degree, coef0):
  e, U = jnp.linalg.eigh(kernels.gram(kind, Z, Z, g, degree, coef0))
  keep = e > 1e-10 * jnp.max(e)
  P = U * jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, e, 1.0)), 0.0)
  return kernels.gram(kind, X, Z, g, degree, coef0) @ P, P


@functools.partial(jax.jit, static_argnames=("kind", "degree", "coef0", "center", "cv_metric"))
def _nystrom_cv(X, Y, Z, gammas, ridges, idx, valid, train_w, *, kind, degree, coef0, center, cv_metric):
  """K-fold CV of ridge regression on Nystrom features. Fold statistics come from the totals minus
  the held-out block (Phi_T^T Phi_T = Phi^T Phi - Phi_B^T Phi_B), and for the MSE criterion each
  ridge costs O(r^2) from per-fold quadratic forms instead of an O(b r T) prediction."""
  norm = X.shape[0] * jnp.var(Y, axis=0)
  omega = 1.0 / norm
  mu = _fold_means(Y, train_w, center)

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
    return jax.vmap(lambda r: _cv_score(Y, r, idx, norm, cv_metric))(out)

  return jax.lax.map(per_gamma, gammas)


@functools.partial(jax.jit, static_argnames=("kind", "degree", "coef0"))
def _nystrom_solve(X, Yc, Z, gamma, ridge, *, kind, degree, coef0):
  Phi, P = _nystrom_map(kind, X, Z, gamma, degree, coef0)
  A = Phi.T @ Phi + ridge * jnp.eye(P.shape[0])
  factor = jax.scipy.linalg.cho_factor(A, lower=True)
  alpha = P @ jax.scipy.linalg.cho_solve(factor, Phi.T @ Yc)
  # GP view with covariance phi(s)^T phi(s'): var = k(s,s) - k_Z^T (P P^T - ridge P A^-1 P^T) k_Z.
  M = P @ P.T - ridge * P @ jax.scipy.linalg.cho_solve(factor, P.T)
  return alpha, M


@x64
def fit_kernel(S, F, *, kernel: str = "rbf", gamma: float | None = None, ridge: float | None = None,
               center: bool = True, cv: int = 5, num_inducing: int | None = None, degree: int = 2,
               coef0: float = 1.0, seed: int = 0, gamma_grid=None, ridge_grid=None,
               cv_metric: str = "mse") -> KernelSurrogate:
  """Kernel ridge regression of F [m, T] on subsets S [m, K], all targets sharing one solve.

  gamma / ridge left as None are chosen jointly by `cv`-fold CV (score: mean over targets of
  held-out MSE / target variance) on gamma0 * 10^[-2..2] x 10^[-6..2], gamma0 from
  `kernels.default_gamma`. `num_inducing` switches to Nystrom KRR on that many fitted subsets
  (for m beyond a few thousand, where exact KRR's m^3 dominates). `cv_metric="lds"` selects by
  out-of-fold Spearman instead of MSE, for when ranking subsets matters more than calibration.
  """
  _checks.choice(kernel, kernels.KERNELS, "kernel")
  _checks.choice(cv_metric, CV_METRICS, "cv_metric")
  S, F = _checks.check_fit_inputs(S, F, cv)
  X, Y = jnp.asarray(S, jnp.float64), jnp.asarray(F)
  static = dict(kind=kernel, degree=degree, coef0=coef0)
  if kernel == "linear":
    gammas = np.array([1.0])
  elif gamma is not None:
    gammas = np.array([float(gamma)])
  else:
    gammas = kernels.default_gamma(kernel, X) * (GAMMA_SCALES if gamma_grid is None else np.asarray(gamma_grid))
  ridges = np.array([float(ridge)]) if ridge is not None else (RIDGE_GRID if ridge_grid is None else np.asarray(ridge_grid))
  if np.any(ridges <= 0):
    raise ValueError(f"ridge: must be positive for kernel ridge regression, got {ridges.min()}")
  Z = None
  if num_inducing is not None:
    r = _checks.positive_int(num_inducing, "num_inducing")
    if r > X.shape[0]:
      raise ValueError(f"num_inducing: {r} exceeds the {X.shape[0]} fitted subsets")
    Z = X[np.sort(np.random.default_rng(seed).choice(X.shape[0], r, replace=False))]

  scores = None
  if len(gammas) * len(ridges) > 1:
    folds = cv_folds(X.shape[0], cv, seed)
    if Z is None:
      scores = _kernel_cv(X, Y, jnp.asarray(gammas), jnp.asarray(ridges), *folds, center=center, cv_metric=cv_metric, **static)
    else:
      scores = _nystrom_cv(X, Y, Z, jnp.asarray(gammas), jnp.asarray(ridges), *folds, center=center, cv_metric=cv_metric, **static)
    g, lam = _select(scores, gammas, ridges)
  else:
    g, lam = float(gammas[0]), float(ridges[0])

  offset = Y.mean(0) if center else jnp.zeros(Y.shape[1])
  if Z is None:
    alpha, M = _kernel_solve(X, Y - offset, g, lam, **static)
    basis = X
  else:
    alpha, M = _nystrom_solve(X, Y - offset, Z, g, lam, **static)
    basis = Z
  return KernelSurrogate(basis=basis, alpha=alpha, offset=offset, var_matrix=M, gamma=jnp.asarray(g),
                         ridge=jnp.asarray(lam), kernel=kernel, degree=degree, coef0=coef0, cv_scores=scores,
                         gamma_grid=jnp.asarray(gammas), ridge_grid=jnp.asarray(ridges))


# ----------------------------------------------------------------------------------------------
# Linear surrogate with an unpenalized intercept.

@functools.partial(jax.jit, static_argnames=("cv_metric",))
def _linear_cv(X, Y, ridges, idx, valid, train_w, *, cv_metric):
  norm = X.shape[0] * jnp.var(Y, axis=0)

  def per_fold(ix, ok, tw):
    n = tw.sum()
    mx, my = (tw @ X) / n, (tw @ Y) / n
    Xc = (X - mx) * tw[:, None]
    e, V = jnp.linalg.eigh(Xc.T @ Xc)
    Vtb = V.T @ (Xc.T @ (Y - my))
    Xb = (X[ix] - mx) @ V

    def per_ridge(lam):
      pred = my + Xb @ (Vtb / (jnp.maximum(e, 0.0) + lam)[:, None])
      return (Y[ix] - pred) * ok[:, None]

    return jax.vmap(per_ridge)(ridges)

  resid = jax.vmap(per_fold, out_axes=1)(idx, valid, train_w)         # [L, cv, b, T]
  return jax.vmap(lambda r: _cv_score(Y, r, idx, norm, cv_metric))(resid)


@jax.jit
def _linear_solve(X, Y, ridge):
  mx, my = X.mean(0), Y.mean(0)
  Xc, Yc = X - mx, Y - my
  A = Xc.T @ Xc + ridge * jnp.eye(X.shape[1])
  # ridge == 0 is plain least squares; the minimum-norm solution keeps it defined when K > m.
  coef = jnp.where(ridge > 0, jnp.linalg.solve(A, Xc.T @ Yc), jnp.linalg.lstsq(Xc, Yc)[0])
  return my - mx @ coef, coef


@x64
def fit_linear(S, F, *, ridge: float | None = None, cv: int = 5, seed: int = 0, ridge_grid=None,
               cv_metric: str = "mse") -> LinearSurrogate:
  """Least squares F ~= a + S b with an intercept; ridge (on b only) chosen by K-fold CV when None."""
  _checks.choice(cv_metric, CV_METRICS, "cv_metric")
  S, F = _checks.check_fit_inputs(S, F, cv)
  X, Y = jnp.asarray(S, jnp.float64), jnp.asarray(F)
  scores, grid = None, None
  if ridge is None:
    grid = RIDGE_GRID if ridge_grid is None else np.asarray(ridge_grid, np.float64)
    scores = _linear_cv(X, Y, jnp.asarray(grid), *cv_folds(X.shape[0], cv, seed), cv_metric=cv_metric)
    (ridge,) = _select(scores, grid)
  if ridge < 0:
    raise ValueError(f"ridge: must be non-negative, got {ridge}")
  intercept, coef = _linear_solve(X, Y, jnp.asarray(float(ridge)))
  return LinearSurrogate(intercept=intercept, coef=coef, ridge=jnp.asarray(float(ridge)), cv_scores=scores,
                         ridge_grid=None if grid is None else jnp.asarray(grid))
