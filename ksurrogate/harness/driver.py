"""The shared attribution driver: every experiment hands it a Protocol and nothing else.

A Protocol yields Problems (subset matrices with outcomes, split into fit and held-out parts,
optionally with real leave-one-out effects) and builds, per problem, the Methods to compare. The
driver fits each method, scores it, reads out what the surrogate declares it supports, and writes
arrays, plots and `summary.json`. It never looks at which experiment it runs.

Summary schema (the same whatever the number of problems):
  experiment, config, timing [{phase, seconds, status}], files {what: path},
  datasets.<problem>.<method>.{lds, normalized_error, seconds, loo_pearson, loo_spearman,
                               loo_pearson_mean_target, loo_spearman_mean_target, ...}
    (a metric undefined on the data is null, and listed in `skipped`),
  skipped [{dataset, metric, methods, reason}],
  <info key>.<problem> = whatever the problem's `info` holds under that key.
"""
from __future__ import annotations

import dataclasses
import pathlib
import time
import warnings
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from ksurrogate import attribution
from ksurrogate import metrics
from ksurrogate import subsets
from ksurrogate.harness import report
from ksurrogate.harness import runs
from ksurrogate.harness import store

LOO_KEYS = ("pearson", "spearman", "pearson_mean_target", "spearman_mean_target")


class Unmeasurable(ValueError):
  """A protocol's design cannot measure anything (e.g. too few targets' outcomes vary after its
  first exact outcomes): raised by `problems` right after that phase, it stops the run with its
  one line (which names the field to change) instead of computing the rest."""


@dataclasses.dataclass(frozen=True)
class Method:
  """A surrogate family: `fit(S, F) -> surrogate` on the indicator view and outcome data it names.

  view "task" reads the task-level indicators (readouts are per task); "sample" reads the
  sample-level ones a problem may also carry (the official code's representation).
  data "exact" fits on the fit rows of the problem's exact outcomes; any other name fits on
  `problem.extra_fit[data]` (e.g. estimated outcomes of many more subsets). Either way the
  surrogate is scored on the held-out exact rows.
  """
  name: str
  fit: Callable
  view: str = "task"
  data: str = "exact"


