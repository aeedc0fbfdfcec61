"""RegMix's own regressor as a surrogate family: one LightGBM model per target, early-stopped on a
validation split carved from the training runs (never on the test runs).

The hyper-parameters are the ones the authors' regression notebook states (sail-sg/regmix,
`regression_fitting/regression.ipynb`): gbdt boosting, regression objective, metrics l1 and l2,
1000 iterations at learning rate 1e-2, seed 42, early stopping after 3 rounds without
improvement. Everything else is LightGBM's default (31 leaves, at least 20 rows per leaf: with
fewer than about 40 training rows no tree splits, and the model predicts a constant). The authors
early-stopped on the rows they then reported on; here `validation_fraction` of the training runs
(seeded) are held out for it.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from ksurrogate import inputs

AUTHORS = dict(boosting_type="gbdt", objective="regression", metric=["l1", "l2"], seed=42, verbosity=-1)


@dataclasses.dataclass(frozen=True)
class LightGBMSurrogate:
  """One booster per target; `predict(X) -> [n, T]` at each booster's early-stopped iteration."""
  READOUTS: ClassVar[tuple] = ("loo",)
  boosters: tuple
  best_iterations: tuple
  num_tasks: int
  domain: str = "simplex"

  def predict(self, S) -> np.ndarray:
    X = inputs.check(S, self.domain, self.num_tasks)
    return np.stack([b.predict(X, num_iteration=it) for b, it in zip(self.boosters, self.best_iterations)], axis=1)


def fit_lightgbm(X, F, *, num_iterations: int = 1000, learning_rate: float = 1e-2, stopping_rounds: int = 3,
                 validation_fraction: float = 0.2, seed: int = 0, num_threads: int = 1,
                 simplex: bool | None = None) -> LightGBMSurrogate:
  """LightGBM per target on inputs X [m, K] (mixtures or weights), outcomes F [m, T].

  Args:
    X, F: training inputs and outcomes.
    num_iterations, learning_rate, stopping_rounds: the authors' boosting settings.
    validation_fraction: the share of the rows (at least 1, seeded by `seed`) held out for early
      stopping; the rest train the boosters.
    seed: the split's seed (the boosters' own seed is the authors' 42).
    num_threads: LightGBM's threads.
    simplex: how the rows are read (`ksurrogate.inputs.as_inputs`).

  Returns:
    A `LightGBMSurrogate`.
  """
  import lightgbm as lgb
  arr, domain = inputs.as_inputs(X, "X", simplex=simplex)
  arr = np.asarray(arr, np.float64)
  F = np.asarray(F, np.float64).reshape(len(arr), -1)
  if not 0 < validation_fraction < 1:
    raise ValueError(f"validation_fraction: must lie in (0, 1), got {validation_fraction}")
  order = np.random.default_rng(seed).permutation(len(arr))
  n_val = max(1, int(round(validation_fraction * len(arr))))
  if len(arr) - n_val < 2:
    raise ValueError(f"X: {len(arr)} rows leave {len(arr) - n_val} to train LightGBM beside {n_val} for early stopping")
  val, train = order[:n_val], order[n_val:]
  params = dict(AUTHORS, learning_rate=float(learning_rate), num_threads=int(num_threads), force_col_wise=True)
  boosters, best = [], []
  for t in range(F.shape[1]):
    data = lgb.Dataset(arr[train], F[train, t], free_raw_data=False)
    valid = lgb.Dataset(arr[val], F[val, t], reference=data)
    b = lgb.train(params, data, num_boost_round=int(num_iterations), valid_sets=[valid],
                  callbacks=[lgb.early_stopping(int(stopping_rounds), verbose=False)])
    boosters.append(b)
    best.append(int(b.best_iteration) or int(num_iterations))
  return LightGBMSurrogate(boosters=tuple(boosters), best_iterations=tuple(best), num_tasks=arr.shape[1], domain=domain)
