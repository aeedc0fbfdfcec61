"""Kernel and linear surrogates g(x) ~= F(x), fitted with cross-validation in float64.

x is a subset indicator, a task-weight vector or a mixture of tasks (`ksurrogate.inputs`); on
real-valued inputs a feature map phi (identity, sqrt, log(1 + r / eps)) is chosen by CV beside the
hyper-parameters, and on subsets it is the identity (the surrogates as they always were). The
linear surrogates live in `ksurrogate.linear` and are re-exported here.

Every fitted surrogate is an immutable pytree with `predict(S) -> [n, n_targets]` and a pure,
differentiable `apply(X)`; the kernel one also has `predict_variance(S)` (posterior variance of the
Gaussian-process view of the same KRR, noise variance = ridge). Hyper-parameters are chosen by
K-fold CV over a grid, and the whole grid, every input map included, is one compiled program: one
eigendecomposition per (map, gamma) serves every ridge value, and the held-out residuals of each
fold come from the block identity
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
from ksurrogate import _cv
from ksurrogate import batching
from ksurrogate import inputs
from ksurrogate import kernels
from ksurrogate._cv import CV_METRICS, RIDGE_GRID, cv_folds  # noqa: F401  (public here too)
from ksurrogate._util import x64
from ksurrogate.linear import LinearSurrogate, PairwiseSurrogate, fit_linear  # noqa: F401  (public here too)
from ksurrogate.nystrom import (AUTO_INDUCING, EXACT_M2_DOUBLES, MEMORY_BUDGET, MIN_AUTO_INDUCING,  # noqa: F401
                                _choose_solver, _largest_inducing, exact_krr_bytes, nystrom_bytes)
from ksurrogate.nystrom import _STATIC, _nystrom_cv, _nystrom_cv_maps, _nystrom_solve

GAMMA_SCALES = 10.0 ** (np.arange(-4, 5) / 2)  # gamma0 * 10^[-2..2] in half decades
_PREDICT_CHUNK = 8192

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
class KernelSurrogate:
  """g(s) = offset + k(s, basis) @ alpha;  var(s) = k(s, s) - k(s, basis) M k(basis, s).

  `basis` is the fitted inputs (exact KRR) or the inducing ones (Nystrom), both after the input
  map: k compares phi(x) with the basis, so predict / apply / predict_variance map first.
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
  cv_scores: Optional[jax.Array] = None   # [gammas, ridges], or [maps, gammas, ridges]; lower is better
  gamma_grid: Optional[jax.Array] = None   # [gammas], or [maps, gammas] (each map its own gamma0)
  ridge_grid: Optional[jax.Array] = None
  solver: str = flax.struct.field(pytree_node=False, default="exact")        # "exact" | "nystrom"
  num_inducing: Optional[int] = flax.struct.field(pytree_node=False, default=None)   # r when "nystrom"
  input_map: inputs.InputMap = flax.struct.field(pytree_node=False, default=inputs.IDENTITY)
  domain: str = flax.struct.field(pytree_node=False, default="subsets")      # see ksurrogate.inputs
  input_maps: tuple = flax.struct.field(pytree_node=False, default=())       # the maps CV chose among

  @property
  def num_tasks(self) -> int:
    return self.basis.shape[1]

  def __repr__(self):
    solver = self.solver if self.num_inducing is None else f"{self.solver}, num_inducing={self.num_inducing}"
    mapped = "" if self.domain == "subsets" else f", domain={self.domain}, input_map={self.input_map}"
    return (f"KernelSurrogate(solver={solver}, kernel={self.kernel!r}, num_tasks={self.num_tasks}, "
            f"num_targets={self.alpha.shape[1]}, basis={self.basis.shape[0]}, gamma={_num(self.gamma)}, "
            f"ridge={_num(self.ridge)}{mapped})")

  def gram(self, Phi):
    """k(Phi, basis) [n, r] for inputs already through the input map, Phi [n, K].

    Args:
      Phi: float [n, K], mapped inputs.

    Returns:
      float [n, r].
    """
    return kernels.gram(self.kernel, Phi, self.basis, self.gamma, self.degree, self.coef0)

  @property
  def noise_variance(self) -> jax.Array:
    """The GP view's noise variance (the ridge)."""
    return self.ridge

  @x64
  def apply(self, X) -> jax.Array:
    """g at float inputs X [n, K] with no input checks: a pure jnp function (jax.grad goes through).

    Args:
      X: float [n, K] raw inputs (before the input map).

    Returns:
      float64 [n, T].
    """
    return self.offset + self.gram(self.input_map(X)) @ self.alpha

  def _features(self, S, name="S"):
    return self.input_map(inputs.check(S, self.domain, self.num_tasks, name))

  @x64
  def predict(self, S) -> jax.Array:
    """g at validated inputs of the fitted domain, in chunks of 8192 rows.

    Args:
      S: [n, K] inputs of the fitted domain (`inputs.check`).

    Returns:
      float64 [n, T].

    Raises:
      ValueError: when S has another number of tasks or is invalid in the domain.
    """
    return _chunked(_kernel_predict, self._features(S), self)

  @x64
  def predict_variance(self, S) -> jax.Array:
    """Posterior variance [n] of the GP with covariance k and noise variance `ridge`.

    Args:
      S: [n, K] inputs of the fitted domain.

    Returns:
      float64 [n], clipped at 0.

    Raises:
      ValueError: as `predict`.
    """
    return _chunked(_kernel_variance, self._features(S), self)

  @x64
  def posterior_covariance(self, S, Z) -> jax.Array:
    """Posterior covariance [n, z] between the rows of S and of Z (same GP view).

    Args:
      S: [n, K] inputs of the fitted domain.
      Z: [z, K] inputs of the fitted domain.

    Returns:
      float64 [n, z].

    Raises:
      ValueError: as `predict`, for S or Z.
    """
    P, Q = self._features(S), self._features(Z, "Z")
    return kernels.gram(self.kernel, P, Q, self.gamma, self.degree, self.coef0) - self.gram(P) @ self.var_matrix @ self.gram(Q).T


