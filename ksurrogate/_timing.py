"""Compiled chunks, timed: how the estimators tell compilation apart from the steady state.

`run_chunks` maps a `jax.jit` program over row chunks (`batching.chunked_map`), compiling it once
ahead of time for the padded chunk shape (`lower(...).compile()`, which JAX caches in memory like
a jit call) and timing each chunk's run, so `Timing` holds the compile seconds apart from the
per-chunk seconds.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

import jax
import numpy as np

from ksurrogate import batching


@dataclasses.dataclass
class Timing:
  """Seconds of the chunked programs of one call: their compilation, and per program the
  steady-state seconds and rows (the chunks after the first: a compiled program's first run also
  pays one-time costs; a program run on one chunk counts that chunk)."""
  compile: float = 0.0
  programs: list = dataclasses.field(default_factory=list)   # (seconds, rows) of the warm chunks

  def per_row(self) -> float:
    """Steady-state seconds per row, summed over the programs each row goes through."""
    return float(sum(t / max(n, 1) for t, n in self.programs))


def run_chunks(program, rows, *shared, chunk_size: int, timing: Optional[Timing] = None,
               rows_fn: Optional[Callable] = None, **static):
  """program(rows_fn(chunk), *shared, **static) over row chunks of `rows` (a numpy array or
  pytree), concatenated as numpy. `program` is a `jax.jit` function; static keyword arguments
  are its static ones. `rows_fn` maps each (padded) chunk to the program's first argument."""
  timing = Timing() if timing is None else timing
  compiled, seconds = [], []

  def one(chunk):
    if rows_fn is not None:
      chunk = rows_fn(chunk)
    if not compiled:
      t0 = time.perf_counter()
      compiled.append(program.lower(chunk, *shared, **static).compile())
      timing.compile += time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled[0](chunk, *shared))
    seconds.append(time.perf_counter() - t0)
    return out
  out = batching.chunked_map(one, rows, chunk_size=chunk_size)
  if len(seconds) > 1:
    timing.programs.append((sum(seconds[1:]), (len(seconds) - 1) * chunk_size))
  else:   # one chunk: its padding rows cost time but are not rows
    timing.programs.append((seconds[0], batching.num_rows(rows)))
  return jax.tree.map(np.asarray, out)
