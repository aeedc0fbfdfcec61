"""Attribution readouts from any fitted surrogate g, plus active selection of new inputs.

Sign convention: predicted leave-one-out A_k = g(1 - e_k) - g(1). With a loss outcome,
A_k > 0 means removing task k raises the target loss, i.e. task k helps the target.

On a surrogate fitted on task weights or mixtures (its `domain`, `ksurrogate.inputs`) "removing
task k" sets its weight to 0 (and on the simplex renormalizes the rest), read at a point `at`
(default: every task present, the uniform mixture on the simplex), and the interactions are the
same four-point difference of removals; Shapley values exist only on subsets. Gradients and
Hessians at a mixture: `ksurrogate.mixtures`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ksurrogate import _checks
from ksurrogate import families
from ksurrogate import inputs
from ksurrogate import subsets as subsets_lib
from ksurrogate._util import x64


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


def _removals(surrogate, at, drop):
  """g at `at` [K] with each row of `drop` (bool [P, K]) removed, and g at `at` itself: ([P, T], [T])."""
  domain = inputs.domain_of(surrogate)
  rows = inputs.removed(at, drop, domain)
  if domain == "subsets":
    rows = rows > 0.5
  return surrogate.predict(rows), surrogate.predict(at[None] > 0.5 if domain == "subsets" else at[None])[0]


@x64
def predicted_loo(surrogate, num_tasks: int | None = None, *, at=None) -> jax.Array:
  """[K, T]: g(1 - e_k) - g(1). With K = 1 that is g(empty set) - g({task 0}).

  Args:
    surrogate: a fitted surrogate (`predict`).
    num_tasks: K, checked against the surrogate's when given.
    at: the point read at (default: all tasks present, `inputs.reference`): a subset, or on a
      surrogate of weights / mixtures a weight vector / mixture; task k is removed from it
      (`inputs.removed`: weight 0, renormalized on the simplex).

  Returns:
    [K, T] predicted effects g(at without k) - g(at).

  Raises:
    ValueError: when num_tasks differs from the surrogate's, `at` is invalid in its domain, or the
      predictions are non-finite.
  """
  K = _num_tasks(surrogate, num_tasks)
  if at is None and inputs.domain_of(surrogate) == "subsets":
    loo = surrogate.predict(subsets_lib.leave_one_out(K)) - surrogate.predict(subsets_lib.full(K))
  else:
    at = inputs.point(at, inputs.domain_of(surrogate), K)
    g_drop, g_at = _removals(surrogate, at, np.eye(K, dtype=bool))
    loo = g_drop - g_at
  return _finite(loo, "predicted leave-one-out values")


@x64
def predicted_drop(surrogate, drop, *, at=None) -> jax.Array:
  """[P, T]: g(at without the tasks of drop[p]) - g(at), for P sets of tasks removed at once.

  `predicted_loo` is its case of single tasks. With pairs it gives the drop-two effects that a
  leave-two-out truth measures, where an additive surrogate and an interacting one differ.

  Args:
    surrogate: a fitted surrogate.
    drop: bool [P, K], the tasks each row removes (at least one each).
    at: the point read at, as in `predicted_loo` (default: all tasks present).

  Returns:
    [P, T] predicted effects.

  Raises:
    ValueError: when drop is not bool [P, K] with a task in every row, `at` is invalid, or the
      predictions are non-finite.
  """
  K = surrogate.num_tasks
  drop = np.asarray(drop)
  if drop.dtype != bool or drop.ndim != 2 or drop.shape[1] != K:
    raise ValueError(f"drop: expected bool [P, {K}], got {drop.dtype} {drop.shape}")
  if not drop.any(1).all():
    raise ValueError(f"drop: rows {np.flatnonzero(~drop.any(1)).tolist()} remove no task")
  at = inputs.point(at, inputs.domain_of(surrogate), K)
  g_drop, g_at = _removals(surrogate, at, drop)
  return _finite(g_drop - g_at, "predicted removal effects", row="row")


def pair_interactions(drop, loo, pairs) -> np.ndarray:
  """The interactions of task pairs from their drop-two and leave-one-out effects:
  I_ab = drop(a, b) - loo(a) - loo(b), i.e. F(1) - F(1 - e_a) - F(1 - e_b) + F(1 - e_a - e_b) when
  both are effects against F(1) (measured or predicted: `predicted_drop`, `predicted_loo`).

  Args:
    drop: [..., P, T] effects of removing both tasks of each pair.
    loo: [..., K, T] leave-one-out effects, the same leading axes.
    pairs: [(a, b)] P task pairs.

  Returns:
    [..., P, T] (numpy).

  Raises:
    ValueError: when pairs is not [P, 2] with P = drop's rows.
  """
  drop, loo = np.asarray(drop), np.asarray(loo)
  pairs = np.asarray(pairs)
  if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) != drop.shape[-2]:
    raise ValueError(f"pairs: expected [{drop.shape[-2]}, 2] for drop {drop.shape}, got {pairs.shape}")
  return drop - loo[..., pairs[:, 0], :] - loo[..., pairs[:, 1], :]


@x64
def interactions(surrogate, num_tasks: int | None = None, *, at=None) -> jax.Array:
  """[K, K, T]: I_jk = g(1) - g(1 - e_j) - g(1 - e_k) + g(1 - e_j - e_k); zero diagonal.

  I_jk > 0 for a loss means the pair is redundant (dropping both costs less than the sum of
  dropping each); I_jk < 0 means synergy. Zero for every pair under a linear surrogate (on
  subsets, or on weights with the identity map).

  Args:
    surrogate: a fitted surrogate.
    num_tasks: K, checked against the surrogate's when given.
    at: the point the removals start from, as in `predicted_loo` (default: all tasks present).

  Returns:
    [K, K, T], symmetric with a zero diagonal.

  Raises:
    ValueError: when K < 2, num_tasks differs from the surrogate's, `at` is invalid, or the
      predictions are non-finite.
  """
  K = _num_tasks(surrogate, num_tasks)
  if K < 2:
    raise ValueError(f"surrogate: pairwise interactions need at least 2 tasks; this one has K={K}")
  masks, pairs = subsets_lib.leave_two_out(K)
  if at is None and inputs.domain_of(surrogate) == "subsets":
    g_full = surrogate.predict(subsets_lib.full(K))[0]
    g_loo = surrogate.predict(subsets_lib.leave_one_out(K))
    g_lto = surrogate.predict(masks)
  else:
    at = inputs.point(at, inputs.domain_of(surrogate), K)
    g_loo, g_full = _removals(surrogate, at, np.eye(K, dtype=bool))
    g_lto, _ = _removals(surrogate, at, ~np.asarray(masks))
  j, k = pairs[:, 0], pairs[:, 1]
  vals = g_full - g_loo[j] - g_loo[k] + g_lto
  _finite(vals, "pairwise interactions", row="pair")
  out = jnp.zeros((K, K, g_full.shape[0]), g_lto.dtype)
  return out.at[j, k].set(vals).at[k, j].set(vals)


@x64
def shapley(surrogate, num_tasks: int | None, key, num_permutations: int = 256):
  """Monte-Carlo Shapley values of each task in the game v(s) = g(s).

  Permutations come in antithetic pairs (a permutation and its reverse), which cancels the
  first-order part of the sampling noise. The values of each permutation sum to g(1) - g(0)
  exactly (efficiency). With K = 1 the one value is g(1) - g(0) and its error 0; with
  num_permutations < 4 there is one antithetic pair and the standard errors are NaN (no spread to
  estimate them from).

  Args:
    surrogate: a surrogate fitted on subsets.
    num_tasks: K, checked against the surrogate's; None takes the surrogate's.
    key: a `jax.random.key` for the permutations.
    num_permutations: permutations drawn (rounded down to an even count, at least 2).

  Returns:
    (values [K, T], standard_errors [K, T]), the errors over the antithetic pairs' means.

  Raises:
    ValueError: when the surrogate was fitted on weights or mixtures, num_tasks differs from the
      surrogate's, num_permutations is not a positive integer, or the values are non-finite.
  """
  K = _num_tasks(surrogate, num_tasks)
  domain = inputs.domain_of(surrogate)
  if domain != "subsets":
    raise ValueError(f"surrogate: Shapley values are a game on subsets; this surrogate was fitted on {domain} inputs "
                     "(read removals with predicted_loo, local effects with ksurrogate.mixtures.gradient)")
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


def _greedy_max_variance(surrogate, C, n):
  """Picks n of the candidates C one at a time, each time the one of largest posterior variance
  given the fitted data and the picks so far (noise = the surrogate's noise variance), so a batch
  never holds near-duplicates. Through the "variance" readout's methods only: `predict_variance`
  and `posterior_covariance`."""
  var = np.asarray(surrogate.predict_variance(C), np.float64).copy()
  noise = float(getattr(surrogate, "noise_variance", 0.0))
  U = np.zeros((n, len(C)))
  picked, picked_var = np.zeros(n, np.int64), np.zeros(n)
  for t in range(n):
    j = int(np.argmax(var))
    cov = np.asarray(surrogate.posterior_covariance(C, C[j:j + 1]))[:, 0] - U[:t].T @ U[:t, j]
    u = cov / np.sqrt(max(var[j], 0.0) + noise)
    picked[t], picked_var[t] = j, var[j]
    var = var - u ** 2
    var[j] = -np.inf
    U[t] = u
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
                    p: float | None = None, candidates=None, return_index: bool = False):
  """Active sampling: the n candidates whose outcome the surrogate is least sure of.

  For any surrogate that declares the "variance" readout (`READOUTS`; it provides
  `predict_variance` and `posterior_covariance`). On subsets, candidates are drawn like the
  fitted design (fixed size if every fitted subset had the same size, else Bernoulli with the
  fitted density; override with `size` or `p`), or given as `candidates` [c, K] (e.g. a pool of
  subsets whose outcomes exist already; `key` is then unused). On task weights or mixtures the
  candidates must be given (a pool: the runs one could make next). Either way rows already
  fitted are left out (for a Nystrom surrogate only its inducing rows are known as fitted).
  When fewer than n new distinct candidates come out, one line says why: the design has no more
  (K too small, or every subset of that size fitted already: lower n) or the draws found too few
  (raise num_candidates).

  Args:
    surrogate: a fitted surrogate declaring "variance".
    key: a jax.random key for the drawn candidates (unused with `candidates`).
    n: how many to pick.
    num_candidates: how many subset candidates are drawn.
    size: draw candidates of exactly this size (None: the fitted design's, as above).
    p: draw Bernoulli(p) candidates (None: the fitted density).
    candidates: [c, K] rows in the surrogate's domain to pick from.
    return_index: also return each pick's row in `candidates`.

  Returns:
    (rows [n, K], posterior variances [n] at the time each was picked), and with `return_index`
    their rows in `candidates` [n].

  Raises:
    ValueError: when the surrogate does not declare "variance", n is not a positive integer,
      candidates are invalid or missing (weights / mixtures), or fewer than n new distinct
      candidates exist (the message says which of the reasons above).
  """
  if "variance" not in families.readouts(surrogate):
    raise ValueError(f"surrogate: suggest_subsets needs a surrogate that declares the 'variance' readout (posterior "
                     f"variance); {type(surrogate).__name__} declares {families.readouts(surrogate)}")
  n = _checks.positive_int(n, "n")
  K = surrogate.num_tasks
  domain = inputs.domain_of(surrogate)
  given = None
  if candidates is not None:
    cand = inputs.check(candidates, domain, K, "candidates")
    given = len(cand)
  elif domain != "subsets":
    raise ValueError(f"candidates: a surrogate fitted on {domain} inputs draws no candidates itself; pass the pool to "
                     "pick from (e.g. ksurrogate.mixtures.sample_dirichlet of a fitted prior)")
  if domain == "subsets":
    basis = np.asarray(surrogate.basis) > 0.5
    sizes = basis.sum(1)
    if candidates is None:
      num_candidates = _checks.positive_int(num_candidates, "num_candidates")
      if size is None and p is None and np.all(sizes == sizes[0]):
        size = int(sizes[0])
      cand = np.asarray(subsets_lib.fixed_size(key, num_candidates, K, size, distinct=False) if size is not None else
                        subsets_lib.bernoulli(key, num_candidates, K, float(p if p is not None else basis.mean())))
    seen = {row.tobytes() for row in basis}
    mapped = cand
  else:
    basis = np.asarray(getattr(surrogate, "basis", np.zeros((0, K))))
    seen = {row.tobytes() for row in basis}
    mapped = np.asarray(getattr(surrogate, "input_map", inputs.IDENTITY)(cand))
  _, first = np.unique(cand, axis=0, return_index=True)
  keep = np.array([i for i in first if mapped[i].tobytes() not in seen], np.int64)
  if len(keep) < n:
    if candidates is not None:
      noun = "subsets" if domain == "subsets" else "rows"
      raise ValueError(f"candidates: only {len(keep)} of the {given} given are distinct {noun} not fitted yet, fewer "
                       f"than n={n}; pass more candidates or a smaller n")
    total, available = _distinct_available(basis, K, size)
    design = f"subsets of size {size}" if size is not None else "subsets"
    if available == 0:
      raise ValueError(f"n: all {total} {design} of K={K} tasks are fitted already; none is left to suggest (K is too "
                       "small)")
    if available < n:
      raise ValueError(f"n: only {available} of the {total} {design} of K={K} tasks are not fitted yet, fewer than "
                       f"n={n}; ask for at most {available} (K is too small for more)")
    raise ValueError(f"num_candidates: {num_candidates} draws gave {len(keep)} new distinct subsets, fewer than n={n}; "
                     f"raise num_candidates ({available} new {design} exist)")
  picked, var = _greedy_max_variance(surrogate, cand[keep], n)
  rows = jnp.asarray(cand[keep][picked])
  if return_index:
    return rows, jnp.asarray(var), keep[picked]
  return rows, jnp.asarray(var)