@jax.jit
def _kernel_predict(X, surr):
  return surr.offset + surr.gram(X) @ surr.alpha


@jax.jit
def _kernel_variance(X, surr):
  Kx = surr.gram(X)
  prior = kernels.diag(surr.kernel, X, surr.gamma, surr.degree, surr.coef0)
  return jnp.maximum(prior - jnp.sum((Kx @ surr.var_matrix) * Kx, axis=1), 0.0)


# ----------------------------------------------------------------------------------------------
# Exact kernel ridge regression.

def _kernel_cv_body(X, Y, gammas, ridges, idx, valid, train_w, *, kind, degree, coef0, center, cv_metric):
  m = X.shape[0]
  norm = m * jnp.var(Y, axis=0)
  Y_ranks = _cv.truth_ranks(Y, cv_metric)
  mu = _cv.fold_means(Y, train_w, center)            # [cv, T]
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
      return _cv.cv_score(Y, resid, idx, norm, cv_metric, Y_ranks)

    return jax.lax.map(per_ridge, ridges)

  return jax.lax.map(per_gamma, gammas)


_kernel_cv = jax.jit(_kernel_cv_body, static_argnames=_STATIC)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _kernel_cv_maps(Xs, Y, gammas, ridges, idx, valid, train_w, **static):
  """`_kernel_cv` for each input map: Xs [M, m, K] with its own gammas [M, G], one program: [M, G, R]."""
  return jax.lax.map(lambda a: _kernel_cv_body(a[0], Y, a[1], ridges, idx, valid, train_w, **static), (Xs, gammas))


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


def _one_map(input_map) -> inputs.InputMap:
  maps = inputs.candidate_maps(inputs.IDENTITY if input_map is None else input_map, "weights")
  if len(maps) != 1:
    raise ValueError(f"input_map: a fit without CV takes one map, got {[str(m) for m in maps]}; name the log map's "
                     "eps, e.g. InputMap('log', 1e-3)")
  return maps[0]


