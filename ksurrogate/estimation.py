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

import dataclasses
import functools
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ksurrogate import _checks
from ksurrogate import _timing
from ksurrogate import batching
from ksurrogate import metrics
from ksurrogate.features import Features, check_same_projection, margin

METHODS = ("newton", "onestep")
OUTCOMES = ("loss", "margin")
# numpy, not jnp: a jnp constant would start the JAX backend on import (before jax.distributed can)
_STEP_SIZES = np.array([1.0, 0.5, 0.25, 0.125, 0.0625, 0.0], np.float32)


# ----------------------------------------------------------------------------------------------
# Per-example loss in output space: value, gradient r = dloss/do, and the Gauss-Newton term.

@dataclasses.dataclass(frozen=True)
class OutputLoss:
  """A per-example loss of the model's output vector o [C] (what the linearized outputs
  o0 + phi z are scored with). `value(o [C], y) -> scalar`; its gradient and second derivative
  in o (the Gauss-Newton curvature of the convex per-subset problem) come by autodiff, so any
  loss that is convex in o works: a classification loss, a regression loss, a policy's
  advantage-weighted log-likelihood. Frozen and hashable: build it once (it keys compiled programs)."""
  name: str
  value: Callable

  def values(self, o_NxC, y_N):
    """The loss of every example.

    Args:
      o_NxC: [N, C] outputs.
      y_N: [N, ...] labels.

    Returns:
      [N].
    """
    return jax.vmap(self.value)(o_NxC, y_N)

  def grad_and_curvature(self, o_NxC, y_N):
    """r [N, C] = dloss/do and Lambda [N, C, C] = d2loss/do2 per example.

    Args:
      o_NxC: [N, C] outputs.
      y_N: [N, ...] labels.

    Returns:
      (r [N, C], Lambda [N, C, C]).
    """
    r = jax.vmap(jax.grad(self.value))(o_NxC, y_N)
    lam = jax.vmap(jax.hessian(self.value))(o_NxC, y_N)
    return r, lam


def _softmax_ce(o, y):
  return jax.nn.logsumexp(o) - o[y]


def _logistic(o, y):
  del y   # the margin already contains the label
  return jax.nn.softplus(-o[0])


def _competitors_ce(o, y):
  del y   # the outputs are already relative to the label's logit
  return jax.nn.logsumexp(jnp.concatenate([jnp.zeros(1, o.dtype), o]))


def _squared(o, y):
  return 0.5 * jnp.sum((o - y) ** 2)


SOFTMAX_CROSS_ENTROPY = OutputLoss("softmax_cross_entropy", _softmax_ce)   # output "logits"
LOGISTIC = OutputLoss("logistic", _logistic)                               # output "margin": CE through the margin
SQUARED = OutputLoss("squared", _squared)                                  # regression targets y [C]
# output "top<k>": the outputs are competitor logits minus the label's, so CE = log(1 + sum exp(o))
COMPETITORS_CROSS_ENTROPY = OutputLoss("competitors_cross_entropy", _competitors_ce)


def default_loss(output: str) -> OutputLoss:
  """The cross-entropy written for a provided output kind ("logits", "margin", "top<k>").

  Args:
    output: the features' output kind.

  Returns:
    SOFTMAX_CROSS_ENTROPY ("logits"), LOGISTIC ("margin") or COMPETITORS_CROSS_ENTROPY ("top<k>").

  Raises:
    ValueError: on any other output (a caller's output function needs its own loss).
  """
  if output == "logits":
    return SOFTMAX_CROSS_ENTROPY
  if output == "margin":
    return LOGISTIC
  if output.startswith("top") and output[3:].isdigit():
    return COMPETITORS_CROSS_ENTROPY
  raise ValueError(f"loss: features of the caller's output {output!r} need an explicit loss (an OutputLoss)")


def _outputs(phi, o0, z):
  return o0 + jnp.einsum("ncd,d->nc", phi, z)


