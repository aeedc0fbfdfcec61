"""ksurrogate: task attribution with kernel surrogate models, in JAX.

Every stage is a public module (`ks.subsets`, `ks.training`, `ks.features`, `ks.projection`, `ks.estimation`,
`ks.estimators`, `ks.inputs`, `ks.surrogates`, `ks.linear`, `ks.attribution`, `ks.mixtures`, `ks.baselines`,
`ks.metrics`, `ks.diagnostics`, ...); the names
most code needs are also here at the top level. The harness that runs experiments (run
directories, the driver, figures, storage) is `ksurrogate.harness`, imported only where it is used.
Importing `ksurrogate` changes no global state (no matplotlib backend, no JAX listener).
"""
from ksurrogate import attribution
from ksurrogate import baselines
from ksurrogate import batching
from ksurrogate import diagnostics
from ksurrogate import estimation
from ksurrogate import estimators
from ksurrogate import features
from ksurrogate import inputs
from ksurrogate import kernels
from ksurrogate import linear
from ksurrogate import linearization
from ksurrogate import ceilings
from ksurrogate import intervals
from ksurrogate import metrics
from ksurrogate import mixtures
from ksurrogate import parity
from ksurrogate import projection
from ksurrogate import subsets
from ksurrogate import surrogates
from ksurrogate import training
from ksurrogate.attribution import interactions
from ksurrogate.attribution import pair_interactions
from ksurrogate.attribution import predicted_drop
from ksurrogate.attribution import predicted_loo
from ksurrogate.attribution import shapley
from ksurrogate.attribution import suggest_subsets
from ksurrogate.batching import chunked_map
from ksurrogate.batching import map_subsets
from ksurrogate.estimation import OutputLoss
from ksurrogate.estimation import calibrate_ridge
from ksurrogate.estimation import estimate
from ksurrogate.estimation import solve
from ksurrogate.estimation import task_statistics
from ksurrogate.features import Features
from ksurrogate.features import featurize
from ksurrogate.inputs import InputMap
from ksurrogate.linearization import empirical_ntk_fn
from ksurrogate.linearization import linearize
from ksurrogate.estimators import EstimatorReport
from ksurrogate.estimators import Recipe
from ksurrogate.mixtures import select as select_mixture
from ksurrogate.surrogates import KernelSurrogate
from ksurrogate.surrogates import LinearSurrogate
from ksurrogate.surrogates import PairwiseSurrogate
from ksurrogate.surrogates import fit_kernel
from ksurrogate.surrogates import fit_linear
from ksurrogate.training import finetune_subsets
from ksurrogate.training import retrain_subsets
from ksurrogate.training import trainer

__version__ = "0.2.0"

__all__ = [
    # modules
    "attribution", "baselines", "batching", "ceilings", "diagnostics", "estimation", "estimators", "features", "inputs",
    "intervals", "kernels", "linear", "linearization", "metrics", "mixtures", "parity", "projection", "subsets", "surrogates",
    "training",
    # surrogates and readouts
    "KernelSurrogate", "LinearSurrogate", "PairwiseSurrogate", "InputMap", "fit_kernel", "fit_linear", "predicted_loo",
    "interactions", "pair_interactions", "predicted_drop", "shapley", "suggest_subsets", "select_mixture",
    # outcome sources
    "trainer", "retrain_subsets", "finetune_subsets", "map_subsets", "chunked_map",
    "Features", "featurize", "OutputLoss", "estimate", "solve", "calibrate_ridge", "task_statistics",
    "linearize", "empirical_ntk_fn", "Recipe", "EstimatorReport",
]
