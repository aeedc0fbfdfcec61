"""Subset sampling and indicator-matrix utilities.

A subset of K tasks is a bool row of length K; a batch of subsets is S: bool [m, K]. Samplers are
pure functions of a `jax.random.key`, so the same key always gives the same design.
"""
from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ksurrogate import _checks
from ksurrogate._checks import deduplicate  # noqa: F401  (public: ksurrogate.subsets.deduplicate)


def bernoulli(key, num_subsets: int, num_tasks: int, p: float = 0.5) -> jax.Array:
  """Each task independently in each subset with probability p (the datamodels design), drawn
  with replacement: subsets may repeat (`distinct_bernoulli` draws distinct ones).

  Args:
    key: a `jax.random.key`.
    num_subsets: m, the number of subsets drawn (positive).
    num_tasks: K, the number of tasks (positive).
    p: the inclusion probability of each task, in (0, 1).

  Returns:
    bool [m, K] (a jax array).

  Raises:
    ValueError: when num_subsets or num_tasks is not a positive integer, or p is outside (0, 1).
  """
  _checks.positive_int(num_subsets, "num_subsets")
  _checks.positive_int(num_tasks, "num_tasks")
  if not 0.0 < p < 1.0:
    raise ValueError(f"p: inclusion probability must lie in (0, 1), got {p}")
  return jax.random.bernoulli(key, p, (num_subsets, num_tasks))


def fixed_size(key, num_subsets: int, num_tasks: int, size: int, *, distinct: bool = True) -> np.ndarray:
  """Uniformly random subsets of exactly `size` tasks (the paper's design: 22 of 25 tasks),
  distinct unless `distinct=False` (`sized`).

  Args:
    key: a `jax.random.key`.
    num_subsets: n, the number of subsets (positive).
    num_tasks: K, the number of tasks (positive).
    size: the number of tasks in every subset, in [1, K].
    distinct: whether repeats are dropped and redrawn.

  Returns:
    bool [n, K] (numpy).

  Raises:
    ValueError: as `sized`.
  """
  return sized(key, num_subsets, num_tasks, size, size, distinct=distinct)


def count_sized(num_tasks: int, low: int, high: int) -> int:
  """How many distinct subsets of `num_tasks` tasks have between `low` and `high` tasks.

  Args:
    num_tasks: K.
    low: the smallest subset size counted.
    high: the largest subset size counted (inclusive).

  Returns:
    The count, sum over k in [low, high] of C(K, k).
  """
  return sum(math.comb(num_tasks, k) for k in range(low, high + 1))


def sized(key, num_subsets: int, num_tasks: int, low: int, high: int, *, distinct: bool = True) -> np.ndarray:
  """`num_subsets` distinct subsets (bool [n, K]): each size uniform in [low, high], then the subset
  uniform given its size; a repeat is dropped and redrawn (kept, with `distinct=False`: i.i.d.
  draws, e.g. candidates that are de-duplicated afterwards).

  Covering sizes up to num_tasks - 1 puts fitted subsets next to the leave-one-out sets a
  surrogate is read out at, instead of extrapolating to them. Distinct, because a repeated subset
  split between the fit and the held-out rows scores the fit as if it were held out.
  Raises a one-line ValueError when more are asked than exist.

  Args:
    key: a `jax.random.key`.
    num_subsets: n, the number of subsets (positive).
    num_tasks: K, the number of tasks (positive).
    low: the smallest size, in [1, K].
    high: the largest size, in [low, K] (inclusive).
    distinct: whether repeats are dropped and redrawn.

  Returns:
    bool [n, K] (numpy).

  Raises:
    ValueError: when num_subsets or num_tasks is not a positive integer, low or high is outside its
      range, or (distinct) n exceeds the subsets of sizes low..high that exist.
  """
  _checks.positive_int(num_subsets, "num_subsets")
  _checks.positive_int(num_tasks, "num_tasks")
  if not 0 < low <= num_tasks:
    raise ValueError(f"size: must lie in [1, num_tasks={num_tasks}], got {low}")
  if not low <= high <= num_tasks:
    raise ValueError(f"size: the upper size must lie in [{low}, num_tasks={num_tasks}], got {high}")
  available = count_sized(num_tasks, low, high)
  if distinct and num_subsets > available:
    raise ValueError(f"num_subsets: {num_subsets} asked, but only {available} distinct subsets of {num_tasks} tasks "
                     f"have {low}..{high} tasks")

  def draw(k, n):
    # Ranking i.i.d. uniforms gives a uniform random permutation; the `size` smallest form the subset.
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(k, (n, num_tasks)), axis=1), axis=1)
    if low == high:
      return np.asarray(ranks < low)
    return np.asarray(ranks < jax.random.randint(jax.random.fold_in(k, 1), (n, 1), low, high + 1))

  if not distinct:
    return draw(key, num_subsets)
  # Round 0 is the whole draw of the with-replacement sampler (so a design without repeats is
  # unchanged); later rounds only replace repeats. Near exhaustion redraws would crawl, so a
  # design asking more than half of what exists is a permutation of all of them instead.
  if 2 * num_subsets > available:
    every = np.concatenate([without_sets(num_tasks, k) for k in range(low, high + 1)])
    return every[np.asarray(jax.random.permutation(key, len(every)))[:num_subsets]]
  return _distinct_rows(lambda r, n: draw(key if r == 0 else jax.random.fold_in(key, 1000 + r), n), num_subsets)


