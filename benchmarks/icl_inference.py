"""ICL oracle throughput: cached, bucketed, batched `outcomes` vs a naive full forward per
(prompt, query) pair, on the SAME pairs in the same run, on the real SmolLM2-135M (GGUF).

  python benchmarks/icl_inference.py --prompts 2 --queries 24

Compilation is done on a warm-up call and reported separately; the timed runs are steady state.
Tokens/s counts real (unpadded) tokens each method actually ran; "pair tokens/s" counts the
prompt+query tokens of every pair answered per second, the work a naive evaluator would do.
"""
from __future__ import annotations

import argparse
import dataclasses
import time


import jax  # noqa: E402
import numpy as np  # noqa: E402

from ksurrogate_experiments.icl import data as D  # noqa: E402
from ksurrogate_experiments.shared import gguf_llama as G  # noqa: E402
from ksurrogate_experiments.icl import inference as I  # noqa: E402


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--task", choices=("sentiment", "coin_flip"), default="sentiment")
  ap.add_argument("--gguf", default=None)
  ap.add_argument("--prompts", type=int, default=2)
  ap.add_argument("--queries", type=int, default=24, help="first N query examples")
  ap.add_argument("--natural", action="store_true", help="unpadded demonstrations instead of slot-aligned")
  ap.add_argument("--prompt-batch", type=int, default=4)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)

  t = time.perf_counter()
  params, cfg = G.load_params(args.gguf)
  tok = G.load_tokenizer(args.gguf)
  print(f"loaded {cfg.n_layers}-layer d{cfg.d_model} model in {time.perf_counter() - t:.1f}s", flush=True)
  make = D.sentiment_data if args.task == "sentiment" else D.coin_flip_data
  task = D.encode(make(seed=args.seed), tok, aligned=not args.natural)
  task = dataclasses.replace(task, query_tokens=task.query_tokens[:args.queries],
                             query_labels=task.query_labels[:args.queries])
  prompts = D.sample_prompts(jax.random.key(args.seed), 2 * args.prompts, task.num_demos, 4)
  # warm-up on other prompts of the same count, so the timed call reuses every compiled shape
  warm, prompts = prompts[args.prompts:], prompts[:args.prompts]
  pairs = [(i, q) for i in range(len(prompts)) for q in range(task.num_queries)]
  kw = dict(params=params, cfg=cfg, task=task)

  t = time.perf_counter()
  I.outcomes(warm, prompt_batch=args.prompt_batch, **kw)
  c_fast = time.perf_counter() - t
  t = time.perf_counter()
  I.naive_outcomes(warm, pairs=[(0, q) for q in range(task.num_queries)], **kw)  # one prompt suffices
  c_naive = time.perf_counter() - t
  print(f"warm-up (compile + warm-up prompts): cached {c_fast:.1f}s, naive {c_naive:.1f}s", flush=True)

  t = time.perf_counter()
  F = I.outcomes(prompts, prompt_batch=args.prompt_batch, **kw)
  s_fast = time.perf_counter() - t
  t = time.perf_counter()
  F_naive = I.naive_outcomes(prompts, pairs=pairs, **kw)
  s_naive = time.perf_counter() - t

  plen = np.array([len(task.prompt_tokens(p)) for p in prompts])
  qlen = np.array([len(q) for q in task.query_tokens])
  pair_tokens = int((plen[:, None] + qlen[None, :]).sum())
  fast_tokens = int(plen.sum() + len(prompts) * qlen.sum())
  n = len(pairs)
  print(f"pairs: {n} ({len(prompts)} prompts x {task.num_queries} queries), prefix {plen.min()}-{plen.max()} "
        f"tokens, queries {qlen.min()}-{qlen.max()} tokens")
  print(f"max |F_cached - F_naive| = {np.abs(F - F_naive).max():.2e}")
  print(f"cached : {s_fast:7.2f}s  {n / s_fast:7.2f} pairs/s  {fast_tokens / s_fast:8.0f} tokens/s  "
        f"{pair_tokens / s_fast:8.0f} pair tokens/s")
  print(f"naive  : {s_naive:7.2f}s  {n / s_naive:7.2f} pairs/s  {pair_tokens / s_naive:8.0f} tokens/s")
  print(f"ratio (cached / naive pairs/s): {s_naive / s_fast:.2f}x")


if __name__ == "__main__":
  main()
