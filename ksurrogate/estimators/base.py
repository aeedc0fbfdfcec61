"""The estimator interface: what an estimator prepares from, what it reports, and its registry.

An estimator is a frozen dataclass of settings with three methods:
  prepare(data, *, key, design, calibrate) -> state   the one-time work (features, kernels, statistics)
  estimate(state, S) -> (F [m, T], EstimatorReport)    outcomes of any subsets, in compiled chunks
  memory(sizes) -> Cost                                its cost rule: which space, how many bytes
and registers under its `solver` name (`register`), so `get(name)` finds it and an experiment's
config picks it by name. `Data` is any trainable params pytree with an output function over it
(the rest of a larger model closed over by that function), so a frozen base model with a
trainable adapter works as a whole trainable model does.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping, Optional

import numpy as np
import optax

from ksurrogate import _checks
from ksurrogate import estimation
from ksurrogate import features
from ksurrogate import metrics

OPTIMIZERS = ("sgd", "adam")
REGISTRY: dict[str, type] = {}


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A full-batch fine-tuning recipe from params0: optax.sgd(lr) (no momentum) or
  optax.adam(lr, b1, b2, eps), `steps` steps on the subset's weighted mean loss. The same object
  names the real fine-tune (`optax()`) and what the replaying estimators follow."""
  optimizer: str
  lr: float
  steps: int
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8

  def __post_init__(self):
    _checks.choice(self.optimizer, OPTIMIZERS, "recipe.optimizer")
    if not (isinstance(self.lr, (int, float)) and self.lr > 0):
      raise ValueError(f"recipe.lr: must be positive, got {self.lr!r}")
    if not (isinstance(self.steps, int) and self.steps >= 1):
      raise ValueError(f"recipe.steps: must be a positive integer, got {self.steps!r}")
    if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1 and self.eps >= 0):
      raise ValueError(f"recipe.b1: b1, b2 must lie in [0, 1) and eps >= 0, got {self.b1}, {self.b2}, {self.eps}")

  def optax(self, scale: float = 1.0) -> optax.GradientTransformation:
    """The recipe's optimizer, its learning rate times `scale`.

    Args:
      scale: the learning-rate multiplier.

    Returns:
      An `optax.GradientTransformation`.
    """
    if self.optimizer == "sgd":
      return optax.sgd(self.lr * scale)
    return optax.adam(self.lr * scale, self.b1, self.b2, self.eps)

  def scaled(self, scale: float) -> "Recipe":
    """This recipe with its learning rate multiplied by `scale`.

    Args:
      scale: the multiplier.

    Returns:
      A new `Recipe`.
    """
    return dataclasses.replace(self, lr=self.lr * float(scale))


