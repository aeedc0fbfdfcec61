"""Surrogate families: the one interface every surrogate is fitted and read out through.

A family is a named fit, `family(S, F) -> surrogate`, on subsets S [m, K] and outcomes F [m, T].
The fitted surrogate has `predict(S) -> [n, T]` and *declares* the readouts it supports in a class
attribute `READOUTS` (a tuple of `READOUT_NAMES`: "loo" = `attribution.predicted_loo`,
"interactions", "shapley", "variance" = `predict_variance`); nothing is found by trying.

`standard()` is the list every experiment compares: the kernel surrogate tuned three ways and the
linear surrogate two ways,

  kernel           RBF KRR, (gamma, ridge) by K-fold CV on held-out MSE   (`fit_kernel`)
  kernel_lds       the same, CV by held-out-fold rank correlation (LDS)   (`fit_kernel(cv_metric="lds")`)
  kernel_official  the paper's released recipe: RBF with gamma = 1 / K on the indicators, a fixed
                   ridge, no centering                                     (`parity.official_krr`)
  linear           ridge regression with an intercept, ridge by K-fold CV  (`fit_linear`)
  linear_official  minimum-norm least squares, no intercept                (`parity.official_lstsq`)

Each family declares what it is compared against. A `baseline` family is a reference: every other
family is paired with every baseline (`comparison_pairs`: the driver reports each such pair on
every outcome source), so a new family is measured against the linear surrogates without
declaring anything, and a new baseline is measured by every other family. A non-baseline family
may also name its `counterpart`, the baseline fitted by the same recipe (`kernel` and `linear`
are both tuned by CV, the two `*_official` ones are the released code's): the selection
summaries report those like-for-like pairs (`counterpart_pairs`).

Adding a surrogate to every experiment is one `Family` in `standard()`; a user passes their own
(`Family("mine", my_fit)`) to the experiment's protocol instead. `fit_all` fits a
list of families on named outcome sources ("exact", "estimated", ...): the driver, the
experiments' selection phases and the regime study's active sampling all get their surrogates
from it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping, Optional, Protocol, Sequence

from ksurrogate import parity
from ksurrogate import subsets
from ksurrogate import surrogates

READOUT_NAMES = ("loo", "interactions", "shapley", "variance")


class Surrogate(Protocol):
  """What a family's fit returns."""
  READOUTS: ClassVar[tuple[str, ...]]

  def predict(self, S) -> Any:   # [n, T]
    """The surrogate's predictions at subsets S.

    Args:
      S: bool [n, K] subsets (or the inputs of the surrogate's domain).

    Returns:
      [n, T] predicted outcomes.
    """
    ...


def readouts(fitted) -> tuple[str, ...]:
  """The readouts a fitted surrogate declares (`READOUTS` on its class); refused when it declares
  none or names an unknown one.

  Args:
    fitted: a fitted surrogate.

  Returns:
    The declared readout names, a tuple.

  Raises:
    TypeError: when the class declares no READOUTS (or a str) or names an unknown readout.
  """
  declared = getattr(type(fitted), "READOUTS", None)
  if declared is None or isinstance(declared, str):
    raise TypeError(f"surrogate: {type(fitted).__name__} declares no READOUTS (a tuple of {READOUT_NAMES}); a family's "
                    "fit must return a surrogate that says which readouts it supports")
  unknown = [r for r in declared if r not in READOUT_NAMES]
  if unknown:
    raise TypeError(f"surrogate: {type(fitted).__name__}.READOUTS names unknown readouts {unknown}; "
                    f"expected some of {READOUT_NAMES}")
  return tuple(declared)


@dataclasses.dataclass(frozen=True)
class Family:
  """A surrogate family: `fit(S, F, **options)` with fixed `options`.

  baseline: True for a reference the other families are measured against (each non-baseline
  family is paired with each baseline one; see the module doc). counterpart: for a non-baseline
  family, the name of the baseline fitted by the same recipe, its like-for-like pair in the
  selection summaries (None: it has none). view: "task" fits the task-level indicators (the
  readouts are per task); "sample" fits a problem's sample-level indicators where it carries
  them (the official code's representation; no per-task readouts then) and the task-level ones
  elsewhere.
  """
  name: str
  fit: Callable[..., Surrogate]
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  baseline: bool = False
  counterpart: Optional[str] = None
  view: str = "task"

  def __post_init__(self):
    if not self.name or not self.name.replace("_", "").isalnum():
      raise ValueError(f"name: a family name is letters, digits and underscores, got {self.name!r}")
    if self.counterpart is not None and (self.baseline or self.counterpart == self.name):
      raise ValueError(f"counterpart: {self.name!r} is {'a baseline' if self.baseline else 'its own counterpart'}; "
                       "only a non-baseline family names the baseline it is paired with")
    if self.view not in ("task", "sample"):
      raise ValueError(f"view: must be 'task' or 'sample', got {self.view!r}")

  def __call__(self, S, F, **options) -> Surrogate:
    fitted = self.fit(S, F, **{**self.options, **options})
    readouts(fitted)
    return fitted