@dataclasses.dataclass(frozen=True)
class Problem:
  """Outcomes F [m, T] of m subsets S [m, K] and the fit/held-out splits to score on.

  `splits` is a list of (fit_rows, heldout_rows); metrics are averaged over splits.
  `loo_true` [K, T] (F(1 - e_k) - F(1)) enables leave-one-out correlation.
  `extra_fit` holds other (S, F) pairs methods may fit on; `extra_loo` holds predicted LOO [K, T]
  of methods that are not surrogates (influence functions, TracIn, ...), scored against loo_true.
  `info` goes into the summary as `<key>.<problem name>` (estimator accuracy, selection, ...).
  `loo_ceiling` is how well the ground truth agrees with itself (e.g. split-half reliability
  across training seeds, Spearman-Brown corrected); every LOO correlation is then also reported
  as a fraction of it (`loo_<key>_of_ceiling`).
  `other_loo_truths` are further ground truths of the same leave-one-out effects, {name: (loo [K, T],
  ceiling or None)} (e.g. leave-one-out by fine-tuning rather than retraining): every predicted LOO
  is also scored against each as `loo_<name>_<key>` (and `_of_ceiling`).
  `other_tests` are further held-out sets {name: (S, F)} (e.g. real fine-tunes of other subsets):
  every surrogate is also scored on each as `lds_<name>` and `normalized_error_<name>` (first split).
  `figures` names extra figures the experiment wrote ({what: path}), listed with the run's files.
  `task_noun` names a task in the plots (ICL: "demonstration").
  `higher_is_better`: what an outcome means (a loss: False; a return or accuracy: True); plots
  and the sign of "helps the target" follow it.
  """
  name: str
  S: np.ndarray
  F: np.ndarray
  splits: Sequence[tuple[np.ndarray, np.ndarray]]
  W: Optional[np.ndarray] = None
  loo_true: Optional[np.ndarray] = None
  extra_fit: Mapping[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
  extra_loo: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  info: Mapping = dataclasses.field(default_factory=dict)
  higher_is_better: bool = False
  outcome_name: str = "target loss"
  task_labels: Optional[Sequence[str]] = None
  figures: Mapping[str, str] = dataclasses.field(default_factory=dict)   # figures the experiment drew itself
  loo_ceiling: Optional[Mapping[str, float]] = None   # reliability of loo_true itself (same keys as loo_correlation)
  other_loo_truths: Mapping[str, tuple[np.ndarray, Optional[Mapping[str, float]]]] = dataclasses.field(default_factory=dict)
  other_tests: Mapping[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
  normalized_error_threshold: Optional[float] = None   # this problem's own target-variance cut (else the config's)
  task_noun: str = "task"   # what a task is here ("demonstration", "objective"), for plot labels


@dataclasses.dataclass(frozen=True)
class Protocol:
  """What an experiment hands the driver.

  problems(config, run) yields Problems (`run` is the `runs.Run` to store phases in);
  methods(config, problem) builds the methods to compare on that problem.
  across(config, datasets, infos, out_dir), when given, runs once every problem is evaluated (its arrays
  are in out_dir/<problem>/arrays.npz) to compare problems, e.g. a score against a design
  parameter; it returns ({what: figure path}, {summary key: value}).
  """
  name: str
  problems: Callable[[object, runs.Run], Iterable[Problem]]
  methods: Callable[[object, Problem], Mapping[str, Method]]
  plot_method: str = "kernel"                         # whose readouts are plotted
  across: Optional[Callable[[object, dict, dict, pathlib.Path], tuple[Mapping[str, str], Mapping]]] = None


def surrogate_methods(*, cv: int = 5, data: Sequence[str] = ("exact",), kernel: Optional[Callable] = None,
                      linear: Optional[Callable] = None) -> dict:
  """`kernel_<data>` and `linear_<data>` methods for each outcome source in `data` ("exact" and
  the names of a problem's `extra_fit`), with CV'd `fit_kernel` / `fit_linear` unless other fits
  are given."""
  from ksurrogate import surrogates   # the driver itself never fits anything else
  kernel = kernel or (lambda S, F: surrogates.fit_kernel(S, F, cv=cv))
  linear = linear or (lambda S, F: surrogates.fit_linear(S, F, cv=cv))
  out = {}
  for source in data:
    out[f"kernel_{source}"] = Method(f"kernel_{source}", kernel, data=source)
    out[f"linear_{source}"] = Method(f"linear_{source}", linear, data=source)
  return out


def _view(problem: Problem, method: Method):
  if method.view == "sample":
    if problem.W is None:
      raise ValueError(f"method: {method.name!r} needs sample-level indicators, problem {problem.name!r} has none")
    return problem.W
  return problem.S


def _loo_scores(loo, problem: Problem, skipped: dict) -> dict:
  """LOO correlations of a predicted LOO [K, T] with every ground truth the problem has, each
  also as a fraction of that truth's ceiling where it has one. A correlation that is undefined
  (e.g. a single task, or a constant prediction) is None, its reason in `skipped`."""
  truths = {"": (problem.loo_true, problem.loo_ceiling), **{f"{n}_": v for n, v in problem.other_loo_truths.items()}}
  row = {}
  for prefix, (truth, ceiling) in truths.items():
    if truth is None:
      continue
    why = {}
    scores = metrics.attempt(why, "loo", metrics.loo_correlation, loo, truth)
    for k in LOO_KEYS:
      v = None if scores is None else scores[k]
      row[f"loo_{prefix}{k}"] = v
      if scores is None:
        skipped[f"loo_{prefix}{k}"] = why["loo"]
      if ceiling and k in ceiling:
        c = ceiling[k]
        measurable = c is not None and np.isfinite(c) and c > 0
        row[f"loo_{prefix}{k}_of_ceiling"] = v / c if v is not None and measurable else None
        if v is not None and not measurable:
          skipped[f"loo_{prefix}{k}_of_ceiling"] = (f"ceiling: not measurable ({c}): the ground truth's split-half "
                                                    "reliability is not positive")
  return row


def _merge(rows: list[dict], why: list[dict], name: str, problem: Problem, skipped: list) -> dict:
  """One summary entry from per-split rows: each key averaged over the splits that have it and
  where it is defined (None where it is defined on none); undefined ones listed in `skipped`."""
  out = {}
  for k in dict.fromkeys(k for r in rows for k in r):
    values = [r[k] for r in rows if k in r]
    defined = [v for v in values if v is not None]
    out[k] = float(np.mean(defined)) if defined else None
    reasons = [w[k] for w in why if k in w]
    if reasons:
      note = "" if not defined else f" (on {len(reasons)} of {len(values)} splits; the value averages the others)"
      skipped.append({"dataset": problem.name, "method": name, "metric": k, "reason": reasons[0] + note})
  for k in dict.fromkeys(k for w in why for k in w if k not in out):   # readouts that are absent, not metrics
    skipped.append({"dataset": problem.name, "method": name, "metric": k, "reason": next(w[k] for w in why if k in w)})
  if len(rows) > 1:
    for k in ("lds", "normalized_error"):
      defined = [r[k] for r in rows if r.get(k) is not None]
      out[f"{k}_std"] = float(np.std(defined)) if len(defined) > 1 else None
  return out


def evaluate(problem: Problem, methods: Mapping[str, Method], *, threshold: float = 0.1,
             skipped: Optional[list] = None):
  """Fits and scores every method on every split. Returns (summary dict, arrays dict).

  Readouts on the first split: predicted LOO for task-level methods, pairwise interactions for
  surrogates that declare them (`READOUTS`); LOO correlation where the problem has `loo_true`.
  A metric that is undefined on the data (`metrics.Undefined`: too few rows, no target varying
  above the threshold, a constant or non-finite test set) is None in the summary; one
  {dataset, method, metric, reason} entry per such metric is appended to `skipped` (or warned, when
  no list is given). A method whose fit refuses the problem's data (a ValueError, e.g. too few
  distinct subsets to cross-validate) is skipped the same way, with metric "fit". Other bad input
  still raises.
  """
  own = skipped is None
  skipped = [] if own else skipped
  summary, arrays = {}, {}
  for name, method in methods.items():
    X = _view(problem, method)
    if method.data != "exact" and method.data not in problem.extra_fit:
      raise ValueError(f"method: {name!r} fits on {method.data!r} outcomes, which problem {problem.name!r} lacks")
    per_split, why = [], []
    fitted = None   # a method fitted on other outcomes than the split's fits once for every split
    for i, (fit_rows, test_rows) in enumerate(problem.splits):
      t0 = time.perf_counter()
      S_fit, F_fit = (X[fit_rows], problem.F[fit_rows]) if method.data == "exact" else problem.extra_fit[method.data]
      # Repeated subsets are expected in sampled designs: averaged here once, counted in the summary.
      n_rows = len(S_fit)
      S_fit, F_fit = subsets.deduplicate(S_fit, F_fit, warn=False)
      try:
        surr = fitted or method.fit(S_fit, F_fit)
      except ValueError as e:   # a method that cannot be fitted to this problem is reported, not fatal
        per_split, why = [{"lds": None, "normalized_error": None}], [{"fit": str(e).splitlines()[0]}]
        break
      if method.data != "exact":
        fitted = surr
      pred = np.asarray(surr.predict(X[test_rows]))
      true = problem.F[test_rows]
      w = {}
      row = {"lds": metrics.attempt(w, "lds", metrics.lds, pred, true),
             "normalized_error": metrics.attempt(w, "normalized_error", metrics.normalized_error, pred, true,
                                                 threshold=threshold),
             "seconds": time.perf_counter() - t0, "duplicates_averaged": float(n_rows - len(S_fit))}
      if i == 0:
        arrays[f"{name}/heldout_pred"] = pred
        for test, (S_test, F_test) in problem.other_tests.items():
          p_test = np.asarray(surr.predict(np.asarray(S_test)))
          row[f"lds_{test}"] = metrics.attempt(w, f"lds_{test}", metrics.lds, p_test, F_test)
          row[f"normalized_error_{test}"] = metrics.attempt(w, f"normalized_error_{test}", metrics.normalized_error,
                                                            p_test, F_test, threshold=threshold)
        readouts = getattr(surr, "READOUTS", ("loo",))
        if method.view == "task" and "loo" in readouts:
          loo = np.asarray(attribution.predicted_loo(surr))
          arrays[f"{name}/predicted_loo"] = loo
          row.update(_loo_scores(loo, problem, w))
          if "interactions" in readouts and X.shape[1] >= 2:
            arrays[f"{name}/interactions"] = np.asarray(attribution.interactions(surr))
          elif "interactions" in readouts:
            w["interactions"] = "a single task has no pairs to interact"
      per_split.append(row)
      why.append(w)
    # first-split-only keys (LOO, other tests) average over the splits that have them
    summary[name] = _merge(per_split, why, name, problem, skipped)
  for name, loo in problem.extra_loo.items():
    if problem.loo_true is None:
      raise ValueError(f"problem: {problem.name!r} has predicted LOO for {name!r} but no loo_true to score it against")
    arrays[f"{name}/predicted_loo"] = np.asarray(loo)
    w = {}
    summary[name] = _merge([_loo_scores(loo, problem, w)], [w], name, problem, skipped)
  if problem.loo_true is not None:
    arrays["loo_true"] = problem.loo_true
  for truth_name, (truth, _) in problem.other_loo_truths.items():
    arrays[f"loo_true_{truth_name}"] = np.asarray(truth)
  arrays["heldout_true"] = problem.F[problem.splits[0][1]]
  if own:
    for line in skipped_lines(skipped):
      warnings.warn(line, stacklevel=2)
  return summary, arrays


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


def run(protocol: Protocol, config, workdir_run: runs.Run) -> dict:
  """Runs every problem of the protocol; writes DIR/summary.json and DIR/<problem>/{arrays.npz,*.png}.
  Returns the summary (None in a process p > 0 of a group: it takes its part in every phase, and
  process 0 alone evaluates and writes)."""
  if not getattr(workdir_run, "is_primary", True):
    for _ in protocol.problems(config, workdir_run):
      pass
    return None
  out_dir = workdir_run.dir
  threshold = float(config.get("normalized_error_threshold", 0.1)) if hasattr(config, "get") else 0.1
  datasets, rows, infos, files, skipped = {}, [], {}, {}, []
  for problem in protocol.problems(config, workdir_run):
    workdir_run.log(f"{problem.name}: {problem.S.shape[0]} subsets x {problem.F.shape[1]} targets,"
                    f" K={problem.S.shape[1]}, {len(problem.splits)} split(s)")
    own = problem.normalized_error_threshold
    summary, arrays = evaluate(problem, protocol.methods(config, problem), threshold=threshold if own is None else own,
                               skipped=skipped)
    datasets[problem.name] = summary
    out = out_dir / problem.name
    store.save_arrays(out / "arrays.npz", **{k.replace("/", "__"): v for k, v in arrays.items()})
    files[f"{problem.name}/arrays"] = str(out / "arrays.npz")
    for what, path in {**problem.figures, **_plots(protocol, problem, summary, arrays, out)}.items():
      files[f"{problem.name}/{what}"] = str(path)
    rows += [{"dataset": problem.name, "method": m, **s} for m, s in summary.items()]
    for key, value in problem.info.items():
      infos.setdefault(key, {})[problem.name] = value
  if protocol.across is not None:
    figures, across_info = protocol.across(config, datasets, infos, out_dir)
    files.update({what: str(path) for what, path in figures.items()})
    infos.update(across_info)
  result = {"experiment": protocol.name, "config": _config_dict(config), "datasets": datasets,
            "skipped": group_skipped(skipped), "timing": workdir_run.timing_rows(), **infos}
  files["summary"] = str(out_dir / "summary.json")
  result["files"] = files
  store.save_json(out_dir / "summary.json", result)
  columns = ["dataset", "method", "lds", "normalized_error", "seconds"]
  if any("loo_pearson" in r for r in rows):
    columns[4:4] = ["loo_pearson", "loo_spearman", "loo_pearson_mean_target"]
  # the other ground truths and test sets, and the fraction of the ceiling, where a problem has them
  extra = [k for r in rows for k in r if k == "loo_pearson_of_ceiling" or
           (k.startswith("loo_") and k.endswith("_pearson") and k != "loo_pearson") or
           (k.startswith("lds_") and not k.endswith("_std"))]
  columns[-1:-1] = list(dict.fromkeys(extra))
  print(report.table(rows, columns), flush=True)
  for line in skipped_lines(skipped):   # n/a in the table: why
    print(f"n/a: {line}", flush=True)
  if workdir_run.timings:
    print(report.table(workdir_run.timing_rows(), ["phase", "seconds", "status"]), flush=True)
  print(f"results in {out_dir}:", flush=True)
  for what, path in files.items():
    print(f"  {what:<34} {path}", flush=True)
  return result


def _plots(protocol: Protocol, problem: Problem, summary: dict, arrays: dict, out: pathlib.Path) -> dict:
  """Writes the problem's figures; returns {what: path}."""
  written = {}
  preds = {k.split("/")[0]: v for k, v in arrays.items() if k.endswith("/heldout_pred")}
  path = out / "predicted_vs_true.png"
  report.predicted_vs_true(path, preds, arrays["heldout_true"], problem.name,
                           scores={m: {k: summary[m][k] for k in ("lds", "normalized_error")} for m in preds},
                           outcome_name=problem.outcome_name, num_splits=len(problem.splits))
  written["predicted_vs_true"] = path
  loos = {k.split("/")[0]: v for k, v in arrays.items() if k.endswith("/predicted_loo")}
  if "loo_true" in arrays and loos:
    path = out / "loo_real_vs_predicted.png"
    report.loo_scatter(path, loos, arrays["loo_true"], problem.name,
                       scores={m: summary[m]["loo_pearson"] for m in loos}, outcome_name=problem.outcome_name)
    written["loo_real_vs_predicted"] = path
  m = protocol.plot_method
  if f"{m}/predicted_loo" in arrays:
    path = out / "top_tasks.png"
    report.top_tasks(path, arrays[f"{m}/predicted_loo"], f"{problem.name}: {m}", labels=problem.task_labels,
                     higher_is_better=problem.higher_is_better, outcome_name=problem.outcome_name,
                     task_noun=problem.task_noun)
    written["top_tasks"] = path
  if f"{m}/interactions" in arrays:
    path = out / "interactions.png"
    report.interaction_heatmap(path, arrays[f"{m}/interactions"], f"{problem.name}: {m}", labels=problem.task_labels,
                               outcome_name=problem.outcome_name, task_noun=problem.task_noun)
    written["interactions"] = path
  return written


def _config_dict(config):
  if hasattr(config, "to_dict"):
    return config.to_dict()
  if dataclasses.is_dataclass(config):
    return dataclasses.asdict(config)
  return dict(config)
