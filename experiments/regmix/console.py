"""The regmix experiment's console summary: its own tables (the learning curve with the paired
differences and their verdicts, the selected mixtures, the active choice of runs), from the stored
phase results, printed before the driver's."""
from __future__ import annotations

from ksurrogate.harness import report


def _cell(row: dict, key: str, scale: float = 100.0) -> str:
  if row is None or row.get(key) is None:
    return "n/a"
  se = row.get(f"{key}_se")
  return f"{scale * row[key]:.1f}" + ("" if se is None else f" ± {scale * se:.1f}")


def summary(curve: dict, selection: dict, active: dict) -> str:
  """The experiment's own tables for the console.

  Args:
    curve: the `learning_curve` phase's result.
    selection: the `mixture_selection` phase's result.
    active: the `active_selection` phase's result.

  Returns:
    Text: test Spearman x100 (± s.e.) of every family at every size, the paired differences of
    the `kernel` family (the default, chosen before any test score was seen) with their verdicts,
    the runs each family ranks first, the selected mixtures and the active choice of runs.
  """
  sizes = [str(s) for s in curve["sizes"]]
  rows = [{"family": f, **{f"n={s}": _cell(curve["scores"].get(f, {}).get(s), "spearman") for s in sizes},
           "fit s": f"{curve['fit_seconds'][f]:.1f}"} for f in curve["families"]]
  out = ["test Spearman x100 (mean of 13 targets) ± s.e. (bootstrap over test runs and re-drawn training sets)",
         report.table(rows, ["family", *[f"n={s}" for s in sizes], "fit s"]),
         f"fitting every family at every size: {curve['fit_seconds_total']:.0f} s (load average "
         f"{curve['load_before']:.1f} -> {curve['load_after']:.1f})"]
  pairs = [p for p in curve["comparisons"] if p.startswith("kernel-")]
  rows = [{"a - b": p, **{f"n={s}": (_cell(curve["comparisons"][p].get(s), "spearman") + " "
                                     + curve["comparisons"][p].get(s, {}).get("spearman_verdict", ""))
                          for s in sizes}} for p in pairs]
  if rows:
    out += ["paired test Spearman x100 differences, verdicts from the 95 % interval",
            report.table(rows, ["a - b", *[f"n={s}" for s in sizes]])]
  best = selection["best_measured"]["test"]
  rows = [{"family": f, "test rank": r["test"]["rank"], "test regret": f"{r['test']['regret']:.3f}",
           "train rank": r["train"]["rank"]} for f, r in selection["ranked_first"].items()]
  out += [f"the test run each family ranks first for {selection['target']} (of 256; best measured loss "
          f"{best['loss']:.3f})", report.table(rows, ["family", "test rank", "test regret", "train rank"])]
  rows = [{"pick": k, "predicted": f"{v['predicted']:.3f}",
           "posterior variance": "n/a" if v["variance"] is None else f"{v['variance']:.3f}",
           "nearest run (L1)": f"{v['nearest_run_l1']:.2f}"} for k, v in selection["selected"].items()]
  out += ["selected mixtures (posterior variance: the GP view's, in units of its prior variance 1)",
          report.table(rows, ["pick", "predicted", "posterior variance", "nearest run (L1)"])]
  need = {s: active[f"runs_needed_{s}"] for s in ("active", "random")}
  diff = active["runs_needed_active_minus_random"]
  out.append(f"runs to reach the full pool's test Spearman ({100 * active['full_pool_spearman']:.1f}, tolerance "
             f"{100 * active['tolerance']:.1f}): active {need['active']['runs']:.0f}, random {need['random']['runs']:.0f}; "
             f"active - random {diff['runs']:+.0f} (95 % [{diff['runs_ci95'][0]:.1f}, {diff['runs_ci95'][1]:.1f}]), {diff['verdict']}")
  return "\n".join(out)
