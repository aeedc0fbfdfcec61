"""PureJaxRL-style PPO over a suite of objectives, and the exact subset outcome F(S).

One training run is one jitted program: a `lax.scan` over updates, each collecting a rollout of
`num_envs` env slots for `num_steps` steps, computing GAE and doing `update_epochs` passes of
`num_minibatches` clipped-PPO minibatch steps.

Subset fine-tuning re-assigns env slots among the objectives of S (slot i gets the
(i mod |S|)-th objective of S) rather than masking the loss of slots whose objective is outside
S. Reasons: (1) every subset gets the same budget (env steps, batch size, gradient steps) as the
full set, so F(S) measures which objectives are trained on, not how much data there was; with
masking a subset of 1 objective would train on 1/K of the batch with K times noisier advantages;
(2) under `vmap` every env step is compute spent on the subset instead of on masked-out slots.
Shapes stay static (the assignment is a gather with `jnp.nonzero(size=K)`), so the whole
fine-tuning vmaps over a batch of masks [m, K] in one compiled program. The meta-policy is the
same program with the all-ones mask (slots spread evenly, slot i -> objective i mod K).

All subsets share the PRNG key of a seed (common random numbers): the same env-reset and
action-sampling streams per slot, so differences between F(S) come from S, not from noise.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from ksurrogate_experiments.morl.envs import Suite, check_masks
from ksurrogate import batching


@dataclasses.dataclass(frozen=True)
class PPOConfig:
  num_envs: int = 20
  num_steps: int = 64
  num_updates: int = 100
  update_epochs: int = 4
  num_minibatches: int = 4
  lr: float = 2.5e-4
  anneal_lr: bool = True
  gamma: float = 0.99
  gae_lambda: float = 0.95
  clip_eps: float = 0.2
  ent_coef: float = 0.01
  vf_coef: float = 0.5
  max_grad_norm: float = 0.5
  hidden: int = 64

  @property
  def total_steps(self) -> int:
    return self.num_envs * self.num_steps * self.num_updates

  def __post_init__(self):
    for f in ("num_envs", "num_steps", "num_updates", "update_epochs", "num_minibatches", "hidden"):
      v = getattr(self, f)
      if not isinstance(v, int) or v <= 0:
        raise ValueError(f"{f}: must be a positive int, got {v!r}")
    if (self.num_envs * self.num_steps) % self.num_minibatches:
      raise ValueError(f"num_minibatches: must divide num_envs * num_steps = "
                       f"{self.num_envs * self.num_steps}, got {self.num_minibatches}")


# Meta-policy: 1M env steps on all objectives; fine-tuning: 82k steps per subset, constant lr.
META = PPOConfig(num_envs=40, num_steps=128, num_updates=200)
FINETUNE = PPOConfig(num_envs=16, num_steps=64, num_updates=80, lr=2.5e-4, anneal_lr=False)


# ---------------------------------------------------------------- network

def _dense_init(key, n_in, n_out, scale):
  W = jax.nn.initializers.orthogonal(scale)(key, (n_in, n_out), jnp.float32)
  return {"W": W, "b": jnp.zeros((n_out,), jnp.float32)}


def init_params(key, obs_dim: int, num_actions: int, hidden: int = 64):
  """Separate 2x`hidden` tanh MLPs for actor and critic, PureJaxRL's orthogonal init."""
  k = jax.random.split(key, 6)
  s2 = float(np.sqrt(2))
  return {
      "actor": [_dense_init(k[0], obs_dim, hidden, s2), _dense_init(k[1], hidden, hidden, s2),
                _dense_init(k[2], hidden, num_actions, 0.01)],
      "critic": [_dense_init(k[3], obs_dim, hidden, s2), _dense_init(k[4], hidden, hidden, s2),
                 _dense_init(k[5], hidden, 1, 1.0)],
  }


def _mlp(layers, x):
  for layer in layers[:-1]:
    x = jnp.tanh(x @ layer["W"] + layer["b"])
  return x @ layers[-1]["W"] + layers[-1]["b"]


def actor_logits(actor_params, obs_NxO):
  """Action logits [N, A] (the policy output whose Jacobian the estimator uses)."""
  return _mlp(actor_params, obs_NxO)


def value(critic_params, obs_NxO):
  return _mlp(critic_params, obs_NxO)[..., 0]


