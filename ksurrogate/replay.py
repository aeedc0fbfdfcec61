"""Estimated fine-tunes: the fine-tuning recipe replayed in the model linearized at params0.

A real fine-tune from params0 on subset s runs `steps` full-batch steps of an optimizer on the
subset's mean loss. `estimate_finetune` runs the same steps on the linearized outputs
o(theta) = o0 + J (theta - theta0), for every subset at once (`vmap` over subsets inside one `jit`),
and returns the target losses the replayed fine-tune ends with. Unlike `estimation.estimate` (the
ridge minimizer of the linearized loss) it follows the recipe's optimizer, rate and number of
steps, so a short fine-tune that stops far from any minimizer is estimated as short.

The replay runs in function space: with r_t = dL_s/do the residuals of the subset's weighted mean
loss, a full-batch step moves the outputs by -lr K r_t, K = J diag(p) J^T (p = 1 for SGD), and the
targets by -lr K_t r_t. So only kernel-vector products are needed, and they come two ways:

- example space: the exact kernel K [NC, NC] and its target rows K_t [TC, NC] from unprojected
  Jacobians (no projection error). Memory 4 (NC + TC) (D + NC) bytes (Jacobian rows, then the
  kernels); per step and subset 2 (NC)^2 FLOPs.
- parameter space: K ~ Phi Phi^T with Phi = J diag(p)^1/2 P [NC, dim], P Gaussian (D -> dim).
  Memory 4 (NC + TC) dim bytes; per step and subset 4 NC dim FLOPs; projection error ~ 1/sqrt(dim).

Cost rule (space="auto"): example space whenever its memory fits `memory_bytes`, else parameter
space. Exactness is worth more than the per-step cost (which both spaces keep far below a real
fine-tune's forward and backward passes); the chosen space is reported in `info`.

SGD is replayed exactly (up to the linearization). Adam is approximated: its momentum is linear in
the residuals and is carried exactly; its per-parameter second moment is replaced by a fixed
diagonal preconditioner p = 1 / (sqrt(v_ref) + eps) folded into the kernel, times one scalar
tracked per step, v_t ~ b_t v_ref with b_t = EMA(r^T K r) / sum_i p_i v_ref,i. v_ref is the mean
over the estimated subsets of their squared mean-loss gradient at params0 (uses the subsets S
only, never an outcome). A subset whose gradient is v_ref's then takes Adam's first step,
lr sign(g); with one parameter the replay is Adam exactly (up to eps).

Measured on the modular cpu_grokked config (BUILD_NOTES.md, "Estimated outcomes: replaying the
fine-tuning"): against 100-step Adam fine-tunes, median error 0.114 where no change gives 0.304
(output "top1", example space), LDS 0.615, 118x cheaper than a fine-tune including its setup. On
the cpu config (a model still learning) the same replay overshoots (0.243 vs 0.145); with
`calibrate` 0.116.
"""
from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ksurrogate import _checks
from ksurrogate import batching
from ksurrogate import features
from ksurrogate import metrics
from ksurrogate.estimation import OutputLoss

OPTIMIZERS = ("sgd", "adam")
SPACES = ("auto", "example", "parameter")
STEP_SCALES = tuple(2.0 ** np.arange(-2, 3))   # the learning-rate multipliers `calibrate` tries


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A full-batch fine-tuning recipe from params0: optax.sgd(lr) (no momentum) or
  optax.adam(lr, b1, b2, eps), `steps` steps on the subset's weighted mean loss."""
  optimizer: str
  lr: float
  steps: int
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8

  def __post_init__(self):
    _checks.choice(self.optimizer, OPTIMIZERS, "recipe.optimizer")
    if not (isinstance(self.lr, (int, float)) and self.lr > 0):
      raise ValueError(f"recipe.lr: must be positive, got {self.lr!r}")
    if not (isinstance(self.steps, int) and self.steps >= 1):
      raise ValueError(f"recipe.steps: must be a positive integer, got {self.steps!r}")
    if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1 and self.eps >= 0):
      raise ValueError(f"recipe.b1: b1, b2 must lie in [0, 1) and eps >= 0, got {self.b1}, {self.b2}, {self.eps}")


def _output_grads(loss: OutputLoss, o_NxC, y_N, w_N):
  """dL/do of L = sum_n w_n loss(o_n, y_n): the residuals [N, C]."""
  return w_N[:, None] * jax.vmap(jax.grad(loss.value))(o_NxC, y_N)


