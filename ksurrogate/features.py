"""Randomly projected per-example gradient features of a model around params0.

For each example x the output vector o(x) (all logits, or one scalar such as the label margin) is
differentiated with respect to every parameter (vmap of reverse mode) and projected to d
dimensions: phi(x) = P^T J(x)^T with P [D, d] Gaussian N(0, 1/d) or Rademacher +-1/sqrt(d).

P is never formed as one D x d matrix unless it fits `materialize_bytes`: row block c of P (the
parameters c*chunk ... (c+1)*chunk - 1 of the flattened params) is drawn from fold_in(key, c), so
the same key gives bit-identical features whatever the example batch size, and the streamed and
materialized paths agree.

The output is any differentiable function of the parameters and one example,
`output_fn(params, (x, y)) -> [C]`; `output_fn(apply_fn, kind)` provides the classifier ones:
"logits", "margin" (logit_y - logsumexp of the others) and "top<k>" (the k strongest competitors
at params0 and the rest lumped, each relative to logit_y). Labels y keep their dtype: a policy's
(action, weight) rows or a regression target pass through to the loss unchanged.

Cost: 2 D d FLOPs per projected gradient vector, so per-logit features (C vectors per example)
cost C times the scalar ones; prefer output="margin" (one vector) unless the estimate needs logits.
"""
from __future__ import annotations

import hashlib
import math
from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ksurrogate import _checks
from ksurrogate import batching

OUTPUTS = ("logits", "margin", "top<k>")
PROJECTIONS = ("gaussian", "rademacher", "identity")


@flax.struct.dataclass
class Features:
  """Projected gradients `phi` [N, C, d] and base outputs `offsets` [N, C] at params0.

  output "logits": C = number of classes, loss = cross-entropy on offsets + phi z.
  output "margin": C = 1, o = logit_y - logsumexp_{c != y} logit_c, loss = softplus(-o) (which is
  exactly the cross-entropy, written through the margin).
  output "top<k>": C = k + 1 (see `output_fn`), loss = log(1 + sum_c exp(o_c)), the cross-entropy.
  Any other name: an output function of the caller's, whose loss the caller passes.
  """
  phi: jax.Array
  offsets: jax.Array
  labels: jax.Array
  output: str = flax.struct.field(pytree_node=False, default="margin")
  # The projection's fingerprint (`projection_fingerprint`); "" where unknown (features made by
  # hand). Train and target features with different fingerprints live in different spaces.
  projection: str = flax.struct.field(pytree_node=False, default="")

  @property
  def num_examples(self) -> int:
    return self.phi.shape[0]

  @property
  def dim(self) -> int:
    return self.phi.shape[-1]


def margin(logits, label):
  """logit_y - logsumexp_{c != y} logit_c; cross-entropy = softplus(-margin).

  Args:
    logits: [C] one example's logits.
    label: its class, an int in [0, C).

  Returns:
    A scalar.
  """
  others = jnp.where(jnp.arange(logits.shape[-1]) == label, -jnp.inf, logits)
  return logits[label] - jax.nn.logsumexp(others)


def _top_k(output: str):
  """k of "top<k>", or None for another name."""
  if output.startswith("top") and output[3:].isdigit() and int(output[3:]) >= 1:
    return int(output[3:])
  return None


def num_outputs(output: str, num_classes: int) -> int:
  """C, the outputs per example of a provided kind: every logit, one margin, or k + 1 for top<k>.

  Args:
    output: "logits", "margin" or "top<k>" (k >= 1).
    num_classes: the classifier's number of classes.

  Returns:
    The int C.

  Raises:
    ValueError: on another output name.
  """
  k = _top_k(output)
  if output not in ("logits", "margin") and k is None:
    raise ValueError(f"output: must be 'logits', 'margin' or 'top<k>' with k >= 1, got {output!r}")
  return num_classes if output == "logits" else 1 if output == "margin" else k + 1


