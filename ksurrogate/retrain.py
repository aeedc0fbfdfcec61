"""Exact outcomes by retraining from scratch: many models per compiled program.

One `jit`ted program `vmap`s the whole training loop over a chunk of subset masks; each model sees
only its subset's examples through per-example weights, so shapes are static and nothing is
re-compiled between chunks. The subset axis is sharded over devices when there are several.
"""
from __future__ import annotations

from typing import Callable

from ksurrogate.finetune import train_subsets


def retrain_subsets(init_fn: Callable, apply_fn: Callable, X, y, task_ids, S, *, optimizer, num_steps: int,
                    init_key=None, **kwargs):
  """Trains a fresh model `init_fn(key)` on each subset row of S; see `finetune.train_subsets`."""
  return train_subsets(apply_fn, X, y, task_ids, S, init_fn=init_fn, init_key=init_key, optimizer=optimizer,
                       num_steps=num_steps, **kwargs)