def without_sets(num_tasks: int, size: int) -> np.ndarray:
  """bool [C(K, size), K]: every subset of exactly `size` tasks, in lexicographic order of ids.

  Args:
    num_tasks: K.
    size: the subset size, in [0, K].

  Returns:
    bool [C(K, size), K] (numpy).
  """
  ids = np.array(list(itertools.combinations(range(num_tasks), size)), np.int64).reshape(-1, size)
  out = np.zeros((len(ids), num_tasks), bool)
  out[np.arange(len(ids))[:, None], ids] = True
  return out


def _distinct_rows(draw, num_subsets: int, accept=None, max_rounds: int = 64):
  """The first `num_subsets` distinct rows over rounds of `draw(round, count)` (round 0 draws
  `num_subsets`, later rounds 2 x what is missing + 64), keeping only rows `accept` allows; None
  when `max_rounds` do not find enough."""
  rows, seen = [], set()
  for r in range(max_rounds):
    for row in draw(r, num_subsets if r == 0 else 2 * (num_subsets - len(rows)) + 64):
      if (accept is None or accept(row)) and row.tobytes() not in seen:
        seen.add(row.tobytes())
        rows.append(row)
        if len(rows) == num_subsets:
          return np.stack(rows)
  return None

def full(num_tasks: int) -> jax.Array:
  """The full set, as a [1, K] batch.

  Args:
    num_tasks: K (positive).

  Returns:
    bool [1, K], all True.
  """
  return jnp.ones((1, _checks.positive_int(num_tasks, "num_tasks")), bool)


def leave_one_out(num_tasks: int) -> jax.Array:
  """Row k drops task k: [K, K].

  Args:
    num_tasks: K (positive).

  Returns:
    bool [K, K], False on the diagonal.
  """
  return ~jnp.eye(_checks.positive_int(num_tasks, "num_tasks"), dtype=bool)


def leave_two_out(num_tasks: int):
  """All subsets that drop a pair j < k: returns (masks [P, K], pairs [P, 2]), P = K (K - 1) / 2.

  Args:
    num_tasks: K, at least 2.

  Returns:
    (masks bool [P, K], pairs int32 [P, 2]) as jax arrays, the pairs in lexicographic order.

  Raises:
    ValueError: when num_tasks is not an integer >= 2.
  """
  _checks.positive_int(num_tasks, "num_tasks")
  if num_tasks < 2:
    raise ValueError(f"num_tasks: leave-two-out needs at least 2 tasks, got {num_tasks}")
  pairs = np.array(list(itertools.combinations(range(num_tasks), 2)), np.int32)
  return jnp.asarray(without_pairs(num_tasks, pairs)), jnp.asarray(pairs)


def without_pairs(num_tasks: int, pairs) -> np.ndarray:
  """bool [P, K]: the full set with both tasks of each pair (j, k) dropped (the masks of a second
  difference F(1) - F(1 - e_j) - F(1 - e_k) + F(1 - e_j - e_k)).

  Args:
    num_tasks: K (positive).
    pairs: int [P, 2] (or anything reshapeable to it), two distinct task ids in [0, K) per row.

  Returns:
    bool [P, K] (numpy).

  Raises:
    ValueError: when a pair holds an id outside [0, K) or the same id twice.
  """
  _checks.positive_int(num_tasks, "num_tasks")
  pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
  if pairs.size and (pairs.min() < 0 or pairs.max() >= num_tasks or np.any(pairs[:, 0] == pairs[:, 1])):
    raise ValueError(f"pairs: every pair must hold two distinct task ids in [0, {num_tasks}), got {pairs.tolist()}")
  masks = np.ones((len(pairs), num_tasks), bool)
  masks[np.arange(len(pairs))[:, None], pairs] = False
  return masks


