"""Solver "replay": the fine-tuning recipe replayed in the model linearized at params0.

A real fine-tune from params0 on subset s runs `steps` full-batch steps of an optimizer on the
subset's mean loss. The replay runs the same steps on the linearized outputs
o(theta) = o0 + J (theta - theta0), for every subset at once (`vmap` over subsets inside one `jit`),
and returns the target losses the replayed fine-tune ends with. Unlike the ridge minimizer
("onestep", "newton") it follows the recipe's optimizer, rate and number of steps, so a short
fine-tune that stops far from any minimizer is estimated as short.

The replay runs in function space: with r_t = dL_s/do the residuals of the subset's weighted mean
loss, a full-batch step moves the outputs by -lr K r_t, K = J diag(p) J^T (p = 1 for SGD), and the
targets by -lr K_t r_t. So only kernel-vector products are needed, and they come two ways:

- example space: the exact kernel K [NC, NC] and its target rows K_t [TC, NC] from unprojected
  Jacobians (no projection error). Memory 4 (NC + TC) (D + G NC) bytes (Jacobian rows, then the
  G kernels); per step and subset 2 G (NC)^2 FLOPs.
- parameter space: K ~ Phi Phi^T with Phi = J diag(p)^1/2 P [NC, dim], P Gaussian (D -> dim).
  Memory 4 (NC + TC) dim bytes; per step and subset 4 NC dim FLOPs; projection error ~ 1/sqrt(dim).

- given features: `prepare(..., featurizer=fn)` takes the parameter space's rows from the caller,
  fn(sqrt_p) -> (train, target) `Features` of J diag(sqrt_p) P for any projection P of the
  caller's (a per-layer factorized one, `ksurrogate.projection`), sqrt_p the preconditioner's
  square root as a pytree like params0 (ones for SGD). Adam's reference scalar is then taken in
  that space too (the mean over the design of ||Phi^T r_s||^2), so the step sizes stay consistent
  with the kernel the features give.

Cost rule (space="auto", `memory`): example space whenever its memory fits `memory_bytes`, else
parameter space. Exactness is worth more than the per-step cost (which both spaces keep far
below a real fine-tune's forward and backward passes).

SGD is replayed exactly (up to the linearization). Adam is approximated: its momentum is linear in
the residuals and is carried exactly; its per-parameter second moment is replaced by a fixed
diagonal preconditioner p = 1 / (sqrt(v_ref) + eps) folded into the kernel, times one scalar
tracked per step and parameter group g, v_t ~ b_t v_ref with b_t = EMA(r^T K_g r) / sum_{i in g}
p_i v_ref,i. `preconditioner`: "design" (v_ref = the mean over the `design` subsets of their
squared mean-loss gradient at params0: uses the subsets only, never an outcome) or "full" (the
squared full-set gradient). `groups`: "global" (one group) or "layer" (one per parameter array,
example space only: G kernels). A subset whose gradient is v_ref's takes Adam's first step,
lr sign(g); with one parameter the replay is Adam exactly (up to eps).

`calibrate=(S_cal, F_cal)` (real fine-tunes of a few other subsets): the learning rate is scaled by
the one of `step_scales` whose replay of S_cal has the lowest median relative error. Where the
network moves less than its linearization (a model still learning) the replay at the recipe's own
rate overshoots every subset alike: the calibration fixes the size of the change, not its ranking.
BUILD_NOTES.md ("Estimated outcomes: replaying the fine-tuning", "The authors' regime") has what
each setting measured.
"""
from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ksurrogate import _checks
from ksurrogate import _timing
from ksurrogate import batching
from ksurrogate import features
from ksurrogate import metrics
from ksurrogate.estimation import OutputLoss
from ksurrogate.estimators import base

SPACES = ("auto", "example", "parameter")
GROUPS = ("global", "layer")
PRECONDITIONERS = ("design", "full")
STEP_SCALES = tuple(2.0 ** np.arange(-2, 3))   # the learning-rate multipliers `calibrate` tries


