"""Configs of the `modular` experiment: one `get_config(arg)`, variants as data.

  tiny:   python -m experiments.main --experiment=modular --config=tiny --workdir=/tmp/mod_tiny
          p=11, 16 tasks, a width-16 model, 40 steps; ~1 min on 2 cores. A smoke test of every
          phase: its 40-step retrains do not fit their data and its numbers mean nothing.
  cpu:    python -m experiments.main --experiment=modular --config=cpu --workdir=/tmp/mod_cpu
          p=29, bar=6 (25 tasks: the paper's protocol), 1 layer d=32, lr 1e-2 (groks: val acc 1.000);
          LOO truth on 3 training seeds + LOO by fine-tuning; 14.6 min on 2 idle cores.
          Measured: LOO Pearson kernel_exact 0.519, linear_exact 0.518, influence 0.503 (ceiling
          0.720); estimator 28.0 % vs Adam fine-tunes (no-change 34.6 %), 1033x per subset.
  study:  python -m experiments.main --experiment=modular --config=study --workdir=/tmp/mod_cpu
          the cpu model over inclusion rates p in {0.5, 0.7, 0.9} and budgets m in {40, 80, 160};
          in the cpu workdir it reuses theta0 and the truth (45 min more on loaded cores).
          Measured: the kernel never beats the linear surrogate (BUILD_NOTES.md).
  paper:  python -m experiments.main --experiment=modular --config=paper --workdir=/tmp/mod_paper
          p=97, bar=20, 2 layers d=128, 4 heads, MLP 512; needs a GPU (OUT=/tmp/out bash
          benchmarks/device_paper.sh). The constant-lr recipe (constant lr, independent minibatch
          streams, SGD fine-tunes) ran in 298 s on one H200: estimator 0.88 % (no-change 1.14 %),
          linearization error 0.17 %, 109x; retrains unreliable, LOO correlations ~0.1. The
          current recipe has not run at this size yet.

Override any field with --config.SECTION.FIELD=VALUE (e.g. --config.train.num_steps=400).
"""
from __future__ import annotations

import ml_collections

from experiments import common

DESCRIPTIONS = {
    "tiny": "smoke test of every phase (p=11, 16 tasks, width 16); ~1 min, numbers meaningless",
    "cpu": "the paper's 25-task protocol on a 1-layer d=32 model (p=29) that groks, 3-seed LOO truth; ~15 min on 2 cores",
    "paper": "the paper's size (p=97, 2 layers d=128); needs a GPU",
    "study": "the cpu model over inclusion rates p and exact budgets m: where the kernel pays off; ~45-60 min on 2 cores",
}

# What differs between variants; everything else is the base config below.
VARIANTS = {
    "tiny": {
        "data": dict(p=11, bar=3, num_targets=30, target_variance_threshold=0.0),
        "model": dict(d_model=16, num_layers=1, num_heads=2, mlp_dim=32),
        "train": dict(num_steps=40, warmup_steps=2, chunk_size=8, tracin_checkpoints=2),
        "subsets": dict(num_random=14, num_fit=10, size=13),
        "finetune": dict(num_subsets=12, num_calibration=4, num_fit=5, steps=10),
        "truth": dict(seeds=2),
        "estimate": dict(proj_dim=32, num_subsets=60, sizes=(13, 15)),
        "baselines": dict(cg_iters=20),
        "surrogates": dict(cv=3),
        "top": dict(normalized_error_threshold=0.0, progress=False, smoke_test=True),
    },
    "cpu": {
        "data": dict(p=29, bar=6, num_targets=168),
        "model": dict(d_model=32, num_layers=1, mlp_dim=128),
        # lr 1e-2 groks: theta0 reaches validation accuracy 1.000 on 3 init seeds in 600 steps,
        # where lr 1e-3 (any number of steps up to 2000) only memorizes (0.738: exactly the
        # validation pairs whose commuted pair is in training). BUILD_NOTES.md has the search.
        "train": dict(num_steps=600, lr=1e-2, chunk_size=8),
    },
    "paper": {
        "data": dict(p=97, bar=20, num_targets=500),
        "model": dict(d_model=128, num_layers=2, mlp_dim=512),
        "train": dict(num_steps=3000, batch_size=512, chunk_size=32),
        # The replay's exact kernel needs its Jacobian rows: ~4 (N C + T C) D bytes, about 30 GB
        # at this size (top-1 outputs), which fits an H200; below that budget it would fall back
        # to parameter space, which at d = 256 did no better than no change on the cpu config.
        # Not run at this size yet.
        "estimate": dict(proj_dim=1024, num_subsets=5000, memory_gib=48.0),
    },
}


