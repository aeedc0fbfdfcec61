"""Linear and kernel surrogates g(s) ~= F(s), fitted with cross-validation in float64.

Every fitted surrogate is an immutable pytree with `predict(S) -> [n, n_targets]`; the kernel one
also has `predict_variance(S)` (posterior variance of the Gaussian-process view of the same KRR,
noise variance = ridge). Hyper-parameters are chosen by K-fold CV over a grid, and the whole grid is
one compiled program: one eigendecomposition per gamma serves every ridge value, and the held-out
residuals of each fold come from the block identity
  y_B - yhat_B^(-B) = [(G^-1)_BB]^-1 (G^-1 (y - mu_T))_B,   G = K + ridge I,
which is exact for KRR fitted on the other folds with their own target mean mu_T. So CV costs a few
m^3 eigendecompositions instead of |grid| x folds separate solves.

Exact KRR holds several m x m float64 arrays at once, so `fit_kernel` switches to Nystrom KRR by
itself when the exact program's memory (`exact_krr_bytes`) would exceed `memory_budget`; the
fitted surrogate's `solver` and `num_inducing` say which one ran.
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
  """Peak bytes of exact KRR with CV on m subsets: 8 (8.5 m^2 + 4 m T) (measured: see above)."""
  m, T = int(num_subsets), int(num_targets)
  return int(8 * (EXACT_M2_DOUBLES * m * m + 4 * m * T))


def nystrom_bytes(num_subsets: int, num_inducing: int, num_targets: int = 1, cv: int = 5) -> int:
  """Peak bytes of Nystrom KRR with CV: 8 (3 m r + 2.5 cv r^2 + 4 m T) (XLA's plan, rounded up)."""
  m, r, T = int(num_subsets), int(num_inducing), int(num_targets)
  return int(8 * (3 * m * r + 2.5 * max(int(cv or 1), 1) * r * r + 4 * m * T))


def _largest_inducing(m: int, T: int, cv, budget: float) -> int:
  """The largest r with nystrom_bytes(m, r, T, cv) <= budget (the positive root of a quadratic)."""
  a, b, c = 2.5 * max(int(cv or 1), 1), 3.0 * m, 4.0 * m * T - budget / 8
  return int(np.floor((-b + np.sqrt(b * b - 4 * a * c)) / (2 * a))) if c < 0 else 0


def _gib(n: float) -> str:
  return f"{n / 2 ** 30:.2f} GiB"


def _chunked(fn, X, surr):
  """A row-wise jitted fn in fixed-size chunks, so huge candidate sets never blow memory."""
  if X.shape[0] <= _PREDICT_CHUNK:
    return fn(X, surr)
  return batching.chunked_map(lambda X_c: fn(X_c, surr), X, chunk_size=_PREDICT_CHUNK)


def _num(x) -> str:
  try:
    return f"{float(x):.4g}"
  except (TypeError, jax.errors.ConcretizationTypeError):   # a tracer inside a transformation
    return repr(x)


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
  solver: str = flax.struct.field(pytree_node=False, default="exact")        # "exact" | "nystrom"
  num_inducing: Optional[int] = flax.struct.field(pytree_node=False, default=None)   # r when "nystrom"

  @property
  def num_tasks(self) -> int:
    return self.basis.shape[1]

  def __repr__(self):
    solver = self.solver if self.num_inducing is None else f"{self.solver}, num_inducing={self.num_inducing}"
    return (f"KernelSurrogate(solver={solver}, kernel={self.kernel!r}, num_tasks={self.num_tasks}, "
            f"num_targets={self.alpha.shape[1]}, basis={self.basis.shape[0]}, gamma={_num(self.gamma)}, "
            f"ridge={_num(self.ridge)})")

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


def _truth_ranks(Y, cv_metric):
  """Ranks of the outcomes down each column, computed once per fit for the "lds" criterion (they
  are the same at every grid point); None for "mse"."""
  return metrics.rank_columns(Y) if cv_metric == "lds" else None


def _cv_score(Y, resid, idx, norm, cv_metric, Y_ranks=None):
  """CV criterion (lower is better) from out-of-fold residuals [cv, b, T]: the mean over targets of
  held-out MSE / variance ("mse"), or minus the out-of-fold LDS ("lds", from the outcomes' ranks
  `Y_ranks`; sorting makes it several times dearer on CPU, hence computed only when asked for)."""
  if cv_metric == "mse":
    return jnp.mean(jnp.sum(resid ** 2, axis=(0, 1)) / norm)
  R = jnp.zeros_like(Y).at[idx.reshape(-1)].add(resid.reshape(-1, Y.shape[1]))
  return -jnp.nanmean(metrics.pearson_columns(metrics.rank_columns(Y - R), Y_ranks))


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
  Y_ranks = _truth_ranks(Y, cv_metric)
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
      return _cv_score(Y, resid, idx, norm, cv_metric, Y_ranks)

    return jax.lax.map(per_ridge, ridges)

  return jax.lax.map(per_gamma, gammas)


@functools.partial(jax.jit, static_argnames=("kind", "degree", "coef0"))
def _kernel_solve(X, Yc, gamma, ridge, *, kind, degree, coef0):
  K = kernels.gram(kind, X, X, gamma, degree, coef0)
  factor = jax.scipy.linalg.cho_factor(K + ridge * jnp.eye(X.shape[0]), lower=True)
  alpha = jax.scipy.linalg.cho_solve(factor, Yc)          # one factorization, every target
  inverse = jax.scipy.linalg.cho_solve(factor, jnp.eye(X.shape[0]))
  return alpha, inverse


def _check_kernel_params(kernel, degree, coef0):
  _checks.choice(kernel, kernels.KERNELS, "kernel")
  if kernel == "polynomial":
    _checks.positive_int(degree, "degree")
    if not np.isfinite(coef0):
      raise ValueError(f"coef0: must be finite, got {coef0!r}")


@x64
def solve_kernel(S, F, *, gamma: float, ridge: float, kernel: str = "rbf", center: bool = True, degree: int = 2,
                 coef0: float = 1.0) -> KernelSurrogate:
  """Exact KRR with fixed hyper-parameters on S [m, K] as given (no CV, no de-duplication): the
  building block of `fit_kernel` and of recipes that must reproduce other code exactly."""
  _check_kernel_params(kernel, degree, coef0)
  S = _checks.as_subsets(S)
  F = _checks.as_outcomes(F, S.shape[0])
  ridge = _checks.positive_number(ridge, "ridge")
  gamma = _checks.positive_number(gamma, "gamma")
  X, Y = jnp.asarray(S, jnp.float64), jnp.asarray(F)
  offset = Y.mean(0) if center else jnp.zeros(Y.shape[1])
  alpha, M = _kernel_solve(X, Y - offset, gamma, ridge, kind=kernel, degree=degree, coef0=coef0)
  return KernelSurrogate(basis=X, alpha=alpha, offset=offset, var_matrix=M, gamma=jnp.asarray(gamma),
                         ridge=jnp.asarray(ridge), kernel=kernel, degree=degree, coef0=coef0)


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
  Y_ranks = _truth_ranks(Y, cv_metric)
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
    return jax.vmap(lambda r: _cv_score(Y, r, idx, norm, cv_metric, Y_ranks))(out)

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


@x64
def fit_kernel(S, F, *, kernel: str = "rbf", gamma: float | None = None, ridge: float | None = None,
               center: bool = True, cv: int = 5, num_inducing: int | str | None = "auto",
               memory_budget: float = MEMORY_BUDGET, degree: int = 2, coef0: float = 1.0, seed: int = 0,
               gamma_grid=None, ridge_grid=None, cv_metric: str = "mse") -> KernelSurrogate:
  """Kernel ridge regression of F [m, T] on subsets S [m, K], all targets sharing one solve.

  gamma / ridge left as None are chosen jointly by `cv`-fold CV (score: mean over targets of
  held-out MSE / target variance) on gamma0 * 10^[-2..2] x 10^[-6..2], gamma0 from
  `kernels.default_gamma`. `cv_metric="lds"` selects by out-of-fold Spearman instead of MSE, for
  when ranking subsets matters more than calibration. Repeated subsets are merged first; CV needs
  at least 2 distinct subsets in every training fold.

  Solver. Exact KRR holds about 8 (8.5 m^2 + 4 m T) bytes at once (`exact_krr_bytes`: the m x m
  Gram matrix, its eigenvectors, the CV fold blocks and the LAPACK workspace; measured 6.1-8.5 m^2
  doubles of peak resident memory at m = 1000-4000) and costs O(|gamma grid| m^3) time.
  `num_inducing="auto"` (default) runs exact KRR when that fits under `memory_budget` (default
  1 GiB: exact up to m = 3,972 for 4 targets, 3,857 for 500), and otherwise Nystrom
  KRR on r = min(1000, m) seeded inducing subsets (`nystrom_bytes`: 8 (3 m r + 2.5 cv r^2 + 4 m T);
  r shrinks to what fits the budget, refused below 100). An int forces Nystrom with that r; None
  forces exact KRR; either refuses, in one line, when it cannot fit. The default budget is a fixed
  figure (1/24 of a 24 GiB machine, 1/128 of a 128 GiB one), not a fraction of the RAM found, so
  the same call picks the same solver, hence the same surrogate, on every machine; pass a larger
  `memory_budget` (bytes) on a big one. The fitted surrogate's `solver` ("exact" | "nystrom") and
  `num_inducing` record the choice.
  """
  _check_kernel_params(kernel, degree, coef0)
  _checks.choice(cv_metric, CV_METRICS, "cv_metric")
  if gamma is not None and kernel != "linear":
    gammas_given = np.array([_checks.positive_number(gamma, "gamma")])
  if ridge is not None:
    ridges = np.array([_checks.positive_number(ridge, "ridge")])
  else:
    ridges = RIDGE_GRID if ridge_grid is None else _checks.grid(ridge_grid, "ridge_grid")
  scale = None if gamma_grid is None else _checks.grid(gamma_grid, "gamma_grid")
  n_gammas = 1 if kernel == "linear" or gamma is not None else len(GAMMA_SCALES if scale is None else scale)
  uses_cv = n_gammas * len(ridges) > 1
  S, F = _checks.check_fit_inputs(S, F, cv, uses_cv=uses_cv, no_cv_hint=", or pass gamma= and ridge= to fit without CV")
  X, Y = jnp.asarray(S, jnp.float64), jnp.asarray(F)
  static = dict(kind=kernel, degree=degree, coef0=coef0)
  if kernel == "linear":
    gammas = np.array([1.0])
  elif gamma is not None:
    gammas = gammas_given
  else:
    gammas = kernels.default_gamma(kernel, X) * (GAMMA_SCALES if scale is None else scale)
  solver, r = _choose_solver(num_inducing, memory_budget, X.shape[0], Y.shape[1], cv if uses_cv else 1)
  Z = None
  if solver == "nystrom":
    Z = X[np.sort(np.random.default_rng(seed).choice(X.shape[0], r, replace=False))]

  scores = None
  if uses_cv:
    folds = cv_folds(X.shape[0], cv, seed)
    if Z is None:
      scores = _kernel_cv(X, Y, jnp.asarray(gammas), jnp.asarray(ridges), *folds, center=center, cv_metric=cv_metric, **static)
    else:
      scores = _nystrom_cv(X, Y, Z, jnp.asarray(gammas), jnp.asarray(ridges), *folds, center=center, cv_metric=cv_metric, **static)
    if not np.isfinite(np.asarray(scores)).any():
      raise ValueError("gamma_grid: every (gamma, ridge) pair of the grid failed numerically (non-finite CV scores); "
                       "check the grids and the kernel")
    g, lam = _select(scores, gammas, ridges)
  else:
    g, lam = float(gammas[0]), float(ridges[0])

  if not np.all(np.isfinite(np.asarray(kernels.diag(kernel, X, g, degree, coef0)))):
    raise ValueError(f"gamma: the {kernel} kernel overflows float64 on the fitted subsets at gamma={g:.4g} "
                     f"(degree={degree}); lower gamma or degree")
  offset = Y.mean(0) if center else jnp.zeros(Y.shape[1])
  if Z is None:
    alpha, M = _kernel_solve(X, Y - offset, g, lam, **static)
    basis = X
  else:
    alpha, M = _nystrom_solve(X, Y - offset, Z, g, lam, **static)
    basis = Z
  if not np.all(np.isfinite(np.asarray(alpha))):
    raise ValueError(f"ridge: the solve at gamma={g:.4g}, ridge={lam:.4g} gave non-finite weights (the kernel matrix is "
                     "too ill-conditioned); raise ridge")
  return KernelSurrogate(basis=basis, alpha=alpha, offset=offset, var_matrix=M, gamma=jnp.asarray(g),
                         ridge=jnp.asarray(lam), kernel=kernel, degree=degree, coef0=coef0, cv_scores=scores,
                         gamma_grid=jnp.asarray(gammas), ridge_grid=jnp.asarray(ridges), solver=solver, num_inducing=r)


# ----------------------------------------------------------------------------------------------
# Linear surrogate with an unpenalized intercept.

@functools.partial(jax.jit, static_argnames=("cv_metric",))
def _linear_cv(X, Y, ridges, idx, valid, train_w, *, cv_metric):
  norm = X.shape[0] * jnp.var(Y, axis=0)
  Y_ranks = _truth_ranks(Y, cv_metric)

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
  return jax.vmap(lambda r: _cv_score(Y, r, idx, norm, cv_metric, Y_ranks))(resid)


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
  """Least squares F ~= a + S b with an intercept; ridge (on b only, >= 0; 0 is plain least squares)
  chosen by K-fold CV when None."""
  _checks.choice(cv_metric, CV_METRICS, "cv_metric")
  grid = None
  if ridge is not None:
    ridge = _checks.positive_number(ridge, "ridge", allow_zero=True)
  else:
    grid = RIDGE_GRID if ridge_grid is None else _checks.grid(ridge_grid, "ridge_grid", allow_zero=True)
  uses_cv = grid is not None and len(grid) > 1
  S, F = _checks.check_fit_inputs(S, F, cv, uses_cv=uses_cv, no_cv_hint=", or pass ridge= to fit without CV")
  X, Y = jnp.asarray(S, jnp.float64), jnp.asarray(F)
  scores = None
  if grid is not None:
    if uses_cv:
      scores = _linear_cv(X, Y, jnp.asarray(grid), *cv_folds(X.shape[0], cv, seed), cv_metric=cv_metric)
      (ridge,) = _select(scores, grid)
    else:
      ridge = float(grid[0])
  intercept, coef = _linear_solve(X, Y, jnp.asarray(float(ridge)))
  return LinearSurrogate(intercept=intercept, coef=coef, ridge=jnp.asarray(float(ridge)), cv_scores=scores,
                         ridge_grid=None if grid is None else jnp.asarray(grid))
