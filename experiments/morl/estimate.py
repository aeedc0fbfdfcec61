"""First-order estimate of the subset outcome F(S), from the meta-policy alone.

1. Rollouts: the meta-policy (sampled actions) runs `num_envs` slots per objective for
   `num_steps` steps; GAE with the meta critic and the objective's own reward gives an advantage
   per visited state.
2. Features: the Jacobian of the action logits w.r.t. the actor params at theta0, per state
   (reverse mode: A = 2 vjps per state is cheaper than D-dimensional forward mode), projected
   to d dims with a Gaussian P [D, d], entries N(0, 1/d): G(s) = J(s) P, [A, d].
3. Per subset, one convex problem in z in R^d: the logits are linear in z,
   logits(s) = f(theta0, s) + G(s) z, and z_S maximizes the advantage-weighted log-likelihood of
   the rollout actions, each objective of S weighted equally (as the fine-tuning spreads env
   slots evenly over S), minus a ridge (lam / 2) |z|^2. Weights exp(clip(A / std)) are positive
   (AWR), which keeps the problem concave. Two solvers, both `vmap`ped over subsets:
   "newton" iterates Newton steps over all rollout states to the maximizer (N d^2 per step and
   subset); "quadratic" (default) takes the one Newton step from z = 0, the exact maximizer of
   the second-order model, whose gradient and Hessian are per-objective sums precomputed once,
   so a subset costs K d^2 + d^3 whatever the number of rollout states.
4. The outcome of S, two ways:
   - "rollout": the linearized policy f(theta0) + J P z_S is rolled out greedily in each target
     environment on the exact evaluator's reset seeds, one `jax.jvp` per step. Faithful (the
     changed policy visits other states, e.g. drifts left), but it costs an evaluation per
     subset, so it is only a few times cheaper than fine-tuning plus evaluation.
   - "surrogate": precomputed features along the fixed meta-policy rollouts of each target; the
     return change is the importance-weighted advantage sum of the linearized (sampled) policy,
     sum_t (pi_z(a_t|s_t) / pi_0(a_t|s_t) - 1) A_t (the first-order performance-difference
     term), added to the meta-policy's evaluated return. No environment steps per subset.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from experiments.morl import ppo
from experiments.morl.envs import Suite, check_masks


@dataclasses.dataclass(frozen=True)
class EstimatorConfig:
  num_envs: int = 16          # rollout slots per objective
  num_steps: int = 200        # rollout length per slot (one time-limit episode)
  dim: int = 128              # projection dimension d
  ridge: float = 1.0          # lam, relative to trace(H_full) / d at z = 0 (scale-free)
  solver: str = "quadratic"   # "quadratic": one Newton step from z = 0; "newton": iterate
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
    if self.solver not in ("quadratic", "newton"):
      raise ValueError(f"solver: must be 'quadratic' or 'newton', got {self.solver!r}")


# Newton iterations over all rollout states cost N d^2 per step and subset; the quadratic solver
# pays that once per objective and then d^3 per subset, so it affords more states and larger d.
NEWTON_SMALL = EstimatorConfig(num_envs=4, dim=32, solver="newton")


def projection(key, D: int, d: int):
  """Gaussian projection [D, d] with entries N(0, 1/d)."""
  return jax.random.normal(key, (D, d), jnp.float32) / jnp.sqrt(d)


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


def features(params0, obs_NxO, P_Dxd, batch: int = 512):
  """G = J(s) P per state: [N, A, d]."""
  flat0, unravel = ppo.flat_actor(params0)

  def one(o):
    jac_AxD = jax.jacrev(lambda th: ppo.actor_logits(unravel(th), o[None])[0])(flat0)
    return jac_AxD @ P_Dxd
  return jax.lax.map(one, obs_NxO, batch_size=batch)


class Estimator:
  """Holds the meta-policy's rollouts and projected features; `z(S)` solves the per-subset
  problem and `outcome(S, mode)` estimates F(S) [m, T], normalized like the exact outcome."""

  def __init__(self, suite: Suite, params0, norm: ppo.Normalizer, targets_T,
               cfg: EstimatorConfig = EstimatorConfig(), ecfg: ppo.EvalConfig = ppo.EvalConfig()):
    if suite.num_actions != 2:
      raise ValueError(f"suite: the solver is written for 2 actions, got {suite.num_actions}")
    self.suite, self.params0, self.norm, self.cfg, self.ecfg = suite, params0, norm, cfg, ecfg
    self.targets_T = jnp.asarray(targets_T)
    self.flat0, self.unravel = ppo.flat_actor(params0)
    self.P = projection(jax.random.fold_in(jax.random.key(cfg.seed), 1), self.flat0.size, cfg.dim)
    self.data = jax.jit(lambda p: collect(suite, p, cfg))(params0)
    self.G = jax.jit(features)(params0, self.data["obs"], self.P)
    self.logits0 = ppo.actor_logits(params0["actor"], self.data["obs"])
    adv, obj = self.data["adv"], self.data["obj"]
    per = lambda f: jax.ops.segment_sum(f, obj, suite.K) / (cfg.num_envs * cfg.num_steps)
    mu = per(adv)
    sd = jnp.sqrt(per((adv - mu[obj]) ** 2)) + 1e-8
    self.w = jnp.exp(jnp.clip((adv - mu[obj]) / sd[obj], -cfg.adv_clip, cfg.adv_clip))
    # Arrays go into the jitted programs as arguments, not as baked-in constants.
    a = {"G": self.G, "logits0": self.logits0, "w": self.w,
         "U": self.G[:, 1] - self.G[:, 0], "delta0": self.logits0[:, 1] - self.logits0[:, 0], "P": self.P, "flat0": self.flat0,
         "R_meta": norm.meta_T, **{k: self.data[k] for k in ("action", "obj", "adv", "logp0")}}
    # Scale-free ridge: lam relative to the mean curvature of the full-set problem at z = 0.
    H_full = self._hessian(a, jnp.zeros(cfg.dim), self._coef(a, jnp.ones(suite.K, bool)))
    self.lam = cfg.ridge * jnp.trace(H_full) / cfg.dim
    # Per-objective gradient and Hessian of the objective at z = 0 (mean over the objective's
    # states): the subset's second-order model is their average over S, exact for the mean.
    onehot_c = a["action"].astype(jnp.float32) - jax.nn.sigmoid(a["delta0"])
    per_obj = cfg.num_envs * cfg.num_steps
    p1 = jax.nn.sigmoid(a["delta0"])
    # `collect` orders states by objective, so a reshape groups them without an N x d x d array.
    U_K = a["U"].reshape(suite.K, per_obj, cfg.dim)
    a["g_K"] = jnp.einsum("kn,knd->kd", (a["w"] * onehot_c).reshape(suite.K, per_obj), U_K) / per_obj
    a["H_K"] = jnp.einsum("kn,knd,kne->kde", (a["w"] * p1 * (1 - p1)).reshape(suite.K, per_obj),
                          U_K, U_K) / per_obj
    self.arrays = {**a, "lam": self.lam}
    self._z = jax.jit(jax.vmap(self._solve, in_axes=(None, 0)))
    self._roll = jax.jit(jax.vmap(self._rollout_returns, in_axes=(None, 0)))
    self._surr = jax.jit(jax.vmap(self._surrogate_returns, in_axes=(None, 0)))

  def _coef(self, a, mask_K):
    """Per-state weight: advantage weight x (1 / |S|) x (1 / states per objective) if in S."""
    per_obj = self.cfg.num_envs * self.cfg.num_steps
    return a["w"] * mask_K[a["obj"]] / (jnp.sum(mask_K) * per_obj)

  def _hessian(self, a, z, c_N):
    p1 = jax.nn.sigmoid(a["delta0"] + a["U"] @ z)
    return jnp.einsum("n,nd,ne->de", c_N * p1 * (1 - p1), a["U"], a["U"])

  def objective(self, z, mask_K):
    """The concave objective of subset S at z (for tests and diagnostics)."""
    a = self.arrays
    logp = jax.nn.log_softmax(a["logits0"] + a["G"] @ z)
    ll = jnp.take_along_axis(logp, a["action"][:, None], 1)[:, 0]
    return jnp.sum(self._coef(a, mask_K) * ll) - 0.5 * a["lam"] * z @ z

  def _solve(self, a, mask_K):
    if self.cfg.solver == "quadratic":
      s_K = mask_K / jnp.sum(mask_K)
      H = jnp.einsum("k,kde->de", s_K, a["H_K"]) + a["lam"] * jnp.eye(self.cfg.dim)
      return jax.scipy.linalg.solve(H, s_K @ a["g_K"], assume_a="pos")
    return self._solve_newton(a, mask_K, self.cfg.newton_steps)

  def _solve_newton(self, a, mask_K, steps: int):
    # Two actions: the log-likelihood depends on z only through the logit difference
    # delta0 + U z (U = G[:, 1] - G[:, 0]), a ridge logistic regression; its Hessian costs
    # N d^2 per Newton step instead of N A^2 d^2.
    c_N = self._coef(a, mask_K)
    y = a["action"].astype(jnp.float32)
    eye = jnp.eye(self.cfg.dim)

    def newton(z, _):
      p1 = jax.nn.sigmoid(a["delta0"] + a["U"] @ z)
      g = (c_N * (y - p1)) @ a["U"] - a["lam"] * z
      H = self._hessian(a, z, c_N) + a["lam"] * eye
      return z + jnp.linalg.solve(H, g), None
    z, _ = jax.lax.scan(newton, jnp.zeros(self.cfg.dim), None, steps)
    return z

  def z(self, S):
    """Solutions z_S [m, d]."""
    return self._z(self.arrays, check_masks(S, self.suite.K, "S"))

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
    S = np.asarray(check_masks(S, self.suite.K, "S"))
    m = S.shape[0]
    Sp = np.concatenate([S, np.ones(((-m) % chunk, self.suite.K), bool)])
    fn = self._roll if mode == "rollout" else self._surr
    out = [np.asarray(self.norm(fn(self.arrays, self._z(self.arrays, jnp.asarray(Sp[i:i + chunk])))))
           for i in range(0, len(Sp), chunk)]
    return np.concatenate(out)[:m]


def first_order_error(params0, params_S, obs_NxO):
  """The paper's first-order error of the logits at really fine-tuned actor params theta_S:
  |f(theta0) + J (theta_S - theta0) - f(theta_S)| / max(|f(theta_S)|, |f(theta0)|) per state,
  and the same error relative to the actual change |f(theta_S) - f(theta0)|. Returns two [N]."""
  flat0, unravel = ppo.flat_actor(params0)
  flatS, _ = ppo.flat_actor(params_S)
  f = lambda th: ppo.actor_logits(unravel(th), obs_NxO)
  out0, lin_delta = jax.jvp(f, (flat0,), (flatS - flat0,))
  outS = f(flatS)
  err = jnp.linalg.norm(out0 + lin_delta - outS, axis=-1)
  scale = jnp.maximum(jnp.linalg.norm(outS, axis=-1), jnp.linalg.norm(out0, axis=-1))
  return err / scale, err / (jnp.linalg.norm(outS - out0, axis=-1) + 1e-12)
