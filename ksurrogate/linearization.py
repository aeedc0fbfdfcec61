"""First-order model expansions on public JAX APIs, with neural-tangents' call shapes.

`linearize(f, params0)` and `empirical_ntk_fn(f)` mirror `neural_tangents.linearize` and
`neural_tangents.empirical_ntk_fn` (which cannot be imported on current JAX: its last release,
0.6.5, imports JAX internals removed in jax 0.6); tests compare them with golden values neural-tangents produced in a pinned legacy environment.
`f` is any pure `f(params, x, **kwargs) -> outputs` over a params pytree.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp


def _tree_sub(a, b):
  return jax.tree.map(lambda x, y: x - y, a, b)


def linearize(f: Callable, params0) -> Callable:
  """Returns f_lin(params, *args, **kw) = f(params0, *args) + J(params - params0), J = df/dparams at
  params0, evaluated with one `jax.jvp` (forward mode: never a Jacobian matrix).

  Args:
    f: `f(params, *args, **kwargs)` -> a pytree of outputs.
    params0: the parameters (a pytree) expanded around.

  Returns:
    `f_lin(params, *args, **kwargs)`, outputs of f's structure.
  """
  def f_lin(params, *args, **kwargs):
    delta = _tree_sub(params, params0)
    f0, df = jax.jvp(lambda p: f(p, *args, **kwargs), (params0,), (delta,))
    return jax.tree.map(lambda a, b: a + b, f0, df)
  return f_lin


def _per_example_jacobian(f, params, x, kwargs):
  """Jacobian of each example's outputs: pytree of [N, *out_shape, *param_shape] (vmap of vjp)."""
  return jax.vmap(lambda xi: jax.jacrev(lambda p: f(p, xi[None], **kwargs)[0])(params))(x)


def empirical_ntk_fn(f: Callable, trace_axes: Sequence[int] = (-1,), diagonal_axes: Sequence[int] = ()) -> Callable:
  """Returns kernel_fn(x1, x2, params, **kw) -> Theta = J(x1) J(x2)^T summed over parameters.

  Like neural-tangents: `trace_axes=(-1,)` averages over the output (logit) axis, giving [N1, N2];
  `trace_axes=()` keeps it, giving [N1, N2, C, C]. x2=None means x1. `diagonal_axes=(-1,)` keeps
  only the diagonal of the logit axes, giving [N1, N2, C]. Outputs must be [N, C].

  Args:
    f: `f(params, x [N, ...], **kwargs) -> [N, C]`.
    trace_axes: () or (-1,) / (1,) (the output axis).
    diagonal_axes: () or (-1,) / (1,); not together with trace_axes.

  Returns:
    `kernel_fn(x1, x2=None, params=None, **kwargs)`, raising a ValueError without params.

  Raises:
    ValueError: on another axis, or on tracing and keeping the diagonal at once.
  """
  trace = tuple(int(a) for a in trace_axes)
  diag = tuple(int(a) for a in diagonal_axes)
  for a in trace + diag:
    if a not in (-1, 1):
      raise ValueError(f"trace_axes/diagonal_axes: only the output axis (-1 or 1) is supported, got {a}")
  if trace and diag:
    raise ValueError("diagonal_axes: cannot both trace and keep the diagonal of the output axis")

  def kernel_fn(x1, x2=None, params=None, **kwargs):
    if params is None:
      raise ValueError("params: kernel_fn needs the parameters to linearize around")
    J1 = _per_example_jacobian(f, params, x1, kwargs)
    J2 = J1 if x2 is None else _per_example_jacobian(f, params, x2, kwargs)
    def contract(a, b):
      a = a.reshape(a.shape[0], a.shape[1], -1)
      b = b.reshape(b.shape[0], b.shape[1], -1)
      if trace:   # neural-tangents averages (not sums) over traced axes
        return jnp.einsum("ncp,mcp->nm", a, b) / a.shape[1]
      if diag:
        return jnp.einsum("ncp,mcp->nmc", a, b)
      return jnp.einsum("ncp,mdp->nmcd", a, b)
    return sum(jax.tree.leaves(jax.tree.map(contract, J1, J2)))

  return kernel_fn
