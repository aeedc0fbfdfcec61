"""Which estimator stands in best for the fine-tuning it replaces: a grid over library estimators.

  python benchmarks/estimator_replay.py                                   # modular cpu config, Adam 1e-4 x 100
  python benchmarks/estimator_replay.py --recipes=adam:3e-5:100,sgd:1.4e-4:300
  python benchmarks/estimator_replay.py --set train.num_steps=150         # a theta0 that has not grokked
  python benchmarks/estimator_replay.py --config=tiny --cache=/tmp/er_tiny --estimators=onestep,replay:top1

Builds theta0, the data and the real fine-tunes from theta0 (finetune.num_subsets design subsets
+ the K leave-one-out masks + the full set) with the modular experiment's phases, caches them under
--cache (np.savez: reruns only estimate; on the cpu config theta0 ~15 s, 186 fine-tunes ~4-10 min
on 2 shared cores), and scores library estimators (`ksurrogate.estimators`) of the fine-tuned
outcomes. Recipes are optimizer:lr:steps[:eps], full batch: sgd (no momentum) or adam (optax
defaults). An estimator is named solver[:option ...][+cal]:

  onestep, newton      the ridge minimizer on margin features (Gaussian d = --proj_dim), its ridge
                       calibrated on the calibration fine-tunes (always: it has no other scale)
  replay[...]          the recipe replayed through the exact empirical NTK (example space) or
                       projected features (`parameter`, d = --proj_dim; `auto`: the cost rule)
  linearized[...]      the recipe by optax on the unprojected linearized model (the accuracy
                       reference, as costly as a real fine-tune)
  options              an output kind (top1 default, margin, logits, top<k>); replay only: `layer`
                       (one tracked Adam scale per parameter array), `full` (the full-set
                       preconditioner instead of the design's), a space
  +cal                 replay: the step scale chosen on the calibration fine-tunes

Per estimator x recipe it prints: median relative error on the held-out fine-tunes, the no-change
error (theta0's own outcome) and their ratio, the LDS against them (the library's
`EstimatorReport.scored`), 95 % bootstrap intervals of both over the held-out subsets; fit_rel_error
/ fit_lds: the same on the fit fine-tunes (the only columns an estimator may be chosen by); the
surrogate ratio (LOO Pearson vs the fine-tuning LOO of a kernel surrogate fitted on the estimates
of the fit subsets / fitted on their real fine-tunes); the estimator's own LOO vs the fine-tuning
LOO; the recipe's first-order error (median over the scored fine-tunes); seconds per subset (the
report's steady state) with the setup shared over --num_estimated subsets, against a real
fine-tune of the same recipe timed warm in the same run; the state's memory. Nothing is selected
on the held-out fine-tunes or on leave-one-out. Rows of --reuse estimators found in the cache carry
the timings of the run that made them (reused = True). BUILD_NOTES.md ("Estimated outcomes:
replaying the fine-tuning") records what each variant measured and which were dropped.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from jax.flatten_util import ravel_pytree

import common
import ksurrogate as ks
from ksurrogate_experiments.modular import config as config_lib
from ksurrogate_experiments.modular import phases as P
from ksurrogate import estimators, metrics
from ksurrogate.harness import report

_CACHE = flags.DEFINE_string("cache", "/tmp/estimator_replay", "folder for theta0 and the real fine-tunes")
_CONFIG = flags.DEFINE_string("config", "cpu", "modular config")
_SET = flags.DEFINE_multi_string("set", [], "section.field=value on top of the config (e.g. train.num_steps=150)")
_RECIPES = flags.DEFINE_list("recipes", ["adam:1e-4:100"], "fine-tuning recipes from theta0: optimizer:lr:steps[:eps]")
_ESTIMATORS = flags.DEFINE_list(
    "estimators", ["onestep", "replay:margin", "replay:margin:full", "replay:margin+cal", "replay:top1",
                   "replay:top1+cal", "replay:top2", "replay:top2:layer", "replay:top1:parameter"],
    "estimators to compare (see the module docstring)")
_NUM_ESTIMATED = flags.DEFINE_integer("num_estimated", 2000, "subsets the one-time setup is shared over "
                                      "(the modular config's estimate.num_subsets)")
_PROJ_DIM = flags.DEFINE_integer("proj_dim", 256, "projection dimension of onestep / newton / replay:parameter")
_OUT = flags.DEFINE_string("out", None, "write every row as JSON here")
_REUSE = flags.DEFINE_list("reuse", ["linearized:logits", "linearized:top2", "linearized:margin"],
                           "estimators whose estimates (and timings, from the run that made them) are reused from "
                           "--cache when there (the costly references); every other estimator runs here")

OUTPUTS = ("margin", "logits")
SPACES = ("example", "parameter", "auto")


def parse_recipe(text: str) -> estimators.Recipe:
  """optimizer:lr:steps[:eps]"""
  try:
    opt, lr, steps, *eps = text.split(":")
    return estimators.Recipe(opt, float(lr), int(steps), eps=float(eps[0]) if eps else 1e-8)
  except ValueError as e:
    raise SystemExit(f"recipes: {text!r} is not optimizer:lr:steps[:eps] ({e})") from None


@dataclasses.dataclass(frozen=True)
class Spec:
  """A parsed estimator name: the library estimator, the output it linearizes, whether it calibrates."""
  name: str
  estimator: estimators.Estimator
  output: str
  calibrate: bool


def parse_estimator(name: str, recipe: estimators.Recipe, proj_dim: int) -> Spec:
  """solver[:option ...][+cal] -> the library estimator (module docstring)."""
  base, plus, cal = name.partition("+")
  solver, *options = base.split(":")
  if plus and cal != "cal":
    raise SystemExit(f"estimators: {name!r}: the only suffix is +cal")
  outputs = [o for o in options if o in OUTPUTS or _is_top_k(o)]
  rest = [o for o in options if o not in outputs]
  settings = dict(recipe=recipe, dim=proj_dim, ridge_grid=tuple(10.0 ** np.arange(-1.0, 8.0)))
  for o in rest:
    if solver == "replay" and o in SPACES:
      settings["space"] = o
    elif solver == "replay" and o == "layer":
      settings["groups"] = "layer"
    elif solver == "replay" and o == "full":
      settings["preconditioner"] = "full"
    else:
      raise SystemExit(f"estimators: {name!r}: unknown option {o!r} for {solver}")
  try:
    est = estimators.from_settings(solver, settings)
  except ValueError as e:
    raise SystemExit(f"estimators: {name!r}: {e}") from None
  output = "margin" if est.requires_calibration else (outputs[0] if outputs else "top1")
  if (outputs and est.requires_calibration) or len(outputs) > 1 or (cal and solver != "replay"):
    raise SystemExit(f"estimators: {name!r}: {solver} takes {'no output' if est.requires_calibration else 'one output'}"
                     f"{'' if solver == 'replay' else ' and no +cal'}")
  return Spec(name, est, output, calibrate=bool(cal) or est.requires_calibration)


def _is_top_k(option: str) -> bool:
  return option.startswith("top") and option[3:].isdigit() and int(option[3:]) >= 1


def run_estimator(spec: Spec, c, s, dsg, th, ft, S):
  """(F_hat [len(S), T], the report) of one parsed estimator on the real fine-tunes' subsets S,
  calibrated on the first finetune.num_calibration of them where it calibrates."""
  ncal = c.finetune.num_calibration
  data = estimators.Data.classifier(s.apply_fn, th.params, s.train_data, s.d.task_train, (s.X_val, s.y_val),
                                    output=spec.output, num_tasks=dsg.K)
  calibrate = (dsg.S_est[:ncal], ft["F"][:ncal]) if spec.calibrate else None
  state = spec.estimator.prepare(data, key=jax.random.key(c.seed + 5), design=S, calibrate=calibrate)
  return spec.estimator.estimate(state, S)


def _lds(P_, T):
  """LDS, or nan where it is undefined (no target varies: e.g. the tiny config's few held-out rows)."""
  try:
    return metrics.lds(P_, T)
  except metrics.Undefined:
    return float("nan")


def score(name, recipe, c, dsg, F_hat_all, rep, ft, F_base, real_loo, real_lds):
  ncal, nfit, nft = c.finetune.num_calibration, c.finetune.num_fit, c.finetune.num_subsets
  K = dsg.K
  F_ft = ft["F"][:nft]
  S_ft = dsg.S_est[:nft]
  fit, held = np.arange(ncal, ncal + nfit), np.arange(ncal + nfit, nft)
  F_hat, F_truth = F_hat_all[:nft], F_hat_all[nft:]
  loo_ft = ft["F"][nft:nft + K] - ft["F"][nft + K][None]
  scored = rep.scored(F_hat[held], F_ft[held], F_base=F_base)
  # 95 % bootstrap intervals over the held-out subsets (the fine-tunes are deterministic: no seed
  # noise to add; the surrogate ratio's denominator, real fine-tunes' surrogate, is the ceiling)
  boot = np.random.default_rng(0).choice(held, (200, len(held)))
  err_ci = np.percentile([metrics.relative_error(F_hat[b], F_ft[b])["median"] for b in boot], [2.5, 97.5])
  lds_ci = np.percentile([_lds(F_hat[b], F_ft[b]) for b in boot], [2.5, 97.5])
  g = ks.fit_kernel(S_ft[fit], F_hat[fit], cv=c.surrogates.cv)
  sur_loo = metrics.loo_correlation(np.asarray(ks.predicted_loo(g)), loo_ft)["pearson"]
  nan = lambda v: float("nan") if v is None else v  # noqa: E731
  return {
      "estimator": name, "recipe": f"{recipe.optimizer}:{recipe.lr:g}:{recipe.steps}",
      # selection columns: the fit fine-tunes only (never the held-out ones or leave-one-out)
      "fit_rel_error": metrics.relative_error(F_hat[fit], F_ft[fit])["median"],
      "fit_lds": _lds(F_hat[fit], F_ft[fit]),
      "median_rel_error": scored.median_relative_error, "no_change_error": scored.no_change_median_relative_error,
      "ratio_to_no_change": nan(scored.ratio_to_no_change), "lds_heldout": nan(scored.lds_vs_real),
      "err_ci": f"[{err_ci[0]:.3f}, {err_ci[1]:.3f}]", "lds_ci": f"[{lds_ci[0]:.3f}, {lds_ci[1]:.3f}]",
      "surrogate_ratio": sur_loo / real_loo,
      "surrogate_lds_heldout": _lds(np.asarray(g.predict(S_ft[held])), F_ft[held]),
      "real_surrogate_lds_heldout": real_lds,
      "estimator_loo_pearson": metrics.loo_correlation(F_truth[:K] - F_truth[K][None], loo_ft)["pearson"],
      "first_order_error": float(np.median(ft["linearization_error"][ncal:nft])),
  }


# ----------------------------------------------------------------------------------------------
# theta0, the real fine-tunes and their cache.

def _built_from(c) -> dict:
  """The config sections theta0, the fine-tunes and the estimators here read: everything but the
  pipeline's own estimator block (whose fields do not change what is cached)."""
  d = c.to_dict()
  d.pop("estimate")
  return {**d, "feature_batch": c.estimate.feature_batch}


def _tag(obj) -> str:
  return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def build(c, cache: pathlib.Path):
  s = P.setup(c)
  dsg = P.design(c, s)
  path = cache / f"theta0_{_tag(_built_from(c))}.npz"
  _, unravel = ravel_pytree(s.init_fn(s.init_key))
  if path.is_file():
    params = unravel(jnp.asarray(np.load(path)["flat"]))
  else:
    th = P.theta0(c, s)
    params = th.params
    np.savez(path, flat=np.asarray(ravel_pytree(params)[0]), curve=th.curve)
  return s, dsg, P.Theta0(params=params, checkpoints={}, curve=np.zeros(0))


def finetunes(c, s, dsg, th, recipe: estimators.Recipe, cache: pathlib.Path):
  """Real fine-tunes of the first finetune.num_subsets design subsets and the LOO masks + full set
  (cached), and the warm seconds per subset of one chunk timed now (for the side-by-side ratio)."""
  cf = c.copy_and_resolve_references()
  cf.finetune.optimizer, cf.finetune.lr, cf.finetune.num_steps = recipe.optimizer, recipe.lr, recipe.steps
  run_fn = P.finetune_recipe(cf, s)
  S_all = np.concatenate([dsg.S_est[:c.finetune.num_subsets], dsg.S_truth])
  n = c.design.chunk_size
  seconds_now = float(P.finetune_chunk(cf, S_all[:n], 0, s, th, run_fn)["seconds"][0])   # steady state
  path = cache / f"ft_{_tag([_built_from(c), str(recipe)])}.npz"
  if path.is_file():
    return dict(np.load(path)), seconds_now
  outs = [P.finetune_chunk(cf, S_all[i:i + n], i // n, s, th, run_fn) for i in range(0, len(S_all), n)]
  out = {k: np.concatenate([o[k] for o in outs]) for k in ("F", "linearization_error", "seconds")}
  np.savez(path, **out)
  return out, seconds_now


def main(argv):
  del argv
  cache = pathlib.Path(_CACHE.value)
  cache.mkdir(parents=True, exist_ok=True)
  overrides = dict(kv.split("=", 1) for kv in _SET.value)
  c = common.apply_overrides(config_lib.get_config(_CONFIG.value), overrides)
  config_lib.EXPERIMENT.validate(c)
  recipes = [parse_recipe(r) for r in _RECIPES.value]
  specs = {r: [parse_estimator(e, r, _PROJ_DIM.value) for e in _ESTIMATORS.value if e] for r in recipes}   # refused before any work
  t0 = time.perf_counter()
  s, dsg, th = build(c, cache)
  acc = float(np.mean(np.argmax(np.asarray(s.apply_fn(th.params, s.X_val)), -1) == s.y_val))
  F_base = np.asarray(s.val_loss(jax.tree.map(lambda a: a[None], th.params)))[0]
  print(f"config {_CONFIG.value} {overrides}: theta0 val acc {acc:.3f}, val loss {F_base.mean():.4f} "
        f"({time.perf_counter() - t0:.1f} s); N = {len(s.d.y_train)}, T = {len(s.y_val)}, "
        f"D = {ravel_pytree(th.params)[0].size}", flush=True)
  nft, ncal, nfit = c.finetune.num_subsets, c.finetune.num_calibration, c.finetune.num_fit
  S_all = np.concatenate([dsg.S_est[:nft], dsg.S_truth])
  rows = []
  for recipe in recipes:
    t0 = time.perf_counter()
    ft, t_ft = finetunes(c, s, dsg, th, recipe, cache)
    loo_ft = ft["F"][nft:nft + dsg.K] - ft["F"][nft + dsg.K][None]
    fit, held = np.arange(ncal, ncal + nfit), np.arange(ncal + nfit, nft)
    g_real = ks.fit_kernel(dsg.S_est[fit], ft["F"][fit], cv=c.surrogates.cv)
    real_loo = metrics.loo_correlation(np.asarray(ks.predicted_loo(g_real)), loo_ft)["pearson"]
    real_lds = _lds(np.asarray(g_real.predict(dsg.S_est[held])), ft["F"][held])
    print(f"\nrecipe {recipe}: fine-tunes ready ({time.perf_counter() - t0:.0f} s); {t_ft:.3f} s per fine-tune now "
          f"(stored run: {np.mean(ft['seconds']):.3f}); real-fit surrogate LOO Pearson {real_loo:.3f}, "
          f"held-out LDS {real_lds:.3f}", flush=True)
    for spec in specs[recipe]:
      path = cache / f"est_{_tag([_built_from(c), str(recipe), spec.name, _PROJ_DIM.value])}.npz"
      if spec.name in _REUSE.value and path.is_file():
        z = np.load(path)
        F_hat, rep = z["F_hat"], estimators.EstimatorReport(**json.loads(str(z["report"])))
        t_ft_row, reused = float(z["t_ft"]), True
      else:
        F_hat, rep = run_estimator(spec, c, s, dsg, th, ft, S_all)
        t_ft_row, reused = t_ft, False
        fields = {k: v for k, v in rep.to_summary().items() if k in {f.name for f in dataclasses.fields(rep)}}
        fields["recipe"] = None   # the row names its recipe
        np.savez(path, F_hat=F_hat, t_ft=t_ft, report=json.dumps(fields, default=float))
      row = score(spec.name, recipe, c, dsg, F_hat, rep, ft, F_base, real_loo, real_lds)
      share = rep.seconds_setup / _NUM_ESTIMATED.value
      row.update({"space": rep.space, "scale_or_ridge": rep.ridge if rep.ridge is not None else rep.step_scale,
                  "s_per_subset": rep.seconds_per_subset, "setup_s": rep.seconds_setup, "setup_share_s": share,
                  "finetune_s": t_ft_row, "speedup": t_ft_row / (rep.seconds_per_subset + share),
                  "memory_mib": rep.memory_bytes / 2 ** 20, "reused": reused})
      rows.append(row)
      print(report.table([row], list(row)), flush=True)
  if rows:
    print("\n" + report.table(rows, list(rows[0])))
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(json.dumps({"config": overrides, "rows": rows}, indent=1, default=float))


if __name__ == "__main__":
  app.run(main)
