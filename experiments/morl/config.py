"""Configs of the `morl` experiment: one `get_config(arg)`, variants as data, and its `EXPERIMENT`
(the contract in `experiments/contract.py`); every config's command, runtime and result are in
`CONFIGS`. Override any field with --config.SECTION.FIELD=VALUE (e.g.
--config.finetune.num_updates=40).
"""
from __future__ import annotations

import ml_collections

from ksurrogate_experiments import common, costs
from ksurrogate_experiments import contract

# The objectives `envs.OBJECTIVES` defines, in its order (kept here so that --help and config
# checks never import gymnax; a test checks that both agree).
OBJECTIVE_NAMES = ("balance", "short_pole", "coarse_time", "high_gravity", "weak_force", "stay_left", "stay_right",
                   "centered", "slow_cart", "upright")

CONFIGS = {
    "tiny": contract.Variant(
        description="smoke test of every phase (5 objectives, a few PPO updates); ~2 min, numbers meaningless",
        command="ksurrogate-run --experiment=morl --config=tiny --workdir=/tmp/morl_tiny",
        runtime="~2 min on 2 quiet cores"),
    "cpu": contract.Variant(
        description="10 CartPole objectives, PPO meta-policy, 100 random fine-tunes, a 16-seed leave-one-out "
                    "truth, selection on 5 seeds; ~15 min (2 shared cores)",
        command="ksurrogate-run --experiment=morl --config=cpu --workdir=/tmp/morl_cpu",
        runtime="7.8 min on 2 quiet cores; 14.3 min on 2 shared cores (load 7-9)"),
    "gpu": contract.Variant(
        description="the cpu config with 24 truth seeds (reliability ~0.87 on the mean target, ~0.41 per target) in chunks of 32",
        command="OUT=/tmp/out bash benchmarks/device_run.sh   # or: ksurrogate-run --experiment=morl "
                "--config=gpu --workdir=/tmp/morl_gpu",
        runtime="~3-4 min planned on one H200 (device_run.sh runs it beside the modular paper config); ~20 min on 2 cores"),
}

VARIANTS = {
    "tiny": {
        "top": dict(objectives=("balance", "short_pole", "coarse_time", "stay_left", "stay_right"), progress=False,
                    smoke_test=True),
        "meta": dict(num_envs=8, num_steps=32, num_updates=10),
        "baselines": dict(tracin_checkpoints=2),
        "finetune": dict(num_envs=8, num_steps=16, num_updates=4),
        "design": dict(num_subsets=20, num_fit=14, pairs=((1, 2), (3, 4)), chunk_size=8),
        "truth": dict(seeds=2),
        "estimate": dict(num_envs=2, num_steps=50, dim=16, num_subsets=64),
        "evaluation": dict(num_episodes=4),
        "selection": dict(seeds=(100,), num_random=2),
        "surrogates": dict(cv=3),
        "eval": dict(resplits=8, bootstrap=200),
    },
    "cpu": {},
    # The cpu config's truth seeds come first (truth_seeds skips design.random_seed, so its truth and
    # random subsets are a prefix of these).
    "gpu": {
        "truth": dict(seeds=24),
        "design": dict(chunk_size=32),
    },
}


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  """The config `arg` names (CONFIGS): the base below with the variant's fields."""
  c = common.base_config("morl", arg, VARIANTS)
  c.objectives = OBJECTIVE_NAMES
  c.max_steps = 200
  # The meta-policy: PPO on all objectives (env slots spread evenly), annealed learning rate.
  c.meta = dict(num_envs=40, num_steps=128, num_updates=200, lr=2.5e-4, anneal_lr=True)
  # Fine-tuning on a subset: env slots re-assigned among its objectives, constant learning rate.
  c.finetune = dict(num_envs=16, num_steps=64, num_updates=80, lr=2.5e-4)
  c.evaluation = dict(num_episodes=16, seed=1234)   # greedy policy, fixed reset seeds
  c.design = dict(
      num_subsets=100, num_fit=80,   # random subsets (Bernoulli(0.5), distinct, non-empty), one seed: fit / held out
      # The random subsets' fine-tuning seed, never one of the truth's seeds (`truth_seeds` skips it),
      # so the surrogates fitted on them share no fine-tuning noise with the ground truth.
      random_seed=10,
      # Pairs (i, j) whose exact interaction F(1) - F(1-e_i) - F(1-e_j) + F(1-e_i-e_j) is measured:
      # physics substitutes, the conflicting pair, reward shapers.
      pairs=((1, 2), (5, 6), (7, 8), (1, 3), (2, 4), (8, 9)),
      chunk_size=16,                 # subsets fine-tuned at once (vmapped) and stored per chunk
  )
  # The full set, the leave-one-out masks and the pair masks are fine-tuned on truth.seeds seeds
  # (`truth_seeds`: 0, 1, ... skipping design.random_seed): the truth is their mean, their
  # split-half reliability its ceiling.
  c.truth = dict(seeds=16)
  # 64 rollout slots per objective (128,000 states): on the fit fine-tunes of the cpu run they rank
  # better than 16 on each of 3 estimator seeds (LDS 0.21-0.29 vs 0.09-0.20) at the same error;
  # 256 cost 4x more (benchmarks/morl_estimator_sweep.py; BUILD_NOTES "MORL: which lever moves
  # the estimator").
  c.estimate = dict(num_envs=64, num_steps=200, dim=128, ridge=1.0, solver="onestep", num_subsets=2048)
  c.baselines = dict(curvature="gauss_newton", damping=0.1, cg_iters=200, states_per_objective=256,
                     tracin_checkpoints=5)
  c.selection = dict(seeds=(100, 101, 102, 103, 104), num_random=4)
  return common.apply_variant(c, VARIANTS[arg])