def distinct_bernoulli(key, num_subsets: int, num_tasks: int, p: float = 0.5, *, empty: bool = False,
                       full: bool = True, max_rounds: int = 64) -> np.ndarray:
  """`num_subsets` distinct Bernoulli(p) subsets in draw order (bool [n, K]), the empty set left
  out unless `empty`, the full set unless `full`. Rounds of 2 n + 64 draws (round r from
  fold_in(key, r)) until enough are found; refused in one line when more are asked than exist,
  or when `max_rounds` do not suffice.

  Args:
    key: a `jax.random.key`.
    num_subsets: n, the number of distinct subsets (positive).
    num_tasks: K (positive).
    p: the inclusion probability of each task, in (0, 1).
    empty: whether the empty set may be drawn.
    full: whether the full set may be drawn.
    max_rounds: how many rounds of draws before giving up.

  Returns:
    bool [n, K] (numpy).

  Raises:
    ValueError: when n exceeds the subsets that exist (2^K less the ones left out), when `max_rounds`
      rounds do not find n, or on a bad num_subsets, num_tasks or p.
  """
  _checks.positive_int(num_subsets, "num_subsets")
  _checks.positive_int(num_tasks, "num_tasks")
  available = 2 ** num_tasks - (not empty) - (not full)
  if num_subsets > available:
    raise ValueError(f"num_subsets: {num_subsets} asked, but only {available} distinct subsets of {num_tasks} tasks "
                     f"exist{'' if empty else ', the empty set left out'}{'' if full else ', the full set left out'}")
  rows = _distinct_rows(
      lambda r, n: np.asarray(bernoulli(jax.random.fold_in(key, r), 2 * num_subsets + 64, num_tasks, p)), num_subsets,
      accept=lambda row: (empty or row.any()) and (full or not row.all()), max_rounds=max_rounds)
  if rows is None:
    raise ValueError(f"num_subsets: {num_subsets} distinct subsets of {num_tasks} tasks not found at p={p} in "
                     f"{max_rounds} rounds of draws (lower num_subsets or move p towards 0.5)")
  return rows

def from_ids(ids, num_tasks: int) -> np.ndarray:
  """Id lists (e.g. the demonstrations of an ICL prompt, any order) -> bool [m, K].

  Args:
    ids: a sequence of m id sequences, each holding task ids in [0, K) (repeats allowed, read once).
    num_tasks: K (positive).

  Returns:
    bool [m, K] (numpy).

  Raises:
    ValueError: when an id lies outside [0, K).
  """
  _checks.positive_int(num_tasks, "num_tasks")
  out = np.zeros((len(ids), num_tasks), bool)
  for i, row in enumerate(ids):
    row = np.asarray(row, np.int64).ravel()
    if row.size and (row.min() < 0 or row.max() >= num_tasks):
      raise ValueError(f"ids: row {i} holds task id {row[(row < 0) | (row >= num_tasks)][0]} outside [0, {num_tasks})")
    out[i, row] = True
  return out


def to_ids(S) -> list[np.ndarray]:
  """bool [m, K] -> list of sorted id arrays (ragged: subsets may differ in size).

  Args:
    S: bool or 0/1 [m, K].

  Returns:
    A list of m int arrays, row i the sorted ids of the tasks in subset i.

  Raises:
    ValueError: when S is not a 2-d 0/1 matrix.
  """
  S = _checks.as_subsets(S)
  return [np.flatnonzero(row) for row in S]


def collapse_columns(W):
  """Sample-level indicators -> task-level ones.

  Columns with identical patterns across all subsets belong to the same task (that is how the
  official code's sample-level vectors are built).

  Args:
    W: bool or 0/1 [m, n], n sample-level indicator columns.

  Returns:
    (S bool [m, K], task_of_column int [n]): one column per distinct pattern, tasks numbered in
    order of first appearance among W's columns.

  Raises:
    ValueError: when W is not a 2-d 0/1 matrix.
  """
  W = _checks.as_subsets(W, "W")
  patterns, first, inverse = np.unique(W.T, axis=0, return_index=True, return_inverse=True)
  order = np.argsort(first)
  rank = np.empty_like(order)
  rank[order] = np.arange(len(order))
  return patterns[order].T.copy(), rank[inverse.ravel()]
