"""Attribution readouts from any fitted surrogate g, plus active selection of new subsets.

Sign convention: predicted leave-one-out A_k = g(1 - e_k) - g(1). With a loss outcome,
A_k > 0 means removing task k raises the target loss, i.e. task k helps the target.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ksurrogate import _checks
from ksurrogate import kernels
from ksurrogate import subsets as subsets_lib
from ksurrogate._util import x64
from ksurrogate.surrogates import KernelSurrogate


def _num_tasks(surrogate, num_tasks):
  if num_tasks is None:
    return surrogate.num_tasks
  if num_tasks != surrogate.num_tasks:
    raise ValueError(f"num_tasks: {num_tasks} does not match the surrogate's K={surrogate.num_tasks}")
  return num_tasks


def _finite(values, what: str, row: str = "task"):
  """A surrogate fitted through the public API predicts finite values; one built by hand (or with
  extreme kernel settings) may not, and a readout must not pass NaN on silently."""
  _checks.finite(np.asarray(values), "surrogate", row=row, what=what)
  return values


@x64
def predicted_loo(surrogate, num_tasks: int | None = None) -> jax.Array:
  """[K, T]: g(1 - e_k) - g(1). With K = 1 that is g(empty set) - g({task 0})."""
  K = _num_tasks(surrogate, num_tasks)
  loo = surrogate.predict(subsets_lib.leave_one_out(K)) - surrogate.predict(subsets_lib.full(K))
  return _finite(loo, "predicted leave-one-out values")


@x64
def interactions(surrogate, num_tasks: int | None = None) -> jax.Array:
  """[K, K, T]: I_jk = g(1) - g(1 - e_j) - g(1 - e_k) + g(1 - e_j - e_k); zero diagonal.

  I_jk > 0 for a loss means the pair is redundant (dropping both costs less than the sum of
  dropping each); I_jk < 0 means synergy. Zero for every pair under a linear surrogate.
  """
  K = _num_tasks(surrogate, num_tasks)
  if K < 2:
    raise ValueError(f"surrogate: pairwise interactions need at least 2 tasks; this one has K={K}")
  g_full = surrogate.predict(subsets_lib.full(K))[0]
  g_loo = surrogate.predict(subsets_lib.leave_one_out(K))
  masks, pairs = subsets_lib.leave_two_out(K)
  g_lto = surrogate.predict(masks)
  j, k = pairs[:, 0], pairs[:, 1]
  vals = g_full - g_loo[j] - g_loo[k] + g_lto
  _finite(vals, "pairwise interactions", row="pair")
  out = jnp.zeros((K, K, g_full.shape[0]), g_lto.dtype)
  return out.at[j, k].set(vals).at[k, j].set(vals)


@x64
def shapley(surrogate, num_tasks: int | None, key, num_permutations: int = 256):
  """Monte-Carlo Shapley values of each task in the game v(s) = g(s).

  Permutations come in antithetic pairs (a permutation and its reverse), which cancels the
  first-order part of the sampling noise. Returns (values [K, T], standard_errors [K, T]); the
  values of each permutation sum to g(1) - g(0) exactly (efficiency). With K = 1 the one value is
  g(1) - g(0) and its error 0; with num_permutations < 4 there is one antithetic pair and the
  standard errors are NaN (no spread to estimate them from).
  """
  K = _num_tasks(surrogate, num_tasks)
  half = max(1, _checks.positive_int(num_permutations, "num_permutations") // 2)
  perms = jax.vmap(lambda k: jax.random.permutation(k, K))(jax.random.split(key, half))
  perms = jnp.concatenate([perms, perms[:, ::-1]])                       # [P, K]
  # Prefix masks: row i of permutation p holds its first i tasks.
  position = jnp.argsort(perms, axis=1)                                  # position of task in perm
  prefix = position[:, None, :] < jnp.arange(K + 1)[None, :, None]        # [P, K+1, K]
  g = surrogate.predict(prefix.reshape(-1, K)).reshape(2 * half, K + 1, -1)
  marginal_in_order = g[:, 1:] - g[:, :-1]                               # [P, K, T], by position
  contrib = jnp.take_along_axis(marginal_in_order, position[:, :, None], axis=1)  # by task
  pair_means = 0.5 * (contrib[:half] + contrib[half:])
  values = _finite(pair_means.mean(0), "Shapley values")
  stderr = pair_means.std(0, ddof=1) / jnp.sqrt(half) if half > 1 else jnp.full_like(values, jnp.nan)
  return values, stderr


@functools.partial(jax.jit, static_argnames=("n",))
def _greedy_max_variance(C, surr, n):
  """Picks n candidates one at a time, each time the one of largest posterior variance given the
  fitted data and the picks so far (noise = ridge), so a batch never holds near-duplicates."""
  Kc = surr.gram(C)
  A = Kc @ surr.var_matrix
  var = kernels.diag(surr.kernel, C, surr.gamma, surr.degree, surr.coef0) - jnp.sum(A * Kc, 1)
  U = jnp.zeros((n, C.shape[0]))

  def step(t, carry):
    var, U, picked, picked_var = carry
    j = jnp.argmax(var)
    cov = (kernels.gram(surr.kernel, C, C[j][None], surr.gamma, surr.degree, surr.coef0)[:, 0]
           - A @ Kc[j] - U.T @ U[:, j])
    u = cov / jnp.sqrt(jnp.maximum(var[j], 0.0) + surr.ridge)
    new_var = (var - u ** 2).at[j].set(-jnp.inf)
    return new_var, U.at[t].set(u), picked.at[t].set(j.astype(picked.dtype)), picked_var.at[t].set(var[j])

  init = (var, U, jnp.zeros(n, jnp.int32), jnp.zeros(n))
  _, _, picked, picked_var = jax.lax.fori_loop(0, n, step, init)
  return picked, picked_var


def _distinct_available(basis, K: int, size: int | None):
  """(subsets the sampler can draw, of them not fitted yet) as exact integers."""
  if size is None:
    total, fitted = 1 << K, len(basis)
  else:
    total, fitted = math.comb(K, size), int(np.sum(basis.sum(1) == size))
  return total, max(total - fitted, 0)


@x64
def suggest_subsets(surrogate, key, n: int, *, num_candidates: int = 4096, size: int | None = None,
                    p: float | None = None, candidates=None):
  """Active sampling: the n candidate subsets whose outcome the surrogate is least sure of.

  Candidates are drawn like the fitted design (fixed size if every fitted subset had the same
  size, else Bernoulli with the fitted density; override with `size` or `p`), or given as
  `candidates` [c, K] (e.g. a pool of subsets whose outcomes exist already; `key` is then unused),
  minus subsets already fitted (for a Nystrom surrogate only its inducing subsets are known as
  fitted). Returns (subsets bool [n, K], posterior variances [n] at the time each was picked).
  When fewer than n new distinct subsets come out, one line says why: the design has no more
  (K too small, or every subset of that size fitted already: lower n) or the draws found too few
  (raise num_candidates).
  """
  if not isinstance(surrogate, KernelSurrogate):
    raise ValueError(f"surrogate: suggest_subsets needs a KernelSurrogate (posterior variance), got {type(surrogate).__name__}")
  n = _checks.positive_int(n, "n")
  K = surrogate.num_tasks
  basis = np.asarray(surrogate.basis) > 0.5
  sizes = basis.sum(1)
  if candidates is not None:
    cand = _checks.as_subsets(candidates, "candidates", num_tasks=K)
    given = len(cand)
  else:
    num_candidates = _checks.positive_int(num_candidates, "num_candidates")
    if size is None and p is None and np.all(sizes == sizes[0]):
      size = int(sizes[0])
    cand = np.asarray(subsets_lib.fixed_size(key, num_candidates, K, size, distinct=False) if size is not None else
                      subsets_lib.bernoulli(key, num_candidates, K, float(p if p is not None else basis.mean())))
  cand = np.unique(cand, axis=0)
  seen = {row.tobytes() for row in basis}
  cand = cand[[row.tobytes() not in seen for row in cand]]
  if len(cand) < n:
    if candidates is not None:
      raise ValueError(f"candidates: only {len(cand)} of the {given} given are distinct subsets not fitted yet, fewer "
                       f"than n={n}; pass more candidates or a smaller n")
    total, available = _distinct_available(basis, K, size)
    design = f"subsets of size {size}" if size is not None else "subsets"
    if available == 0:
      raise ValueError(f"n: all {total} {design} of K={K} tasks are fitted already; none is left to suggest (K is too "
                       "small)")
    if available < n:
      raise ValueError(f"n: only {available} of the {total} {design} of K={K} tasks are not fitted yet, fewer than "
                       f"n={n}; ask for at most {available} (K is too small for more)")
    raise ValueError(f"num_candidates: {num_candidates} draws gave {len(cand)} new distinct subsets, fewer than n={n}; "
                     f"raise num_candidates ({available} new {design} exist)")
  picked, var = _greedy_max_variance(jnp.asarray(cand, jnp.float64), surrogate, n)
  return jnp.asarray(cand[np.asarray(picked)]), var
