"""The regime study (`--config=study`): where along the inclusion rate p and the exact budget m
the kernel surrogate beats the linear one and influence functions.

Every cell is one driver problem `p<rate>_m<m>`: kernel / linear surrogates fitted on the first m
retrains of a pool of distinct Bernoulli(rate) subsets, scored on the pool's last
`study.num_heldout` retrains and against the multi-seed leave-one-out ground truth (and its
ceiling) shared by every cell. Cells: each rate in `study.rates` at m = `study.other_budget`, and
each m in `study.budgets` at rate `study.budget_rate`. The m = other_budget cells also fit on
`study.num_estimated` estimated outcomes of the same rate. Beside the cells:
  * exact pairwise interactions F(1) - F(1 - e_i) - F(1 - e_j) + F(1 - e_i - e_j) for
    `study.num_pairs` seeded pairs, over the ground truth's training seeds, against the kernel
    surrogates' predicted interactions;
  * the linear surrogate's bias against Proposition 3.1 of the paper: with diag H = 0 for a set
    function, beta(p) ~ grad F(1) + (p - 1) H 1, so its LOO readout's distance from the true LOO
    should shrink like (1 - p) as p -> 1;
  * pool-based active sampling at the budget rate: from `study.active_base` random pool subsets,
    `study.active_more` more chosen by `suggest_subsets` among the remaining pool vs as many at
    random, over `study.active_seeds` draws (no retrain beyond the pool).
Nothing is chosen on the ground truth or the held-out retrains: pairs are seeded, the estimator's
ridge is calibrated on fit rows.
"""
from __future__ import annotations

import dataclasses
import functools
import time

import flax.struct
import jax
import numpy as np

import ksurrogate as ks
from ksurrogate_experiments.modular import config as config_lib
from ksurrogate_experiments.modular import phases
from ksurrogate_experiments.modular import regime
from ksurrogate import estimators
from ksurrogate import families as families_lib
from ksurrogate import metrics
from ksurrogate.harness import driver, report, runs


@dataclasses.dataclass(frozen=True)
class StudyDesign:
  rates: tuple
  pools: tuple          # per rate: distinct Bernoulli(rate) subsets [n, K], neither empty nor full
  S_est: tuple          # per rate: [num_estimated, K] Bernoulli(rate) subsets to estimate
  pairs: np.ndarray     # [num_pairs, 2] task pairs whose exact interaction is measured
  K: int

  @property
  def S_pairs(self) -> np.ndarray:
    return ks.subsets.without_pairs(self.K, self.pairs)


def cells(c) -> list[tuple[float, int]]:
  st = c.study
  out = {(float(r), int(st.other_budget)) for r in st.rates} | {(float(st.budget_rate), int(m)) for m in st.budgets}
  return sorted(out)


def cell_name(rate: float, m: int) -> str:
  return f"p{rate:g}_m{m}"


def pool_size(c, rate: float) -> int:
  st = c.study
  ms = [m for r, m in cells(c) if r == rate]
  if rate == st.budget_rate:
    ms.append(st.active_base + 2 * st.active_more)   # active sampling needs room for both arms
  return max(ms) + st.num_heldout


def study_design(c, s: phases.Setup) -> StudyDesign:
  K, st = s.K, c.study
  rates = tuple(float(r) for r in st.rates)
  pools = tuple(ks.subsets.distinct_bernoulli(jax.random.key(c.seed + 20 + i), pool_size(c, r), K, r, full=False)
                for i, r in enumerate(rates))
  S_est = tuple(np.asarray(ks.subsets.bernoulli(jax.random.key(c.seed + 40 + i), st.num_estimated, K, r))
                for i, r in enumerate(rates))
  rng = np.random.default_rng(c.seed + 60)
  all_pairs = np.array([(i, j) for i in range(K) for j in range(i + 1, K)])
  pairs = all_pairs[np.sort(rng.choice(len(all_pairs), min(st.num_pairs, len(all_pairs)), replace=False))]
  return StudyDesign(rates, pools, S_est, pairs, K)


@runs.stored("modular.study_estimates")
@flax.struct.dataclass
class StudyEstimates:
  F: tuple              # per rate: [num_estimated, T] estimated outcomes
  ridges: np.ndarray    # per rate: the ridge, calibrated by LDS on the rate's first fit rows
  seconds: np.ndarray   # per rate: estimator wall time