# ---------------------------------------------------------------- training

def assign_slots(mask_K, num_envs: int):
  """Objective id per env slot: slot i -> (i mod |S|)-th member of S. Static shapes; assumes a
  non-empty mask (checked on the host by the public entry points)."""
  K = mask_K.shape[0]
  ids_K = jnp.nonzero(mask_K, size=K, fill_value=0)[0]
  count = jnp.maximum(jnp.sum(mask_K), 1)
  return ids_K[jnp.arange(num_envs) % count]


class Transition(NamedTuple):
  obs: jax.Array
  action: jax.Array
  logp: jax.Array
  value: jax.Array
  reward: jax.Array
  done: jax.Array


def _optimizer(cfg: PPOConfig):
  if cfg.anneal_lr:
    steps = cfg.num_updates * cfg.update_epochs * cfg.num_minibatches
    lr = optax.linear_schedule(cfg.lr, 0.0, steps)
  else:
    lr = cfg.lr
  return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(lr, eps=1e-5))


def _ppo_loss(params, batch, gae, targets, cfg: PPOConfig):
  logits = actor_logits(params["actor"], batch.obs)
  logp_all = jax.nn.log_softmax(logits)
  logp = jnp.take_along_axis(logp_all, batch.action[:, None], axis=1)[:, 0]
  v = value(params["critic"], batch.obs)
  v_clipped = batch.value + jnp.clip(v - batch.value, -cfg.clip_eps, cfg.clip_eps)
  v_loss = 0.5 * jnp.maximum((v - targets) ** 2, (v_clipped - targets) ** 2).mean()
  ratio = jnp.exp(logp - batch.logp)
  adv = (gae - gae.mean()) / (gae.std() + 1e-8)
  pg = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv).mean()
  entropy = -(jnp.exp(logp_all) * logp_all).sum(-1).mean()
  return pg + cfg.vf_coef * v_loss - cfg.ent_coef * entropy


def gae(traj: Transition, last_value, cfg: PPOConfig):
  def back(carry, t):
    gae, next_value = carry
    delta = t.reward + cfg.gamma * next_value * (1 - t.done) - t.value
    gae = delta + cfg.gamma * cfg.gae_lambda * (1 - t.done) * gae
    return (gae, t.value), gae
  _, adv = jax.lax.scan(back, (jnp.zeros_like(last_value), last_value), traj, reverse=True)
  return adv, adv + traj.value


def train(suite: Suite, cfg: PPOConfig, params0, mask_K, key, return_curve: bool = False,
          checkpoints: int = 0):
  """PPO from params0 on the objectives in mask_K (bool [K]) for cfg.total_steps env steps.

  Pure and traceable: jit it, or vmap it over masks. Returns the trained params (a fresh Adam
  state each call: fine-tuning does not inherit the meta-policy's optimizer moments), and with
  `return_curve` also the mean reward per env slot of each update's rollout [num_updates], and
  with `checkpoints` = n > 0 also the params after every num_updates / n updates (stacked [n])."""
  obj_N = assign_slots(mask_K, cfg.num_envs)
  tx = _optimizer(cfg)
  k_reset, k_loop = jax.random.split(key)
  obs_NxO, env_state = suite.reset(jax.random.split(k_reset, cfg.num_envs), obj_N)

  def env_step(carry, _):
    params, env_state, obs, key = carry
    key, k_act, k_env = jax.random.split(key, 3)
    logits = actor_logits(params["actor"], obs)
    action = jax.random.categorical(k_act, logits)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], axis=1)[:, 0]
    v = value(params["critic"], obs)
    obs2, env_state, reward, done = suite.step(
        jax.random.split(k_env, cfg.num_envs), env_state, action, obs, obj_N)
    return (params, env_state, obs2, key), Transition(obs, action, logp, v, reward, done.astype(jnp.float32))

  def update(carry, _):
    params, opt_state, env_state, obs, key = carry
    (params, env_state, obs, key), traj = jax.lax.scan(
        env_step, (params, env_state, obs, key), None, cfg.num_steps)
    adv, targets = gae(traj, value(params["critic"], obs), cfg)
    B = cfg.num_envs * cfg.num_steps
    flat = lambda x: x.reshape((B,) + x.shape[2:])
    data = (jax.tree.map(flat, traj), flat(adv), flat(targets))

    def epoch(carry, _):
      params, opt_state, key = carry
      key, k_perm = jax.random.split(key)
      perm = jax.random.permutation(k_perm, B)
      mb = jax.tree.map(
          lambda x: x[perm].reshape((cfg.num_minibatches, -1) + x.shape[1:]), data)

      def minibatch(carry, batch):
        params, opt_state = carry
        grads = jax.grad(_ppo_loss)(params, *batch, cfg)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

      (params, opt_state), _ = jax.lax.scan(minibatch, (params, opt_state), mb)
      return (params, opt_state, key), None

    (params, opt_state, key), _ = jax.lax.scan(
        epoch, (params, opt_state, key), None, cfg.update_epochs)
    return (params, opt_state, env_state, obs, key), (traj.reward.sum() / cfg.num_envs,
                                                       params if checkpoints else None)

  carry = (params0, tx.init(params0), env_state, obs_NxO, k_loop)
  (params, *_), (curve, trace) = jax.lax.scan(update, carry, None, cfg.num_updates)
  out = (params,)
  if return_curve:
    out += (curve,)
  if checkpoints:
    if cfg.num_updates % checkpoints:
      raise ValueError(f"checkpoints: {checkpoints} does not divide num_updates={cfg.num_updates}")
    every = cfg.num_updates // checkpoints
    out += (jax.tree.map(lambda t: t[every - 1::every], trace),)
  return out if len(out) > 1 else params


