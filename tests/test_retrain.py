import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ksurrogate import finetune, retrain


def mlp_init(key):
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (3, 8)) * 0.5, "w2": jax.random.normal(k2, (8, 4)) * 0.5}


def mlp_apply(params, X):
  return jnp.tanh(X @ params["w1"]) @ params["w2"]


OPT = optax.adamw(0.03, weight_decay=0.1)


def _data():
  r = np.random.default_rng(0)
  X = r.normal(size=(40, 3)).astype(np.float32)
  return X, r.integers(0, 4, 40), np.arange(40) % 5


def test_vmapped_retraining_equals_sequential():
  X, y, task_ids = _data()
  S = np.array([[1, 1, 0, 1, 1], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1]], bool)
  init_key = jax.random.key(42)
  stacked, losses = retrain.retrain_subsets(mlp_init, mlp_apply, X, y, task_ids, S, optimizer=OPT, num_steps=25,
                                            init_key=init_key, chunk_size=2, key=jax.random.key(1))
  keys = jax.random.split(jax.random.key(1), 3)
  for i, s in enumerate(S):
    p, l = finetune.train(mlp_apply, mlp_init(init_key), X, y, s[task_ids].astype(np.float32), optimizer=OPT,
                          num_steps=25, key=keys[i])
    np.testing.assert_allclose(np.asarray(losses[i]), np.asarray(l), rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a)[i], np.asarray(b), rtol=1e-5, atol=1e-6), stacked, p)


def test_minibatch_draws_only_subset_examples():
  X, y, task_ids = _data()
  S = np.array([[1, 0, 0, 0, 0]], bool)
  # A model trained on task 0 alone with minibatches must equal one trained on only task-0 rows.
  stacked, _ = retrain.retrain_subsets(mlp_init, mlp_apply, X, y, task_ids, S, optimizer=OPT, num_steps=5,
                                       init_key=jax.random.key(0), batch_size=4)
  assert np.all(np.isfinite(np.asarray(stacked["w1"])))
  # numpy inputs straight into train() with minibatches (traced indices into host arrays failed once)
  p, l = finetune.train(mlp_apply, mlp_init(jax.random.key(0)), X, y, (task_ids == 0).astype(np.float32),
                        optimizer=OPT, num_steps=3, batch_size=4)
  assert l.shape == (3,)
  with pytest.raises(ValueError, match="^S: subset 0 selects no training example"):
    retrain.retrain_subsets(mlp_init, mlp_apply, X, y, task_ids, np.zeros((1, 5), bool), optimizer=OPT, num_steps=2)
  with pytest.raises(ValueError, match="^params0: give exactly one"):
    finetune.train_subsets(mlp_apply, X, y, task_ids, S, optimizer=OPT, num_steps=2)


def test_subset_axis_sharded_over_four_host_devices():
  code = textwrap.dedent("""
      import jax, numpy as np, sys
      sys.path.insert(0, %r)
      from test_retrain import mlp_init, mlp_apply, OPT, _data
      from ksurrogate import retrain
      assert jax.device_count() == 4, jax.devices()
      X, y, t = _data()
      S = np.ones((8, 5), bool); S[np.arange(8) %% 5, np.arange(8) %% 5] = False
      a, la = retrain.retrain_subsets(mlp_init, mlp_apply, X, y, t, S, optimizer=OPT, num_steps=10, init_key=jax.random.key(0), chunk_size=4)
      print(np.asarray(la)[:, -1].tolist())
  """ % os.path.dirname(__file__))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  r4 = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
  assert r4.returncode == 0, r4.stderr[-2000:]
  X, y, t = _data()
  S = np.ones((8, 5), bool); S[np.arange(8) % 5, np.arange(8) % 5] = False
  _, l1 = retrain.retrain_subsets(mlp_init, mlp_apply, X, y, t, S, optimizer=OPT, num_steps=10, init_key=jax.random.key(0), chunk_size=4)
  np.testing.assert_allclose(eval(r4.stdout.strip().splitlines()[-1]), np.asarray(l1)[:, -1], rtol=1e-5)


def test_common_random_numbers_share_one_minibatch_stream():
  X, y, task_ids = _data()
  key, init_key = jax.random.key(5), jax.random.key(42)
  S = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 1, 1], [0, 1, 1, 1, 1]], bool)
  stacked, losses = retrain.retrain_subsets(mlp_init, mlp_apply, X, y, task_ids, S, optimizer=OPT, num_steps=20,
                                            init_key=init_key, batch_size=8, key=key, chunk_size=2,
                                            common_random_numbers=True)
  # Every row is the single model `train` makes from the same key with "shared" sampling, so a
  # full-data model trained on its own joins the family exactly.
  for i, s in enumerate(S):
    p, l = finetune.train(mlp_apply, mlp_init(init_key), X, y, s[task_ids].astype(np.float32), optimizer=OPT,
                          num_steps=20, batch_size=8, key=key, sampling="shared")
    np.testing.assert_allclose(np.asarray(losses[i]), np.asarray(l), rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a)[i], np.asarray(b), rtol=1e-5, atol=1e-6), stacked, p)
  # Without CRN the rows draw different streams: the same subset twice gives two models.
  S2 = np.array([[1, 1, 0, 1, 1]] * 2, bool)
  indep, _ = retrain.retrain_subsets(mlp_init, mlp_apply, X, y, task_ids, S2, optimizer=OPT, num_steps=20,
                                     init_key=init_key, batch_size=8, key=key)
  assert not np.allclose(np.asarray(indep["w1"][0]), np.asarray(indep["w1"][1]))
  with pytest.raises(ValueError, match="^sampling: unknown value"):
    finetune.train(mlp_apply, mlp_init(init_key), X, y, np.ones(40, np.float32), optimizer=OPT, num_steps=2,
                   batch_size=8, sampling="bogus")


def test_subset_losses_is_the_mean_loss_over_the_subset():
  X, y, task_ids = _data()
  S = np.array([[1, 0, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  stacked, _ = retrain.retrain_subsets(mlp_init, mlp_apply, X, y, task_ids, S, optimizer=OPT, num_steps=5,
                                       init_key=jax.random.key(0))
  got = finetune.subset_losses(mlp_apply, stacked, X, y, task_ids, S, batch_size=7)
  for i, s in enumerate(S):
    rows = s[task_ids]
    p = jax.tree.map(lambda t: t[i], stacked)
    want = np.mean(np.asarray(finetune.cross_entropy(mlp_apply(p, X[rows]), y[rows])))
    np.testing.assert_allclose(got[i], want, rtol=1e-5)
