"""The regmix experiment's phases: the learning curve of every family, mixture selection, and
active choice of training runs; then one driver Problem (all runs, the released train / test
split) that the shared driver scores and reads out."""
from __future__ import annotations

import os
import time

import jax
import numpy as np

from ksurrogate import attribution
from ksurrogate import families as families_lib
from ksurrogate import intervals
from ksurrogate import metrics
from ksurrogate import mixtures
from ksurrogate.harness import driver
from ksurrogate_experiments import common
from ksurrogate_experiments.regmix import config as regmix_config
from ksurrogate_experiments.regmix import console
from ksurrogate_experiments.regmix import figures
from ksurrogate_experiments.regmix import released
from ksurrogate_experiments.regmix import scores

NAME = "regmix"


def load(config) -> dict:
  """The training runs used (the first `design.num_fit`) and the test runs: {"X", "Y", "X_test",
  "Y_test", "domains", "targets"}."""
  d = released.load(config.data.dir)
  n = config.design.num_fit
  X, Y = d["train"]
  return dict(X=X[:n], Y=Y[:n], X_test=d["test"][0], Y_test=d["test"][1], domains=d["domains"], targets=d["targets"])


def fit_one(family, X, Y, skipped: dict):
  """(surrogate or None, seconds) through `families.fit_all` (its refusal stored in `skipped`)."""
  t0 = time.perf_counter()
  why = {}
  fitted = families_lib.fit_all([family], {"exact": (X, Y)}, skipped=why)
  if why:
    skipped.update({family.name: next(iter(why.values()))})
  return fitted.get(families_lib.method_name(family, "exact")), time.perf_counter() - t0


def draws(config, size: int) -> list[np.ndarray]:
  """The training rows of each re-draw at `size` (one draw: all rows, at num_fit itself)."""
  n = config.design.num_fit
  if size >= n:
    return [np.arange(n)]
  return [np.sort(np.random.default_rng([config.seed, size, d]).choice(n, size, replace=False))
          for d in range(config.design.redraws)]


def learning_curve(config, families) -> dict:
  """Every family fitted on re-drawn training sets of each size, scored on the test runs:
  Spearman (mean over targets, and per target) and normalized error, each with a 95 % interval
  (a bootstrap over test runs and re-draws); paired differences of every family against
  every declared baseline (the linear ones and LightGBM), with verdicts; fit seconds per family."""
  data = load(config)
  fams = families(config, NAME)
  Yt = data["Y_test"]
  B = config.eval.bootstrap
  out = {"sizes": list(config.design.sizes), "families": [f.name for f in fams], "baselines": [f.name for f in fams if f.baseline],
         "scores": {}, "comparisons": {}, "fit_seconds": {f.name: 0.0 for f in fams}, "skipped": {},
         "bootstrap": B, "redraws": config.design.redraws, "load_before": os.getloadavg()[0]}
  for size in config.design.sizes:
    rows = draws(config, size)
    counts, draw_w = scores.resamples([config.seed, size], len(Yt), len(rows), B)
    reps = {}
    for fam in fams:
      preds = []
      for r in rows:
        surr, sec = fit_one(fam, data["X"][r], data["Y"][r], out["skipped"])
        out["fit_seconds"][fam.name] += sec
        if surr is None:
          break
        preds.append(np.asarray(surr.predict(data["X_test"]), np.float64))
      if len(preds) < len(rows):
        continue
      P = np.stack(preds)
      point, rep = scores.point_scores(P, Yt), scores.resampled_scores(P, Yt, counts, draw_w)
      reps[fam.name] = rep
      row = {}
      row.update(scores.entries("spearman", scores.interval(point["spearman"], rep["spearman"])))
      row.update(scores.entries("normalized_error", scores.interval(point["normalized_error"], rep["normalized_error"])))
      row["spearman_per_target"] = {t: scores.entries("spearman", scores.interval(point["spearman_per_target"][j],
                                                                                    rep["spearman_per_target"][:, j]))
                                    for j, t in enumerate(data["targets"])}
      out["scores"].setdefault(fam.name, {})[str(size)] = row
    for a in (f.name for f in fams if not f.baseline):   # each family against each declared baseline
      for b in (f.name for f in fams if f.baseline):
        if a in reps and b in reps:
          pa, pb = out["scores"][a][str(size)], out["scores"][b][str(size)]
          row = {}
          for key, better in (("spearman", True), ("normalized_error", False)):
            iv = scores.interval(pa[key] - pb[key], reps[a][key] - reps[b][key])
            row.update(scores.entries(key, iv))
            row[f"{key}_verdict"] = iv.verdict(better)
          out["comparisons"].setdefault(f"{a}-{b}", {})[str(size)] = row
  out["load_after"] = os.getloadavg()[0]
  out["fit_seconds_total"] = float(sum(out["fit_seconds"].values()))
  return out