@dataclasses.dataclass(frozen=True, eq=False)
class Data:
  """What an estimator is prepared from: the trainable parameters at theta0 and an output
  function over them, training examples with their tasks, target examples, the per-example loss.

  output_fn(params, (x, y)) -> [C] takes the trainable pytree `params0` only (a frozen base model
  is closed over by it); train = (X [N, ...], y [N, ...]) with task_ids [N] in [0, num_tasks);
  target = (X_t, y_t), or None for an estimator whose caller reads the solutions out itself
  (`Ridge.solve`); labels reach `loss.value(o [C], y)` unchanged. `output` names the output kind
  in reports (`features.output_fn`'s kinds, or the caller's function's name).
  """
  output_fn: Callable
  params0: Any
  train: tuple
  task_ids: Any
  target: Optional[tuple]
  loss: estimation.OutputLoss
  output: str = "custom"
  num_tasks: Optional[int] = None
  num_classes: Optional[int] = None   # set: labels are class ids, checked to lie in [0, num_classes)

  @classmethod
  def classifier(cls, apply_fn: Callable, params0, train, task_ids, target, *, output: str = "top1",
                 num_tasks: Optional[int] = None) -> "Data":
    """A classifier apply_fn(params, x_batch) -> logits, linearized through a provided output kind
    ("logits", "margin", "top<k>") and scored with its cross-entropy.

    Args:
      apply_fn: the classifier, apply(params, x [B, ...]) -> logits [B, num_classes].
      params0: its parameters at theta0 (all trainable).
      train: (X [N, ...], y [N]) training examples with integer labels.
      task_ids: int [N], each example's task.
      target: (X_t, y_t) target examples, or None.
      output: "logits", "margin" or "top<k>".
      num_tasks: K, or None to read it from task_ids.

    Returns:
      The `Data` (num_classes read from apply_fn's output shape).

    Raises:
      ValueError: on an unknown output, or a train that is not a non-empty (X, y) pair of one length.
    """
    X, _ = _pair(train, "train")
    return cls(features.output_fn(apply_fn, output), params0, train, task_ids, target, estimation.default_loss(output),
               output, num_tasks, features.num_classes(apply_fn, params0, X[0]))

  def checked(self):
    """(X, y, X_t, y_t, task_ids int32, num_tasks) as numpy, each input validated in one line.

    Returns:
      (X, y, X_t, y_t, task_ids int32 [N], num_tasks); X_t and y_t are None without a target.

    Raises:
      ValueError: when output_fn is not callable, loss is not an `OutputLoss`, train or target is not
        a non-empty (X, y) pair, a label is outside the classes, or task ids have another shape or
        lie outside [0, num_tasks).
    """
    if not callable(self.output_fn):
      raise ValueError(f"output_fn: expected a function (params, (x, y)) -> [C], got {type(self.output_fn).__name__}")
    if not isinstance(self.loss, estimation.OutputLoss):
      raise ValueError(f"loss: expected ksurrogate.OutputLoss, got {type(self.loss).__name__}")
    X, y = (np.asarray(a) for a in _pair(self.train, "train"))
    Xt, yt = (None, None) if self.target is None else (np.asarray(a) for a in _pair(self.target, "target"))
    if self.num_classes is not None:
      _checks.class_labels(y, self.num_classes, "train")
      if yt is not None:
        _checks.class_labels(yt, self.num_classes, "target")
    task_ids = np.asarray(self.task_ids)
    if task_ids.shape != (len(X),) or not np.issubdtype(task_ids.dtype, np.integer):
      raise ValueError(f"task_ids: expected integer shape ({len(X)},) (one task per training example), got "
                       f"{task_ids.dtype} {task_ids.shape}")
    K = int(task_ids.max()) + 1 if self.num_tasks is None else _checks.positive_int(self.num_tasks, "num_tasks")
    if task_ids.min() < 0 or task_ids.max() >= K:
      raise ValueError(f"task_ids: ids must lie in [0, num_tasks={K}); found {task_ids.min()}..{task_ids.max()}")
    return X, y, Xt, yt, task_ids.astype(np.int32), K


def _pair(data, name):
  if not (isinstance(data, (tuple, list)) and len(data) == 2):
    raise ValueError(f"{name}: expected a pair (X, y) of examples and labels")
  X, y = data
  if len(X) != len(y):
    raise ValueError(f"{name}: has {len(y)} labels for {len(X)} examples")
  if len(X) == 0:
    raise ValueError(f"{name}: no examples")
  return X, y


@dataclasses.dataclass(frozen=True)
class Sizes:
  """The sizes a cost rule needs: examples, outputs per example, parameters, tasks."""
  num_train: int
  num_target: int
  num_outputs: int
  num_params: int
  num_tasks: int
  num_groups: int = 1     # parameter arrays (leaves of params0), for per-array preconditioner groups


@dataclasses.dataclass(frozen=True)
class Cost:
  """An estimator's state in memory: the space it works in, its bytes, and what they hold."""
  space: str
  bytes: int
  what: str


