"""First-order estimate of the subset outcome F(S), from the meta-policy alone: problem glue
(rollouts, advantage weights, return read-outs) around the library's estimator.

1. Rollouts: the meta-policy (sampled actions) runs `num_envs` slots per objective for
   `num_steps` steps; GAE with the meta critic and the objective's own reward gives an advantage
   per visited state.
2. Features (`ks.featurize` with the actor's logits as the output function, labels
   (action, advantage weight) per state): the Jacobian of the action logits w.r.t. the actor
   params at theta0, projected by the library's Gaussian P [D, d]: G(s) = J(s) P, [A, d].
3. Per subset (`ks.solve`, mean=True): z_S maximizes the advantage-weighted log-likelihood of the
   rollout actions under the linearized logits f(theta0, s) + G(s) z, averaged over S's states
   (every objective has as many, as the fine-tuning spreads env slots evenly over S), minus a
   ridge (lam / 2) |z|^2. Weights exp(clip(A / std)) are positive (AWR), which keeps the problem
   convex. Solvers (`ksurrogate.estimators`): "onestep" (default: one Newton step from z = 0
   from per-objective sufficient statistics, K d^2 + d^3 per subset) or "newton" (iterated); the
   ridge is relative to the full-set curvature (`relative_ridge`), so it is scale-free.
4. The outcome of S, two ways:
   - "rollout": the linearized policy f(theta0) + J P z_S is rolled out greedily in each target
     environment on the exact evaluator's reset seeds, one `jax.jvp` per step. Faithful (the
     changed policy visits other states, e.g. drifts left), but it costs an evaluation per
     subset, so it is only a few times cheaper than fine-tuning plus evaluation.
   - "surrogate": precomputed features along the fixed meta-policy rollouts of each target; the
     return change is the importance-weighted advantage sum of the linearized (sampled) policy,
     sum_t (pi_z(a_t|s_t) / pi_0(a_t|s_t) - 1) A_t (the first-order performance-difference
     term), added to the meta-policy's evaluated return. No environment steps per subset.
The first-order error of real fine-tunes is `ks.diagnostics.linearization_error` on the actor.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import ksurrogate as ks
from ksurrogate_experiments.morl import ppo
from ksurrogate_experiments.morl.envs import Suite, check_masks
from ksurrogate import features as features_lib


def _awr_loss(o, y):
  """Minus the advantage-weighted log-likelihood of one state's action: y = (action, weight)."""
  return -y[1] * jax.nn.log_softmax(o)[y[0].astype(jnp.int32)]


AWR = ks.OutputLoss("advantage_weighted_log_likelihood", _awr_loss)


def policy_logits(actor_params, example):
  """The output the estimator linearizes: the actor's action logits at one state."""
  obs, _ = example
  return ppo.actor_logits(actor_params, obs[None])[0]


SOLVERS = ("onestep", "newton")   # the ridge solvers: the fine-tuning is PPO, no recipe to replay


@dataclasses.dataclass(frozen=True)
class EstimatorConfig:
  num_envs: int = 16          # rollout slots per objective
  num_steps: int = 200        # rollout length per slot (one time-limit episode)
  dim: int = 128              # projection dimension d
  ridge: float = 1.0          # lam, relative to trace(H_full) / (N d) at z = 0 (scale-free)
  solver: str = "onestep"     # "onestep": one Newton step from z = 0; "newton": iterate
  newton_steps: int = 6
  adv_clip: float = 3.0
  seed: int = 7

  def __post_init__(self):
    for f in ("num_envs", "num_steps", "dim", "newton_steps"):
      v = getattr(self, f)
      if not isinstance(v, int) or v <= 0:
        raise ValueError(f"{f}: must be a positive int, got {v!r}")
    if not self.ridge > 0:
      raise ValueError(f"ridge: must be positive, got {self.ridge}")
    if self.solver not in SOLVERS:
      raise ValueError(f"solver: must be one of {', '.join(map(repr, SOLVERS))}, got {self.solver!r}")

  @property
  def estimator(self) -> ks.estimators.Ridge:
    """The library estimator: the subset's mean loss, the ridge relative to the curvature."""
    return ks.estimators.get(self.solver)(dim=self.dim, ridge=self.ridge, relative_ridge=True, mean=True,
                                          num_iters=self.newton_steps, batch_size=512)


# Newton iterations over all rollout states cost N d^2 per step and subset; the one-step solver
# pays that once per objective and then d^3 per subset, so it affords more states and larger d.
NEWTON_SMALL = EstimatorConfig(num_envs=4, dim=32, solver="newton")


def collect(suite: Suite, params0, cfg: EstimatorConfig):
  """Meta-policy rollouts on every objective. Returns a dict of flat [N] / [N, ...] arrays with
  N = K * num_envs * num_steps: obs, action, obj, adv (GAE, objective reward), logp0."""
  K, n = suite.K, cfg.num_envs
  obj_N = jnp.repeat(jnp.arange(K), n)
  key = jax.random.key(cfg.seed)
  k_reset, k_loop = jax.random.split(key)
  obs, state = suite.reset(jax.random.split(k_reset, K * n), obj_N)

  def step(carry, _):
    obs, state, key = carry
    key, k_act, k_env = jax.random.split(key, 3)
    logits = ppo.actor_logits(params0["actor"], obs)
    action = jax.random.categorical(k_act, logits)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], 1)[:, 0]
    v = ppo.value(params0["critic"], obs)
    obs2, state, reward, done = suite.step(jax.random.split(k_env, K * n), state, action, obs, obj_N)
    return (obs2, state, key), ppo.Transition(obs, action, logp, v, reward, done.astype(jnp.float32))

  (obs_last, _, _), traj = jax.lax.scan(step, (obs, state, k_loop), None, cfg.num_steps)
  gae_cfg = ppo.PPOConfig()
  adv, _ = ppo.gae(traj, ppo.value(params0["critic"], obs_last), gae_cfg)
  # [steps, slots] -> slot-major, so each objective's states are contiguous.
  sm = lambda x: jnp.swapaxes(x, 0, 1).reshape((K * n * cfg.num_steps,) + x.shape[2:])
  return {"obs": sm(traj.obs), "action": sm(traj.action), "adv": sm(adv), "logp0": sm(traj.logp),
          "obj": jnp.repeat(obj_N, cfg.num_steps)}