def _grad_and_hessian(phi, o, y, w, loss: OutputLoss):
  """Gradient [d] and Gauss-Newton Hessian [d, d] of sum_n w_n loss(o_n) in z (o = o0 + phi z)."""
  r, lam = loss.grad_and_curvature(o, y)
  g = jnp.einsum("ncd,nc->d", phi, w[:, None] * r)
  lam_phi = jnp.einsum("nce,ned->ncd", lam, phi)
  H = jnp.einsum("ncd,nce->de", phi * w[:, None, None], lam_phi)
  return g, H


def _solve_spd(H, g):
  return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(H, lower=True), g)


@functools.partial(jax.jit, static_argnames=("loss", "num_iters"))
def _newton_chunk(W, phi, o0, y, ridge, *, loss, num_iters):
  """W [s, N] example weights of a chunk of subsets -> z [s, d]."""
  d = phi.shape[-1]
  eye = jnp.eye(d, dtype=phi.dtype)

  def objective(z, w):
    return jnp.sum(w * loss.values(_outputs(phi, o0, z), y)) + 0.5 * ridge * z @ z

  def solve(w):
    def step(_, z):
      g, H = _grad_and_hessian(phi, _outputs(phi, o0, z), y, w, loss)
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


@functools.partial(jax.jit, static_argnames=("loss", "outcome", "output"))
def _target_outcomes(Z, phi_t, o0_t, y_t, *, loss, outcome, output):
  """Z [s, d] -> [s, T] target losses or margins."""
  def one(z):
    o = _outputs(phi_t, o0_t, z)
    if outcome == "loss":
      return loss.values(o, y_t)
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
    _checks.finite(np.asarray(phi[start:start + 4096]), f"{name}.phi", row="example", col="output", offset=start,
                   what="feature values")
  _checks.finite(np.asarray(feats.offsets), f"{name}.offsets", row="example", col="output")
  _checks.finite(np.asarray(feats.labels), f"{name}.labels", row="example", col="output")
  if feats.output == "logits":   # the softmax cross-entropy indexes the C logits by the label
    _checks.class_labels(feats.labels, phi.shape[1], f"{name}.labels")


def _check_task_ids(task_ids, num_examples: int, num_tasks: int):
  task_ids = np.asarray(task_ids)
  if task_ids.shape != (num_examples,) or not np.issubdtype(task_ids.dtype, np.integer):
    raise ValueError(f"task_ids: expected integer shape ({num_examples},) (one task per training example), got "
                     f"{task_ids.dtype} {task_ids.shape}")
  if num_examples and (task_ids.min() < 0 or task_ids.max() >= num_tasks):
    raise ValueError(f"task_ids: ids must lie in [0, num_tasks={num_tasks}); found {task_ids.min()}..{task_ids.max()}")
  return task_ids


def _check_inputs(train, task_ids, S, target):
  _check_features(train, "train")
  _check_features(target, "target")
  if train.dim != target.dim or train.output != target.output or train.phi.shape[1] != target.phi.shape[1]:
    raise ValueError(f"target: features (output={target.output}, shape {target.phi.shape[1:]}) do not match train "
                     f"(output={train.output}, shape {train.phi.shape[1:]})")
  check_same_projection(train, target)
  S, task_ids = _checks.subsets_with_tasks(S, task_ids, train.num_examples)
  return task_ids, S


def _check_stats(stats, K: int, d: int):
  """User-passed `task_statistics` output: shapes and finiteness."""
  if not isinstance(stats, (tuple, list)) or len(stats) != 2:
    raise ValueError("stats: expected the (g [K, d], H [K, d, d]) pair that task_statistics returns")
  g_K, H_K = np.asarray(stats[0]), np.asarray(stats[1])
  if g_K.shape != (K, d) or H_K.shape != (K, d, d):
    raise ValueError(f"stats: expected shapes ({K}, {d}) and ({K}, {d}, {d}), got {g_K.shape} and {H_K.shape}")
  _checks.finite(g_K, "stats", row="task", col="feature", what="gradient values")
  _checks.finite(H_K, "stats", row="task", col="feature", what="Hessian values")
  return g_K, H_K