def estimate_pools(c, s: phases.Setup, sd: StudyDesign, fs: phases.FeatureSet, pools: list,
                   tg: phases.Targets) -> StudyEstimates:
  """Estimated outcomes of every rate's S_est; each rate's ridge is the best LDS against the exact
  retrains of the rows every cell of that rate fits on (never held-out rows or LOO)."""
  keep = tg.keep
  # the study estimates retrains from scratch, calibrated against them: the ridge minimizer, not a
  # replay of the fine-tuning from theta0 ("replay" falls back to onestep here)
  est = config_lib.estimator(c, solver="newton" if c.estimate.solver == "newton" else "onestep")
  # params0 is unread beside stored features; their shapes alone give the classes the labels are checked against
  shapes = jax.eval_shape(s.init_fn, s.init_key)
  data = estimators.Data.classifier(s.apply_fn, shapes, s.train_data, s.d.task_train, (s.X_val, s.y_val),
                                    output=fs.output, num_tasks=sd.K)
  state = est.prepare(data, features=(fs.train, fs.target))
  Fs, ridges, seconds = [], [], []
  for rate, S_pool, S_est, pool in zip(sd.rates, sd.pools, sd.S_est, pools):
    n_fit = min(m for r, m in cells(c) if r == rate)
    at_rate = est.calibrated(state, S_pool[:n_fit], pool["F"][:n_fit][:, keep], criterion="lds", targets=keep)
    t0 = time.perf_counter()
    Fs.append(est.estimate(at_rate, S_est)[0])
    seconds.append(time.perf_counter() - t0)
    ridges.append(at_rate.ridge)
  return StudyEstimates(F=tuple(Fs), ridges=np.asarray(ridges), seconds=np.asarray(seconds))


def interactions_exact(truths: list, pairs_out: list, sd: StudyDesign, keep) -> np.ndarray:
  """[seeds, num_pairs, T]: F_r(1) - F_r(1 - e_i) - F_r(1 - e_j) + F_r(1 - e_i - e_j), kept targets."""
  K = sd.K
  rows = []
  for t, pr in zip(truths, pairs_out):
    F_loo, F_full = t["F"][:K], t["F"][K]
    i, j = sd.pairs[:, 0], sd.pairs[:, 1]
    rows.append((F_full[None] - F_loo[i] - F_loo[j] + pr["F"])[:, keep])
  return np.stack(rows)