class Estimator:
  """Holds the meta-policy's rollouts and projected features; `z(S)` solves the per-subset
  problem and `outcome(S, mode)` estimates F(S) [m, T], normalized like the exact outcome."""

  def __init__(self, suite: Suite, params0, norm: ppo.Normalizer, targets_T,
               cfg: EstimatorConfig = EstimatorConfig(), ecfg: ppo.EvalConfig = ppo.EvalConfig()):
    self.suite, self.params0, self.norm, self.cfg, self.ecfg = suite, params0, norm, cfg, ecfg
    self.targets_T = jnp.asarray(targets_T)
    self.flat0, self.unravel = ppo.flat_actor(params0)
    key = jax.random.fold_in(jax.random.key(cfg.seed), 1)
    self.data = jax.jit(lambda p: collect(suite, p, cfg))(params0)
    adv, obj = self.data["adv"], self.data["obj"]
    per = lambda f: jax.ops.segment_sum(f, obj, suite.K) / (cfg.num_envs * cfg.num_steps)  # noqa: E731
    mu = per(adv)
    sd = jnp.sqrt(per((adv - mu[obj]) ** 2)) + 1e-8
    self.w = jnp.exp(jnp.clip((adv - mu[obj]) / sd[obj], -cfg.adv_clip, cfg.adv_clip))
    labels = np.stack([np.asarray(self.data["action"], np.float32), np.asarray(self.w)], 1)
    data = ks.estimators.Data(policy_logits, params0["actor"], (np.asarray(self.data["obs"]), labels),
                              np.asarray(obj), None, AWR, output="policy_logits", num_tasks=suite.K)
    self.state = cfg.estimator.prepare(data, key=key)
    self.feats, self.stats, self.lam = self.state.train, self.state.stats, self.state.ridge
    self.P = features_lib.projection_matrix(key, self.flat0.size, cfg.dim)   # the blocks featurize used
    self.G, self.logits0 = jnp.asarray(self.feats.phi), jnp.asarray(self.feats.offsets)
    self.obj = np.asarray(obj)
    # Arrays go into the jitted programs as arguments, not as baked-in constants.
    self.arrays = {"G": self.G, "logits0": self.logits0, "w": self.w, "P": self.P, "flat0": self.flat0,
                   "R_meta": norm.meta_T, "lam": self.lam,
                   **{k: self.data[k] for k in ("action", "obj", "adv", "logp0")}}
    self._roll = jax.jit(jax.vmap(self._rollout_returns, in_axes=(None, 0)))
    self._surr = jax.jit(jax.vmap(self._surrogate_returns, in_axes=(None, 0)))

  def _coef(self, a, mask_K):
    """Per-state weight: advantage weight x (1 / |S|) x (1 / states per objective) if in S."""
    per_obj = self.cfg.num_envs * self.cfg.num_steps
    return a["w"] * mask_K[a["obj"]] / (jnp.sum(mask_K) * per_obj)

  def objective(self, z, mask_K):
    """The concave objective of subset S at z (for tests and diagnostics)."""
    a = self.arrays
    logp = jax.nn.log_softmax(a["logits0"] + a["G"] @ z)
    ll = jnp.take_along_axis(logp, a["action"][:, None], 1)[:, 0]
    return jnp.sum(self._coef(a, mask_K) * ll) - 0.5 * a["lam"] * z @ z

  def z(self, S):
    """Solutions z_S [m, d] (the library's solver on the subset's mean loss)."""
    return self.solve(S)[0]

  def solve(self, S):
    """(z_S [m, d], the library's EstimatorReport of the solve)."""
    S = np.asarray(check_masks(S, self.suite.K, "S"))
    return self.cfg.estimator.solve(self.state, S)

  def _rollout_returns(self, a, z_d):
    dtheta = a["P"] @ z_d

    def logits(o):
      out, tangent = jax.jvp(lambda th: ppo.actor_logits(self.unravel(th), o), (a["flat0"],), (dtheta,))
      return out + tangent
    return ppo.episode_returns(self.suite, logits, self.targets_T, self.ecfg)

  def _surrogate_returns(self, a, z_d):
    logp = jax.nn.log_softmax(a["logits0"] + a["G"] @ z_d)
    lp = jnp.take_along_axis(logp, a["action"][:, None], 1)[:, 0]
    gain = jax.ops.segment_sum((jnp.exp(lp - a["logp0"]) - 1) * a["adv"],
                               a["obj"], self.suite.K) / self.cfg.num_envs
    return a["R_meta"] + gain[self.targets_T]

  def outcome(self, S, mode: str = "rollout", chunk: int = 256):
    """Estimated F(S) [m, T] (numpy). mode: 'rollout' (jvp per env step) or 'surrogate'."""
    if mode not in ("rollout", "surrogate"):
      raise ValueError(f"mode: must be 'rollout' or 'surrogate', got {mode!r}")
    fn = self._roll if mode == "rollout" else self._surr
    return np.asarray(ks.chunked_map(lambda Z_c: self.norm(fn(self.arrays, jnp.asarray(Z_c))), self.z(S),
                                     chunk_size=chunk))