@functools.partial(jax.jit, static_argnames=("recipe", "loss", "space"))
def _replay_chunk(ops, qref, o0_NxC, y_N, o0_TxC, y_T, W_mxN, *, recipe: Recipe, loss: OutputLoss, space: str):
  """W [m, N] normalized example weights -> [m, T] target losses after the replayed recipe."""
  N, C = o0_NxC.shape
  if space == "example":
    K, Kt = ops
    kv, kt = (lambda r: K @ r), (lambda a: Kt @ a)
  else:
    phi, phi_t = ops
    kv, kt = (lambda r: phi @ (phi.T @ r)), (lambda a: phi_t @ (phi.T @ a))
  o0 = o0_NxC.reshape(-1)

  def one(w):
    def residual(f):
      return _output_grads(loss, f.reshape(N, C), y_N, w).reshape(-1)

    if recipe.optimizer == "sgd":
      def step(carry, _):
        f, acc = carry
        r = residual(f)
        return (f - recipe.lr * kv(r), acc + recipe.lr * r), None
      (_, acc), _ = jax.lax.scan(step, (o0, jnp.zeros_like(o0)), None, length=recipe.steps)
    else:
      b1, b2 = recipe.b1, recipe.b2

      def step(carry, t):
        f, m, mu, v, acc = carry
        r = residual(f)
        u = kv(r)
        m = b1 * m + (1 - b1) * r            # Adam's first moment, in residual space
        mu = b1 * mu + (1 - b1) * u          # its image K m, kept without another product
        v = b2 * v + (1 - b2) * (u @ r)      # EMA of r^T K r = sum_i p_i g_i^2
        vhat = v / (1 - b2 ** t)
        # floored: a subset whose gradient is exactly 0 has m = 0 too and takes no step
        size = recipe.lr / (1 - b1 ** t) / jnp.sqrt(jnp.maximum(vhat / qref, 1e-30))
        return (f - size * mu, m, mu, v, acc + size * m), None

      zeros = jnp.zeros_like(o0)
      init = (o0, zeros, zeros, jnp.zeros((), o0.dtype), zeros)
      (_, _, _, _, acc), _ = jax.lax.scan(step, init, jnp.arange(1, recipe.steps + 1, dtype=o0.dtype))
    o_T = o0_TxC - kt(acc).reshape(o0_TxC.shape)
    return loss.values(o_T, y_T)

  return jax.vmap(one)(W_mxN)


def _loss_gradients_by_task(output_fn, loss, params0, X, y, task_ids, num_tasks, batch_size):
  """G [K, D]: per-task sums of the per-example loss gradients at params0."""
  flat0, unravel = ravel_pytree(params0)

  @jax.jit
  def batch(xb, yb, tb, wb):
    def one(xi, yi):
      return jax.grad(lambda flat: loss.value(output_fn(unravel(flat), (xi, yi)), yi))(flat0)
    g = jax.vmap(one)(xb, yb) * wb[:, None]
    return jax.ops.segment_sum(g, tb, num_segments=num_tasks)

  G = np.zeros((num_tasks, flat0.size), np.float64)

  def add(start, stop, out):
    G[:] += np.asarray(out)
  # rows padded to whole batches with weight 0: one compiled shape, nothing added
  n_pad = -len(task_ids) % batch_size
  idx = np.concatenate([np.arange(len(task_ids)), np.zeros(n_pad, np.int64)])
  w = np.concatenate([np.ones(len(task_ids), np.float32), np.zeros(n_pad, np.float32)])
  batching.chunked_map(lambda i, wb: batch(X[i], y[i], task_ids[i], wb), idx, w, chunk_size=batch_size, pad=False,
                       sink=add)
  return G


def _design_second_moment(G_KxD, task_ids, S, num_tasks):
  """v_ref [D]: the mean over subsets of their squared mean-loss gradient at params0."""
  counts = np.bincount(task_ids, minlength=num_tasks).astype(np.float64)
  v = np.zeros(G_KxD.shape[1])
  for start in range(0, len(S), 256):
    Sc = S[start:start + 256].astype(np.float64)
    v += (((Sc @ G_KxD) / (Sc @ counts)[:, None]) ** 2).sum(0)
  return v / len(S)