def truth_seeds(c) -> tuple[int, ...]:
  """The truth's fine-tuning seeds: the first truth.seeds integers from 0, design.random_seed left out
  (a config with fewer seeds uses a prefix of a config with more)."""
  n, skip = c.truth.seeds, c.design.random_seed
  return tuple(r for r in range(n + 1) if r != skip)[:n]


POLICY_PARAMS = 4 * 64 + 64 + 64 * 64 + 64 + 64 * 2 + 2   # the actor MLP (ppo.init_params), differentiated


def memory(c) -> dict:
  """The largest arrays the settings imply, in bytes (float32; rough, of the right order), keyed by
  the field that sets their size: what `validate` checks against memory."""
  K, e, b = len(c.objectives), c.estimate, c.baselines
  states = K * e.num_envs * e.num_steps
  # the library estimator's cost rule (imported here, not at the top, so that --help stays light):
  # projected gradients of 2 action logits per state, the projection, the per-objective statistics
  from ksurrogate import estimators
  cost = estimators.Onestep(dim=e.dim).memory(estimators.Sizes(num_train=states, num_target=0, num_outputs=2,
                                                                num_params=POLICY_PARAMS, num_tasks=K))
  return {
      "estimate.dim": (cost.bytes, cost.what),
      "estimate.num_envs": (4 * states * (2 * e.dim + 16), f"the estimator's rollouts ({states} states)"),
      "estimate.num_subsets": (4 * e.num_subsets * (2 * K + e.dim), f"{e.num_subsets} estimated subsets"),
      "baselines.states_per_objective": (4 * K * b.states_per_objective * POLICY_PARAMS,
                                         f"per-state gradients of {K * b.states_per_objective} states"),
      "design.chunk_size": (4 * c.design.chunk_size * c.finetune.num_envs * c.finetune.num_steps * 64,
                            f"{c.design.chunk_size} vmapped fine-tunes' rollouts"),
      "meta.num_envs": (4 * c.meta.num_envs * c.meta.num_steps * 64, "the meta-policy's rollouts"),
  }


CRITIC_PARAMS = 4 * 64 + 64 + 64 * 64 + 64 + 64 + 1   # the critic MLP beside it (its last layer: one value)
UPDATE_EPOCHS = 4                                      # ppo.PPOConfig's passes over each rollout


def ppo_flops(s) -> float:
  """FLOPs of one PPO training (`s`: the meta or finetune section): every update's rollout through
  the actor and critic (2 N per state) and its UPDATE_EPOCHS passes of forward + backward (6 N)."""
  return s.num_updates * s.num_envs * s.num_steps * (2 + 6 * UPDATE_EPOCHS) * (POLICY_PARAMS + CRITIC_PARAMS)


def compute_time(c) -> dict:
  """{field: (seconds, what)} of the policy trainings the counts imply (common's cost model: the
  network's FLOPs only, a lower bound; the environment steps are left out)."""
  K, P, f = len(c.objectives), len(c.design.pairs), c.finetune
  one, truth = ppo_flops(f), c.truth.seeds * (K + 1 + P)
  return {
      "truth.seeds": (costs.training_seconds(truth, one), f"{c.truth.seeds} truth seeds x {K + 1 + P} fine-tunes "
                                                           f"({truth} fine-tunes of {f.num_updates} PPO updates)"),
      "design.num_subsets": (costs.training_seconds(c.design.num_subsets, one),
                             f"{c.design.num_subsets} fine-tunes of {f.num_updates} PPO updates"),
      "meta.num_updates": (costs.training_seconds(1, ppo_flops(c.meta)),
                           f"the meta-policy's {c.meta.num_updates} PPO updates"),
  }


