"""Task-attribution pipeline on a pretrained LM fine-tuned on task subsets: short named phases.

model, data (unsaved) -> cache (hidden states entering the first adapted block) -> theta0 (the
format warm-up merged in, theta0's target losses) -> finetune (chunked: the random subsets) ->
truth_seed<r> (chunked: leave-one-out, the full set and the planted pairs' leave-two-out, per
seed) -> probe_seed<r> (chunked: the empty set, singletons, planted pairs) -> features (LoGra
features of the LoRA B blocks at theta0) -> estimate (`ks.estimators` on thousands of subsets) ->
baselines (influence, TracIn, TRAK, similarity) -> selection_seed<r> (chunked: every method's
picked subsets on fresh seeds) -> one driver.Problem.
Outcomes are target answer-token cross-entropies (lower is better), one column per target task.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import ksurrogate as ks
from ksurrogate import families as families_lib
from ksurrogate import intervals
from ksurrogate import metrics
from ksurrogate.harness import driver, runs
from ksurrogate_experiments import common
from ksurrogate_experiments.shared import gguf_llama
from ksurrogate_experiments.shared import llama
from ksurrogate_experiments.tasks import data as data_lib
from ksurrogate_experiments.tasks import estimate as est_lib
from ksurrogate_experiments.tasks import finetune as ft_lib
from ksurrogate_experiments.tasks import lora as lora_lib
from ksurrogate_experiments.tasks import relations
from ksurrogate_experiments.tasks import selection as sel_lib


# ---------------------------------------------------------------------------------------------
# Model and data (unsaved: rebuilt in seconds; the 135M parameters need not be copied)

@dataclasses.dataclass(frozen=True)
class Setup:
  params: dict
  cfg: llama.LlamaConfig
  description: str
  train: data_lib.Encoded     # training examples, group = task
  evals: data_lib.Encoded     # target evaluation examples, group = target
  warmup: data_lib.Encoded    # format-pool examples, group = format task (none without a warm-up)
  recipe: ft_lib.Recipe
  adapted: tuple              # paths of the LoRA-adapted kernels

  @property
  def K(self) -> int:
    return len(data_lib.TRAIN_TASKS)

  @property
  def T(self) -> int:
    return len(data_lib.TARGETS)

  def per_target(self, F_examples) -> np.ndarray:
    """[m, N_eval] example losses -> [m, T] per-target means."""
    onehot = np.eye(self.T)[self.evals.group]
    return np.asarray(F_examples) @ (onehot / onehot.sum(0))

  def lora0(self, seed: int, init_seed: int) -> dict:
    """theta0's LoRA pytree (B = 0) of truth seed `seed`."""
    return lora_lib.init(jax.random.fold_in(jax.random.key(init_seed + 13), seed), self.params, self.adapted,
                         self.recipe.rank)

  def frozen(self, t0: "Theta0"):
    """What the adapted blocks and the head read at theta0: the frozen part with the format
    warm-up folded into the adapted kernels."""
    return lora_lib.with_kernels(lora_lib.frozen_part(self.params, self.recipe.first, self.cfg), t0.kernels)


def setup(c) -> Setup:
  d = c.data
  n_format = c.warmup.per_task if c.warmup.num_steps else 0
  tx = data_lib.texts(d.train_per_task, d.eval_per_target, d.seed, num_per_format=n_format)
  if c.model.kind == "gguf":
    path = c.model.gguf_path or None
    params, cfg = gguf_llama.load_params(path)
    tok, description = gguf_llama.load_tokenizer(path), f"GGUF {path or gguf_llama.default_gguf_path()}"
  else:
    from ksurrogate_experiments.icl.pipeline import tiny_tokenizer
    every = [data_lib.full_text(p, a) for group in (*tx.train, *tx.targets, *tx.warmup) for p, a in group]
    tok = tiny_tokenizer(every, c.model.tiny_vocab)
    cfg = llama.tiny_config(vocab_size=tok.get_vocab_size())
    params = llama.init_params(cfg, jax.random.key(c.model.init_seed))
    description = f"random-init tiny Llama (d={cfg.d_model}, {cfg.n_layers} layers, vocab {cfg.vocab_size})"
  f = c.finetune
  if f.lora_layers > cfg.n_layers:
    raise ValueError(f"finetune.lora_layers: {f.lora_layers} exceeds the model's {cfg.n_layers} blocks (0: all)")
  layers = f.lora_layers or cfg.n_layers
  recipe = ft_lib.Recipe(first=cfg.n_layers - layers, rank=f.rank, alpha=f.alpha, lr=f.lr, num_steps=f.num_steps,
                         batch_size=f.batch_size)
  enc = lambda groups, n, what: data_lib.encode(groups, tok, n, d.max_prompt_tokens, d.max_answer_tokens, what)  # noqa: E731
  warm = enc(tx.warmup, n_format, "format task") if n_format else data_lib.Encoded(
      np.zeros((0, d.max_prompt_tokens + d.max_answer_tokens), np.int32), np.zeros((0, 3, d.max_answer_tokens), np.int32),
      np.zeros(0, np.int32))
  return Setup(params, cfg, description, enc(tx.train, d.train_per_task, "task"),
               enc(tx.targets, d.eval_per_target, "target"), warm, recipe, tuple(lora_lib.names(cfg, layers)))