def _weights(S, task_ids):
  """[m, N]: each subset's examples weighted equally (the subset's mean loss)."""
  W = S[:, task_ids].astype(np.float32)
  return W / W.sum(1, keepdims=True)


def estimate_finetune(output_fn: Callable, params0, train, task_ids, S, target, *, recipe: Recipe,
                      loss: OutputLoss, space: str = "auto", dim: int = 1024, key=None,
                      memory_bytes: int = 1 << 31, batch_size: int = 64, chunk_size: int = 64,
                      calibrate=None, step_scales=STEP_SCALES, return_info: bool = False):
  """F_hat [m, T]: the target losses after fine-tuning params0 on each subset row of S [m, K],
  estimated by replaying `recipe` in the linearized model (see the module docstring).

  output_fn(params, (x, y)) -> [C] is any differentiable output (`features.output_fn` provides
  the classifier ones); train = (X [N, ...], y [N, ...]) and target = (X_t, y_t) are examples whose
  labels y go to `loss.value(o [C], y)` unchanged; task_ids [N] gives each training example's task.
  The fine-tune being estimated minimizes the mean of `loss` over the subset's examples.
  space: "example", "parameter" or "auto" (the cost rule); dim and key: parameter space's
  projection. With `return_info`, also returns {"space", "memory_bytes", "seconds_setup" (the
  one-time preconditioner, Jacobians and kernels), "seconds_replay" (all subsets, compile
  included), "seconds_per_subset" (steady state: the chunks after the first), "step_scale"}.

  calibrate: optional (S_cal [c, K], F_cal [c, T]), real fine-tunes of a few subsets by the same
  recipe (never the subsets you score on). The recipe's learning rate is then multiplied by the
  one of `step_scales` whose replay of S_cal has the lowest median relative error against F_cal
  (one warning when it is the grid's edge), and S is replayed at it; info adds
  "step_scale_errors". Where the network moves less than its linearization (a model still
  learning), the replay at the recipe's own rate overshoots every subset alike: calibrating fixes
  the size of the change, not its ranking across subsets.
  """
  if not isinstance(recipe, Recipe):
    raise ValueError(f"recipe: expected ksurrogate.replay.Recipe, got {type(recipe).__name__}")
  if not isinstance(loss, OutputLoss):
    raise ValueError(f"loss: expected ksurrogate.OutputLoss, got {type(loss).__name__}")
  if not callable(output_fn):
    raise ValueError(f"output_fn: expected a function (params, (x, y)) -> [C], got {type(output_fn).__name__}")
  _checks.choice(space, SPACES, "space")
  _checks.positive_int(dim, "dim")
  _checks.positive_int(chunk_size, "chunk_size")
  if calibrate is not None and not (len(step_scales) and all(float(a) > 0 for a in step_scales)):
    raise ValueError(f"step_scales: need at least one positive learning-rate multiplier, got {step_scales!r}")
  X, y = (np.asarray(a) for a in _pair(train, "train"))
  Xt, yt = (np.asarray(a) for a in _pair(target, "target"))
  S, task_ids = _checks.subsets_with_tasks(S, task_ids, len(X))
  K = S.shape[1]
  t0 = time.perf_counter()
  flat0, unravel = ravel_pytree(params0)
  D = flat0.size

  # C from one example, to size the two spaces before any Jacobian is formed
  C = int(jax.eval_shape(lambda p: output_fn(p, (X[0], y[0])), params0).shape[-1])
  NC, TC = len(X) * C, len(Xt) * C
  example_bytes = 4 * (NC + TC) * (D + NC)
  if space == "auto":
    space = "example" if example_bytes <= memory_bytes else "parameter"
  used_bytes = example_bytes if space == "example" else 4 * (NC + TC) * dim

  if recipe.optimizer == "adam":
    G = _loss_gradients_by_task(output_fn, loss, params0, X, y, task_ids, K, batch_size)
    v_ref = _design_second_moment(G, task_ids, S, K)
    p = 1.0 / (np.sqrt(v_ref) + recipe.eps)
    qref = float(np.sum(p * v_ref))
  else:
    p, qref = np.ones(D), 1.0
  sqrt_p = jnp.asarray(np.sqrt(p), flat0.dtype)

  def preconditioned(u, example):   # its Jacobian at u = 0 is J diag(p)^1/2
    return output_fn(unravel(flat0 + sqrt_p * u), example)

  proj = dict(key=jax.random.key(0) if key is None else key, projection="gaussian", dim=dim)
  if space == "example":
    proj = dict(key=jax.random.key(0), projection="identity", dim=D)
  feat = features.make_featurizer(None, jnp.zeros(D, flat0.dtype), output=preconditioned, **proj)
  A, o0 = batching.chunked_map(feat, X, y, chunk_size=batch_size)
  At, o0t = batching.chunked_map(feat, Xt, yt, chunk_size=batch_size)
  A, At = jnp.asarray(A).reshape(NC, -1), jnp.asarray(At).reshape(TC, -1)
  if not (np.all(np.isfinite(o0)) and np.all(np.isfinite(o0t))):
    raise ValueError("params0: outputs are non-finite on some examples; cannot linearize there")
  ops = (A @ A.T, At @ A.T) if space == "example" else (A, At)
  del A, At
  jax.block_until_ready(ops)
  seconds_setup = time.perf_counter() - t0

  args = (jnp.asarray(o0), jnp.asarray(y), jnp.asarray(o0t), jnp.asarray(yt))
  scale, errors = 1.0, None
  if calibrate is not None:
    W_cal, F_cal = _calibration_set(calibrate, task_ids, K, len(X), len(Xt))
    errors = {}
    for a in step_scales:
      scaled = dataclasses.replace(recipe, lr=recipe.lr * float(a))
      F_a = np.asarray(_replay_chunk(ops, qref, *args, jnp.asarray(W_cal), recipe=scaled, loss=loss, space=space))
      errors[float(a)] = metrics.relative_error(F_a, F_cal)["median"]
    scale = min(errors, key=errors.get)
    if len(errors) > 1 and scale in (min(errors), max(errors)):
      warnings.warn(f"calibrate: step scale {scale:g} at the edge of step_scales {sorted(errors)}", stacklevel=2)
    recipe = dataclasses.replace(recipe, lr=recipe.lr * scale)
  W = _weights(S, task_ids)
  times = []

  def run(W_c):
    t = time.perf_counter()
    out = jax.block_until_ready(_replay_chunk(ops, qref, *args, jnp.asarray(W_c), recipe=recipe, loss=loss, space=space))
    times.append(time.perf_counter() - t)
    return out
  F_hat = np.asarray(batching.chunked_map(run, W, chunk_size=chunk_size))
  # every chunk after the first runs the compiled program: their mean is the steady-state cost
  warm = np.mean(times[1:]) / chunk_size if len(times) > 1 else times[0] / len(S)
  info = {"space": space, "memory_bytes": int(used_bytes), "seconds_setup": seconds_setup,
          "seconds_replay": float(np.sum(times)), "seconds_per_subset": float(warm), "step_scale": scale}
  if errors is not None:
    info["step_scale_errors"] = errors
  return (F_hat, info) if return_info else F_hat


