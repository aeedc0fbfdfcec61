import numpy as np
import pytest


@pytest.fixture
def rng():
  return np.random.default_rng(0)


def planted_xor(rng, m, K=12, T=4, pair=(3, 7), strength=1.5, noise=0.1):
  """F(s) = additive effects + strength * XOR(s_j, s_k) + noise, for T targets."""
  S = rng.random((m, K)) < 0.5
  a = rng.normal(0, 0.3, (K, T))
  xor = (S[:, pair[0]] ^ S[:, pair[1]]).astype(float)
  F = S @ a + strength * xor[:, None] + noise * rng.normal(size=(m, T))
  return S, F