@runs.stored("tasks.cache")
@dataclasses.dataclass(frozen=True)
class Cache:
  h_train: np.ndarray     # [N, L, d] input of the first adapted block
  h_eval: np.ndarray      # [N_eval, L, d]
  h_warmup: np.ndarray    # [N_warmup, L, d]
  seconds: float          # steady seconds per cached sequence

  def train_data(self, s: Setup):
    return jnp.asarray(self.h_train), jnp.asarray(s.train.packed)

  def eval_data(self, s: Setup):
    return jnp.asarray(self.h_eval), jnp.asarray(s.evals.packed)


def cache(c, s: Setup) -> Cache:
  """The input of the first adapted block for every example (the blocks below it never change:
  neither the warm-up nor any fine-tune adapts them)."""
  first = s.recipe.first
  run = jax.jit(jax.vmap(lambda t: lora_lib.hidden_inputs(s.params, s.cfg, t, first)))
  tokens = np.concatenate([s.train.tokens, s.evals.tokens, s.warmup.tokens])
  with runs.stopwatch() as sw:
    h = np.asarray(ks.batching.chunked_map(run, tokens, chunk_size=c.finetune.cache_batch))
  n, n_ev = len(s.train), len(s.evals)
  return Cache(h[:n], h[n:n + n_ev], h[n + n_ev:], sw.steady_seconds / len(tokens))


@runs.stored("tasks.theta0")
@dataclasses.dataclass(frozen=True)
class Theta0:
  kernels: dict               # {path: adapted kernel with the warm-up folded in} ({}: no warm-up)
  F0_examples: np.ndarray     # [N_eval] theta0's answer losses
  F_raw_examples: np.ndarray  # [N_eval] the pretrained model's (before the warm-up)
  warmup_loss: np.ndarray     # [warmup.num_steps] the warm-up's training losses
  seconds: float              # the warm-up's steady seconds


def theta0(c, s: Setup, cch: Cache) -> Theta0:
  """theta0: the pretrained model after the format warm-up (one LoRA fine-tune of the adapted
  blocks on the format pool, merged into their kernels), so that it already answers bare."""
  first = s.recipe.first
  raw = lora_lib.frozen_part(s.params, first, s.cfg)
  evals = cch.eval_data(s)
  F_raw = ft_lib.evaluate(raw, s.cfg, first, evals)
  w = c.warmup
  if not w.num_steps:
    return Theta0({}, F_raw, F_raw, np.zeros(0, np.float32), 0.0)
  recipe = dataclasses.replace(s.recipe, lr=w.lr, num_steps=w.num_steps, batch_size=w.batch_size)
  lora0 = lora_lib.init(jax.random.key(c.seed + 17), s.params, s.adapted, s.recipe.rank)
  with runs.stopwatch() as sw:
    lora, losses = ft_lib.train_all(s.cfg, recipe, lora0, raw, (jnp.asarray(cch.h_warmup), jnp.asarray(s.warmup.packed)),
                                    jax.random.key(c.seed + 19))
    kernels = jax.block_until_ready(lora_lib.merged_kernels(raw, lora, recipe.scale))
  F0 = ft_lib.evaluate(lora_lib.with_kernels(raw, kernels), s.cfg, first, evals)
  return Theta0({k: np.asarray(v) for k, v in kernels.items()}, F0, F_raw, np.asarray(losses), sw.steady_seconds)