# ----------------------------------------------------------------------------------------------
# Public API.

def task_statistics(train: Features, task_ids, num_tasks: int, *, loss: OutputLoss | None = None,
                    batch_size: int = 1024):
  """Per-task gradient g [K, d] and Gauss-Newton Hessian H [K, d, d] of the loss at z = 0,
  streamed over example batches (phi may be a memmap).

  Args:
    train: the training `Features` (phi [N, C, d]).
    task_ids: int [N], each example's task in [0, K).
    num_tasks: K (positive).
    loss: the `OutputLoss`, None for `default_loss(train.output)`.
    batch_size: examples per compiled call (positive).

  Returns:
    (g float64 [K, d], H float64 [K, d, d]) (numpy; zero for a task without examples).

  Raises:
    ValueError: on bad features (shapes, non-finite values, labels), task ids of another shape or
      outside [0, K), or a num_tasks or batch_size that is not a positive integer.
  """
  num_tasks = _checks.positive_int(num_tasks, "num_tasks")
  batch_size = _checks.positive_int(batch_size, "batch_size")
  _check_features(train, "train")
  task_ids = _check_task_ids(task_ids, train.num_examples, num_tasks)
  loss = loss or default_loss(train.output)
  g_K = np.zeros((num_tasks, train.dim), np.float64)
  H_K = np.zeros((num_tasks, train.dim, train.dim), np.float64)
  stat = _statistics_fn(loss)
  for k in range(num_tasks):
    rows = np.flatnonzero(task_ids == k)
    if not len(rows):
      continue
    # Rows padded to whole batches with weight 0: every batch hits one compiled shape, adds nothing.
    n_pad = -len(rows) % batch_size
    idx = np.concatenate([rows, np.repeat(rows[-1:], n_pad)])
    w = np.concatenate([np.ones(len(rows), np.float32), np.zeros(n_pad, np.float32)])

    def add(start, stop, out, k=k):
      g_K[k] += np.asarray(out[0])
      H_K[k] += np.asarray(out[1])

    batching.chunked_map(lambda i, w_b: stat(jnp.asarray(train.phi[i]), jnp.asarray(train.offsets[i]),
                                             jnp.asarray(train.labels[i]), jnp.asarray(w_b)),
                         idx, w, chunk_size=batch_size, pad=False, sink=add)
  return g_K, H_K


@functools.lru_cache(maxsize=16)
def _statistics_fn(loss):
  return jax.jit(lambda phi, o, y, w: _grad_and_hessian(phi, o, y, w, loss))


def solve(train: Features, task_ids, S, *, ridge: float, method: str = "onestep", num_iters: int = 8,
          loss: OutputLoss | None = None, mean: bool = False, chunk_size: int | None = None, stats=None):
  """z [m, d]: each subset's minimizer of the linearized training loss plus (ridge / 2) ||z||^2.

  The loss is summed over the subset's examples, or averaged with `mean=True` (the objective a
  fine-tune on the subset's mean loss has; the ridge is then in units of a mean loss). Other
  arguments as `estimate`.

  Args:
    train: the training `Features` (phi [N, C, d]).
    task_ids: int [N], each example's task.
    S: bool [m, K] subsets, none of them selecting no example.
    ridge: the ridge, positive.
    method: "onestep" or "newton".
    num_iters: Newton iterations (method="newton"), positive.
    loss: the `OutputLoss`, None for the features' cross-entropy.
    mean: average the loss over the subset's examples instead of summing it.
    chunk_size: subsets per compiled call (None: about 1 GiB of working set).
    stats: `task_statistics` output to reuse (method="onestep").

  Returns:
    z [m, d].

  Raises:
    ValueError: on an unknown method, a ridge that is not positive, a bad num_iters, bad features,
      or task ids and subsets that do not fit (`estimate`).
  """
  _checks.choice(method, METHODS, "method")
  ridge = _checks.positive_number(ridge, "ridge")
  num_iters = _checks.positive_int(num_iters, "num_iters")
  _check_features(train, "train")
  S, task_ids = _checks.subsets_with_tasks(S, task_ids, train.num_examples)
  return _solve(train, task_ids, S, ridge=ridge, method=method, num_iters=num_iters, loss=loss or default_loss(train.output),
                mean=mean, chunk_size=chunk_size, stats=stats)