def output_fn(apply_fn: Callable, output: str) -> Callable:
  """A provided output function (params, (x, y)) -> [C] of a classifier apply(params, x_batch) -> logits.

  "logits": every logit. "margin": [logit_y - logsumexp_{c != y} logit_c]. "top<k>": the k
  classes other than y ranked highest at the parameters it is differentiated at, then the
  logsumexp of the remaining ones, all minus logit_y; the cross-entropy is exactly
  log(1 + sum_c exp(o_c)) (`estimation.COMPETITORS_CROSS_ENTROPY`). Linearizing it keeps the
  k competitors' logits exact and freezes only the softmax inside the lumped rest, so it
  sits between "margin" (k = 0) and "logits". The ranking is taken through stop_gradient, so it is
  meant for linearization (derivatives at one point), not for training.

  Args:
    apply_fn: the classifier, apply(params, x [B, ...]) -> logits [B, num_classes].
    output: "logits", "margin" or "top<k>" (k >= 1).

  Returns:
    `fn(params, (x, y)) -> [C]` for one example x (no batch axis) with integer label y; for
    "top<k>" it raises a ValueError when the model has fewer than k + 2 classes.

  Raises:
    ValueError: on another output name.
  """
  k = _top_k(output)
  if output not in ("logits", "margin") and k is None:
    raise ValueError(f"output: must be 'logits', 'margin' or 'top<k>' with k >= 1, got {output!r}")

  def fn(params, example):
    x, y = example
    logits = apply_fn(params, x[None])[0]
    if output == "logits":
      return logits
    if output == "margin":
      return margin(logits, y)[None]
    C = logits.shape[-1]
    if k > C - 2:
      raise ValueError(f"output: {output} needs at least {k + 2} classes, the model has {C}")
    others = jnp.where(jnp.arange(C) == y, -jnp.inf, jax.lax.stop_gradient(logits))
    _, top = jax.lax.top_k(others, k)
    rest = (jnp.arange(C) != y) & ~jnp.isin(jnp.arange(C), top)
    lse_rest = jax.nn.logsumexp(jnp.where(rest, logits, -jnp.inf))
    return jnp.concatenate([logits[top], lse_rest[None]]) - logits[y]
  return fn


def _resolve_output(apply_fn, output):
  """(output function, name) from a provided kind or a caller's function."""
  if callable(output):
    return output, getattr(output, "__name__", "custom")
  if not isinstance(output, str):
    raise ValueError(f"output: must be a provided kind ('logits', 'margin', 'top<k>') or a function, got {output!r}")
  if apply_fn is None:
    raise ValueError(f"apply_fn: the provided output {output!r} needs the model's apply function")
  return output_fn(apply_fn, output), output


def projection_fingerprint(key, num_params: int, dim: int, projection: str = "gaussian", chunk: int = 16384) -> str:
  """A short text naming P: its kind, shape, row-block size and a hash of its key (`Features`
  made with equal fingerprints share one projection).

  Args:
    key: the projection's `jax.random.key`.
    num_params: D.
    dim: d.
    projection: "gaussian", "rademacher" or "identity".
    chunk: the row-block size of P.

  Returns:
    A str such as "gaussian/D=1000/d=64/chunk=16384/key=<12 hex>" ("identity/D=<D>" for identity).
  """
  if projection == "identity":
    return f"identity/D={num_params}"
  digest = hashlib.sha1(np.asarray(jax.random.key_data(key)).tobytes()).hexdigest()[:12]
  return f"{projection}/D={num_params}/d={dim}/chunk={chunk}/key={digest}"


def check_same_projection(train: "Features", target: "Features", name: str = "target") -> None:
  """Refuses target features projected by another P than `train` (where both say which).

  Args:
    train: the training `Features`.
    target: features to be used beside them.
    name: the argument's name in the error message.

  Raises:
    ValueError: when both carry a fingerprint and the fingerprints differ.
  """
  if train.projection and target.projection and train.projection != target.projection:
    raise ValueError(f"{name}: features were projected by another P ({target.projection}) than train's "
                     f"({train.projection}); featurize both with the same key, dim and projection")


def num_classes(apply_fn: Callable, params0, x) -> int:
  """The number of logits a classifier apply_fn(params, x_batch) gives for one example like `x`
  (shape only: nothing is computed).

  Args:
    apply_fn: the classifier, apply(params, x [B, ...]) -> logits [B, C].
    params0: its parameters.
    x: one example (no batch axis).

  Returns:
    The int C.
  """
  x = np.asarray(x)
  return int(jax.eval_shape(apply_fn, params0, jax.ShapeDtypeStruct((1, *x.shape), x.dtype)).shape[-1])


