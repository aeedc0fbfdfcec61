"""Kernels on subset indicator vectors (and on real-valued task weights or mixtures, after their
input map: `ksurrogate.inputs`).

On {0,1}^K the RBF kernel exp(-gamma ||s - s'||^2) is a Hamming heat kernel: expanding it in
products of indicator differences weights interactions of order r by (2 gamma)^r, so one gamma
carries every order of task interaction. Polynomial and linear kernels are kept for ablations.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ksurrogate._util import x64

KERNELS = ("rbf", "polynomial", "linear")


def sqdist(A, B):
  """||a - b||^2 for every row pair, exact for 0/1 inputs and clipped at 0 for rounding.

  Args:
    A: float [n, K].
    B: float [p, K].

  Returns:
    float [n, p].
  """
  na = jnp.sum(A * A, axis=1)[:, None]
  nb = jnp.sum(B * B, axis=1)[None, :]
  return jnp.maximum(na + nb - 2.0 * A @ B.T, 0.0)


def gram(kind: str, A, B, gamma, degree: int = 2, coef0: float = 1.0):
  """Kernel matrix k(A_i, B_j) [len(A), len(B)].

  Args:
    kind: "rbf" (exp(-gamma ||a - b||^2)), "polynomial" ((gamma a.b + coef0)^degree) or "linear" (a.b).
    A: float [n, K].
    B: float [p, K].
    gamma: the kernel scale (a scalar; unused by "linear").
    degree: the polynomial degree.
    coef0: the polynomial offset.

  Returns:
    float [n, p].

  Raises:
    ValueError: when kind is none of the three.
  """
  if kind == "rbf":
    return jnp.exp(-gamma * sqdist(A, B))
  if kind == "polynomial":
    return (gamma * (A @ B.T) + coef0) ** degree
  if kind == "linear":
    return A @ B.T
  raise ValueError(f"kernel: unknown kernel {kind!r}; expected one of {list(KERNELS)}")


def diag(kind: str, A, gamma, degree: int = 2, coef0: float = 1.0):
  """k(a, a) for each row, without forming the Gram matrix.

  Args:
    kind: "rbf", "polynomial" or "linear" (anything else is read as "linear").
    A: float [n, K].
    gamma: the kernel scale (a scalar).
    degree: the polynomial degree.
    coef0: the polynomial offset.

  Returns:
    float [n].
  """
  sq = jnp.sum(A * A, axis=1)
  if kind == "rbf":
    return jnp.ones(A.shape[0], A.dtype)
  if kind == "polynomial":
    return (gamma * sq + coef0) ** degree
  return sq


@x64
def default_gamma(kind: str, S, max_rows: int = 2000, floor: float = 1.0) -> float:
  """Centre of the gamma grid: 1 / (2 median pairwise squared distance) for RBF, 1 / K otherwise.

  The median is taken over a seeded sample of at most `max_rows` subsets: the full m^2 distance
  matrix would dominate a Nystrom fit at m = 10^4, and the median of 2 * 10^6 pairs is as good.
  `floor` bounds the median from below: 1 on subsets (distinct subsets are at least 1 apart);
  real-valued inputs, whose distances can all be below 1, pass a tiny one.

  Args:
    kind: the kernel name ("rbf", or another for 1 / K).
    S: the fitted inputs [m, K] (subsets or mapped real-valued inputs).
    max_rows: the most rows the median is taken over.
    floor: the smallest median squared distance used.

  Returns:
    gamma0, a Python float.
  """
  S = np.asarray(S)
  if kind != "rbf":
    return 1.0 / S.shape[1]
  if S.shape[0] > max_rows:
    S = S[np.sort(np.random.default_rng(0).choice(S.shape[0], max_rows, replace=False))]
  S = jnp.asarray(S, jnp.float64)
  d = sqdist(S, S)
  iu = jnp.triu_indices(S.shape[0], k=1)
  med = jnp.median(d[iu])
  return float(1.0 / (2.0 * jnp.maximum(med, floor)))