# The regime study runs on the cpu model and recipe.
VARIANTS["study"] = {**VARIANTS["cpu"], "study": dict(enabled=True)}


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
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
      batch_size=None,   # full batch
      # Every retrain (and theta0) draws the same minibatch stream masked by its subset, so outcomes
      # differ by data, not data order; a retrain whose full-data training loss stays above
      # converged_loss is redone on a fresh stream up to `retries` times.
      common_random_numbers=True, retries=1, converged_loss=0.1,
      tracin_checkpoints=5,
  )
  c.subsets = dict(num_random=50, num_fit=40, size=22)   # 40 fit / 10 held out, as the paper
  # Fine-tuning from theta0 on a subset: what the estimator approximates. Adam, so that it moves:
  # SGD at 1e-3 barely leaves theta0 (its outcomes equal F(theta0) to 0.7 %, so any estimate
  # "passes"), SGD at 1e-2 diverges on the cpu config (BUILD_NOTES.md).
  # num_subsets estimation subsets are really fine-tuned: the first num_calibration calibrate the
  # estimator's ridge, all others score its error; of those, the next num_fit fit surrogates on
  # real fine-tunes (and on the estimates of the same subsets) and the rest are held out.
  c.finetune = dict(optimizer="adam", lr=1e-4, steps=100, num_subsets=160, num_calibration=8, num_fit=100)
  # Ground-truth leave-one-out: the LOO and full-set retrains are repeated over `seeds` training
  # seeds (init and data order; seed 0 is the retrain phase's and theta0's); the truth is their
  # mean and its split-half reliability across seeds the ceiling every method is reported against.
  c.truth = dict(seeds=3)
  c.estimate = dict(
      # "replay": the finetune block's recipe replayed in the linearized model (ks.estimate_finetune)
      # on the `output` ("top1": the label's strongest competitor at theta0 and the rest lumped),
      # in example space (exact kernel) when it fits memory_gib, else in parameter space projected
      # to proj_dim. "onestep" / "newton": the ridge minimizer on margin features projected to
      # proj_dim. BUILD_NOTES.md ("Estimated outcomes: replaying the fine-tuning") has the comparison.
      method="replay", output="top1", space="auto", memory_gib=2.0,
      proj_dim=256, feature_batch=64,
      num_subsets=2000,
      sizes=(22, 24),   # sizes of the estimated subsets: up to K - 1, next to the LOO sets
      # Ridge methods only: ridge of the estimates the surrogates are fitted on: "retrain" = best LDS
      # against the exact retrains of the fit split (training data of the exact surrogates, never the
      # held-out split or LOO); "finetune" = the ridge calibrated against fine-tunes from theta0.
      attribution_ridge="retrain",
  )
  # Influence functions: Gauss-Newton curvature (PSD, so CG converges on this non-convex model),
  # damping as a fraction of its mean eigenvalue.
  c.baselines = dict(curvature="gauss_newton", damping=0.1, cg_iters=200)
  c.surrogates = dict(cv=5, num_inducing=1000, exact_krr_max=3000)   # Nystrom beyond exact_krr_max subsets
  # The regime study (experiments/modular/study.py), run instead of the one-problem protocol when
  # enabled: cells over inclusion rates at other_budget exact subsets and over budgets at
  # budget_rate, num_heldout held-out retrains per rate, num_estimated estimated subsets per rate,
  # num_pairs exact pair interactions per seed, pool-based active sampling.
  c.study = dict(enabled=False, rates=(0.5, 0.7, 0.9), budget_rate=0.7, budgets=(40, 80, 160), other_budget=80,
                 num_heldout=20, num_estimated=5000, num_pairs=6, active_seeds=3, active_base=40, active_more=40)
  return common.apply_variant(c, VARIANTS[arg])   # fields without a base value are set by every variant


