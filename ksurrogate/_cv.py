"""K-fold cross-validation pieces shared by the kernel and linear fits: seeded folds, the CV
criteria, and the argmin of a score table."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ksurrogate import metrics

RIDGE_GRID = 10.0 ** np.arange(-6, 3)     # 10^[-6..2]
CV_METRICS = ("mse", "lds")


def cv_folds(m: int, cv: int, seed: int):
  """Seeded K-fold split as padded index blocks: (idx [cv, b], valid [cv, b], train_w [cv, m])."""
  parts = np.array_split(np.random.default_rng(seed).permutation(m), cv)
  b = max(len(p) for p in parts)
  idx = np.zeros((cv, b), np.int32)
  valid = np.zeros((cv, b), bool)
  train_w = np.ones((cv, m))
  for f, p in enumerate(parts):
    idx[f, :len(p)] = p
    valid[f, :len(p)] = True
    train_w[f, p] = 0.0
  return jnp.asarray(idx), jnp.asarray(valid), jnp.asarray(train_w)


def fold_means(Y, train_w, center: bool):
  if not center:
    return jnp.zeros((train_w.shape[0], Y.shape[1]))
  return (train_w @ Y) / train_w.sum(1, keepdims=True)


def truth_ranks(Y, cv_metric):
  """Ranks of the outcomes down each column, computed once per fit for the "lds" criterion (they
  are the same at every grid point); None for "mse"."""
  return metrics.rank_columns(Y) if cv_metric == "lds" else None


def cv_score(Y, resid, idx, norm, cv_metric, Y_ranks=None):
  """CV criterion (lower is better) from out-of-fold residuals [cv, b, T]: the mean over targets of
  held-out MSE / variance ("mse"), or minus the out-of-fold LDS ("lds", from the outcomes' ranks
  `Y_ranks`; sorting makes it several times dearer on CPU, hence computed only when asked for)."""
  if cv_metric == "mse":
    return jnp.mean(jnp.sum(resid ** 2, axis=(0, 1)) / norm)
  R = jnp.zeros_like(Y).at[idx.reshape(-1)].add(resid.reshape(-1, Y.shape[1]))
  return -jnp.nanmean(metrics.pearson_columns(metrics.rank_columns(Y - R), Y_ranks))


def best(scores) -> tuple:
  """Index of the lowest CV score in a table of any shape; NaN (numerical failure) never wins."""
  scores = np.asarray(scores)
  scores = np.where(np.isfinite(scores), scores, np.inf)
  return tuple(int(i) for i in np.unravel_index(np.argmin(scores), scores.shape))


def select(scores, *grids):
  """The grid values at the lowest CV score (one grid per axis of `scores`)."""
  return tuple(float(g[i]) for g, i in zip(grids, best(scores)))
