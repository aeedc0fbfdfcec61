"""Shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so this folder is on sys.path)."""
import time

import jax


def timed(fn):
  """(result, wall seconds) of fn(), waiting for every array it returns."""
  t0 = time.perf_counter()
  out = fn()
  jax.block_until_ready(jax.tree.leaves(out))
  return out, time.perf_counter() - t0
