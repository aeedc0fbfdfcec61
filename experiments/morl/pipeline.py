"""Multi-objective RL attribution pipeline: short named phases composed by `problems`.

setup -> meta-policy (PPO on all objectives) -> design -> exact outcomes (fine-tuning, chunked:
full set + leave-one-out + pair masks on several seeds; random subsets on one) -> estimate
(first-order policy estimator) -> baselines (influence functions on the policy loss) ->
selection (each surrogate's best objective set per target, fine-tuned for real on fresh seeds)
-> one driver.Problem. Outcomes are normalized negative returns per target (lower is better):
the meta-policy scores -1, a uniform random policy 0.
"""
from __future__ import annotations

import dataclasses
import time

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

import ksurrogate as ks
from ksurrogate_experiments import common
from ksurrogate_experiments.morl import config as morl_config
from ksurrogate_experiments.morl import envs
from ksurrogate_experiments.morl import estimate as morl_estimate
from ksurrogate_experiments.morl import ppo
from ksurrogate_experiments.shared import selection
from ksurrogate import baselines, diagnostics, metrics
from ksurrogate import families as families_lib
from ksurrogate.harness import driver, report, runs


@dataclasses.dataclass(frozen=True)
class Setup:
  suite: envs.Suite
  meta_cfg: ppo.PPOConfig
  ft_cfg: ppo.PPOConfig
  ecfg: ppo.EvalConfig
  est_cfg: morl_estimate.EstimatorConfig
  targets_T: np.ndarray

  @property
  def K(self) -> int:
    return self.suite.K


def setup(c) -> Setup:
  suite = envs.Suite(tuple(c.objectives), c.max_steps)
  m, f, e = c.meta, c.finetune, c.estimate
  return Setup(
      suite=suite,
      meta_cfg=ppo.PPOConfig(num_envs=m.num_envs, num_steps=m.num_steps, num_updates=m.num_updates, lr=m.lr,
                             anneal_lr=m.anneal_lr),
      ft_cfg=ppo.PPOConfig(num_envs=f.num_envs, num_steps=f.num_steps, num_updates=f.num_updates, lr=f.lr,
                           anneal_lr=False),
      ecfg=ppo.EvalConfig(num_episodes=c.evaluation.num_episodes, seed=c.evaluation.seed),
      est_cfg=morl_estimate.EstimatorConfig(num_envs=e.num_envs, num_steps=e.num_steps, dim=e.dim, ridge=e.ridge,
                                      solver=e.solver, seed=c.seed + 7),
      targets_T=np.arange(suite.K, dtype=np.int32))


@runs.stored("morl.meta_policy")
@flax.struct.dataclass
class Meta:
  params: dict
  curve: np.ndarray          # mean reward per env slot of each PPO update's rollout
  checkpoints: dict          # params at evenly spaced updates (stacked), for TracIn
  random_return: np.ndarray  # [T] greedy-evaluation return of a uniform random policy
  meta_return: np.ndarray    # [T] of the meta-policy
  seconds: float

  @property
  def norm(self) -> ppo.Normalizer:
    return ppo.Normalizer(jnp.asarray(self.random_return), jnp.asarray(self.meta_return))


def meta_policy(c, s: Setup) -> Meta:
  t0 = time.perf_counter()
  params, curve, ckpts = ppo.train_meta(s.suite, s.meta_cfg, seed=c.seed, return_curve=True,
                                        checkpoints=c.baselines.tracin_checkpoints)
  params = jax.block_until_ready(params)
  seconds = time.perf_counter() - t0
  norm = ppo.make_normalizer(s.suite, params, s.targets_T, s.ecfg)
  return Meta(params=params, curve=np.asarray(curve), checkpoints=ckpts, random_return=np.asarray(norm.random_T),
              meta_return=np.asarray(norm.meta_T), seconds=seconds)


@dataclasses.dataclass(frozen=True)
class Design:
  S_struct: np.ndarray   # [1 + K + P, K]: the full set, the K leave-one-out masks, one mask per pair
  S_rand: np.ndarray     # [design.num_subsets, K]: distinct non-empty Bernoulli(0.5) subsets
  S_many: np.ndarray     # [num_estimated, K]: subsets estimated without fine-tuning
  pairs: np.ndarray      # [P, 2]
  K: int


