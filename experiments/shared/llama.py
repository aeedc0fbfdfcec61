"""A Llama decoder in flax Linen (pure init/apply) with a prefix KV cache.

Every function here works on ONE sequence (no batch axis); batching is `jax.vmap` by the caller.
That keeps the cache shared across the queries of a prompt: vmapping `suffix` over queries with
the cache unbatched contracts every query against the same prefix keys without copying them.

Layout of the pieces the GGUF loader fills (flax Dense kernels are [in, out]):
  embed/embedding [V, d]; layers_i/{attn_norm,mlp_norm}/scale [d];
  layers_i/attn/{q,k,v,o}/kernel; layers_i/mlp/{gate,up,down}/kernel; final_norm/scale [d];
  lm_head [d, V] only when the embeddings are not tied.

RoPE rotates ADJACENT pairs (x0,x1),(x2,x3),... (GGML "normal" mode): the HF->GGUF converter
permutes the Q/K rows so that this is the rotation that reproduces the original model.
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

_NEG = -1e30  # masked score; finite so a fully masked row (never produced here) cannot make NaN


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  ffn_dim: int
  rope_base: float = 10000.0
  norm_eps: float = 1e-5
  tie_embeddings: bool = True

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim"):
      v = getattr(self, name)
      if not isinstance(v, int) or v <= 0:
        raise ValueError(f"{name}: must be a positive int, got {v!r}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"n_heads: {self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim: RoPE needs an even head dim, got {self.head_dim}")


def tiny_config(vocab_size: int = 300) -> LlamaConfig:
  """The small config every fast test runs through the same code path as the real model: GQA
  (4 query heads sharing 2 KV heads) and tied embeddings, like SmolLM2."""
  return LlamaConfig(vocab_size=vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                     head_dim=8, ffn_dim=64, rope_base=10000.0, norm_eps=1e-5, tie_embeddings=True)


class RMSNorm(nn.Module):
  eps: float

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    return x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps) * scale


def rope(x_LxHxD, pos_L, base: float):
  """Rotate adjacent pairs of the head dim by angle pos * base^(-2i/D)."""
  D = x_LxHxD.shape[-1]
  inv = base ** (-jnp.arange(0, D, 2, dtype=jnp.float32) / D)
  ang_LxP = pos_L.astype(jnp.float32)[:, None] * inv[None]
  cos, sin = jnp.cos(ang_LxP)[:, None], jnp.sin(ang_LxP)[:, None]
  x0, x1 = x_LxHxD[..., 0::2], x_LxHxD[..., 1::2]
  return jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).reshape(x_LxHxD.shape)


class Attention(nn.Module):
  cfg: LlamaConfig

  @nn.compact
  def __call__(self, x_LxD, pos_L, past_k, past_v, past_valid_P):
    c = self.cfg
    L, H, K, Dh = x_LxD.shape[0], c.n_heads, c.n_kv_heads, c.head_dim
    dense = functools.partial(nn.Dense, use_bias=False)
    q = rope(dense(H * Dh, name="q")(x_LxD).reshape(L, H, Dh), pos_L, c.rope_base)
    k = rope(dense(K * Dh, name="k")(x_LxD).reshape(L, K, Dh), pos_L, c.rope_base)
    v = dense(K * Dh, name="v")(x_LxD).reshape(L, K, Dh)
    causal_LxL = jnp.tril(jnp.ones((L, L), bool))
    if past_k is None:
      keys, vals, mask_LxM = k, v, causal_LxL
    else:
      keys, vals = jnp.concatenate([past_k, k]), jnp.concatenate([past_v, v])
      past_LxP = jnp.broadcast_to(past_valid_P[None], (L, past_valid_P.shape[0]))
      mask_LxM = jnp.concatenate([past_LxP, causal_LxL], 1)
    # GQA: group G = H / K query heads onto each KV head instead of repeating the keys
    qg = q.reshape(L, K, H // K, Dh)
    s_KxGxLxM = jnp.einsum("lkgd,mkd->kglm", qg, keys) / jnp.sqrt(Dh).astype(q.dtype)
    s_KxGxLxM = jnp.where(mask_LxM, s_KxGxLxM, _NEG)
    p = jax.nn.softmax(s_KxGxLxM, axis=-1)
    o = jnp.einsum("kglm,mkd->lkgd", p, vals).reshape(L, H * Dh)
    return dense(c.d_model, name="o")(o), k, v


class MLP(nn.Module):
  cfg: LlamaConfig

  @nn.compact
  def __call__(self, x):
    dense = functools.partial(nn.Dense, use_bias=False)
    h = jax.nn.silu(dense(self.cfg.ffn_dim, name="gate")(x)) * dense(self.cfg.ffn_dim, name="up")(x)
    return dense(self.cfg.d_model, name="down")(h)


class Block(nn.Module):
  cfg: LlamaConfig

  @nn.compact
  def __call__(self, x, pos, past_k, past_v, past_valid):
    a, k, v = Attention(self.cfg, name="attn")(
        RMSNorm(self.cfg.norm_eps, name="attn_norm")(x), pos, past_k, past_v, past_valid)
    x = x + a
    x = x + MLP(self.cfg, name="mlp")(RMSNorm(self.cfg.norm_eps, name="mlp_norm")(x))
    return x, k, v


class Llama(nn.Module):
  cfg: LlamaConfig

  def setup(self):
    c = self.cfg
    self.embed = nn.Embed(c.vocab_size, c.d_model, embedding_init=nn.initializers.normal(0.02))
    self.layers = [Block(c) for _ in range(c.n_layers)]
    self.final_norm = RMSNorm(c.norm_eps)
    if not c.tie_embeddings:
      self.lm_head = self.param("lm_head", nn.initializers.normal(0.02), (c.d_model, c.vocab_size))

  def __call__(self, tokens_L):
    """Init entry point and plain full forward: logits at every position, [L, V]."""
    h, _, _ = self.hidden(self.embed(tokens_L), jnp.arange(tokens_L.shape[0]))
    return self.head(h)

  def embed_tokens(self, tokens):
    return self.embed(tokens)

  def hidden(self, x_LxD, pos_L, past_k=None, past_v=None, past_valid_P=None, layers=None):
    """Run the blocks; past_k/past_v: [n_layers, P, n_kv, head_dim] or None. `layers` (lo, hi):
    only blocks lo..hi-1, x being the input of block lo (a cache of the frozen blocks below).
    Returns (final hidden [L, d] before the final norm, keys, values [n_layers, L, n_kv, Dh])."""
    ks, vs = [], []
    lo, hi = (0, len(self.layers)) if layers is None else layers
    for i in range(lo, hi):
      blk = self.layers[i]
      pk = None if past_k is None else past_k[i]
      pv = None if past_v is None else past_v[i]
      x_LxD, k, v = blk(x_LxD, pos_L, pk, pv, past_valid_P)
      ks.append(k)
      vs.append(v)
    return x_LxD, jnp.stack(ks), jnp.stack(vs)

  def head(self, h_xD, vocab_ids=None):
    """Logits over the whole vocab, or only over `vocab_ids` (the option tokens): the outcome needs
    two logits, so the restricted head skips a [d, V] matmul (V = 49,152 for SmolLM2)."""
    h = self.final_norm(h_xD)
    if self.cfg.tie_embeddings:
      W_VxD = self.embed.embedding
      return h @ (W_VxD if vocab_ids is None else W_VxD[vocab_ids]).T
    W_DxV = self.lm_head
    return h @ (W_DxV if vocab_ids is None else W_DxV[:, vocab_ids])


def init_params(cfg: LlamaConfig, key) -> dict:
  """Random fp32 params (flax variables dict) for `cfg`."""
  return Llama(cfg).init(key, jnp.zeros((4,), jnp.int32))


# ---------------------------------------------------------------------------------------------
# Pure functional entry points (single sequence; vmap to batch). `cfg` is static.

def forward(params, cfg: LlamaConfig, tokens_L):
  """Full causal forward: logits [L, V]."""
  return Llama(cfg).apply(params, tokens_L)


def embed(params, cfg: LlamaConfig, tokens):
  """Input embeddings of token ids, [..., d]."""
  return Llama(cfg).apply(params, tokens, method=Llama.embed_tokens)


def logits_from_embeds(params, cfg: LlamaConfig, E_LxD, index, vocab_ids=None):
  """Logits at position `index` of a full causal forward over input embeddings E [L, d]
  (positions 0..L-1). With `vocab_ids` only those columns of the head are computed."""
  m = Llama(cfg)

  def run(mdl):
    h, _, _ = mdl.hidden(E_LxD, jnp.arange(E_LxD.shape[0]))
    return mdl.head(h[index], vocab_ids)
  return nn.apply(run, m)(params)


def run_layers(params, cfg: LlamaConfig, x_LxD, lo: int, hi: int):
  """Blocks lo..hi-1 (static) on x [L, d], the input of block lo at positions 0..L-1 (causal, no
  cache): the hidden state after block hi-1, [L, d]. lo = 0 takes input embeddings."""
  return Llama(cfg).apply(params, x_LxD, jnp.arange(x_LxD.shape[0]), layers=(lo, hi), method=Llama.hidden)[0]


def head(params, cfg: LlamaConfig, h_xD, vocab_ids=None):
  """Final norm and LM head on hidden states [..., d] (after the last block): logits [..., V]."""
  return Llama(cfg).apply(params, h_xD, vocab_ids, method=Llama.head)


def prefix(params, cfg: LlamaConfig, tokens_P, length=None):
  """Run a prompt prefix once and keep its keys/values.

  tokens_P may be right-padded to a bucket; `length` (traced int) is the real token count, the
  rest are masked out of attention for later suffixes. Returns the cache dict
  {k, v: [n_layers, P, n_kv, Dh], valid: bool [P], length: int}.
  """
  length = tokens_P.shape[0] if length is None else length
  return prefix_embeds(params, cfg, embed(params, cfg, tokens_P), length)


def prefix_embeds(params, cfg: LlamaConfig, E_PxD, length):
  """`prefix` from input embeddings (the estimator differentiates through this)."""
  P = E_PxD.shape[0]
  m = Llama(cfg)
  _, k, v = m.apply(params, E_PxD, jnp.arange(P), method=Llama.hidden)
  return {"k": k, "v": v, "valid": jnp.arange(P) < length, "length": jnp.asarray(length, jnp.int32)}


def _suffix_one(params, cfg, cache, tokens_Q, length, vocab_ids):
  m = Llama(cfg)

  def run(mdl):
    x = mdl.embed_tokens(tokens_Q)
    h, _, _ = mdl.hidden(x, cache["length"] + jnp.arange(tokens_Q.shape[0]),
                         cache["k"], cache["v"], cache["valid"])
    # right-padding of the suffix is harmless: causality keeps pads out of earlier positions
    return mdl.head(h[length - 1], vocab_ids)
  return nn.apply(run, m)(params)


def suffix(params, cfg: LlamaConfig, cache, tokens_BxQ, lengths_B, vocab_ids=None):
  """Logits at the last real token of each suffix continuing `cache`: [B, V] (or [B, len(vocab_ids)]).

  tokens_BxQ are right-padded; lengths_B (>= 1) count the real tokens of each row.
  """
  f = lambda t, n: _suffix_one(params, cfg, cache, t, n, vocab_ids)
  return jax.vmap(f)(tokens_BxQ, lengths_B)


def num_params(params) -> int:
  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