# ---------------------------------------------------------------------------------------------
# Design

@dataclasses.dataclass(frozen=True)
class Design:
  S_rand: np.ndarray    # [num_subsets, K] fine-tuned random subsets (first num_fit fit)
  S_truth: np.ndarray   # [K + 1 + P, K] leave-one-out masks, the full set, leave-two-out of each planted pair
  S_probe: np.ndarray   # [1 + K + P, K] the empty set, singletons, planted pairs
  pairs: list           # [(relation, task a, task b, target)] of the planted pair rows
  S_est: np.ndarray     # [estimate.num_subsets, K] estimated subsets


def _bernoulli(key, m: int, K: int, *, distinct: bool = True) -> np.ndarray:
  """m Bernoulli(0.5) subsets: an empty draw redrawn (nothing to fine-tune on), then, if
  `distinct`, a repeat of an earlier row redrawn (split between fit and held-out rows it would
  score the fit). Other rows keep their i.i.d. draw, so a design without repeats is the plain
  draw. The estimated subsets are i.i.d. (distinct=False): a repeat there is only averaged."""
  S = np.array(jax.random.bernoulli(key, 0.5, (m, K)))   # a writable copy
  for i in np.flatnonzero(~S.any(1)):
    S[i] = np.asarray(jax.random.bernoulli(jax.random.fold_in(key, 10_000 + int(i)), 0.5, (K,)))
    S[i, int(i) % K] |= not S[i].any()
  seen = set()
  for i in range(m if distinct else 0):
    tries = 0
    while S[i].tobytes() in seen or not S[i].any():
      tries += 1
      S[i] = np.asarray(jax.random.bernoulli(jax.random.fold_in(key, 20_000 + m * tries + i), 0.5, (K,)))
    seen.add(S[i].tobytes())
  return S


def _pair_rows(K: int, pairs, value: bool) -> list:
  rows = []
  for _, a, b, _ in pairs:
    r = np.full(K, not value)
    r[[a, b]] = value
    rows.append(r)
  return rows


def design(c, s: Setup) -> Design:
  K = s.K
  pairs = relations.planted_pairs()
  return Design(S_rand=_bernoulli(jax.random.key(c.seed + 2), c.design.num_subsets, K),
                S_truth=np.stack([*np.asarray(ks.subsets.leave_one_out(K)), np.ones(K, bool),
                                  *_pair_rows(K, pairs, False)]),
                S_probe=np.stack([np.zeros(K, bool), *np.eye(K, dtype=bool), *_pair_rows(K, pairs, True)]),
                pairs=pairs, S_est=_bernoulli(jax.random.key(c.seed + 4), c.estimate.num_subsets, K, distinct=False))


# ---------------------------------------------------------------------------------------------
# Fine-tunes

def finetune_chunk(c, S_chunk, chunk: int, s: Setup, cch: Cache, t0: Theta0, seed: int = 0) -> dict:
  """Real fine-tunes of one chunk from theta0 of truth seed `seed`; every key a function of (config
  seed, truth seed, chunk), so a resumed run computes the same numbers. Empty rows: theta0."""
  S = np.asarray(S_chunk, bool)
  live = S.any(1)
  steps = s.recipe.num_steps
  F_ex = np.tile(t0.F0_examples, (len(S), 1))
  losses = np.zeros((len(S), steps), np.float32)   # an empty row takes no step
  seconds = compile_seconds = 0.0
  if live.any():
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(c.seed + 11), seed), chunk)
    frozen = s.frozen(t0)
    # a short chunk is padded to the chunk size, so every chunk runs the one compiled shape
    with runs.stopwatch() as sw:
      ev, tl = ft_lib.finetune(s.cfg, s.recipe, s.lora0(seed, c.model.init_seed), frozen, cch.train_data(s),
                               cch.eval_data(s), s.train.group, S[live], key, chunk_size=c.design.chunk_size)
    F_ex[live], losses[live] = ev, tl
    seconds, compile_seconds = sw.steady_seconds / live.sum(), sw.compile_seconds
  return {"F": s.per_target(F_ex), "F_examples": F_ex, "train_loss": losses,
          "seconds": np.full(len(S), seconds), "seconds_compile": np.full(len(S), compile_seconds)}


