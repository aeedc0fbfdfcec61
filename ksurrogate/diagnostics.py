"""Diagnostics of outcome sources: how far the linearization is from the real fine-tunes.

The paper's first-order error of the outputs at the really fine-tuned weights theta_s,
  ||f(theta0) + J (theta_s - theta0) - f(theta_s)|| / max(||f(theta_s)||, ||f(theta0)||).
The estimate's own error against the real outcomes, |F_hat(s) - F_ft(s)| / |F_ft(s)|, and its LDS
are `ksurrogate.estimators.EstimatorReport.scored` (which takes these errors too).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ksurrogate import linearization


def linearization_error(apply_fn: Callable, params0, params_stacked, X):
  """The paper's first-order error per subset and example [m, N] (norms over the output vector).

  Args:
    apply_fn: the model, apply(params, X) -> outputs [N, C].
    params0: the parameters linearized at.
    params_stacked: the fine-tuned parameters of m subsets, stacked (leading axis m).
    X: [N, ...] the examples the outputs are compared on.

  Returns:
    float [m, N] (numpy).
  """
  f_lin = linearization.linearize(apply_fn, params0)
  out0 = apply_fn(params0, X)

  @jax.jit
  def one(p):
    out, lin = apply_fn(p, X), f_lin(p, X)
    scale = jnp.maximum(jnp.linalg.norm(out, axis=-1), jnp.linalg.norm(out0, axis=-1))
    return jnp.linalg.norm(lin - out, axis=-1) / scale

  m = jax.tree.leaves(params_stacked)[0].shape[0]
  return np.stack([np.asarray(one(jax.tree.map(lambda t: t[i], params_stacked))) for i in range(m)])
