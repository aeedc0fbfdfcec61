import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ksurrogate import subsets

_settings = settings(max_examples=25, deadline=None)


@_settings
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 40), K=st.integers(1, 30), data=st.data())
def test_fixed_size_exact_sizes_and_determinism(seed, m, K, data):
  size = data.draw(st.integers(1, K))
  m = min(m, math.comb(K, size))
  S = np.asarray(subsets.fixed_size(jax.random.key(seed), m, K, size))
  assert S.shape == (m, K) and S.dtype == bool and np.all(S.sum(1) == size)
  assert len(np.unique(S, axis=0)) == m
  np.testing.assert_array_equal(S, np.asarray(subsets.fixed_size(jax.random.key(seed), m, K, size)))


def test_fixed_size_is_uniform_over_tasks():
  S = np.asarray(subsets.fixed_size(jax.random.key(0), 20000, 10, 3, distinct=False))
  np.testing.assert_allclose(S.mean(0), 0.3, atol=0.015)


@_settings
@given(seed=st.integers(0, 2**31 - 1), p=st.floats(0.05, 0.95))
def test_bernoulli_shape_and_rate(seed, p):
  S = np.asarray(subsets.bernoulli(jax.random.key(seed), 4000, 5, p))
  assert S.dtype == bool and abs(S.mean() - p) < 0.03


@_settings
@given(K=st.integers(2, 12))
def test_loo_and_lto_masks(K):
  loo = np.asarray(subsets.leave_one_out(K))
  assert np.all(loo.sum(1) == K - 1) and np.all(~np.diag(loo))
  lto, pairs = subsets.leave_two_out(K)
  lto, pairs = np.asarray(lto), np.asarray(pairs)
  assert len(lto) == K * (K - 1) // 2 and np.all(lto.sum(1) == K - 2)
  assert np.all(~lto[np.arange(len(pairs)), pairs[:, 0]]) and np.all(pairs[:, 0] < pairs[:, 1])


@_settings
@given(ids=st.lists(st.lists(st.integers(0, 49), min_size=0, max_size=6, unique=True), min_size=1, max_size=20))
def test_ids_roundtrip(ids):
  S = subsets.from_ids(ids, 50)
  assert [sorted(r) for r in ids] == [list(r) for r in subsets.to_ids(S)]


@_settings
@given(seed=st.integers(0, 1000), n_tasks=st.integers(1, 8), per_task=st.integers(1, 5))
def test_collapse_columns_recovers_tasks(seed, n_tasks, per_task):
  rng = np.random.default_rng(seed)
  S = np.unique(rng.random((30, n_tasks)) < 0.5, axis=1)   # distinct task columns
  task_of_col = rng.permutation(np.repeat(np.arange(S.shape[1]), per_task))
  W = S[:, task_of_col]
  S2, t2 = subsets.collapse_columns(W)
  np.testing.assert_array_equal(S2[:, t2], W)
  assert S2.shape[1] == S.shape[1]


def test_deduplicate_averages():
  S = np.array([[1, 0], [0, 1], [1, 0]], bool)
  F = np.array([[1.0], [5.0], [3.0]])
  with pytest.warns(UserWarning, match="duplicate"):
    S2, F2 = subsets.deduplicate(S, F)
  np.testing.assert_array_equal(S2, [[1, 0], [0, 1]])
  np.testing.assert_array_equal(F2, [[2.0], [5.0]])


def test_sized_covers_the_size_range_uniformly():
  S = np.asarray(subsets.sized(jax.random.key(3), 6000, 25, 22, 24, distinct=False))
  counts = np.bincount(S.sum(1), minlength=26)[22:25]
  assert counts.sum() == 6000 and np.all(np.abs(counts / 6000 - 1 / 3) < 0.03)
  assert np.all(np.abs(S.mean(0) - S.sum(1).mean() / 25) < 0.03)   # no task favoured
  np.testing.assert_array_equal(np.asarray(subsets.sized(jax.random.key(3), 5, 25, 22, 22)),
                                np.asarray(subsets.fixed_size(jax.random.key(3), 5, 25, 22)))
  with pytest.raises(ValueError, match="upper size"):
    subsets.sized(jax.random.key(0), 5, 25, 22, 26)


def test_sized_draws_distinct_subsets_and_refuses_more_than_exist():
  # 14 of 16 tasks: the modular tiny design; with replacement, seed 2 repeats a subset
  iid = np.asarray(subsets.fixed_size(jax.random.key(2), 14, 16, 13, distinct=False))
  S = np.asarray(subsets.fixed_size(jax.random.key(2), 14, 16, 13))
  assert len(np.unique(S, axis=0)) == 14 and np.all(S.sum(1) == 13)
  first = [i for i in range(14) if not any((iid[i] == iid[:i]).all(1))]
  assert len(first) < 14   # the i.i.d. draw repeats; the distinct one keeps its first occurrences, in order
  np.testing.assert_array_equal(S[:len(first)], iid[first])
  every = np.asarray(subsets.sized(jax.random.key(0), 560, 16, 13, 13))   # all of C(16, 13), permuted
  assert len(np.unique(every, axis=0)) == 560
  assert subsets.count_sized(25, 22, 24) == 2625
  with pytest.raises(ValueError, match=r"^num_subsets: 561 asked, but only 560 distinct subsets of 16 tasks have 13..13"):
    subsets.fixed_size(jax.random.key(0), 561, 16, 13)
  with pytest.raises(ValueError, match=r"^num_subsets: 31 asked, but only 30 distinct subsets of 5 tasks exist"):
    subsets.distinct_bernoulli(jax.random.key(0), 31, 5, full=False)
  D = subsets.distinct_bernoulli(jax.random.key(0), 30, 5, full=False)
  assert len(np.unique(D, axis=0)) == 30 and D.any(1).all() and not D.all(1).any()
