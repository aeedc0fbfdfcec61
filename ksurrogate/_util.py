"""Small helpers shared across stages."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def x64(fn):
  """Runs `fn` with float64 enabled: indicator Gram matrices are badly conditioned in float32."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with jax.enable_x64(True):
      return fn(*args, **kwargs)
  return wrapped


def pad_rows(a, size: int):
  """Pads a batch to `size` rows by repeating its last row, so every batch hits one compiled shape
  (callers drop the padded outputs). Works on numpy and JAX arrays, typed PRNG keys included."""
  if len(a) >= size:
    return a
  xp = np if isinstance(a, np.ndarray) else jnp
  return xp.concatenate([a, xp.repeat(a[-1:], size - len(a), 0)])