def active_sampling(c, sd: StudyDesign, pool: dict, loo_true, keep, families) -> dict:
  """Pool-based active sampling at the budget rate, over study.active_seeds draws: the first
  family whose surrogate declares a posterior variance (the MSE-CV kernel) on base + suggested vs
  base + random, scored on the pool's held-out rows and the LOO truth."""
  st = c.study
  family = next(f for f in families(c, "active_sampling") if not f.baseline)
  S, F = sd.pools[sd.rates.index(float(st.budget_rate))], pool["F"][:, keep]
  n = len(S) - st.num_heldout
  held = np.arange(n, len(S))
  rows = {"random": [], "suggested": []}
  for a in range(st.active_seeds):
    rng = np.random.default_rng(c.seed + 80 + a)
    order = rng.permutation(n)
    base, rest = order[:st.active_base], order[st.active_base:]
    (kern,) = families_lib.fit_all([family], {"base": (S[base], F[base])}).values()
    if "variance" not in families_lib.readouts(kern):
      raise ValueError(f"surrogates.families: active sampling needs a kernel family with a posterior variance; "
                       f"{family.name!r} declares {families_lib.readouts(kern)}")
    picked, _ = ks.suggest_subsets(kern, None, st.active_more, candidates=S[rest])
    index = {r.tobytes(): i for i, r in zip(rest, S[rest])}
    chosen = {"random": rest[:st.active_more],
              "suggested": np.array([index[r.tobytes()] for r in np.asarray(picked).astype(S.dtype)])}
    for arm, more in chosen.items():
      rows_ = np.concatenate([base, more])
      (g,) = families_lib.fit_all([family], {arm: (S[rows_], F[rows_])}).values()
      loo = np.asarray(ks.predicted_loo(g))
      why = {}   # an undefined score (metrics.Undefined) is left out of the means, counted below
      lds = metrics.attempt(why, "lds", metrics.lds, np.asarray(g.predict(S[held])), F[held])
      corr = metrics.attempt(why, "loo", metrics.loo_correlation, loo, loo_true) or {}
      rows[arm].append({"lds": lds, **{f"loo_{k}": corr.get(k) for k in driver.CORRELATIONS}})
  out = {}
  for arm, rs in rows.items():
    for k in rs[0]:
      vals = [r[k] for r in rs if r[k] is not None]
      out.setdefault(arm, {})[k] = float(np.mean(vals)) if vals else None
      out[arm][f"{k}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
      out[arm][f"{k}_per_seed"] = [None if r[k] is None else float(r[k]) for r in rs]
  out["setting"] = {"family": family.name, "rate": float(st.budget_rate), "base": int(st.active_base),
                    "more": int(st.active_more), "candidates": int(n - st.active_base), "seeds": int(st.active_seeds),
                    "heldout": int(st.num_heldout)}
  return out


def problems(config, run: runs.Run, families):
  """One driver Problem per cell, after one `driver.Across` entry with the study-wide readouts."""
  c, st = config, config.study
  s = run.phase("setup", phases.setup, c, store=False)
  dsg = run.phase("design", phases.design, c, s, store=False)
  sd = run.phase("study_design", study_design, c, s, store=False)
  th = run.phase("theta0", phases.theta0, c, s)
  cs = c.design.chunk_size
  truths = phases.truth_retrains(c, run, s, dsg)
  pools = [run.outcomes(f"pool_p{r:g}", phases.retrain_chunk, c, S, s, chunk_size=cs) for r, S in zip(sd.rates, sd.pools)]
  budget_pool = pools[sd.rates.index(float(st.budget_rate))]
  # stops here when too few targets vary across the budget rate's pool
  tg = run.phase("targets", phases.targets, c, s, th, budget_pool, dsg, f"pool_p{float(st.budget_rate):g}", store=False)
  pairs_out = [run.outcomes(f"pairs_seed{r}", functools.partial(phases.retrain_chunk, train_seed=r), c, sd.S_pairs, s,
                            chunk_size=cs) for r in range(c.truth.seeds)]
  fs = run.phase("features", phases.featurize, c, s, th)
  est = run.phase("study_estimate", estimate_pools, c, s, sd, fs, pools, tg)
  predictions = dict(run.phase("baselines", phases.run_baselines, c, s, th, fs, tg))
  influence_solve = predictions.pop("influence_solve", None)   # the damping influence's CG converged at
  keep, K = tg.keep, sd.K
  effects = phases.loo_effects(truths, K)[:, :, keep]
  loo_true = effects.mean(0)
  inter = interactions_exact(truths, pairs_out, sd, keep)
  active = run.phase("active_sampling", active_sampling, c, sd, budget_pool, loo_true, keep, families)
  losses, unconverged = phases.retrain_losses(c, run, truths + pools + pairs_out)
  yield driver.Across(info={
      "influence_solve": influence_solve,
      "study": {"interactions_exact": {"pairs": sd.pairs.tolist(),
                                       "mean_target": inter.mean(2).mean(0).tolist(),
                                       "mean_target_se": (inter.mean(2).std(0, ddof=1) / np.sqrt(len(inter))).tolist()
                                       if len(inter) > 1 else [],
                                       "per_target_abs_mean": np.abs(inter.mean(0)).mean(1).tolist()},
                "active_sampling": active,
                "estimator_ridges": {f"{r:g}": float(x) for r, x in zip(sd.rates, est.ridges)},
                "estimator_seconds": {f"{r:g}": float(x) for r, x in zip(sd.rates, est.seconds)},
                "retrains": {"total": int(len(losses)), "unconverged": unconverged, "max_final_train_loss": float(losses.max())},
                "ground_truth": {"training_seeds": int(len(effects)), "loo_effect_sd": float(loo_true.std()),
                                 "seed_noise_sd": float(effects.std(0, ddof=1).mean()) if len(effects) > 1 else float("nan")}},
  })
  for rate, m in cells(c):
    i = sd.rates.index(rate)
    S_pool, F_pool = sd.pools[i], pools[i]["F"][:, keep]
    n, h = len(S_pool), st.num_heldout
    rows = np.r_[0:m, n - h:n]
    sources = {"estimated": (sd.S_est[i], est.F[i][:, keep])} if m == st.other_budget else {}
    yield driver.Problem(
        name=cell_name(rate, m), S=S_pool[rows], F=F_pool[rows], splits=[(np.arange(m), np.arange(m, m + h))],
        truths={"loo": driver.Truth(effects, predictions=predictions)}, sources=sources,
        estimates_of={"estimated": "exact"} if sources else {},
        info={"cell": {"rate": rate, "budget": int(m), "heldout": int(h)},
              # the cell's fit retrains (Bernoulli(rate) subsets, not the released 22-of-25 design)
              "outcomes": regime.summary(pools[i]["F"][:m], c.data.op)},
        outcome_name="validation loss", task_labels=phases.task_labels(K))


# method -> line style; kernel and linear lines often coincide, so they differ in marker and dash
PLOTTED = {"kernel_exact": dict(marker="o", ls="-"), "linear_exact": dict(marker="s", ls="--", mfc="none"),
           "kernel_official_exact": dict(marker="D", ls="-.", ms=4), "influence": dict(marker="^", ls=":"),
           "kernel_estimated": dict(marker="o", ls="-", alpha=0.6),
           "linear_estimated": dict(marker="s", ls="--", mfc="none", alpha=0.6)}


def across(config, results: dict, shared: dict):
  """The study's cross-cell readouts from the evaluated cells (in memory): the linear surrogate's
  bias against Proposition 3.1 and predicted vs exact interactions; and its figure (LOO
  correlation against p and against m, with 95 % intervals)."""
  c, st = config, config.study
  if not st.enabled:
    return {}, {}
  by_rate = [(r, cell_name(r, st.other_budget)) for r in sorted({float(x) for x in st.rates})]
  by_m = [(m, cell_name(float(st.budget_rate), m)) for m in sorted({int(x) for x in st.budgets})]
  # Proposition 3.1: distance of each surrogate's LOO readout from the truth, by rate.
  prop = {}
  for rate, name in by_rate:
    arrays = results[name].arrays
    truth = arrays["loo_true"]
    scale = float(np.sqrt(np.mean(truth ** 2)))
    prop[f"{rate:g}"] = {m: float(np.sqrt(np.mean((arrays[f"{m}/predicted_loo"] - truth) ** 2)) / scale)
                         for m in ("linear_exact", "kernel_exact") if f"{m}/predicted_loo" in arrays}
    prop[f"{rate:g}"]["one_minus_p"] = 1.0 - rate
  # Exact interactions of the measured pairs against each cell's kernel surrogate.
  exact = shared["study"]["interactions_exact"]
  pairs = np.asarray(exact["pairs"])
  predicted = {}
  for rate, m in cells(c):
    arrays = results[cell_name(rate, m)].arrays
    if "kernel_exact/interactions" in arrays:
      inter = arrays["kernel_exact/interactions"][pairs[:, 0], pairs[:, 1]]   # [pairs, T]
      predicted[cell_name(rate, m)] = inter.mean(1).tolist()
  entries = {"study_across": {"linear_bias_relative_rms": prop, "interactions_kernel_mean_target": predicted,
                              "interactions_exact_mean_target": exact["mean_target"],
                              "interactions_exact_se": exact["mean_target_se"], "pairs": pairs.tolist()}}
  return entries, {"study": functools.partial(draw_study, config, results, by_rate, by_m)}


def draw_study(config, results: dict, by_rate, by_m, path) -> None:
  """LOO correlation of each method against p and against m, 95 % intervals as error bars, the
  ceiling with its interval as a band."""
  c, st = config, config.study
  ceiling = results[by_rate[0][1]].ceiling
  fig, axes = report.subplots(2, 2, figsize=(10, 7.5), sharey="row")
  for row, (key, what) in enumerate((("loo_pearson", "LOO Pearson per target"),
                                     ("loo_pearson_mean_target", "LOO Pearson, mean target"))):
    for col, (xs, xlabel) in enumerate(((by_rate, f"inclusion rate p (m = {st.other_budget} exact subsets)"),
                                         (by_m, f"exact subsets m (p = {st.budget_rate:g})"))):
      ax = axes[row, col]
      for method, style in PLOTTED.items():
        pts = [(x, results[name].scores[method]) for x, name in xs
               if results.get(name) and results[name].scores.get(method, {}).get(key) is not None]
        if pts:   # absent scores are left out
          x = np.array([p[0] for p in pts], np.float64)
          y = np.array([p[1][key] for p in pts])
          ci = np.array([p[1].get(f"{key}_ci95") or [p[1][key]] * 2 for p in pts], np.float64)
          ax.errorbar(x, y, yerr=np.abs(ci.T - y), capsize=2, label=method, **style)
      ax.set_xticks([x for x, _ in xs])
      top, band = ceiling.get(key), ceiling.get(f"{key}_ci95")
      if top is not None:
        ax.axhline(top, color="grey", lw=1.0, ls="--", label="ceiling (seed split-half)")
        if band:
          ax.axhspan(*band, color="grey", alpha=0.15)
      ax.set_title(f"ceiling {top:.3f}" if top is not None else "ceiling not measurable (reliability <= 0)", fontsize=9)
      ax.set_xlabel(xlabel)
      ax.set_ylabel(what)
      ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=7)
  fig.suptitle(f"Where the kernel surrogate pays off: p={c.data.p} {c.data.op}, {c.truth.seeds}-seed LOO truth "
               "(bars: 95 % intervals over targets and seeds)")
  report.save(fig, path)