def design(c, s: Setup) -> Design:
  K = s.K
  pairs = np.asarray(c.design.pairs, np.int64).reshape(-1, 2)
  S_struct = np.concatenate([np.ones((1, K), bool), np.asarray(ks.subsets.leave_one_out(K)),
                             ks.subsets.without_pairs(K, pairs)])
  S_rand = ks.subsets.distinct_bernoulli(jax.random.key(c.seed + 2), c.design.num_subsets, K, 0.5)
  many = np.array(ks.subsets.bernoulli(jax.random.key(c.seed + 4), c.estimate.num_subsets, K, 0.5))
  many[~many.any(1), 0] = True
  return Design(S_struct, S_rand, many, pairs, K)


def exact_chunk(c, S_chunk, chunk: int, s: Setup, meta: Meta, seed_index: int) -> dict:
  """Fine-tunes the meta-policy on each subset of the chunk with the truth's seed number
  `seed_index` (config.truth_seeds; design.random_seed for seed_index -1; every subset of a seed shares its key: common random
  numbers) and evaluates every target."""
  del chunk   # subsets share the seed's key, so a chunk's numbers do not depend on its index
  seed = c.design.random_seed if seed_index < 0 else morl_config.truth_seeds(c)[seed_index]
  # steady-state seconds (the same whichever phase or chunk compiled), one-time seconds apart
  (F, R), seconds, one_time = runs.steady(lambda: ppo.outcomes(
      s.suite, meta.params, S_chunk, jax.random.key(seed), s.targets_T, meta.norm, cfg=s.ft_cfg, ecfg=s.ecfg,
      chunk=c.design.chunk_size))
  return {"F": F, "R": R, "seconds": np.full(len(S_chunk), seconds / len(S_chunk)),
          "seconds_compile": np.full(len(S_chunk), one_time)}


def selection_chunk(c, S_chunk, chunk: int, s: Setup, meta: Meta, seed_index: int) -> dict:
  """The same fine-tuning on a fresh selection seed."""
  del chunk
  F, R = ppo.outcomes(s.suite, meta.params, S_chunk, jax.random.key(c.selection.seeds[seed_index]), s.targets_T,
                      meta.norm, cfg=s.ft_cfg, ecfg=s.ecfg, chunk=c.design.chunk_size)
  return {"F": F, "R": R}


@runs.stored("morl.estimates")
@flax.struct.dataclass
class Estimates:
  F_many: np.ndarray     # [num_estimated, T] surrogate read-out
  F_rand: np.ndarray     # [design.num_subsets, T] on the exactly fine-tuned random subsets
  info: dict


