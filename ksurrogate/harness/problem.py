"""What an experiment hands the driver: its Problems (outcomes, splits, truths, readouts), the
Protocol that yields them, and the in-memory Result of scoring one; the score names."""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from ksurrogate import families as families_lib
from ksurrogate import metrics


CORRELATIONS = metrics.LOO_CORRELATIONS
LOO_SCORES = (*CORRELATIONS, "magnitude_error")   # against a LOO truth; magnitude_error sees scale
RESPLIT_METRICS = ("lds", "normalized_error")
HIGHER_IS_BETTER = {"lds": True, "normalized_error": False, "magnitude_error": False}   # correlations: higher is better
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
  pairs: [(a, b)] task pairs: the truth's rows are these pairs, not the K tasks ([P, T] or
  [R, P, T]), measured by leave-two-out runs; `of` says what each row holds: "drop" the effect of
  removing both, F(1 - e_a - e_b) - F(1), or "interaction" F(1) - F(1 - e_a) - F(1 - e_b) +
  F(1 - e_a - e_b) (`attribution.interactions`). With readout None every fitted surrogate is read
  the same way, an additive one included (its interactions are 0), so the scores say how much of
  a pair's joint effect each family gets.
  """
  effects: np.ndarray
  readout: Optional[Callable] = None
  predictions: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  pairs: Optional[Sequence[tuple[int, int]]] = None
  of: str = "drop"

  def __post_init__(self):
    if self.of not in ("drop", "interaction"):
      raise ValueError(f"of: expected 'drop' or 'interaction', got {self.of!r}")
    if self.of != "drop" and self.pairs is None:
      raise ValueError(f"of={self.of!r}: needs pairs (the rows it describes); a truth without pairs is per task")
    if self.readout is not None and self.pairs is not None:
      raise ValueError("readout and pairs: give one; pairs are read by the predicted drop-two effects")
    if self.pairs is not None:
      pairs = np.asarray(self.pairs)
      if (pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer)
          or np.any(pairs[:, 0] == pairs[:, 1]) or np.any(pairs < 0)):
        raise ValueError(f"pairs: expected [(a, b)] of two different task ids >= 0, got {self.pairs!r}")
      if self.repeats.shape[1] != len(pairs):
        raise ValueError(f"effects: {self.repeats.shape[1]} rows for {len(pairs)} pairs")

  @property
  def is_loo(self) -> bool:
    """Whether surrogates are read by their predicted leave-one-out (no readout, no pairs)."""
    return self.readout is None and self.pairs is None

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
  it stands in for.

  Args:
    problem: the `Problem` (its outcome sources, truths and `estimates_of`).
    families: the families fitted on it.
    methods: the names of the methods scored (surrogates and the truths' other predictions).

  Returns:
    [(a, b)] method names, each pair once, both scored.
  """
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
