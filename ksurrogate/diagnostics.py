"""Diagnostics of outcome sources: how far an estimate is from what it stands in for.

Both error definitions in use, on the same subsets:
- the estimate's error |F_hat(s) - F_ft(s)| / |F_ft(s)| against real fine-tuning from theta0;
- the paper's first-order error of the outputs at the really fine-tuned weights theta_s,
  ||f(theta0) + J (theta_s - theta0) - f(theta_s)|| / max(||f(theta_s)||, ||f(theta0)||).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ksurrogate import linearization
from ksurrogate import metrics


def linearization_error(apply_fn: Callable, params0, params_stacked, X):
  """The paper's first-order error per subset and example [m, N] (norms over the output vector)."""
  f_lin = linearization.linearize(apply_fn, params0)
  out0 = apply_fn(params0, X)

  @jax.jit
  def one(p):
    out, lin = apply_fn(p, X), f_lin(p, X)
    scale = jnp.maximum(jnp.linalg.norm(out, axis=-1), jnp.linalg.norm(out0, axis=-1))
    return jnp.linalg.norm(lin - out, axis=-1) / scale

  m = jax.tree.leaves(params_stacked)[0].shape[0]
  return np.stack([np.asarray(one(jax.tree.map(lambda t: t[i], params_stacked))) for i in range(m)])


def error_report(F_hat, F_finetuned, *, F_base=None, linearization_errors=None) -> dict:
  """Both error definitions and the ranking agreement of an estimate with real fine-tunes.

  F_hat, F_finetuned [m, T] on the same subsets; F_base [T] is the outcome of theta0 itself (the
  no-change guess every estimate must beat); linearization_errors [m, N] from `linearization_error`.
  """
  est = metrics.relative_error(F_hat, F_finetuned)
  out = {"median_relative_error": est["median"], "mean_relative_error": est["mean"],
         "lds_vs_finetune": metrics.lds(F_hat, F_finetuned) if len(F_hat) > 2 else float("nan")}
  if F_base is not None:
    base = metrics.relative_error(np.broadcast_to(np.asarray(F_base), np.shape(F_finetuned)), F_finetuned)
    out["no_change_median_relative_error"] = base["median"]
  if linearization_errors is not None:
    out["linearization_error"] = float(np.median(linearization_errors))
    out["linearization_error_mean"] = float(np.mean(linearization_errors))
  return out
