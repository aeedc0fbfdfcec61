"""Two small models as plain jax.numpy functions over dict params, importable both by the tests
(current JAX) and by make_golden.py in the legacy neural-tangents environment (jax 0.4.30).
Params come from numpy's RNG, not JAX's, so both environments build identical inputs."""
import jax
import jax.numpy as jnp
import numpy as np


def mlp_params(seed=0, d_in=6, width=16, d_out=3):
  r = np.random.default_rng(seed)
  return {"w1": r.normal(0, 1 / np.sqrt(d_in), (d_in, width)).astype(np.float32),
          "b1": r.normal(0, 0.1, width).astype(np.float32),
          "w2": r.normal(0, 1 / np.sqrt(width), (width, width)).astype(np.float32),
          "b2": r.normal(0, 0.1, width).astype(np.float32),
          "w3": r.normal(0, 1 / np.sqrt(width), (width, d_out)).astype(np.float32),
          "b3": np.zeros(d_out, np.float32)}


def mlp(params, x):
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  h = jax.nn.gelu(h @ params["w2"] + params["b2"])
  return h @ params["w3"] + params["b3"]


def transformer_params(seed=0, vocab=11, seq=5, d=8, heads=2, mlp_dim=16):
  r = np.random.default_rng(seed)
  n = lambda *s, sc=0.3: r.normal(0, sc, s).astype(np.float32)  # noqa: E731
  return {"tok": n(vocab, d), "pos": n(seq, d), "wq": n(d, d), "wk": n(d, d), "wv": n(d, d), "wo": n(d, d),
          "ln_g": np.ones(d, np.float32) + n(d, sc=0.05), "w_in": n(d, mlp_dim), "w_out": n(mlp_dim, d),
          "head": n(d, vocab), "heads": np.zeros(heads, np.float32)}


def _norm(x, g):
  mu = x.mean(-1, keepdims=True)
  return g * (x - mu) / jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5)


def transformer(params, tokens):
  """One causal attention block + MLP; logits of the last position. tokens: int [B, seq]."""
  h = params["tok"][tokens] + params["pos"][None]
  B, T, d = h.shape
  H = params["heads"].shape[0]
  split = lambda a: a.reshape(B, T, H, d // H).transpose(0, 2, 1, 3)  # noqa: E731
  q, k, v = split(h @ params["wq"]), split(h @ params["wk"]), split(h @ params["wv"])
  att = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // H)
  att = jnp.where(np.tril(np.ones((T, T), bool)), att, -1e9)
  h = h + (jax.nn.softmax(att, -1) @ v).transpose(0, 2, 1, 3).reshape(B, T, d) @ params["wo"]
  h = h + jax.nn.relu(_norm(h, params["ln_g"]) @ params["w_in"]) @ params["w_out"]
  return _norm(h, params["ln_g"])[:, -1] @ params["head"]


def cases():
  """name -> (f, params0, params1, x1, x2)."""
  r = np.random.default_rng(1)
  p0, p1 = mlp_params(0), mlp_params(1)
  p1 = {k: p0[k] + 0.05 * (p1[k] - p0[k]) for k in p0}
  t0, t1 = transformer_params(0), transformer_params(1)
  t1 = {k: t0[k] + 0.05 * (t1[k] - t0[k]) for k in t0}
  return {
      "mlp": (mlp, p0, p1, r.normal(size=(7, 6)).astype(np.float32), r.normal(size=(4, 6)).astype(np.float32)),
      "transformer": (transformer, t0, t1, r.integers(0, 11, (6, 5)), r.integers(0, 11, (3, 5))),
  }