def validate(c) -> None:
  """Range checks a type check cannot make; each error names the field."""
  positive = ["data.p", "data.bar", "data.num_targets", "model.d_model", "model.num_layers", "model.num_heads",
              "model.mlp_dim", "train.num_steps", "train.chunk_size", "train.tracin_checkpoints", "subsets.num_random",
              "subsets.num_fit", "subsets.size", "finetune.steps", "finetune.num_subsets", "finetune.num_calibration",
              "finetune.num_fit", "truth.seeds", "estimate.proj_dim",
              "estimate.feature_batch", "estimate.num_subsets", "baselines.cg_iters", "surrogates.cv",
              "surrogates.num_inducing", "surrogates.exact_krr_max"]
  for path in positive:
    _require(c, path, lambda v: isinstance(v, int) and v >= 1, "a positive integer")
  for path in ("train.lr", "finetune.lr"):
    _require(c, path, lambda v: v > 0, "positive")
  for path in ("train.weight_decay", "baselines.damping", "data.target_variance_threshold",
               "train.warmup_steps", "train.retries", "train.converged_loss"):
    _require(c, path, lambda v: v >= 0, "non-negative")
  _require(c, "data.train_fraction", lambda v: 0 < v < 1, "in (0, 1)")
  _require(c, "train.b2", lambda v: 0 < v < 1, "in (0, 1)")
  _require(c, "train.batch_size", lambda v: v is None or (isinstance(v, int) and v >= 1), "None or a positive integer")
  _require(c, "data.op", lambda v: v in ("add", "quad"), "'add' or 'quad'")
  _require(c, "model.activation", lambda v: v in ("relu", "gelu"), "'relu' or 'gelu'")
  _require(c, "train.lr_schedule", lambda v: v in ("constant", "cosine"), "'constant' or 'cosine'")
  _require(c, "finetune.optimizer", lambda v: v in ("sgd", "adam"), "'sgd' or 'adam'")
  _require(c, "baselines.curvature", lambda v: v in ("gauss_newton", "hessian"), "'gauss_newton' or 'hessian'")
  _require(c, "estimate.method", lambda v: v in ("replay", "onestep", "newton"), "'replay', 'onestep' or 'newton'")
  _require(c, "estimate.output", lambda v: v in ("margin", "logits") or (v.startswith("top") and v[3:].isdigit()
                                                                         and int(v[3:]) >= 1), "'margin', 'logits' or 'top<k>'")
  _require(c, "estimate.space", lambda v: v in ("auto", "example", "parameter"), "'auto', 'example' or 'parameter'")
  _require(c, "estimate.memory_gib", lambda v: v > 0, "positive")
  _require(c, "estimate.attribution_ridge", lambda v: v in ("retrain", "finetune"), "'retrain' or 'finetune'")
  if c.train.lr_schedule == "cosine" and c.train.warmup_steps >= c.train.num_steps:
    raise ValueError(f"train.warmup_steps: {c.train.warmup_steps} leaves no decay in train.num_steps={c.train.num_steps}")
  if c.train.num_steps % c.train.tracin_checkpoints:
    raise ValueError(f"train.tracin_checkpoints: {c.train.tracin_checkpoints} must divide train.num_steps={c.train.num_steps}")
  st = c.study
  for path in ("study.num_heldout", "study.num_estimated", "study.num_pairs", "study.active_seeds",
               "study.active_base", "study.active_more", "study.other_budget"):
    _require(c, path, lambda v: isinstance(v, int) and v >= 1, "a positive integer")
  _require(c, "study.rates", lambda v: len(v) >= 1 and all(0 < r < 1 for r in v), "rates in (0, 1)")
  _require(c, "study.budgets", lambda v: len(v) >= 1 and all(isinstance(m, int) and m >= 2 for m in v), "integers >= 2")
  _require(c, "study.budget_rate", lambda v: v in tuple(st.rates), f"one of study.rates {tuple(st.rates)}")
  _require(c, "study.num_heldout", lambda v: v >= 2, "at least 2")
  K = (-(-c.data.p // c.data.bar)) ** 2
  if not 1 <= c.subsets.size < K:
    raise ValueError(f"subsets.size: must lie in [1, {K - 1}] for {K} tasks, got {c.subsets.size}")
  lo, hi = c.estimate.sizes
  if not 1 <= lo <= hi <= K:
    raise ValueError(f"estimate.sizes: expected 1 <= low <= high <= {K}, got {tuple(c.estimate.sizes)}")
  if c.subsets.num_fit >= c.subsets.num_random:
    raise ValueError(f"subsets.num_fit: {c.subsets.num_fit} leaves no held-out subset of {c.subsets.num_random}")
  if c.finetune.num_subsets > c.estimate.num_subsets:
    raise ValueError(f"finetune.num_subsets: {c.finetune.num_subsets} exceeds estimate.num_subsets={c.estimate.num_subsets}")
  ft = c.finetune
  if ft.num_calibration < 2 or ft.num_fit < 2 or ft.num_subsets - ft.num_calibration - ft.num_fit < 2:
    raise ValueError(f"finetune.num_subsets: {ft.num_subsets} must hold num_calibration={ft.num_calibration} >= 2, "
                     f"num_fit={ft.num_fit} >= 2 and at least 2 held-out fine-tunes")


def _require(c, path, ok, what):
  node = c
  for part in path.split("."):
    node = node[part]
  try:
    good = ok(node)
  except TypeError:
    good = False
  if not good:
    raise ValueError(f"{path}: must be {what}, got {node!r}")
