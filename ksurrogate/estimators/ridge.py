"""Solvers "onestep" and "newton": the ridge minimizer of the linearized training loss.

For subset s, with projected per-example gradients phi (`features.featurize`, Gaussian P to
`dim`) and the outputs o0 at theta0,
  z_s = argmin_z  sum_{x in tasks(s)} loss(o0(x) + phi(x) z, y(x)) + (ridge / 2) ||z||^2
(the subset's mean loss with `mean=True`), and F_hat(s) = loss of o0 + phi z_s on each target.
"onestep" takes one Newton step from z = 0 built from per-task statistics (K d^2 + d^3 per
subset, whatever the number of examples); "newton" iterates on all of the subset's examples
(N C d^2 + d^3 per iteration). `estimation.py` holds the solvers; these are their estimators.

The ridge: given (`ridge`), relative to the mean curvature at z = 0 (`relative_ridge`: times
trace(sum_k H_k) / (N d), scale-free), or calibrated on a few real outcomes (`ridge=None`:
`prepare(..., calibrate=(S_cal, F_cal))` picks the grid's best by `criterion`).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Optional

import jax
import numpy as np

from ksurrogate import _checks
from ksurrogate import _timing
from ksurrogate import estimation
from ksurrogate import features as features_lib
from ksurrogate.estimators import base

CRITERIA = ("relative_error", "lds")


@dataclasses.dataclass(frozen=True)
class RidgeState:
  """Prepared features (and, for "onestep" or a relative ridge, the per-task statistics)."""
  train: features_lib.Features
  target: Optional[features_lib.Features]
  task_ids: np.ndarray
  num_tasks: int
  loss: estimation.OutputLoss
  stats: Optional[tuple]
  ridge: Optional[float]
  seconds_setup: float
  calibration: Optional[dict] = None
  num_calibration: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Ridge(base.Estimator):
  """The ridge minimizer (see the module docstring); `Onestep` and `Newton` pick the solver.

  dim / projection / batch_size / materialize_bytes: the features (`features.featurize`);
  ridge_grid / criterion: the calibration (`estimation.calibrate_ridge`); mean: the subset's mean
  loss instead of its sum; chunk_size: subsets per compiled chunk (None: by memory).
  """
  dim: int = 256
  ridge: Optional[float] = None
  relative_ridge: bool = False
  mean: bool = False
  projection: str = "gaussian"
  batch_size: int = 64
  materialize_bytes: int = 1 << 30
  chunk_size: Optional[int] = None
  ridge_grid: tuple = tuple(10.0 ** np.arange(-3, 4))
  criterion: str = "relative_error"
  num_iters: int = 8          # "newton" only: Newton iterations

  def __post_init__(self):
    _checks.positive_int(self.dim, "dim")
    if self.ridge is not None:
      _checks.positive_number(self.ridge, "ridge")
    _checks.choice(self.criterion, CRITERIA, "criterion")
    _checks.choice(self.projection, features_lib.PROJECTIONS, "projection")
    _checks.positive_int(self.num_iters, "num_iters")
    if self.chunk_size is not None:
      _checks.positive_int(self.chunk_size, "chunk_size")
    if self.relative_ridge and self.ridge is None:
      raise ValueError("relative_ridge: needs a ridge to scale (ridge=None is calibrated on real outcomes instead)")

  @property
  def requires_calibration(self) -> bool:
    return self.ridge is None

  def prepare(self, data: base.Data, *, key=None, design=None, calibrate=None, features=None) -> RidgeState:
    """Featurizes the training and target examples at params0 (or takes `features`, a (train,
    target) pair of `Features` made with this output) and sets the ridge.

    Args:
      data: the model, examples and loss (`Data`).
      key: the projection's key (default key 0).
      design: unused (the ridge minimizer does not depend on which subsets are estimated).
      calibrate: (S_cal [c, K], F_cal [c, T]) real outcomes of a few subsets: the ridge is the
        grid's best on them. With `ridge` None and no `calibrate`, `calibrated` must set it before
        `estimate` (one ridge per calibration set, on one set of features).
      features: precomputed (train, target) Features.

    Returns:
      The state `estimate` and `solve` read.
    """
    del design
    X, y, Xt, yt, task_ids, K = data.checked()
    t0 = time.perf_counter()
    if features is None:
      kw = dict(key=jax.random.key(0) if key is None else key, dim=self.dim, output=data.output_fn,
                projection=self.projection, batch_size=self.batch_size, materialize_bytes=self.materialize_bytes)
      # named by the data's output kind (featurize names a caller's function by its __name__)
      train = features_lib.featurize(None, data.params0, X, y, **kw).replace(output=data.output)
      target = None if Xt is None else features_lib.featurize(None, data.params0, Xt, yt, **kw).replace(output=data.output)
    else:
      train, target = features
      if target is not None:
        features_lib.check_same_projection(train, target)
    stats = None
    if self.solver == "onestep" or self.relative_ridge:
      stats = estimation.task_statistics(train, task_ids, K, loss=data.loss)
    ridge = self.ridge
    if self.relative_ridge:   # lam relative to the mean curvature of the full-set problem at z = 0
      ridge = float(self.ridge * np.trace(stats[1].sum(0)) / len(task_ids) / train.dim)
    state = RidgeState(train, target, task_ids, K, data.loss, stats, ridge, 0.0)
    if calibrate is not None:
      if not (isinstance(calibrate, (tuple, list)) and len(calibrate) == 2):
        raise ValueError(f"calibrate: expected (S_cal, F_cal), got {type(calibrate).__name__}")
      state = self.calibrated(state, *calibrate)
    return dataclasses.replace(state, seconds_setup=time.perf_counter() - t0)

  def calibrated(self, state: RidgeState, S_cal, F_cal, *, criterion: Optional[str] = None, targets=None) -> RidgeState:
    """`state` at the ridge of `ridge_grid` whose estimates best match real outcomes F_cal of
    subsets S_cal (`criterion`: this estimator's, or another for this call), scored on the target
    rows `targets` (a bool mask or indices; default all).

    Args:
      state: what `prepare` returned (with target features).
      S_cal: bool [c, K] calibration subsets.
      F_cal: [c, T] their real outcomes.
      criterion: "relative_error" or "lds", None for this estimator's.
      targets: the target rows scored (bool mask or indices), None for all.

    Returns:
      A new state with `ridge`, `calibration` ({ridge: criterion}) and `num_calibration` set.

    Raises:
      ValueError: when the state has no target, or as `estimation.calibrate_ridge`.
    """
    if state.target is None:
      raise ValueError("data: calibrating the ridge needs target examples (Data.target)")
    target = state.target
    if targets is not None:
      rows = np.asarray(targets)
      target = features_lib.Features(target.phi[rows], target.offsets[rows], target.labels[rows], target.output,
                                      target.projection)
    ridge, table = estimation.calibrate_ridge(
        state.train, state.task_ids, target, S_cal, F_cal, grid=self.ridge_grid, criterion=criterion or self.criterion,
        **self._solver_options(state))
    return dataclasses.replace(state, ridge=ridge, calibration=table, num_calibration=int(len(S_cal)))

  def solve(self, state: RidgeState, S):
    """(z [m, dim], EstimatorReport): each subset's minimizer, for a caller that reads the
    solutions out itself (the report's seconds are the solve's).

    Args:
      state: what `prepare` returned, with a ridge set.
      S: bool [m, K] subsets, each selecting at least one example.

    Returns:
      (z [m, dim], `EstimatorReport`).

    Raises:
      ValueError: when no ridge is set, S has another number of tasks, or a subset selects no example.
    """
    timing = _timing.Timing()
    Z = self._solve(state, S, timing)
    return Z, self._report(state, len(Z), timing)

  def estimate(self, state: RidgeState, S):
    """(F_hat [m, T] target losses of every subset row of S [m, K], EstimatorReport).

    Args:
      state: what `prepare` returned (with target features and a ridge).
      S: bool [m, K] subsets, each selecting at least one example.

    Returns:
      (F_hat [m, T], `EstimatorReport`).

    Raises:
      ValueError: when the state has no target or no ridge, or as `solve`.
    """
    if state.target is None:
      raise ValueError("data: estimate needs target examples (Data.target); use solve for the solutions")
    timing = _timing.Timing()
    Z = self._solve(state, S, timing)
    F_hat = estimation._targets(Z, state.target, loss=state.loss, outcome="loss", output=state.train.output,
                                timing=timing)
    return F_hat, self._report(state, len(Z), timing)

  def _solve(self, state: RidgeState, S, timing):
    if state.ridge is None:
      raise ValueError("ridge: not set; pass calibrate=(S_cal, F_cal) to prepare, call calibrated, or give a ridge")
    S, task_ids = _checks.subsets_with_tasks(S, state.task_ids, state.train.num_examples)
    if S.shape[1] != state.num_tasks:
      raise ValueError(f"S: has {S.shape[1]} task columns but the data has {state.num_tasks} tasks")
    return estimation._solve(state.train, task_ids, S, ridge=state.ridge, timing=timing, mean=self.mean,
                             **self._solver_options(state))

  def _solver_options(self, state: RidgeState) -> dict:
    return dict(method=self.solver, num_iters=self.num_iters, loss=state.loss, chunk_size=self.chunk_size,
                stats=state.stats if self.solver == "onestep" else None)

  def _report(self, state: RidgeState, m: int, timing: _timing.Timing) -> base.EstimatorReport:
    arrays = [state.train.phi, *([] if state.target is None else [state.target.phi]), *(state.stats or ())]
    return base.EstimatorReport(
        solver=self.solver, space="parameter", dim=state.train.dim, output=state.train.output,
        memory_bytes=int(sum(np.asarray(a).nbytes for a in arrays)), num_estimated=int(m),
        seconds_setup=state.seconds_setup, seconds_compile=timing.compile, seconds_per_subset=timing.per_row(),
        ridge=state.ridge, calibration=state.calibration, num_calibration=state.num_calibration)

  def memory(self, sizes: base.Sizes) -> base.Cost:
    """The projected features of every example (float32), for "onestep" the per-task statistics
    (K x dim x dim, float64), and the projection matrix when it is formed at once.

    Args:
      sizes: the problem's `base.Sizes`.

    Returns:
      A `base.Cost` in parameter space.
    """
    d = self.dim
    rows = (sizes.num_train + sizes.num_target) * sizes.num_outputs
    nbytes = 4 * rows * d + (8 * sizes.num_tasks * d * (d + 1) if self.solver == "onestep" else 0)
    what = f"the projected features ({rows} rows x {d})"
    if self.solver == "onestep":
      what += f" and the one-step statistics ({sizes.num_tasks} x {d} x ({d} + 1) float64)"
    if 4 * sizes.num_params * d <= self.materialize_bytes:
      nbytes += 4 * sizes.num_params * d
      what += f" and the projection ({sizes.num_params} x {d})"
    return base.Cost("parameter", int(nbytes), what)


@base.register
@dataclasses.dataclass(frozen=True)
class Onestep(Ridge):
  """One Newton step from z = 0 from per-task statistics: K d^2 + d^3 per subset."""
  solver = "onestep"


@base.register
@dataclasses.dataclass(frozen=True)
class Newton(Ridge):
  """Fixed-iteration Newton on all of the subset's examples (`num_iters`), step chosen by the
  objective so it never increases: N C d^2 + d^3 per iteration and subset."""
  solver = "newton"
