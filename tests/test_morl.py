"""MORL experiment: objectives, vmapped PPO fine-tuning, normalization, estimator. Tiny configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("gymnax")

from ksurrogate_experiments.morl import envs, estimate, ppo  # noqa: E402

TINY = ppo.PPOConfig(num_envs=4, num_steps=8, num_updates=3, update_epochs=2, num_minibatches=2,
                     lr=1e-3, anneal_lr=False)
NAMES = ("balance", "stay_left", "stay_right")
ECFG = ppo.EvalConfig(num_episodes=3)


@pytest.fixture(scope="module")
def suite():
  return envs.Suite(NAMES, max_steps=30)


@pytest.fixture(scope="module")
def meta(suite):
  return ppo.train_meta(suite, TINY, seed=0)


@pytest.fixture(scope="module")
def finetune(suite):
  return ppo.make_finetune(suite, TINY)


@pytest.fixture(scope="module")
def one(suite):
  return ppo.make_finetune_one(suite, TINY)


MASKS = np.array([[1, 1, 1], [1, 1, 0], [0, 0, 1], [1, 0, 1]], bool)


def _tree_allclose(a, b, **kw):
  return all(np.allclose(x, y, **kw) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _tree_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ------------------------------------------------------------------ objectives

def test_rewards_follow_their_objective():
  o = jnp.zeros(4)
  left, right = jnp.array([-1.0, 0, 0, 0]), jnp.array([1.0, 0, 0, 0])
  R = {n: envs.OBJECTIVES[n].reward for n in envs.DEFAULT_NAMES}
  assert R["stay_left"](o, 0, left, 1.0) > R["stay_left"](o, 0, right, 1.0)
  assert R["stay_right"](o, 0, right, 1.0) > R["stay_right"](o, 0, left, 1.0)
  assert R["centered"](o, 0, jnp.zeros(4), 1.0) > R["centered"](o, 0, right, 1.0)
  assert R["slow_cart"](o, 0, jnp.array([0, 0.0, 0, 0]), 1.0) > R["slow_cart"](o, 0, jnp.array([0, 2.0, 0, 0]), 1.0)
  assert R["upright"](o, 0, jnp.zeros(4), 1.0) > R["upright"](o, 0, jnp.array([0, 0, 0.1, 0]), 1.0)
  for n, f in R.items():
    assert float(f(o, 1, left, 0.0)) == 0.0, n  # no reward once the pole has fallen
    for x in (left, right, jnp.array([2.4, -3.0, 0.2, 1.0])):
      assert 0.0 <= float(f(o, 1, x, 1.0)) <= 1.0, n


def test_physics_variants_change_dynamics_consistently():
  p = envs.env_params((("masspole", 0.5), ("length", 2.0)))
  assert np.isclose(p.total_mass, p.masscart + 0.5) and np.isclose(p.polemass_length, 1.0)
  s = envs.Suite(("balance", "short_pole", "coarse_time", "high_gravity", "weak_force"))
  obj = jnp.arange(5)
  keys = jax.random.split(jax.random.key(0), 5)
  obs, st = s.reset(jnp.stack([keys[0]] * 5), obj)  # same initial state in every slot
  obs2, _, r, _ = s.step(keys, st, jnp.ones(5, jnp.int32), obs, obj)
  assert len({tuple(np.round(np.asarray(x), 7)) for x in obs2}) == 5
  np.testing.assert_array_equal(r, 1.0)


def test_step_gives_the_slot_objective_reward(suite):
  obj = jnp.arange(3)
  obs, st = suite.reset(jnp.stack([jax.random.key(3)] * 3), obj)
  obs2, _, r, _ = suite.step(jax.random.split(jax.random.key(1), 3), st, jnp.zeros(3, jnp.int32), obs, obj)
  expect = [envs.OBJECTIVES[n].reward(obs[i], 0, obs2[i], 1.0) for i, n in enumerate(NAMES)]
  np.testing.assert_allclose(r, expect, rtol=1e-6)


# ------------------------------------------------------------------ PPO

def test_slots_spread_over_the_subset():
  obj = np.asarray(ppo.assign_slots(jnp.array([0, 1, 0, 1, 1], bool), 7))
  assert set(obj) == {1, 3, 4} and np.bincount(obj, minlength=5).tolist() == [0, 3, 0, 2, 2]


def test_finetune_is_deterministic_and_seeded(meta, one):
  a = one(meta, MASKS[1], jax.random.key(5))
  b = one(meta, MASKS[1], jax.random.key(5))
  c = one(meta, MASKS[1], jax.random.key(6))
  assert _tree_equal(a, b)
  assert not _tree_allclose(a, c, atol=1e-6)
  assert not _tree_allclose(a, meta, atol=1e-6)  # it trained


def test_vmapped_finetune_equals_single_runs(meta, finetune, one):
  key = jax.random.key(11)
  batched = finetune(meta, MASKS, key)
  for i, m in enumerate(MASKS):
    alone = one(meta, m, key)
    assert _tree_allclose(jax.tree.map(lambda x: x[i], batched), alone, rtol=1e-4, atol=1e-5), i
  # Different subsets really give different params (the check above can fail).
  assert not _tree_allclose(jax.tree.map(lambda x: x[0], batched),
                            jax.tree.map(lambda x: x[2], batched), atol=1e-6)


def test_objective_outside_subset_has_no_effect(meta, one):
  # Same first two objectives, a different third one: fine-tuning on {0, 1} must not notice.
  b = envs.Suite(("balance", "stay_left", "short_pole"), max_steps=30)
  key = jax.random.key(2)
  fa, fb = one, ppo.make_finetune_one(b, TINY)
  assert _tree_equal(fa(meta, MASKS[1], key), fb(meta, MASKS[1], key))
  assert not _tree_allclose(fa(meta, MASKS[0], key), fb(meta, MASKS[0], key), atol=1e-6)


def test_normalization_maps_meta_to_minus_one_and_random_to_zero(suite, meta):
  tg = ppo.target_ids(suite)
  norm = ppo.make_normalizer(suite, meta, tg, ECFG)
  R_meta = ppo.policy_returns(suite, meta, tg, ECFG)
  R_rand = ppo.returns_program(suite, ECFG, True)(meta["actor"], tg)  # uniform random actions
  gap = np.asarray(norm.meta_T - norm.random_T)
  np.testing.assert_allclose(norm(R_rand), 0.0, atol=1e-6)
  np.testing.assert_allclose(norm(R_meta), np.where(gap >= 1.0, -1.0, -gap), atol=1e-5)
  # Higher return -> lower (better) F; all returns within [0, max_steps].
  assert np.all(np.diff(np.asarray(norm(jnp.stack([R_meta, R_meta + 5.0])), float), axis=0) < 0)
  assert np.all((np.asarray(R_rand) >= 0) & (np.asarray(R_meta) <= suite.max_steps))


def test_outcomes_chunk_and_match_one_finetune(suite, meta, one):
  """ppo.outcomes (what the experiment's exact phases run) gives the same outcome in chunks of 3
  as alone, and as fine-tuning that subset by itself and evaluating it."""
  tg = ppo.target_ids(suite)
  norm = ppo.make_normalizer(suite, meta, tg, ECFG)
  key = jax.random.key(3)
  F, _ = ppo.outcomes(suite, meta, MASKS, key, tg, norm, cfg=TINY, ecfg=ECFG, chunk=3)
  assert F.shape == (4, 3) and np.all(np.isfinite(F))
  F_alone, _ = ppo.outcomes(suite, meta, MASKS[2:3], key, tg, norm, cfg=TINY, ecfg=ECFG, chunk=3)
  np.testing.assert_allclose(F_alone, F[2:3], rtol=1e-5, atol=1e-5)
  params = one(meta, MASKS[2], key)
  R = ppo.policy_returns(suite, params, tg, ECFG)
  np.testing.assert_allclose(F[2], norm(R), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ estimator

@pytest.fixture(scope="module")
def estimator(suite, meta):
  tg = ppo.target_ids(suite)
  norm = ppo.make_normalizer(suite, meta, tg, ECFG)
  cfg = estimate.EstimatorConfig(num_envs=2, num_steps=16, dim=8, newton_steps=10, solver="newton")
  est = estimate.Estimator(suite, meta, norm, tg, cfg, ECFG)
  # chunking pads the last chunk with full sets: the outcomes do not depend on the chunk size
  np.testing.assert_allclose(est.outcome(MASKS, "rollout", chunk=3), est.outcome(MASKS, "rollout", chunk=256),
                             rtol=1e-5, atol=1e-6)
  return est


def test_onestep_solver_is_one_newton_step(suite, meta, estimator):
  import dataclasses
  cfg = dataclasses.replace(estimator.cfg, solver="onestep")
  onestep = estimate.Estimator(suite, meta, estimator.norm, estimator.targets_T, cfg, ECFG)
  for i, m in enumerate(MASKS):   # the maximizer of the objective's second-order model at z = 0
    f = lambda z: -estimator.objective(z, jnp.asarray(m))   # noqa: E731
    z0 = jnp.zeros(cfg.dim)
    one_step = -jnp.linalg.solve(jax.hessian(f)(z0), jax.grad(f)(z0))
    np.testing.assert_allclose(onestep.z(MASKS)[i], one_step, rtol=1e-3, atol=1e-5)
  assert not np.allclose(onestep.z(MASKS), estimator.z(MASKS), atol=1e-5)  # more steps do move


def test_features_are_projected_jacobians(suite, meta, estimator):
  flat0, unravel = ppo.flat_actor(meta)
  o = estimator.data["obs"][5]
  v = jax.random.normal(jax.random.key(1), (estimator.cfg.dim,))
  _, tangent = jax.jvp(lambda th: ppo.actor_logits(unravel(th), o[None])[0], (flat0,), (estimator.P @ v,))
  np.testing.assert_allclose(estimator.G[5] @ v, tangent, rtol=1e-4, atol=1e-6)


def test_solution_is_the_optimum_and_vmaps(estimator):
  z = estimator.z(MASKS)
  for i, m in enumerate(MASKS):
    # the library's Newton picks its step by the float32 objective, so it stops where the
    # objective no longer resolves: optimal relative to the gradient at z = 0
    g = jax.grad(estimator.objective)(z[i], jnp.asarray(m))
    g0 = jax.grad(estimator.objective)(jnp.zeros_like(z[i]), jnp.asarray(m))
    assert float(jnp.linalg.norm(g)) < 1e-2 * float(jnp.linalg.norm(g0)), i
    np.testing.assert_allclose(estimator.z(MASKS[i:i + 1])[0], z[i], rtol=1e-4, atol=1e-6)
    base = estimator.objective(z[i], jnp.asarray(m))
    assert float(estimator.objective(z[i] + 0.05, jnp.asarray(m))) < float(base)
  assert not np.allclose(z[1], z[2])


def test_estimate_at_zero_step_is_the_meta_policy(suite, meta, estimator):
  F0 = np.asarray(estimator.norm(jax.vmap(estimator._rollout_returns, in_axes=(None, 0))(
      estimator.arrays, jnp.zeros((1, estimator.cfg.dim)))))
  R_meta = ppo.policy_returns(suite, meta, estimator.targets_T, ECFG)
  np.testing.assert_allclose(F0[0], estimator.norm(R_meta), atol=1e-5)
  for mode in ("rollout", "surrogate"):
    F = estimator.outcome(MASKS, mode, chunk=3)
    assert F.shape == (4, 3) and np.all(np.isfinite(F))


def test_first_order_error_vanishes_at_small_steps(meta, estimator):
  from ksurrogate import diagnostics
  obs = estimator.data["obs"][:20]
  stacked = jax.tree.map(lambda x: jnp.stack([x * (1 + 1e-3), x * 1.5]), meta["actor"])
  e_near, e_far = diagnostics.linearization_error(ppo.actor_logits, meta["actor"], stacked, obs)
  assert float(e_near.max()) < 1e-4 < float(e_far.mean())


# ------------------------------------------------------------------ bad input

def test_bad_input_messages(suite, meta, finetune, estimator):
  with pytest.raises(ValueError, match="^names: unknown objective"):
    envs.Suite(("balance", "moonwalk"))
  with pytest.raises(ValueError, match="^name: unknown objective"):
    suite.index("moonwalk")
  with pytest.raises(ValueError, match="^masks: empty subset in row 1"):
    finetune(meta, np.array([[1, 0, 0], [0, 0, 0]], bool), jax.random.key(0))
  with pytest.raises(ValueError, match=r"^masks: expected shape \[m, 3\]"):
    finetune(meta, np.ones((2, 4), bool), jax.random.key(0))
  with pytest.raises(ValueError, match="^S: expected shape"):
    estimator.z(np.ones(3, bool))
  with pytest.raises(ValueError, match="^mode:"):
    estimator.outcome(MASKS, "exact")
  with pytest.raises(ValueError, match="^num_minibatches:"):
    ppo.PPOConfig(num_envs=3, num_steps=3, num_minibatches=2)


def test_truth_seeds_skip_the_random_subsets_seed_and_extend_the_cpu_ones():
  from ksurrogate_experiments.morl import config as morl_config
  cpu, gpu = morl_config.get_config("cpu"), morl_config.get_config("gpu")
  assert morl_config.truth_seeds(cpu) == (*range(10), *range(11, 17))          # 16 seeds, 10 (the random subsets') left out
  seeds = morl_config.truth_seeds(gpu)
  assert len(seeds) == 24 == len(set(seeds)) and seeds[:16] == morl_config.truth_seeds(cpu)
  assert gpu.design.random_seed not in seeds
