"""Surrogates of mixtures: local attribution and choosing a mixture.

A surrogate fitted on mixture proportions (rows on the simplex, `ksurrogate.inputs`) or task
weights predicts F at any mixture. Beside the removal readouts of `ksurrogate.attribution`
(`predicted_loo(g, at=r)`, `interactions(g, at=r)`: a domain's weight to 0, the rest renormalized)
this module reads:
  gradient(g, at)   d g / d r at a mixture (`jax.jacfwd` of the surrogate's pure `apply`): how
                    each target moves as weight shifts toward each domain;
  hessian(g, at)    second derivatives: pairwise interactions in the small;
and picks a mixture (`select`):
  "regmix"          the RegMix recipe (Liu et al., ICLR 2025): sample mixtures from a Dirichlet
                    prior fitted to the observed mixtures, predict, average the top k;
  "gradient"        exponentiated-gradient (mirror) descent on the simplex through the
                    differentiable surrogate, from the best sampled mixtures.
On the simplex, derivatives are projected on its tangent space (the directions that keep the
sum at 1): component k of the gradient is the rate of change when weight moves to domain k from
all domains evenly.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ksurrogate import _checks
from ksurrogate import families
from ksurrogate import inputs
from ksurrogate._util import x64

METHODS = ("regmix", "gradient")


def _pure(surrogate):
  """The surrogate's differentiable prediction X [n, K] -> [n, T] (`apply`), or one line why not."""
  fn = getattr(surrogate, "apply", None)
  if fn is None:
    raise ValueError(f"surrogate: {type(surrogate).__name__} has no differentiable `apply`; gradients, Hessians and the "
                     "gradient selection need one (every ksurrogate surrogate has it)")
  return fn


def _mixture_surrogate(surrogate, what: str) -> str:
  domain = inputs.domain_of(surrogate)
  if domain == "subsets":
    raise ValueError(f"surrogate: {what} is read on task weights or mixtures; this surrogate was fitted on subsets "
                     "(use ksurrogate.interactions / shapley there)")
  return domain


def _tangent(K: int, domain: str) -> np.ndarray:
  return np.eye(K) - np.full((K, K), 1.0 / K) if domain == "simplex" else np.eye(K)


@x64
def gradient(surrogate, at=None) -> jax.Array:
  """Local attribution: d g_t / d r_k at a mixture (or task weights).

  Args:
    surrogate: fitted on mixtures or task weights, with a differentiable `apply`.
    at: the point [K] (default: the uniform mixture, or all weights 1), or points [n, K].

  Returns:
    [K, T] (or [n, K, T]): the gradient of each target, projected on the simplex's tangent space
    when the surrogate's inputs are mixtures. At a zero weight the sqrt map has no derivative: the
    readout then refuses in one line.
  """
  domain = _mixture_surrogate(surrogate, "the gradient")
  fn, K = _pure(surrogate), surrogate.num_tasks
  pts = _points(at, domain, K)
  J = jax.vmap(jax.jacfwd(lambda r: fn(r[None])[0]))(jnp.asarray(pts))     # [n, T, K]
  J = jnp.einsum("ntk,kj->njt", J, _tangent(K, domain))
  _checks.finite(np.asarray(J), "at", row="point", col="domain", what="gradient values")
  return J[0] if np.ndim(at) < 2 else J


@x64
def hessian(surrogate, at=None) -> jax.Array:
  """Pairwise interactions in the small: d^2 g_t / d r_j d r_k at one point [K] (default as in
  `gradient`), projected on the simplex's tangent space for mixtures.

  Args:
    surrogate: fitted on mixtures or task weights, with a differentiable `apply`.
    at: the point [K].

  Returns:
    [K, K, T], symmetric.
  """
  domain = _mixture_surrogate(surrogate, "the Hessian")
  fn, K = _pure(surrogate), surrogate.num_tasks
  (pt,) = _points(at, domain, K, one=True)
  H = jax.hessian(lambda r: fn(r[None])[0])(jnp.asarray(pt))               # [T, K, K]
  P = _tangent(K, domain)
  H = jnp.einsum("ij,tjk,kl->ilt", P, H, P)
  _checks.finite(np.asarray(H), "at", row="domain", col="domain", what="Hessian values")
  return H


def _points(at, domain: str, K: int, one: bool = False) -> np.ndarray:
  if at is None:
    return inputs.reference(domain, K)[None]
  arr = np.asarray(at)
  if arr.ndim == 1 or one:
    return inputs.point(arr, domain, K)[None]
  return inputs.check(arr, domain, K, "at")


# ----------------------------------------------------------------------------------------------
# A prior over mixtures.

