"""Steps 3-4 of a run (`ksurrogate.harness.driver`): arrays and summary.json written so that the
summary on disk lists only files that exist, the figures drawn after it, the console table."""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Mapping

from ksurrogate import inputs
from ksurrogate.harness import report
from ksurrogate.harness import runs
from ksurrogate.harness import store
from ksurrogate.harness.problem import RELIABILITY_TARGET, Protocol, Result
from ksurrogate.harness.scoring import skipped_lines


def figure_plan(protocol: Protocol, results: Mapping[str, Result], across_figures: dict,
                 out_dir: pathlib.Path) -> dict:
  """{what: (path, draw())} of every figure the run will draw.

  Args:
    protocol: the experiment's `Protocol` (its `plot_method`).
    results: {problem name: `Result`}.
    across_figures: {what: draw(path)} of the cross-problem figures.
    out_dir: the run directory.

  Returns:
    {what: (png path, draw(path))}.
  """
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
    plan: {what: (path, draw(path))} from `figure_plan`.
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
  bound), paired comparisons with their verdicts, what is n/a and why, phase timings.

  Args:
    summary: the run's summary (its skipped entries).
    results: {problem name: `Result`}.
    workdir_run: the `runs.Run` whose timings are printed.
  """
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
  """The summary's grouped skipped entries, one per method (the shape `skipped_lines` reads).

  Args:
    summary: a summary with "skipped": [{"methods": [...], ...}].

  Returns:
    A list of dicts, each entry repeated with "method" set, per method it names.
  """
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


def config_dict(config):
  """A config as a plain dict, for the summary.

  Args:
    config: a ConfigDict (anything with `to_dict`), a dataclass or a mapping.

  Returns:
    The dict.
  """
  if hasattr(config, "to_dict"):
    return config.to_dict()
  if dataclasses.is_dataclass(config):
    return dataclasses.asdict(config)
  return dict(config)
