"""Real training on subsets, many models at once: the ground truth the estimator approximates.

Every model of a batch sees all examples with per-example weights (1 if its task is in the subset,
else 0), so the whole batch of subsets is one `vmap`ped, `jit`ted training loop with static shapes.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ksurrogate import _checks
from ksurrogate import linearize as linearize_lib
from ksurrogate import metrics
from ksurrogate._util import pad_rows


def cross_entropy(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def weighted_loss(apply_fn: Callable, params, X, y, w, loss_fn: Callable = cross_entropy):
  """Mean loss over the examples a subset selects (weights w [N])."""
  return jnp.sum(w * loss_fn(apply_fn(params, X), y)) / jnp.maximum(jnp.sum(w), 1e-12)


def train(apply_fn: Callable, params, X, y, w, *, optimizer: optax.GradientTransformation, num_steps: int,
          batch_size: int | None = None, key=None, loss_fn: Callable = cross_entropy,
          checkpoint_every: int | None = None, sampling: str = "subset"):
  """Trains one model on the weighted examples; returns (params, per-step losses [num_steps]),
  plus the params every `checkpoint_every` steps (stacked [num_steps // every, ...]) if asked.

  Full batch when batch_size is None. Otherwise each step draws `batch_size` examples from `key`:
  sampling "subset" draws from the subset (proportional to w); "shared" draws uniformly from all
  examples and weights the draw by w, so models given the same key see the same minibatch stream
  minus the examples their subset leaves out (common random numbers: differences between subsets
  are then differences of data, not of data order).
  """
  _checks.choice(sampling, ("subset", "shared"), "sampling")
  opt_state = optimizer.init(params)
  key = jax.random.key(0) if key is None else key
  X, y, w = jnp.asarray(X), jnp.asarray(y), jnp.asarray(w)   # traced minibatch indices need device arrays

  def step(carry, k):
    params, opt_state = carry
    if batch_size is None:
      Xb, yb, wb = X, y, w
    elif sampling == "shared":
      idx = jax.random.randint(k, (batch_size,), 0, X.shape[0])
      Xb, yb, wb = X[idx], y[idx], w[idx]
    else:
      idx = jax.random.choice(k, X.shape[0], (batch_size,), p=w / jnp.sum(w))
      Xb, yb, wb = X[idx], y[idx], jnp.ones(batch_size, w.dtype)
    loss, grads = jax.value_and_grad(lambda p: weighted_loss(apply_fn, p, Xb, yb, wb, loss_fn))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  keys = jax.random.split(key, num_steps)
  if checkpoint_every is None:
    (params, _), losses = jax.lax.scan(step, (params, opt_state), keys)
    return params, losses
  if num_steps % checkpoint_every:
    raise ValueError(f"checkpoint_every: {checkpoint_every} does not divide num_steps={num_steps}")

  def segment(carry, seg_keys):
    carry, losses = jax.lax.scan(step, carry, seg_keys)
    return carry, (carry[0], losses)

  (params, _), (ckpts, losses) = jax.lax.scan(segment, (params, opt_state),
                                              keys.reshape(num_steps // checkpoint_every, checkpoint_every))
  return params, losses.reshape(-1), ckpts


@functools.partial(jax.jit, static_argnames=("apply_fn", "init_fn", "optimizer", "num_steps", "batch_size", "loss_fn",
                                             "sampling"))
def _train_chunk(start, W, keys, X, y, *, apply_fn, init_fn, optimizer, num_steps, batch_size, loss_fn, sampling):
  """One compiled program: vmap of the whole training loop over a chunk of subsets' weights."""
  def one(w, k):
    # k itself drives the minibatch stream, so a single model trained by `train(..., key=k)` is
    # the same model (this is how a full-data model joins a family of common-random-number retrains).
    params = start if init_fn is None else init_fn(jax.random.wrap_key_data(start) if start.ndim else jax.random.fold_in(k, 1))
    return train(apply_fn, params, X, y, w, optimizer=optimizer, num_steps=num_steps, batch_size=batch_size,
                 key=k, loss_fn=loss_fn, sampling=sampling)
  return jax.vmap(one)(W, keys)


def train_subsets(apply_fn: Callable, X, y, task_ids, S, *, optimizer, num_steps: int, params0=None,
                  init_fn: Callable | None = None, init_key=None, batch_size: int | None = None, key=None,
                  chunk_size: int = 16, loss_fn: Callable = cross_entropy, progress=None,
                  common_random_numbers: bool = False):
  """Trains one model per subset row of S [m, K], a chunk of models per compiled call.

  Start from `params0` (fine-tuning) or from `init_fn(key)` (retraining from scratch; every model
  gets the same `init_key` unless it is None, in which case each draws its own). With
  `common_random_numbers`, every model also gets the same minibatch stream from `key` (uniform
  draws over all examples, masked by the subset: `train`'s "shared" sampling), so two subsets'
  outcomes differ by their data alone; otherwise each model draws its own stream. With several
  devices, the chunk's subset axis is sharded over them (`jax.sharding.NamedSharding`), so
  `chunk_size` should be a multiple of the device count. Returns stacked params [m, ...] and
  per-step training losses [m, num_steps]. `apply_fn`, `init_fn`, `optimizer` and `loss_fn` must
  be hashable (module-level functions, optax transformations built once).
  """
  if (params0 is None) == (init_fn is None):
    raise ValueError("params0: give exactly one of params0 (fine-tune) or init_fn (retrain from scratch)")
  S, task_ids = _checks.subsets_with_tasks(S, task_ids, len(X))
  W = S[:, task_ids].astype(np.float32)
  key = jax.random.key(0) if key is None else key
  keys = jnp.stack([key] * len(S)) if common_random_numbers else jax.random.split(key, len(S))
  if init_fn is None:
    start = params0
  else:
    start = jnp.zeros(()) if init_key is None else jax.random.key_data(init_key)
  sharding = None
  if jax.device_count() > 1:
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("subsets",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("subsets"))
  Xd, yd = jnp.asarray(X), jnp.asarray(y)
  outs = []
  for a in range(0, len(S), chunk_size):
    n = len(W[a:a + chunk_size])
    Wc = jnp.asarray(pad_rows(W[a:a + chunk_size], chunk_size))
    kc = pad_rows(keys[a:a + chunk_size], chunk_size)
    if sharding is not None:
      Wc, kc = jax.device_put(Wc, sharding), jax.device_put(kc, sharding)
    out = _train_chunk(start, Wc, kc, Xd, yd, apply_fn=apply_fn, init_fn=init_fn, optimizer=optimizer,
                       num_steps=num_steps, batch_size=batch_size, loss_fn=loss_fn,
                       sampling="shared" if common_random_numbers else "subset")
    outs.append(jax.tree.map(lambda t: t[:n], out))
    if progress is not None:
      progress(n)
  return jax.tree.map(lambda *t: jnp.concatenate(t), *outs)


def subset_losses(apply_fn: Callable, params_stacked, X, y, task_ids, S, *, loss_fn: Callable = cross_entropy,
                  batch_size: int = 4096):
  """Each stacked model's mean loss over all of its subset's examples [m] (a convergence check that
  does not depend on the last minibatch)."""
  S, task_ids = _checks.subsets_with_tasks(S, task_ids, len(X))
  W = S[:, task_ids].astype(np.float32)
  total = np.zeros(len(S))
  for a in range(0, len(X), batch_size):
    total += np.asarray(_summed_losses(apply_fn, loss_fn, params_stacked, jnp.asarray(X[a:a + batch_size]),
                                       jnp.asarray(y[a:a + batch_size]), jnp.asarray(W[:, a:a + batch_size])))
  return total / np.maximum(W.sum(1), 1e-12)


@functools.partial(jax.jit, static_argnames=("apply_fn", "loss_fn"))
def _summed_losses(apply_fn, loss_fn, params_stacked, X, y, W):
  return jax.vmap(lambda p, w: jnp.sum(w * loss_fn(apply_fn(p, X), y)))(params_stacked, W)


def finetune_subsets(apply_fn: Callable, params0, X, y, task_ids, S, **kwargs):
  """Fine-tunes params0 on each subset row of S; see `train_subsets`."""
  return train_subsets(apply_fn, X, y, task_ids, S, params0=params0, **kwargs)


def linearization_error(apply_fn: Callable, params0, params_stacked, X):
  """The paper's first-order error at really trained weights theta_S, per subset and example:
  ||f(theta0) + J (theta_S - theta0) - f(theta_S)|| / max(||f(theta_S)||, ||f(theta0)||)
  (norms over the output vector). Returns [m, N]."""
  f_lin = linearize_lib.linearize(apply_fn, params0)
  out0 = apply_fn(params0, X)

  @jax.jit
  def one(p):
    out, lin = apply_fn(p, X), f_lin(p, X)
    scale = jnp.maximum(jnp.linalg.norm(out, axis=-1), jnp.linalg.norm(out0, axis=-1))
    return jnp.linalg.norm(lin - out, axis=-1) / scale

  m = jax.tree.leaves(params_stacked)[0].shape[0]
  return np.stack([np.asarray(one(jax.tree.map(lambda t: t[i], params_stacked))) for i in range(m)])


def error_report(apply_fn: Callable, params0, params_stacked, X_target, F_hat, F_finetuned) -> dict:
  """Both error definitions on the same subsets: (a) the estimate vs real fine-tuning per target,
  (b) the first-order error of the outputs at the fine-tuned weights."""
  est = metrics.relative_error(F_hat, F_finetuned)
  lin = linearization_error(apply_fn, params0, params_stacked, X_target)
  return {"median_relative_error": est["median"], "mean_relative_error": est["mean"],
          "linearization_error": float(np.median(lin)), "linearization_error_mean": float(np.mean(lin)),
          "lds_vs_finetune": metrics.lds(F_hat, F_finetuned) if len(F_hat) > 2 else float("nan")}