def learning_rate(cfg: PPOConfig, update: int) -> float:
  """The learning rate in force during PPO update `update` (0-based), as `_optimizer` sets it."""
  if not cfg.anneal_lr:
    return cfg.lr
  return cfg.lr * (1.0 - update / cfg.num_updates)


def make_finetune(suite: Suite, cfg: PPOConfig):
  """Jitted (params0, masks [m, K] bool, key) -> params stacked over m subsets (one compile per
  m). The same key is used for every subset."""
  run = jax.jit(jax.vmap(lambda p0, mask, key: train(suite, cfg, p0, mask, key),
                         in_axes=(None, 0, None)))

  def finetune(params0, masks, key):
    return run(params0, check_masks(masks, suite.K), key)
  return finetune


def make_finetune_one(suite: Suite, cfg: PPOConfig):
  """Jitted (params0, mask [K] bool, key) -> params: one subset without vmap."""
  run = jax.jit(lambda p0, mask, key: train(suite, cfg, p0, mask, key))

  def finetune_one(params0, mask, key):
    mask = jnp.asarray(mask)
    return run(params0, check_masks(mask[None], suite.K, "mask")[0], key)
  return finetune_one


def train_meta(suite: Suite, cfg: PPOConfig = META, seed: int = 0, return_curve: bool = False,
               checkpoints: int = 0):
  """The meta-policy: PPO from a fresh init on all objectives (with `return_curve`, also its
  learning curve: mean reward per env slot of each update's rollout; with `checkpoints`, also
  the params at that many evenly spaced updates)."""
  key = jax.random.key(seed)
  k_init, k_train = jax.random.split(key)
  p0 = init_params(k_init, suite.obs_dim, suite.num_actions, cfg.hidden)
  return jax.jit(lambda p, k: train(suite, cfg, p, jnp.ones((suite.K,), bool), k, return_curve, checkpoints))(
      p0, k_train)


# ---------------------------------------------------------------- evaluation