def seeded(seed: int):
  """The chunk function of fine-tunes on truth seed `seed` (selection seeds are 1000 + i)."""
  def chunk_fn(c, S_chunk, chunk, s, cch, t0):
    return finetune_chunk(c, S_chunk, chunk, s, cch, t0, seed=seed)
  return chunk_fn


def seeded_outcomes(run: runs.Run, name: str, seeds, c, S, s, cch, t0) -> list:
  return [run.outcomes(f"{name}{r}", seeded(seed), c, S, s, cch, t0, chunk_size=c.design.chunk_size)
          for r, seed in enumerate(seeds)]


def per_target_lds(c, S, F, num_fit: int, families) -> dict:
  """Per target, each family's held-out LDS over eval.resplits seeded random re-splits of the
  fine-tuned subsets (the declared split's sizes), and kernel - linear with its re-split interval
  (the driver pools targets; the planted complements sit on single targets)."""
  rng = np.random.default_rng(c.seed + 29)
  lds = {}
  for _ in range(c.eval.resplits):
    perm = rng.permutation(len(S))
    fit, held = perm[:num_fit], perm[num_fit:]
    for name, g in families_lib.fit_all(families, {"exact": (S[fit], F[fit])}).items():
      lds.setdefault(name, []).append(metrics.lds(np.asarray(g.predict(S[held])), F[held], per_target=True))
  lds = {k: np.stack(v) for k, v in lds.items()}             # [resplits, T]
  frac = 1 - num_fit / len(S)
  out = {name: {t: float(np.nanmean(v[:, i])) for i, t in enumerate(data_lib.TARGETS)} for name, v in lds.items()}
  if "kernel_exact" in lds and "linear_exact" in lds:
    diff = lds["kernel_exact"] - lds["linear_exact"]
    out["kernel_minus_linear"] = {}
    for i, t in enumerate(data_lib.TARGETS):
      iv = intervals.resplit_interval(diff[:, i], test_fraction=frac)
      out["kernel_minus_linear"][t] = {**iv.entries("lds"), "verdict": iv.verdict(higher_is_better=True)}
  return out


# ---------------------------------------------------------------------------------------------
# Composition

def problems(config, run: runs.Run, families):
  c = config
  cs = c.design.chunk_size
  s = run.phase("setup", setup, c, store=False)
  dsg = run.phase("design", design, c, s, store=False)
  cch = run.phase("cache", cache, c, s)
  t0 = run.phase("theta0", theta0, c, s, cch)
  tuned = run.outcomes("finetune", finetune_chunk, c, dsg.S_rand, s, cch, t0, chunk_size=cs)
  common.require_varying(tuned["F"], 0.0, c.min_varying_targets, phase="finetune", threshold_field=None)
  truths = seeded_outcomes(run, "truth_seed", range(c.truth.seeds), c, dsg.S_truth, s, cch, t0)
  probes = seeded_outcomes(run, "probe_seed", range(c.truth.probe_seeds), c, dsg.S_probe, s, cch, t0)
  frozen = s.frozen(t0)
  fs = run.phase("features", est_lib.featurize, c, s, cch, t0, frozen)
  est = run.phase("estimate", est_lib.estimate, c, s, dsg, cch, t0, frozen, fs, tuned)
  base = run.phase("baselines", est_lib.baselines, c, s, fs)
  fit = np.arange(c.design.num_fit)
  fitted = run.phase("surrogates", lambda c_, *_: families_lib.fit_all(families(c_, "tasks"), {
      "exact": (dsg.S_rand[fit], tuned["F"][fit]), "estimated": (dsg.S_est, est.F_est)}), c, tuned, est, store=False)
  singles = np.mean([p["F"][1:s.K + 1] for p in probes], 0)
  picks = run.phase("selection_picks", lambda c_, *_: sel_lib.picks(
      c_, s.K, s.T, fitted, singles, base["similarity"]), c, tuned, est, base, *probes, store=False)
  masks = run.phase("selection_masks", lambda c_, p: sel_lib.masks(p), c, picks, store=False)
  selected = seeded_outcomes(run, "selection_seed", [1000 + i for i in range(c.selection.seeds)], c, masks, s, cch, t0)
  yield _problem(c, s, dsg, cch, t0, tuned, truths, probes, est, base, fitted, picks, masks, selected,
                 families(c, "tasks"))


