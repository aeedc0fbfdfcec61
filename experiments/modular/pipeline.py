"""Modular-arithmetic attribution pipeline: the phases (`phases.py`) composed by `problems`.

setup -> design -> theta0 -> retrain (chunked) -> truth_seed<r> (chunked) -> features -> finetune
(chunked) -> finetune_loo (chunked) -> estimate -> baselines -> one driver.Problem (with
`config.study.enabled`, the regime study's cells instead: `study.py`).
"""
from __future__ import annotations

import numpy as np

from ksurrogate_experiments.modular import phases as P
from ksurrogate_experiments.modular import regime
from ksurrogate_experiments.modular import study
from ksurrogate import metrics
from ksurrogate.harness import driver, report, runs


def problems(config, run: runs.Run, families=None):
  """The experiment's one Problem (or, with `config.study.enabled`, the regime study's cells)."""
  if config.study.enabled:
    yield from study.problems(config, run, families)
    return
  c = config
  cs = c.design.chunk_size
  s = run.phase("setup", P.setup, c, store=False)
  dsg = run.phase("design", P.design, c, s, store=False)
  th = run.phase("theta0", P.theta0, c, s)
  retrains = run.outcomes("retrain", P.retrain_chunk, c, dsg.S_rand, s, chunk_size=cs)
  tg = run.phase("targets", P.targets, c, s, th, retrains, dsg, store=False)   # stops here if nothing varies
  truths = P.truth_retrains(c, run, s, dsg)
  fs = run.phase("features", P.featurize, c, s, th)
  recipe = run.phase("finetune_recipe", P.finetune_recipe, c, s, store=False)
  ft = run.outcomes("finetune", P.finetune_chunk, c, dsg.S_est[:c.finetune.num_subsets], s, th, recipe, chunk_size=cs)
  ft_loo = run.outcomes("finetune_loo", P.finetune_chunk, c, dsg.S_truth, s, th, recipe, chunk_size=cs)
  est = run.phase("estimate", P.estimate, c, s, dsg, fs, ft, retrains, tg, th)
  extra_loo = run.phase("baselines", P.run_baselines, c, s, th, fs, tg)
  yield _problem(c, run, s, dsg, th, retrains, truths, tg, ft, ft_loo, est, extra_loo)


def _problem(c, run, s: P.Setup, dsg: P.Design, th: P.Theta0, retrains: dict, truths: list, tg: P.Targets, ft: dict,
             ft_loo: dict, est: P.Estimates, extra_loo: dict) -> driver.Problem:
  K, keep = dsg.K, tg.keep
  losses, unconverged = P.retrain_losses(c, run, [retrains, *truths])
  attempts = np.concatenate([retrains["attempts"]] + [t["attempts"] for t in truths])
  fit, held = np.arange(c.design.num_fit), np.arange(c.design.num_fit, len(dsg.S_rand))
  # Ground truths: LOO by retraining from scratch on every training seed (the driver takes their
  # mean as the truth and their split-half reliability as its ceiling), and LOO by the fine-tuning
  # from theta0 that the estimator approximates (full-batch and deterministic: no seed noise).
  effects = P.loo_effects(truths, K)[:, :, keep]
  loo_ft = (ft_loo["F"][:K] - ft_loo["F"][K][None])[:, keep]
  predictions = {**{k: v for k, v in extra_loo.items() if k != "influence_solve"},
                 "estimator_direct": (est.F_est_truth[:K] - est.F_est_truth[K][None])[:, keep]}
  # Fine-tuned subsets beyond the estimator's calibration: the first num_fit fit surrogates (on
  # the real fine-tunes, and on the estimates of the same subsets), the rest are held out.
  ncal, nfit = c.finetune.num_calibration, c.finetune.num_fit
  S_ft = dsg.S_est[:c.finetune.num_subsets]
  ft_fit, ft_held = np.arange(ncal, ncal + nfit), np.arange(ncal + nfit, len(S_ft))
  F_ft = ft["F"][:, keep]
  single_seed = (metrics.attempt({}, "single_seed", metrics.loo_correlation, effects[0], effects.mean(0))
                 if len(effects) >= 2 else None) or {}
  curve = th.curve
  return driver.Problem(
      name="modular", S=dsg.S_rand, F=retrains["F"][:, keep], splits=[(fit, held)],
      truths={"loo": driver.Truth(effects, predictions=predictions),
              "loo_finetune": driver.Truth(loo_ft, predictions=predictions)},
      other_tests={"finetune": (S_ft[ft_held], F_ft[ft_held])},
      sources={"estimated": (dsg.S_est, est.F_est[:, keep]),
               "finetuned": (S_ft[ft_fit], F_ft[ft_fit]),
               "estimated_same": (S_ft[ft_fit], est.F_est_ft[ft_fit][:, keep])},
      estimates_of={"estimated": "exact", "estimated_same": "finetuned"},
      info={"estimator": est.info, "influence_solve": extra_loo.get("influence_solve"),
            "ground_truth": {"training_seeds": int(len(effects)),
                             "single_seed_vs_mean": single_seed,
                             "loo_effect_sd": float(effects.mean(0).std()),
                             "seed_noise_sd": float(effects.std(0, ddof=1).mean()) if len(effects) >= 2 else float("nan"),
                             "finetune_loo_effect_sd": float(loo_ft.std()),
                             "finetuned_subsets": {"calibration": int(ncal), "fit": int(len(ft_fit)), "heldout": int(len(ft_held))}},
            # where the retrains sit (the fit subsets, the authors' filter) beside the released outcomes
            "outcomes": regime.summary(retrains["F"][fit], c.data.op),
            "targets": {"kept": int(keep.sum()), "total": int(len(keep)),
                        "variance_threshold": c.data.target_variance_threshold},
            "retrain_final_train_loss": {"mean": float(losses.mean()), "max": float(losses.max()),
                                         "unconverged": unconverged, "threshold": c.train.converged_loss,
                                         "retried": int(np.sum(attempts > 1))},
            "theta0": {"final_train_loss": float(np.asarray(th.curve)[-1]), "val_loss": float(tg.F_full.mean()),
                       "val_accuracy": float(np.mean(np.argmax(np.asarray(s.apply_fn(th.params, s.X_val)), -1) == s.y_val))}},
      figures={"training_curves": lambda result, path: report.curves(
          path, {"theta0 (all tasks)": curve}, f"p={c.data.p} {c.data.op}: full-data training loss")},
      outcome_name="validation loss", task_labels=P.task_labels(K))