@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Greedy (argmax) actions: deterministic given the reset seeds, so an evaluation's only noise
  is the choice of the `num_episodes` fixed initial states, shared by every policy compared."""
  num_episodes: int = 16
  seed: int = 1234


def episode_returns(suite: Suite, policy_logits, targets_T, ecfg: EvalConfig, random_policy=False):
  """Mean return per target objective [T] of a policy given as obs [N, O] -> logits [N, A].

  Episodes run for exactly max_steps steps without auto reset effects (reward stops counting at
  the first done). Reset states come from ecfg.seed, identical for every policy and target."""
  T, E = targets_T.shape[0], ecfg.num_episodes
  obj_N = jnp.repeat(targets_T, E)
  key = jax.random.key(ecfg.seed)
  k_reset, k_steps, k_rand = jax.random.split(key, 3)
  reset_keys = jnp.tile(jax.random.split(k_reset, E), T)
  obs, state = suite.reset(reset_keys, obj_N)

  def step(carry, t):
    obs, state, alive, ret = carry
    if random_policy:
      action = jax.random.bernoulli(jax.random.fold_in(k_rand, t), 0.5, (T * E,)).astype(jnp.int32)
    else:
      action = jnp.argmax(policy_logits(obs), axis=-1)
    step_keys = jax.random.split(jax.random.fold_in(k_steps, t), T * E)
    obs, state, reward, done = suite.step(step_keys, state, action, obs, obj_N)
    ret = ret + alive * reward
    return (obs, state, alive * (1 - done.astype(jnp.float32)), ret), None

  carry = (obs, state, jnp.ones(T * E), jnp.zeros(T * E))
  (_, _, _, ret), _ = jax.lax.scan(step, carry, jnp.arange(suite.max_steps))
  return ret.reshape(T, E).mean(axis=1)


class Normalizer(NamedTuple):
  """F = -(R - random) / (meta - random), per target: the meta-policy scores -1, the uniform
  random policy 0, lower is better. The denominator is floored at one step's reward (1.0) so a
  target the meta-policy barely beats random does not blow up."""
  random_T: jax.Array
  meta_T: jax.Array

  def __call__(self, returns_mxT):
    return -(returns_mxT - self.random_T) / jnp.maximum(self.meta_T - self.random_T, 1.0)


@functools.lru_cache(maxsize=None)
def returns_program(suite: Suite, ecfg: EvalConfig, random_policy: bool):
  def run(actor_params, targets_T):
    return episode_returns(suite, lambda o: actor_logits(actor_params, o), targets_T, ecfg,
                           random_policy=random_policy)
  return jax.jit(run)


def policy_returns(suite: Suite, params, targets_T, ecfg: EvalConfig = EvalConfig()):
  """Greedy mean return per target [T] of a params pytree (one cached compile per suite)."""
  return returns_program(suite, ecfg, False)(params["actor"], jnp.asarray(targets_T))


def make_normalizer(suite: Suite, meta_params, targets_T, ecfg: EvalConfig = EvalConfig()):
  targets_T = jnp.asarray(targets_T)
  meta = policy_returns(suite, meta_params, targets_T, ecfg)
  rand = returns_program(suite, ecfg, True)(meta_params["actor"], targets_T)
  return Normalizer(rand, meta)


def target_ids(suite: Suite, targets=None):
  """Target names (None: all objectives) -> int [T]."""
  names = suite.names if targets is None else tuple(targets)
  if not names:
    raise ValueError("targets: need at least one target objective")
  return jnp.asarray([suite.index(n) for n in names], jnp.int32)


@functools.lru_cache(maxsize=None)
def outcome_one(suite: Suite, cfg: PPOConfig, ecfg: EvalConfig):
  """The work of ONE subset: fine-tune from the meta-policy on mask_K, then evaluate every target.
  Built once per (suite, config) and handed to `ksurrogate.batching.map_subsets`, which vmaps and
  jits it once and shards the subset axis over devices; seed, meta-policy, targets and normalizer
  are arguments, so every seed and chunk reuses one compiled program."""
  def one(mask_K, meta_params, key, targets_T, norm):
    params = train(suite, cfg, meta_params, mask_K, key)
    ret = episode_returns(suite, lambda o: actor_logits(params["actor"], o), targets_T, ecfg)
    return norm(ret), ret
  return one


def outcomes(suite: Suite, meta_params, S, key, targets_T, norm, *, cfg: PPOConfig = FINETUNE,
             ecfg: EvalConfig = EvalConfig(), chunk: int = 16):
  """(F [m, T] normalized, returns [m, T]) of fine-tuning on each subset row of S [m, K]."""
  masks = np.asarray(check_masks(S, suite.K, "S"))
  F, R = batching.map_subsets(outcome_one(suite, cfg, ecfg), jnp.asarray(masks),
                              shared=(meta_params, key, jnp.asarray(targets_T), norm), chunk_size=chunk)
  return np.asarray(F), np.asarray(R)


# ---------------------------------------------------------------- parameters

def flat_actor(params):
  """(flat actor vector [D], unravel) for the estimator's parameter-space directions."""
  return ravel_pytree(params["actor"])
