"""ksurrogate.training: vmapped retraining / fine-tuning equal one model trained alone, sharding,
common random numbers, the full-data convergence check."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ksurrogate import training


def mlp_init(key):
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (3, 8)) * 0.5, "w2": jax.random.normal(k2, (8, 4)) * 0.5}


def mlp_apply(params, X):
  return jnp.tanh(X @ params["w1"]) @ params["w2"]


OPT = optax.adamw(0.03, weight_decay=0.1)
LOSS = training.supervised(mlp_apply)


def _data():
  r = np.random.default_rng(0)
  X = r.normal(size=(40, 3)).astype(np.float32)
  return (X, r.integers(0, 4, 40)), np.arange(40) % 5


def _alone(params, data, s, task_ids, **kw):
  return training.train(LOSS, params, data, s[task_ids].astype(np.float32), optimizer=OPT, **kw)


def test_vmapped_retraining_equals_sequential():
  data, task_ids = _data()
  S = np.array([[1, 1, 0, 1, 1], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1]], bool)
  init_key = jax.random.key(42)
  fn = training.trainer(LOSS, OPT, num_steps=25)
  stacked, losses = training.retrain_subsets(fn, mlp_init, data, task_ids, S, init_key=init_key, chunk_size=2,
                                             key=jax.random.key(1))
  keys = jax.random.split(jax.random.key(1), 3)
  for i, s in enumerate(S):
    p, l = _alone(mlp_init(init_key), data, s, task_ids, num_steps=25, key=keys[i])
    np.testing.assert_allclose(np.asarray(losses[i]), np.asarray(l), rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a)[i], np.asarray(b), rtol=1e-5, atol=1e-6), stacked, p)


def test_one_compiled_program_serves_every_chunk_and_call():
  data, task_ids = _data()
  fn = training.trainer(LOSS, OPT, num_steps=3)
  S = np.ones((5, 5), bool)
  S[np.arange(5), np.arange(5)] = False
  training.retrain_subsets(fn, mlp_init, data, task_ids, S, init_key=jax.random.key(0), chunk_size=2)
  program = training._per_subset(fn, mlp_init, False)
  from ksurrogate import batching
  before = batching._vmapped(program, 2)._cache_size()
  training.retrain_subsets(fn, mlp_init, data, task_ids, S[:3], init_key=jax.random.key(0), chunk_size=2)
  assert batching._vmapped(program, 2)._cache_size() == before == 1


def test_minibatch_draws_only_subset_examples():
  data, task_ids = _data()
  S = np.array([[1, 0, 0, 0, 0]], bool)
  fn = training.trainer(LOSS, OPT, num_steps=5, batch_size=4)
  stacked, _ = training.retrain_subsets(fn, mlp_init, data, task_ids, S, init_key=jax.random.key(0))
  assert np.all(np.isfinite(np.asarray(stacked["w1"])))
  # numpy inputs straight into train() with minibatches (traced indices into host arrays failed once)
  p, l = _alone(mlp_init(jax.random.key(0)), data, np.array([1, 0, 0, 0, 0], bool), task_ids, num_steps=3, batch_size=4)
  assert l.shape == (3,)
  with pytest.raises(ValueError, match="^S: subset 0 selects no training example"):
    training.retrain_subsets(fn, mlp_init, data, task_ids, np.zeros((1, 5), bool))
  with pytest.raises(ValueError, match="^num_steps: expected a positive integer"):
    training.trainer(LOSS, OPT, num_steps=-5)
  with pytest.raises(ValueError, match="^common_random_numbers: needs a trainer built with sampling='shared'"):
    training.retrain_subsets(fn, mlp_init, data, task_ids, S, common_random_numbers=True)


def test_vmapped_finetune_equals_sequential():
  data, task_ids = _data()
  params0 = mlp_init(jax.random.key(3))
  S = np.array([[1, 0, 1, 1, 0], [0, 1, 1, 0, 1], [1, 1, 1, 1, 1]], bool)
  fn = training.trainer(LOSS, optax.adam(0.05), num_steps=30)
  stacked, losses = training.finetune_subsets(fn, params0, data, task_ids, S, chunk_size=2)
  for i, s in enumerate(S):
    p, _ = training.train(LOSS, params0, data, s[task_ids].astype(np.float32), optimizer=optax.adam(0.05),
                          num_steps=30, key=jax.random.split(jax.random.key(0), 3)[i])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a)[i], np.asarray(b), rtol=1e-5, atol=1e-6), stacked, p)
  assert np.all(np.diff(np.asarray(losses), axis=1).mean(1) < 0)


def test_subset_axis_sharded_over_four_host_devices():
  code = textwrap.dedent("""
      import jax, numpy as np, sys
      sys.path.insert(0, %r)
      from test_training import mlp_init, LOSS, OPT, _data
      from ksurrogate import training
      assert jax.device_count() == 4, jax.devices()
      data, t = _data()
      S = np.ones((8, 5), bool); S[np.arange(8) %% 5, np.arange(8) %% 5] = False
      fn = training.trainer(LOSS, OPT, num_steps=10)
      a, la = training.retrain_subsets(fn, mlp_init, data, t, S, init_key=jax.random.key(0), chunk_size=4)
      print(np.asarray(la)[:, -1].tolist())
  """ % os.path.dirname(__file__))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  r4 = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
  assert r4.returncode == 0, r4.stderr[-2000:]
  data, t = _data()
  S = np.ones((8, 5), bool); S[np.arange(8) % 5, np.arange(8) % 5] = False
  fn = training.trainer(LOSS, OPT, num_steps=10)
  _, l1 = training.retrain_subsets(fn, mlp_init, data, t, S, init_key=jax.random.key(0), chunk_size=4)
  np.testing.assert_allclose(eval(r4.stdout.strip().splitlines()[-1]), np.asarray(l1)[:, -1], rtol=1e-5)


def test_common_random_numbers_share_one_minibatch_stream():
  data, task_ids = _data()
  key, init_key = jax.random.key(5), jax.random.key(42)
  S = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 1, 1], [0, 1, 1, 1, 1]], bool)
  shared = training.trainer(LOSS, OPT, num_steps=20, batch_size=8, sampling="shared")
  stacked, losses = training.retrain_subsets(shared, mlp_init, data, task_ids, S, init_key=init_key, key=key,
                                             chunk_size=2, common_random_numbers=True)
  # Every row is the single model `train` makes from the same key with "shared" sampling, so a
  # full-data model trained on its own joins the family exactly.
  for i, s in enumerate(S):
    p, l = _alone(mlp_init(init_key), data, s, task_ids, num_steps=20, batch_size=8, key=key, sampling="shared")
    np.testing.assert_allclose(np.asarray(losses[i]), np.asarray(l), rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a)[i], np.asarray(b), rtol=1e-5, atol=1e-6), stacked, p)
  # Without CRN the rows draw different streams: the same subset twice gives two models.
  S2 = np.array([[1, 1, 0, 1, 1]] * 2, bool)
  own = training.trainer(LOSS, OPT, num_steps=20, batch_size=8)
  indep, _ = training.retrain_subsets(own, mlp_init, data, task_ids, S2, init_key=init_key, key=key)
  assert not np.allclose(np.asarray(indep["w1"][0]), np.asarray(indep["w1"][1]))
  with pytest.raises(ValueError, match="^sampling: unknown value"):
    training.trainer(LOSS, OPT, num_steps=2, batch_size=8, sampling="bogus")


def test_subset_losses_is_the_mean_loss_over_the_subset():
  data, task_ids = _data()
  X, y = data
  S = np.array([[1, 0, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  fn = training.trainer(LOSS, OPT, num_steps=5)
  stacked, _ = training.retrain_subsets(fn, mlp_init, data, task_ids, S, init_key=jax.random.key(0))
  got = training.subset_losses(LOSS, stacked, data, task_ids, S, batch_size=7)
  for i, s in enumerate(S):
    rows = s[task_ids]
    p = jax.tree.map(lambda t: t[i], stacked)
    want = np.mean(np.asarray(training.cross_entropy(mlp_apply(p, X[rows]), y[rows])))
    np.testing.assert_allclose(got[i], want, rtol=1e-5)
