"""First-order estimate of ICL outcomes in input-embedding space.

For a prompt S and query q, write E(S, q) [L, d] for the input embeddings of the token sequence
prompt+query and f_q(E) for the 2-way CE at the query's last token. Around an anchor prompt S0,

    F(S, q) ~= F(S0, q) + < grad_E f_q(E(S0, q)),  E(S, q) - E(S0, q) >.

Alignment: the task must be encoded with `aligned=True` (see `ksurrogate_experiments.icl.data`): every
demonstration is padded with visible pad tokens to one slot length Ls, so slot j of every prompt
covers positions [j*Ls, (j+1)*Ls) and the query starts at k*Ls in every prompt. The query part of
E(S, q) - E(S0, q) is then zero and the prefix part is, slot by slot, E(demo S_j) - E(demo S0_j),
with no attention mask that depends on S: exactly the function the oracle runs.

Cost: the gradient is taken once per (anchor, query) -- the anchor's prefix forward is shared by
all its queries and the T gradients come from one batched VJP. Because the difference decomposes
over slots, the inner products are pre-contracted against every pool demonstration once:

    C[a, q, j, k] = < G[a, q, slot j], E(demo k) >,   [A, T, shots, K],

after which an estimate is F0[a, q] + sum_j (C[a, q, j, S_j] - C[a, q, j, S0_j]): a gather and a
sum, jitted and batched over thousands of prompts (contracting G [A, T, L, d] with per-prompt
embedding sequences directly would need m*T*L*d memory). Note what this implies: for a fixed
anchor the estimate is linear in the (slot, demonstration) indicators of the prompt.

`python benchmarks/icl_estimate.py` measures the error and speed against real inference.
"""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from ksurrogate_experiments.icl import inference
from ksurrogate_experiments.shared import llama
from ksurrogate_experiments.icl.data import EncodedTask


def _check_aligned(task: EncodedTask):
  if task.slot_len is None or any(len(d) != task.slot_len for d in task.demo_tokens):
    raise ValueError("task: the estimator needs slot-aligned demonstrations; encode with aligned=True")


def queries_ce(params, cfg, E_PxD, query_TxQ, query_len_T, labels_T, option_ids):
  """CE [T] of T right-padded queries after a prefix given by its input embeddings."""
  cache = llama.prefix_embeds(params, cfg, E_PxD, E_PxD.shape[0])
  return inference.two_way_ce(llama.suffix(params, cfg, cache, query_TxQ, query_len_T, option_ids), labels_T)


@functools.partial(jax.jit, static_argnames=("cfg", "shots"))
def _anchor_coefficients(params, cfg, shots, E_PxD, demo_E_KxLxD, query_TxQ, query_len_T,
                         labels_T, option_ids):
  """(F0 [T], C [T, shots, K]) for one anchor prefix and one query group."""
  f = lambda E: queries_ce(params, cfg, E, query_TxQ, query_len_T, labels_T, option_ids)
  F0, vjp = jax.vjp(f, E_PxD)
  # one forward, T backward passes batched: row t of the identity picks query t's gradient
  (G_TxPxD,) = jax.vmap(vjp)(jnp.eye(F0.shape[0], dtype=F0.dtype))
  K, Ls, D = demo_E_KxLxD.shape
  G = G_TxPxD.reshape(-1, shots, Ls, D)
  return F0, jnp.einsum("tjld,kld->tjk", G, demo_E_KxLxD, precision=jax.lax.Precision.HIGHEST)


@dataclasses.dataclass(frozen=True)
class Linearization:
  """First-order models of F around each anchor prompt."""
  anchors_idx: np.ndarray   # [A, shots] int32
  F0: np.ndarray            # [A, T] outcomes at the anchors
  coef: np.ndarray          # [A, T, shots, K] slot-wise inner products C
  seconds: tuple            # wall time per anchor (the first includes compilation)


def linearize(anchors_idx, *, params, cfg: llama.LlamaConfig, task: EncodedTask,
              query_buckets=inference.QUERY_BUCKETS) -> Linearization:
  """Values and embedding gradients of every query's CE at every anchor prompt, pre-contracted
  against the pool's demonstration embeddings."""
  _check_aligned(task)
  a = inference.check_prompts(anchors_idx, task)
  demo_E = llama.embed(params, cfg, jnp.asarray(np.stack(task.demo_tokens)))
  groups = inference.query_groups(task, query_buckets, 1)
  opt = jnp.asarray(task.option_ids)
  shots, T, K = a.shape[1], task.num_queries, task.num_demos
  F0 = np.zeros((len(a), T), np.float32)
  coef = np.zeros((len(a), T, shots, K), np.float32)
  seconds = []
  for i, row in enumerate(a):
    t0 = time.perf_counter()
    E = jnp.take(demo_E, jnp.asarray(row), axis=0).reshape(-1, cfg.d_model)
    for ids, qtok, qlen, qlab in groups:
      f0, c = _anchor_coefficients(params, cfg, shots, E, demo_E, jnp.asarray(qtok),
                                   jnp.asarray(qlen), jnp.asarray(qlab), opt)
      F0[i, ids], coef[i, ids] = np.asarray(f0)[:len(ids)], np.asarray(c)[:len(ids)]
    seconds.append(time.perf_counter() - t0)
  return Linearization(a, F0, coef, tuple(seconds))