@x64
def solve_kernel(S, F, *, gamma: float, ridge: float, kernel: str = "rbf", center: bool = True, degree: int = 2,
                 coef0: float = 1.0, input_map=None, simplex: bool | None = None) -> KernelSurrogate:
  """Exact KRR with fixed hyper-parameters on S [m, K] as given (no CV, no de-duplication): the
  building block of `fit_kernel` and of recipes that must reproduce other code exactly.

  Args:
    S: [m, K] subsets, task weights or mixture proportions (`inputs.as_inputs`, read with `simplex`).
    F: [m, T] outcomes.
    gamma: the kernel scale, positive.
    ridge: the ridge (the GP's noise variance), positive.
    kernel: "rbf", "polynomial" or "linear".
    center: fit around the outcome mean (else around 0).
    degree: the polynomial degree.
    coef0: the polynomial offset.
    input_map: one feature map (default the identity), e.g. `inputs.InputMap("log", 1e-3)`.
    simplex: how real rows are read (None: from the values).

  Returns:
    The `KernelSurrogate` (solver "exact", basis the m mapped rows).

  Raises:
    ValueError: on an unknown kernel, a bad degree or coef0, invalid inputs or outcomes, a gamma
      or ridge that is not positive, or an input_map naming more than one map.
  """
  _check_kernel_params(kernel, degree, coef0)
  X_in, domain = inputs.as_inputs(S, "S", simplex=simplex)
  F = _checks.as_outcomes(F, X_in.shape[0])
  ridge = _checks.positive_number(ridge, "ridge")
  gamma = _checks.positive_number(gamma, "gamma")
  input_map = _one_map(input_map)
  X, Y = input_map(X_in), jnp.asarray(F)
  offset = Y.mean(0) if center else jnp.zeros(Y.shape[1])
  alpha, M = _kernel_solve(X, Y - offset, gamma, ridge, kind=kernel, degree=degree, coef0=coef0)
  return KernelSurrogate(basis=X, alpha=alpha, offset=offset, var_matrix=M, gamma=jnp.asarray(gamma),
                         ridge=jnp.asarray(ridge), kernel=kernel, degree=degree, coef0=coef0, input_map=input_map,
                         domain=domain)


