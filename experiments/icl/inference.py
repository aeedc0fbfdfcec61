"""Exact ICL outcome oracle: F(S) [T] = 2-way cross-entropy of each query's label under the model,
for a batch of k-shot prompts, computed by real inference.

Speed comes from three things:
  * the demonstration prefix of a prompt is run once (KV cache) and all queries continue it;
  * queries are batched against that one cache (vmap with the cache unbatched, so it is never
    copied per query), and several prompts are vmapped together;
  * every token length is padded to a bucket: prefixes to `prefix_buckets`, queries (grouped by
    length) to `query_buckets`, and batch counts to fixed multiples, so a whole experiment
    compiles a handful of shapes and never recompiles per prompt.
Prefix padding is masked out of attention and the query positions start at the real prefix
length, so the padded computation equals the unpadded one; query padding sits after the last
real token and causality keeps it out of the logits that are read.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ksurrogate_experiments.shared import llama
from ksurrogate_experiments.icl.data import EncodedTask

PREFIX_BUCKETS = (64, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024)
QUERY_BUCKETS = (8, 16, 24, 32, 40, 48, 64, 96, 128)
TOTAL_BUCKETS = tuple(sorted(set(PREFIX_BUCKETS + tuple(p + q for p in PREFIX_BUCKETS for q in (32, 64)))))


def bucket(n: int, buckets, arg: str) -> int:
  """Smallest bucket >= n; a length past the largest bucket is an error, not a recompile."""
  for b in sorted(buckets):
    if n <= b:
      return int(b)
  raise ValueError(f"{arg}: {n} tokens exceed the largest bucket ({max(buckets)})")


def two_way_ce(z_Bx2, labels_B):
  """Cross-entropy of the label among the two option logits."""
  return jax.nn.logsumexp(z_Bx2, -1) - jnp.take_along_axis(z_Bx2, labels_B[:, None], -1)[:, 0]


def check_prompts(prompts_idx, task: EncodedTask):
  p = np.asarray(prompts_idx)
  if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 1 or not np.issubdtype(p.dtype, np.integer):
    raise ValueError(f"prompts_idx: need a non-empty int array [m, shots], got {p.dtype} {p.shape}")
  if p.min() < 0 or p.max() >= task.num_demos:
    raise ValueError(f"prompts_idx: ids must lie in [0, {task.num_demos}), got [{p.min()}, {p.max()}]")
  return p.astype(np.int32)


def _pad_rows(rows, width, pad_id):
  out = np.full((len(rows), width), pad_id, np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


@functools.partial(jax.jit, static_argnames=("cfg",))
def prompt_batch_ce(params, cfg, prefix_MxP, prefix_len_M, query_TxQ, query_len_T, labels_T, option_ids):
  """CE [M, T] for M right-padded prefixes x T right-padded queries (one compile per shape)."""
  def one(tok_P, n):
    cache = llama.prefix(params, cfg, tok_P, n)
    z_Tx2 = llama.suffix(params, cfg, cache, query_TxQ, query_len_T, option_ids)
    return two_way_ce(z_Tx2, labels_T)
  return jax.vmap(one)(prefix_MxP, prefix_len_M)


def query_groups(task: EncodedTask, query_buckets, multiple):
  """Queries grouped by length bucket: list of (ids [n], tokens [n', Qb], lengths [n'], labels
  [n']) with n' = n rounded up to `multiple` by repeating the group's last query."""
  lens = np.array([len(q) for q in task.query_tokens])
  if lens.min() < 1:
    raise ValueError("task: a query has no tokens")
  qb = np.array([bucket(int(n), query_buckets, "task") for n in lens])
  groups = []
  for b in np.unique(qb):
    ids = np.flatnonzero(qb == b)
    full = np.concatenate([ids, np.repeat(ids[-1:], -len(ids) % multiple)])
    groups.append((ids, _pad_rows([task.query_tokens[i] for i in full], int(b), task.pad_id),
                   lens[full].astype(np.int32), task.query_labels[full].astype(np.int32)))
  return groups


def outcomes(prompts_idx, *, params, cfg: llama.LlamaConfig, task: EncodedTask,
             prefix_buckets=PREFIX_BUCKETS, query_buckets=QUERY_BUCKETS, prompt_batch: int = 4,
             query_multiple: int = 1) -> np.ndarray:
  """F [m, T]: the 2-way CE of every query after every prompt (demonstration ids [m, shots],
  order kept), by cached, bucketed, batched inference.

  Prompts are grouped by prefix bucket and run `prompt_batch` at a time; queries are grouped by
  length bucket, each group's count rounded up to `query_multiple` (1: the query set is fixed per
  task, so its groups already have fixed shapes; raise it to share compiles across tasks)."""
  p = check_prompts(prompts_idx, task)
  for arg, v in (("prompt_batch", prompt_batch), ("query_multiple", query_multiple)):
    if not isinstance(v, int) or v < 1:
      raise ValueError(f"{arg}: must be a positive int, got {v!r}")
  prefixes = [task.prompt_tokens(row) for row in p]
  plen = np.array([len(x) for x in prefixes], np.int32)
  pb = np.array([bucket(int(n), prefix_buckets, "prompts_idx") for n in plen])
  groups = query_groups(task, query_buckets, query_multiple)
  opt = jnp.asarray(task.option_ids)
  F = np.zeros((len(p), task.num_queries), np.float32)
  for b in np.unique(pb):
    rows = np.flatnonzero(pb == b)
    # fewer prompts than a batch: run them as they are rather than computing repeats
    nb = min(prompt_batch, len(rows))
    for s in range(0, len(rows), nb):
      chunk = rows[s:s + nb]
      # a short last chunk is padded by repetition so its shape matches the others
      full = np.concatenate([chunk, np.repeat(chunk[-1:], nb - len(chunk))])
      toks = jnp.asarray(_pad_rows([prefixes[i] for i in full], int(b), task.pad_id))
      lens = jnp.asarray(plen[full])
      for ids, qtok, qlen, qlab in groups:
        ce = prompt_batch_ce(params, cfg, toks, lens, jnp.asarray(qtok), jnp.asarray(qlen),
                             jnp.asarray(qlab), opt)
        F[np.ix_(chunk, ids)] = np.asarray(ce)[:len(chunk), :len(ids)]
  return F


@functools.partial(jax.jit, static_argnames=("cfg",))
def pair_ce(params, cfg, tokens_L, length, label, option_ids):
  """Naive reference: one full forward over prompt+query (right-padded), full-vocab logits at
  the last real token, then the 2-way CE of `label`."""
  E = llama.embed(params, cfg, tokens_L)
  z = llama.logits_from_embeds(params, cfg, E, length - 1)
  return two_way_ce(z[option_ids][None], label[None])[0]


def naive_outcomes(prompts_idx, *, params, cfg: llama.LlamaConfig, task: EncodedTask,
                   total_buckets=TOTAL_BUCKETS, pairs=None) -> np.ndarray:
  """F [m, T] by one independent full forward per (prompt, query) pair -- the baseline the
  cached oracle must equal. `pairs` (list of (i, t)) restricts the work; other entries are NaN."""
  p = check_prompts(prompts_idx, task)
  F = np.full((len(p), task.num_queries), np.nan, np.float32)
  if pairs is None:
    pairs = [(i, t) for i in range(len(p)) for t in range(task.num_queries)]
  opt = jnp.asarray(task.option_ids)
  for i, t in pairs:
    seq = np.concatenate([task.prompt_tokens(p[i]), task.query_tokens[t]])
    L = bucket(len(seq), total_buckets, "prompts_idx")
    tok = _pad_rows([seq], L, task.pad_id)[0]
    F[i, t] = float(pair_ce(params, cfg, jnp.asarray(tok), jnp.int32(len(seq)),
                            jnp.int32(task.query_labels[t]), opt))
  return F

