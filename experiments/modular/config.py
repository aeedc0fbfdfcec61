"""Configs of the `modular` experiment: one `get_config(arg)`, variants as data, and its
`EXPERIMENT` (the contract in `experiments/contract.py`). Every config's command, runtime and
result are in `CONFIGS` (`--help` prints them). Override any field with
--config.SECTION.FIELD=VALUE (e.g. --config.train.num_steps=400).
"""
from __future__ import annotations

import ml_collections

from ksurrogate_experiments import common, costs
from ksurrogate_experiments import contract

CONFIGS = {
    "tiny": contract.Variant(
        description="smoke test of every phase (p=11, 16 tasks, width 16); ~1 min, numbers meaningless",
        command="ksurrogate-run --experiment=modular --config=tiny --workdir=/tmp/mod_tiny",
        runtime="~1 min on 2 quiet cores (4 min at load 10)"),
    "cpu": contract.Variant(
        description="the paper's 25-task protocol in the authors' regime (p=41, 170 constant-lr steps, not grokked), "
                    "3-seed LOO truth; ~15-40 min on 2 cores",
        command="ksurrogate-run --experiment=modular --config=cpu --workdir=/tmp/mod_cpu",
        runtime="38-49 min on 2 loaded cores (BUILD_NOTES.md, \"Ground truths that hold up (issue 19)\")"),
    "cpu_grokked": contract.Variant(
        description="the 25-task protocol on a 1-layer d=32 model (p=29) that groks, 3-seed LOO truth; "
                    "~15 min on 2 cores",
        command="ksurrogate-run --experiment=modular --config=cpu_grokked --workdir=/tmp/mod_grok",
        runtime="13 min on 2 lightly loaded cores (32 min under load)"),
    "quad": contract.Variant(
        description="the cpu config on x^2+xy+y^2 (GELU, 360 steps), the authors' quad regime; ~30-60 min on 2 cores",
        command="ksurrogate-run --experiment=modular --config=quad --workdir=/tmp/mod_quad",
        runtime="~2x the cpu run"),
    "paper": contract.Variant(
        description="the paper's size (p=97, 2 layers d=128, 425 constant-lr steps) in the authors' regime; needs a GPU",
        command="OUT=/tmp/out bash benchmarks/device_run.sh",
        runtime="< 9 min on one H200, planned (device_run.sh first confirms the step count on the fit subsets)"),
    "study": contract.Variant(
        description="the cpu model over inclusion rates p and exact budgets m: where the kernel pays off; "
                    "~45-60 min on 2 cores",
        command="ksurrogate-run --experiment=modular --config=study --workdir=/tmp/mod_cpu",
        runtime="45 min more than the cpu run on loaded cores (in the cpu workdir it reuses theta0 and the truth)"),
}