def estimate(c, s: Setup, meta: Meta, dsg: Design, exact_rand: dict, struct: tuple = ()) -> Estimates:
  """The first-order policy estimator on many subsets, scored against real fine-tuning on the
  random subsets; both error definitions and the per-subset speed-up. `struct` (the structured
  fine-tunes) only serves the fine-tuning's one-time seconds: whichever exact phase a process
  runs first compiles the fine-tuning program."""
  with runs.stopwatch() as setup_sw:
    est = morl_estimate.Estimator(s.suite, meta.params, meta.norm, s.targets_T, s.est_cfg, s.ecfg)
    jax.block_until_ready(est.arrays)
  t_setup = setup_sw.steady_seconds
  chunk = min(256, len(dsg.S_many))
  # compile (and a program's first run) timed apart from the steady figures
  F_many, t_many, compile_many = runs.steady(lambda: est.outcome(dsg.S_many, "surrogate", chunk))
  t_many /= len(dsg.S_many)
  F_rand = est.outcome(dsg.S_rand, "surrogate", chunk)
  n_roll = min(len(dsg.S_rand), 64)
  F_roll, t_roll, compile_roll = runs.steady(lambda: est.outcome(dsg.S_rand[:n_roll], "rollout", n_roll))
  t_roll /= n_roll
  F_real = exact_rand["F"]
  varying = metrics.varying_targets(F_real, 1e-4)
  # The paper's first-order error: logits at really fine-tuned params vs their expansion at theta0.
  n_fo = min(8, len(dsg.S_rand))
  run = jax.jit(jax.vmap(lambda m: ppo.train(s.suite, s.ft_cfg, meta.params, m, jax.random.key(c.design.random_seed))))
  P_S = run(jnp.asarray(dsg.S_rand[:n_fo]))
  obs = est.data["obs"][::7]
  errs = diagnostics.linearization_error(ppo.actor_logits, meta.params["actor"], P_S["actor"], obs).ravel()
  skipped = {}   # figures undefined on this data (metrics.Undefined): None, and why
  score = lambda key, fn, *a, **kw: metrics.attempt(skipped, key, fn, *a, **kw)  # noqa: E731
  rollout_error = score("median_relative_error_rollout", metrics.relative_error, F_roll[:, varying],
                        F_real[:n_roll][:, varying])
  t_ft = float(np.mean(exact_rand["seconds"]))
  details = {
      "median_relative_error_rollout": None if rollout_error is None else rollout_error["median"],
      "lds_vs_real_rollout": score("lds_vs_real_rollout", metrics.lds, F_roll[:, varying], F_real[:n_roll][:, varying]),
      "normalized_error": score("normalized_error", metrics.normalized_error, F_rand[:, varying], F_real[:, varying],
                                threshold=0.0),
      "seconds_per_subset_rollout": t_roll, "seconds_compile_rollout": compile_roll,
      "speedup_per_subset_rollout": t_ft / t_roll,
      "targets_scored": [n for n, v in zip(s.suite.names, varying) if v]}
  # The library's report of the solve, its seconds those of the whole surrogate read-out (solve
  # and returns) measured above; the setup's compilation is counted with the read-out's.
  _, report = est.solve(dsg.S_many)
  report = dataclasses.replace(report, seconds_setup=t_setup, seconds_compile=setup_sw.compile_seconds + compile_many,
                               seconds_per_subset=t_many)
  report = report.scored(
      F_rand[:, varying], F_real[:, varying],
      # no change: the meta-policy's own (normalized) return, what every estimate must beat
      F_base=np.asarray(meta.norm(jnp.asarray(meta.meta_return)))[varying], linearization_errors=errs,
      seconds_real_per_subset=t_ft,
      # one fine-tuning chunk's one-time seconds (the first a process runs: whichever exact phase)
      seconds_real_compile=(float(max(np.max(r["seconds_compile"]) for r in (exact_rand, *struct)))
                            if all("seconds_compile" in r for r in (exact_rand, *struct)) else None),
      details=details, skipped=skipped)
  info = report.to_summary()
  return Estimates(F_many=F_many, F_rand=F_rand, info=info)


def run_baselines(c, s: Setup, meta: Meta) -> dict:
  """Task-level influence functions (at the meta-policy) and TracIn (over the meta-policy's
  training checkpoints, each weighted by the learning rate in force there) on the policy's
  advantage-weighted log-likelihood loss, with states and actions from the meta-policy's rollouts
  of each objective; read out per target objective as the mean over that objective's states:
  predicted LOO [K, T]."""
  est = morl_estimate.Estimator(s.suite, meta.params, meta.norm, s.targets_T, s.est_cfg, s.ecfg)
  obj = np.asarray(est.data["obj"])
  rng = np.random.default_rng(c.seed + 11)
  rows = np.concatenate([rng.choice(np.flatnonzero(obj == k), min(c.baselines.states_per_objective,
                                                                   int(np.sum(obj == k))), replace=False)
                         for k in range(s.K)])
  X = np.asarray(est.data["obs"])[rows]
  y = np.stack([np.asarray(est.data["action"])[rows].astype(np.float32), np.asarray(est.w)[rows]], 1)

  def policy_loss(logits, y_):
    logp = jax.nn.log_softmax(logits)
    return -y_[:, 1] * jnp.take_along_axis(logp, y_[:, :1].astype(jnp.int32), 1)[:, 0]

  per_state, influence_solve = baselines.influence(
      ppo.actor_logits, meta.params["actor"], X, y, obj[rows], X, y, num_tasks=s.K, curvature=c.baselines.curvature,
      damping=c.baselines.damping, cg_iters=c.baselines.cg_iters, loss_fn=policy_loss, return_info=True)   # [K, N]
  n_ck = c.baselines.tracin_checkpoints
  every = s.meta_cfg.num_updates // n_ck
  ckpts = [jax.tree.map(lambda a: a[i], meta.checkpoints["actor"]) for i in range(n_ck)]
  rates = [ppo.learning_rate(s.meta_cfg, (i + 1) * every - 1) for i in range(n_ck)]
  per_state_tracin = baselines.tracin(ppo.actor_logits, ckpts, rates, X, y, obj[rows], X, y, num_tasks=s.K,
                                      loss_fn=policy_loss)
  by_target = lambda a: np.stack([a[:, obj[rows] == t].mean(1) for t in range(s.K)], 1)  # noqa: E731
  return {"influence": by_target(per_state), "tracin": by_target(per_state_tracin), "influence_solve": influence_solve}


