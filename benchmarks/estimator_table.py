"""One table of the estimators of all three experiments, read from their summaries (issue 17).

  python benchmarks/estimator_table.py --modular=runs/mod --morl=runs/morl --icl=runs/icl

Each experiment's run writes an `estimator.<dataset>` block into its summary.json (the figures are
measured inside the run: the estimator and the real outcomes it replaces, side by side). This
prints them as one table against the targets of issue 17: median relative error vs the real
outcomes and the same for the no-change guess (ICL: the nearest anchor's real value) and their
ratio (target <= 0.5); LDS vs held-out real outcomes (>= 0.8); the LOO Pearson of a kernel surrogate
fitted on estimates / on real outcomes (>= 0.9; modular: the same subsets, scored against the
fine-tuning LOO; morl: estimates of many subsets vs the real random subsets, against the real LOO;
icl: the same with the real swap effects as the truth);
seconds per subset (steady state) vs one real outcome, with the speed-up including the setup
shared over the estimated subsets (>= 100x). A missing figure prints as "-".
"""
from __future__ import annotations

import json
import math
import pathlib


from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from ksurrogate.harness import report  # noqa: E402

_DIRS = {name: flags.DEFINE_string(name, None, f"workdir of a finished {name} run") for name in ("modular", "morl", "icl")}

COLUMNS = ("experiment", "dataset", "method", "median_rel_error", "no_change_error", "ratio_to_no_change", "lds_vs_real",
           "surrogate_ratio", "s_per_subset", "s_real_per_subset", "speedup")


def _ratio(a, b):
  return a / b if a is not None and b not in (None, 0) else None


def _loo(datasets: dict, method: str, key: str):
  return datasets.get(method, {}).get(key)


def rows(experiment: str, summary: dict) -> list[dict]:
  """The table's rows of one summary (one per dataset of its estimator block: every experiment
  writes the same keys, `ksurrogate.estimators.EstimatorReport.to_summary`)."""
  out = []
  for dataset, e in summary.get("estimator", {}).items():
    d = summary.get("datasets", {}).get(dataset, {})
    # the surrogate ratio: a kernel fitted on estimates over one fitted on real outcomes, scored
    # on the truth the experiment has (modular: the same subsets, on the fine-tuning LOO; icl: on
    # the real swaps)
    if experiment == "modular":
      sur = _ratio(_loo(d, "kernel_estimated_same", "loo_finetune_pearson"), _loo(d, "kernel_finetuned", "loo_finetune_pearson"))
    elif experiment == "icl":
      sur = _ratio(_loo(d, "kernel_estimated", "swap_pearson"), _loo(d, "kernel_exact", "swap_pearson"))
    else:
      sur = _ratio(_loo(d, "kernel_estimated", "loo_pearson"), _loo(d, "kernel_exact", "loo_pearson"))
    out.append({"experiment": experiment, "dataset": dataset, "method": e.get("solver", "-"),
                "median_rel_error": e.get("median_relative_error"), "no_change_error": e.get("no_change_median_relative_error"),
                "ratio_to_no_change": e.get("ratio_to_no_change"), "lds_vs_real": e.get("lds_vs_real"),
                "surrogate_ratio": sur, "s_per_subset": e.get("seconds_per_subset"),
                "s_real_per_subset": e.get("seconds_real_per_subset"), "speedup": e.get("speedup_with_setup")})
  return out


def _cell(v):
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return "-"
  if isinstance(v, float) and 0 < abs(v) < 1e-2:
    return f"{v:.2g}"     # seconds per estimated subset: three decimals would print 0.000
  return v


def main(argv):
  del argv
  given = {name: flag.value for name, flag in _DIRS.items() if flag.value}
  if not given:
    raise app.UsageError("--modular, --morl, --icl: give at least one finished run's workdir")
  table = []
  for name, workdir in given.items():
    path = pathlib.Path(workdir) / "summary.json"
    if not path.is_file():
      raise app.UsageError(f"--{name}: no summary.json in {workdir} (run the experiment first)")
    table += rows(name, json.loads(path.read_text()))
  print(report.table([{k: _cell(r[k]) for k in COLUMNS} for r in table], list(COLUMNS)))
  print("targets (issue 17): ratio_to_no_change <= 0.5, lds_vs_real >= 0.8, surrogate_ratio >= 0.9, speedup >= 100")


if __name__ == "__main__":
  app.run(main)
