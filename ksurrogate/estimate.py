"""F(S) without retraining: a convex solve per subset in the linearized, projected model.

For subset s, with the training examples' features (offsets o0(x), projected gradients phi(x)),
  z_s = argmin_z  sum_{x in tasks(s)} loss(o0(x) + phi(x) z, y(x)) + (ridge / 2) ||z||^2
and F_hat(s) = loss (or margin) of o0(x_t) + phi(x_t) z_s on each target example x_t.

Two solvers, both `vmap`ped over subsets and `jit`ted, chunked over subsets to bound memory:
- "newton": fixed-iteration Newton on all examples of the subset (exact Hessian, step chosen among
  {1, 1/2, ..., 1/16, 0} by objective value, so the objective never increases). Costs
  O(N C d^2 + d^3) per iteration per subset.
- "onestep": one Newton step from z = 0 built from per-task sufficient statistics
  (g_k = sum_{x in k} phi^T r(x), H_k = sum_{x in k} phi^T W(x) phi at z = 0), so each subset
  costs O(K d^2 + d^3) whatever the number of examples. Statistics stream over example batches, so
  they work on memory-mapped features larger than RAM.
`ridge` scales against a *sum* over examples: choose it with `calibrate_ridge` on a few real
fine-tunes (the estimator approximates fine-tuning, so that is what it should match).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ksurrogate import _checks
from ksurrogate import metrics
from ksurrogate._util import pad_rows
from ksurrogate.features import Features, margin

METHODS = ("newton", "onestep")
OUTCOMES = ("loss", "margin")
_STEP_SIZES = jnp.array([1.0, 0.5, 0.25, 0.125, 0.0625, 0.0])


# ----------------------------------------------------------------------------------------------
# Per-example loss in output space: value, gradient r = dloss/do, and the Gauss-Newton pieces.

def _outputs(phi, o0, z):
  return o0 + jnp.einsum("ncd,d->nc", phi, z)


def _loss(o, y, output):
  if output == "logits":
    return jax.nn.logsumexp(o, axis=-1) - jnp.take_along_axis(o, y[:, None], axis=-1)[:, 0]
  return jax.nn.softplus(-o[:, 0])


def _grad_and_hessian(phi, o, y, w, output):
  """Gradient [d] and Hessian [d, d] of sum_n w_n loss(o_n) with respect to z (o = o0 + phi z)."""
  if output == "logits":
    p = jax.nn.softmax(o, axis=-1)
    r = p - jax.nn.one_hot(y, o.shape[-1], dtype=o.dtype)
    g = jnp.einsum("ncd,nc->d", phi, w[:, None] * r)
    pA = jnp.einsum("nc,ncd->nd", p, phi)            # p^T phi per example
    H = (jnp.einsum("ncd,nce->de", phi * (w[:, None] * p)[..., None], phi)
         - jnp.einsum("nd,ne->de", pA * w[:, None], pA))
    return g, H
  m = o[:, 0]
  A = phi[:, 0]
  g = A.T @ (w * -jax.nn.sigmoid(-m))
  H = (A * (w * jax.nn.sigmoid(m) * jax.nn.sigmoid(-m))[:, None]).T @ A
  return g, H


def _solve_spd(H, g):
  return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(H, lower=True), g)


@functools.partial(jax.jit, static_argnames=("output", "num_iters"))
def _newton_chunk(W, phi, o0, y, ridge, *, output, num_iters):
  """W [s, N] example weights of a chunk of subsets -> z [s, d]."""
  d = phi.shape[-1]
  eye = jnp.eye(d, dtype=phi.dtype)

  def objective(z, w):
    return jnp.sum(w * _loss(_outputs(phi, o0, z), y, output)) + 0.5 * ridge * z @ z

  def solve(w):
    def step(_, z):
      g, H = _grad_and_hessian(phi, _outputs(phi, o0, z), y, w, output)
      delta = _solve_spd(H + ridge * eye, g + ridge * z)
      cands = z[None] - _STEP_SIZES[:, None] * delta[None]
      vals = jax.vmap(lambda c: objective(c, w))(cands)
      return cands[jnp.argmin(jnp.where(jnp.isfinite(vals), vals, jnp.inf))]
    return jax.lax.fori_loop(0, num_iters, step, jnp.zeros(d, phi.dtype))

  return jax.vmap(solve)(W)


@jax.jit
def _onestep_chunk(S, g_K, H_K, ridge):
  """S [s, K] float -> z [s, d] = -(sum_k s_k H_k + ridge I)^-1 sum_k s_k g_k."""
  d = g_K.shape[1]
  H = jnp.einsum("sk,kde->sde", S, H_K) + ridge * jnp.eye(d, dtype=H_K.dtype)
  return -jax.vmap(_solve_spd)(H, S @ g_K)


@functools.partial(jax.jit, static_argnames=("output", "outcome"))
def _target_outcomes(Z, phi_t, o0_t, y_t, *, output, outcome):
  """Z [s, d] -> [s, T] target losses or margins."""
  def one(z):
    o = _outputs(phi_t, o0_t, z)
    if outcome == "loss":
      return _loss(o, y_t, output)
    return o[:, 0] if output == "margin" else jax.vmap(margin)(o, y_t)
  return jax.vmap(one)(Z)


# ----------------------------------------------------------------------------------------------
# Validation.

def _check_features(feats, name):
  if not isinstance(feats, Features):
    raise ValueError(f"{name}: expected ksurrogate.features.Features, got {type(feats).__name__}")
  phi = feats.phi
  if phi.ndim != 3 or feats.offsets.shape != phi.shape[:2] or len(feats.labels) != phi.shape[0]:
    raise ValueError(f"{name}: inconsistent shapes phi {phi.shape}, offsets {feats.offsets.shape}, labels {np.shape(feats.labels)}")
  for start in range(0, phi.shape[0], 4096):   # in blocks: phi may be a memmap larger than RAM
    if not np.all(np.isfinite(np.asarray(phi[start:start + 4096]))):
      raise ValueError(f"{name}: features contain non-finite values (examples {start}..{start + 4095})")
  if not np.all(np.isfinite(np.asarray(feats.offsets))):
    raise ValueError(f"{name}: offsets contain non-finite values")


def _check_inputs(train, task_ids, S, target):
  _check_features(train, "train")
  _check_features(target, "target")
  if train.dim != target.dim or train.output != target.output or train.phi.shape[1] != target.phi.shape[1]:
    raise ValueError(f"target: features (output={target.output}, shape {target.phi.shape[1:]}) do not match train "
                     f"(output={train.output}, shape {train.phi.shape[1:]})")
  S, task_ids = _checks.subsets_with_tasks(S, task_ids, train.num_examples)
  return task_ids, S


def _chunks(n, size):
  return [(i, min(i + size, n)) for i in range(0, n, size)]


# ----------------------------------------------------------------------------------------------
# Public API.

def task_statistics(train: Features, task_ids, num_tasks: int, *, batch_size: int = 1024):
  """Per-task gradient g [K, d] and Gauss-Newton Hessian H [K, d, d] of the loss at z = 0,
  streamed over example batches (phi may be a memmap)."""
  task_ids = np.asarray(task_ids)
  d = train.dim
  g_K = np.zeros((num_tasks, d), np.float64)
  H_K = np.zeros((num_tasks, d, d), np.float64)
  stat = jax.jit(lambda phi, o, y, w: _grad_and_hessian(phi, o, y, w, train.output))
  for k in range(num_tasks):
    rows = np.flatnonzero(task_ids == k)
    for a, b in _chunks(len(rows), batch_size):
      idx = rows[a:b]
      w = np.zeros(batch_size, np.float32)
      w[:len(idx)] = 1.0
      idx = pad_rows(idx, batch_size)
      g, H = stat(jnp.asarray(train.phi[idx]), jnp.asarray(train.offsets[idx]), jnp.asarray(train.labels[idx]), jnp.asarray(w))
      g_K[k] += np.asarray(g)
      H_K[k] += np.asarray(H)
  return g_K, H_K


def estimate(train: Features, task_ids, S, target: Features, *, ridge: float, method: str = "newton",
             num_iters: int = 8, outcome: str = "loss", chunk_size: int | None = None, stats=None,
             return_params: bool = False):
  """F_hat [m, T] for every subset row of S [m, K] (bool), on the target examples.

  task_ids [N] gives each training example's task. `stats` reuses `task_statistics` output for
  method="onestep". With `return_params`, also returns z [m, d].
  """
  _checks.choice(method, METHODS, "method")
  _checks.choice(outcome, OUTCOMES, "outcome")
  if not ridge > 0:
    raise ValueError(f"ridge: must be positive, got {ridge}")
  task_ids, S = _check_inputs(train, task_ids, S, target)
  m, K = S.shape
  phi_t, o0_t, y_t = (jnp.asarray(a) for a in (target.phi, target.offsets, target.labels))
  if method == "onestep":
    g_K, H_K = stats if stats is not None else task_statistics(train, task_ids, K)
    g_K, H_K = jnp.asarray(g_K, jnp.float32), jnp.asarray(H_K, jnp.float32)
    chunk_size = chunk_size or max(1, min(m, (1 << 28) // (4 * train.dim ** 2)))
  else:
    phi, o0, y = (jnp.asarray(a) for a in (train.phi, train.offsets, train.labels))
    N, C, d = train.phi.shape
    # Per-subset working set of the Hessian build is about N*C*d floats; keep a chunk near 1 GiB.
    chunk_size = chunk_size or max(1, min(m, (1 << 28) // max(1, N * C * d + d * d)))
  Z = np.empty((m, train.dim), np.float32)
  for a, b in _chunks(m, chunk_size):
    S_c = pad_rows(S[a:b], chunk_size)
    if method == "onestep":
      z = _onestep_chunk(jnp.asarray(S_c, jnp.float32), g_K, H_K, ridge)
    else:
      z = _newton_chunk(jnp.asarray(S_c[:, task_ids], jnp.float32), phi, o0, y, ridge,
                        output=train.output, num_iters=num_iters)
    Z[a:b] = np.asarray(z)[:b - a]
  F_hat = np.concatenate([np.asarray(_target_outcomes(jnp.asarray(Z[a:b]), phi_t, o0_t, y_t, output=train.output,
                                                      outcome=outcome)) for a, b in _chunks(m, 1024)])
  return (F_hat, Z) if return_params else F_hat


def calibrate_ridge(train: Features, task_ids, target: Features, S, F_real, *, grid=None, criterion: str = "relative_error",
                    **kwargs):
  """Picks the ridge whose estimates best match real outcomes F_real [m, T] on a few subsets S.

  criterion "relative_error" (smallest median relative error: the estimate as a stand-in for
  fine-tuning from theta0) or "lds" (largest LDS: the estimate as a ranking of subsets, e.g. against
  retrains from scratch). Returns (ridge, {ridge: criterion value}).
  """
  _checks.choice(criterion, ("relative_error", "lds"), "criterion")
  grid = 10.0 ** np.arange(-3, 4) if grid is None else np.asarray(grid, np.float64)
  F_real = np.asarray(F_real)
  score = ((lambda F: metrics.relative_error(F, F_real)["median"]) if criterion == "relative_error"
           else (lambda F: metrics.lds(F, F_real)))
  table = {float(r): score(estimate(train, task_ids, S, target, ridge=float(r), **kwargs)) for r in grid}
  finite = [r for r in table if np.isfinite(table[r])] or list(table)
  best = (max if criterion == "lds" else min)(finite, key=table.get)
  return best, table