@x64
def fit_kernel(S, F, *, kernel: str = "rbf", gamma: float | None = None, ridge: float | None = None,
               center: bool = True, cv: int = 5, num_inducing: int | str | None = "auto",
               memory_budget: float = MEMORY_BUDGET, degree: int = 2, coef0: float = 1.0, seed: int = 0,
               gamma_grid=None, ridge_grid=None, cv_metric: str = "mse", input_map=None,
               simplex: bool | None = None) -> KernelSurrogate:
  """Kernel ridge regression of F [m, T] on inputs S [m, K], all targets sharing one solve.

  Inputs. S holds subsets (bool / 0-1), task weights or mixture proportions
  (`ksurrogate.inputs.as_inputs`; `simplex` says how real rows are read, None from the values).
  The kernel sees phi(S): on subsets the identity (exactly the surrogate of earlier versions); on
  real inputs, with `input_map=None`, the map is chosen by the same CV among identity, sqrt and
  log(1 + r / eps) for eps in `inputs.EPS_GRID` (`input_map` names one, "log" for the eps grid
  only, or a sequence of them). The fitted surrogate's `input_map` and `domain` record it.

  gamma / ridge left as None are chosen jointly by `cv`-fold CV (score: mean over targets of
  held-out MSE / target variance) on gamma0 * 10^[-2..2] x 10^[-6..2], gamma0 from
  `kernels.default_gamma` of each map's features. `cv_metric="lds"` selects by out-of-fold
  Spearman instead of MSE, for when ranking matters more than calibration. Repeated rows are
  merged first; CV needs at least 2 distinct rows in every training fold. The whole table (maps x
  gammas x ridges) is one compiled program.

  Solver. Exact KRR holds about 8 (8.5 m^2 + 4 m T) bytes at once (`exact_krr_bytes`: the m x m
  Gram matrix, its eigenvectors, the CV fold blocks and the LAPACK workspace; measured 6.1-8.5 m^2
  doubles of peak resident memory at m = 1000-4000) and costs O(|maps| |gamma grid| m^3) time.
  `num_inducing="auto"` (default) runs exact KRR when that fits under `memory_budget` (default
  1 GiB: exact up to m = 3,972 for 4 targets, 3,857 for 500), and otherwise Nystrom
  KRR on r = min(1000, m) seeded inducing rows (`nystrom_bytes`: 8 (3 m r + 2.5 cv r^2 + 4 m T);
  r shrinks to what fits the budget, refused below 100). An int forces Nystrom with that r; None
  forces exact KRR; either refuses, in one line, when it cannot fit. The default budget is a fixed
  figure (1/24 of a 24 GiB machine, 1/128 of a 128 GiB one), not a fraction of the RAM found, so
  the same call picks the same solver, hence the same surrogate, on every machine; pass a larger
  `memory_budget` (bytes) on a big one. The fitted surrogate's `solver` ("exact" | "nystrom") and
  `num_inducing` record the choice.

  Args:
    S: inputs [m, K] (subsets, task weights or mixture proportions).
    F: outcomes [m, T] (a 1-d F is one target).
    kernel: "rbf" (default), "polynomial" or "linear".
    gamma: a fixed kernel scale, or None for CV over `gamma_grid`.
    ridge: a fixed ridge, or None for CV over `ridge_grid`.
    center: fit around the outcome mean (the GP's prior mean).
    cv: the number of CV folds.
    num_inducing: "auto", None (exact) or an int r (Nystrom), as above.
    memory_budget: bytes the solver may use, as above.
    degree: the polynomial degree.
    coef0: the polynomial offset.
    seed: the seed of the folds and of the Nystrom inducing rows.
    gamma_grid: multiples of gamma0 searched (positive), None for 10^[-2..2] in half decades.
    ridge_grid: ridges searched (positive), None for 10^[-6..2].
    cv_metric: the criterion, "mse" or "lds".
    input_map: the feature map (or maps to choose among), as above.
    simplex: how real rows are read, as above.

  Returns:
    The `KernelSurrogate` (`solver`, `num_inducing`, `input_map`, `cv_scores` and the grids record
    what was chosen).

  Raises:
    ValueError: on invalid inputs, outcomes, grids or kernel parameters, too few distinct rows for
      the folds, a solver that cannot fit `memory_budget`, a grid whose every CV score is
      non-finite, or a kernel or solve that overflows at the chosen hyper-parameters.
  """
  _check_kernel_params(kernel, degree, coef0)
  _checks.choice(cv_metric, CV_METRICS, "cv_metric")
  X_in, domain = inputs.as_inputs(S, "S", simplex=simplex)
  maps = inputs.candidate_maps(input_map, domain)
  if gamma is not None and kernel != "linear":
    gammas_given = np.array([_checks.positive_number(gamma, "gamma")])
  if ridge is not None:
    ridges = np.array([_checks.positive_number(ridge, "ridge")])
  else:
    ridges = RIDGE_GRID if ridge_grid is None else _checks.grid(ridge_grid, "ridge_grid")
  scale = None if gamma_grid is None else _checks.grid(gamma_grid, "gamma_grid")
  n_gammas = 1 if kernel == "linear" or gamma is not None else len(GAMMA_SCALES if scale is None else scale)
  uses_cv = len(maps) * n_gammas * len(ridges) > 1
  rows = (lambda a: a) if domain != "subsets" else _checks.as_subsets
  S, F = _checks.check_fit_inputs(X_in, F, cv, uses_cv=uses_cv, rows=rows,
                                  no_cv_hint=", or pass gamma= and ridge= to fit without CV")
  Xs, Y = [m(S) for m in maps], jnp.asarray(F)
  static = dict(kind=kernel, degree=degree, coef0=coef0)
  floor = 1.0 if domain == "subsets" else 1e-12   # 1: the closest distinct subsets; real rows get no floor
  if kernel == "linear":
    gammas = np.ones((len(maps), 1))
  elif gamma is not None:
    gammas = np.tile(gammas_given, (len(maps), 1))
  else:
    gammas = np.stack([kernels.default_gamma(kernel, X, floor=floor) * (GAMMA_SCALES if scale is None else scale)
                       for X in Xs])
  solver, r = _choose_solver(num_inducing, memory_budget, S.shape[0], Y.shape[1], cv if uses_cv else 1)
  Z_rows = None
  if solver == "nystrom":
    Z_rows = np.sort(np.random.default_rng(seed).choice(S.shape[0], r, replace=False))

  scores, chosen = None, 0
  if uses_cv:
    folds = cv_folds(S.shape[0], cv, seed)
    opts = dict(center=center, cv_metric=cv_metric, **static)
    if len(maps) == 1:   # one map (every subset fit): the program as it always was, [gammas, ridges]
      gammas = gammas[0]
      if Z_rows is None:
        scores = _kernel_cv(Xs[0], Y, jnp.asarray(gammas), jnp.asarray(ridges), *folds, **opts)
      else:
        scores = _nystrom_cv(Xs[0], Y, Xs[0][Z_rows], jnp.asarray(gammas), jnp.asarray(ridges), *folds, **opts)
      i, j = _cv.best(scores)
      g = float(gammas[i])
    else:
      stacked = jnp.stack(Xs)
      if Z_rows is None:
        scores = _kernel_cv_maps(stacked, Y, jnp.asarray(gammas), jnp.asarray(ridges), *folds, **opts)
      else:
        scores = _nystrom_cv_maps(stacked, Y, stacked[:, Z_rows], jnp.asarray(gammas), jnp.asarray(ridges), *folds,
                                  **opts)
      chosen, i, j = _cv.best(scores)
      g = float(gammas[chosen, i])
    if not np.isfinite(np.asarray(scores)).any():
      raise ValueError("gamma_grid: every (gamma, ridge) pair of the grid failed numerically (non-finite CV scores); "
                       "check the grids and the kernel")
    lam = float(ridges[j])
  else:
    gammas = gammas[0]
    g, lam = float(gammas[0]), float(ridges[0])

  X = Xs[chosen]
  if not np.all(np.isfinite(np.asarray(kernels.diag(kernel, X, g, degree, coef0)))):
    raise ValueError(f"gamma: the {kernel} kernel overflows float64 on the fitted subsets at gamma={g:.4g} "
                     f"(degree={degree}); lower gamma or degree")
  offset = Y.mean(0) if center else jnp.zeros(Y.shape[1])
  if Z_rows is None:
    alpha, M = _kernel_solve(X, Y - offset, g, lam, **static)
    basis = X
  else:
    alpha, M = _nystrom_solve(X, Y - offset, X[Z_rows], g, lam, **static)
    basis = X[Z_rows]
  if not np.all(np.isfinite(np.asarray(alpha))):
    raise ValueError(f"ridge: the solve at gamma={g:.4g}, ridge={lam:.4g} gave non-finite weights (the kernel matrix is "
                     "too ill-conditioned); raise ridge")
  return KernelSurrogate(basis=basis, alpha=alpha, offset=offset, var_matrix=M, gamma=jnp.asarray(g),
                         ridge=jnp.asarray(lam), kernel=kernel, degree=degree, coef0=coef0, cv_scores=scores,
                         gamma_grid=jnp.asarray(gammas), ridge_grid=jnp.asarray(ridges), solver=solver, num_inducing=r,
                         input_map=maps[chosen], domain=domain, input_maps=maps if len(maps) > 1 else ())