# What differs between variants; everything else is the base config below.
VARIANTS = {
    "tiny": {
        "data": dict(p=11, bar=3, num_targets=30),
        "model": dict(d_model=16, num_layers=1, num_heads=2, mlp_dim=32),
        "train": dict(num_steps=40, warmup_steps=2),
        "design": dict(num_subsets=14, num_fit=10, size=13, chunk_size=8),
        "finetune": dict(num_subsets=12, num_calibration=4, num_fit=5, num_steps=10),
        "truth": dict(seeds=2),
        "estimate": dict(dim=32, num_subsets=60, sizes=(13, 15)),
        "baselines": dict(cg_iters=20, tracin_checkpoints=2),
        "surrogates": dict(cv=3),
        "eval": dict(resplits=8, bootstrap=200),
        # the base thresholds (those of cpu_grokked), so the tests see what a real run meets
        "top": dict(progress=False, smoke_test=True),
    },
    # The authors' regime (BUILD_NOTES.md, "The authors' regime: recipe search"): constant rate,
    # stopped early on purpose, so retrains end part-way through learning (final training loss up
    # to ~2 by design): no retries, and converged_loss only flags a retrain stuck at chance
    # (ln 41 = 3.71). Targets are kept as the authors keep them (variance > 1e-2).
    "cpu": {
        "data": dict(p=41, bar=9, num_targets=168, train_fraction=0.9, target_variance_threshold=1e-2),
        "model": dict(d_model=32, num_layers=1, mlp_dim=128),
        "train": dict(num_steps=170, lr=1e-3, lr_schedule="constant", retries=0, converged_loss=3.0),
    },
    "cpu_grokked": {
        "data": dict(p=29, bar=6, num_targets=168),
        "model": dict(d_model=32, num_layers=1, mlp_dim=128),
        # lr 1e-2 groks: theta0 reaches validation accuracy 1.000 on 3 init seeds in 600 steps,
        # where lr 1e-3 (any number of steps up to 2000) only memorizes (0.738: exactly the
        # validation pairs whose commuted pair is in training). BUILD_NOTES.md has the search.
        "train": dict(num_steps=600, lr=1e-2),
    },
    # Paper size in the authors' regime: the model and batch of the official code, 425 constant-rate
    # steps (BUILD_NOTES.md: the paper-size curve; benchmarks/device_run.sh confirms the step count
    # on the fit subsets before the run); converged_loss flags a retrain stuck at chance (ln 97 = 4.57).
    "paper": {
        "data": dict(p=97, bar=20, num_targets=500, train_fraction=0.9, target_variance_threshold=1e-2),
        "model": dict(d_model=128, num_layers=2, mlp_dim=512),
        "train": dict(num_steps=425, batch_size=512, lr=1e-3, lr_schedule="constant", retries=0, converged_loss=4.0),
        "design": dict(chunk_size=32),
        # The replay's exact kernel needs its Jacobian rows: ~4 (N C + T C) D bytes, about 30 GB
        # at this size (top-1 outputs), which fits an H200; below that budget it would fall back
        # to parameter space, which at d = 256 did no better than no change on the cpu config.
        # Not run at this size yet.
        # sizes from 21: 5000 distinct subsets need more than the 2625 of 22..24 tasks
        "estimate": dict(dim=1024, num_subsets=5000, memory_gib=48.0, sizes=(21, 24)),
    },
}


# Operation quad (GELU, as the paper) in the same regime: 360 steps, before the memorize-and-commute
# plateau; its retrains end at training loss ~0.2, so converged_loss 1.0 still flags a stuck one.
VARIANTS["quad"] = {**VARIANTS["cpu"], "data": {**VARIANTS["cpu"]["data"], "op": "quad"},
                    "model": {**VARIANTS["cpu"]["model"], "activation": "gelu"},
                    "train": {**VARIANTS["cpu"]["train"], "num_steps": 360, "converged_loss": 1.0}}
