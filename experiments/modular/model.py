"""The paper's modular-arithmetic transformer, as a flax Linen module (pure init/apply)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class Block(nn.Module):
  d_model: int
  num_heads: int
  mlp_dim: int
  activation: str

  @nn.compact
  def __call__(self, h):
    T = h.shape[1]
    mask = nn.make_causal_mask(jnp.ones((h.shape[0], T), jnp.int32))
    h = h + nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=self.d_model)(
        nn.LayerNorm()(h), mask=mask)
    act = jax.nn.relu if self.activation == "relu" else jax.nn.gelu
    y = nn.Dense(self.mlp_dim)(nn.LayerNorm()(h))
    return h + nn.Dense(self.d_model)(act(y))


class Transformer(nn.Module):
  """Learned token + position embeddings, pre-norm blocks, final norm, linear head over the p
  residues, read at the last input position."""
  vocab_size: int
  num_classes: int
  seq_len: int
  d_model: int = 128
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 512
  activation: str = "relu"

  @nn.compact
  def __call__(self, tokens):
    h = nn.Embed(self.vocab_size, self.d_model)(tokens)
    h = h + self.param("pos", nn.initializers.normal(0.02), (self.seq_len, self.d_model))[None]
    for _ in range(self.num_layers):
      h = Block(self.d_model, self.num_heads, self.mlp_dim, self.activation)(h)
    return nn.Dense(self.num_classes)(nn.LayerNorm()(h)[:, -1])