@x64
def dirichlet_prior(mixtures) -> np.ndarray:
  """Dirichlet concentrations alpha [K] with the mean and the pooled variance of the observed
  mixtures [n, K] (moment matching: sum_k mu_k (1 - mu_k) / sum_k var_k = |alpha| + 1). Moments
  instead of maximum likelihood because observed mixtures hold exact zeros, where the Dirichlet
  log-likelihood is -inf.

  Args:
    mixtures: [n, K] rows on the simplex, n >= 2.

  Returns:
    alpha [K], every entry > 0.
  """
  X, _ = inputs.as_inputs(mixtures, "mixtures", simplex=True)
  if len(X) < 2:
    raise ValueError(f"mixtures: a Dirichlet prior needs at least 2 observed mixtures, got {len(X)}")
  mu = X.mean(0)
  var = X.var(0, ddof=1)
  if not np.any(var > 0):
    raise ValueError("mixtures: every observed mixture is the same; their spread gives no concentration")
  total = np.sum(mu * (1 - mu)) / np.sum(var) - 1.0
  return np.maximum(mu * max(total, 1e-3), 1e-4)


@x64
def sample_dirichlet(key, alpha, num_samples: int) -> jax.Array:
  """num_samples mixtures [n, K] from Dirichlet(alpha). Rows where every gamma draw underflowed
  (tiny alpha in float64) are redrawn from a fold of the key, so every row sums to 1.

  Args:
    key: a `jax.random.key`.
    alpha: the concentrations [K], positive.
    num_samples: n (positive).

  Returns:
    [n, K] mixtures (a jax array).

  Raises:
    ValueError: on a bad alpha or num_samples, or when the draws keep underflowing.
  """
  alpha = _checks.grid(alpha, "alpha")
  n = _checks.positive_int(num_samples, "num_samples")
  out = np.asarray(jax.random.dirichlet(key, jnp.asarray(alpha), (n,)))
  for r in range(1, 8):
    bad = ~np.isfinite(out).all(1) | (np.abs(out.sum(1) - 1) > 1e-6)
    if not bad.any():
      break
    out[bad] = np.asarray(jax.random.dirichlet(jax.random.fold_in(key, r), jnp.asarray(alpha), (int(bad.sum()),)))
  bad = ~np.isfinite(out).all(1) | (np.abs(out.sum(1) - 1) > 1e-6)
  if bad.any():
    raise ValueError(f"alpha: Dirichlet draws underflow for concentrations as small as {alpha.min():.3g}; raise them")
  return jnp.asarray(out)


# ----------------------------------------------------------------------------------------------
# Choosing a mixture.

@dataclasses.dataclass(frozen=True)
class Selection:
  """A chosen mixture: `mixture` [K], the surrogate's prediction there `predicted` [T], the
  objective it minimizes (`objective`: the weighted predicted loss), the posterior variance of
  that objective (`variance`: the GP view's, in units of its prior variance, so it compares picks
  and is no loss scale; None for a surrogate without the "variance" readout) and how it was found
  (`method`, `info`)."""
  mixture: np.ndarray
  predicted: np.ndarray
  objective: float
  variance: Optional[float]
  method: str
  info: dict


def _weights(objective, T: int) -> np.ndarray:
  if objective is None:
    return np.full(T, 1.0 / T)
  if isinstance(objective, (int, np.integer)) and not isinstance(objective, bool):
    if not 0 <= objective < T:
      raise ValueError(f"objective: target {objective} is outside [0, {T})")
    return np.eye(T)[int(objective)]
  w = np.asarray(objective, np.float64)
  if w.shape != (T,) or not np.all(np.isfinite(w)):
    raise ValueError(f"objective: expected None (mean of the targets), a target index or {T} finite weights, got "
                     f"{objective!r}")
  return w


def _variance(surrogate, x: np.ndarray, w: np.ndarray) -> Optional[float]:
  """Posterior variance of w . g(x): the GP view gives every target the same kernel part, scaled
  by sum w^2 (the targets share one solve)."""
  if "variance" not in families.readouts(surrogate):
    return None
  return float(np.asarray(surrogate.predict_variance(x[None]))[0] * np.sum(w ** 2))


def _descend(fn, X0, w, lr: float, steps: int):
  """Exponentiated-gradient descent of w . fn(x) from each row of X0 [s, K] on the simplex; every
  step moves the log-weights by at most `lr` (the tangent gradient scaled by its largest entry).
  One compiled program per call (fn is closed over, so any differentiable surrogate works)."""
  obj = lambda x: fn(x[None])[0] @ w                                       # noqa: E731
  grad = jax.grad(obj)

  def step(x):
    g = grad(x)
    g = g - jnp.mean(g)
    x = x * jnp.exp(-lr * g / (jnp.max(jnp.abs(g)) + 1e-30))
    return x / x.sum()

  @jax.jit
  def run(X):
    X, _ = jax.lax.scan(lambda X, _: (jax.vmap(step)(X), None), X, None, length=steps)
    return X, jax.vmap(obj)(X)

  return run(X0)


