"""Chunked maps: every loop over subsets or examples in the library goes through these two helpers.

- `chunked_map(fn, *arrays, chunk_size)`: host loop over row chunks of pytrees. Every chunk is
  padded to `chunk_size` rows (repeating the last row), so a jitted `fn` compiles once; padded
  outputs are dropped. Outputs are concatenated, or handed chunk by chunk to a `sink` (streams into
  a memmap, sums a reduction) so nothing larger than a chunk is held.
- `map_subsets(fn, rows, shared=..., chunk_size)`: the engine behind every outcome source. `fn`
  does the work of ONE subset (train a model on its mask, fine-tune a policy, solve a convex
  problem); it is `vmap`ped over a chunk of subsets and `jit`ted once per `fn`, and each chunk's
  subset axis is sharded over the devices when there are several (`jax.sharding.NamedSharding`).
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ksurrogate import _checks


def pad_rows(a, size: int):
  """Pads a batch to `size` rows by repeating its last row (numpy, JAX and typed-key arrays).

  Args:
    a: an array with a leading row axis (numpy, JAX or typed-key), at least one row.
    size: the number of rows wanted.

  Returns:
    `a` itself when it has `size` rows or more, else `a` with its last row repeated up to `size`
    rows (numpy in, numpy out; else a jax array).
  """
  if len(a) >= size:
    return a
  xp = np if isinstance(a, np.ndarray) else jnp
  return xp.concatenate([a, xp.repeat(a[-1:], size - len(a), 0)])


def num_rows(tree) -> int:
  """The shared length of the leading axes of a pytree's leaves.

  Args:
    tree: a pytree of arrays that share their leading axis.

  Returns:
    That length.

  Raises:
    ValueError: when the tree has no leaves or their leading axes differ.
  """
  leaves = jax.tree.leaves(tree)
  if not leaves:
    raise ValueError("arrays: nothing to map over")
  n = len(leaves[0])
  if any(len(x) != n for x in leaves):
    raise ValueError(f"arrays: leading axes differ ({sorted({len(x) for x in leaves})}); every input needs one row per item")
  return n


def _concat(*parts):
  if isinstance(parts[0], np.ndarray):
    return np.concatenate(parts)
  return jnp.concatenate(parts)


def chunked_map(fn: Callable, *arrays, chunk_size: int, pad: bool = True, sink: Optional[Callable] = None,
                progress: Optional[Callable[[int], None]] = None):
  """fn(*chunks) over row chunks of `arrays` (pytrees sharing a leading axis).

  With pad=False chunks are not padded and outputs are passed on as they are (reductions).

  Args:
    fn: a function of one chunk of each of `arrays` (each a pytree of `chunk_size` rows, or fewer
      for the last chunk when pad=False), returning a pytree whose leaves have a row per input row.
    *arrays: pytrees whose leaves share the leading axis n.
    chunk_size: the rows per call (positive).
    pad: whether the last chunk is padded to `chunk_size` rows (repeating its last row) so a jitted
      `fn` compiles once; the pad rows are dropped from its outputs.
    sink: when given, `sink(start, stop, outputs)` receives each chunk's outputs (pad rows dropped)
      instead of them being kept.
    progress: when given, called with the number of real rows after each chunk.

  Returns:
    The concatenated outputs (a pytree with leading axis n; numpy leaves stay numpy), or None when
    `sink` is given.

  Raises:
    ValueError: when chunk_size is not a positive integer, or the arrays have no leaves or
      different leading axes.
  """
  chunk_size = _checks.positive_int(chunk_size, "chunk_size")
  n = num_rows(arrays)
  outs = []
  for start in range(0, n, chunk_size):
    stop = min(start + chunk_size, n)
    chunk = jax.tree.map(lambda a: a[start:stop], arrays)
    if pad:
      chunk = jax.tree.map(lambda a: pad_rows(a, chunk_size), chunk)
    out = fn(*chunk)
    if pad:
      out = jax.tree.map(lambda t: t[:stop - start], out)
    if sink is not None:
      sink(start, stop, out)
    else:
      outs.append(out)
    if progress is not None:
      progress(stop - start)
  if sink is not None:
    return None
  return jax.tree.map(_concat, *outs)


@functools.lru_cache(maxsize=64)
def _vmapped(fn: Callable, num_shared: int):
  # Cached per fn so repeated calls (chunks, retries, resumed runs) reuse one compiled program.
  in_axes = (0,) + (None,) * num_shared
  return jax.jit(jax.vmap(fn, in_axes=in_axes))


def _subset_sharding():
  # This process's devices: in a group of processes (jax.distributed) each maps its own chunks.
  if jax.local_device_count() < 2:
    return None
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("subsets",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("subsets"))


def map_subsets(fn: Callable, rows, *, shared=(), chunk_size: int = 16, progress=None):
  """Stacked fn(row_i, *shared) for every row i of `rows` (a pytree with leading axis m).

  `fn` is the per-subset work; `rows` carries what differs between subsets (a mask, a key), and
  `shared` what they have in common (data, start parameters), passed once per chunk and never
  copied per subset. `fn` must be hashable and the same object across calls for the compiled
  program to be reused (a module-level function, or a closure built once). With several devices,
  `chunk_size` should be a multiple of the device count.

  Args:
    fn: the work of one subset, `fn(row, *shared) -> pytree`, traceable by vmap and jit.
    rows: a pytree with leading axis m (e.g. masks bool [m, K], keys [m]).
    shared: a tuple of pytrees passed unbatched to every call.
    chunk_size: subsets per compiled call (positive).
    progress: when given, called with the number of subsets done after each chunk.

  Returns:
    fn's outputs stacked over the m rows (each leaf [m, ...]).

  Raises:
    ValueError: when chunk_size is not a positive integer or the leaves of `rows` differ in length.
  """
  run = _vmapped(fn, len(shared))
  sharding = _subset_sharding()

  def one_chunk(chunk):
    if sharding is not None:
      chunk = jax.device_put(chunk, sharding)
    return run(chunk, *shared)

  return chunked_map(one_chunk, rows, chunk_size=chunk_size, progress=progress)