def _output_grads(loss: OutputLoss, o_NxC, y_N, w_N):
  """dL/do of L = sum_n w_n loss(o_n, y_n): the residuals [N, C]."""
  return w_N[:, None] * jax.vmap(jax.grad(loss.value))(o_NxC, y_N)


@functools.partial(jax.jit, static_argnames=("recipe", "loss", "space"))
def _replay_chunk(W_mxN, ops, qref, o0_NxC, y_N, o0_TxC, y_T, *, recipe: base.Recipe, loss: OutputLoss, space: str):
  """W [m, N] normalized example weights -> [m, T] target losses after the replayed recipe.

  qref: a scalar (one parameter group) or [G] (one kernel per group: ops hold [G, ...] kernels);
  with one group no array carries a group axis, so its arithmetic is the plain kernel's."""
  N, C = o0_NxC.shape
  if space == "example":
    K, Kt = ops
    kv, kt = (lambda r: K @ r), (lambda a: Kt @ a)
  else:
    phi, phi_t = ops
    kv, kt = (lambda r: phi @ (phi.T @ r)), (lambda a: phi_t @ (phi.T @ a))
  grouped = jnp.ndim(qref) == 1
  if grouped:   # u [G, NC]: each group's step image K_g r; the targets sum the groups' images
    kv = lambda r: jnp.einsum("gij,j->gi", ops[0], r)   # noqa: E731
    kt = lambda a: jnp.einsum("gtn,gn->t", ops[1], a)   # noqa: E731
  combine = (lambda size, mu: size @ mu) if grouped else (lambda size, mu: size * mu)   # sum_g size_g mu_g
  spread = (lambda size, m: size[:, None] * m[None]) if grouped else (lambda size, m: size * m)
  o0 = o0_NxC.reshape(-1)

  def one(w):
    def residual(f):
      return _output_grads(loss, f.reshape(N, C), y_N, w).reshape(-1)

    if recipe.optimizer == "sgd":
      def step(carry, _):
        f, acc = carry
        r = residual(f)
        u = kv(r)
        return (f - recipe.lr * (u.sum(0) if grouped else u), acc + recipe.lr * r), None
      (_, acc), _ = jax.lax.scan(step, (o0, jnp.zeros_like(o0)), None, length=recipe.steps)
      if grouped:
        acc = jnp.broadcast_to(acc, (qref.shape[0],) + acc.shape)
    else:
      b1, b2 = recipe.b1, recipe.b2

      def step(carry, t):
        f, m, mu, v, acc = carry
        r = residual(f)
        u = kv(r)
        m = b1 * m + (1 - b1) * r            # Adam's first moment, in residual space
        mu = b1 * mu + (1 - b1) * u          # its image K m, kept without another product
        v = b2 * v + (1 - b2) * (u @ r)      # EMA of r^T K r = sum_i p_i g_i^2 (per group)
        vhat = v / (1 - b2 ** t)
        # floored: a subset whose gradient is exactly 0 has m = 0 too and takes no step
        size = recipe.lr / (1 - b1 ** t) / jnp.sqrt(jnp.maximum(vhat / qref, 1e-30))
        return (f - combine(size, mu), m, mu, v, acc + spread(size, m)), None

      zeros = jnp.zeros_like(o0)
      zeros_G = jnp.zeros(jnp.shape(qref) + o0.shape, o0.dtype)
      init = (o0, zeros, zeros_G, jnp.zeros(jnp.shape(qref), o0.dtype), zeros_G)
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


def _reference_second_moment(G_KxD, task_ids, S, num_tasks, preconditioner):
  """v_ref [D]: the squared full-set mean-loss gradient at params0 ("full"), or the mean over the
  subsets S of their squared mean-loss gradient ("design")."""
  counts = np.bincount(task_ids, minlength=num_tasks).astype(np.float64)
  if preconditioner == "full":
    return (G_KxD.sum(0) / counts.sum()) ** 2
  v = np.zeros(G_KxD.shape[1])
  for start in range(0, len(S), 256):
    Sc = S[start:start + 256].astype(np.float64)
    v += (((Sc @ G_KxD) / (Sc @ counts)[:, None]) ** 2).sum(0)
  return v / len(S)