@dataclasses.dataclass(frozen=True)
class Picks:
  """Per varying target, the objective set (always holding the target) each method picks."""
  choices: dict        # {target: {method: bool mask [K]}}
  surrogates: dict     # {method: fitted surrogate} the surrogates' picks came from
  families: list       # the ksurrogate.families.Family list they were fitted from


def selection_picks(c, s: Setup, dsg: Design, exact_rand: dict, est: Estimates, families) -> Picks:
  """Every family fitted on the exact fit rows and on the estimated subsets (targets that vary
  only, as in the attribution), each picking, per target, the best of all 2^(K-1) sets that hold
  it; beside them the baselines (all objectives, the target alone, random sets)."""
  K = s.K
  fit = np.arange(c.design.num_fit)
  # Targets whose outcome does not vary across the random subsets (a saturated objective) have
  # nothing to select for.
  varying = np.flatnonzero(metrics.varying_targets(exact_rand["F"], c.normalized_error_threshold))
  column = {t: i for i, t in enumerate(varying)}
  fams = families(c, "morl")
  surrogates = families_lib.fit_all(fams, {
      "exact": (dsg.S_rand[fit], exact_rand["F"][fit][:, varying]),
      "estimated": (dsg.S_many, est.F_many[:, varying])})
  all_sets = (np.arange(2 ** K)[:, None] >> np.arange(K)) & 1 == 1
  rng = np.random.default_rng(c.seed + 13)
  choices = {}
  for t in varying:
    cand = all_sets[all_sets[:, t]]
    choice = {name: cand[int(np.argmin(np.asarray(g.predict(cand))[:, column[t]]))] for name, g in surrogates.items()}
    choice["all_objectives"] = np.ones(K, bool)
    choice["target_alone"] = np.eye(K, dtype=bool)[t]
    for r in range(c.selection.num_random):
      choice[f"random_{r}"] = cand[rng.integers(len(cand))]
    choices[int(t)] = choice
  return Picks(choices=choices, surrogates=surrogates, families=list(fams))


def selection_masks(c, picks: Picks) -> np.ndarray:
  """The distinct sets any method picked: what the selection seeds fine-tune for real."""
  del c
  return np.unique(np.stack([m for choice in picks.choices.values() for m in choice.values()]), axis=0)


def problems(config, run: runs.Run, families):
  c = config
  cs = c.design.chunk_size
  s = run.phase("setup", setup, c, store=False)
  meta = run.phase("meta_policy", meta_policy, c, s)
  dsg = run.phase("design", design, c, s, store=False)
  exact_rand = run.outcomes("exact_random", exact_chunk, c, dsg.S_rand, s, meta, -1, chunk_size=cs)
  # The surrogates fit these targets only: the run stops here when too few of them vary.
  common.require_varying(exact_rand["F"], c.normalized_error_threshold, c.min_varying_targets, phase="exact_random",
                         threshold_field="normalized_error_threshold")
  struct = [run.outcomes(f"exact_structured_seed{r}", exact_chunk, c, dsg.S_struct, s, meta, r, chunk_size=cs)
            for r in range(c.truth.seeds)]
  est = run.phase("estimate", estimate, c, s, meta, dsg, exact_rand, tuple(struct))
  extra_loo = run.phase("baselines", run_baselines, c, s, meta)
  picks = run.phase("selection_picks", selection_picks, c, s, dsg, exact_rand, est, families, store=False)
  masks = run.phase("selection_masks", selection_masks, c, picks, store=False)   # their lineage keys the fine-tunes
  selected = [run.outcomes(f"selection_seed{i}", selection_chunk, c, masks, s, meta, i, chunk_size=cs)
              for i in range(len(c.selection.seeds))]
  yield _problem(c, s, meta, dsg, struct, exact_rand, est, extra_loo, picks, masks, selected)


