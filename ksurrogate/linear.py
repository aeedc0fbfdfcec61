"""Linear surrogates g(x) = a + phi(x) @ b, and the same with pairwise terms, fitted by ridge CV in
float64 (the datamodels baseline, and the comparison a kernel has to beat).

x is a subset indicator, a task-weight vector or a mixture (`ksurrogate.inputs`); phi is the
input map, chosen by K-fold CV beside the ridge on real-valued inputs and the identity on
subsets. `pairwise=True` adds every product phi_j phi_k (j < k), and on real inputs the squares:
the smallest model with interactions, solved by the same ridge CV.
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
from ksurrogate import inputs
from ksurrogate._util import x64


def pairwise_features(Phi, squares: bool):
  """[phi, phi_j phi_k for j < k, and phi_k^2 when `squares`] of Phi [n, K]: K + K (K - 1) / 2
  (+ K) columns. On 0/1 subsets the squares repeat the linear terms, so they are left out there.

  Args:
    Phi: float [n, K], inputs after the input map.
    squares: whether the squares phi_k^2 are appended.

  Returns:
    float [n, K + K (K - 1) / 2 (+ K)], the products in `np.triu_indices(K, 1)` order.
  """
  K = Phi.shape[1]
  j, k = np.triu_indices(K, 1)
  parts = [Phi, Phi[:, j] * Phi[:, k]] + ([Phi * Phi] if squares else [])
  return jnp.concatenate(parts, axis=1)


@flax.struct.dataclass
class LinearSurrogate:
  """g(x) = intercept + phi(x) @ coef. Additive: its pairwise interactions are zero by construction."""
  READOUTS: ClassVar[tuple] = ("loo", "shapley")
  intercept: jax.Array       # [T]
  coef: jax.Array            # [K, T]
  ridge: jax.Array           # scalar
  cv_scores: Optional[jax.Array] = None   # [len(ridge_grid)], or [maps, ridges]: CV criterion, lower is better
  ridge_grid: Optional[jax.Array] = None
  input_map: inputs.InputMap = flax.struct.field(pytree_node=False, default=inputs.IDENTITY)
  domain: str = flax.struct.field(pytree_node=False, default="subsets")      # see ksurrogate.inputs
  input_maps: tuple = flax.struct.field(pytree_node=False, default=())       # the maps CV chose among

  @property
  def num_tasks(self) -> int:
    return self.coef.shape[0]

  @x64
  def apply(self, X) -> jax.Array:
    """g at float inputs X [n, K] with no input checks: a pure jnp function (jax.grad goes through).

    Args:
      X: float [n, K] raw inputs (before the input map).

    Returns:
      float64 [n, T].
    """
    return self.intercept + self.input_map(X) @ self.coef

  @x64
  def predict(self, S) -> jax.Array:
    """g at validated inputs: subsets, weights or proportions of the domain it was fitted on.

    Args:
      S: [n, K] inputs of the fitted domain (`inputs.check`).

    Returns:
      float64 [n, T].

    Raises:
      ValueError: when S has another number of tasks or is invalid in the domain.
    """
    return self.apply(inputs.check(S, self.domain, self.num_tasks))


@flax.struct.dataclass
class PairwiseSurrogate:
  """g(x) = intercept + [phi, phi_j phi_k (j < k), (phi_k^2)] @ coef: linear with pairwise terms."""
  READOUTS: ClassVar[tuple] = ("loo", "interactions", "shapley")
  intercept: jax.Array       # [T]
  coef: jax.Array            # [P, T], P = K + K (K - 1) / 2 (+ K with squares)
  ridge: jax.Array
  cv_scores: Optional[jax.Array] = None
  ridge_grid: Optional[jax.Array] = None
  input_map: inputs.InputMap = flax.struct.field(pytree_node=False, default=inputs.IDENTITY)
  domain: str = flax.struct.field(pytree_node=False, default="subsets")
  input_maps: tuple = flax.struct.field(pytree_node=False, default=())
  tasks: int = flax.struct.field(pytree_node=False, default=0)
  squares: bool = flax.struct.field(pytree_node=False, default=False)

  @property
  def num_tasks(self) -> int:
    return self.tasks

  @x64
  def apply(self, X) -> jax.Array:
    """As `LinearSurrogate.apply`.

    Args:
      X: float [n, K] raw inputs (before the input map).

    Returns:
      float64 [n, T].
    """
    return self.intercept + pairwise_features(self.input_map(X), self.squares) @ self.coef

  @x64
  def predict(self, S) -> jax.Array:
    """As `LinearSurrogate.predict`.

    Args:
      S: [n, K] inputs of the fitted domain (`inputs.check`).

    Returns:
      float64 [n, T].

    Raises:
      ValueError: when S has another number of tasks or is invalid in the domain.
    """
    return self.apply(inputs.check(S, self.domain, self.num_tasks))


def _ridge_cv_body(X, Y, ridges, idx, valid, train_w, *, cv_metric):
  norm = X.shape[0] * jnp.var(Y, axis=0)
  Y_ranks = _cv.truth_ranks(Y, cv_metric)

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
  return jax.vmap(lambda r: _cv.cv_score(Y, r, idx, norm, cv_metric, Y_ranks))(resid)


_linear_cv = jax.jit(_ridge_cv_body, static_argnames=("cv_metric",))


@functools.partial(jax.jit, static_argnames=("cv_metric",))
def _linear_cv_maps(Xs, Y, ridges, idx, valid, train_w, *, cv_metric):
  """`_linear_cv` for each input map's features Xs [M, m, P], in one program: [M, L]."""
  return jax.lax.map(lambda X: _ridge_cv_body(X, Y, ridges, idx, valid, train_w, cv_metric=cv_metric), Xs)


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
               cv_metric: str = "mse", input_map=None, simplex: bool | None = None,
               pairwise: bool = False):
  """Least squares F ~= a + phi(S) b with an intercept, ridge on b only.

  Args:
    S: [m, K] subsets (bool / 0-1), task weights or mixture proportions (`ksurrogate.inputs`).
    F: [m, T] outcomes (a 1-d F is one target).
    ridge: >= 0 (0 is plain least squares); None chooses it by `cv`-fold CV on `ridge_grid`
      (default 10^[-6..2]).
    cv: the number of CV folds.
    seed: the seed of the fold assignment.
    ridge_grid: the ridges CV chooses among (non-negative), None for the default.
    cv_metric: the folds' criterion ("mse": held-out MSE / variance; "lds": out-of-fold Spearman).
    input_map: the feature map phi (`inputs.candidate_maps`): None = the identity on subsets and,
      on real inputs, identity / sqrt / log(1 + r / eps) chosen by CV beside the ridge.
    simplex: how real rows are read (`inputs.as_inputs`): None from the values.
    pairwise: add the products phi_j phi_k (j < k), and phi_k^2 on real inputs.

  Returns:
    A `LinearSurrogate` (or `PairwiseSurrogate` with `pairwise=True`); its `input_map`, `domain`
    and, when several maps were compared, `input_maps` with `cv_scores` [maps, ridges] say what
    was chosen.

  Raises:
    ValueError: on an unknown cv_metric, a non-bool pairwise, invalid inputs or outcomes (shapes,
      NaN / inf, negative weights), a negative ridge or grid entry, or too few distinct subsets
      for the folds.
  """
  _checks.choice(cv_metric, _cv.CV_METRICS, "cv_metric")
  if not isinstance(pairwise, (bool, np.bool_)):
    raise ValueError(f"pairwise: expected True or False, got {pairwise!r}")
  X_in, domain = inputs.as_inputs(S, "S", simplex=simplex)
  maps = inputs.candidate_maps(input_map, domain)
  grid = None
  if ridge is not None:
    ridge = _checks.positive_number(ridge, "ridge", allow_zero=True)
    if len(maps) > 1:
      grid = np.array([ridge])
  else:
    grid = _cv.RIDGE_GRID if ridge_grid is None else _checks.grid(ridge_grid, "ridge_grid", allow_zero=True)
  uses_cv = grid is not None and len(grid) * len(maps) > 1
  rows = (lambda a: a) if domain != "subsets" else _checks.as_subsets
  S, F = _checks.check_fit_inputs(X_in, F, cv, uses_cv=uses_cv, no_cv_hint=", or pass ridge= to fit without CV",
                                  rows=rows)
  squares = pairwise and domain != "subsets"
  expand = (lambda P: pairwise_features(P, squares)) if pairwise else (lambda P: P)
  Phis = [expand(m(S)) for m in maps]
  Y = jnp.asarray(F)
  scores, chosen = None, 0
  if grid is not None:
    if uses_cv:
      folds = _cv.cv_folds(S.shape[0], cv, seed)
      if len(maps) == 1:
        scores = _linear_cv(Phis[0], Y, jnp.asarray(grid), *folds, cv_metric=cv_metric)
        (ridge,) = _cv.select(scores, grid)
      else:
        scores = _linear_cv_maps(jnp.stack(Phis), Y, jnp.asarray(grid), *folds, cv_metric=cv_metric)
        chosen, r = _cv.best(scores)
        ridge = float(grid[r])
    else:
      ridge = float(grid[0])
  intercept, coef = _linear_solve(Phis[chosen], Y, jnp.asarray(float(ridge)))
  common = dict(intercept=intercept, coef=coef, ridge=jnp.asarray(float(ridge)), cv_scores=scores,
                ridge_grid=None if grid is None else jnp.asarray(grid), input_map=maps[chosen], domain=domain,
                input_maps=maps if len(maps) > 1 else ())
  if pairwise:
    return PairwiseSurrogate(**common, tasks=S.shape[1], squares=squares)
  return LinearSurrogate(**common)
