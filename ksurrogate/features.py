"""Randomly projected per-example gradient features of a model around params0.

For each example x the output vector o(x) (all logits, or one scalar such as the label margin) is
differentiated with respect to every parameter (vmap of reverse mode) and projected to d
dimensions: phi(x) = P^T J(x)^T with P [D, d] Gaussian N(0, 1/d) or Rademacher +-1/sqrt(d).

P is never formed as one D x d matrix unless it fits `materialize_bytes`: row block c of P (the
parameters c*chunk ... (c+1)*chunk - 1 of the flattened params) is drawn from fold_in(key, c), so
the same key gives bit-identical features whatever the example batch size, and the streamed and
materialized paths agree.

Cost: 2 D d FLOPs per projected gradient vector, so per-logit features (C vectors per example)
cost C times the scalar ones; prefer output="margin" (one vector) unless the estimate needs logits.
"""
from __future__ import annotations

import math
import pathlib
from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ksurrogate import _checks
from ksurrogate import batching
from ksurrogate import store

OUTPUTS = ("logits", "margin")
PROJECTIONS = ("gaussian", "rademacher", "identity")


@flax.struct.dataclass
class Features:
  """Projected gradients `phi` [N, C, d] and base outputs `offsets` [N, C] at params0.

  output "logits": C = number of classes, loss = cross-entropy on offsets + phi z.
  output "margin": C = 1, o = logit_y - logsumexp_{c != y} logit_c, loss = softplus(-o) (which is
  exactly the cross-entropy, written through the margin).
  """
  phi: jax.Array
  offsets: jax.Array
  labels: jax.Array
  output: str = flax.struct.field(pytree_node=False, default="margin")

  @property
  def num_examples(self) -> int:
    return self.phi.shape[0]

  @property
  def dim(self) -> int:
    return self.phi.shape[-1]


def margin(logits, label):
  """logit_y - logsumexp_{c != y} logit_c; cross-entropy = softplus(-margin)."""
  others = jnp.where(jnp.arange(logits.shape[-1]) == label, -jnp.inf, logits)
  return logits[label] - jax.nn.logsumexp(others)


def output_fn(apply_fn: Callable, output: str) -> Callable:
  """(params, x, y) -> output vector [C] for one example, from apply(params, x_batch) -> logits."""
  _checks.choice(output, OUTPUTS, "output")
  def fn(params, x, y):
    logits = apply_fn(params, x[None])[0]
    return logits if output == "logits" else margin(logits, y)[None]
  return fn


def projection_block(key, block: int, rows: int, dim: int, projection: str):
  """Rows [block*rows, (block+1)*rows) of P."""
  k = jax.random.fold_in(key, block)
  if projection == "gaussian":
    return jax.random.normal(k, (rows, dim)) / math.sqrt(dim)
  return jax.random.rademacher(k, (rows, dim), dtype=jnp.float32) / math.sqrt(dim)


def projection_matrix(key, num_params: int, dim: int, projection: str = "gaussian", chunk: int = 16384):
  """The whole P [D, d] (only for small D or for tests): exactly the blocks the stream uses."""
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


def make_featurizer(apply_fn: Callable, params0, *, key, dim: int, output: str = "margin",
                    projection: str = "gaussian", chunk: int = 16384, materialize_bytes: int = 1 << 30):
  """Returns a jitted fn(x_batch, y_batch) -> (phi [B, C, d], offsets [B, C]).

  `materialize_bytes`: form P once when it is at most this large (faster), else stream it."""
  _checks.choice(projection, PROJECTIONS, "projection")
  _checks.positive_int(dim, "dim")
  flat0, unravel = ravel_pytree(params0)
  D = flat0.shape[0]
  out = output_fn(apply_fn, output)
  if projection == "identity":   # exact gradients, no projection (tests; tiny models)
    if dim != D:
      raise ValueError(f"dim: the identity projection needs dim = number of parameters ({D}), got {dim}")
    P = jnp.eye(D, dtype=flat0.dtype)
  else:
    P = projection_matrix(key, D, dim, projection, chunk) if D * dim * 4 <= materialize_bytes else None

  @jax.jit
  def featurize(x, y):
    def one(xi, yi):
      f = lambda flat: out(unravel(flat), xi, yi)  # noqa: E731
      return f(flat0), jax.jacrev(f)(flat0)          # [C], [C, D]
    offsets, J = jax.vmap(one)(x, y)
    B, C = offsets.shape
    G = J.reshape(B * C, D)
    proj = G @ P if P is not None else _project_streamed(G, key, dim, projection, chunk)
    return proj.reshape(B, C, dim), offsets

  featurize.num_params = D
  return featurize


def featurize(apply_fn: Callable, params0, X, y, *, key, dim: int, output: str = "margin",
              projection: str = "gaussian", batch_size: int = 64, chunk: int = 16384,
              memmap_path: Optional[str] = None, progress: bool = False,
              materialize_bytes: int = 1 << 30) -> Features:
  """Projected per-example gradient features of all examples X [N, ...] with labels y [N].

  Batches of `batch_size` examples stream through one jitted program. With `memmap_path`, `phi` is
  written to an .npy memmap on disk batch by batch (for features larger than RAM) and the returned
  Features holds that memmap.
  """
  X, y = np.asarray(X), np.asarray(y)
  if len(X) != len(y):
    raise ValueError(f"y: has {len(y)} labels for {len(X)} examples")
  if len(X) == 0:
    raise ValueError("X: no examples to featurize")
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
  return Features(phi=phi, offsets=offsets, labels=y.astype(np.int32), output=output)


def save(directory, feats: Features) -> None:
  """Stores features under `directory` (phi.npy, memory-mappable, + meta.npz); atomic per file."""
  directory = pathlib.Path(directory)
  store.save_npy(directory / "phi.npy", feats.phi)
  store.save_arrays(directory / "meta.npz", offsets=feats.offsets, labels=feats.labels, output=np.array(feats.output))


def load(directory, mmap: bool = False) -> Features:
  """Reloads saved features; `mmap=True` leaves phi on disk (np.memmap) for larger-than-RAM sets."""
  directory = pathlib.Path(directory)
  if not (directory / "phi.npy").is_file() or not (directory / "meta.npz").is_file():
    raise FileNotFoundError(f"directory: no stored features (phi.npy + meta.npz) in {directory}")
  meta = store.load_arrays(directory / "meta.npz")
  phi = np.load(directory / "phi.npy", mmap_mode="r" if mmap else None)
  return Features(phi=phi, offsets=meta["offsets"], labels=meta["labels"], output=str(meta["output"]))