def projection_block(key, block: int, rows: int, dim: int, projection: str):
  """Rows [block*rows, (block+1)*rows) of P.

  Args:
    key: the projection's `jax.random.key`.
    block: the row block's index.
    rows: the rows per block (the chunk size).
    dim: d.
    projection: "gaussian" (N(0, 1/d)); anything else gives Rademacher +-1/sqrt(d).

  Returns:
    [rows, dim] (float32 unless x64 is on, for "gaussian"), drawn from fold_in(key, block).
  """
  k = jax.random.fold_in(key, block)
  if projection == "gaussian":
    return jax.random.normal(k, (rows, dim)) / math.sqrt(dim)
  return jax.random.rademacher(k, (rows, dim), dtype=jnp.float32) / math.sqrt(dim)


def projection_matrix(key, num_params: int, dim: int, projection: str = "gaussian", chunk: int = 16384):
  """The whole P [D, d] (only for small D or for tests): exactly the blocks the stream uses.

  Args:
    key: the projection's `jax.random.key`.
    num_params: D.
    dim: d.
    projection: "gaussian" or "rademacher".
    chunk: the row-block size.

  Returns:
    [D, d], exactly the blocks `projection_block` draws.
  """
  n_blocks = -(-num_params // chunk)
  blocks = jax.vmap(lambda c: projection_block(key, c, chunk, dim, projection))(jnp.arange(n_blocks))
  return blocks.reshape(-1, dim)[:num_params]


def _project_streamed(G, key, dim, projection, chunk):
  """G [B, D] @ P without materializing P: loop over row blocks of P."""
  D = G.shape[1]
  n_blocks = -(-D // chunk)
  G = jnp.pad(G, ((0, 0), (0, n_blocks * chunk - D)))
  def body(c, acc):
    Gc = jax.lax.dynamic_slice_in_dim(G, c * chunk, chunk, axis=1)
    return acc + Gc @ projection_block(key, c, chunk, dim, projection)
  return jax.lax.fori_loop(0, n_blocks, body, jnp.zeros((G.shape[0], dim), G.dtype))


def make_featurizer(apply_fn: Callable | None, params0, *, key, dim: int, output: str | Callable = "margin",
                    projection: str = "gaussian", chunk: int = 16384, materialize_bytes: int = 1 << 30):
  """Returns a jitted fn(x_batch, y_batch) -> (phi [B, C, d], offsets [B, C]).

  `output`: a provided kind (see `output_fn`; needs `apply_fn`) or a function
  (params, (x, y)) -> [C] (then `apply_fn` may be None).
  `materialize_bytes`: form P once when it is at most this large (faster), else stream it.

  Args:
    apply_fn: the classifier apply(params, x [B, ...]) -> logits, or None with a callable `output`.
    params0: the parameters (a pytree) the gradients are taken at.
    key: the projection's `jax.random.key`.
    dim: d, positive (equal to D for projection="identity").
    output: see above.
    projection: "gaussian", "rademacher" or "identity" (exact gradients, phi [B, C, D]).
    chunk: the row-block size of P.
    materialize_bytes: see above.

  Returns:
    The jitted fn, with attribute `num_params` (D).

  Raises:
    ValueError: on an unknown projection, a dim that is not a positive integer (or not D for
      "identity"), an output that is neither a provided kind nor a function, or a provided kind
      without apply_fn.
  """
  _checks.choice(projection, PROJECTIONS, "projection")
  _checks.positive_int(dim, "dim")
  flat0, unravel = ravel_pytree(params0)
  D = flat0.shape[0]
  out, _ = _resolve_output(apply_fn, output)
  P = None
  if projection == "identity":   # exact gradients, no projection (tests; small models; example space)
    if dim != D:
      raise ValueError(f"dim: the identity projection needs dim = number of parameters ({D}), got {dim}")
  else:
    P = projection_matrix(key, D, dim, projection, chunk) if D * dim * 4 <= materialize_bytes else None

  @jax.jit
  def featurize(x, y):
    def one(xi, yi):
      f = lambda flat: out(unravel(flat), (xi, yi))  # noqa: E731
      return f(flat0), jax.jacrev(f)(flat0)          # [C], [C, D]
    offsets, J = jax.vmap(one)(x, y)
    B, C = offsets.shape
    G = J.reshape(B * C, D)
    if projection == "identity":
      return J, offsets
    proj = G @ P if P is not None else _project_streamed(G, key, dim, projection, chunk)
    return proj.reshape(B, C, dim), offsets

  featurize.num_params = D
  return featurize


def featurize(apply_fn: Callable | None, params0, X, y, *, key, dim: int, output: str | Callable = "margin",
              projection: str = "gaussian", batch_size: int = 64, chunk: int = 16384,
              memmap_path: Optional[str] = None, progress: bool = False,
              materialize_bytes: int = 1 << 30) -> Features:
  """Projected per-example gradient features of all examples X [N, ...] with labels y [N, ...].

  `output`: "logits", "margin", "top<k>" (classifiers: `output_fn` of `apply_fn`) or any function
  (params, (x, y)) -> [C] (then `apply_fn` may be None); y keeps its dtype and shape.

  Batches of `batch_size` examples stream through one jitted program. With `memmap_path`, `phi` is
  written to an .npy memmap on disk batch by batch (for features larger than RAM) and the returned
  Features holds that memmap.

  Args:
    apply_fn: the classifier apply(params, x [B, ...]) -> logits, or None with a callable `output`.
    params0: the parameters (a pytree) the gradients are taken at.
    X: [N, ...] the examples.
    y: [N, ...] their labels (class ids in [0, num_classes) for the provided kinds).
    key: the projection's `jax.random.key`.
    dim: d.
    output: see above.
    projection: "gaussian", "rademacher" or "identity".
    batch_size: examples per jitted call.
    chunk: the row-block size of P.
    memmap_path: an .npy path phi is written to, or None to hold it in memory.
    progress: whether a tqdm bar shows the examples done.
    materialize_bytes: form P once when it is at most this many bytes.

  Returns:
    `Features` with phi float32 [N, C, d], offsets float32 [N, C], labels y, output the kind's
    name (a function's __name__) and projection its fingerprint.

  Raises:
    ValueError: when X and y differ in length, X is empty, a label is outside the classes, the
      outputs are non-finite, or as `make_featurizer`.
  """
  X, y = np.asarray(X), np.asarray(y)
  _, name = _resolve_output(apply_fn, output)
  if len(X) != len(y):
    raise ValueError(f"y: has {len(y)} labels for {len(X)} examples")
  if len(X) == 0:
    raise ValueError("X: no examples to featurize")
  if isinstance(output, str):   # the provided kinds index the logits by the label
    _checks.class_labels(y, num_classes(apply_fn, params0, X[0]), "y")
  fn = make_featurizer(apply_fn, params0, key=key, dim=dim, output=output, projection=projection, chunk=chunk,
                       materialize_bytes=materialize_bytes)
  n = len(X)
  buffers = {}

  def write(start, stop, out):
    pb, ob = jax.device_get(out)
    if not buffers:   # allocated on the first batch, once the output size C is known
      C = pb.shape[1]
      buffers["phi"] = (np.lib.format.open_memmap(memmap_path, mode="w+", dtype=np.float32, shape=(n, C, dim))
                        if memmap_path else np.empty((n, C, dim), np.float32))
      buffers["offsets"] = np.empty((n, C), np.float32)
    buffers["phi"][start:stop] = pb
    buffers["offsets"][start:stop] = ob

  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=n, desc="featurize", unit="example")
  batching.chunked_map(fn, X, y, chunk_size=batch_size, sink=write, progress=bar.update if bar else None)
  if bar:
    bar.close()
  phi, offsets = buffers["phi"], buffers["offsets"]
  if memmap_path:
    phi.flush()
  if not np.all(np.isfinite(offsets)):
    raise ValueError("params0: model outputs are non-finite on some examples; cannot linearize there")
  return Features(phi=phi, offsets=offsets, labels=y, output=name,
                  projection=projection_fingerprint(key, fn.num_params, dim, projection, chunk))

