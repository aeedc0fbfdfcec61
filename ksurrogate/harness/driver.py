"""The shared attribution driver: every experiment hands it a Protocol and nothing else.

A run goes one way, in separate steps:
  1. `evaluate` (per Problem the protocol yields): every surrogate family is fitted on every outcome
     source the problem has and scored, with intervals, in memory (a `Result`): LDS and normalized
     error over `eval.resplits` seeded random fit/held-out re-splits of the problem's exact
     subsets (the sizes of its declared split; `metrics.resplit_interval`), and on the declared
     split itself; leave-one-out (or any other effect) correlations against every ground truth,
     with a bootstrap over targets and over the truth's repeats (`metrics.bootstrap_loo`); the
     truth's ceiling with its interval, reliability and the repeats it would need
     (`metrics.ceiling_interval`, `seeds_for_reliability`); paired differences between methods with
     their verdicts (`Interval.verdict`).
  2. `summarize`: one summary dict from every Result (and the protocol's cross-problem readouts,
     which take the Results themselves).
  3. `write`: DIR/<problem>/arrays.npz, then DIR/summary.json listing them.
  4. `draw`: the figures, after the summary exists (a plotting failure never costs the summary);
     the summary is written again listing them. At every moment the summary on disk lists only
     files that exist.

Exact-outcome families are refitted on every re-split; families fitted on another outcome source
(estimated outcomes, real fine-tunes of other subsets) do not depend on the split and are fitted
once, then scored on every re-split's held-out exact rows. Readouts (predicted effects,
interactions, the other test sets) come from one fit on the problem's declared fit rows (its first
declared split's fit rows; never its held-out rows).

Summary schema (the same whatever the number of problems):
  experiment, config, timing [{phase, seconds, seconds_compile, status}], files {what: path},
  datasets.<problem>.<method>.{lds, lds_se, lds_ci95, normalized_error(_se, _ci95), lds_declared,
      normalized_error_declared, <truth>_<corr>(_se, _ci95, _of_ceiling), lds_<test>, seconds, ...}
      (<corr>: pearson, spearman, pearson_mean_target, spearman_mean_target; a metric undefined on
      the data is null, and listed in `skipped`),
  comparisons.<problem>.<a>-<b>.{<metric>, <metric>_se, <metric>_ci95, <metric>_verdict},
  ceiling.<problem>.<truth>_<corr>(_se, _ci95), reliability.<problem>.<truth>_<corr>,
  seeds_for_reliability.<problem>.<truth>_<corr> (repeats for a reliability of 0.8),
  ceiling_unreliable.<problem>.<truth>_<corr> = [methods scoring above the ceiling's upper bound],
  evaluation {resplits, bootstrap, declared splits ...},
  skipped [{dataset, metric, methods, reason}],
  <info key>.<problem> = whatever the problem's `info` holds under that key,
  <key> = the study-wide entries a protocol yields as `Across` or returns from `across`.
"""
from __future__ import annotations

import dataclasses
import pathlib
import time
import warnings
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from ksurrogate import attribution
from ksurrogate import families as families_lib
from ksurrogate import inputs
from ksurrogate import metrics
from ksurrogate import subsets
from ksurrogate.harness import provenance
from ksurrogate.harness import report
from ksurrogate.harness import runs
from ksurrogate.harness import store

CORRELATIONS = ("pearson", "spearman", "pearson_mean_target", "spearman_mean_target")
RESPLIT_METRICS = ("lds", "normalized_error")
HIGHER_IS_BETTER = {"lds": True, "normalized_error": False}   # correlations: higher is better
RELIABILITY_TARGET = 0.8


class Unmeasurable(ValueError):
  """A protocol's design cannot measure anything (e.g. too few targets' outcomes vary after its
  first exact outcomes): raised by `problems` right after that phase, it stops the run with its
  one line (which names the field to change) instead of computing the rest."""


@dataclasses.dataclass(frozen=True)
class Truth:
  """A ground truth of per-task effects, [K, T], or its repeats [R, K, T] (training seeds, swap
  pairs: the truth is their mean, their split-half reliability gives its ceiling).

  readout: a fitted surrogate -> its prediction of these effects [K, T]; None: the predicted
  leave-one-out effect g(1 - e_k) - g(1) (surrogates that declare the "loo" readout).
  predictions: methods that are not surrogates (influence functions, TracIn, an estimator's own
  effects): {name: [K, T]}, scored against this truth beside the surrogates.
  """
  effects: np.ndarray
  readout: Optional[Callable] = None
  predictions: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

  @property
  def repeats(self) -> np.ndarray:
    E = np.asarray(self.effects, np.float64)
    return E if E.ndim == 3 else E[None]

  @property
  def mean(self) -> np.ndarray:
    return self.repeats.mean(0)