def _problem(c, s: Setup, dsg: Design, cch: Cache, t0: Theta0, tuned, truths, probes, est, base, fitted, picks, masks,
             selected, families) -> driver.Problem:
  K = s.K
  F_truth = np.stack([t["F"] for t in truths])                  # [seeds, K + 1 + P, T]
  effects = F_truth[:, :K] - F_truth[:, K:K + 1]               # [seeds, K, T]
  fit, held = np.arange(c.design.num_fit), np.arange(c.design.num_fit, len(dsg.S_rand))
  F0, F_raw = (s.per_target(F[None])[0] for F in (t0.F0_examples, t0.F_raw_examples))
  curves = np.asarray(tuned["train_loss"])
  E = est.F_est_truth
  P = len(dsg.pairs)
  pairs = [(a, b) for _, a, b, _ in dsg.pairs]
  drop_two = F_truth[:, K + 1:K + 1 + P] - F_truth[:, K:K + 1]          # [seeds, P, T]
  inter = ks.pair_interactions(drop_two, effects, pairs)
  pair_truths = relations.pair_truths(dsg.pairs, inter, np.stack([p["F"] for p in probes]))
  E_drop = E[K + 1:K + 1 + P] - E[K][None]
  E_loo = E[:K] - E[K][None]
  return driver.Problem(
      name="tasks", S=dsg.S_rand, F=tuned["F"], splits=[(fit, held)],
      truths={"loo": driver.Truth(effects, predictions={
          "estimator_direct": E_loo,
          **{k: base[k] for k in ("influence", "tracin", "trak")}}),
          # the planted pairs' leave-two-out fine-tunes: what an additive fit cannot get
          "drop_two": driver.Truth(drop_two, pairs=pairs, predictions={"estimator_direct": E_drop}),
          "pair_interaction": driver.Truth(inter, pairs=pairs, of="interaction",
                                           predictions={"estimator_direct": ks.pair_interactions(E_drop, E_loo, pairs)})},
      sources={"estimated": (dsg.S_est, est.F_est)}, estimates_of={"estimated": "exact"},
      info={"planted": {rel: [list(r) for r in rows] for rel, rows in data_lib.PLANTED.items()},
            "pair_truths": pair_truths,
            "pair_recovery": relations.pair_recovery(
                fitted, dsg.pairs, pair_truths),
            "per_target_lds": per_target_lds(c, dsg.S_rand, tuned["F"], c.design.num_fit, [
                f for f in families if f.name in ("kernel", "linear")]),
            "probes": relations.probe_summary(dsg.pairs, probes), "estimator": est.info,
            "baselines": {"influence_solve": base["influence_solve"], "similarity": base["similarity"].tolist()},
            "selection": sel_lib.summary(picks, masks, selected),
            "finetune": {"seconds_per_subset": float(np.mean(tuned["seconds"])),
                         "seconds_compile": float(np.max(tuned["seconds_compile"])),
                         "first_step_loss": float(np.mean(curves[:, 0])),
                         "last_step_loss": float(np.mean(curves[:, -1])),
                         "recipe": dataclasses.asdict(s.recipe), "model": s.description},
            "cache": {"seconds_per_sequence": cch.seconds,
                      "sequences": int(len(cch.h_train) + len(cch.h_eval) + len(cch.h_warmup))},
            "theta0": {"target_loss": dict(zip(data_lib.TARGETS, F0.tolist())),
                       "pretrained_target_loss": dict(zip(data_lib.TARGETS, F_raw.tolist())),
                       "warmup_first_loss": float(np.mean(t0.warmup_loss[:5])) if len(t0.warmup_loss) else None,
                       "warmup_last_loss": float(np.mean(t0.warmup_loss[-5:])) if len(t0.warmup_loss) else None,
                       "warmup_seconds": t0.seconds},
            "ground_truth": {"seeds": int(len(effects)), "loo_effect_sd": float(effects.mean(0).std()),
                             "seed_noise_sd": float(effects.std(0, ddof=1).mean()) if len(effects) > 1 else None}},
      higher_is_better=False, outcome_name="target answer cross-entropy", task_labels=list(data_lib.TRAIN_TASKS))
