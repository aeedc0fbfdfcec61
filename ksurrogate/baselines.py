"""Gradient-based attribution baselines, aggregated per task, in the predicted-LOO convention
(positive = removing the task raises the target loss, i.e. the task helps the target).

- `influence`: I_k = -grad L_t^T (C + lambda I)^-1 grad L_k with C the Gauss-Newton curvature
  (default) or the Hessian of the summed training loss, matrix-vector products by `jax.jvp` /
  `jax.vjp`, solved by conjugate gradient (`jax.scipy.sparse.linalg.cg`), lambda relative to C's
  mean eigenvalue and raised until every solve converges. Predicted LOO = -I_k.
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
from ksurrogate import _checks
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


CURVATURES = ("gauss_newton", "hessian")


def influence(apply_fn: Callable, params, X, y, task_ids, X_target, y_target, *, num_tasks: int,
              curvature: str = "gauss_newton", damping: float = 0.1, cg_iters: int = 200, cg_tol: float = 1e-5,
              max_damping_raises: int = 4, num_probes: int = 16, loss_fn: Callable = cross_entropy,
              batch_size: int = 256, seed: int = 0, return_info: bool = False):
  """Predicted LOO [K, T] from task-level influence functions: grad L_k^T (C + lambda I)^-1 grad l_t.

  `curvature` C of the summed training loss: "gauss_newton" (default) J^T Lambda J, with Lambda the
  loss's second derivative in the model's outputs — positive semi-definite, so conjugate gradient
  converges on any model (the Fisher / GGN that EK-FAC-style influence libraries use); "hessian"
  the exact Hessian, which has negative eigenvalues on a non-convex model (CG then needs lambda
  above the most negative one, and its answer hangs on lambda and the iteration count).
  `damping` is RELATIVE: lambda = damping x the curvature's mean eigenvalue, trace(C) / D, from a
  Hutchinson estimate with `num_probes` Rademacher probes, so the same value means the same on
  any model size or number of examples.

  No score comes from an unconverged solve: every task's solve is checked (relative residual
  ||(C + lambda I) x - g|| / ||g|| <= `cg_tol` within `cg_iters` iterations), and while any fails
  the damping is raised tenfold (from 0, first to 1e-3) and every task solved again at the new
  damping (one damping for all tasks, so their scores stay comparable), at most
  `max_damping_raises` times; if the last still fails, one line says so. A larger damping shrinks
  the condition number (lambda_max + lambda) / (lambda_min + lambda) towards 1, so CG converges,
  at the price of scores nearer a plain gradient dot product; the damping finally used is
  reported. With `return_info`, returns (scores, info): info = {"damping": used,
  "damping_requested", "damping_raises", "lambda": the absolute lambda, "max_relative_residual",
  "cg_iters", "cg_tol"} (JSON-able, for a run's summary).

  Args:
    apply_fn: the model, apply(params, X [B, ...]) -> outputs [B, ...].
    params: the trained parameters (a pytree).
    X: [N, ...] training examples.
    y: [N, ...] their labels.
    task_ids: int [N], each example's task in [0, K).
    X_target: [T, ...] target examples.
    y_target: [T, ...] their labels.
    num_tasks: K (positive).
    curvature: "gauss_newton" or "hessian".
    damping: the relative damping (>= 0), as above.
    cg_iters: CG iterations per solve (positive).
    cg_tol: the relative residual a solve must reach (positive).
    max_damping_raises: tenfold damping raises allowed (a non-negative integer).
    num_probes: Hutchinson probes of the mean eigenvalue (positive).
    loss_fn: (outputs, labels) -> per-example losses; default the integer-label cross-entropy.
    batch_size: examples per gradient batch.
    seed: the seed of the probes.
    return_info: also return the solve's info dict.

  Returns:
    float [K, T] scores (numpy), or (scores, info) with `return_info`.

  Raises:
    ValueError: on an unknown curvature, bad numeric settings, a non-finite curvature estimate or
      task gradients, or CG that does not converge after the last damping raise.
  """
  _checks.choice(curvature, CURVATURES, "curvature")
  damping = _checks.positive_number(damping, "damping", allow_zero=True)
  cg_iters = _checks.positive_int(cg_iters, "cg_iters")
  cg_tol = _checks.positive_number(cg_tol, "cg_tol")
  if isinstance(max_damping_raises, bool) or int(max_damping_raises) != max_damping_raises or max_damping_raises < 0:
    raise ValueError(f"max_damping_raises: expected a non-negative integer, got {max_damping_raises!r}")
  num_probes = _checks.positive_int(num_probes, "num_probes")
  num_tasks = _checks.positive_int(num_tasks, "num_tasks")
  flat, unravel = ravel_pytree(params)
  loss = _flat_loss(apply_fn, unravel, loss_fn)
  X, y = jnp.asarray(X), jnp.asarray(y)
  matvec = _curvature_matvec(curvature, apply_fn, unravel, loss_fn, flat, X, y)
  probes = jax.random.rademacher(jax.random.key(seed), (num_probes, flat.size), dtype=flat.dtype)
  mean_eig = abs(float(jnp.mean(jax.vmap(lambda v: v @ matvec(v))(probes))) / flat.size)
  if not np.isfinite(mean_eig):
    raise ValueError(f"params: the curvature's mean eigenvalue is {mean_eig} (non-finite parameters or loss)")

  @jax.jit
  def solve(b, x0, lam):
    A = lambda v: matvec(v) + lam * v  # noqa: E731
    x = jax.scipy.sparse.linalg.cg(A, b, x0=x0, maxiter=cg_iters, tol=cg_tol * 0.1)[0]
    return x, jnp.linalg.norm(A(x) - b) / jnp.maximum(jnp.linalg.norm(b), 1e-30)

  g_K = _task_gradients(loss, flat, X, y, np.asarray(task_ids), num_tasks, batch_size)
  _checks.finite(np.asarray(g_K), "params", row="task", col="parameter", what="task-gradient values")
  used, Cinv_g = damping, jnp.zeros_like(g_K)
  for raises in range(int(max_damping_raises) + 1):
    if raises:
      used = used * 10.0 if used > 0 else 1e-3
    lam = jnp.asarray(used * mean_eig, flat.dtype)
    # Each solve starts from the last damping's answer: the nearest point at hand.
    solved = [solve(g, x0, lam) for g, x0 in zip(g_K, Cinv_g)]
    Cinv_g = jnp.stack([x for x, _ in solved])                               # [K, D]
    residuals = np.array([float(r) for _, r in solved])
    if np.all(residuals <= cg_tol):      # NaN residuals fail this too
      break
  else:
    bad = ~(residuals <= cg_tol)
    raise ValueError(f"damping: conjugate gradient did not converge for {int(bad.sum())} of {num_tasks} tasks even at "
                     f"damping {used:g} ({max_damping_raises} tenfold raises from {damping:g}; worst relative residual "
                     f"{np.nanmax(residuals):.2g} > cg_tol={cg_tol:g} after cg_iters={cg_iters}); raise cg_iters, "
                     "damping or max_damping_raises")
  g_T = _per_example_gradients(loss, flat, jnp.asarray(X_target), jnp.asarray(y_target), batch_size)   # [T, D]
  scores = np.asarray(Cinv_g @ g_T.T)                                       # = -I_k
  if not return_info:
    return scores
  return scores, {"damping": float(used), "damping_requested": float(damping), "damping_raises": int(raises),
                  "lambda": float(used * mean_eig), "max_relative_residual": float(residuals.max()),
                  "cg_iters": int(cg_iters), "cg_tol": float(cg_tol)}


def _curvature_matvec(curvature, apply_fn, unravel, loss_fn, flat, X, y):
  """v -> C v for the summed training loss, never forming C."""
  if curvature == "hessian":
    total = lambda f: jnp.sum(loss_fn(apply_fn(unravel(f), X), y))  # noqa: E731
    return jax.jit(lambda v: jax.jvp(jax.grad(total), (flat,), (v,))[1])
  outputs = lambda f: apply_fn(unravel(f), X)  # noqa: E731
  out0 = outputs(flat)
  output_grad = jax.grad(lambda o: jnp.sum(loss_fn(o, y)))

  @jax.jit
  def gnvp(v):
    Jv = jax.jvp(outputs, (flat,), (v,))[1]                      # J v, in output space
    LJv = jax.jvp(output_grad, (out0,), (Jv,))[1]                # Lambda J v (loss Hessian in outputs)
    return jax.vjp(outputs, flat)[1](LJv)[0]                     # J^T Lambda J v
  return gnvp


def tracin(apply_fn: Callable, checkpoints: Sequence, learning_rates: Sequence[float], X, y, task_ids,
           X_target, y_target, *, num_tasks: int, loss_fn: Callable = cross_entropy, batch_size: int = 256):
  """Predicted LOO [K, T]: sum_c lr_c grad l_t(theta_c) . grad L_k(theta_c).

  `learning_rates` are the step sizes in force at each checkpoint. TracIn's derivation assumes SGD
  steps along the gradient; for models trained with Adam (per-parameter scaled steps) the rates are
  only a heuristic weighting of the checkpoints.

  Args:
    apply_fn: the model, apply(params, X [B, ...]) -> outputs.
    checkpoints: parameter pytrees saved during training (at least one).
    learning_rates: one step size per checkpoint.
    X: [N, ...] training examples.
    y: [N, ...] their labels.
    task_ids: int [N], each example's task in [0, K).
    X_target: [T, ...] target examples.
    y_target: [T, ...] their labels.
    num_tasks: K.
    loss_fn: (outputs, labels) -> per-example losses; default the integer-label cross-entropy.
    batch_size: examples per gradient batch.

  Returns:
    float [K, T] (numpy).

  Raises:
    ValueError: when there are no checkpoints or not one learning rate per checkpoint.
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
  """Predicted-LOO-style scores [K, T] from projected margin gradients (TRAK's estimator).

  Per task k and target t: sum_{n in k} (1 - p_n) phi_n^T (Phi^T Phi + lambda I)^-1 phi_t, with
  p_n = sigmoid(margin_n) and lambda = ridge x the mean eigenvalue of Phi^T Phi.

  Args:
    train: margin `Features` of the training examples (phi [N, 1, d]).
    task_ids: int [N], each example's task in [0, K).
    target: margin `Features` of the targets (phi [T, 1, d]).
    num_tasks: K.
    ridge: the relative ridge.

  Returns:
    float32 [K, T] (numpy).

  Raises:
    ValueError: when either features are not margin features.
  """
  if train.output != "margin" or target.output != "margin":
    raise ValueError("train: trak needs margin features (features.featurize(..., output='margin'))")
  Phi = jnp.asarray(train.phi[:, 0], jnp.float32)
  Phi_t = jnp.asarray(target.phi[:, 0], jnp.float32)
  q = jax.nn.sigmoid(-jnp.asarray(train.offsets[:, 0]))      # 1 - p(correct) of each training example
  A = Phi.T @ Phi
  A = A + ridge * jnp.trace(A) / A.shape[0] * jnp.eye(A.shape[0])   # ridge relative to the mean eigenvalue
  per_task = jax.ops.segment_sum(Phi * q[:, None], jnp.asarray(task_ids), num_segments=num_tasks)   # [K, d]
  return np.asarray(per_task @ jnp.linalg.solve(A, Phi_t.T))
