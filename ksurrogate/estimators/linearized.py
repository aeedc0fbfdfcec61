"""Solver "linearized": the recipe run by optax itself on the unprojected linearized model.

z = theta - theta0 follows `recipe.optax()` on the subset's mean loss of o0 + J z (J every
parameter's Jacobian, unprojected), one model per subset (`vmap`), and F_hat(s) is the target loss
at the final z. Exact for any optax recipe in the linearized model (Adam's per-parameter second
moment included), so it measures what linearizing at theta0 alone costs: the accuracy reference
the other estimators approximate. It costs a real fine-tune's order (2 N C D FLOPs per step and
subset, 4 (N + T) C D bytes of Jacobians): a reference, not a shortcut.
"""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ksurrogate import _checks
from ksurrogate import _timing
from ksurrogate import batching
from ksurrogate import features
from ksurrogate.estimation import OutputLoss
from ksurrogate.estimators import base
from ksurrogate.estimators import replay


@functools.partial(jax.jit, static_argnames=("recipe", "loss"))
def _linearized_chunk(W_mxN, J_NxCxD, o0_NxC, y_N, J_TxCxD, o0_TxC, y_T, *, recipe: base.Recipe, loss: OutputLoss):
  """W [m, N] normalized example weights -> [m, T] target losses after `recipe` on o0 + J z."""
  opt = recipe.optax()

  def one(w):
    def step(carry, _):
      z, state = carry
      o = o0_NxC + jnp.einsum("ncd,d->nc", J_NxCxD, z)
      g = jnp.einsum("ncd,nc->d", J_NxCxD, replay._output_grads(loss, o, y_N, w))
      update, state = opt.update(g, state, z)
      return (z + update, state), None
    z0 = jnp.zeros(J_NxCxD.shape[-1], J_NxCxD.dtype)
    (z, _), _ = jax.lax.scan(step, (z0, opt.init(z0)), None, length=recipe.steps)
    return loss.values(o0_TxC + jnp.einsum("tcd,d->tc", J_TxCxD, z), y_T)

  return jax.vmap(one)(W_mxN)


@dataclasses.dataclass(frozen=True)
class LinearizedState:
  arrays: tuple          # (J [N, C, D], o0, y, J_t [T, C, D], o0_t, y_t) as device arrays
  task_ids: np.ndarray
  num_tasks: int
  loss: OutputLoss
  output: str
  memory_bytes: int
  seconds_setup: float


@base.register
@dataclasses.dataclass(frozen=True)
class Linearized(base.Estimator):
  """The recipe by optax on the unprojected linearized model (see the module docstring);
  batch_size: examples per Jacobian batch; chunk_size: subsets per compiled chunk."""
  solver = "linearized"
  recipe: base.Recipe
  batch_size: int = 64
  chunk_size: int = 16

  def __post_init__(self):
    if not isinstance(self.recipe, base.Recipe):
      raise ValueError(f"recipe: expected ksurrogate.estimators.Recipe, got {type(self.recipe).__name__}")
    _checks.positive_int(self.batch_size, "batch_size")
    _checks.positive_int(self.chunk_size, "chunk_size")

  def memory(self, sizes: base.Sizes) -> base.Cost:
    """Every example's unprojected Jacobian (float32).

    Args:
      sizes: the problem's `base.Sizes`.

    Returns:
      A `base.Cost` in parameter space: 4 (N + T) C D bytes.
    """
    rows = (sizes.num_train + sizes.num_target) * sizes.num_outputs
    return base.Cost("parameter", int(4 * rows * sizes.num_params),
                     f"the unprojected Jacobians ({rows} rows x {sizes.num_params} parameters)")

  def prepare(self, data: base.Data, *, key=None, design=None, calibrate=None) -> LinearizedState:
    """Every example's Jacobian at params0.

    Args:
      data: the model, examples and loss (`Data`; target examples required).
      key: unused (nothing is projected).
      design: unused (optax follows each subset's own gradients).
      calibrate: not supported (the reference runs the recipe as given).

    Returns:
      The state `estimate` reads.
    """
    del key, design
    if calibrate is not None:
      raise ValueError("calibrate: the linearized reference runs the recipe as given; it calibrates nothing")
    X, y, Xt, yt, task_ids, K = data.checked()
    if Xt is None:
      raise ValueError("data: the linearized reference reads its outcomes on target examples (Data.target)")
    t0 = time.perf_counter()
    D = ravel_pytree(data.params0)[0].size
    feat = features.make_featurizer(None, data.params0, key=jax.random.key(0), dim=D, output=data.output_fn,
                                    projection="identity")
    J, o0 = batching.chunked_map(feat, X, y, chunk_size=self.batch_size)
    Jt, o0t = batching.chunked_map(feat, Xt, yt, chunk_size=self.batch_size)
    if not (np.all(np.isfinite(o0)) and np.all(np.isfinite(o0t))):
      raise ValueError("params0: outputs are non-finite on some examples; cannot linearize there")
    arrays = tuple(jnp.asarray(a) for a in (J, o0, y, Jt, o0t, yt))
    jax.block_until_ready(arrays)
    return LinearizedState(arrays, task_ids, K, data.loss, data.output, int(J.nbytes + Jt.nbytes),
                           time.perf_counter() - t0)

  def estimate(self, state: LinearizedState, S):
    """(F_hat [m, T] target losses after the recipe on each subset row of S [m, K], EstimatorReport).

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
    F_hat = _timing.run_chunks(_linearized_chunk, replay._weights(S, task_ids), *state.arrays,
                               chunk_size=self.chunk_size, timing=timing, recipe=self.recipe, loss=state.loss)
    return F_hat, base.EstimatorReport(
        solver=self.solver, space="parameter", dim=int(state.arrays[0].shape[-1]), output=state.output,
        memory_bytes=state.memory_bytes, num_estimated=int(len(S)), seconds_setup=state.seconds_setup,
        seconds_compile=timing.compile, seconds_per_subset=timing.per_row(), recipe=self.recipe)
