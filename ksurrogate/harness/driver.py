"""The shared attribution driver: every experiment hands it a Protocol and nothing else.

A run goes one way, in separate steps:
  1. `evaluate` (per Problem the protocol yields): every surrogate family is fitted on every outcome
     source the problem has and scored, with intervals, in memory (a `Result`): LDS and normalized
     error over `eval.resplits` seeded random fit/held-out re-splits of the problem's exact
     subsets (the sizes of its declared split; `intervals.resplit_interval`), and on the declared
     split itself; leave-one-out (or any other effect) correlations against every ground truth,
     with a bootstrap over targets and over the truth's repeats (`intervals.bootstrap_loo`); the
     truth's ceiling with its interval, reliability and the repeats it would need
     (`ceilings.ceiling_interval`, `seeds_for_reliability`); paired differences between methods with
     their verdicts (`Interval.verdict`).
  2. `summarize`: one summary dict from every Result (and the protocol's cross-problem readouts,
     which take the Results themselves).
  3. `write`: DIR/<problem>/arrays.npz, then DIR/summary.json listing them.
  4. `draw`: the figures, after the summary exists (a plotting failure never costs the summary);
     the summary is written again listing them. At every moment the summary on disk lists only
     files that exist.

The types an experiment builds live in `ksurrogate.harness.problem`, step 1 in `scoring`, steps 3-4
in `output`; this module composes them (and re-exports what a protocol needs, so experiments
import the driver alone).

Exact-outcome families are refitted on every re-split; families fitted on another outcome source
(estimated outcomes, real fine-tunes of other subsets) do not depend on the split and are fitted
once, then scored on every re-split's held-out exact rows. Readouts (predicted effects,
interactions, the other test sets) come from one fit on the problem's declared fit rows (its first
declared split's fit rows; never its held-out rows).

Summary schema (the same whatever the number of problems):
  experiment, config, timing [{phase, seconds, seconds_compile, status}], files {what: path},
  datasets.<problem>.<method>.{lds, lds_se, lds_ci95, normalized_error(_se, _ci95), lds_declared,
      normalized_error_declared, <truth>_<corr>(_se, _ci95, _of_ceiling),
      <truth>_magnitude_error(_se, _ci95), lds_<test>, seconds, ...}
      (<corr>: pearson, spearman, pearson_mean_target, spearman_mean_target, pearson_pooled;
      magnitude_error: ||pred - true|| / ||true|| over every (task, target), lower is better; a
      metric undefined on the data is null, and listed in `skipped`),
  comparisons.<problem>.<a>-<b>.{<metric>, <metric>_se, <metric>_ci95, <metric>_verdict},
  ceiling.<problem>.<truth>_<corr>(_se, _ci95) (and <truth>_magnitude_error: the error the
      noise-free effects score, a floor), reliability.<problem>.<truth>_<corr>,
  seeds_for_reliability.<problem>.<truth>_<corr> (repeats for a reliability of 0.8),
  ceiling_unreliable.<problem>.<truth>_<corr> = [methods scoring above the ceiling's upper bound
      (below the floor's lower bound, for magnitude_error)],
  evaluation {resplits, bootstrap, declared splits ...},
  skipped [{dataset, metric, methods, reason}],
  <info key>.<problem> = whatever the problem's `info` holds under that key,
  <key> = the study-wide entries a protocol yields as `Across` or returns from `across`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from ksurrogate.harness import provenance
from ksurrogate.harness import runs
from ksurrogate.harness.output import config_dict, figure_plan, draw, print_summary, write
from ksurrogate.harness.problem import (CORRELATIONS, HIGHER_IS_BETTER, LOO_SCORES, RELIABILITY_TARGET, RESPLIT_METRICS,
                                        Across, Problem, Protocol, Result, Truth, Unmeasurable, standard_comparisons)
from ksurrogate.harness.scoring import evaluate, group_skipped, resplits, skipped_lines

# What experiments and users reach as `driver.<name>`: one module to import for a whole run.
__all__ = ["CORRELATIONS", "HIGHER_IS_BETTER", "LOO_SCORES", "RELIABILITY_TARGET", "RESPLIT_METRICS", "Across", "Problem", "Protocol",
           "Result", "Truth", "Unmeasurable", "standard_comparisons", "evaluate", "resplits", "skipped_lines",
           "summarize", "run", "write", "draw", "print_summary"]


def _eval_settings(config) -> dict:
  e = config.get("eval") if hasattr(config, "get") else None
  return {"resplits": int(e.resplits) if e is not None else 20, "bootstrap": int(e.bootstrap) if e is not None else 1000,
          "seed": int(config.get("seed", 0)) if hasattr(config, "get") else 0}


def summarize(protocol: Protocol, config, results: Mapping[str, Result], across: Sequence[Across],
              workdir_run: runs.Run, settings: dict) -> tuple[dict, dict]:
  """The run's summary, and the protocol's cross-problem figures.

  Args:
    protocol: the experiment's `Protocol`.
    config: the experiment's config (an ml_collections ConfigDict, a dataclass or a mapping).
    results: {problem name: `Result`} as `evaluate` returned them.
    across: the `Across` entries the protocol's problems yielded.
    workdir_run: the `runs.Run` (its timings go into the summary).
    settings: {"resplits", "bootstrap", "seed"} of the evaluation.

  Returns:
    (summary dict, {what: draw(path)}).
  """
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
      "experiment": protocol.name, "config": config_dict(config),
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


def run(protocol: Protocol, config, workdir_run: runs.Run) -> dict:
  """Runs every problem of the protocol: evaluate, summarize, write, draw and print.

  Writes DIR/<problem>/arrays.npz, then DIR/summary.json, and draws DIR/<problem>/*.png.

  Args:
    protocol: the experiment's `Protocol`.
    config: the experiment's config; read here: `eval.resplits`, `eval.bootstrap`, `seed`,
      `normalized_error_threshold` (defaults 20, 1000, 0, 0.1 where absent).
    workdir_run: the open `runs.Run` the phases are stored in.

  Returns:
    The summary dict, or None in a process p > 0 of a group (it takes its part in every phase, and
    process 0 alone evaluates and writes).
  """
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
  draw(out_dir, summary, figure_plan(protocol, results, across_figures, out_dir))
  print_summary(summary, results, workdir_run)
  print(f"results in {out_dir}:", flush=True)
  for what, path in summary["files"].items():
    print(f"  {what:<34} {path}", flush=True)
  return summary
