"""Gradient-based attribution baselines, aggregated per task, in the predicted-LOO convention
(positive = removing the task raises the target loss, i.e. the task helps the target).

- `influence`: I_k = -grad L_t^T (H + damping I)^-1 grad L_k with H the Hessian of the summed
  training loss, Hessian-vector products by `jax.jvp` of `jax.grad`, solved by conjugate gradient
  (`jax.scipy.sparse.linalg.cg`). Predicted LOO = -I_k.
- `tracin`: sum over checkpoints c of lr_c * grad l_t(theta_c) . grad L_k(theta_c).
- `trak`: projected-gradient scores phi_t^T (Phi^T Phi + lam I)^-1 sum_{n in k} phi_n (1 - p_n) on
  margin features (TRAK's one-step Newton form, with its (1 - p) reweighting).
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ksurrogate.features import Features
from ksurrogate import batching
from ksurrogate.training import cross_entropy


def _task_gradients(loss_of_flat, flat, X, y, task_ids, num_tasks, batch_size):
  """grad of L_k = sum_{n in k} loss_n, for every task: [K, D]; streamed over example batches."""
  per_example = jax.jit(jax.vmap(jax.grad(loss_of_flat), in_axes=(None, 0, 0)))
  summed = jax.jit(lambda X_b, y_b, t_b: jax.ops.segment_sum(per_example(flat, X_b[:, None], y_b[:, None]), t_b,
                                                             num_segments=num_tasks))
  total = jnp.zeros((num_tasks, flat.size), flat.dtype)

  def add(start, stop, g):
    nonlocal total
    total = total + g

  batching.chunked_map(summed, X, y, np.asarray(task_ids), chunk_size=batch_size, pad=False, sink=add)
  return total


def _per_example_gradients(loss_of_flat, flat, X, y, batch_size):
  fn = jax.jit(jax.vmap(jax.grad(loss_of_flat), in_axes=(None, 0, 0)))
  return batching.chunked_map(lambda X_b, y_b: fn(flat, X_b[:, None], y_b[:, None]), X, y, chunk_size=batch_size)


def _flat_loss(apply_fn, unravel, loss_fn):
  return lambda flat, x, y: jnp.sum(loss_fn(apply_fn(unravel(flat), x), y))


def influence(apply_fn: Callable, params, X, y, task_ids, X_target, y_target, *, num_tasks: int,
              damping: float = 1e-3, cg_iters: int = 100, loss_fn: Callable = cross_entropy, batch_size: int = 256):
  """Predicted LOO [K, T] from task-level influence functions (see module doc).

  `damping` is added to the Hessian of the SUMMED training loss, so its effect scales with the
  number of training examples: 1e-3 is negligible next to a 10^4-example Hessian and dominant next
  to a 10-example one. On a non-convex model the Hessian has negative eigenvalues; CG on H +
  damping I only converges when damping exceeds the most negative one, and the result then
  depends on damping (and `cg_iters`) more than on the data.
  """
  if damping < 0:
    raise ValueError(f"damping: must be non-negative, got {damping}")
  flat, unravel = ravel_pytree(params)
  loss = _flat_loss(apply_fn, unravel, loss_fn)
  X, y = jnp.asarray(X), jnp.asarray(y)
  total = lambda f: loss(f, X, y)  # noqa: E731

  @jax.jit
  def hvp(v):
    return jax.jvp(jax.grad(total), (flat,), (v,))[1] + damping * v

  g_K = _task_gradients(loss, flat, X, y, np.asarray(task_ids), num_tasks, batch_size)
  solve = jax.jit(lambda b: jax.scipy.sparse.linalg.cg(hvp, b, maxiter=cg_iters, tol=1e-10)[0])
  Hinv_g = jnp.stack([solve(g) for g in g_K])                               # [K, D]
  g_T = _per_example_gradients(loss, flat, jnp.asarray(X_target), jnp.asarray(y_target), batch_size)   # [T, D]
  return np.asarray(Hinv_g @ g_T.T)                                         # = -I_k


def tracin(apply_fn: Callable, checkpoints: Sequence, learning_rates: Sequence[float], X, y, task_ids,
           X_target, y_target, *, num_tasks: int, loss_fn: Callable = cross_entropy, batch_size: int = 256):
  """Predicted LOO [K, T]: sum_c lr_c grad l_t(theta_c) . grad L_k(theta_c).

  `learning_rates` are the step sizes in force at each checkpoint. TracIn's derivation assumes SGD
  steps along the gradient; for models trained with Adam (per-parameter scaled steps) the rates are
  only a heuristic weighting of the checkpoints.
  """
  if len(checkpoints) != len(learning_rates) or not checkpoints:
    raise ValueError(f"checkpoints: need one learning rate per checkpoint, got {len(checkpoints)} and {len(learning_rates)}")
  out = 0.0
  for params, lr in zip(checkpoints, learning_rates):
    flat, unravel = ravel_pytree(params)
    loss = _flat_loss(apply_fn, unravel, loss_fn)
    g_K = _task_gradients(loss, flat, jnp.asarray(X), jnp.asarray(y), np.asarray(task_ids), num_tasks, batch_size)
    g_T = _per_example_gradients(loss, flat, jnp.asarray(X_target), jnp.asarray(y_target), batch_size)
    out = out + lr * np.asarray(g_K @ g_T.T)
  return out


def trak(train: Features, task_ids, target: Features, *, num_tasks: int, ridge: float = 1e-3):
  """Predicted-LOO-style scores [K, T] from projected margin gradients."""
  if train.output != "margin" or target.output != "margin":
    raise ValueError("train: trak needs margin features (features.featurize(..., output='margin'))")
  Phi = jnp.asarray(train.phi[:, 0], jnp.float32)
  Phi_t = jnp.asarray(target.phi[:, 0], jnp.float32)
  q = jax.nn.sigmoid(-jnp.asarray(train.offsets[:, 0]))      # 1 - p(correct) of each training example
  A = Phi.T @ Phi
  A = A + ridge * jnp.trace(A) / A.shape[0] * jnp.eye(A.shape[0])   # ridge relative to the mean eigenvalue
  per_task = jax.ops.segment_sum(Phi * q[:, None], jnp.asarray(task_ids), num_segments=num_tasks)   # [K, d]
  return np.asarray(per_task @ jnp.linalg.solve(A, Phi_t.T))