def _objective(config, targets) -> int | None:
  return None if config.selection.target == "mean" else targets.index(config.selection.target)


def select_mixtures(config, families) -> dict:
  """Per family fitted on the training runs: the training and test mixture it ranks first (its
  measured loss, rank among the measured runs and regret against the best); for
  `selection.families`, the mixture `ksurrogate.mixtures.select` picks by the RegMix recipe and by
  exponentiated-gradient descent (where the surrogate is differentiable), with its predicted
  loss and posterior variance."""
  data = load(config)
  obj = _objective(config, data["targets"])
  w = np.full(len(data["targets"]), 1.0 / len(data["targets"])) if obj is None else np.eye(len(data["targets"]))[obj]
  measured = {"train": (data["X"], data["Y"] @ w), "test": (data["X_test"], data["Y_test"] @ w)}
  best = {split: int(np.argmin(loss)) for split, (_, loss) in measured.items()}
  out = {"target": config.selection.target, "best_measured": {
      split: {"row": best[split], "loss": float(measured[split][1][best[split]]),
              "mixture": measured[split][0][best[split]].round(4).tolist()} for split in measured},
      "ranked_first": {}, "selected": {}, "skipped": {}}
  s = config.selection
  for fam in families(config, NAME):
    surr, _ = fit_one(fam, data["X"], data["Y"], out["skipped"])
    if surr is None:
      continue
    row = {}
    for split, (X, loss) in measured.items():
      pred = np.asarray(surr.predict(X)) @ w
      first = int(np.argmin(pred))
      row[split] = {"row": first, "predicted": float(pred[first]), "measured": float(loss[first]),
                    "rank": int(np.sum(loss < loss[first])) + 1, "regret": float(loss[first] - loss.min())}
    out["ranked_first"][fam.name] = row
    if fam.name not in s.families:
      continue
    for method in mixtures.METHODS:
      if method == "gradient" and not hasattr(surr, "apply"):
        continue
      sel = mixtures.select(surr, method=method, objective=obj, prior=data["X"], key=jax.random.key(config.seed),
                            num_samples=s.num_samples, top_k=s.top_k, num_starts=s.num_starts, steps=s.steps,
                            learning_rate=s.learning_rate)
      near = np.abs(np.r_[data["X"], data["X_test"]] - sel.mixture).sum(1)
      out["selected"][f"{fam.name}/{method}"] = {
          "mixture": np.round(sel.mixture, 4).tolist(), "predicted": sel.objective, "variance": sel.variance,
          "predicted_at_best_measured": float(np.asarray(surr.predict(measured["test"][0][best["test"]][None]))[0] @ w),
          "nearest_run_l1": float(near.min()), "best_sampled": sel.info["best_sampled_objective"]}
  return out