def nearest_anchor(prompts_idx, anchors_idx) -> np.ndarray:
  """[m] index of the anchor sharing the most demonstrations in the same slot (what the
  expansion sees as unchanged); ties go to the larger unordered overlap, then the lower index."""
  p, a = np.asarray(prompts_idx), np.asarray(anchors_idx)
  if p.ndim != 2 or a.ndim != 2 or p.shape[1] != a.shape[1]:
    raise ValueError(f"prompts_idx: shape {p.shape} does not match anchors {a.shape}")
  same_slot = (p[:, None, :] == a[None, :, :]).sum(-1)
  shared = (p[:, None, :, None] == a[None, :, None, :]).any(-1).sum(-1)
  return np.argmax(same_slot * (p.shape[1] + 1) + shared, axis=1)


@jax.jit
def _gather_estimate(F0_AxT, coef_AxTxJxK, anchors_AxJ, prompts_MxJ, nearest_M):
  def one(row_J, a):
    j = jnp.arange(row_J.shape[0])
    c = coef_AxTxJxK[a]                                  # [T, J, K]
    return F0_AxT[a] + (c[:, j, row_J] - c[:, j, anchors_AxJ[a]]).sum(-1)
  return jax.vmap(one)(prompts_MxJ, nearest_M)


def estimate(lin: Linearization, prompts_idx, anchor=None) -> np.ndarray:
  """F_hat [m, T] for prompts (demonstration ids [m, shots]); `anchor` [m] overrides the nearest
  anchor choice."""
  p = np.asarray(prompts_idx)
  K = lin.coef.shape[-1]
  if p.ndim != 2 or p.shape[1] != lin.anchors_idx.shape[1] or not np.issubdtype(p.dtype, np.integer):
    raise ValueError(f"prompts_idx: need int [m, {lin.anchors_idx.shape[1]}], got {p.dtype} {p.shape}")
  if p.size and (p.min() < 0 or p.max() >= K):
    raise ValueError(f"prompts_idx: ids must lie in [0, {K})")
  near = nearest_anchor(p, lin.anchors_idx) if anchor is None else np.asarray(anchor)
  return np.asarray(_gather_estimate(jnp.asarray(lin.F0), jnp.asarray(lin.coef),
                                     jnp.asarray(lin.anchors_idx), jnp.asarray(p, jnp.int32),
                                     jnp.asarray(near, jnp.int32)))


def neighbours(anchors_idx, num_demos: int, per_anchor: int, seed: int = 0) -> np.ndarray:
  """Prompts one slot away from an anchor: slot j replaced by a demonstration not in the anchor
  (the regime the expansion is built for), `per_anchor` per anchor, seeded."""
  rng = np.random.default_rng(seed)
  out = []
  for a in np.asarray(anchors_idx):
    free = np.setdiff1d(np.arange(num_demos), a)
    for _ in range(per_anchor):
      row = a.copy()
      row[rng.integers(len(a))] = rng.choice(free)
      out.append(row)
  return np.asarray(out, np.int32)


def line_errors(anchor, other, steps, *, params, cfg: llama.LlamaConfig, task: EncodedTask,
                query_buckets=inference.QUERY_BUCKETS) -> dict:
  """How far the expansion holds: along E(anchor) + s * (E(other) - E(anchor)), the relative
  error ||f - (f0 + s * jvp)|| / ||f - f0|| over all queries for each step s (s = 1 is the real
  prompt `other`; quadratic behaviour shows as error ~ s)."""
  _check_aligned(task)
  demo_E = llama.embed(params, cfg, jnp.asarray(np.stack(task.demo_tokens)))
  E0 = demo_E[np.asarray(anchor)].reshape(-1, cfg.d_model)
  dE = demo_E[np.asarray(other)].reshape(-1, cfg.d_model) - E0
  opt = jnp.asarray(task.option_ids)
  out = {float(st): [0.0, 0.0] for st in steps}
  for _, qtok, qlen, qlab in inference.query_groups(task, query_buckets, 1):
    f = jax.jit(lambda E: queries_ce(params, cfg, E, jnp.asarray(qtok), jnp.asarray(qlen),
                                     jnp.asarray(qlab), opt))
    f0, d = jax.jit(lambda E, v: jax.jvp(f, (E,), (v,)))(E0, dE)
    for st in steps:
      fs = f(E0 + st * dE)
      out[float(st)][0] += float(jnp.sum((fs - f0 - st * d) ** 2))
      out[float(st)][1] += float(jnp.sum((fs - f0) ** 2))
  return {st: float(np.sqrt(a / max(b, 1e-30))) for st, (a, b) in out.items()}
