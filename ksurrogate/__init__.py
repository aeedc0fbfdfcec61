"""ksurrogate: task attribution with kernel surrogate models, in JAX."""
from ksurrogate import features
from ksurrogate import finetune
from ksurrogate import kernels
from ksurrogate import metrics
from ksurrogate import parity
from ksurrogate import subsets
from ksurrogate.attribution import interactions
from ksurrogate.attribution import predicted_loo
from ksurrogate.attribution import shapley
from ksurrogate.attribution import suggest_subsets
from ksurrogate.surrogates import KernelSurrogate
from ksurrogate.surrogates import LinearSurrogate
from ksurrogate.surrogates import fit_kernel
from ksurrogate.surrogates import fit_linear
from ksurrogate.estimate import calibrate_ridge
from ksurrogate.estimate import estimate
from ksurrogate.estimate import task_statistics
from ksurrogate.linearize import empirical_ntk_fn
from ksurrogate.linearize import linearize

__version__ = "0.1.0"
