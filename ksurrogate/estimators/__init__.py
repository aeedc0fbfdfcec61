"""Estimators of F(S) from the model linearized at theta0: one interface, one file per solver.

  est = ks.estimators.Replay(recipe=ks.estimators.Recipe("adam", 1e-4, 100))     # or get("replay")(...)
  state = est.prepare(ks.estimators.Data.classifier(apply_fn, params0, (X, y), task_ids, (X_t, y_t)),
                      design=S)                 # the one-time work: features, kernels, statistics
  F_hat, report = est.estimate(state, S)        # [m, T] and an EstimatorReport
  block = report.scored(F_hat_ft, F_ft, F_base=F0).to_summary()   # the summary block of every experiment

Solvers (the one name each has in the library, the configs and the summaries):
  "onestep"     the ridge minimizer of the linearized loss, one Newton step from per-task statistics
  "newton"      the same minimizer by iterated Newton on all of the subset's examples
  "replay"      the fine-tuning recipe replayed in function space (exact NTK or projected features)
  "linearized"  the recipe run by optax on the unprojected linearized model (the accuracy reference)
An experiment with an estimator of its own (ICL's first-order expansion in embedding space) writes
its block through the same `EstimatorReport`. A new solver is one file here: a frozen dataclass
subclassing `Estimator` with `prepare`, `estimate`, `memory`, decorated with `register`, and its
import below; `tests/test_estimators.py` pins the solver list, and an experiment config that names
its solvers (`estimate.solvers` in tasks, the modular and morl rules) must admit the new name. A
variant of the ridge solvers also overrides `Ridge._solver_options`, which maps it onto
`estimation.solve`'s methods.
"""
from ksurrogate.estimators.base import Cost
from ksurrogate.estimators.base import Data
from ksurrogate.estimators.base import Estimator
from ksurrogate.estimators.base import EstimatorReport
from ksurrogate.estimators.base import Recipe
from ksurrogate.estimators.base import Sizes
from ksurrogate.estimators.base import from_settings
from ksurrogate.estimators.base import get
from ksurrogate.estimators.base import register
from ksurrogate.estimators.base import REGISTRY
from ksurrogate.estimators.linearized import Linearized
from ksurrogate.estimators.replay import Replay
from ksurrogate.estimators.ridge import Newton
from ksurrogate.estimators.ridge import Onestep
from ksurrogate.estimators.ridge import Ridge

SOLVERS = tuple(REGISTRY)

__all__ = ["Cost", "Data", "Estimator", "EstimatorReport", "Linearized", "Newton", "Onestep", "Recipe", "REGISTRY",
           "Replay", "Ridge", "SOLVERS", "Sizes", "from_settings", "get", "register"]
