"""Configs of the `morl` experiment: one `get_config(arg)`, variants as data.

  tiny:  python -m experiments.main --experiment=morl --config=tiny --workdir=/tmp/morl_tiny
         5 objectives, a few PPO updates; ~2 min on 2 cores. A smoke test: numbers mean nothing.
  cpu:   python -m experiments.main --experiment=morl --config=cpu --workdir=/tmp/morl_cpu
         10 CartPole objectives, a 1M-step PPO meta-policy, 82k-step fine-tunes: 11 leave-one-out
         masks x 3 seeds, 100 random subsets, 6 measured pairs, objective selection for every
         target on 3 fresh seeds. ~4.5 min of compute on 2 shared cores; results: BUILD_NOTES.md (MORL).

Override any field with --config.SECTION.FIELD=VALUE (e.g. --config.finetune.num_updates=40).
"""
from __future__ import annotations

import ml_collections

from experiments import common

from experiments.morl import envs

DESCRIPTIONS = {
    "tiny": "smoke test of every phase (5 objectives, a few PPO updates); ~2 min, numbers meaningless",
    "cpu": "10 CartPole objectives, PPO meta-policy, 100 random + leave-one-out fine-tunes, selection; ~5 min (quiet 2 cores)",
}

VARIANTS = {
    "tiny": {
        "top": dict(objectives=("balance", "short_pole", "coarse_time", "stay_left", "stay_right"), progress=False,
                    smoke_test=True),
        "meta": dict(num_envs=8, num_steps=32, num_updates=10),
        "baselines": dict(tracin_checkpoints=2),
        "finetune": dict(num_envs=8, num_steps=16, num_updates=4, chunk_size=8),
        "design": dict(num_random=20, num_fit=14, seeds=(0, 1), pairs=((1, 2), (3, 4))),
        "estimate": dict(num_envs=2, num_steps=50, dim=16, num_subsets=64),
        "evaluation": dict(num_episodes=4),
        "selection": dict(seeds=(100,), num_random=2),
        "surrogates": dict(cv=3),
    },
    "cpu": {},
}


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  c = common.base_config("morl", arg, VARIANTS)
  c.objectives = envs.DEFAULT_NAMES
  c.max_steps = 200
  # The meta-policy: PPO on all objectives (env slots spread evenly), annealed learning rate.
  c.meta = dict(num_envs=40, num_steps=128, num_updates=200, lr=2.5e-4, anneal_lr=True)
  # Fine-tuning on a subset: env slots re-assigned among its objectives, constant learning rate.
  c.finetune = dict(num_envs=16, num_steps=64, num_updates=80, lr=2.5e-4, chunk_size=16)
  c.evaluation = dict(num_episodes=16, seed=1234)   # greedy policy, fixed reset seeds
  c.design = dict(
      num_random=100, num_fit=80,   # random subsets (Bernoulli(0.5), non-empty), one seed: fit / held out
      # The random subsets' seed is not one of the leave-one-out seeds, so the surrogates fitted on
      # them share no fine-tuning noise with the ground truth they are scored against.
      random_seed=10,
      seeds=(0, 1, 2),              # fine-tuning seeds of the full set, leave-one-out and pair masks
      # Pairs (i, j) whose exact interaction F(1) - F(1-e_i) - F(1-e_j) + F(1-e_i-e_j) is measured:
      # physics substitutes, the conflicting pair, reward shapers.
      pairs=((1, 2), (5, 6), (7, 8), (1, 3), (2, 4), (8, 9)),
  )
  c.estimate = dict(num_envs=16, num_steps=200, dim=128, ridge=1.0, solver="quadratic", num_subsets=2048)
  c.baselines = dict(curvature="gauss_newton", damping=0.1, cg_iters=200, states_per_objective=256,
                     tracin_checkpoints=5)
  c.selection = dict(seeds=(100, 101, 102), num_random=4)
  c.surrogates = dict(cv=5)
  return common.apply_variant(c, VARIANTS[arg])


def validate(c) -> None:
  """Range checks a type check cannot make; each error names the field."""
  for name in c.objectives:
    if name not in envs.OBJECTIVES:
      raise ValueError(f"objectives: unknown objective {name!r}; known: {', '.join(envs.OBJECTIVES)}")
  K = len(c.objectives)
  if K < 3 or len(set(c.objectives)) != K:
    raise ValueError(f"objectives: need at least 3 distinct objectives, got {tuple(c.objectives)}")
  for section in ("meta", "finetune"):
    for f in ("num_envs", "num_steps", "num_updates"):
      if not isinstance(c[section][f], int) or c[section][f] < 1:
        raise ValueError(f"{section}.{f}: must be a positive integer, got {c[section][f]!r}")
    if not c[section].lr > 0:
      raise ValueError(f"{section}.lr: must be positive, got {c[section].lr}")
    if (c[section].num_envs * c[section].num_steps) % 4:
      raise ValueError(f"{section}.num_envs: num_envs x num_steps must be a multiple of 4 (PPO minibatches)")
  for path, value in (("finetune.chunk_size", c.finetune.chunk_size), ("design.num_random", c.design.num_random),
                      ("estimate.dim", c.estimate.dim), ("estimate.num_subsets", c.estimate.num_subsets),
                      ("evaluation.num_episodes", c.evaluation.num_episodes), ("surrogates.cv", c.surrogates.cv),
                      ("baselines.cg_iters", c.baselines.cg_iters)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{path}: must be a positive integer, got {value!r}")
  if c.design.num_random > 2 ** K - 1:
    raise ValueError(f"design.num_random: {c.design.num_random} exceeds the {2 ** K - 1} non-empty subsets of {K} objectives")
  if not 2 <= c.design.num_fit < c.design.num_random:
    raise ValueError(f"design.num_fit: must lie in [2, design.num_random), got {c.design.num_fit}")
  if len(c.design.seeds) < 2:
    raise ValueError(f"design.seeds: the ceiling needs at least 2 seeds, got {tuple(c.design.seeds)}")
  for i, j in c.design.pairs:
    if not (0 <= i < K and 0 <= j < K and i != j):
      raise ValueError(f"design.pairs: ({i}, {j}) is not a pair of distinct objective indices in [0, {K})")
  if c.estimate.solver not in ("quadratic", "newton"):
    raise ValueError(f"estimate.solver: must be 'quadratic' or 'newton', got {c.estimate.solver!r}")
  if not c.estimate.ridge > 0 or not c.baselines.damping >= 0:
    raise ValueError("estimate.ridge: must be positive (and baselines.damping non-negative)")
  if not isinstance(c.baselines.tracin_checkpoints, int) or c.baselines.tracin_checkpoints < 1 or \
      c.meta.num_updates % c.baselines.tracin_checkpoints:
    raise ValueError(f"baselines.tracin_checkpoints: must be a positive divisor of meta.num_updates={c.meta.num_updates}")
  if not c.selection.seeds:
    raise ValueError("selection.seeds: need at least one fresh seed")
