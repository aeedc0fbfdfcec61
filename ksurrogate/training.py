"""Real training on task subsets, many models per compiled program: the exact outcome sources.

`retrain_subsets` (from scratch) and `finetune_subsets` (from given parameters) share one engine:
`batching.map_subsets` vmaps a whole training loop over a chunk of subset masks. Each model sees
all examples with per-example weights (1 if the example's task is in its subset, else 0), so
shapes are static and nothing recompiles between chunks.

What is trained is passed in, so the engine is not tied to classification:
- `loss_fn(params, batch, weights) -> scalar` on a pytree `batch` of examples (leading axis N);
  `supervised(apply_fn, per_example_loss)` builds the usual weighted mean loss on (X, y).
- `trainer(loss_fn, optimizer, ...)` turns it into `train_fn(params, data, weights, key)`, a pure
  function that runs the whole loop (`lax.scan`); build it once per setting, so its compiled
  program is reused across chunks, retries and resumed runs.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ksurrogate import _checks
from ksurrogate import batching

SAMPLINGS = ("subset", "shared")


def cross_entropy(logits, y):
  """Softmax cross-entropy of integer labels (optax's), per example.

  Args:
    logits: [N, C].
    y: int [N] class labels.

  Returns:
    [N].
  """
  return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def supervised(apply_fn: Callable, per_example_loss: Callable = cross_entropy) -> Callable:
  """loss_fn(params, (X, y), w): the mean per-example loss over the examples with weight w.

  Args:
    apply_fn: the model, apply(params, X [N, ...]) -> outputs [N, ...].
    per_example_loss: (outputs [N, ...], y [N, ...]) -> [N]; default the integer-label
      cross-entropy.

  Returns:
    `loss_fn(params, (X, y), w [N]) -> scalar` (the sum of w is floored at 1e-12); with the default
    loss it also carries `check_data(params, data)`, which refuses labels outside the classes.
  """
  def loss_fn(params, batch, w):
    X, y = batch
    return jnp.sum(w * per_example_loss(apply_fn(params, X), y)) / jnp.maximum(jnp.sum(w), 1e-12)

  if per_example_loss is cross_entropy:   # integer class labels: out of range, JAX would clamp them
    def check_data(params, data):
      X, y = data
      x = np.asarray(X[:1])
      classes = jax.eval_shape(apply_fn, params, jax.ShapeDtypeStruct(x.shape, x.dtype)).shape[-1]
      _checks.class_labels(np.asarray(y), int(classes), "data")
    loss_fn.check_data = check_data
  return loss_fn


def train(loss_fn: Callable, params, data, w, *, optimizer: optax.GradientTransformation, num_steps: int,
          batch_size: int | None = None, key=None, checkpoint_every: int | None = None, sampling: str = "subset"):
  """Trains one model on the weighted examples of `data`; returns (params, per-step losses
  [num_steps]), plus the params every `checkpoint_every` steps (stacked) if asked.

  Full batch when batch_size is None. Otherwise each step draws `batch_size` examples from `key`:
  sampling "subset" draws from the subset (proportional to w); "shared" draws uniformly from all
  examples and weights the draw by w, so models given the same key see the same minibatch stream
  minus the examples their subset leaves out (common random numbers: differences between subsets
  are then differences of data, not of data order).

  Args:
    loss_fn: `loss_fn(params, batch, weights) -> scalar`.
    params: the start parameters (a pytree).
    data: a pytree of examples with leading axis N.
    w: [N] example weights.
    optimizer: the optax transformation.
    num_steps: optimizer steps (positive).
    batch_size: examples per step, None for full batch.
    key: a `jax.random.key` for the minibatches (None: key(0)).
    checkpoint_every: also return the params every this many steps (must divide num_steps).
    sampling: "subset" or "shared" (above).

  Returns:
    (params, losses [num_steps]), or (params, losses, checkpoints) with each leaf of the
    checkpoints [num_steps // checkpoint_every, ...].

  Raises:
    ValueError: on an unknown sampling, a num_steps that is not a positive integer, or a
      checkpoint_every that does not divide num_steps.
  """
  _checks.choice(sampling, SAMPLINGS, "sampling")
  _checks.positive_int(num_steps, "num_steps")
  opt_state = optimizer.init(params)
  key = jax.random.key(0) if key is None else key
  data = jax.tree.map(jnp.asarray, data)   # traced minibatch indices need device arrays
  w = jnp.asarray(w)
  n = w.shape[0]

  def step(carry, k):
    params, opt_state = carry
    if batch_size is None:
      batch, wb = data, w
    elif sampling == "shared":
      idx = jax.random.randint(k, (batch_size,), 0, n)
      batch, wb = jax.tree.map(lambda a: a[idx], data), w[idx]
    else:
      idx = jax.random.choice(k, n, (batch_size,), p=w / jnp.sum(w))
      batch, wb = jax.tree.map(lambda a: a[idx], data), jnp.ones(batch_size, w.dtype)
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, wb)
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


def trainer(loss_fn: Callable, optimizer: optax.GradientTransformation, *, num_steps: int,
            batch_size: int | None = None, sampling: str = "subset", checkpoint_every: int | None = None) -> Callable:
  """Returns train_fn(params, data, w, key) -> `train`'s outputs, with every setting bound.

  Args:
    loss_fn: `loss_fn(params, batch, weights) -> scalar` (`supervised`).
    optimizer: the optax transformation.
    num_steps: optimizer steps (positive).
    batch_size: examples per step (positive), None for full batch.
    sampling: "subset" or "shared" (`train`).
    checkpoint_every: as `train`.

  Returns:
    `train_fn`, with attributes `sampling` and `check_data` (the loss's, or None).

  Raises:
    ValueError: on an unknown sampling or a num_steps or batch_size that is not a positive integer.
  """
  _checks.choice(sampling, SAMPLINGS, "sampling")
  _checks.positive_int(num_steps, "num_steps")
  if batch_size is not None:
    _checks.positive_int(batch_size, "batch_size")

  def train_fn(params, data, w, key):
    return train(loss_fn, params, data, w, optimizer=optimizer, num_steps=num_steps, batch_size=batch_size,
                 key=key, checkpoint_every=checkpoint_every, sampling=sampling)

  train_fn.sampling = sampling
  train_fn.check_data = getattr(loss_fn, "check_data", None)
  return train_fn


@functools.lru_cache(maxsize=64)
def _per_subset(train_fn: Callable, init_fn: Callable | None, own_init: bool):
  """The work of one subset, built once per (train_fn, init_fn) so map_subsets reuses its program."""
  def one(row, start, data):
    w, k = row
    if init_fn is None:
      params = start
    elif own_init:
      params = init_fn(jax.random.fold_in(k, 1))
    else:
      params = init_fn(jax.random.wrap_key_data(start))
    # k itself drives the minibatch stream, so a single model trained by `train(..., key=k)` is
    # the same model (this is how a full-data model joins a family of common-random-number retrains).
    return train_fn(params, data, w, k)
  return one


def _subset_weights_and_keys(data, task_ids, S, key, common_random_numbers, train_fn):
  S, task_ids = _checks.subsets_with_tasks(S, task_ids, batching.num_rows(data))
  if common_random_numbers and getattr(train_fn, "sampling", "shared") != "shared":
    raise ValueError("common_random_numbers: needs a trainer built with sampling='shared' (the same draws for every subset)")
  key = jax.random.key(0) if key is None else key
  keys = jnp.stack([key] * len(S)) if common_random_numbers else jax.random.split(key, len(S))
  return jnp.asarray(S[:, task_ids], jnp.float32), keys


def retrain_subsets(train_fn: Callable, init_fn: Callable, data, task_ids, S, *, init_key=None, key=None,
                    common_random_numbers: bool = False, chunk_size: int = 16, progress=None):
  """Trains a fresh model `init_fn(key)` on each subset row of S [m, K] with `train_fn` (see
  `trainer`). Every model gets the same `init_key` unless it is None (then each draws its own).
  With `common_random_numbers` every model also gets the same minibatch stream from `key`.

  Args:
    train_fn: `train_fn(params, data, w, key)` (`trainer`).
    init_fn: `init_fn(key) -> params`.
    data: a pytree of examples with leading axis N.
    task_ids: int [N], each example's task in [0, K).
    S: bool [m, K] subsets, each selecting at least one example.
    init_key: the key every model is initialized from, or None for a key of its own each.
    key: the key the per-subset keys come from (None: key(0)).
    common_random_numbers: give every model the same minibatch key (needs sampling="shared").
    chunk_size: subsets per compiled call.
    progress: called with the number of subsets done after each chunk.

  Returns:
    `train_fn`'s outputs stacked over subsets (params [m, ...], losses [m, steps], ...).

  Raises:
    ValueError: on task ids or subsets that do not fit the data, an empty subset,
      common_random_numbers with a trainer not built with sampling="shared", or labels the
      default loss refuses.
  """
  W, keys = _subset_weights_and_keys(data, task_ids, S, key, common_random_numbers, train_fn)
  if getattr(train_fn, "check_data", None) is not None:
    train_fn.check_data(jax.eval_shape(init_fn, jax.random.key(0)), data)
  own = init_key is None
  start = jnp.zeros(()) if own else jax.random.key_data(init_key)
  return batching.map_subsets(_per_subset(train_fn, init_fn, own), (W, keys), shared=(start, data),
                              chunk_size=chunk_size, progress=progress)


def finetune_subsets(train_fn: Callable, params0, data, task_ids, S, *, key=None, common_random_numbers: bool = False,
                     chunk_size: int = 16, progress=None):
  """Fine-tunes params0 with `train_fn` on each subset row of S [m, K]; as `retrain_subsets`.

  Args:
    train_fn: `train_fn(params, data, w, key)` (`trainer`).
    params0: the start parameters, shared by every subset.
    data: a pytree of examples with leading axis N.
    task_ids: int [N], each example's task in [0, K).
    S: bool [m, K] subsets.
    key: the key the per-subset keys come from (None: key(0)).
    common_random_numbers: give every model the same minibatch key.
    chunk_size: subsets per compiled call.
    progress: called with the number of subsets done after each chunk.

  Returns:
    `train_fn`'s outputs stacked over subsets (params [m, ...], losses [m, steps], ...).

  Raises:
    ValueError: as `retrain_subsets`.
  """
  W, keys = _subset_weights_and_keys(data, task_ids, S, key, common_random_numbers, train_fn)
  if getattr(train_fn, "check_data", None) is not None:
    train_fn.check_data(params0, data)
  return batching.map_subsets(_per_subset(train_fn, None, False), (W, keys), shared=(params0, data),
                              chunk_size=chunk_size, progress=progress)


def subset_losses(loss_fn: Callable, params_stacked, data, task_ids, S, *, batch_size: int = 4096):
  """Each stacked model's `loss_fn` over ALL of its subset's examples [m] (a convergence check
  that does not depend on the last minibatch). `loss_fn` is a weighted mean as in `supervised`.

  Args:
    loss_fn: `loss_fn(params, batch, weights) -> scalar`, a weighted mean.
    params_stacked: parameters stacked over m models (leading axis m).
    data: a pytree of examples with leading axis N.
    task_ids: int [N], each example's task.
    S: bool [m, K], model i's subset.
    batch_size: examples per compiled call.

  Returns:
    float64 [m] (numpy).

  Raises:
    ValueError: on task ids or subsets that do not fit the data, or an empty subset.
  """
  S, task_ids = _checks.subsets_with_tasks(S, task_ids, batching.num_rows(data))
  W = np.asarray(S[:, task_ids], np.float32)
  total = np.zeros(len(S))
  summed = _summed(loss_fn)
  # Chunks run over examples: each model's weighted mean is rebuilt from per-chunk weighted sums.
  batching.chunked_map(lambda d, w_T: summed(params_stacked, d, w_T.T), data, W.T, chunk_size=batch_size,
                       pad=False, sink=lambda a, b, out: total.__iadd__(np.asarray(out)))
  return total / np.maximum(W.sum(1), 1e-12)


@functools.lru_cache(maxsize=64)
def _summed(loss_fn):
  return jax.jit(jax.vmap(lambda p, d, w: loss_fn(p, d, w) * jnp.maximum(jnp.sum(w), 1e-12), in_axes=(0, None, 0)))