@dataclasses.dataclass(frozen=True)
class EstimatorReport:
  """How an estimate was made and what it cost, and (`scored`) how well it stands in for the real
  outcomes it replaces. Every experiment's summary block is `to_summary()`, so every experiment
  has the same keys; what only one experiment measures goes in `details`.

  Seconds: `seconds_setup` is `prepare` (its compilation included); `seconds_compile` the
  per-subset programs' compilation, timed apart (ahead of time); `seconds_per_subset` the steady
  state (the chunks after the first, whose first run also pays one-time costs).
  """
  solver: str
  space: str
  dim: int
  output: str
  memory_bytes: int
  num_estimated: int
  seconds_setup: float
  seconds_compile: float
  seconds_per_subset: float
  ridge: Optional[float] = None
  step_scale: Optional[float] = None
  recipe: Optional[Recipe] = None
  calibration: Optional[Mapping] = None       # {ridge or step scale: its calibration error}
  num_calibration: Optional[int] = None       # real outcomes the calibration used
  # against the real outcomes (`scored`)
  num_scored: Optional[int] = None
  median_relative_error: Optional[float] = None
  mean_relative_error: Optional[float] = None
  no_change_median_relative_error: Optional[float] = None
  ratio_to_no_change: Optional[float] = None
  lds_vs_real: Optional[float] = None
  no_change_lds_vs_real: Optional[float] = None
  linearization_error: Optional[float] = None
  linearization_error_mean: Optional[float] = None
  seconds_real_per_subset: Optional[float] = None
  seconds_real_compile: Optional[float] = None
  details: Mapping = dataclasses.field(default_factory=dict)
  skipped: Mapping = dataclasses.field(default_factory=dict)

  def scored(self, F_hat, F_real, *, F_base, lds_rows=None, linearization_errors=None,
             seconds_real_per_subset: Optional[float] = None, seconds_real_compile: Optional[float] = None,
             details: Optional[Mapping] = None, skipped: Optional[Mapping] = None) -> "EstimatorReport":
    """This report with the estimate F_hat [m, T] scored against the real outcomes F_real it
    stands in for (median / mean relative error, LDS) beside the no-change guess F_base ([T]
    theta0's own outcome, or [m, T] a per-subset baseline, whose LDS is then scored too).

    Args:
      F_hat: [m, T] estimates of the scored subsets.
      F_real: [m, T] their real outcomes.
      F_base: the no-change outcome, [T] or [m, T].
      lds_rows: rows the LDS is scored on (default: all).
      linearization_errors: the real outcomes' first-order errors (`diagnostics.linearization_error`).
      seconds_real_per_subset: one real outcome's steady-state seconds (the speed-ups' reference).
      seconds_real_compile: the real outcomes' one-time seconds.
      details: the experiment's own figures, added to `details`.
      skipped: the reasons the experiment's own figures are None, added to `skipped`.

    Returns:
      A new EstimatorReport; a figure undefined on the data is None with its reason in `skipped`.
    """
    F_hat, F_real = np.asarray(F_hat), np.asarray(F_real)
    base = np.broadcast_to(np.asarray(F_base), F_real.shape)
    rows = np.arange(len(F_real)) if lds_rows is None else np.asarray(lds_rows)
    skipped = {**self.skipped, **(skipped or {})}
    err = metrics.attempt(skipped, "median_relative_error", metrics.relative_error, F_hat, F_real) or {}
    no_change = metrics.attempt(skipped, "no_change_median_relative_error", metrics.relative_error, base, F_real) or {}

    def lds(key, P):
      if len(rows) < 3:   # a rank correlation over two subsets is +-1 whatever the estimate
        skipped[key] = f"rows: {len(rows)} scored subsets, the LDS needs at least 3"
        return None
      return metrics.attempt(skipped, key, metrics.lds, P[rows], F_real[rows])

    median, baseline = err.get("median"), no_change.get("median")
    lin = None if linearization_errors is None else np.asarray(linearization_errors)
    return dataclasses.replace(
        self, num_scored=int(len(F_real)), median_relative_error=median, mean_relative_error=err.get("mean"),
        no_change_median_relative_error=baseline,
        ratio_to_no_change=median / baseline if median is not None and baseline else None,
        lds_vs_real=lds("lds_vs_real", F_hat),
        no_change_lds_vs_real=lds("no_change_lds_vs_real", base) if np.ndim(F_base) == 2 else None,
        linearization_error=None if lin is None else float(np.median(lin)),
        linearization_error_mean=None if lin is None else float(np.mean(lin)),
        seconds_real_per_subset=seconds_real_per_subset, seconds_real_compile=seconds_real_compile,
        details={**self.details, **(details or {})}, skipped=skipped)

  def to_summary(self) -> dict:
    """The summary block: every field (the recipe as a dict, calibration keys as text) and the
    speed-ups against one real outcome, steady state alone and with the setup shared over the
    estimated subsets.

    Returns:
      A dict of every field plus "speedup_per_subset" and "speedup_with_setup" (None without a real
      outcome's seconds).
    """
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    out["recipe"] = None if self.recipe is None else dataclasses.asdict(self.recipe)
    out["calibration"] = None if self.calibration is None else {str(k): v for k, v in self.calibration.items()}
    out["details"], out["skipped"] = dict(self.details), dict(self.skipped)
    real = self.seconds_real_per_subset
    with_setup = self.seconds_per_subset + self.seconds_setup / max(self.num_estimated, 1)
    out["speedup_per_subset"] = real / self.seconds_per_subset if real and self.seconds_per_subset > 0 else None
    out["speedup_with_setup"] = real / with_setup if real and with_setup > 0 else None
    return out