RULES = {
    **common.SHARED_RULES,
    "objectives": common.sequence(common.choice(*OBJECTIVE_NAMES), min_len=3, distinct=True),
    "max_steps": common.integer(1),
    **{f"{section}.{f}": common.integer(1) for section in ("meta", "finetune") for f in ("num_envs", "num_steps",
                                                                                         "num_updates")},
    "meta.lr": common.positive(),
    "meta.anneal_lr": common.boolean(),
    "finetune.lr": common.positive(),
    "evaluation.num_episodes": common.integer(1),
    "evaluation.seed": common.integer(0, common.SEED_MAX),
    "design.num_subsets": common.integer(3),
    "design.num_fit": common.integer(2),
    "design.random_seed": common.integer(0, common.SEED_MAX),
    "design.pairs": common.sequence(common.sequence(common.integer(0), min_len=2, max_len=2), min_len=0),
    "design.chunk_size": common.integer(1),
    "truth.seeds": common.integer(2, 1000),
    "estimate.num_envs": common.integer(1),
    "estimate.num_steps": common.integer(1),
    "estimate.dim": common.integer(1),
    "estimate.ridge": common.positive(),
    "estimate.solver": common.choice("onestep", "newton"),
    "estimate.num_subsets": common.integer(2),
    "baselines.curvature": common.choice("gauss_newton", "hessian"),
    "baselines.damping": common.number(0.0),
    "baselines.cg_iters": common.integer(1),
    "baselines.states_per_objective": common.integer(1),
    "baselines.tracin_checkpoints": common.integer(1),
    "selection.seeds": common.sequence(common.integer(0, common.SEED_MAX), distinct=True),
    "selection.num_random": common.integer(1),
}


def checks(c) -> None:
  """The checks across fields (after RULES); each error is one line naming the field to change."""
  req = common.require
  K = len(c.objectives)
  req(c.min_varying_targets <= K, "min_varying_targets", f"{c.min_varying_targets} exceeds the {K} target objectives")
  for section in ("meta", "finetune"):
    s = c[section]
    req((s.num_envs * s.num_steps) % 4 == 0, f"{section}.num_envs",
        f"{section}.num_envs x {section}.num_steps = {s.num_envs * s.num_steps} must be a multiple of 4 (PPO minibatches)")
    req(s.num_envs >= K, f"{section}.num_envs", f"{s.num_envs} env slots leave some of the {K} objectives without one")
  req(c.design.num_subsets <= 2 ** K - 1, "design.num_subsets",
      f"{c.design.num_subsets} exceeds the {2 ** K - 1} non-empty subsets of {K} objectives")
  req(c.design.num_fit <= c.design.num_subsets - 2, "design.num_fit",
      f"{c.design.num_fit} leaves fewer than 2 held-out subsets of design.num_subsets={c.design.num_subsets}")
  for i, j in c.design.pairs:
    req(i < K and j < K and i != j, "design.pairs", f"({i}, {j}) is not a pair of distinct objective indices in [0, {K})")
  req(c.meta.num_updates % c.baselines.tracin_checkpoints == 0, "baselines.tracin_checkpoints",
      f"{c.baselines.tracin_checkpoints} must divide meta.num_updates={c.meta.num_updates}")
  req(c.surrogates.cv <= c.design.num_fit, "surrogates.cv",
      f"{c.surrogates.cv} folds exceed the design.num_fit={c.design.num_fit} fitted subsets")
  fewest = 2 * (K + 1 + len(c.design.pairs)) + 3   # 2 truth seeds, 3 subsets
  costs.check_length("finetune.num_updates", fewest, ppo_flops(c.finetune),
                      "fine-tunes", f"{c.finetune.num_updates} PPO updates")
  costs.check_time(compute_time(c), costs.TIME_BOUNDS["compute"])
  # every family on the exact and estimated outcomes, influence and TracIn, against the LOO truth
  costs.scoring_time(c, [costs.Scored(c.design.num_fit, K, K, 2 * costs.num_families(c) + 2)])


EXPERIMENT = contract.Experiment(
    name="morl", configs=CONFIGS, default_config="cpu", get_config=get_config, rules=RULES, checks=checks,
    memory=memory, problems="ksurrogate_experiments.morl.pipeline:problems")
