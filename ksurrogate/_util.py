"""Small helpers shared across stages."""
from __future__ import annotations

import functools

import jax


def x64(fn):
  """Runs `fn` with float64 enabled: indicator Gram matrices are badly conditioned in float32."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with jax.enable_x64(True):
      return fn(*args, **kwargs)
  return wrapped