def _selection_summary(c, s: Setup, picks: Picks, masks, selected):
  """Returns per target and method (mean and s.d. over selection seeds), and the regret
  comparison of the lead family pair (`selection.regret_comparisons`; the first family that names
  a counterpart, against it); regret = best return among the compared sets on that seed minus the
  method's return."""
  index = {m.tobytes(): i for i, m in enumerate(masks)}
  R = np.stack([sel["R"] for sel in selected])            # [seeds, masks, T]
  table, regrets = {}, {}
  for t, choice in picks.choices.items():
    name_t = s.suite.names[t]
    rows = {name: R[:, index[m.tobytes()], t] for name, m in choice.items()}
    best = np.max(np.stack(list(rows.values())), axis=0)   # [seeds]
    randoms = np.stack([v for k, v in rows.items() if k.startswith("random_")])
    rows = {k: v for k, v in rows.items() if not k.startswith("random_")}
    rows["random"] = randoms.mean(0)
    table[name_t] = {k: {"return": float(v.mean()), "return_std": float(v.std()),
                         "objectives": [s.suite.names[j] for j in np.flatnonzero(choice[k])] if k in choice else None}
                     for k, v in rows.items()}
    for k, v in rows.items():
      regrets.setdefault(k, []).append(best - v)
  regret = {k: np.stack(v) for k, v in regrets.items()}    # [T, seeds]
  per_seed = {k: v.mean(0) for k, v in regret.items()}     # [seeds], mean over targets
  # One pair, as this summary has always reported; the seeds are fresh fine-tunes of the same picks.
  gain = selection.regret_comparisons(per_seed, families_lib.counterpart_pairs(picks.families)[:1], c)
  return table, {k: float(v.mean()) for k, v in regret.items()}, gain


def _problem(c, s, meta, dsg, struct, exact_rand, est, extra_loo, picks: Picks, masks, selected):
  K = s.K
  F_struct = np.stack([r["F"] for r in struct])           # [seeds, 1 + K + P, T]
  loo_seeds = F_struct[:, 1:K + 1] - F_struct[:, :1]        # [seeds, K, T]
  full = F_struct[:, 0].mean(0)
  varying = metrics.varying_targets(exact_rand["F"], c.normalized_error_threshold)   # >= min_varying_targets
  # Exact pairwise interactions, seed by seed, next to the kernel surrogate's prediction.
  g = picks.surrogates.get("kernel_exact")
  inter_pred = np.asarray(ks.interactions(g)) if g is not None else None
  measured = []
  for p, (i, j) in enumerate(dsg.pairs):
    per_seed = F_struct[:, 0] - F_struct[:, 1 + i] - F_struct[:, 1 + j] + F_struct[:, 1 + K + p]   # [seeds, T]
    measured.append({"pair": [s.suite.names[i], s.suite.names[j]],
                     "mean_target": float(per_seed.mean()), "mean_target_std_over_seeds": float(per_seed.mean(1).std()),
                     "per_target": per_seed.mean(0).tolist(),
                     "kernel_predicted_mean_target": None if inter_pred is None else float(inter_pred[i, j].mean())})
  table, mean_regret, reduction = _selection_summary(c, s, picks, masks, selected)
  curve = meta.curve
  fit, held = np.arange(c.design.num_fit), np.arange(c.design.num_fit, len(dsg.S_rand))
  return driver.Problem(
      name="morl", S=dsg.S_rand, F=exact_rand["F"][:, varying], splits=[(fit, held)],
      truths={"loo": driver.Truth(loo_seeds[:, :, varying],
                                  predictions={k: v[:, varying] for k, v in extra_loo.items() if k != "influence_solve"})},
      sources={"estimated": (dsg.S_many, est.F_many[:, varying])}, estimates_of={"estimated": "exact"},
      info={"estimator": est.info, "influence_solve": extra_loo.get("influence_solve"),
            "interactions_measured": measured,
            "selection": table, "selection_regret": mean_regret, "selection_gain": reduction,
            "meta_policy": {"return": dict(zip(s.suite.names, meta.meta_return.tolist())),
                            "random_return": dict(zip(s.suite.names, meta.random_return.tolist())),
                            "seconds": meta.seconds, "env_steps": s.meta_cfg.total_steps},
            "full_set_outcome": dict(zip(s.suite.names, full.tolist())),
            "targets": [n for n, v in zip(s.suite.names, varying) if v]},
      higher_is_better=False, outcome_name="normalized negative return",
      task_labels=list(s.suite.names), task_noun="objective",
      figures={"meta_policy_curve": lambda result, path: report.curves(
                   path, {"meta-policy (all objectives)": curve}, f"PPO meta-policy on {K} objectives",
                   ylabel="mean reward per env slot per rollout", log_scale=False, xlabel="PPO update"),
               "selection": lambda result, path: report.selection_bars(
                   path, table, "objective selection: return on the target after real fine-tuning",
                   ylabel="greedy return on the target\n(mean over seeds, bars: s.d.)")})