# The regime study runs on the cpu model and recipe.
VARIANTS["study"] = {**VARIANTS["cpu"], "study": dict(enabled=True)}


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  """The config `arg` names (CONFIGS): the base below with the variant's fields."""
  c = common.base_config("modular", arg, VARIANTS)
  c.data = dict(
      op="add",
      train_fraction=0.8,
      num_targets=168,
      # Targets whose outcome varies across the random subsets (the official code drops the others).
      target_variance_threshold=1e-3,
  )
  c.model = dict(num_heads=4, activation="relu")   # the paper: ReLU for addition, GELU for quad
  c.train = dict(
      lr=1e-3, weight_decay=1.0, b2=0.98,
      # Linear warmup over the first updates (Power et al.'s grokking recipe), then cosine decay to
      # 0: a constant rate left some paper-size retrains on a loss spike at their last step.
      lr_schedule="cosine", warmup_steps=10,
      batch_size=common.optional_int(),   # None: full batch
      # Every retrain (and theta0) draws the same minibatch stream masked by its subset, so outcomes
      # differ by data, not data order; a retrain whose full-data training loss stays above
      # converged_loss is redone on a fresh stream up to `retries` times.
      common_random_numbers=True, retries=1, converged_loss=0.1,
  )
  # The exact design: num_subsets random subsets of `size` tasks, retrained; the first num_fit fit
  # the surrogates, the rest are held out (40 / 10, as the paper). chunk_size subsets are trained
  # at once (vmapped) and stored per chunk, by every exact phase (retrains and fine-tunes).
  c.design = dict(num_subsets=50, num_fit=40, size=22, chunk_size=8)
  # Fine-tuning from theta0 on a subset: what the estimator approximates. Adam, so that it moves:
  # SGD at 1e-3 barely leaves theta0 (its outcomes equal F(theta0) to 0.7 %, so any estimate
  # "passes"), SGD at 1e-2 diverges on the cpu config (BUILD_NOTES.md).
  # num_subsets estimation subsets are really fine-tuned: the first num_calibration calibrate the
  # estimator's ridge, all others score its error; of those, the next num_fit fit surrogates on
  # real fine-tunes (and on the estimates of the same subsets) and the rest are held out.
  c.finetune = dict(optimizer="adam", lr=1e-4, num_steps=100, num_subsets=160, num_calibration=8, num_fit=100)
  # Ground-truth leave-one-out: the LOO and full-set retrains are repeated over `seeds` training
  # seeds (init and data order; seed 0 is the retrain phase's and theta0's); the truth is their
  # mean and its split-half reliability across seeds the ceiling every method is reported against.
  c.truth = dict(seeds=3)
  c.estimate = dict(
      # solver (a ksurrogate.estimators name) "replay": the finetune block's recipe replayed in the
      # linearized model on the `output` ("top1": the label's strongest competitor at theta0 and
      # the rest lumped), in example space (exact kernel) when it fits memory_gib, else in parameter
      # space projected to dim. "onestep" / "newton": the ridge minimizer on margin features
      # projected to dim. "linearized": the recipe by optax on the unprojected linearized model (the
      # accuracy reference, as costly as fine-tuning). BUILD_NOTES.md ("Estimated outcomes:
      # replaying the fine-tuning") has the comparison.
      dim=256, feature_batch=64, solver="replay", output="top1", space="auto", memory_gib=2.0,
      num_subsets=2000,
      sizes=(22, 24),   # sizes of the estimated subsets: up to K - 1, next to the LOO sets
      # Ridge methods only: ridge of the estimates the surrogates are fitted on: "retrain" = best LDS
      # against the exact retrains of the fit split (training data of the exact surrogates, never the
      # held-out split or LOO); "finetune" = the ridge calibrated against fine-tunes from theta0.
      attribution_ridge="retrain",
  )
  # Influence functions: Gauss-Newton curvature (PSD, so CG converges on this non-convex model),
  # damping as a fraction of its mean eigenvalue; TracIn over tracin_checkpoints of theta0's run.
  c.baselines = dict(curvature="gauss_newton", damping=0.1, cg_iters=200, tracin_checkpoints=5)
  # The regime study (experiments/modular/study.py), run instead of the one-problem protocol when
  # enabled: cells over inclusion rates at other_budget exact subsets and over budgets at
  # budget_rate, num_heldout held-out retrains per rate, num_estimated estimated subsets per rate,
  # num_pairs exact pair interactions per seed, pool-based active sampling.
  c.study = dict(enabled=False, rates=(0.5, 0.7, 0.9), budget_rate=0.7, budgets=(40, 80, 160), other_budget=80,
                 num_heldout=20, num_estimated=5000, num_pairs=6, active_seeds=3, active_base=40, active_more=40)
  return common.apply_variant(c, VARIANTS[arg])   # fields without a base value are set by every variant


def recipe(c):
  """The fine-tuning from theta0 (the finetune block) as the library's Recipe: the real fine-tunes'
  optimizer and what the replay follows."""
  from ksurrogate import estimators
  f = c.finetune
  return estimators.Recipe(f.optimizer, f.lr, f.num_steps)


def estimator(c, solver=None):
  """The library estimator `estimate.solver` (or `solver`) names, with this config's settings (the
  ridge solvers calibrate their ridge over 10^-1..10^7 on real outcomes)."""
  import numpy as np
  from ksurrogate import estimators
  e = c.estimate
  return estimators.from_settings(solver or e.solver, dict(
      recipe=recipe(c), space=e.space, dim=e.dim, memory_bytes=int(e.memory_gib * 2 ** 30), batch_size=e.feature_batch,
      ridge_grid=tuple(10.0 ** np.arange(-1.0, 8.0))))


def network_size(c) -> int:
  """Parameters of the model `c.model` builds for `c.data` (pipeline.network)."""
  d, L, mlp, p = c.model.d_model, c.model.num_layers, c.model.mlp_dim, c.data.p
  per_layer = 4 * d * d + 4 * d + 2 * d * mlp + mlp + d + 4 * d   # attention, MLP, two norms
  return (p + 2 + 4) * d + L * per_layer + 2 * d + d * p + p


