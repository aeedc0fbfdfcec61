"""All pairs (x, y) mod p as token sequences, a seeded train/validation split, grid-block tasks."""
from __future__ import annotations

import dataclasses

import numpy as np

OPS = {"add": lambda x, y, p: (x + y) % p, "quad": lambda x, y, p: (x * x + x * y + y * y) % p}


@dataclasses.dataclass(frozen=True)
class ModularData:
  X_train: np.ndarray      # int32 [N, 4]: x, op, y, =   (the answer is the 5th token, predicted)
  y_train: np.ndarray      # int32 [N]
  task_train: np.ndarray   # int32 [N]: block (x // bar, y // bar) of the input grid
  X_val: np.ndarray
  y_val: np.ndarray
  num_tasks: int
  vocab_size: int
  num_classes: int


def make(p: int, op: str, bar: int, train_fraction: float, seed: int) -> ModularData:
  if op not in OPS:
    raise ValueError(f"op: unknown operation {op!r}; expected one of {sorted(OPS)}")
  if not 0 < bar <= p:
    raise ValueError(f"bar: block width must lie in [1, p={p}], got {bar}")
  x, y = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
  x, y = x.ravel(), y.ravel()
  op_tok, eq_tok = p, p + 1
  X = np.stack([x, np.full_like(x, op_tok), y, np.full_like(x, eq_tok)], 1).astype(np.int32)
  labels = OPS[op](x, y, p).astype(np.int32)
  nb = -(-p // bar)
  task = (x // bar) * nb + (y // bar)
  perm = np.random.default_rng(seed).permutation(p * p)
  n_train = int(round(train_fraction * p * p))
  tr, va = perm[:n_train], perm[n_train:]
  return ModularData(X[tr], labels[tr], task[tr].astype(np.int32), X[va], labels[va], nb * nb, p + 2, p)
