"""`modular`: task attribution for transformers trained on modular arithmetic.

Tasks are the blocks (x // bar, y // bar) of the input grid; outcomes are per-example validation
cross-entropies. Compared per task: kernel / linear surrogates on exact retrains and on estimated
outcomes, the paper's own surrogate pair, influence functions, TracIn and a TRAK-style score,
against real leave-one-out. Configs, their commands, runtimes and results: `config.py`.
"""
from __future__ import annotations

from experiments.modular.config import DESCRIPTIONS  # noqa: F401
from experiments.modular.config import get_config  # noqa: F401
from experiments.modular.config import validate  # noqa: F401
from experiments.modular import study
from experiments.modular.pipeline import problems
from ksurrogate import parity
from ksurrogate.harness import driver
from ksurrogate.surrogates import fit_kernel

DEFAULT_CONFIG = "cpu"


def methods(config, problem: driver.Problem) -> dict:
  s = config.surrogates

  def kernel(S, F):
    if s.num_inducing is not None and len(S) > s.num_inducing:   # the user's own Nystrom size
      return fit_kernel(S, F, cv=s.cv, num_inducing=s.num_inducing)
    return fit_kernel(S, F, cv=s.cv)   # exact or Nystrom: fit_kernel chooses by memory

  return {
      # one pair per outcome source: exact retrains, estimates, real fine-tunes, estimates of those
      **driver.surrogate_methods(cv=s.cv, data=("exact", *problem.extra_fit), kernel=kernel),
      # The paper's own pair of surrogates (its released code's recipe, on task-level indicators):
      # fixed-gamma RBF KRR and minimum-norm least squares without intercept or ridge.
      "official_krr_exact": driver.Method("official_krr_exact", lambda S, F: parity.official_krr(S, F, ridge=1e-2)),
      "official_lstsq_exact": driver.Method("official_lstsq_exact", parity.official_lstsq),
  }


def protocol(config) -> driver.Protocol:
  if config.study.enabled:   # the regime study: one problem per (rate, budget) cell, compared across cells
    return driver.Protocol(name="modular", problems=study.problems, methods=methods, plot_method="kernel_exact",
                           across=study.across)
  return driver.Protocol(name="modular", problems=problems, methods=methods, plot_method="kernel_exact")