def _weights(S, task_ids):
  """[m, N]: each subset's examples weighted equally (the subset's mean loss)."""
  W = S[:, task_ids].astype(np.float32)
  return W / W.sum(1, keepdims=True)


def _groups(params0, groups: str) -> list:
  """Slices of the flattened parameters: one, or one per parameter array (ravel_pytree's order)."""
  sizes = [int(np.size(x)) for x in jax.tree.leaves(params0)]
  if groups == "global":
    return [slice(0, sum(sizes))]
  ends = np.cumsum(sizes)
  return [slice(int(e - n), int(e)) for e, n in zip(ends, sizes)]


@dataclasses.dataclass(frozen=True)
class ReplayState:
  ops: tuple                 # example: (K, K_t) ([G,] NC x NC, [G,] TC x NC); parameter: (Phi, Phi_t)
  qref: jax.Array            # sum_i p_i v_ref,i: a scalar, or [G] per parameter group
  arrays: tuple              # (o0 [N, C], y, o0_t [T, C], y_t) as device arrays
  task_ids: np.ndarray
  num_tasks: int
  loss: OutputLoss
  recipe: base.Recipe        # at the calibrated rate
  space: str
  dim: int
  output: str
  memory_bytes: int
  seconds_setup: float
  step_scale: float = 1.0
  calibration: Optional[dict] = None
  num_calibration: Optional[int] = None