def active_selection(config, families) -> dict:
  """Training runs chosen from the num_fit pool by the `kernel` family's posterior variance
  (`ks.suggest_subsets` on the pool), `active.batch` at a time from `active.initial` random ones,
  against random order from the same start: the test Spearman at every size, per seed, and the
  runs each needs to reach the full pool's Spearman (within `active.tolerance`)."""
  data = load(config)
  n, a = config.design.num_fit, config.active
  # The `kernel` family whether or not surrogates.families names it (its settings come from the config).
  (kernel,) = [f for f in regmix_config.families(config, NAME, chosen_only=False) if f.name == "kernel"]
  Yt = data["Y_test"]
  sizes = list(range(a.initial, n, a.batch)) + [n]
  curves = {"active": [], "random": []}
  skipped = {}
  for seed in range(a.seeds):
    rng = np.random.default_rng([config.seed, 7, seed])
    start = rng.choice(n, a.initial, replace=False)
    order = np.r_[start, rng.permutation(np.setdiff1d(np.arange(n), start))]
    for strategy in curves:
      chosen, curve = list(start), []
      for size in sizes:
        rows = np.asarray(chosen[:size] if strategy == "active" else order[:size])
        surr, _ = fit_one(kernel, data["X"][rows], data["Y"][rows], skipped)
        curve.append(float(metrics.lds(np.asarray(surr.predict(data["X_test"])), Yt)))
        if strategy == "active" and size < n:
          pool = np.setdiff1d(np.arange(n), rows)
          k = min(sizes[sizes.index(size) + 1] - size, len(pool))
          _, _, idx = attribution.suggest_subsets(surr, None, k, candidates=data["X"][pool], return_index=True)
          chosen += pool[idx].tolist()
      curves[strategy].append(curve)
  full = curves["random"][0][-1]
  need = {s: [scores.reach(sizes, c, full, a.tolerance) for c in curves[s]] for s in curves}
  out = {"sizes": sizes, "curves": curves, "full_pool_spearman": full, "tolerance": a.tolerance, "runs_needed": need,
         "skipped": skipped}
  for s in curves:
    iv = intervals.replicate_interval(need[s])
    out[f"runs_needed_{s}"] = scores.entries("runs", iv)
  diff = intervals.replicate_interval(np.asarray(need["active"]) - np.asarray(need["random"]))
  out["runs_needed_active_minus_random"] = {**scores.entries("runs", diff), "verdict": diff.verdict(False)}
  half = sizes.index(min(sizes, key=lambda s: abs(s - n // 2)))
  out["spearman_at_half"] = {"runs": sizes[half], **{s: scores.entries(
      "spearman", intervals.replicate_interval([c[half] for c in curves[s]])) for s in curves}}
  return out


def problems(config, run, families):
  """One Problem: the training runs used and the test runs, the released split declared.

  Everything runs with OpenBLAS limited to `blas_threads` (threadpoolctl), the driver's scoring
  too: the limit holds while this generator waits at its `yield`, and is lifted when it ends. On
  a machine whose cores are shared, OpenBLAS's spinning threads made float64 eigh of 170-512
  rows 5-30x slower (BUILD_NOTES.md)."""
  from threadpoolctl import threadpool_limits
  with threadpool_limits(limits=config.blas_threads, user_api="blas"):
    yield from _problems(config, run, families)


def _problems(config, run, families):
  data = load(config)
  common.require_varying(data["Y"], 0.0, config.min_varying_targets, phase=NAME, threshold_field=None)
  curve = run.phase("learning_curve", learning_curve, config, families)
  selection = run.phase("mixture_selection", select_mixtures, config, families)
  active = run.phase("active_selection", active_selection, config, families)
  print(console.summary(curve, selection, active), flush=True)
  n = len(data["X"])
  S = np.concatenate([data["X"], data["X_test"]])
  F = np.concatenate([data["Y"], data["Y_test"]])
  yield driver.Problem(
      name=NAME, S=S, F=F, splits=[(np.arange(n), np.arange(n, len(S)))], task_labels=data["domains"],
      outcome_name="validation loss", task_noun="domain",
      info={"learning_curve": curve, "mixture_selection": selection, "active_selection": active},
      figures={"learning_curve": lambda res, path: figures.learning_curve(path, curve),
               "active_selection": lambda res, path: figures.active(path, active),
               "selected_mixtures": lambda res, path: figures.mixtures(path, selection, data["domains"])})