def _solve(train, task_ids, S, *, ridge, method, num_iters, loss, mean, chunk_size, stats, timing=None):
  m, K = S.shape
  # Task weights per subset: 1 per selected task, or 1 / (examples in the subset) for the mean.
  S_w = S.astype(np.float32)
  if mean:
    S_w /= (S_w @ np.bincount(task_ids, minlength=K))[:, None]
  if method == "onestep":
    g_K, H_K = stats if stats is not None else task_statistics(train, task_ids, K, loss=loss)
    g_K, H_K = jnp.asarray(g_K, jnp.float32), jnp.asarray(H_K, jnp.float32)
    chunk_size = chunk_size or max(1, min(m, (1 << 28) // (4 * train.dim ** 2)))
    return _timing.run_chunks(_onestep_chunk, S_w, g_K, H_K, ridge, chunk_size=chunk_size, timing=timing)
  phi, o0, y = (jnp.asarray(a) for a in (train.phi, train.offsets, train.labels))
  N, C, d = train.phi.shape
  # Per-subset working set of the Hessian build is about N*C*d floats; keep a chunk near 1 GiB.
  chunk_size = chunk_size or max(1, min(m, (1 << 28) // max(1, N * C * d + d * d)))
  return _timing.run_chunks(_newton_chunk, S_w, phi, o0, y, ridge, chunk_size=chunk_size, timing=timing,
                            rows_fn=lambda S_c: S_c[:, task_ids], loss=loss, num_iters=num_iters)


def _targets(Z, target: Features, *, loss, outcome, output, timing=None):
  """[m, T] target losses or margins of the solutions Z [m, d]."""
  phi_t, o0_t, y_t = (jnp.asarray(a) for a in (target.phi, target.offsets, target.labels))
  return _timing.run_chunks(_target_outcomes, Z, phi_t, o0_t, y_t, chunk_size=min(len(Z), 1024), timing=timing,
                            loss=loss, outcome=outcome, output=output)


def estimate(train: Features, task_ids, S, target: Features, *, ridge: float, method: str = "onestep",
             num_iters: int = 8, outcome: str = "loss", loss: OutputLoss | None = None, mean: bool = False,
             chunk_size: int | None = None, stats=None, return_params: bool = False):
  """F_hat [m, T] for every subset row of S [m, K] (bool), on the target examples.

  `ridge` is in units of a summed loss (`mean=True`: of the subset's mean loss): see
  `calibrate_ridge`.

  Args:
    train: the training `Features` (phi [N, C, d]).
    task_ids: int [N], each training example's task in [0, K).
    S: bool [m, K] subsets, each selecting at least one example.
    target: the target `Features` (phi [T, C, d]), projected like `train`.
    ridge: the ridge, positive.
    method: "onestep" (the default: O(K d^2 + d^3) per subset whatever the number of examples) or
      "newton".
    num_iters: Newton iterations (method="newton"), positive.
    outcome: "loss" (each target's loss) or "margin" (its label margin; margin or logits features).
    loss: the per-example loss in output space the convex problem and the target outcomes use
      (default: the cross-entropy written for the features' output kind).
    mean: average the training loss over the subset's examples instead of summing it.
    chunk_size: subsets per compiled call (positive; None picks one near 1 GiB).
    stats: `task_statistics` output to reuse for method="onestep".
    return_params: also return the solutions z.

  Returns:
    F_hat [m, T], or (F_hat, z [m, d]) with `return_params`.

  Raises:
    ValueError: on an unknown method or outcome, a bad ridge, num_iters or chunk_size, features
      that are malformed, non-finite or mismatched (output kind, shape, projection), task ids of
      another shape or outside [0, K), an empty subset, malformed stats, or outcome="margin" on
      features of another output.
  """
  _checks.choice(method, METHODS, "method")
  _checks.choice(outcome, OUTCOMES, "outcome")
  ridge = _checks.positive_number(ridge, "ridge")
  num_iters = _checks.positive_int(num_iters, "num_iters")
  if chunk_size is not None:
    chunk_size = _checks.positive_int(chunk_size, "chunk_size")
  loss = loss or default_loss(train.output)
  if outcome == "margin" and train.output not in ("margin", "logits"):
    raise ValueError(f"outcome: 'margin' needs margin or logits features, got output {train.output!r}")
  task_ids, S = _check_inputs(train, task_ids, S, target)
  if stats is not None and method == "onestep":
    stats = _check_stats(stats, S.shape[1], train.dim)
  Z = _solve(train, task_ids, S, ridge=ridge, method=method, num_iters=num_iters, loss=loss, mean=mean,
             chunk_size=chunk_size, stats=stats)
  F_hat = _targets(Z, target, loss=loss, outcome=outcome, output=train.output)
  return (F_hat, Z) if return_params else F_hat


def calibrate_ridge(train: Features, task_ids, target: Features, S, F_real, *, grid=None, criterion: str = "relative_error",
                    **kwargs):
  """Picks the ridge whose estimates best match real outcomes F_real [m, T] on a few subsets S.

  Warns when the best ridge is at the edge of the grid.

  Args:
    train: the training `Features`.
    task_ids: int [N], each training example's task.
    target: the target `Features` (T examples).
    S: bool [m, K] the subsets with real outcomes.
    F_real: [m, T] their real outcomes.
    grid: the ridges tried (positive), None for 10^[-3..3].
    criterion: "relative_error" (smallest median relative error: the estimate as a stand-in for
      fine-tuning from theta0) or "lds" (largest LDS: the estimate as a ranking of subsets, e.g.
      against retrains from scratch).
    **kwargs: passed to `estimate` (same defaults: the ridge is calibrated for the solver that
      will use it).

  Returns:
    (ridge, {ridge: criterion value}), NaN where the criterion is undefined.

  Raises:
    ValueError: on an unknown criterion, a bad grid, inputs `estimate` refuses, F_real whose rows
      or columns do not match S and target, or a criterion non-finite at every ridge.
  """
  _checks.choice(criterion, ("relative_error", "lds"), "criterion")
  grid = 10.0 ** np.arange(-3, 4) if grid is None else _checks.grid(grid, "grid")
  task_ids, S_checked = _check_inputs(train, task_ids, S, target)
  F_real = _checks.as_outcomes(F_real, S_checked.shape[0], "F_real")
  if F_real.shape[1] != target.num_examples:
    raise ValueError(f"F_real: has {F_real.shape[1]} target columns but target holds {target.num_examples} examples")
  if kwargs.get("method", "onestep") == "onestep" and kwargs.get("stats") is None:
    # Statistics once for the whole grid.
    kwargs["stats"] = task_statistics(train, task_ids, S_checked.shape[1], loss=kwargs.get("loss"))
  def score(F):
    # A ridge whose estimates (or the real outcomes) do not vary has no LDS: it cannot be chosen.
    try:
      return metrics.relative_error(F, F_real)["median"] if criterion == "relative_error" else metrics.lds(F, F_real)
    except metrics.Undefined:
      return float("nan")

  table = {float(r): score(estimate(train, task_ids, S, target, ridge=float(r), **kwargs)) for r in grid}
  finite = [r for r in table if np.isfinite(table[r])]
  if not finite:
    raise ValueError(f"grid: the {criterion} criterion is non-finite at every ridge in [{min(table):g}, {max(table):g}] "
                     "(estimates or real outcomes that do not vary); check F_real and the grid")
  best = (max if criterion == "lds" else min)(finite, key=table.get)
  if len(table) > 1 and best in (min(table), max(table)):
    warnings.warn(f"grid: the best ridge {best:g} lies at the edge of the grid [{min(table):g}, {max(table):g}]; "
                  "extend the grid", stacklevel=2)
  return best, table