@base.register
@dataclasses.dataclass(frozen=True)
class Replay(base.Estimator):
  """The recipe replayed in the linearized model (see the module docstring).

  space / dim / memory_bytes: the cost rule and parameter space's projection; groups /
  preconditioner: Adam's approximation; batch_size: examples per Jacobian batch; chunk_size:
  subsets per compiled chunk; step_scales: the multipliers `calibrate` chooses among.
  """
  solver = "replay"
  recipe: base.Recipe
  space: str = "auto"
  dim: int = 1024
  memory_bytes: int = 1 << 31
  groups: str = "global"
  preconditioner: str = "design"
  batch_size: int = 64
  chunk_size: int = 64
  step_scales: tuple = STEP_SCALES

  def __post_init__(self):
    if not isinstance(self.recipe, base.Recipe):
      raise ValueError(f"recipe: expected ksurrogate.estimators.Recipe, got {type(self.recipe).__name__}")
    _checks.choice(self.space, SPACES, "space")
    _checks.choice(self.groups, GROUPS, "groups")
    _checks.choice(self.preconditioner, PRECONDITIONERS, "preconditioner")
    for name in ("dim", "memory_bytes", "batch_size", "chunk_size"):
      _checks.positive_int(getattr(self, name), name)
    if self.groups == "layer" and self.space == "parameter":
      raise ValueError("groups: 'layer' needs the example space (one exact kernel per parameter array)")
    if not (len(self.step_scales) and all(float(a) > 0 for a in self.step_scales)):
      raise ValueError(f"step_scales: need at least one positive learning-rate multiplier, got {self.step_scales!r}")

  def memory(self, sizes: base.Sizes) -> base.Cost:
    """The cost rule: example space (Jacobian rows, then the exact kernels) when it fits
    `memory_bytes` (or is asked for), else parameter space (the projected rows).

    Args:
      sizes: the problem's `base.Sizes`.

    Returns:
      A `base.Cost`: 4 rows (D + G N C) bytes in example space, else 4 rows dim in parameter space
      (rows = (N + T) C, G the kernels).

    Raises:
      ValueError: when groups "layer" would need parameter space.
    """
    rows = (sizes.num_train + sizes.num_target) * sizes.num_outputs
    G = sizes.num_groups if self.groups == "layer" else 1
    example = 4 * rows * (sizes.num_params + G * sizes.num_train * sizes.num_outputs)
    space = self.space if self.space != "auto" else "example" if example <= self.memory_bytes else "parameter"
    if space == "parameter" and G > 1:
      raise ValueError(f"groups: 'layer' needs the example space, whose {example / 2 ** 30:.2f} GiB exceed "
                       f"memory_bytes={self.memory_bytes} (or space='parameter' was asked for)")
    if space == "example":
      return base.Cost("example", int(example), f"the replay's Jacobian rows and {G} exact kernel(s) ({rows} rows x "
                                                f"{sizes.num_params} parameters)")
    return base.Cost("parameter", int(4 * rows * self.dim), f"the replay's projected features ({rows} rows x {self.dim})")

  def prepare(self, data: base.Data, *, key=None, design=None, calibrate=None, featurizer=None) -> ReplayState:
    """Jacobians at params0, the preconditioner and the kernels (or projected features).

    Args:
      data: the model, examples and loss (`Data`; target examples required).
      key: parameter space's projection key (default key 0).
      design: bool [m, K]: the subsets the "design" preconditioner averages over (the ones to be
        estimated); needed for an Adam recipe with preconditioner "design".
      calibrate: optional (S_cal [c, K], F_cal [c, T]): real fine-tunes of a few subsets by the same
        recipe (never the subsets you score on): the learning-rate multiplier of `step_scales` that
        replays them best (one warning when it is the grid's edge).
      featurizer: optional fn(sqrt_p) -> (train, target) Features with `data.output_fn`'s outputs:
        the parameter-space rows J diag(sqrt_p) P of a projection of the caller's (sqrt_p a pytree
        like params0); the replay then works in that space (`space` must not be "example").

    Returns:
      The state `estimate` reads.
    """
    if featurizer is not None and (self.space == "example" or self.groups == "layer"):
      raise ValueError("featurizer: given features are a projected (parameter) space; use space='auto' or "
                       "'parameter' and groups='global'")
    X, y, Xt, yt, task_ids, K = data.checked()
    if Xt is None:
      raise ValueError("data: the replay reads its outcomes on target examples (Data.target)")
    adam_design = self.recipe.optimizer == "adam" and self.preconditioner == "design"
    if adam_design:
      if design is None:
        raise ValueError("design: the 'design' preconditioner averages over the subsets to estimate; pass them "
                         "(or preconditioner='full')")
      design, _ = _checks.subsets_with_tasks(design, task_ids, len(X))
      if design.shape[1] != K:
        raise ValueError(f"design: has {design.shape[1]} task columns but the data has {K} tasks")
    t0 = time.perf_counter()
    flat0, unravel = ravel_pytree(data.params0)
    D = flat0.size
    # C from one example, to size the two spaces before any Jacobian is formed
    C = int(jax.eval_shape(lambda p: data.output_fn(p, (X[0], y[0])), data.params0).shape[-1])
    slices = _groups(data.params0, self.groups)
    cost = self.memory(base.Sizes(len(X), len(Xt), C, D, K, len(slices)))
    if featurizer is not None:
      cost = dataclasses.replace(cost, space="parameter")
    NC, TC = len(X) * C, len(Xt) * C
    if self.recipe.optimizer == "adam":
      G_KxD = _loss_gradients_by_task(data.output_fn, data.loss, data.params0, X, y, task_ids, K, self.batch_size)
      v_ref = _reference_second_moment(G_KxD, task_ids, design, K, self.preconditioner)
      p = 1.0 / (np.sqrt(v_ref) + self.recipe.eps)
      qref = [float(np.sum(p[s] * v_ref[s])) for s in slices]
    else:
      p, qref, slices = np.ones(D), [1.0], [slice(0, D)]   # no preconditioner: the groups' kernels sum to one
    sqrt_p = jnp.asarray(np.sqrt(p), flat0.dtype)

    def preconditioned(u, example):   # its Jacobian at u = 0 is J diag(p)^1/2
      return data.output_fn(unravel(flat0 + sqrt_p * u), example)

    if featurizer is None:
      proj = dict(key=jax.random.key(0) if key is None else key, projection="gaussian", dim=self.dim)
      if cost.space == "example":
        proj = dict(key=jax.random.key(0), projection="identity", dim=D)
      feat = features.make_featurizer(None, jnp.zeros(D, flat0.dtype), output=preconditioned, **proj)
      A, o0 = batching.chunked_map(feat, X, y, chunk_size=self.batch_size)
      At, o0t = batching.chunked_map(feat, Xt, yt, chunk_size=self.batch_size)
    else:
      (A, o0), (At, o0t) = _given_features(featurizer, unravel(sqrt_p), (len(X), C), (len(Xt), C))
      if self.recipe.optimizer == "adam":
        qref = [_projected_reference(A, o0, y, task_ids, K, design, data.loss, self.preconditioner)]
      cost = dataclasses.replace(cost, bytes=int(4 * (NC + TC) * A.shape[-1]))
    A, At = jnp.asarray(A).reshape(NC, -1), jnp.asarray(At).reshape(TC, -1)
    dim = D if cost.space == "example" else int(A.shape[-1])
    if not (np.all(np.isfinite(o0)) and np.all(np.isfinite(o0t))):
      raise ValueError("params0: outputs are non-finite on some examples; cannot linearize there")
    if cost.space == "parameter":
      ops = (A, At)
    elif len(slices) == 1:
      ops = (A @ A.T, At @ A.T)
    else:
      ops = (jnp.stack([A[:, s] @ A[:, s].T for s in slices]), jnp.stack([At[:, s] @ A[:, s].T for s in slices]))
    del A, At
    jax.block_until_ready(ops)
    state = ReplayState(
        ops=ops, qref=jnp.asarray(qref[0] if len(qref) == 1 else qref, jnp.float32), arrays=(jnp.asarray(o0), jnp.asarray(y), jnp.asarray(o0t),
                                                              jnp.asarray(yt)),
        task_ids=task_ids, num_tasks=K, loss=data.loss, recipe=self.recipe, space=cost.space,
        dim=dim, output=data.output, memory_bytes=cost.bytes,
        seconds_setup=time.perf_counter() - t0)
    return state if calibrate is None else self.calibrated(state, *_calibration_pair(calibrate))

  def calibrated(self, state: ReplayState, S_cal, F_cal) -> ReplayState:
    """`state` at the step scale of `step_scales` whose replay of S_cal best matches the real
    fine-tunes F_cal (lowest median relative error).

    Args:
      state: what `prepare` returned.
      S_cal: bool [c, K] calibration subsets.
      F_cal: [c, T] their real fine-tuned outcomes, finite.

    Returns:
      A new state (recipe, step_scale and calibration {scale: median relative error} set); warns when
      the best scale is at the grid's edge.

    Raises:
      ValueError: when S_cal or F_cal is malformed or does not fit the data.
    """
    W_cal, F_cal = _calibration_set(S_cal, F_cal, state.task_ids, state.num_tasks, len(state.arrays[2]))
    errors = {}
    for a in self.step_scales:
      F_a = self._run(state, W_cal, self.recipe.scaled(a), chunk_size=len(W_cal))
      errors[float(a)] = metrics.relative_error(F_a, F_cal)["median"]
    scale = min(errors, key=errors.get)
    if len(errors) > 1 and scale in (min(errors), max(errors)):
      warnings.warn(f"calibrate: step scale {scale:g} at the edge of step_scales {sorted(errors)}", stacklevel=2)
    return dataclasses.replace(state, recipe=self.recipe.scaled(scale), step_scale=scale, calibration=errors,
                               num_calibration=int(len(W_cal)))

  def estimate(self, state: ReplayState, S):
    """(F_hat [m, T] target losses after the replayed fine-tune of each subset row of S [m, K],
    EstimatorReport).

    Args:
      state: what `prepare` returned.
      S: bool [m, K] subsets, each selecting at least one example.

    Returns:
      (F_hat [m, T], `EstimatorReport`).

    Raises:
      ValueError: when S has another number of tasks or a subset selects no example.
    """
    S, task_ids = _checks.subsets_with_tasks(S, state.task_ids, len(state.task_ids))
    if S.shape[1] != state.num_tasks:
      raise ValueError(f"S: has {S.shape[1]} task columns but the data has {state.num_tasks} tasks")
    timing = _timing.Timing()
    F_hat = self._run(state, _weights(S, task_ids), state.recipe, chunk_size=self.chunk_size, timing=timing)
    return F_hat, base.EstimatorReport(
        solver=self.solver, space=state.space, dim=state.dim, output=state.output, memory_bytes=int(state.memory_bytes),
        num_estimated=int(len(S)), seconds_setup=state.seconds_setup, seconds_compile=timing.compile,
        seconds_per_subset=timing.per_row(), step_scale=state.step_scale, recipe=self.recipe,
        calibration=state.calibration, num_calibration=state.num_calibration)

  def _run(self, state: ReplayState, W, recipe, *, chunk_size, timing=None):
    return _timing.run_chunks(_replay_chunk, W, state.ops, state.qref, *state.arrays, chunk_size=chunk_size,
                              timing=timing, recipe=recipe, loss=state.loss, space=state.space)


