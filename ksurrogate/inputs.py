"""What a surrogate is fitted on: subsets, task weights or mixture proportions, and the feature map
applied to them before the kernel or the linear model sees them.

Three input domains, told apart by the values (`as_inputs`):
  subsets  bool / 0-1 rows: which tasks are in (removing task k flips bit k);
  simplex  non-negative rows summing to 1 (mixture proportions; removing domain k sets its
           weight to 0 and renormalizes the rest);
  weights  any other non-negative rows (task weights; removing task k sets its weight to 0).
A row of zeros and ones is a subset even when it sums to 1; pass `simplex=True` to read one-hot
mixtures as mixtures.

Feature maps (`InputMap`), applied elementwise: identity, sqrt, and log(1 + r / eps), which is
log(r + eps) shifted by the constant -log(eps): the RBF kernel and a linear model with an
intercept see the same thing as with log(r + eps), and a weight of 0 still maps to 0, so every
map keeps "task absent" at the origin and every mapped feature non-negative. Proportions of LM
pre-training mixtures act on losses roughly through their logarithm (a domain going from 0.1 % to
1 % of the tokens matters as much as 10 % to 100 %), which is why the log map exists.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from ksurrogate import _checks
from ksurrogate._util import x64

DOMAINS = ("subsets", "simplex", "weights")
MAP_NAMES = ("identity", "sqrt", "log")
EPS_GRID = (1e-4, 1e-3, 1e-2)   # log(1 + r / eps): 1e-3 is the precision the RegMix proportions carry
SIMPLEX_ATOL = 1e-2             # proportions rounded to 3 decimals over 17 domains sum to 1 +- 0.0085


@dataclasses.dataclass(frozen=True)
class InputMap:
  """An elementwise feature map r -> phi(r) of non-negative inputs: "identity", "sqrt" or "log"
  (log(1 + r / eps)). Hashable, so a fitted surrogate carries it as static data."""
  name: str = "identity"
  eps: float = 0.0

  def __post_init__(self):
    if self.name not in MAP_NAMES:
      raise ValueError(f"input_map: unknown map {self.name!r}; expected one of {list(MAP_NAMES)}")
    if self.name == "log" and not (np.isfinite(self.eps) and self.eps > 0):
      raise ValueError(f"input_map: log(1 + r / eps) needs a finite eps > 0, got {self.eps!r}")
    if self.name != "log" and self.eps != 0.0:
      raise ValueError(f"input_map: eps belongs to the log map only, got eps={self.eps!r} for {self.name!r}")

  @x64
  def __call__(self, X):
    """phi(X), elementwise, as a float64 jnp array (differentiable: jax.grad goes through it)."""
    X = jnp.asarray(X, jnp.float64)
    if self.name == "sqrt":
      return jnp.sqrt(X)
    if self.name == "log":
      return jnp.log1p(X / self.eps)
    return X

  def __str__(self) -> str:
    return f"log(1 + r / {self.eps:g})" if self.name == "log" else self.name


IDENTITY = InputMap()


def default_maps(domain: str) -> tuple[InputMap, ...]:
  """The maps cross-validated when none is given: the identity alone on subsets (today's
  surrogates), identity, sqrt and log(1 + r / eps) for eps in `EPS_GRID` on real inputs.

  Args:
    domain: "subsets", "simplex" or "weights".

  Returns:
    A tuple of `InputMap`s.
  """
  if domain == "subsets":
    return (IDENTITY,)
  return (IDENTITY, InputMap("sqrt"), *(InputMap("log", e) for e in EPS_GRID))


def candidate_maps(input_map, domain: str) -> tuple[InputMap, ...]:
  """The maps a fit chooses among: `input_map` None -> `default_maps(domain)`; "identity" /
  "sqrt" / an `InputMap` -> that one; "log" -> log(1 + r / eps) for eps in `EPS_GRID`; a sequence
  of these -> all of them (in order, duplicates dropped).

  Args:
    input_map: None, a map name, an `InputMap`, or a sequence of names and maps.
    domain: the inputs' domain, read only when input_map is None.

  Returns:
    A tuple of distinct `InputMap`s.

  Raises:
    ValueError: on an empty sequence or an entry that is not a name or an `InputMap` (an unknown
      name is refused by `InputMap` itself).
  """
  if input_map is None:
    return default_maps(domain)
  items = [input_map] if isinstance(input_map, (str, InputMap)) else list(input_map)
  if not items:
    raise ValueError("input_map: an empty sequence of maps; pass None for the default ones")
  out = []
  for item in items:
    if isinstance(item, InputMap):
      out.append(item)
    elif item == "log":
      out += [InputMap("log", e) for e in EPS_GRID]
    elif isinstance(item, str):
      out.append(InputMap(item))
    else:
      raise ValueError(f"input_map: expected None, a map name in {list(MAP_NAMES)}, an InputMap or a sequence of "
                       f"them, got {item!r}")
  return tuple(dict.fromkeys(out))


def as_inputs(X, name: str = "X", *, simplex: bool | None = None, num_tasks: int | None = None):
  """Validates inputs [m, K]; returns (array, domain): bool for "subsets" (as
  `_checks.as_subsets`), float64 for "simplex" / "weights".

  simplex: None reads the domain from the values (0/1 rows: subsets; rows summing to 1 within
  `SIMPLEX_ATOL`: simplex; else weights); True requires every row to sum to 1; False reads real
  rows as weights. NaN / inf, negative values and (with simplex=True) rows off the simplex are
  refused in one line each.

  Args:
    X: [m, K] bool or numbers.
    name: the argument's name in error messages.
    simplex: how real-valued rows are read (above).
    num_tasks: K the inputs must have, or None for any.

  Returns:
    (array [m, K], domain): bool for "subsets", float64 for "simplex" and "weights".

  Raises:
    ValueError: when X is not 2-d, has the wrong number of columns, is not numeric, holds NaN / inf
      or negative values, or (simplex=True) has a row that does not sum to 1.
  """
  arr = np.asarray(X)
  if arr.ndim != 2:
    raise ValueError(f"{name}: expected a 2-d [rows, num_tasks] matrix of subsets, weights or proportions, got shape "
                     f"{arr.shape}")
  if num_tasks is not None and arr.shape[1] != num_tasks:
    raise ValueError(f"{name}: has {arr.shape[1]} task columns but the surrogate was fitted on K={num_tasks}")
  if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.number):
    raise ValueError(f"{name}: expected numbers (0/1 subsets, weights or proportions), got dtype {arr.dtype}")
  if simplex is not True and (arr.dtype == np.bool_ or np.all((arr == 0) | (arr == 1))):
    return _checks.as_subsets(arr, name), "subsets"
  arr = np.asarray(arr, np.float64)
  _checks.finite(arr, name, row="row", col="column")
  if np.any(arr < 0):
    r, c = np.argwhere(arr < 0)[0]
    raise ValueError(f"{name}: weights must be non-negative, found {arr[r, c]:.4g} at row {r}, column {c}")
  sums = arr.sum(1)
  off = np.abs(sums - 1.0) > SIMPLEX_ATOL
  if simplex is True and off.any():
    r = int(np.flatnonzero(off)[0])
    raise ValueError(f"{name}: row {r} sums to {sums[r]:.4g}; simplex=True needs every row to sum to 1 (within "
                     f"{SIMPLEX_ATOL:g}; {int(off.sum())} rows do not), or pass simplex=False for task weights")
  if simplex is None:
    simplex = not off.any()
  return arr, "simplex" if simplex else "weights"


def check(X, domain: str, num_tasks: int, name: str = "S") -> np.ndarray:
  """Inputs to predict at, validated against the domain a surrogate was fitted on: subsets stay
  subsets (0/1 only), proportions must lie on the simplex, weights be non-negative.

  Args:
    X: [n, K] inputs.
    domain: the surrogate's domain ("subsets", "simplex" or "weights").
    num_tasks: K the surrogate was fitted on.
    name: the argument's name in error messages.

  Returns:
    bool [n, K] for "subsets", float64 [n, K] otherwise.

  Raises:
    ValueError: as `as_inputs` (and, for subsets, on entries that are not 0/1).
  """
  if domain == "subsets":
    return _checks.as_subsets(X, name, num_tasks=num_tasks)
  arr, _ = as_inputs(X, name, simplex=domain == "simplex", num_tasks=num_tasks)
  return np.asarray(arr, np.float64)


def domain_of(surrogate) -> str:
  """The input domain a fitted surrogate declares (`domain`); "subsets" when it declares none.

  Args:
    surrogate: any fitted surrogate.

  Returns:
    "subsets", "simplex" or "weights".

  Raises:
    ValueError: when the surrogate declares a domain that is none of these.
  """
  domain = getattr(surrogate, "domain", "subsets")
  if domain not in DOMAINS:
    raise ValueError(f"surrogate: {type(surrogate).__name__}.domain is {domain!r}; expected one of {list(DOMAINS)}")
  return domain


def reference(domain: str, num_tasks: int) -> np.ndarray:
  """The point removal effects are read at by default, [K]: every task present, the uniform
  mixture 1/K on the simplex and all ones otherwise (the full set).

  Args:
    domain: "subsets", "simplex" or "weights".
    num_tasks: K.

  Returns:
    float [K].
  """
  return np.full(num_tasks, 1.0 / num_tasks) if domain == "simplex" else np.ones(num_tasks)


def removed(at, drop, domain: str, name: str = "at") -> np.ndarray:
  """Rows of `at` [K] with the tasks of each row of `drop` (bool [P, K]) removed: weight 0, and on
  the simplex the remaining weights renormalized to sum 1. A removal that leaves no weight on
  the simplex is refused in one line.

  Args:
    at: float [K], the point removal starts from.
    drop: bool [P, K], the tasks each row removes.
    domain: the surrogate's domain; "simplex" renormalizes.
    name: the argument's name in error messages.

  Returns:
    float64 [P, K].

  Raises:
    ValueError: when, on the simplex, a row leaves no weight to renormalize.
  """
  at = np.asarray(at, np.float64)
  out = np.where(np.asarray(drop, bool), 0.0, at[None, :])
  if domain == "simplex":
    total = out.sum(1, keepdims=True)
    if np.any(total <= 0):
      r = int(np.flatnonzero(total[:, 0] <= 0)[0])
      raise ValueError(f"{name}: removing tasks {np.flatnonzero(drop[r]).tolist()} leaves no weight to renormalize "
                       "(the mixture holds only those domains)")
    out = out / total
  return out


def point(at, domain: str, num_tasks: int, name: str = "at") -> np.ndarray:
  """A readout point [K]: `reference` when None, else validated in the surrogate's domain.

  Args:
    at: None or one point [K].
    domain: the surrogate's domain.
    num_tasks: K.
    name: the argument's name in error messages.

  Returns:
    float64 [K].

  Raises:
    ValueError: when `at` is not 1-d or is invalid in the domain (`check`).
  """
  if at is None:
    return reference(domain, num_tasks)
  arr = np.asarray(at)
  if arr.ndim != 1:
    raise ValueError(f"{name}: expected one point [K={num_tasks}], got shape {arr.shape}")
  return np.asarray(check(arr[None], domain, num_tasks, name)[0], np.float64)


def mapped(fit, input_map: InputMap | str, *, simplex: bool | None = None):
  """A fit function transformed to see phi(X) instead of X: `mapped(fit, m)(X, F, **kw)` checks
  X (`as_inputs`), fits `fit(phi(X), F, **kw)` and returns that surrogate carrying `m` and X's
  domain, so its `predict` takes the raw inputs again. For fits that take their features as
  given (`parity.official_krr`, `parity.official_lstsq`, `surrogates.solve_kernel`); `fit_kernel`
  and `fit_linear` take `input_map=` themselves and choose it by CV.

  Args:
    fit: a fit function `fit(features [m, K], F, **options)` returning a surrogate with `replace`.
    input_map: one map: a name ("identity", "sqrt") or an `InputMap` (the log map with its eps).
    simplex: how real-valued rows are read (`as_inputs`).

  Returns:
    `fit_mapped(X, F, **options)`, returning the fitted surrogate with `input_map` and `domain` set.

  Raises:
    ValueError: when input_map names more than one map (e.g. "log" without an eps).
  """
  maps = candidate_maps(input_map, "weights")
  if len(maps) != 1:
    raise ValueError(f"input_map: mapped() takes one map, got {[str(m) for m in maps]}; name the log map's eps, e.g. "
                     "InputMap('log', 1e-3)")
  m = maps[0]

  def fit_mapped(X, F, **options):
    arr, domain = as_inputs(X, simplex=simplex)
    features = np.asarray(m(np.asarray(arr, np.float64)))
    return fit(features, F, **options).replace(input_map=m, domain=domain)

  fit_mapped.__name__ = f"mapped_{getattr(fit, '__name__', 'fit')}"
  return fit_mapped


def features(X, maps: Sequence[InputMap]) -> jnp.ndarray:
  """phi_i(X) for every map, stacked [len(maps), m, K] in float64.

  Args:
    X: [m, K] inputs (already validated).
    maps: the `InputMap`s to apply.

  Returns:
    float64 [len(maps), m, K].
  """
  X = jnp.asarray(X, jnp.float64)
  return jnp.stack([m(X) for m in maps])