@dataclasses.dataclass(frozen=True)
class Problem:
  """Outcomes F [m, T] of m exact subsets S [m, K], and what to score surrogates against.

  `splits`: the declared [(fit_rows, heldout_rows)] (the experiment's own protocol); the driver
  also draws random re-splits of the same rows with the sizes of the first one. `truths`: ground
  truths by name; summary keys are `<name>_<corr>` ("loo" gives `loo_pearson`, ...). `sources`:
  further outcome sources {name: (S, F)} every family also fits (estimated outcomes, real
  fine-tunes of other subsets), scored on the exact held-out rows; `estimates_of` names, for an
  estimated source, the real source it stands in for (paired as estimated - real). `other_tests`:
  further held-out sets {name: (S, F)}, scored as `lds_<name>` and `normalized_error_<name>` by the
  readout fit. `W`: sample-level indicators of the rows of S (families whose view is "sample").
  `figures`: the experiment's own figures {what: draw(result, path)}, drawn after the summary.
  `info` goes into the summary as `<key>.<problem name>`. `task_noun` names a task in the plots;
  `higher_is_better` says what an outcome means (a loss: False).
  """
  name: str
  S: np.ndarray
  F: np.ndarray
  splits: Sequence[tuple[np.ndarray, np.ndarray]]
  W: Optional[np.ndarray] = None
  truths: Mapping[str, Truth] = dataclasses.field(default_factory=dict)
  sources: Mapping[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
  estimates_of: Mapping[str, str] = dataclasses.field(default_factory=dict)
  other_tests: Mapping[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
  info: Mapping = dataclasses.field(default_factory=dict)
  figures: Mapping[str, Callable] = dataclasses.field(default_factory=dict)
  higher_is_better: bool = False
  outcome_name: str = "target loss"
  task_labels: Optional[Sequence[str]] = None
  normalized_error_threshold: Optional[float] = None   # this problem's own target-variance cut (else the config's)
  task_noun: str = "task"


@dataclasses.dataclass(frozen=True)
class Across:
  """Summary entries that belong to no single problem (a study's shared readouts), yielded by
  `problems` beside the Problems: `info` goes to the summary's top level, `figures` {what:
  draw(path)} are drawn with the others."""
  info: Mapping
  figures: Mapping[str, Callable] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Result:
  """One evaluated problem, in memory: scores {method: {metric: value}}, paired comparisons
  {"a-b": {metric: value}}, ceilings {<truth>_<corr>: value}, arrays {name: array} and the metrics
  that could not be computed."""
  problem: Problem
  scores: dict
  comparisons: dict
  ceiling: dict
  reliability: dict
  seeds_needed: dict
  unreliable: dict
  arrays: dict
  skipped: list
  resplits: int = 0


def standard_comparisons(problem: Problem, families: Sequence[families_lib.Family], methods: Sequence[str]):
  """The pairs every experiment reports, as the families declare them: on each outcome source, each
  non-baseline family against each baseline one (`families.comparison_pairs`); the first
  non-baseline family on exact outcomes against every method that is not a surrogate (influence
  functions, ...); each family on an estimated source against the same family on the real source
  it stands in for."""
  names = set(methods)
  pairs = []
  for source in ("exact", *problem.sources):
    pairs += [(f"{a}_{source}", f"{b}_{source}") for a, b in families_lib.comparison_pairs(families)]
  lead = next((f"{f.name}_exact" for f in families if not f.baseline), None)
  for truth in problem.truths.values():
    pairs += [(lead, p) for p in truth.predictions if lead]
  for est, real in problem.estimates_of.items():
    pairs += [(f"{f.name}_{est}", f"{f.name}_{real}") for f in families]
  return [p for p in dict.fromkeys(pairs) if p[0] in names and p[1] in names]


@dataclasses.dataclass(frozen=True)
class Protocol:
  """What an experiment hands the driver.

  problems(config, run, families) yields Problems (and, optionally, `Across` entries); `run` is the
  `runs.Run` to store phases in; `families` is the protocol's own `families`, for phases that
  select with surrogates (they call it with their config view, so the surrogate settings key
  the phase, and fit through `ksurrogate.families.fit_all`).
  families(config, problem_name) -> the surrogate families compared on that problem.
  comparisons(problem, families, methods) -> the (a, b) pairs reported as a - b.
  across(config, results, shared) -> ({summary key: value}, {what: draw(path)}): readouts over
  every problem, from the in-memory Results (and the `Across` entries' info, `shared`).
  """
  name: str
  problems: Callable[..., Iterable]
  families: Callable[[object, str], Sequence[families_lib.Family]]
  comparisons: Callable = standard_comparisons
  plot_method: str = "kernel_exact"                   # whose readouts are plotted
  across: Optional[Callable] = None


# ----------------------------------------------------------------------------------------------
# 1. Evaluate.

def resplits(problem: Problem, count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """`count` seeded random (fit, held-out) re-splits of the rows in the problem's declared splits,
  with the sizes of its first declared split."""
  fit0, test0 = problem.splits[0]
  rows = np.unique(np.concatenate([np.concatenate([np.asarray(a), np.asarray(b)]) for a, b in problem.splits]))
  n_fit, n_test = len(fit0), len(test0)
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    perm = rng.permutation(rows)
    out.append((np.sort(perm[:n_fit]), np.sort(perm[n_fit:n_fit + n_test])))
  return out


def _view(problem: Problem, family: families_lib.Family):
  return problem.W if family.view == "sample" and problem.W is not None else problem.S


def _held_scores(pred, true, threshold, why: dict, suffix: str = "") -> dict:
  return {f"lds{suffix}": metrics.attempt(why, f"lds{suffix}", metrics.lds, pred, true),
          f"normalized_error{suffix}": metrics.attempt(why, f"normalized_error{suffix}", metrics.normalized_error,
                                                       pred, true, threshold=threshold)}


def _fit(family, X, F, why: dict):
  """(surrogate or None, seconds, duplicates averaged); a fit refusing its data leaves its reason."""
  t0 = time.perf_counter()
  Xd, Fd = subsets.deduplicate(X, F, warn=False)
  try:
    fitted = family(Xd, Fd)
  except ValueError as e:   # a family that cannot be fitted to this problem is reported, not fatal
    why.setdefault("fit", str(e).splitlines()[0])
    return None, 0.0, 0
  return fitted, time.perf_counter() - t0, len(X) - len(Xd)


def _interval_entries(key: str, values: np.ndarray, test_fraction: float) -> dict:
  iv = metrics.resplit_interval(values, test_fraction=test_fraction)
  finite = np.isfinite(np.asarray(values, np.float64))
  mean = float(np.mean(np.asarray(values)[finite])) if finite.any() else None
  if not finite.any():
    return {key: None, f"{key}_se": None, f"{key}_ci95": None}
  se = None if not np.isfinite(iv.se) else iv.se
  return {key: mean, f"{key}_se": se, f"{key}_ci95": None if se is None else [iv.lo, iv.hi]}


def _resplit_scores(problem, family, source, resplit_list, threshold, test_fraction, why):
  """(scores, per-split values {metric: [R]}, readout surrogate, declared-split predictions)."""
  X = _view(problem, family)
  per = {k: [] for k in RESPLIT_METRICS}
  declared = {k: [] for k in RESPLIT_METRICS}
  seconds, fits = 0.0, 0
  split_why = []
  readout, first_pred, dupes = None, None, 0
  once = None
  if source != "exact":
    S_src, F_src = problem.sources[source]
    once, seconds, dupes = _fit(family, np.asarray(S_src), np.asarray(F_src), why)
    fits = 1
    if once is None:
      return None, None, None, None
  for i, (fit_rows, test_rows) in enumerate(list(problem.splits) + list(resplit_list)):
    fitted = once
    if fitted is None:
      fitted, sec, d = _fit(family, X[fit_rows], problem.F[fit_rows], why)
      if fitted is None:
        return None, None, None, None
      seconds, fits = seconds + sec, fits + 1
      dupes = d if i == 0 else dupes
    pred = np.asarray(fitted.predict(X[test_rows]))
    w = {}
    row = _held_scores(pred, problem.F[test_rows], threshold, w)
    is_declared = i < len(problem.splits)
    split_why.append((is_declared, w))
    for k in RESPLIT_METRICS:
      (declared if is_declared else per)[k].append(np.nan if row[k] is None else row[k])
    if i == 0:
      readout, first_pred = fitted, pred
  scores = {}
  for k in RESPLIT_METRICS:
    if resplit_list:
      scores.update(_interval_entries(k, np.asarray(per[k]), test_fraction))
    dec = [v for v in declared[k] if np.isfinite(v)]
    scores[f"{k}_declared"] = float(np.mean(dec)) if dec else None
    if not resplit_list:
      scores[k] = scores[f"{k}_declared"]
    for key, on_declared, what in ((f"{k}_declared" if resplit_list else k, True, "declared splits"),
                                   (k, False, "re-splits")):
      reasons = [w[k] for d, w in split_why if d == on_declared and k in w]
      total = sum(d == on_declared for d, _ in split_why)
      if reasons:
        note = "" if len(reasons) == total else f" (on {len(reasons)} of {total} {what}; the value averages the others)"
        why[key] = reasons[0] + note
  scores["seconds"] = seconds / max(fits, 1)
  scores["duplicates_averaged"] = float(dupes)
  return scores, {k: np.asarray(v) for k, v in per.items()}, readout, first_pred


def _correlation_intervals(name: str, truth: Truth, preds: dict, pairs, num_bootstrap: int, seed: int,
                           skipped_by_method: dict) -> tuple[dict, dict]:
  """({method: {<truth>_<corr>(_se, _ci95)}}, {"a-b": {...}}): points by `metrics.loo_correlation`,
  intervals by `metrics.bootstrap_loo` over targets (and the truth's repeats, for pairs)."""
  mean = truth.mean
  out, defined = {}, {}
  for method, p in preds.items():
    why = {}
    point = metrics.attempt(why, "corr", metrics.loo_correlation, p, mean)
    row = {}
    for k in CORRELATIONS:
      row[f"{name}_{k}"] = None if point is None else point[k]
      if point is None:
        skipped_by_method.setdefault(method, {})[f"{name}_{k}"] = why["corr"]
    out[method] = row
    if point is not None:
      defined[method] = p
  pair_out = {}
  usable = [(a, b) for a, b in pairs if a in defined and b in defined]
  if defined and mean.shape[0] >= 3 and np.all(np.isfinite(truth.repeats)):
    boot = metrics.bootstrap_loo(defined, truth.repeats, pairs=usable, num_resamples=num_bootstrap, seed=seed)
    for method, ivs in boot["methods"].items():
      for k, iv in ivs.items():
        ok = np.isfinite(iv.se)
        out[method][f"{name}_{k}_se"] = float(iv.se) if ok else None
        out[method][f"{name}_{k}_ci95"] = [iv.lo, iv.hi] if ok else None
    for pair, ivs in boot["pairs"].items():
      for k, iv in ivs.items():
        pair_out.setdefault(pair, {}).update(_pair_entries(f"{name}_{k}", iv, True))
  elif defined:
    for method in defined:
      skipped_by_method.setdefault(method, {})[f"{name}_intervals"] = (
          f"{name}: intervals need at least 3 tasks and finite effects (K={mean.shape[0]})")
  return out, pair_out


ROUNDING = 1e-9   # paired differences this close to 0 on both bounds are float rounding: they tie


def _pair_entries(key: str, iv: metrics.Interval, higher_is_better: bool) -> dict:
  ok = np.isfinite(iv.mean)
  widened = dataclasses.replace(iv, lo=iv.lo - ROUNDING, hi=iv.hi + ROUNDING)
  return {key: float(iv.mean) if ok else None, f"{key}_se": float(iv.se) if np.isfinite(iv.se) else None,
          f"{key}_ci95": [iv.lo, iv.hi] if np.isfinite(iv.lo) else None,
          f"{key}_verdict": widened.verdict(higher_is_better)}


def _ceilings(name: str, truth: Truth, num_bootstrap: int, seed: int, why: dict):
  """Ceiling (with interval), reliability and repeats for a reliability of 0.8, of a truth with
  at least 2 repeats; ({}, {}, {}) otherwise."""
  E = truth.repeats
  if len(E) < 2 or E.shape[1] < 3:
    return {}, {}, {}
  if not np.all(np.isfinite(E)):
    why[name] = f"{name}: the truth's effects hold non-finite values"
    return {}, {}, {}
  ceil = metrics.ceiling_interval(E, num_resamples=num_bootstrap, seed=seed)
  _, reliability = metrics.split_half_ceiling(E)
  ceiling, rel, need = {}, {}, {}
  for k, iv in ceil.items():
    key = f"{name}_{k}"
    ok = np.isfinite(iv.mean)
    ceiling[key] = float(iv.mean) if ok else None
    ceiling[f"{key}_se"] = float(iv.se) if np.isfinite(iv.se) else None
    ceiling[f"{key}_ci95"] = [iv.lo, iv.hi] if np.isfinite(iv.lo) else None
    r = reliability[k]
    rel[key] = float(r) if np.isfinite(r) else None
    n = metrics.seeds_for_reliability(r, len(E), RELIABILITY_TARGET) if np.isfinite(r) else float("inf")
    need[key] = float(np.ceil(n)) if np.isfinite(n) else None   # None: not reachable (reliability <= 0)
    if not ok:
      why[key] = f"not measurable: the truth's split-half reliability over {len(E)} repeats is {r:.3g} (not positive)"
  rel["repeats"] = int(len(E))
  return ceiling, rel, need


def _score_families(problem: Problem, families, split_list, threshold: float, test_fraction: float):
  """Every family fitted on every outcome source and scored on the re-splits: (scores, per-split
  scores, {method: its fit on the first declared split} for the readouts, arrays, {method:
  {metric: why it is undefined}}, {method: predicted leave-one-out effects [K, T]})."""
  K = problem.S.shape[1]
  scores, per_split, fitted, arrays, why_by, loo_preds = {}, {}, {}, {}, {}, {}
  for source in ("exact", *problem.sources):
    for family in families:
      name = families_lib.method_name(family, source)
      why = why_by.setdefault(name, {})
      row, per, surr, first_pred = _resplit_scores(problem, family, source, split_list, threshold, test_fraction, why)
      if row is None:
        scores[name] = {k: None for k in RESPLIT_METRICS}
        continue
      scores[name], per_split[name] = row, per
      arrays[f"{name}/heldout_pred"] = first_pred
      for test, (S_test, F_test) in problem.other_tests.items():
        X_test = np.asarray(S_test)
        if family.view == "task" or problem.W is None:
          scores[name].update(_held_scores(np.asarray(surr.predict(X_test)), F_test, threshold, why, f"_{test}"))
      if family.view == "task" or problem.W is None:
        fitted[name] = surr
        declared = families_lib.readouts(surr)
        if "loo" in declared:   # predicted leave-one-out effects: for any LOO truth and the top-tasks figure
          loo_preds[name] = np.asarray(attribution.predicted_loo(surr))
        if "interactions" in declared and K >= 2:
          arrays[f"{name}/interactions"] = np.asarray(attribution.interactions(surr))
        elif "interactions" in declared:
          why["interactions"] = "a single task has no pairs to interact"
  return scores, per_split, fitted, arrays, why_by, loo_preds


def evaluate(problem: Problem, families: Sequence[families_lib.Family], *, threshold: float = 0.1,
             resplit_count: int = 20, num_bootstrap: int = 1000, seed: int = 0,
             comparisons: Callable = standard_comparisons, skipped: Optional[list] = None) -> Result:
  """Fits and scores every family on every outcome source of `problem` (see the module doc).

  A metric undefined on the data (`metrics.Undefined`) is None in the scores, with one
  {dataset, method, metric, reason} entry in `skipped` (warned when no list is given); a family
  whose fit refuses the problem's data is skipped the same way (metric "fit"). Bad input raises.
  """
  own = skipped is None
  skipped = [] if own else skipped
  for src in problem.sources:
    if src == "exact":
      raise ValueError(f"sources: {problem.name!r} names a source 'exact', which is the problem's own outcomes")
  for est, real in problem.estimates_of.items():
    if est not in problem.sources or (real != "exact" and real not in problem.sources):
      raise ValueError(f"estimates_of: {problem.name!r} pairs {est!r} with {real!r}; both must be outcome sources")
  split_list = resplits(problem, resplit_count, seed) if resplit_count else []
  n_fit, n_test = len(problem.splits[0][0]), len(problem.splits[0][1])
  test_fraction = n_test / (n_fit + n_test)
  K = problem.S.shape[1]
  scores, per_split, fitted, arrays, why_by, loo_preds = _score_families(
      problem, families, split_list, threshold, test_fraction)
  pairs = [tuple(p) for p in comparisons(problem, families, [*scores, *{p for t in problem.truths.values()
                                                                        for p in t.predictions}])]
  comp = {}
  for a, b in pairs:
    if a in per_split and b in per_split:
      for k in RESPLIT_METRICS:
        if split_list:
          d = per_split[a][k] - per_split[b][k]
          comp.setdefault(f"{a}-{b}", {}).update(_pair_entries(
              k, metrics.resplit_interval(d, test_fraction=test_fraction), HIGHER_IS_BETTER[k]))
  ceiling, reliability, need, unreliable = {}, {}, {}, {}
  for name, loo in loo_preds.items():
    arrays[f"{name}/predicted_loo"] = loo
  for tname, truth in problem.truths.items():
    if truth.mean.shape[0] != K:
      raise ValueError(f"truths: {problem.name!r} truth {tname!r} has {truth.mean.shape[0]} tasks, S has {K}")
    if truth.readout is None:
      preds = dict(loo_preds)
    else:
      preds = {name: np.asarray(truth.readout(surr)) for name, surr in fitted.items()}
    for name, p in truth.predictions.items():
      preds[name] = np.asarray(p, np.float64)
    rows, pair_rows = _correlation_intervals(tname, truth, preds, pairs, num_bootstrap, seed, why_by)
    for method, row in rows.items():
      scores.setdefault(method, {}).update(row)
    for pair, row in pair_rows.items():
      comp.setdefault(pair, {}).update(row)
    c, r, n = _ceilings(tname, truth, num_bootstrap, seed, why_by.setdefault("ceiling", {}))
    ceiling.update(c)
    reliability.update({k: v for k, v in r.items() if k != "repeats"})
    if r:
      reliability[f"{tname}_repeats"] = r["repeats"]
    need.update(n)
    for method in preds:
      for k in CORRELATIONS:
        key = f"{tname}_{k}"
        v, top = scores[method].get(key), ceiling.get(key)
        if key in ceiling:
          scores[method][f"{key}_of_ceiling"] = v / top if v is not None and top else None
        hi = (ceiling.get(f"{key}_ci95") or [None, None])[1]
        if v is not None and hi is not None and v > hi:
          unreliable.setdefault(key, []).append(method)
    arrays[f"{tname}_true"] = truth.mean
    if truth.repeats.shape[0] > 1:
      arrays[f"{tname}_repeats"] = truth.repeats
    for name, p in preds.items():
      arrays[f"{name}/predicted_{'loo' if truth.readout is None else tname}"] = p
  arrays["heldout_true"] = problem.F[problem.splits[0][1]]
  for method, why in why_by.items():
    for metric, reason in why.items():
      skipped.append({"dataset": problem.name, "method": method, "metric": metric, "reason": reason})
  if own:
    for line in skipped_lines(skipped):
      warnings.warn(line, stacklevel=2)
  return Result(problem=problem, scores=scores, comparisons=comp, ceiling=ceiling, reliability=reliability,
                seeds_needed=need, unreliable=unreliable, arrays=arrays, skipped=skipped, resplits=len(split_list))


def skipped_lines(skipped: list) -> list[str]:
  """One line per (dataset, metric, reason): the metrics a run could not compute, and why."""
  return [f"{e['dataset']}: {e['metric']} not computed for {', '.join(e['methods'])}: {e['reason']}"
          for e in group_skipped(skipped)]


def group_skipped(skipped: list) -> list[dict]:
  """The skipped entries grouped by (dataset, metric, reason), the methods they concern listed."""
  groups = {}
  for e in skipped:
    key = (e["dataset"], e["metric"], e["reason"])
    groups.setdefault(key, {"dataset": e["dataset"], "metric": e["metric"], "methods": [], "reason": e["reason"]})
    groups[key]["methods"].append(e["method"])
  return list(groups.values())


# ----------------------------------------------------------------------------------------------
# 2-4. Summarize, write, draw.

def _eval_settings(config) -> dict:
  e = config.get("eval") if hasattr(config, "get") else None
  return {"resplits": int(e.resplits) if e is not None else 20, "bootstrap": int(e.bootstrap) if e is not None else 1000,
          "seed": int(config.get("seed", 0)) if hasattr(config, "get") else 0}


def summarize(protocol: Protocol, config, results: Mapping[str, Result], across: Sequence[Across],
              workdir_run: runs.Run, settings: dict) -> tuple[dict, dict]:
  """(summary, {what: draw(path)} of the protocol's cross-problem figures)."""
  infos, skipped = {}, []
  for name, res in results.items():
    for key, value in res.problem.info.items():
      infos.setdefault(key, {})[name] = value
    skipped += res.skipped
  for entry in across:
    infos.update(entry.info)
  across_figures = {what: fn for entry in across for what, fn in entry.figures.items()}
  if protocol.across is not None:
    shared = {k: v for entry in across for k, v in entry.info.items()}
    entries, figures = protocol.across(config, results, shared)
    infos.update(entries)
    across_figures.update(figures)
  summary = {
      "experiment": protocol.name, "config": _config_dict(config),
      "evaluation": {"resplits": settings["resplits"], "bootstrap": settings["bootstrap"], "seed": settings["seed"],
                     "splits": {n: {"declared": len(r.problem.splits), "fit": len(r.problem.splits[0][0]),
                                    "heldout": len(r.problem.splits[0][1])} for n, r in results.items()},
                     "readouts": "one fit on the declared fit rows of the first declared split"},
      "datasets": {n: r.scores for n, r in results.items()},
      "comparisons": {n: r.comparisons for n, r in results.items()},
      "ceiling": {n: r.ceiling for n, r in results.items() if r.ceiling},
      "reliability": {n: r.reliability for n, r in results.items() if r.reliability},
      "seeds_for_reliability": {n: r.seeds_needed for n, r in results.items() if r.seeds_needed},
      "ceiling_unreliable": {n: r.unreliable for n, r in results.items() if r.unreliable},
      "skipped": group_skipped(skipped), "timing": workdir_run.timing_rows(), **infos}
  return summary, across_figures


def _figure_plan(protocol: Protocol, results: Mapping[str, Result], across_figures: dict,
                 out_dir: pathlib.Path) -> dict:
  """{what: (path, draw())} of every figure the run will draw."""
  plan = {}
  for name, res in results.items():
    out = out_dir / name
    for what, fn in _standard_figures(protocol, res).items():
      plan[f"{name}/{what}"] = (out / f"{what}.png", fn)
    for what, fn in res.problem.figures.items():
      plan[f"{name}/{what}"] = (out / f"{what}.png", lambda path, fn=fn, res=res: fn(res, path))
  for what, fn in across_figures.items():
    plan[what] = (out_dir / f"{what}.png", fn)
  return plan


def run(protocol: Protocol, config, workdir_run: runs.Run) -> dict:
  """Runs every problem of the protocol: evaluate, summarize, write DIR/<problem>/arrays.npz and
  then DIR/summary.json, draw DIR/<problem>/*.png. Returns the summary (None in a process p > 0
  of a group: it takes its part in every phase, and process 0 alone evaluates and writes)."""
  if not getattr(workdir_run, "is_primary", True):
    for _ in protocol.problems(config, workdir_run, protocol.families):
      pass
    return None
  code = provenance.commit()   # the checkout as imported; it may move during a long run
  out_dir = workdir_run.dir
  threshold = float(config.get("normalized_error_threshold", 0.1)) if hasattr(config, "get") else 0.1
  settings = _eval_settings(config)
  results, across = {}, []

  for item in protocol.problems(config, workdir_run, protocol.families):
    if isinstance(item, Across):
      across.append(item)
      continue
    problem = item
    workdir_run.log(f"{problem.name}: {problem.S.shape[0]} subsets x {problem.F.shape[1]} targets,"
                    f" K={problem.S.shape[1]}, {len(problem.splits)} declared split(s), {settings['resplits']} re-splits")
    own = problem.normalized_error_threshold
    results[problem.name] = evaluate(problem, protocol.families(config, problem.name),
                                     threshold=threshold if own is None else own,
                                     resplit_count=settings["resplits"], num_bootstrap=settings["bootstrap"],
                                     seed=settings["seed"], comparisons=protocol.comparisons, skipped=[])
  summary, across_figures = summarize(protocol, config, results, across, workdir_run, settings)
  summary["provenance"] = provenance.describe(code=code)   # what a results table cites for this run
  write(out_dir, summary, results)
  draw(out_dir, summary, _figure_plan(protocol, results, across_figures, out_dir))
  print_summary(summary, results, workdir_run)
  print(f"results in {out_dir}:", flush=True)
  for what, path in summary["files"].items():
    print(f"  {what:<34} {path}", flush=True)
  return summary


def _save_summary(out_dir: pathlib.Path, summary: dict, files: dict) -> None:
  summary["files"] = {**files, "summary": str(out_dir / "summary.json")}
  store.save_json(out_dir / "summary.json", summary)


def write(out_dir: pathlib.Path, summary: dict, results: Mapping[str, Result]) -> None:
  """Writes DIR/<problem>/arrays.npz, then DIR/summary.json listing them.

  The summary is written after the arrays it lists, so a run killed in between leaves the
  previous summary (or none), never one that lists a missing file.

  Args:
    out_dir: the workdir.
    summary: from `summarize`; its `files` are set here.
    results: the evaluated problems.
  """
  files = {}
  for name, res in results.items():
    path = out_dir / name / "arrays.npz"
    store.save_arrays(path, **{k.replace("/", "__"): v for k, v in res.arrays.items()})
    files[f"{name}/arrays"] = str(path)
  _save_summary(out_dir, summary, files)


def draw(out_dir: pathlib.Path, summary: dict, plan: dict) -> None:
  """Draws the figures, after the summary exists (a plotting failure never costs the summary),
  then writes the summary again listing the figures that were drawn (also when one failed).

  Args:
    out_dir: the workdir.
    summary: the summary `write` wrote.
    plan: {what: (path, draw(path))} from `_figure_plan`.
  """
  files = {k: v for k, v in summary["files"].items() if k != "summary"}
  try:
    for what, (path, fn) in plan.items():
      fn(path)
      files[what] = str(path)
  finally:
    _save_summary(out_dir, summary, {k: v for k, v in files.items() if pathlib.Path(v).is_file()})


def _cell(scores: dict, key: str):
  v = scores.get(key)
  return None if v is None else (v, scores.get(f"{key}_se"))


def print_summary(summary: dict, results: Mapping[str, Result], workdir_run: runs.Run) -> None:
  """The console: scores (mean ± s.e.), ceilings (flagged where a method scores above the upper
  bound), paired comparisons with their verdicts, what is n/a and why, phase timings."""
  rows, keys = [], []
  for name, res in results.items():
    for method, s in res.scores.items():
      rows.append({"dataset": name, "method": method, **{k: _cell(s, k) for k in s if not k.endswith(("_se", "_ci95"))}})
      keys += [k for k in s if k not in keys]
  columns = ["dataset", "method", "lds", "normalized_error"]
  columns += [k for k in keys if k.endswith("_pearson") and k not in columns]
  columns += [k for k in keys if k.startswith("lds_") and not k.endswith(("_se", "_ci95", "_declared")) and k not in columns]
  columns += ["seconds"]
  print(report.table(rows, columns), flush=True)
  for name, res in results.items():
    for key in (k for k in res.ceiling if k.endswith("_pearson")):
      iv, flag = res.ceiling.get(f"{key}_ci95"), res.unreliable.get(key)
      repeats = res.reliability.get(f"{key[:-len('_pearson')]}_repeats")
      print(f"ceiling {name} {key}: {report.score_text(res.ceiling[key])}" + (f" [{iv[0]:.3f}, {iv[1]:.3f}]" if iv else "")
            + f", reliability {report.score_text(res.reliability.get(key))} over {repeats} repeats"
            + (f", {res.seeds_needed[key]:g} needed for {RELIABILITY_TARGET}" if res.seeds_needed.get(key) else "")
            + (f" -- UNRELIABLE: {', '.join(flag)} score above its upper bound" if flag else ""), flush=True)
  comp_rows = []
  for name, res in results.items():
    for pair, c in res.comparisons.items():
      row = {"dataset": name, "a - b": pair}
      for k in ("lds", "loo_pearson", "swap_pearson"):
        if k in c:
          row[k] = _cell(c, k)
          row[f"{k} verdict"] = c.get(f"{k}_verdict")
      comp_rows.append(row)
  if comp_rows:
    cols = ["dataset", "a - b"] + [c for c in ("lds", "lds verdict", "loo_pearson", "loo_pearson verdict",
                                               "swap_pearson", "swap_pearson verdict")
                                   if any(c in r for r in comp_rows)]
    print(report.table(comp_rows, cols), flush=True)
  for line in skipped_lines(summary_skipped(summary)):   # n/a in the table: why
    print(f"n/a: {line}", flush=True)
  if workdir_run.timings:
    print(report.table(workdir_run.timing_rows(), ["phase", "seconds", "status"]), flush=True)


def summary_skipped(summary: dict) -> list:
  """The summary's grouped skipped entries, one per method (the shape `skipped_lines` reads)."""
  return [{**e, "method": m} for e in summary["skipped"] for m in e["methods"]]


def _standard_figures(protocol: Protocol, res: Result) -> dict:
  """{what: draw(path)} of the figures every problem gets."""
  problem, scores, arrays = res.problem, res.scores, res.arrays
  out = {}
  preds = {k.split("/")[0]: v for k, v in arrays.items() if k.endswith("/heldout_pred")}
  cells = {m: {k: _cell(scores[m], k) for k in ("lds", "normalized_error")} for m in preds}
  if preds:   # none when every family's fit refused the data
    out["predicted_vs_true"] = lambda path: report.predicted_vs_true(
        path, preds, arrays["heldout_true"], problem.name, scores=cells, outcome_name=problem.outcome_name,
        resplits=res.resplits)
  keys = [k for k in ("lds", "loo_pearson", "swap_pearson") if any(s.get(k) is not None for s in scores.values())]
  if keys:
    out["scores"] = lambda path: report.score_intervals(path, scores, res.ceiling, problem.name, keys=keys)
  loos = {k.split("/")[0]: v for k, v in arrays.items() if k.endswith("/predicted_loo")}
  if "loo_true" in arrays and loos:
    out["loo_real_vs_predicted"] = lambda path: report.loo_scatter(
        path, loos, arrays["loo_true"], problem.name, scores={m: _cell(scores[m], "loo_pearson") for m in loos},
        outcome_name=problem.outcome_name)
  m = protocol.plot_method
  domain = inputs.as_inputs(problem.S, "S")[1]   # what "removed" means in the readout figures
  if f"{m}/predicted_loo" in arrays:
    out["top_tasks"] = lambda path: report.top_tasks(
        path, arrays[f"{m}/predicted_loo"], f"{problem.name}: {m}", labels=problem.task_labels,
        higher_is_better=problem.higher_is_better, outcome_name=problem.outcome_name, task_noun=problem.task_noun,
        domain=domain)
  if f"{m}/interactions" in arrays:
    out["interactions"] = lambda path: report.interaction_heatmap(
        path, arrays[f"{m}/interactions"], f"{problem.name}: {m}", labels=problem.task_labels,
        outcome_name=problem.outcome_name, task_noun=problem.task_noun, domain=domain)
  return out


def _config_dict(config):
  if hasattr(config, "to_dict"):
    return config.to_dict()
  if dataclasses.is_dataclass(config):
    return dataclasses.asdict(config)
  return dict(config)
