"""The official code's recipe, reproduced exactly, for parity checks against the released numbers.

Official KRR: RBF on the sample-level indicator vectors with gamma = 1 / n_columns, a fixed ridge
plus a 1e-8 jitter on the diagonal, no centering. Official linear baseline: minimum-norm least
squares without an intercept. Neither de-duplicates subsets (the released modular data holds one
subset twice across the train/test split; the official code fits whatever it is given).
Both take real-valued rows too (task weights, mixture proportions: `ksurrogate.inputs`), as given:
the recipe has no input map (`inputs.mapped` gives it one).
"""
from __future__ import annotations

import jax.numpy as jnp

from ksurrogate import _checks
from ksurrogate import inputs
from ksurrogate._util import x64
from ksurrogate.surrogates import KernelSurrogate, LinearSurrogate, solve_kernel

JITTER = 1e-8


@x64
def official_krr(W, F, *, ridge: float) -> KernelSurrogate:
  """The official KRR: RBF with gamma = 1 / n_columns, ridge + 1e-8 on the diagonal, no centering.

  Args:
    W: [m, n] indicators (sample- or task-level), or real-valued rows as given.
    F: [m, T] outcomes (a 1-d F is one target).
    ridge: the fixed ridge, >= 0.

  Returns:
    The `KernelSurrogate`.

  Raises:
    ValueError: on invalid W or F, or a negative ridge.
  """
  W, domain = inputs.as_inputs(W, "W")
  F = _checks.as_outcomes(F, W.shape[0])
  ridge = _checks.positive_number(ridge, "ridge", allow_zero=True)
  return solve_kernel(W, F, gamma=1.0 / W.shape[1], ridge=ridge + JITTER, kernel="rbf", center=False,
                      simplex=domain == "simplex")


@x64
def official_lstsq(W, F) -> LinearSurrogate:
  """The official linear baseline: minimum-norm least squares without an intercept.

  Args:
    W: [m, n] indicators, or real-valued rows as given.
    F: [m, T] outcomes (a 1-d F is one target).

  Returns:
    A `LinearSurrogate` with intercept 0 and ridge 0.

  Raises:
    ValueError: on invalid W or F.
  """
  W, domain = inputs.as_inputs(W, "W")
  F = _checks.as_outcomes(F, W.shape[0])
  coef = jnp.linalg.lstsq(jnp.asarray(W, jnp.float64), jnp.asarray(F))[0]
  return LinearSurrogate(intercept=jnp.zeros(F.shape[1]), coef=coef, ridge=jnp.asarray(0.0), domain=domain)
