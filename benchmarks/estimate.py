"""Estimator benchmark, every figure a ratio measured side by side in one run.

  python benchmarks/estimate.py                       # CPU size (~5 min on 2 cores)
  python benchmarks/estimate.py --p=97 --bar=20 --d_model=128 --dim=2048 --ft_steps=300   # paper size (GPU)

1. Featurization throughput: examples/s, and FLOP/s (XLA's cost analysis of the compiled
   featurizer) against a plain matmul [B*C, D] @ [D, d] timed in the same run.
2. Estimator vs the real fine-tuning it replaces, on the same subsets: wall time per subset and
   both error definitions (ridge calibrated on half of the fine-tuned subsets, errors reported on
   the other half), next to the no-change baseline F(theta0).
3. Estimator throughput: subsets/s at m in --sizes, for the one-step (sufficient statistics) and
   full Newton solvers at their calibrated ridges, and the gap between them.
"""
from __future__ import annotations




import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

import ksurrogate as ks
from common import timed
from ksurrogate_experiments.modular import config as config_lib
from ksurrogate_experiments.modular import phases as pipeline
from ksurrogate import diagnostics, estimators, features, training

_P = flags.DEFINE_integer("p", 29, "modulus")
_BAR = flags.DEFINE_integer("bar", 6, "task block width (29 / 6 -> 25 tasks)")
_D_MODEL = flags.DEFINE_integer("d_model", 64, "transformer width")
_DIM = flags.DEFINE_integer("dim", 256, "projection dimension d")
_SIZES = flags.DEFINE_list("sizes", ["100", "1000", "5000"], "numbers of subsets")
_NEWTON_MAX = flags.DEFINE_integer("newton_max", 1000, "largest m for the full Newton solver")
_PRETRAIN = flags.DEFINE_integer("pretrain_steps", 600, "full-batch steps for theta0")
_FT_STEPS = flags.DEFINE_integer("ft_steps", 100, "fine-tuning steps per subset")
_FT_SUBSETS = flags.DEFINE_integer("ft_subsets", 16, "subsets really fine-tuned")
_FT_LR = flags.DEFINE_float("ft_lr", 0.01, "fine-tuning learning rate")
_FT_OPT = flags.DEFINE_enum("ft_optimizer", "sgd", ["sgd", "adam"], "fine-tuning optimizer")
_BATCH = flags.DEFINE_integer("batch", 64, "featurization batch size")