class Estimator:
  """Base of every estimator: a frozen dataclass of settings (subclasses), registered by
  `solver`. `requires_calibration`: `prepare` needs real outcomes to tune its one scalar."""
  solver: ClassVar[str] = ""

  @property
  def requires_calibration(self) -> bool:
    return False

  def prepare(self, data: Data, *, key=None, design=None, calibrate=None):
    """The one-time work (features, kernels, statistics) an estimate of any subsets reuses.

    Args:
      data: the model, examples and loss (`Data`).
      key: a `jax.random.key` for a projection, where the estimator has one.
      design: bool [m, K], the subsets to be estimated, for estimators whose state depends on them.
      calibrate: (S_cal [c, K], F_cal [c, T]) real outcomes of a few subsets, for estimators that
        tune one scalar on them.

    Returns:
      The estimator's state, which `estimate` reads.
    """
    raise NotImplementedError

  def estimate(self, state, S):
    """Outcomes of subsets from a prepared state, in compiled chunks.

    Args:
      state: what `prepare` returned.
      S: bool [m, K] subsets.

    Returns:
      (F_hat [m, T] target losses, `EstimatorReport`).
    """
    raise NotImplementedError

  def memory(self, sizes: Sizes) -> Cost:
    """The estimator's cost rule: the space its state lives in and its bytes.

    Args:
      sizes: the problem's `Sizes`.

    Returns:
      A `Cost`.
    """
    raise NotImplementedError


def register(cls):
  """Class decorator: `get(cls.solver)` returns it.

  Args:
    cls: an `Estimator` subclass with a `solver` name not registered yet.

  Returns:
    cls itself.

  Raises:
    ValueError: when the solver name is empty or taken.
  """
  if not cls.solver or cls.solver in REGISTRY:
    raise ValueError(f"solver: {cls.__name__} needs a new solver name, got {cls.solver!r}")
  REGISTRY[cls.solver] = cls
  return cls


def get(solver: str) -> type:
  """The estimator class registered as `solver`.

  Args:
    solver: a registered name ("onestep", "newton", "replay", "linearized", ...).

  Returns:
    The estimator class.

  Raises:
    ValueError: on an unregistered name.
  """
  if solver not in REGISTRY:
    raise ValueError(f"solver: unknown estimator {solver!r}; expected one of {sorted(REGISTRY)}")
  return REGISTRY[solver]


def from_settings(solver: str, settings: Mapping) -> Estimator:
  """The `solver` estimator built from a shared pool of settings (an experiment's estimate
  section): each setting the estimator declares is passed, the others belong to other solvers.

  Args:
    solver: a registered name.
    settings: {setting: value}, a superset of what the estimator declares.

  Returns:
    The estimator instance.

  Raises:
    ValueError: on an unregistered name, or a setting value the estimator refuses.
  """
  cls = get(solver)
  names = {f.name for f in dataclasses.fields(cls)}
  return cls(**{k: v for k, v in settings.items() if k in names})
