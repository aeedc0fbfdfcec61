"""ICL oracle and embedding-space estimator on the tiny random Llama (same code path as SmolLM2)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ksurrogate_experiments.icl import data as icl_data
from ksurrogate_experiments.icl import estimate as embedding_estimate
from ksurrogate_experiments.icl import inference
from ksurrogate_experiments.shared import llama


@pytest.fixture(scope="module")
def tiny():
  cfg = llama.tiny_config()
  return llama.init_params(cfg, jax.random.key(0)), cfg


def _task(aligned, K=10, T=7, seed=0, qmax=20):
  rng = np.random.default_rng(seed)
  slot = 9
  demos = tuple(rng.integers(3, 300, slot if aligned else rng.integers(4, 12)).astype(np.int32) for _ in range(K))
  queries = tuple(rng.integers(3, 300, rng.integers(3, qmax)).astype(np.int32) for _ in range(T))
  return icl_data.EncodedTask(demos, queries, rng.integers(0, 2, T).astype(np.int32), np.array([5, 9], np.int32),
                       1, slot if aligned else None)


@pytest.mark.parametrize("aligned", [False, True])
def test_bucketed_oracle_equals_naive_pairs(tiny, aligned):
  params, cfg = tiny
  task = _task(aligned)
  prompts = icl_data.sample_prompts(jax.random.key(1), 5, task.num_demos, 3)
  F = inference.outcomes(prompts, params=params, cfg=cfg, task=task, prompt_batch=2)
  F_naive = inference.naive_outcomes(prompts, params=params, cfg=cfg, task=task)
  assert F.shape == (5, task.num_queries)
  np.testing.assert_allclose(F, F_naive, atol=1e-5)
  assert F.std() > 1e-3  # the prompts really change the outcome


def test_oracle_is_the_label_cross_entropy(tiny):
  params, cfg = tiny
  task = _task(False)
  prompt = np.array([[2, 0, 5]])
  F = inference.outcomes(prompt, params=params, cfg=cfg, task=task)
  seq = np.concatenate([task.prompt_tokens(prompt[0]), task.query_tokens[3]])
  z = np.asarray(jax.jit(llama.forward, static_argnums=1)(params, cfg, jnp.asarray(seq)))[-1, task.option_ids]
  y = task.query_labels[3]
  np.testing.assert_allclose(F[0, 3], np.logaddexp(z[0], z[1]) - z[y], atol=1e-5)


def test_oracle_errors(tiny):
  params, cfg = tiny
  task = _task(False)
  with pytest.raises(ValueError, match=r"^prompts_idx: \d+ tokens exceed the largest bucket"):
    inference.outcomes(np.array([[0, 1, 2]]), params=params, cfg=cfg, task=task, prefix_buckets=(16, 24))
  with pytest.raises(ValueError, match=r"^prompts_idx: ids must lie in \[0, 10\)"):
    inference.outcomes(np.array([[0, 1, 10]]), params=params, cfg=cfg, task=task)
  with pytest.raises(ValueError, match="^prompts_idx: need a non-empty int array"):
    inference.outcomes(np.zeros((2, 3), float), params=params, cfg=cfg, task=task)
  with pytest.raises(ValueError, match="^prompt_batch:"):
    inference.outcomes(np.array([[0, 1, 2]]), params=params, cfg=cfg, task=task, prompt_batch=0)


def test_estimator_exact_at_anchors(tiny):
  params, cfg = tiny
  task = _task(True, qmax=8)
  anchors = icl_data.sample_prompts(jax.random.key(2), 3, task.num_demos, 3)
  lin = embedding_estimate.linearize(anchors, params=params, cfg=cfg, task=task)
  F = inference.outcomes(anchors, params=params, cfg=cfg, task=task)
  np.testing.assert_allclose(lin.F0, F, atol=1e-5)
  np.testing.assert_allclose(embedding_estimate.estimate(lin, anchors), F, atol=1e-5)
  assert list(embedding_estimate.nearest_anchor(anchors, anchors)) == [0, 1, 2]


def test_estimator_slot_contraction_equals_gradient_inner_product(tiny):
  """The pre-contracted gather must equal <grad, E(S) - E(S0)> computed directly."""
  params, cfg = tiny
  task = _task(True, qmax=8)
  anchors = np.array([[0, 1, 2]], np.int32)
  other = np.array([[0, 7, 4]], np.int32)
  lin = embedding_estimate.linearize(anchors, params=params, cfg=cfg, task=task)
  demo_E = llama.embed(params, cfg, jnp.asarray(np.stack(task.demo_tokens)))
  E0, E1 = demo_E[anchors[0]].reshape(-1, cfg.d_model), demo_E[other[0]].reshape(-1, cfg.d_model)
  (ids, qtok, qlen, qlab), = inference.query_groups(task, inference.QUERY_BUCKETS, 1)
  f = lambda E: embedding_estimate.queries_ce(params, cfg, E, jnp.asarray(qtok), jnp.asarray(qlen), jnp.asarray(qlab),
                             jnp.asarray(task.option_ids))
  # forward mode along E1 - E0: independent of the VJP + per-demo contraction being tested
  f0, directional = jax.jvp(f, (E0,), (E1 - E0,))
  np.testing.assert_allclose(embedding_estimate.estimate(lin, other)[0, ids], np.asarray(f0 + directional), atol=1e-4)
  assert np.abs(np.asarray(directional)).max() > 1e-3


def test_estimator_error_is_second_order(tiny):
  """Along the straight line from the anchor's embeddings to another prompt's, the expansion's
  error must shrink faster than the step (first-order accuracy)."""
  params, cfg = tiny
  task = _task(True, qmax=8)
  anchor, other = np.array([3, 1, 8]), np.array([3, 6, 0])
  demo_E = llama.embed(params, cfg, jnp.asarray(np.stack(task.demo_tokens)))
  E0, E1 = demo_E[anchor].reshape(-1, cfg.d_model), demo_E[other].reshape(-1, cfg.d_model)
  (ids, qtok, qlen, qlab), *_ = inference.query_groups(task, inference.QUERY_BUCKETS, 1)
  f = lambda E: embedding_estimate.queries_ce(params, cfg, E, jnp.asarray(qtok), jnp.asarray(qlen), jnp.asarray(qlab),
                             jnp.asarray(task.option_ids))
  f0, jvp_dir = jax.jvp(f, (E0,), (E1 - E0,))
  errs = [float(jnp.abs(f(E0 + e * (E1 - E0)) - (f0 + e * jvp_dir)).max()) for e in (0.02, 0.01, 0.005)]
  first_order = float(jnp.abs(jvp_dir).max())
  assert errs[0] < 0.25 * 0.02 * first_order, (errs, first_order)  # well below the linear change
  assert errs[1] < 0.4 * errs[0] and errs[2] < 0.4 * errs[1], errs


def test_estimator_needs_aligned_slots(tiny):
  params, cfg = tiny
  with pytest.raises(ValueError, match="^task: the estimator needs slot-aligned"):
    embedding_estimate.linearize(np.array([[0, 1, 2]]), params=params, cfg=cfg, task=_task(False))


def test_nearest_anchor_prefers_same_slot():
  anchors = np.array([[1, 2, 3, 4], [4, 3, 2, 9]])
  # shares {2, 3, 4} with both, but slots only with anchor 1
  assert list(embedding_estimate.nearest_anchor(np.array([[0, 3, 2, 4]]), anchors)) == [1]
  assert list(embedding_estimate.nearest_anchor(np.array([[1, 2, 3, 5]]), anchors)) == [0]


def test_neighbours_differ_in_one_slot():
  anchors = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
  nb = embedding_estimate.neighbours(anchors, 20, 5, seed=3)
  diff = (nb != np.repeat(anchors, 5, axis=0)).sum(1)
  assert nb.shape == (10, 4) and (diff == 1).all()
  assert all(len(set(r)) == 4 for r in nb)