def main(argv):
  del argv
  # The modular experiment's own builders: data, model, theta0's recipe, the fine-tuning optimizer.
  c = config_lib.get_config("cpu")
  c.data.p, c.data.bar = _P.value, _BAR.value
  c.model.d_model, c.model.mlp_dim = _D_MODEL.value, 4 * _D_MODEL.value
  c.train.num_steps, c.baselines.tracin_checkpoints = _PRETRAIN.value, 1
  c.finetune.optimizer, c.finetune.lr, c.finetune.num_steps = _FT_OPT.value, _FT_LR.value, _FT_STEPS.value
  config_lib.EXPERIMENT.validate(c)
  s = pipeline.setup(c)
  d, apply_fn = s.d, s.apply_fn
  d = d.__class__(**{**d.__dict__, "X_val": s.X_val, "y_val": s.y_val})   # the config's target examples
  (params0, _), t_pre = timed(lambda: jax.jit(lambda p: s.retrain(p, s.train_data, jnp.ones(len(d.y_train)), s.data_key))(
      s.init_fn(s.init_key)))
  D = sum(x.size for x in jax.tree.leaves(params0))
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; p={_P.value}, D={D} params, N={len(d.X_train)} train, "
        f"{len(d.X_val)} targets, K={d.num_tasks}, d={_DIM.value}; theta0 trained in {t_pre:.1f} s")

  # 1. Featurization.
  key = jax.random.key(1)
  B = _BATCH.value
  fz = features.make_featurizer(apply_fn, params0, key=key, dim=_DIM.value, output="margin")
  xb, yb = d.X_train[:B], d.y_train[:B]
  timed(lambda: fz(xb, yb))
  reps = 5
  _, t_batch = timed(lambda: [fz(xb, yb) for _ in range(reps)])
  t_batch /= reps
  flops = fz.lower(xb, yb).compile().cost_analysis()
  flops = (flops[0] if isinstance(flops, list) else flops)["flops"]
  G = jax.random.normal(jax.random.key(2), (B, D))
  P = jax.random.normal(jax.random.key(3), (D, _DIM.value))
  mm = jax.jit(lambda a, b: a @ b)
  timed(lambda: mm(G, P))
  _, t_mm = timed(lambda: [mm(G, P) for _ in range(reps)])
  t_mm /= reps
  mm_flops = 2.0 * B * D * _DIM.value
  print(f"\n[featurize] {B / t_batch:,.0f} examples/s; {flops / t_batch / 1e9:.1f} GFLOP/s achieved vs "
        f"{mm_flops / t_mm / 1e9:.1f} GFLOP/s for a [{B}, {D}] @ [{D}, {_DIM.value}] matmul: ratio "
        f"{(flops / t_batch) / (mm_flops / t_mm):.2f}")
  (train, t_feat) = timed(lambda: features.featurize(apply_fn, params0, d.X_train, d.y_train, key=key, dim=_DIM.value, batch_size=B))
  target = features.featurize(apply_fn, params0, d.X_val, d.y_val, key=key, dim=_DIM.value, batch_size=B)
  print(f"[featurize] all {len(d.X_train)} training examples: {t_feat:.2f} s")

  # 2. Real fine-tuning on a few subsets; the ridge is calibrated on half of them.
  stats, t_stats = timed(lambda: ks.task_statistics(train, d.task_train, d.num_tasks))
  size = d.num_tasks - 3
  n_ft = _FT_SUBSETS.value
  S_ft = np.asarray(ks.subsets.fixed_size(jax.random.key(7), n_ft, d.num_tasks, size))
  recipe = pipeline.finetune_recipe(c, s)
  ft = lambda: training.finetune_subsets(recipe, params0, s.train_data, d.task_train, S_ft, chunk_size=n_ft)  # noqa: E731
  ft()
  (stacked, _), t_ft = timed(ft)
  F_ft = np.asarray(s.val_loss(stacked))
  F_base = np.asarray(training.cross_entropy(apply_fn(params0, d.X_val), d.y_val))
  half = n_ft // 2
  held = jax.tree.map(lambda t: t[half:], stacked)
  base_err = ks.metrics.relative_error(np.broadcast_to(F_base, F_ft[half:].shape), F_ft[half:])
  print(f"\n[fine-tune] {n_ft} subsets of {size}/{d.num_tasks} tasks, {_FT_STEPS.value} {_FT_OPT.value} steps (lr {_FT_LR.value:g}) from theta0: "
        f"{t_ft / n_ft:.3f} s per subset. No-change baseline F(theta0): median relative error {base_err['median']:.4f}")
  ridges = {}
  data = estimators.Data.classifier(apply_fn, params0, (d.X_train, d.y_train), d.task_train, (d.X_val, d.y_val),
                                    output="margin", num_tasks=d.num_tasks)
  lin_err = diagnostics.linearization_error(apply_fn, params0, held, d.X_val)
  for method in ("onestep", "newton"):
    est = estimators.get(method)(dim=_DIM.value, ridge_grid=tuple(10.0 ** np.arange(-1, 8)))
    state = est.prepare(data, features=(train, target), calibrate=(S_ft[:half], F_ft[:half]))
    ridges[method] = state.ridge
    F_hat, rep = est.estimate(state, S_ft[half:])
    rep = rep.scored(F_hat, F_ft[half:], F_base=F_base, linearization_errors=lin_err)
    per_ft, per_est = t_ft / n_ft, rep.seconds_per_subset
    table = {k: round(v, 4) for k, v in state.calibration.items()}
    print(f"[vs fine-tune, {method}] ridge {state.ridge:g} (calibrated on {half} subsets: {table})")
    print(f"  held-out {n_ft - half} subsets: median relative error {rep.median_relative_error:.4f}, mean "
          f"{rep.mean_relative_error:.4f}, LDS vs fine-tune {rep.lds_vs_real or float('nan'):.3f}; linearization error "
          f"(paper's definition) median {rep.linearization_error:.4f}, mean {rep.linearization_error_mean:.4f}")
    print(f"  time per subset: fine-tune {per_ft:.3f} s, estimate {per_est * 1e3:.2f} ms (compile {rep.seconds_compile:.2f} s "
          f"apart): speedup {per_ft / per_est:,.0f}x; with featurization + statistics amortized over 1000 subsets: "
          f"{per_ft / (per_est + (t_feat + t_stats) / 1000):,.0f}x")

  # 3. Estimator throughput at the calibrated ridges.
  print(f"\n[estimate] per-task statistics: {t_stats:.2f} s (once)")
  print(f"{'m':>6} {'onestep subsets/s':>18} {'newton subsets/s':>17} {'median |onestep-newton|/newton':>31}")
  for m in [int(s) for s in _SIZES.value]:
    S = np.asarray(ks.subsets.fixed_size(jax.random.key(m), m, d.num_tasks, size))
    one = lambda S_: ks.estimate(train, d.task_train, S_, target, ridge=ridges["onestep"], method="onestep", stats=stats)  # noqa: E731
    one(S[:2])
    F1, t1 = timed(lambda: one(S))
    if m <= _NEWTON_MAX.value:
      ks.estimate(train, d.task_train, S[:2], target, ridge=ridges["newton"], method="newton")
      F2, t2 = timed(lambda: ks.estimate(train, d.task_train, S, target, ridge=ridges["newton"], method="newton"))
      gap = float(np.median(np.abs(F1 - F2) / np.abs(F2)))
      print(f"{m:>6} {m / t1:>18,.0f} {m / t2:>17,.1f} {gap:>31.5f}")
    else:
      print(f"{m:>6} {m / t1:>18,.0f} {'-':>17} {'-':>31}")


if __name__ == "__main__":
  app.run(main)
