"""Objectives ("tasks") of the MORL experiment: CartPole dynamics variants and reward variants.

An objective is a pair (gymnax CartPole params, reward function). All objectives share the
CartPole observation and action spaces, and the policy never sees which objective it is acting
in, so objectives that want different behaviour in the same state (stay left / stay right)
conflict, and objectives that want the same behaviour under slightly different physics help
each other.

Rewards are functions of (obs, action, next_obs, env_reward), with next_obs the observation
before any automatic reset. Every reward lies in [0, 1] per step, so returns lie in
[0, max_steps].
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import gymnax
import jax
import jax.numpy as jnp
from gymnax.environments.classic_control.cartpole import CartPole, EnvParams

# Short episodes keep both training rollouts and evaluation cheap; 200 steps still separates a
# balancing policy from a random one (which falls after ~20 steps).
MAX_STEPS = 200
X_LIMIT = 2.4
THETA_LIMIT = 12 * 2 * jnp.pi / 360


def _alive(obs, action, next_obs, env_reward):
  return env_reward


def _stay_left(obs, action, next_obs, env_reward):
  # Bonus grows linearly to the left edge; balancing still dominates because falling ends it.
  return env_reward * jnp.clip(0.5 - 0.5 * next_obs[0] / X_LIMIT, 0.0, 1.0)


def _stay_right(obs, action, next_obs, env_reward):
  return env_reward * jnp.clip(0.5 + 0.5 * next_obs[0] / X_LIMIT, 0.0, 1.0)


def _centered(obs, action, next_obs, env_reward):
  return env_reward * jnp.exp(-next_obs[0] ** 2)


def _slow_cart(obs, action, next_obs, env_reward):
  return env_reward * jnp.exp(-next_obs[1] ** 2)


def _upright(obs, action, next_obs, env_reward):
  return env_reward * jnp.clip(1.0 - jnp.abs(next_obs[2]) / THETA_LIMIT, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Objective:
  name: str
  physics: tuple  # ((field, value), ...) overrides of the default CartPole params
  reward: Callable
  family: str


_ALL = (
    Objective("balance", (), _alive, "physics"),
    # Short pole and coarse control steps make balancing hard (the meta-policy does not reach
    # the time limit on them); strong gravity and a weak motor are milder, the meta-policy saturates.
    Objective("short_pole", (("length", 0.08),), _alive, "physics"),
    Objective("coarse_time", (("tau", 0.06),), _alive, "physics"),
    Objective("high_gravity", (("gravity", 40.0),), _alive, "physics"),
    Objective("weak_force", (("force_mag", 2.0),), _alive, "physics"),
    Objective("stay_left", (), _stay_left, "reward"),
    Objective("stay_right", (), _stay_right, "reward"),
    Objective("centered", (), _centered, "reward"),
    Objective("slow_cart", (), _slow_cart, "reward"),
    Objective("upright", (), _upright, "reward"),
)
OBJECTIVES = {o.name: o for o in _ALL}
DEFAULT_NAMES = tuple(o.name for o in _ALL)


def env_params(physics: tuple, max_steps: int = MAX_STEPS) -> EnvParams:
  """CartPole params with overrides, keeping the derived fields (total mass, pole mass x length)
  consistent with the overridden ones."""
  p = dataclasses.replace(EnvParams(), max_steps_in_episode=max_steps, **dict(physics))
  return dataclasses.replace(p, total_mass=p.masspole + p.masscart,
                             polemass_length=p.masspole * p.length)


class Suite:
  """K objectives in a fixed order. Hashable by identity, so jitted factories can close over it.

  params_K: EnvParams whose every field is a float [K] array, gathered per env slot by objective
  id; reward_K evaluates all K reward functions (they are a few flops each) so that a slot's
  reward is a gather, which vmaps over dynamic objective assignments.
  """

  def __init__(self, names=DEFAULT_NAMES, max_steps: int = MAX_STEPS):
    names = tuple(names)
    if not names:
      raise ValueError("names: need at least one objective")
    for n in names:
      if n not in OBJECTIVES:
        raise ValueError(f"names: unknown objective {n!r}; known: {', '.join(OBJECTIVES)}")
    if len(set(names)) != len(names):
      raise ValueError(f"names: duplicate objectives in {names}")
    self.names = names
    self.K = len(names)
    self.max_steps = int(max_steps)
    self.env = CartPole()
    self.objectives = tuple(OBJECTIVES[n] for n in names)
    per = [env_params(o.physics, self.max_steps) for o in self.objectives]
    self.params_K = jax.tree.map(lambda *xs: jnp.asarray(xs, jnp.float32), *per)
    self.obs_dim = 4
    self.num_actions = self.env.num_actions

  def index(self, name: str) -> int:
    if name not in self.names:
      raise ValueError(f"name: unknown objective {name!r}; this suite has {', '.join(self.names)}")
    return self.names.index(name)

  def params_for(self, obj_N):
    """EnvParams for env slots with objective ids obj_N (int [N])."""
    return jax.tree.map(lambda x: x[obj_N], self.params_K)

  def reward(self, obj, obs, action, next_obs, env_reward):
    """Reward of one transition in an env slot with objective id `obj` (scalar int)."""
    r_K = jnp.stack([o.reward(obs, action, next_obs, env_reward) for o in self.objectives])
    return r_K[obj]

  def reset(self, key_N, obj_N):
    return jax.vmap(self.env.reset)(key_N, self.params_for(obj_N))

  def step(self, key_N, state_N, action_N, obs_NxO, obj_N):
    """One vectorized step with automatic reset. Returns (obs, state, reward, done), where the
    reward is the objective's and done ends the episode (termination or time limit)."""
    obs2, state2, r_env, term, trunc, info = jax.vmap(self.env.step)(
        key_N, state_N, action_N, self.params_for(obj_N))
    reward = jax.vmap(self.reward)(obj_N, obs_NxO, action_N, info["final_observation"],
                                   r_env.astype(jnp.float32))
    return obs2, state2, reward, jnp.logical_or(term, trunc)


def check_masks(masks, K: int, name: str = "masks"):
  """Validates a bool batch of subset indicators [m, K] on the host; returns it as a jax array."""
  arr = jnp.asarray(masks)
  if arr.ndim != 2 or arr.shape[1] != K:
    raise ValueError(f"{name}: expected shape [m, {K}], got {tuple(arr.shape)}")
  if arr.dtype != jnp.bool_:
    raise ValueError(f"{name}: expected a bool array, got {arr.dtype}")
  if arr.shape[0] == 0:
    raise ValueError(f"{name}: no subsets given")
  empty = ~jnp.any(arr, axis=1)
  if bool(jnp.any(empty)):
    raise ValueError(f"{name}: empty subset in row {int(jnp.argmax(empty))}; every subset needs an objective")
  return arr


def _make_gymnax_check():
  # The installed gymnax must return the 6-tuple (obs, state, reward, terminated, truncated,
  # info) from env.step; fail loudly at import on an API change instead of mis-unpacking.
  env, params = gymnax.make("CartPole-v1")
  k = jax.random.key(0)
  obs, st = env.reset(k, params)
  out = env.step(k, st, 0, params)
  if len(out) != 6 or "final_observation" not in out[-1]:
    raise ImportError(f"gymnax: expected env.step to return 6 items with final_observation, got {len(out)}")


_make_gymnax_check()
