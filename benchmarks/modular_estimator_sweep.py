"""How well the estimator stands in for the fine-tuning it approximates, per estimator setting.

  python benchmarks/modular_estimator_sweep.py --workdir=/tmp/mod_cpu   # a finished modular cpu run (~10 min)

Reads theta0 and the real fine-tunes (the `finetune` and `finetune_loo` phases) from a finished
modular run (copied to a scratch folder, so a running job keeps its lock) and, for each setting
(output kind, projection, dimension d, solver), featurizes at theta0, calibrates the ridge on the
calibration fine-tunes and reports, on the same subsets the run scored:
  * median relative error against the held-out real fine-tunes (no-change baseline beside it);
  * Pearson of the estimator's own LOO (estimate(1 - e_k) - estimate(1)) with the fine-tuning LOO;
  * surrogates (kernel, linear) fitted on the estimates of the `fit` fine-tuned subsets: their LOO
    Pearson with the fine-tuning LOO as a fraction of the same surrogates fitted on the real
    fine-tunes of those subsets (target >= 0.9), and their LDS on the held-out real fine-tunes
    (target >= 0.8);
  * estimator seconds per subset (the library's steady state over all the fine-tuned subsets and
    LOO masks) and the fine-tuning seconds per subset stored by the run: their ratio (target >=
    100x); the one-time features and statistics apart (setup_s).
Nothing here touches the retraining ground truth or the run's held-out retrains.
"""
from __future__ import annotations



import shutil  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import common  # noqa: E402
import ksurrogate as ks  # noqa: E402
from ksurrogate_experiments.modular import config as config_lib  # noqa: E402
from ksurrogate_experiments.modular import phases as P  # noqa: E402
from ksurrogate import estimators, metrics  # noqa: E402
from ksurrogate.harness import report, runs  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "a finished modular run", required=True)
_CONFIG = flags.DEFINE_string("config", "cpu", "the run's config")
_SETTINGS = flags.DEFINE_list("settings", ["margin:gaussian:64:onestep", "margin:gaussian:256:onestep",
                                           "margin:gaussian:1024:onestep", "margin:gaussian:4096:onestep",
                                           "margin:gaussian:256:newton", "logits:gaussian:256:onestep"],
                              "output:projection:dim:method (dim 0 with identity = every parameter: the one-step "
                              "statistics are K x D x D float64, 42 GB for the cpu model's D = 14.5k, so only for "
                              "small models)")


def main(argv):
  del argv
  c = config_lib.get_config(_CONFIG.value)
  scratch = common.scratch_copy(_WORKDIR.value)
  with runs.Run(scratch, name="modular", progress=False, log=lambda m: None) as run:
    s = run.phase("setup", P.setup, c, store=False)
    dsg = run.phase("design", P.design, c, s, store=False)
    th = run.phase("theta0", P.theta0, c, s)
    recipe = run.phase("finetune_recipe", P.finetune_recipe, c, s, store=False)
    ft = run.outcomes("finetune", P.finetune_chunk, c, dsg.S_est[:c.finetune.num_subsets], s, th, recipe,
                      chunk_size=c.design.chunk_size)
    ft_loo = run.outcomes("finetune_loo", P.finetune_chunk, c, dsg.S_truth, s, th, recipe, chunk_size=c.design.chunk_size)
    computed = [n for n, t in run.timings.items() if t.status != "reused"]
  shutil.rmtree(scratch, ignore_errors=True)
  if computed:
    print(f"note: {computed} were not in {_WORKDIR.value} and were computed here")
  K, task = dsg.K, s.d.task_train
  ncal, nfit = c.finetune.num_calibration, c.finetune.num_fit
  S_ft, F_ft = dsg.S_est[:c.finetune.num_subsets], ft["F"]
  cal, fit, held = np.arange(ncal), np.arange(ncal, ncal + nfit), np.arange(ncal + nfit, len(S_ft))
  loo_ft = ft_loo["F"][:K] - ft_loo["F"][K][None]
  F_base = np.asarray(s.val_loss(jax.tree.map(lambda a: a[None], th.params)))[0]
  t_ft = float(np.mean(ft["seconds"]))
  real = {name: fitter(S_ft[fit], F_ft[fit]) for name, fitter in
          (("kernel", lambda S, F: ks.fit_kernel(S, F, cv=c.surrogates.cv)),
           ("linear", lambda S, F: ks.fit_linear(S, F, cv=c.surrogates.cv)))}
  real_loo = {n: metrics.loo_correlation(np.asarray(ks.predicted_loo(g)), loo_ft)["pearson"] for n, g in real.items()}
  rows = []
  no_change = metrics.relative_error(np.broadcast_to(F_base, F_ft[held].shape), F_ft[held])["median"]
  for setting in _SETTINGS.value:
    output, projection, dim, method = setting.split(":")
    dim = int(dim)
    if projection == "identity":
      dim = int(sum(x.size for x in jax.tree.leaves(th.params)))
    est = estimators.get(method)(dim=dim, projection=projection, batch_size=c.estimate.feature_batch,
                                 ridge_grid=tuple(10.0 ** np.arange(-1.0, 8.0)))
    data = estimators.Data.classifier(s.apply_fn, th.params, s.train_data, task, (s.X_val, s.y_val), output=output,
                                      num_tasks=K)
    state = est.prepare(data, key=jax.random.key(c.seed + 5), calibrate=(S_ft[cal], F_ft[cal]))
    S_all = np.concatenate([S_ft, dsg.S_truth])
    F_all, rep = est.estimate(state, S_all)   # its compilation timed apart by the library
    F_hat, F_truth = F_all[:len(S_ft)], F_all[len(S_ft):]
    loo_hat = F_truth[:K] - F_truth[K][None]
    row = {"setting": setting, "d": dim, "ridge": rep.ridge,
           "median_rel_error": metrics.relative_error(F_hat[held], F_ft[held])["median"], "no_change": no_change,
           "estimator_loo_pearson": metrics.loo_correlation(loo_hat, loo_ft)["pearson"]}
    for name, fitter in (("kernel", lambda S, F: ks.fit_kernel(S, F, cv=c.surrogates.cv)),
                         ("linear", lambda S, F: ks.fit_linear(S, F, cv=c.surrogates.cv))):
      g = fitter(S_ft[fit], F_hat[fit])
      loo = metrics.loo_correlation(np.asarray(ks.predicted_loo(g)), loo_ft)["pearson"]
      row[f"{name}_loo_vs_real_fit"] = loo / real_loo[name]
      row[f"{name}_lds_heldout_ft"] = metrics.lds(np.asarray(g.predict(S_ft[held])), F_ft[held])
    row.update({"s_per_subset": rep.seconds_per_subset, "speedup": t_ft / rep.seconds_per_subset,
                "setup_s": rep.seconds_setup})
    rows.append(row)
    print(report.table([row], list(row)), flush=True)
  print(f"\nsurrogates fitted on {len(fit)} real fine-tunes: LOO Pearson with the fine-tuning LOO kernel "
        f"{real_loo['kernel']:.3f}, linear {real_loo['linear']:.3f}; fine-tune {t_ft:.3f} s per subset; "
        f"{len(held)} held-out fine-tunes\n")
  print(report.table(rows, list(rows[0])))


if __name__ == "__main__":
  app.run(main)
