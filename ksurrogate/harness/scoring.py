"""Step 1 of a run (`ksurrogate.harness.driver`): every surrogate family of a Problem fitted on
every outcome source and scored with intervals, in memory: re-split LDS and normalized error,
correlations against every ground truth, the truth's ceiling, paired verdicts."""
from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Callable, Optional, Sequence

import numpy as np

from ksurrogate import attribution
from ksurrogate import families as families_lib
from ksurrogate import ceilings
from ksurrogate import intervals
from ksurrogate import metrics
from ksurrogate import subsets
from ksurrogate.harness.problem import (CORRELATIONS, HIGHER_IS_BETTER, LOO_SCORES, RELIABILITY_TARGET, RESPLIT_METRICS, Problem,
                                        Result, Truth, standard_comparisons)


def resplits(problem: Problem, count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """`count` seeded random (fit, held-out) re-splits of the rows in the problem's declared splits,
  with the sizes of its first declared split.

  Args:
    problem: the `Problem` (its declared splits).
    count: the number of re-splits.
    seed: their seed.

  Returns:
    A list of `count` (fit rows, held-out rows) pairs of sorted int arrays.
  """
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
  iv = intervals.resplit_interval(values, test_fraction=test_fraction)
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
  """({method: {<truth>_<score>(_se, _ci95)}}, {"a-b": {...}}) for the correlations and the
  magnitude error: points by `metrics.loo_correlation` / `metrics.loo_magnitude_error`, intervals
  by `intervals.bootstrap_loo` over targets (and the truth's repeats, for pairs)."""
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
    row[f"{name}_magnitude_error"] = metrics.attempt(why, "magnitude_error", metrics.loo_magnitude_error, p, mean)
    if row[f"{name}_magnitude_error"] is None:
      skipped_by_method.setdefault(method, {})[f"{name}_magnitude_error"] = why["magnitude_error"]
    out[method] = row
    if point is not None or row[f"{name}_magnitude_error"] is not None:
      defined[method] = p   # an additive fit's interactions are exactly 0: no correlation, a magnitude
  pair_out = {}
  usable = [(a, b) for a, b in pairs if a in defined and b in defined]
  if defined and mean.shape[0] >= 3 and np.all(np.isfinite(truth.repeats)):
    boot = intervals.bootstrap_loo(defined, truth.repeats, pairs=usable, num_resamples=num_bootstrap, seed=seed)
    for method, ivs in boot["methods"].items():
      for k, iv in ivs.items():
        ok = np.isfinite(iv.se)
        out[method][f"{name}_{k}_se"] = float(iv.se) if ok else None
        out[method][f"{name}_{k}_ci95"] = [iv.lo, iv.hi] if ok else None
    for pair, ivs in boot["pairs"].items():
      for k, iv in ivs.items():
        pair_out.setdefault(pair, {}).update(_pair_entries(f"{name}_{k}", iv, HIGHER_IS_BETTER.get(k, True)))
  elif defined:
    for method in defined:
      skipped_by_method.setdefault(method, {})[f"{name}_intervals"] = (
          f"{name}: intervals need at least 3 {'pairs' if truth.pairs is not None else 'tasks'} and finite "
          f"effects (got {mean.shape[0]})")
  return out, pair_out


ROUNDING = 1e-9   # paired differences this close to 0 on both bounds are float rounding: they tie


def _pair_entries(key: str, iv: intervals.Interval, higher_is_better: bool) -> dict:
  ok = np.isfinite(iv.mean)
  widened = dataclasses.replace(iv, lo=iv.lo - ROUNDING, hi=iv.hi + ROUNDING)
  return {key: float(iv.mean) if ok else None, f"{key}_se": float(iv.se) if np.isfinite(iv.se) else None,
          f"{key}_ci95": [iv.lo, iv.hi] if np.isfinite(iv.lo) else None,
          f"{key}_verdict": widened.verdict(higher_is_better)}


def _read(truth: Truth, surrogate) -> np.ndarray:
  """A truth's prediction by a fitted surrogate [rows, T]: its readout, or for a pair truth the
  predicted drop-two effects or interactions of its pairs."""
  if truth.readout is not None:
    return np.asarray(truth.readout(surrogate))
  K = surrogate.num_tasks
  drop = np.asarray(attribution.predicted_drop(surrogate, ~subsets.without_pairs(K, truth.pairs)))
  if truth.of == "drop":
    return drop
  if "interactions" not in families_lib.readouts(surrogate):
    return np.zeros_like(drop)   # additive: exactly 0, not float rounding that would correlate
  return attribution.pair_interactions(drop, np.asarray(attribution.predicted_loo(surrogate)), truth.pairs)


def _ceilings(name: str, truth: Truth, num_bootstrap: int, seed: int, why: dict):
  """Ceiling (with interval), reliability and repeats for a reliability of 0.8, of a truth with
  at least 2 repeats; ({}, {}, {}) otherwise."""
  E = truth.repeats
  if len(E) < 2 or E.shape[1] < 3:
    return {}, {}, {}
  if not np.all(np.isfinite(E)):
    why[name] = f"{name}: the truth's effects hold non-finite values"
    return {}, {}, {}
  ceil = ceilings.ceiling_interval(E, num_resamples=num_bootstrap, seed=seed)
  _, reliability = ceilings.split_half_ceiling(E)
  ceiling, rel, need = {}, {}, {}
  for k, iv in ceil.items():
    key = f"{name}_{k}"
    ok = np.isfinite(iv.mean)
    ceiling[key] = float(iv.mean) if ok else None
    ceiling[f"{key}_se"] = float(iv.se) if np.isfinite(iv.se) else None
    ceiling[f"{key}_ci95"] = [iv.lo, iv.hi] if np.isfinite(iv.lo) else None
    if k not in reliability:   # magnitude_error: a floor from the halves' noise, no reliability
      if not ok:
        why[key] = "not measurable: the truth's mean effect is 0 over every task and target"
      continue
    r = reliability[k]
    rel[key] = float(r) if np.isfinite(r) else None
    n = ceilings.seeds_for_reliability(r, len(E), RELIABILITY_TARGET) if np.isfinite(r) else float("inf")
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

  Args:
    problem: the `Problem`.
    families: the `Family`s fitted and scored.
    threshold: the normalized error's variance threshold (`metrics.normalized_error`).
    resplit_count: the random re-splits the held-out scores' intervals come from (0: none).
    num_bootstrap: the bootstrap resamples of the correlation intervals and ceilings.
    seed: the seed of the re-splits and the bootstrap.
    comparisons: `comparisons(problem, families, methods) -> [(a, b)]`, the pairs reported as a - b.
    skipped: a list the skipped entries are appended to, or None to warn them.

  Returns:
    The `Result` (scores, comparisons, ceiling, reliability, seeds_needed, unreliable, arrays,
    skipped, resplits).

  Raises:
    ValueError: when the problem names a source "exact", pairs an estimate with something that is
      not an outcome source, or has a truth with another number of tasks than S (or, for a pair
      truth, a task outside [0, K)).
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
              k, intervals.resplit_interval(d, test_fraction=test_fraction), HIGHER_IS_BETTER[k]))
  ceiling, reliability, need, unreliable = {}, {}, {}, {}
  for name, loo in loo_preds.items():
    arrays[f"{name}/predicted_loo"] = loo
  for tname, truth in problem.truths.items():
    if truth.pairs is not None:
      if np.max(truth.pairs) >= K:
        raise ValueError(f"truths: {problem.name!r} truth {tname!r} names a task outside [0, {K})")
    elif truth.mean.shape[0] != K:
      raise ValueError(f"truths: {problem.name!r} truth {tname!r} has {truth.mean.shape[0]} tasks, S has {K}")
    preds = dict(loo_preds) if truth.is_loo else {name: _read(truth, surr) for name, surr in fitted.items()}
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
      for k in LOO_SCORES:
        key = f"{tname}_{k}"
        v, bound = scores[method].get(key), ceiling.get(key)
        if key in ceiling and k in CORRELATIONS:
          scores[method][f"{key}_of_ceiling"] = v / bound if v is not None and bound else None
        # beyond the ceiling's interval (below the floor's, for an error) is the truth's noise, not skill
        higher = HIGHER_IS_BETTER.get(k, True)
        edge = (ceiling.get(f"{key}_ci95") or [None, None])[1 if higher else 0]
        if v is not None and edge is not None and (v > edge if higher else v < edge):
          unreliable.setdefault(key, []).append(method)
    arrays[f"{tname}_true"] = truth.mean
    if truth.repeats.shape[0] > 1:
      arrays[f"{tname}_repeats"] = truth.repeats
    for name, p in preds.items():
      arrays[f"{name}/predicted_{'loo' if truth.is_loo else tname}"] = p
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
  """One line per (dataset, metric, reason): the metrics a run could not compute, and why.

  Args:
    skipped: [{"dataset", "method", "metric", "reason"}].

  Returns:
    A list of str.
  """
  return [f"{e['dataset']}: {e['metric']} not computed for {', '.join(e['methods'])}: {e['reason']}"
          for e in group_skipped(skipped)]


def group_skipped(skipped: list) -> list[dict]:
  """The skipped entries grouped by (dataset, metric, reason), the methods they concern listed.

  Args:
    skipped: [{"dataset", "method", "metric", "reason"}].

  Returns:
    [{"dataset", "metric", "methods": [...], "reason"}] in order of first appearance.
  """
  groups = {}
  for e in skipped:
    key = (e["dataset"], e["metric"], e["reason"])
    groups.setdefault(key, {"dataset": e["dataset"], "metric": e["metric"], "methods": [], "reason": e["reason"]})
    groups[key]["methods"].append(e["method"])
  return list(groups.values())