def _kernel_fit(S, F, *, num_inducing: Optional[int] = None, **options):
  # None: fit_kernel chooses exact or Nystrom KRR by memory; M: Nystrom on M inducing subsets for
  # every fit set larger than M (smaller ones are solved exactly).
  inducing = num_inducing if num_inducing is not None and len(S) > num_inducing else "auto"
  return surrogates.fit_kernel(S, F, num_inducing=inducing, **options)


def standard(*, cv: int = 5, num_inducing: Optional[int] = None, official_ridge: float = 1e-2,
             official_view: str = "task") -> list[Family]:
  """The five families every experiment compares (see the module doc). `official_ridge` is the
  released code's fixed ridge (1e-2 for modular arithmetic, 1e-1 for coin flip);
  `official_view="sample"` fits the official pair on sample-level indicators, as the released code
  does, where a problem carries them.

  Args:
    cv: the CV folds of the kernel and linear fits.
    num_inducing: None (the kernel fits choose exact or Nystrom KRR by memory) or M (Nystrom on M
      inducing subsets for every fit set larger than M).
    official_ridge: the fixed ridge of `kernel_official`.
    official_view: "task" or "sample", the view of the two official families.

  Returns:
    A list of five `Family`s: kernel, kernel_lds, kernel_official, linear, linear_official.
  """
  return [
      Family("kernel", _kernel_fit, {"cv": cv, "cv_metric": "mse", "num_inducing": num_inducing},
             counterpart="linear"),
      Family("kernel_lds", _kernel_fit, {"cv": cv, "cv_metric": "lds", "num_inducing": num_inducing}),
      Family("kernel_official", parity.official_krr, {"ridge": official_ridge}, counterpart="linear_official",
             view=official_view),
      Family("linear", surrogates.fit_linear, {"cv": cv}, baseline=True),
      Family("linear_official", parity.official_lstsq, baseline=True, view=official_view),
  ]


def comparison_pairs(families: Sequence[Family]) -> list[tuple[str, str]]:
  """The pairs the driver reports on every outcome source: each non-baseline family against each
  baseline one, in the order of `families`.

  Args:
    families: the families fitted.

  Returns:
    [(a, b)] family names, a compared against b.
  """
  bases = [f.name for f in families if f.baseline]
  return [(f.name, b) for f in families if not f.baseline for b in bases]


def counterpart_pairs(families: Sequence[Family]) -> list[tuple[str, str]]:
  """The like-for-like pairs the selection summaries report: each family that names a
  counterpart, with it, where `families` holds both.

  Args:
    families: the families fitted.

  Returns:
    [(a, b)] family names, a and its counterpart b.
  """
  names = {f.name for f in families}
  return [(f.name, f.counterpart) for f in families if f.counterpart in names]


def select(families: Sequence[Family], names: Optional[Sequence[str]]) -> list[Family]:
  """The families named (in the given order; None: all), refusing unknown names in one line.

  Args:
    families: the families to choose from.
    names: family names, or None for all.

  Returns:
    A list of `Family`s.

  Raises:
    ValueError: when a name is not among the families.
  """
  if names is None:
    return list(families)
  by_name = {f.name: f for f in families}
  unknown = [n for n in names if n not in by_name]
  if unknown:
    raise ValueError(f"families: unknown {unknown}; expected some of {list(by_name)}")
  return [by_name[n] for n in names]


def method_name(family: Family, source: str) -> str:
  """How a family fitted on an outcome source is named in summaries: `<family>_<source>`.

  Args:
    family: the `Family`.
    source: the outcome source's name ("exact", "estimated", ...).

  Returns:
    The str name.
  """
  return f"{family.name}_{source}"


def fit_all(families: Sequence[Family], sources: Mapping[str, tuple], *, skipped: Optional[dict] = None) -> dict:
  """Every family fitted on every outcome source: {`<family>_<source>`: surrogate}.

  sources: {name: (S, F)} or {name: (S, F, W)} with W the sample-level indicators of the same
  rows (used by families whose view is "sample"). Repeated subsets are merged first (their
  outcomes averaged, quietly: sampled designs repeat subsets). A fit that refuses its data (a
  ValueError, e.g. too few distinct subsets to cross-validate) raises, or, with `skipped`, is
  left out and its one-line reason stored under the method's name.

  Args:
    families: the `Family`s to fit.
    sources: {name: (S bool [m, K], F [m, T])} or {name: (S, F, W [m, n])}.
    skipped: a dict that collects {method name: one-line reason} of fits that raised a ValueError,
      or None to let them raise.

  Returns:
    {`<family>_<source>`: fitted surrogate}, in source-then-family order, without skipped fits.

  Raises:
    ValueError: from a fit that refuses its data, when `skipped` is None.
  """
  out = {}
  for source, data in sources.items():
    S, F = data[0], data[1]
    W = data[2] if len(data) > 2 else None
    for family in families:
      X = W if family.view == "sample" and W is not None else S
      X, Y = subsets.deduplicate(X, F, warn=False)
      name = method_name(family, source)
      try:
        out[name] = family(X, Y)
      except ValueError as e:
        if skipped is None:
          raise
        skipped[name] = str(e).splitlines()[0]
  return out
