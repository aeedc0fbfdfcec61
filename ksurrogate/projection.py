"""Per-layer factorized projection of per-example gradients (LoGra-style), never forming them.

For a dense layer y_t = x_t W (W [I, O]) applied at the T positions of one example, the gradient
of an output o of that example is G = sum_t x_t d_t^T with d_t = do/dy_t. Its dense random
projection by the Kronecker matrix P_in (x) P_out (P_in [I, k_in], P_out [O, k_out]) is

    (P_in (x) P_out)^T vec(G) = vec(P_in^T G P_out) = vec(sum_t (P_in^T x_t)(P_out^T d_t)^T),

so it needs only the layer's inputs x [T, I] and output gradients d [T, O]: about
2 T (I k_in + O k_out + k_in k_out) FLOPs and no I x O matrix, let alone the D x d matrix of a
dense projection of the whole gradient (`ksurrogate.features`, 2 D d FLOPs per vector). vec is
row-major throughout (index i * O + o), as `jnp.ravel` and `jax.flatten_util` order a kernel.

A LoRA pair, y = x (W + s A B) with A [I, r], B [r, O], has two such factors with the same x and d:
G_A = s sum_t x_t (B d_t)^T and G_B = s sum_t (A^T x_t) d_t^T (`lora_factors`). At the usual
initialization B = 0, so every A-gradient is exactly zero there and only the B blocks carry signal.

How x and d are obtained without editing a model: `dense_taps` runs a flax function under
`flax.linen.intercept_methods`, records the inputs of the named `nn.Dense` layers and adds a
perturbation to their outputs; the gradient with respect to the perturbation is d. One example's
C outputs cost C backward passes (one `vmap`ped vjp), as exact per-example Jacobians do.

`span_coordinates` gives the lossless counterpart: the features in an orthonormal basis of the
training rows' span (from the exact kernel), with which `ksurrogate.estimation`'s one-step and
Newton estimates equal those of the unprojected gradients, so a projection's own error is measurable.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ksurrogate import _checks
from ksurrogate import batching
from ksurrogate.features import Features

KINDS = ("gaussian", "rademacher")


# ----------------------------------------------------------------------------------------------
# Projection matrices.

def side(key, size: int, dim: int, kind: str = "gaussian"):
  """One side's projection [size, dim], entries N(0, 1/dim) or +-1/sqrt(dim); the identity
  [size, size] where dim >= size (that side is kept exact: nothing to reduce).

  Args:
    key: a `jax.random.key`.
    size: the side's dimension (I or O), positive.
    dim: the projected dimension, positive.
    kind: "gaussian" or "rademacher".

  Returns:
    float32 [size, min(dim, size)].

  Raises:
    ValueError: on an unknown kind or a size or dim that is not a positive integer.
  """
  _checks.choice(kind, KINDS, "kind")
  size, dim = _checks.positive_int(size, "size"), _checks.positive_int(dim, "dim")
  if dim >= size:
    return jnp.eye(size, dtype=jnp.float32)
  if kind == "gaussian":
    return jax.random.normal(key, (size, dim), jnp.float32) / math.sqrt(dim)
  return jax.random.rademacher(key, (size, dim), dtype=jnp.float32) / math.sqrt(dim)


def split_dim(total: int, shapes: Mapping[str, tuple[int, int]], dim_in: int) -> dict:
  """{block: (k_in, k_out)} for blocks of gradient shapes {block: (I, O)}: k_in = min(dim_in, I),
  and total // dim_in output dimensions shared out in proportion to O (largest remainders, at
  least one each). With every I >= dim_in the dimensions add up to dim_in * (total // dim_in).

  Args:
    total: the feature dimension asked for in all (the config's `dim`), positive.
    shapes: {block: (I, O)}.
    dim_in: the input-side dimension k_in of every block (capped at its I), positive.

  Returns:
    {block: (k_in, k_out)} with int entries.

  Raises:
    ValueError: when total // dim_in is smaller than the number of blocks, or total or dim_in is
      not a positive integer.
  """
  total, dim_in = _checks.positive_int(total, "dim"), _checks.positive_int(dim_in, "dim_in")
  names = sorted(shapes)
  units = total // dim_in
  if units < len(names):
    raise ValueError(f"dim: {total} gives {units} output dimensions at dim_in={dim_in}, fewer than the "
                     f"{len(names)} blocks (one each at least)")
  O = np.array([shapes[n][1] for n in names], np.float64)
  share = 1 + (units - len(names)) * O / O.sum()
  k_out = np.floor(share).astype(int)
  k_out[np.argsort(-(share - k_out))[:units - k_out.sum()]] += 1
  return {n: (min(dim_in, shapes[n][0]), int(k)) for n, k in zip(names, k_out)}


def projections(key, shapes: Mapping[str, tuple[int, int]], dims: Mapping[str, tuple[int, int]],
                kind: str = "gaussian") -> dict:
  """{block: (P_in [I, k_in], P_out [O, k_out])}, block b (in sorted order) drawn from
  fold_in(key, b): the same key gives the same matrices whatever else is projected.

  Args:
    key: a `jax.random.key`.
    shapes: {block: (I, O)}.
    dims: {block: (k_in, k_out)} over the same blocks (`split_dim`).
    kind: "gaussian" or "rademacher".

  Returns:
    {block: (P_in float32 [I, k_in'], P_out float32 [O, k_out'])}, each side the identity where its
    dimension is not below its size (`side`).

  Raises:
    ValueError: when dims and shapes name different blocks, or as `side`.
  """
  if set(shapes) != set(dims):
    raise ValueError(f"dims: blocks {sorted(dims)} do not match the gradient blocks {sorted(shapes)}")
  out = {}
  for b, name in enumerate(sorted(shapes)):
    k_in, k_out = jax.random.split(jax.random.fold_in(key, b))
    (I, O), (di, do) = shapes[name], dims[name]
    out[name] = (side(k_in, I, di, kind), side(k_out, O, do, kind))
  return out


def dim(projections_: Mapping[str, tuple]) -> int:
  """The feature dimension sum_b k_in k_out of a set of projections.

  Args:
    projections_: {block: (P_in [I, k_in], P_out [O, k_out])}.

  Returns:
    The int d.
  """
  return int(sum(P_in.shape[1] * P_out.shape[1] for P_in, P_out in projections_.values()))


def project(x_TxI, d_TxO, P_in, P_out):
  """vec(sum_t (P_in^T x_t)(P_out^T d_t)^T) [k_in * k_out]: the gradient sum_t x_t d_t^T of one
  example projected by P_in (x) P_out, without forming it.

  Args:
    x_TxI: the layer's inputs at the example's T positions, [T, I].
    d_TxO: the output gradients at those positions, [T, O].
    P_in: [I, k_in].
    P_out: [O, k_out].

  Returns:
    [k_in * k_out], row-major.
  """
  return jnp.einsum("ti,to->io", x_TxI @ P_in, d_TxO @ P_out).reshape(-1)


def kronecker(P_in, P_out):
  """The dense projection [I * O, k_in * k_out] that `project` applies (tests, tiny layers).

  Args:
    P_in: [I, k_in].
    P_out: [O, k_out].

  Returns:
    [I * O, k_in * k_out].
  """
  return jnp.kron(P_in, P_out)


def lora_factors(pairs: Mapping[str, tuple], scale: float) -> Callable:
  """factors(name, x, d) for the LoRA pairs {layer: (A [I, r], B [r, O])} of layers y = x (W + s A B):
  {"<layer>/A": (x, s d B^T), "<layer>/B": (s x A, d)}, the two factors of the pair's gradient.

  Args:
    pairs: {layer: (A [I, r], B [r, O])}.
    scale: the LoRA scale s.

  Returns:
    `factors(name, x [T, I], d [T, O]) -> {block: (u, v)}`, for `make_featurizer`'s `factors`.
  """
  def factors(name, x, d):
    A, B = pairs[name]
    return {f"{name}/A": (x, scale * d @ B.T), f"{name}/B": (scale * x @ A, d)}
  return factors


def lora_shapes(pairs: Mapping[str, tuple]) -> dict:
  """{"<layer>/A": (I, r), "<layer>/B": (r, O)}: the gradient block shapes of LoRA pairs.

  Args:
    pairs: {layer: (A [I, r], B [r, O])}.

  Returns:
    {block: (rows, columns)} with two blocks per layer.
  """
  out = {}
  for name, (A, B) in pairs.items():
    out[f"{name}/A"], out[f"{name}/B"] = tuple(A.shape), tuple(B.shape)
  return out


def factored(scale_IxO):
  """(a [I], b [O]) with a b^T the rank-one approximation of a positive per-entry scale [I, O]:
  row sums times column sums over the total (Adafactor's factorization; exact for a rank-one
  scale). A per-parameter scaling of a block then stays factorized: diag(a) G diag(b) =
  sum_t (a * u_t)(b * v_t)^T (`scaled`).

  Args:
    scale_IxO: a finite non-negative [I, O] matrix with a positive sum.

  Returns:
    (a float32 [I], b float32 [O]).

  Raises:
    ValueError: when the scale is not 2-d, finite and non-negative with a positive sum.
  """
  M = np.asarray(scale_IxO, np.float64)
  if M.ndim != 2 or not np.all(np.isfinite(M)) or np.any(M < 0) or not M.sum() > 0:
    raise ValueError(f"scale_IxO: expected a finite non-negative matrix with a positive sum, got shape {M.shape}")
  root = np.sqrt(M.sum())
  return jnp.asarray(M.sum(1) / root, jnp.float32), jnp.asarray(M.sum(0) / root, jnp.float32)


def scaled(projections_: Mapping[str, tuple], scales: Mapping[str, tuple]) -> dict:
  """The projections of the scaled gradient diag(a) G diag(b) of each block in scales {block:
  (a [I], b [O])} (`factored`): (P_in^T diag(a)) G (diag(b) P_out) is the projection by diag(a)
  P_in and diag(b) P_out, so a factored per-parameter scale (an optimizer's preconditioner) costs
  nothing beyond the plain features. Blocks without a scale are unchanged.

  Args:
    projections_: {block: (P_in [I, k_in], P_out [O, k_out])}.
    scales: {block: (a [I], b [O])} for some of those blocks.

  Returns:
    {block: (P_in, P_out)} over the blocks of `projections_`.
  """
  out = dict(projections_)
  for b, (a_in, b_out) in scales.items():
    P_in, P_out = projections_[b]
    out[b] = (jnp.asarray(a_in)[:, None] * P_in, jnp.asarray(b_out)[:, None] * P_out)
  return out


def identity(shapes: Mapping[str, tuple[int, int]]) -> dict:
  """{block: (I_I, I_O)}: the projections that keep every block whole (the exact gradient).

  Args:
    shapes: {block: (I, O)}.

  Returns:
    {block: (float32 eye(I), float32 eye(O))}.
  """
  return {b: (jnp.eye(I, dtype=jnp.float32), jnp.eye(O, dtype=jnp.float32)) for b, (I, O) in shapes.items()}


def _plain(name, x, d):
  return {name: (x, d)}


# ----------------------------------------------------------------------------------------------
# Layer inputs and output gradients of a flax model.

def dense_taps(fn: Callable, names) -> Callable:
  """tapped(perturbations, *args) -> (fn(*args), {name: (x, y)}) for a function that applies a
  flax model: the input x [T, I] and output y [T, O] of every `nn.Dense` whose path
  ("/".join(module.path), e.g. "layers_3/attn/q") is in `names`, with perturbations[name] [T, O]
  added to that output (None: nothing added). The gradient with respect to a perturbation at zero
  is the layer's output gradient d. The model itself is not changed.

  Args:
    fn: a function `fn(*args)` whose flax model applications the taps see.
    names: the '/'-joined module paths of the `nn.Dense` layers to tap.

  Returns:
    `tapped(perturbations, *args) -> (fn(*args), {name: (x, y)})`, with perturbations a dict
    {name: [T, O]} or None; it raises a ValueError when a named layer runs twice per call or not at
    all.
  """
  names = frozenset(names)

  def tapped(perturbations, *args):
    seen = {}

    def interceptor(next_fun, a, kw, context):
      name = "/".join(context.module.path)
      if context.method_name != "__call__" or not isinstance(context.module, nn.Dense) or name not in names:
        return next_fun(*a, **kw)
      if name in seen:
        raise ValueError(f"names: layer {name!r} is applied more than once per example; tap it per call")
      y = next_fun(*a, **kw)
      seen[name] = (a[0], y)
      return y if perturbations is None else y + perturbations[name]

    with nn.intercept_methods(interceptor):
      out = fn(*args)
    missing = names - set(seen)
    if missing:
      raise ValueError(f"names: no nn.Dense at {sorted(missing)} ran (paths are '/'-joined module names)")
    return out, seen
  return tapped


def make_featurizer(tapped: Callable, projections_, factors: Optional[Callable] = None) -> Callable:
  """fn(example) -> (outputs o [C], phi [C, d]) of one example: per output, its gradient's blocks
  projected by `projections_` ({block: (P_in, P_out)}, concatenated in sorted block order). A
  list of such dicts gives (o, [phi per set]): every set from one backward pass.

  tapped(perturbations, example) -> (o [C], {layer: (x, y)}) as `dense_taps` returns;
  factors(layer, x, d) -> {block: (u, v)}: the blocks of one layer's gradient sum_t u_t v_t^T
  (default: the layer's own kernel, {layer: (x, d)}; `lora_factors` for LoRA pairs). Blocks
  without a projection are left out (e.g. LoRA A blocks, zero at B = 0).

  Args:
    tapped: see above.
    projections_: {block: (P_in, P_out)}, or a non-empty list of such dicts.
    factors: see above; None for the layer's own kernel.

  Returns:
    `fn(example) -> (o [C], phi [C, d])`, or (o [C], [phi [C, d_j] per set]) for a list; phi
    raises a ValueError when a projected block is not a factor of the tapped layers.

  Raises:
    ValueError: when `projections_` is an empty list.
  """
  factors = factors or _plain
  many = isinstance(projections_, (list, tuple))
  sets = list(projections_) if many else [projections_]
  if not sets:
    raise ValueError("projections_: no projection set given")
  blocks = sorted(set().union(*sets))

  def fn(example):
    shapes = jax.eval_shape(lambda e: tapped(None, e)[1], example)
    zeros = {n: jnp.zeros(y.shape, y.dtype) for n, (_, y) in shapes.items()}
    o, vjp, taps = jax.vjp(lambda p: tapped(p, example), zeros, has_aux=True)
    (grads,) = jax.vmap(vjp)(jnp.eye(o.shape[0], dtype=o.dtype))   # {layer: [C, T, O]}

    def one_output(g):
      found = {}
      for name, (x, _) in taps.items():
        found.update(factors(name, x, g[name]))
      unknown = set(blocks) - set(found)
      if unknown:
        raise ValueError(f"projections: blocks {sorted(unknown)} are not factors of the tapped layers")
      return [jnp.concatenate([project(*found[b], *P[b]) for b in sorted(P)]) for P in sets]
    phis = jax.vmap(one_output)(grads)
    return o, (phis if many else phis[0])
  return fn


def featurize(tapped: Callable, projections_, X, y, *, factors: Optional[Callable] = None,
              output: str = "factorized", batch_size: int = 16):
  """Features (phi [N, C, d], offsets [N, C]) of the examples (X [N, ...], y [N, ...]), each
  example (x, y) passed to tapped(perturbations, (x, y)); see `make_featurizer`. Batches of
  `batch_size` examples run through one jitted program. A list of projection sets gives a list
  of Features, all from one pass (one backward pass per output, whatever the number of sets).

  Args:
    tapped: see `make_featurizer`.
    projections_: {block: (P_in, P_out)}, or a list of such dicts.
    X: [N, ...] the examples' inputs.
    y: [N, ...] their labels (one row per example).
    factors: see `make_featurizer`.
    output: the output kind the features carry (`Features.output`).
    batch_size: examples per jitted call (positive).

  Returns:
    `Features` (phi float32 [N, C, d], offsets float32 [N, C], labels y), or a list of them, one per
    projection set.

  Raises:
    ValueError: when X and y differ in length or are empty, batch_size is not a positive integer,
      or the outputs or their gradients are non-finite.
  """
  X, y = np.asarray(X), np.asarray(y)
  if len(X) != len(y) or not len(X):
    raise ValueError(f"y: expected one label row per example and at least one example, got {len(X)} and {len(y)}")
  one = make_featurizer(tapped, projections_, factors)
  run = jax.jit(jax.vmap(lambda xb, yb: one((xb, yb))))
  o, phi = batching.chunked_map(run, X, y, chunk_size=_checks.positive_int(batch_size, "batch_size"))
  o = np.asarray(o, np.float32)
  phis = [np.asarray(p, np.float32) for p in (phi if isinstance(projections_, (list, tuple)) else [phi])]
  if not (np.all(np.isfinite(o)) and all(np.all(np.isfinite(p)) for p in phis)):
    raise ValueError("X: model outputs or their gradients are non-finite on some examples")
  out = [Features(phi=p, offsets=o, labels=y, output=output) for p in phis]
  return out if isinstance(projections_, (list, tuple)) else out[0]


# ----------------------------------------------------------------------------------------------
# The lossless reference.

def span_coordinates(train: Features, target: Features, *, rtol: float = 1e-6, block: int = 16384):
  """(train, target) features in an orthonormal basis of the span of the training rows.

  With Phi the training rows [N C, D] and Phi Phi^T = U diag(s) U^T: train rows U sqrt(s), target
  rows Phi_t Phi^T U / sqrt(s) (directions with s <= rtol * max s dropped). Any estimate whose
  solution lies in the span of the training gradients (`estimation.estimate`'s one-step and
  Newton solves with a ridge) is then exactly that of the unprojected features, at a dimension
  of at most N C; the kernel is summed in float64 over column blocks of D.

  Args:
    train: `Features` of the training examples, phi [N, C, D].
    target: `Features` of the targets, phi [N_t, C, D].
    rtol: eigenvalues at or below rtol * the largest are dropped.
    block: the column block of D the kernels are summed over.

  Returns:
    (train', target') `Features` with phi float32 [N, C, r] and [N_t, C, r], r the kept rank (at
    most N C), offsets, labels and output unchanged.

  Raises:
    ValueError: when target's feature shape differs from train's.
  """
  phi = np.asarray(train.phi, np.float32)
  phi_t = np.asarray(target.phi, np.float32)
  if phi.shape[2:] != phi_t.shape[2:] or phi.shape[1] != phi_t.shape[1]:
    raise ValueError(f"target: feature shape {phi_t.shape[1:]} does not match train {phi.shape[1:]}")
  R, Rt = phi.reshape(-1, phi.shape[-1]), phi_t.reshape(-1, phi_t.shape[-1])
  K = np.zeros((len(R), len(R)), np.float64)
  Kt = np.zeros((len(Rt), len(R)), np.float64)
  for start in range(0, R.shape[1], block):
    a, b = R[:, start:start + block], Rt[:, start:start + block]
    K += a @ a.T
    Kt += b @ a.T
  s, U = np.linalg.eigh(K)
  keep = s > rtol * max(s.max(), 1e-300)
  s, U = s[keep], U[:, keep]
  new = lambda rows, n: rows.reshape(n, phi.shape[1], -1).astype(np.float32)  # noqa: E731
  return (Features(new(U * np.sqrt(s), len(phi)), train.offsets, train.labels, train.output),
          Features(new(Kt @ U / np.sqrt(s), len(phi_t)), target.offsets, target.labels, target.output))