@x64
def select(surrogate, *, method: str = "regmix", objective=None, prior=None, key=None,
           num_samples: int = 100_000, top_k: int = 100, num_starts: int = 8, steps: int = 300,
           learning_rate: float = 0.05) -> Selection:
  """The mixture a surrogate predicts best (lowest objective: a loss).

  Args:
    surrogate: fitted on mixtures (`domain == "simplex"`).
    method: "regmix": sample `num_samples` mixtures from the Dirichlet prior, predict, average the
      `top_k` lowest (the RegMix recipe, which averages the top 100 of its samples);
      "gradient": exponentiated-gradient descent through the surrogate's `apply` for `steps`
      steps of at most `learning_rate` in log-weight, from the `num_starts` best samples and the
      RegMix average (each shrunk 1 % toward uniform, so no weight starts at exactly 0), keeping
      the lowest end point.
    objective: what is minimized: None the mean of the targets, an int one target, [T] weights.
    prior: the Dirichlet concentrations [K], or observed mixtures [n, K] to fit them to
      (`dirichlet_prior`); required.
    key: jax.random key of the samples.
    num_samples: the prior samples drawn.
    top_k: the lowest-objective samples averaged (at most num_samples).
    num_starts: the best samples the gradient method starts from (besides the RegMix average).
    steps: the gradient method's steps.
    learning_rate: the gradient method's largest step in log-weight.

  Returns:
    A `Selection` (mixture [K], predicted [T], objective, variance, method, info).

  Raises:
    ValueError: on an unknown method, a surrogate not fitted on the simplex (or, for "gradient",
      without `apply`), no prior or key, a prior of another K, a bad objective, top_k above
      num_samples, or non-positive counts or learning rate.
  """
  _checks.choice(method, METHODS, "method")
  domain = inputs.domain_of(surrogate)
  if domain != "simplex":
    raise ValueError(f"surrogate: select picks a mixture; this surrogate was fitted on {domain} inputs, not on rows on "
                     "the simplex")
  if prior is None:
    raise ValueError("prior: pass the observed mixtures [n, K] (a Dirichlet is fitted to them) or concentrations [K]")
  if key is None:
    raise ValueError("key: pass a jax.random key for the sampled mixtures")
  K = surrogate.num_tasks
  prior = np.asarray(prior, np.float64)
  alpha = dirichlet_prior(prior) if prior.ndim == 2 else _checks.grid(prior, "prior")
  if alpha.shape != (K,):
    raise ValueError(f"prior: has {alpha.shape[-1]} domains but the surrogate was fitted on K={K}")
  top_k = _checks.positive_int(top_k, "top_k")
  if top_k > num_samples:
    raise ValueError(f"top_k: {top_k} exceeds num_samples={num_samples}")
  samples = np.asarray(sample_dirichlet(key, alpha, num_samples))
  preds = np.asarray(surrogate.predict(samples))
  w = _weights(objective, preds.shape[1])
  scores = preds @ w
  order = np.argsort(scores)
  pick = samples[order[:top_k]].mean(0)
  info = {"num_samples": int(num_samples), "top_k": top_k, "alpha": alpha.tolist(),
          "best_sampled_objective": float(scores[order[0]])}
  if method == "gradient":
    num_starts = _checks.positive_int(num_starts, "num_starts")
    steps = _checks.positive_int(steps, "steps")
    lr = _checks.positive_number(learning_rate, "learning_rate")
    starts = np.concatenate([pick[None], samples[order[:num_starts]]])
    starts = 0.99 * starts + 0.01 / K
    ends, values = _descend(_pure(surrogate), jnp.asarray(starts), jnp.asarray(w), lr, steps)
    ends, values = np.asarray(ends), np.asarray(values)
    best = int(np.nanargmin(values))
    pick = ends[best] / ends[best].sum()
    info.update(num_starts=num_starts + 1, steps=steps, learning_rate=lr)
    info["start_objectives"] = (np.asarray(surrogate.predict(starts)) @ w).tolist()
    info["end_objectives"] = values.tolist()
  predicted = np.asarray(surrogate.predict(pick[None]))[0]
  return Selection(mixture=pick, predicted=predicted, objective=float(predicted @ w),
                   variance=_variance(surrogate, pick, w), method=method, info=info)
