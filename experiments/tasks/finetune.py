"""Real fine-tunes on task subsets: LoRA from theta0 with Adam for a fixed number of steps, each
step a minibatch drawn from the union of the subset's training examples, many subsets per
compiled program (`ksurrogate.batching.map_subsets` over `ksurrogate.training.train`).

Outcome of a subset: every target evaluation example's mean answer-token cross-entropy after the
fine-tune. The empty subset has nothing to train on: its outcome is theta0's own (computed by the
caller), so it never enters a fine-tune.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

import ksurrogate as ks
from ksurrogate_experiments.shared import llama
from ksurrogate_experiments.tasks import lora as lora_lib


@dataclasses.dataclass(frozen=True)
class Recipe:
  """What a fine-tune does: LoRA of `rank` (scale alpha / rank) on the blocks from `first` up,
  Adam at `lr` for `num_steps` steps of `batch_size` examples."""
  first: int
  rank: int
  alpha: float
  lr: float
  num_steps: int
  batch_size: int
  eval_batch: int = 16

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  @property
  def optimizer(self) -> ks.estimators.Recipe:
    """The optimizer as the library's recipe: the fine-tunes' optax and what a replay follows."""
    return ks.estimators.Recipe("adam", self.lr, self.num_steps)


def _train(cfg: llama.LlamaConfig, recipe: Recipe, lora0, frozen, train, w, key):
  """(trained LoRA, training losses [steps]): Adam on minibatches drawn from the examples with
  weight w > 0 (`sampling="subset"`)."""
  def loss_fn(lora, batch, wb):
    p = lora_lib.merge(frozen, lora, recipe.scale)
    losses = jax.vmap(lambda h, pk: lora_lib.answer_loss(p, cfg, recipe.first, h, pk))(*batch)
    return jnp.sum(wb * losses) / jnp.maximum(jnp.sum(wb), 1e-12)
  return ks.training.train(loss_fn, lora0, train, w, optimizer=recipe.optimizer.optax(), num_steps=recipe.num_steps,
                           batch_size=recipe.batch_size, key=key, sampling="subset")


def train_all(cfg: llama.LlamaConfig, recipe: Recipe, lora0, frozen, train, key):
  """(trained LoRA, training losses [steps]) of one fine-tune on every example of `train` (the
  format warm-up)."""
  w = jnp.ones(len(train[0]), jnp.float32)
  return jax.jit(lambda l0, fr, tr, k: _train(cfg, recipe, l0, fr, tr, w, k))(lora0, frozen, train, key)


@functools.lru_cache(maxsize=16)
def program(cfg: llama.LlamaConfig, recipe: Recipe):
  """The per-subset work, one object per setting so its compiled program is reused:
  one((w [N], key), lora0, frozen, train, evals) -> (eval losses [N_eval], training losses [steps])."""
  def one(row, lora0, frozen, train, evals):
    w, key = row
    lora, losses = _train(cfg, recipe, lora0, frozen, train, w, key)
    p = lora_lib.merge(frozen, lora, recipe.scale)
    ev = jax.lax.map(lambda e: lora_lib.answer_loss(p, cfg, recipe.first, *e), evals, batch_size=recipe.eval_batch)
    return ev, losses
  return one


def evaluate(params, cfg: llama.LlamaConfig, first: int, evals, batch: int = 16) -> np.ndarray:
  """[N_eval] answer losses of params (theta0, or merged fine-tuned params) on cached inputs."""
  fn = jax.jit(lambda h, pk: jax.lax.map(lambda e: lora_lib.answer_loss(params, cfg, first, *e), (h, pk),
                                         batch_size=batch))
  return np.asarray(fn(*evals))


def finetune(cfg: llama.LlamaConfig, recipe: Recipe, lora0, frozen, train, evals, task_ids, S, key, *,
             chunk_size: int):
  """(eval losses [m, N_eval], training losses [m, steps]) of fine-tunes on the subsets S [m, K]
  (none empty); subset i draws its minibatches from fold_in(key, i)."""
  S = np.asarray(S, bool)
  if not S.any(1).all():
    raise ValueError("S: an empty subset has no training examples; its outcome is theta0's")
  W = jnp.asarray(S[:, np.asarray(task_ids)], jnp.float32)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(len(S)))
  ev, losses = ks.batching.map_subsets(program(cfg, recipe), (W, keys), shared=(lora0, frozen, train, evals),
                                       chunk_size=chunk_size)
  return np.asarray(ev), np.asarray(losses)