def _calibration_set(calibrate, task_ids, K: int, N: int, T: int):
  """(weights [c, N], outcomes [c, T]) of the calibration fine-tunes, checked."""
  if not (isinstance(calibrate, (tuple, list)) and len(calibrate) == 2):
    raise ValueError(f"calibrate: expected (S_cal, F_cal), got {type(calibrate).__name__}")
  try:
    S_cal = _checks.as_subsets(calibrate[0])
    if S_cal.shape[1] != K:
      raise ValueError(f"{S_cal.shape[1]} tasks where S has {K}")
    S_cal, _ = _checks.subsets_with_tasks(S_cal, task_ids, N)
  except ValueError as e:
    raise ValueError(f"calibrate: S_cal: {e}") from None
  F_cal = np.asarray(calibrate[1], np.float64)
  if F_cal.shape != (len(S_cal), T):
    raise ValueError(f"calibrate: F_cal has shape {F_cal.shape}, expected {(len(S_cal), T)} (subsets x targets)")
  if not np.all(np.isfinite(F_cal)):
    raise ValueError("calibrate: F_cal holds non-finite values")
  return _weights(S_cal, task_ids), F_cal


def _pair(data, name):
  if not (isinstance(data, (tuple, list)) and len(data) == 2):
    raise ValueError(f"{name}: expected a pair (X, y) of examples and labels")
  X, y = data
  if len(X) != len(y):
    raise ValueError(f"{name}: has {len(y)} labels for {len(X)} examples")
  if len(X) == 0:
    raise ValueError(f"{name}: no examples")
  return X, y
