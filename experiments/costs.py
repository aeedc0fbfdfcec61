"""The time cost model: counts whose compute cannot finish are refused before it starts, as the
memory model refuses arrays that cannot fit (each config's `checks` calls it)."""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional


# Time: counts whose compute cannot finish are refused, as memory is.
#
# A count's time is its units times a per-unit cost: the costs below stay under what
# `python benchmarks/costs.py` measures on this 2-core machine (it prints each measured cost beside
# its constant; BUILD_NOTES.md, "Every count bounded by its time", has the runs), and the figures
# leave out compilation, I/O and the other phases, so they are lower bounds of the real time: a
# refused count could not have finished within the bound either.
FIT_SECONDS = 0.002           # one fit of a standard family (CV over its grid if tuned), up to FIT_SUBSETS subsets
FIT_SUBSETS = 40
FIT_CUBIC_SECONDS = 4e-9      # x m^3 beyond that: the CV's eigendecompositions of m x m Grams
# Beyond ~1000 subsets fit_kernel may run Nystrom KRR on 1000 inducing subsets instead of exact
# KRR (whichever fits its memory budget): its cubic term is counted at most at that size.
FIT_CUBIC_MAX = 1000
BOOTSTRAP_SECONDS = 5e-9      # one bootstrap resample of one method, per (task x target) entry
# Dense float32 training or inference throughput (forward + backward), XLA on 2 cores: above the
# fastest measured (a throughput, so a bound on time needs the highest), near the cores' AVX2 peak.
TRAIN_FLOPS_PER_SECOND = 2e11
# Scoring: 1 h. Exact outcomes: 30 days of this machine's throughput, so that a config meant for an
# accelerator (~30x the throughput) passes here while a count no accelerator finishes in a day does not.
TIME_BOUNDS = {"eval": 3600.0, "compute": 30 * 86400.0}


@dataclasses.dataclass(frozen=True)
class Scored:
  """The sizes of one problem the driver scores: its declared split's `num_fit` fit rows (the
  re-splits refit every family on that many), and its `num_methods` leave-one-out predictions of
  `num_tasks` x `num_targets` effects bootstrapped against each of its `num_truths` ground truths
  (0: it has none, and nothing is resampled)."""
  num_fit: int
  num_tasks: int
  num_targets: int
  num_methods: int
  num_truths: int = 1


def fit_seconds(num_fits: int, num_subsets: int) -> float:
  """Seconds of `num_fits` surrogate fits on `num_subsets` subsets each.

  Args:
    num_fits: how many fits.
    num_subsets: the subsets each is fitted on.

  Returns:
    A lower bound of their seconds on this machine.
  """
  cubic = max(min(num_subsets, FIT_CUBIC_MAX) - FIT_SUBSETS, 0) ** 3
  return num_fits * (FIT_SECONDS + FIT_CUBIC_SECONDS * cubic)


def num_families(c, standard: int = 5) -> int:
  """The surrogate families `surrogates.families` names (`standard`: how many "standard" stands for)."""
  return standard if tuple(c.surrogates.families) == ("standard",) else len(c.surrogates.families)


def resplit_seconds(resplits: int, families: int, problems) -> tuple[float, str]:
  """(seconds, what) of `resplits` re-splits of every problem (`Scored`): every family refitted on
  each re-split's fit rows of the problem's exact outcomes (other outcome sources are fitted once)."""
  fits = resplits * families * len(problems)
  seconds = sum(fit_seconds(resplits * families, p.num_fit) for p in problems)
  sizes = sorted({p.num_fit for p in problems})
  size = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}..{sizes[-1]}"
  each = f" x {len(problems)} problems" if len(problems) > 1 else ""
  return seconds, f"{resplits} re-splits x {families} families{each} ({fits} fits of {size} subsets)"


def bootstrap_seconds(bootstrap: int, problems) -> tuple[float, str]:
  """(seconds, what) of `bootstrap` resamples of every problem's (`Scored`) methods against each of
  its ground truths."""
  entries = sum(p.num_methods * p.num_truths * p.num_tasks * p.num_targets for p in problems)
  if len(problems) == 1:
    (p,) = problems
    truths = f"{p.num_truths} truth{'' if p.num_truths == 1 else 's'}"
    what = f"{p.num_methods} methods x {truths} of {p.num_tasks} x {p.num_targets} effects"
  else:
    what = f"{entries} method x truth x effect entries of {len(problems)} problems"
  return BOOTSTRAP_SECONDS * bootstrap * entries, f"{bootstrap} bootstrap resamples x {what}"


def training_seconds(num_trainings: int, flops_per_training: float) -> float:
  """Seconds of `num_trainings` trainings (or inference passes) of `flops_per_training` FLOPs each
  at TRAIN_FLOPS_PER_SECOND (a lower bound: small models run below the dense throughput)."""
  return num_trainings * flops_per_training / TRAIN_FLOPS_PER_SECOND


def check_length(field: str, fewest: int, flops_each: float, noun: str, length: str) -> None:
  """Refuses a training length (`field`, `length` in words) that even the `fewest` trainings
  (`noun`) the count rules allow, `flops_each` FLOPs each, could not finish within
  TIME_BOUNDS["compute"]: checked before the counts, so that the line names the length."""
  check_time({field: (training_seconds(fewest, flops_each), f"{fewest} {noun} (the fewest the rules allow) of {length}")},
             TIME_BOUNDS["compute"])


def duration(seconds: float) -> str:
  """'42 s', '3.1 h', '2.0e+03 days'."""
  if seconds < 120:
    return f"{seconds:.0f} s"
  if seconds < 2 * 3600:
    return f"{seconds / 60:.0f} min"
  if seconds < 2 * 86400:
    return f"{seconds / 3600:.1f} h"
  return f"{seconds / 86400:.3g} days"


def check_time(estimates: Mapping[str, tuple[float, str]], bound: float) -> None:
  """Refuses counts that cannot finish: `estimates` maps the field that sets a count to (seconds,
  what); the longest above `bound` seconds is one ValueError line with both figures."""
  over = [(s, path, what) for path, (s, what) in estimates.items() if s > bound]
  if over:
    s, path, what = max(over, key=lambda o: o[0])
    raise ValueError(f"{path}: {what} would take at least ~{duration(s)} on this machine (bound {duration(bound)}); "
                     f"lower {path}")


def distinct_subsets(num_tasks: int, low: int, high: int) -> int:
  """How many distinct subsets of `num_tasks` tasks have `low`..`high` tasks."""
  return sum(math.comb(num_tasks, k) for k in range(max(low, 0), min(high, num_tasks) + 1))


def scoring_time(c, problems, *, extra: Optional[Mapping[str, tuple[float, str]]] = None) -> None:
  """The shared eval.* counts (`eval.resplits`, `eval.bootstrap`) of an experiment's problems
  (`Scored`, one per problem the driver scores) against TIME_BOUNDS["eval"], with the experiment's
  own scoring work (`extra`: {field: (seconds, what)}; an eval.* entry there replaces the driver's)."""
  problems = list(problems)
  check_time({"eval.resplits": resplit_seconds(c.eval.resplits, num_families(c), problems),
              "eval.bootstrap": bootstrap_seconds(c.eval.bootstrap, problems), **(extra or {})},
             TIME_BOUNDS["eval"])