def _given_features(featurizer, sqrt_p, shape, shape_t):
  """((phi [N, C, d], o0 [N, C]), (phi_t, o0_t)) from the caller's featurizer, checked."""
  got = featurizer(sqrt_p)
  if not (isinstance(got, (tuple, list)) and len(got) == 2 and all(isinstance(f, features.Features) for f in got)):
    raise ValueError("featurizer: must return a (train, target) pair of ksurrogate.Features")
  out = []
  for f, want, what in zip(got, (shape, shape_t), ("train", "target")):
    phi, o0 = np.asarray(f.phi, np.float32), np.asarray(f.offsets, np.float32)
    if phi.ndim != 3 or phi.shape[:2] != want or o0.shape != want:
      raise ValueError(f"featurizer: {what} features have phi {phi.shape} and offsets {o0.shape}; expected "
                       f"{want + ('d',)} and {want} (examples x outputs)")
    out.append((phi, o0))
  if out[0][0].shape[2] != out[1][0].shape[2]:
    raise ValueError(f"featurizer: train and target features differ in dimension ({out[0][0].shape[2]} vs "
                     f"{out[1][0].shape[2]})")
  return out


def _projected_reference(phi_NxCxd, o0_NxC, y, task_ids, K: int, S, loss: OutputLoss, preconditioner: str) -> float:
  """Adam's reference scalar in the given features' space: ||Phi^T r||^2 of the full set's mean
  loss ("full") or its mean over the design subsets S ("design"), r the residuals at params0."""
  grad_o = np.asarray(jax.vmap(jax.grad(loss.value))(jnp.asarray(o0_NxC), jnp.asarray(y)), np.float64)
  h = np.zeros((K, phi_NxCxd.shape[-1]))
  np.add.at(h, task_ids, np.einsum("ncd,nc->nd", phi_NxCxd, grad_o))   # per-task sums of Phi^T r
  counts = np.bincount(task_ids, minlength=K).astype(np.float64)
  if preconditioner == "full":
    return float(np.sum((h.sum(0) / counts.sum()) ** 2))
  Sf = np.asarray(S, np.float64)
  return float(np.mean(np.sum(((Sf @ h) / (Sf @ counts)[:, None]) ** 2, axis=1)))


def _calibration_pair(calibrate):
  if not (isinstance(calibrate, (tuple, list)) and len(calibrate) == 2):
    raise ValueError(f"calibrate: expected (S_cal, F_cal), got {type(calibrate).__name__}")
  return calibrate


def _calibration_set(S_cal, F_cal, task_ids, K: int, T: int):
  """(weights [c, N], outcomes [c, T]) of the calibration fine-tunes, checked."""
  try:
    S_cal = _checks.as_subsets(S_cal)
    if S_cal.shape[1] != K:
      raise ValueError(f"{S_cal.shape[1]} tasks where the data has {K}")
    S_cal, _ = _checks.subsets_with_tasks(S_cal, task_ids, len(task_ids))
  except ValueError as e:
    raise ValueError(f"calibrate: S_cal: {e}") from None
  F_cal = np.asarray(F_cal, np.float64)
  if F_cal.shape != (len(S_cal), T):
    raise ValueError(f"calibrate: F_cal has shape {F_cal.shape}, expected {(len(S_cal), T)} (subsets x targets)")
  if not np.all(np.isfinite(F_cal)):
    raise ValueError("calibrate: F_cal holds non-finite values")
  return _weights(S_cal, task_ids), F_cal