def memory(c) -> dict:
  """The largest arrays the settings imply, in bytes, keyed by the field that sets their size
  (float32 unless said; rough, but of the right order): what `validate` checks against memory."""
  K = num_tasks(c)
  n_train = int(round(c.data.train_fraction * c.data.p ** 2))
  T = min(c.data.num_targets, c.data.p ** 2 - n_train)
  d, D = c.estimate.dim, network_size(c)
  t = c.train
  def per_example(seq=4):   # activations kept for the backward pass, per example
    m = c.model
    return m.num_layers * (seq * (12 * m.d_model + 2 * m.mlp_dim) + m.num_heads * seq * seq)
  batch = t.batch_size or n_train
  estimated = [c.estimate.num_subsets] + ([c.study.num_estimated] if c.study.enabled else [])
  one = 4 * (4 * D + max(batch, n_train) * per_example())   # one training's parameters, Adam state, activations
  if one <= common.machine_memory() // 2:
    trainings = ("design.chunk_size", f"{c.design.chunk_size} vmapped trainings (parameters, Adam state, activations)")
  elif 4 * 4 * D >= max(batch, n_train) * 4 * per_example():   # even one training does not fit: name its size
    trainings = ("model.d_model", f"one training of {D} parameters (model.d_model={c.model.d_model}, "
                                  f"data.p={c.data.p}; parameters and Adam state)")
  else:
    trainings = ("data.p", f"one training's activations ({n_train} training pairs of data.p={c.data.p}, width "
                           f"model.d_model={c.model.d_model})")
  out = {
      trainings[0]: (c.design.chunk_size * one, trainings[1]),
      "estimate.feature_batch": (4 * c.estimate.feature_batch * D,
                                 f"the per-example gradients of {c.estimate.feature_batch} examples x {D} parameters"),
      "estimate.num_subsets": (4 * max(estimated) * (K + d + T),
                               f"{max(estimated)} estimated subsets (indicators, solutions, outcomes)"),
      "design.num_subsets": (4 * c.design.num_subsets * (K + T), f"{c.design.num_subsets} retrained subsets"),
  }
  # the estimators' own cost rules (ksurrogate.estimators; imported here, not at the top, so that
  # --help stays light): the features phase's margin features with the one-step statistics, and
  # the replay's exact kernel or projected features
  from ksurrogate import estimators, features
  sizes = dict(num_train=n_train, num_target=T, num_params=D, num_tasks=K)
  cost = estimator(c, solver="onestep").memory(estimators.Sizes(num_outputs=1, **sizes))
  out["estimate.dim"] = (cost.bytes, cost.what)
  est = estimator(c)
  if not est.requires_calibration:   # the replay linearizes estimate.output, not the margin features
    cost = est.memory(estimators.Sizes(num_outputs=features.num_outputs(c.estimate.output, c.data.p), **sizes))
    out["estimate.memory_gib"] = (cost.bytes, cost.what)
  if c.surrogates.num_inducing is not None:
    n = max(estimated)
    m = min(n, c.surrogates.num_inducing)
    out["surrogates.num_inducing"] = (8 * n * m, f"the Nystrom features of {n} subsets x {m} inducing subsets (float64)")
  return out


