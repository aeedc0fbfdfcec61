"""The shared attribution driver: every experiment hands it a Protocol and nothing else.

A Protocol yields Problems (subset matrices with outcomes, split into fit and held-out parts,
optionally with real leave-one-out effects) and names the Methods to compare. The driver fits each
method, scores it, reads out attributions, writes arrays, plots and `summary.json`. It never looks
at which experiment it runs.
"""
from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from ksurrogate import attribution
from ksurrogate import metrics
from ksurrogate import report
from ksurrogate import store


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
  `info` is copied into the summary as is (timings, estimator accuracy, ...).
  `lower_is_better` says what an outcome means (a loss) — only used in labels.
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
  lower_is_better: bool = True
  task_labels: Optional[Sequence[str]] = None


@dataclasses.dataclass(frozen=True)
class Protocol:
  name: str
  problems: Callable[[object, pathlib.Path], Iterable[Problem]]   # (config, workdir) -> problems
  methods: Mapping[str, Method]
  plot_method: str = "kernel"                         # whose readouts are plotted


def _view(problem: Problem, method: Method):
  if method.view == "sample":
    if problem.W is None:
      raise ValueError(f"method: {method.name!r} needs sample-level indicators, problem {problem.name!r} has none")
    return problem.W
  return problem.S


def evaluate(problem: Problem, methods: Mapping[str, Method], *, threshold: float = 0.1):
  """Fits and scores every method on every split. Returns (summary dict, arrays dict)."""
  summary, arrays = {}, {}
  for name, method in methods.items():
    X = _view(problem, method)
    if method.data != "exact" and method.data not in problem.extra_fit:
      raise ValueError(f"method: {name!r} fits on {method.data!r} outcomes, which problem {problem.name!r} lacks")
    per_split = []
    for i, (fit_rows, test_rows) in enumerate(problem.splits):
      t0 = time.perf_counter()
      S_fit, F_fit = (X[fit_rows], problem.F[fit_rows]) if method.data == "exact" else problem.extra_fit[method.data]
      surr = method.fit(S_fit, F_fit)
      pred = np.asarray(surr.predict(X[test_rows]))
      true = problem.F[test_rows]
      row = {"lds": metrics.lds(pred, true),
             "normalized_error": metrics.normalized_error(pred, true, threshold=threshold),
             "seconds": time.perf_counter() - t0}
      if i == 0:
        arrays[f"{name}/heldout_pred"] = pred
        if method.view == "task":
          loo = np.asarray(attribution.predicted_loo(surr))
          arrays[f"{name}/predicted_loo"] = loo
          if problem.loo_true is not None:
            row.update({f"loo_{k}": v for k, v in metrics.loo_correlation(loo, problem.loo_true).items()})
          if hasattr(surr, "gamma"):
            arrays[f"{name}/interactions"] = np.asarray(attribution.interactions(surr))
      per_split.append(row)
    summary[name] = {k: float(np.mean([r[k] for r in per_split])) for k in per_split[0]}
    if len(per_split) > 1:
      summary[name].update({f"{k}_std": float(np.std([r[k] for r in per_split])) for k in ("lds", "normalized_error")})
  for name, loo in problem.extra_loo.items():
    if problem.loo_true is None:
      raise ValueError(f"problem: {problem.name!r} has predicted LOO for {name!r} but no loo_true to score it against")
    arrays[f"{name}/predicted_loo"] = np.asarray(loo)
    summary[name] = {f"loo_{k}": v for k, v in metrics.loo_correlation(loo, problem.loo_true).items()}
  if problem.loo_true is not None:
    arrays["loo_true"] = problem.loo_true
  arrays["heldout_true"] = problem.F[problem.splits[0][1]]
  return summary, arrays


def run(protocol: Protocol, config, workdir, *, log=print) -> dict:
  """Runs every problem of the protocol; writes DIR/summary.json, DIR/<problem>/{arrays.npz,*.png}."""
  workdir = pathlib.Path(workdir)
  threshold = float(getattr(config, "normalized_error_threshold", 0.1))
  datasets, rows, infos = {}, [], {}
  for problem in protocol.problems(config, workdir):
    log(f"[{protocol.name}] {problem.name}: {problem.S.shape[0]} subsets x {problem.F.shape[1]} targets,"
        f" K={problem.S.shape[1]}, {len(problem.splits)} split(s)")
    summary, arrays = evaluate(problem, protocol.methods, threshold=threshold)
    datasets[problem.name] = summary
    out = workdir / problem.name
    store.save_arrays(out / "arrays.npz", **{k.replace("/", "__"): v for k, v in arrays.items()})
    _plots(protocol, problem, arrays, out)
    rows += [{"dataset": problem.name, "method": m, **s} for m, s in summary.items()]
    infos[problem.name] = dict(problem.info)
  result = {"experiment": protocol.name, "config": _config_dict(config), "datasets": datasets}
  if len(datasets) == 1:   # one problem: also expose metric -> method views and its info at top level
    (name, summary), = datasets.items()
    result["lds"] = {m: s["lds"] for m, s in summary.items() if "lds" in s}
    result["normalized_error"] = {m: s["normalized_error"] for m, s in summary.items() if "normalized_error" in s}
    loo = {m: {"pearson": s["loo_pearson"], "spearman": s["loo_spearman"],
               "pearson_mean_target": s["loo_pearson_mean_target"], "spearman_mean_target": s["loo_spearman_mean_target"]}
           for m, s in summary.items() if "loo_pearson" in s}
    if loo:
      result["loo_correlation"] = loo
    result.update(infos[name])
  store.save_json(workdir / "summary.json", result)
  columns = ["dataset", "method", "lds", "normalized_error", "seconds"]
  if any("loo_pearson" in r for r in rows):
    columns[4:4] = ["loo_pearson", "loo_spearman"]
  log(report.table(rows, columns))
  for info in infos.values():
    if "timing" in info:
      log(report.table([{"phase": k, "seconds": float(v)} for k, v in info["timing"].items()], ["phase", "seconds"]))
  log(f"wrote {workdir / 'summary.json'}")
  return result


def _plots(protocol: Protocol, problem: Problem, arrays: dict, out: pathlib.Path) -> None:
  preds = {k.split("/")[0]: v for k, v in arrays.items() if k.endswith("/heldout_pred")}
  report.predicted_vs_true(out / "predicted_vs_true.png", preds, arrays["heldout_true"], problem.name)
  m = protocol.plot_method
  loos = {k.split("/")[0]: v for k, v in arrays.items() if k.endswith("/predicted_loo")}
  if "loo_true" in arrays and loos:
    report.loo_scatter(out / "loo_real_vs_predicted.png", loos, arrays["loo_true"], problem.name)
  if f"{m}/predicted_loo" in arrays:
    report.top_tasks(out / "top_tasks.png", arrays[f"{m}/predicted_loo"], f"{problem.name}: {m}", labels=problem.task_labels)
  if f"{m}/interactions" in arrays:
    report.interaction_heatmap(out / "interactions.png", arrays[f"{m}/interactions"],
                               f"{problem.name}: {m} pairwise interactions (mean target)")


def _config_dict(config):
  if hasattr(config, "to_dict"):
    return config.to_dict()
  if dataclasses.is_dataclass(config):
    return dataclasses.asdict(config)
  return dict(config)