def num_tasks(c) -> int:
  return (-(-c.data.p // c.data.bar)) ** 2


def compute_time(c) -> dict:
  """{field: (seconds, what)} of the exact trainings the counts imply (common's cost model: FLOPs
  of forward + backward over every step's batch of 4-token examples, a lower bound)."""
  K = num_tasks(c)
  n_train = int(round(c.data.train_fraction * c.data.p ** 2))
  D, t, ft = network_size(c), c.train, c.finetune
  retrain = 6.0 * t.num_steps * (t.batch_size or n_train) * 4 * D
  finetune = 6.0 * ft.num_steps * (t.batch_size or n_train) * 4 * D
  truth = c.truth.seeds * (K + 1)
  return {
      "truth.seeds": (costs.training_seconds(truth, retrain),
                      f"{c.truth.seeds} truth seeds x {K + 1} retrains ({truth} retrains of {t.num_steps} steps)"),
      "design.num_subsets": (costs.training_seconds(c.design.num_subsets, retrain),
                             f"{c.design.num_subsets} retrains of {t.num_steps} steps"),
      "finetune.num_subsets": (costs.training_seconds(ft.num_subsets, finetune),
                               f"{ft.num_subsets} fine-tunes of {ft.num_steps} steps"),
  }


RULES = {
    **common.SHARED_RULES,
    "data.p": common.integer(3),
    "data.bar": common.integer(1),
    "data.op": common.choice("add", "quad"),
    "data.train_fraction": common.fraction(),
    "data.num_targets": common.integer(2),
    "data.target_variance_threshold": common.number(0.0),
    "model.d_model": common.integer(1),
    "model.num_layers": common.integer(1),
    "model.num_heads": common.integer(1),
    "model.mlp_dim": common.integer(1),
    "model.activation": common.choice("relu", "gelu"),
    "train.lr": common.positive(),
    "train.weight_decay": common.number(0.0),
    "train.b2": common.fraction(),
    "train.lr_schedule": common.choice("constant", "cosine"),
    "train.warmup_steps": common.integer(0),
    "train.batch_size": common.optional(common.integer(1)),
    "train.common_random_numbers": common.boolean(),
    "train.retries": common.integer(0),
    "train.converged_loss": common.number(0.0),
    "train.num_steps": common.integer(1),
    "design.num_subsets": common.integer(3),
    "design.num_fit": common.integer(2),
    "design.size": common.integer(1),
    "design.chunk_size": common.integer(1),
    "finetune.optimizer": common.choice("sgd", "adam"),
    "finetune.lr": common.positive(),
    "finetune.num_steps": common.integer(1),
    "finetune.num_subsets": common.integer(6),
    "finetune.num_calibration": common.integer(2),
    "finetune.num_fit": common.integer(2),
    "truth.seeds": common.integer(1),
    "estimate.dim": common.integer(1),
    "estimate.feature_batch": common.integer(1),
    "estimate.solver": common.choice("replay", "onestep", "newton", "linearized"),
    "estimate.output": common.Rule(lambda v: v in ("margin", "logits") or (isinstance(v, str) and v.startswith("top")
                                                                            and v[3:].isdigit() and int(v[3:]) >= 1),
                                   "'margin', 'logits' or 'top<k>' (k >= 1)"),
    "estimate.space": common.choice("auto", "example", "parameter"),
    "estimate.memory_gib": common.positive(),
    "estimate.num_subsets": common.integer(1),
    "estimate.sizes": common.sequence(common.integer(1), min_len=2, max_len=2),
    "estimate.attribution_ridge": common.choice("retrain", "finetune"),
    "baselines.curvature": common.choice("gauss_newton", "hessian"),
    "baselines.damping": common.number(0.0),
    "baselines.cg_iters": common.integer(1),
    "baselines.tracin_checkpoints": common.integer(1),
    "study.enabled": common.boolean(),
    "study.rates": common.sequence(common.fraction(), distinct=True),
    "study.budget_rate": common.fraction(),
    "study.budgets": common.sequence(common.integer(2), distinct=True),
    "study.other_budget": common.integer(2),
    "study.num_heldout": common.integer(2),
    "study.num_estimated": common.integer(1),
    "study.num_pairs": common.integer(1),
    "study.active_seeds": common.integer(1),
    "study.active_base": common.integer(2),
    "study.active_more": common.integer(1),
}


def checks(c) -> None:
  """The checks across fields (after RULES); each error is one line naming the field to change."""
  req = common.require
  K = num_tasks(c)
  req(c.data.bar < c.data.p, "data.bar", f"{c.data.bar} must be below data.p={c.data.p} (one block would be the "
      "only task)")
  req(c.model.d_model % c.model.num_heads == 0, "model.num_heads",
      f"{c.model.num_heads} must divide model.d_model={c.model.d_model}")
  n_train = int(round(c.data.train_fraction * c.data.p ** 2))
  n_val = c.data.p ** 2 - n_train
  req(n_train >= K and n_val >= 2, "data.train_fraction", f"{c.data.train_fraction} leaves {n_train} training and "
      f"{n_val} validation pairs for {K} tasks")
  req(c.min_varying_targets <= min(c.data.num_targets, n_val), "min_varying_targets",
      f"{c.min_varying_targets} exceeds the {min(c.data.num_targets, n_val)} targets")
  t = c.train
  req(t.batch_size is None or t.batch_size <= n_train, "train.batch_size",
      f"{t.batch_size} exceeds the {n_train} training examples (None: full batch)")
  req(t.lr_schedule != "cosine" or t.warmup_steps < t.num_steps, "train.warmup_steps",
      f"{t.warmup_steps} leaves no decay in train.num_steps={t.num_steps}")
  n_ck = c.baselines.tracin_checkpoints
  req(n_ck <= t.num_steps and t.num_steps % n_ck == 0, "baselines.tracin_checkpoints",
      f"{n_ck} must divide train.num_steps={t.num_steps}")
  req(c.design.size < K, "design.size", f"must lie in [1, {K - 1}] for {K} tasks, got {c.design.size}")
  req(c.design.num_fit < c.design.num_subsets - 1, "design.num_fit",
      f"{c.design.num_fit} leaves fewer than 2 held-out subsets of design.num_subsets={c.design.num_subsets}")
  lo, hi = c.estimate.sizes
  req(lo <= hi <= K, "estimate.sizes", f"expected low <= high <= {K} (the number of tasks), got {tuple(c.estimate.sizes)}")
  # the samplers draw distinct subsets: a repeat split between fit and held-out rows would score the fit
  exist = costs.distinct_subsets(K, c.design.size, c.design.size)
  req(c.design.num_subsets <= exist, "design.num_subsets",
      f"{c.design.num_subsets} exceeds the C({K}, {c.design.size}) = {exist} distinct subsets of design.size="
      f"{c.design.size} tasks")
  exist = costs.distinct_subsets(K, lo, hi)
  req(c.estimate.num_subsets <= exist, "estimate.num_subsets",
      f"{c.estimate.num_subsets} exceeds the {exist} distinct subsets of {lo}..{hi} of {K} tasks (estimate.sizes)")
  ft = c.finetune
  req(ft.num_subsets <= c.estimate.num_subsets, "finetune.num_subsets",
      f"{ft.num_subsets} exceeds estimate.num_subsets={c.estimate.num_subsets}")
  req(ft.num_subsets - ft.num_calibration - ft.num_fit >= 2, "finetune.num_subsets",
      f"{ft.num_subsets} must hold num_calibration={ft.num_calibration}, num_fit={ft.num_fit} and at least 2 "
      "held-out fine-tunes")
  fit_sets = {"design.num_fit": c.design.num_fit, "finetune.num_fit": ft.num_fit}
  st = c.study
  if st.enabled:
    fit_sets.update({"study.budgets": min(st.budgets), "study.other_budget": st.other_budget,
                     "study.active_base": st.active_base})
  smallest = min(fit_sets, key=fit_sets.get)
  req(c.surrogates.cv <= fit_sets[smallest], "surrogates.cv",
      f"{c.surrogates.cv} folds exceed the {fit_sets[smallest]} subsets of the smallest fit set ({smallest})")
  costs.check_time(compute_time(c), costs.TIME_BOUNDS["compute"])
  # every family on the exact, estimated, fine-tuned and estimated-same outcomes, influence, TracIn,
  # TRAK and the estimator's direct LOO, against the retrained and the fine-tuned LOO truths
  methods = 4 * costs.num_families(c) + 4
  costs.scoring_time(c, [costs.Scored(c.design.num_fit, K, min(c.data.num_targets, n_val), methods, num_truths=2)])
  req(st.budget_rate in tuple(st.rates), "study.budget_rate", f"{st.budget_rate} must be one of study.rates {tuple(st.rates)}")
  if st.enabled:   # the largest pool of distinct subsets (neither empty nor full) the study retrains
    pool = max(*st.budgets, st.other_budget, st.active_base + 2 * st.active_more) + st.num_heldout
    req(pool <= 2 ** K - 2, "study.budgets", f"a pool of {pool} distinct subsets (largest budget, active sampling and "
        f"study.num_heldout) exceeds the {2 ** K - 2} subsets of {K} tasks")


EXPERIMENT = contract.Experiment(
    name="modular", configs=CONFIGS, default_config="cpu", get_config=get_config, rules=RULES, checks=checks,
    memory=memory, problems="ksurrogate_experiments.modular.pipeline:problems", across="ksurrogate_experiments.modular.study:across")
