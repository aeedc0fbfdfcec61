"""Task-attribution pipeline on a pretrained LM fine-tuned on task subsets: short named phases.

model, data (unsaved) -> cache (hidden states entering the first adapted block, and theta0's
target losses) -> finetune (chunked: the random subsets) -> truth_seed<r> (chunked: leave-one-out
and the full set per seed) -> probes (chunked: the empty set, singletons, planted pairs) ->
features (LoGra-projected answer-margin gradients of the LoRA B blocks at theta0) -> estimate
(the one-step estimator on thousands of subsets) -> one driver.Problem.
Outcomes are target answer-token cross-entropies (lower is better), one column per target task.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import ksurrogate as ks
from ksurrogate import metrics
from ksurrogate import projection
from ksurrogate.harness import driver, runs
from ksurrogate_experiments import common
from ksurrogate_experiments.shared import gguf_llama
from ksurrogate_experiments.shared import llama
from ksurrogate_experiments.tasks import data as data_lib
from ksurrogate_experiments.tasks import finetune as ft_lib
from ksurrogate_experiments.tasks import lora as lora_lib


# ---------------------------------------------------------------------------------------------
# Model and data (unsaved: rebuilt in seconds; the 135M parameters need not be copied)

@dataclasses.dataclass(frozen=True)
class Setup:
  params: dict
  cfg: llama.LlamaConfig
  description: str
  train: data_lib.Encoded     # training examples, group = task
  evals: data_lib.Encoded     # target evaluation examples, group = target
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


def setup(c) -> Setup:
  d = c.data
  tx = data_lib.texts(d.train_per_task, d.eval_per_target, d.seed)
  if c.model.kind == "gguf":
    path = c.model.gguf_path or None
    params, cfg = gguf_llama.load_params(path)
    tok, description = gguf_llama.load_tokenizer(path), f"GGUF {path or gguf_llama.default_gguf_path()}"
  else:
    from ksurrogate_experiments.icl.pipeline import tiny_tokenizer
    every = [data_lib.CHAT.format(prompt=p) + a for group in (*tx.train, *tx.targets) for p, a in group]
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
  return Setup(params, cfg, description, enc(tx.train, d.train_per_task, "task"),
               enc(tx.targets, d.eval_per_target, "target"), recipe, tuple(lora_lib.names(cfg, layers)))


@runs.stored("tasks.cache")
@dataclasses.dataclass(frozen=True)
class Cache:
  h_train: np.ndarray     # [N, L, d] input of the first adapted block
  h_eval: np.ndarray      # [N_eval, L, d]
  F0_examples: np.ndarray  # [N_eval] theta0's answer losses
  seconds: float          # steady seconds per cached sequence

  def train_data(self, s: Setup):
    return jnp.asarray(self.h_train), jnp.asarray(s.train.packed)

  def eval_data(self, s: Setup):
    return jnp.asarray(self.h_eval), jnp.asarray(s.evals.packed)


def cache(c, s: Setup) -> Cache:
  first = s.recipe.first
  run = jax.jit(jax.vmap(lambda t: lora_lib.hidden_inputs(s.params, s.cfg, t, first)))
  tokens = np.concatenate([s.train.tokens, s.evals.tokens])
  with runs.stopwatch() as sw:
    h = np.asarray(ks.batching.chunked_map(run, tokens, chunk_size=c.finetune.cache_batch))
  frozen = lora_lib.frozen_part(s.params, first, s.cfg)
  n = len(s.train)
  F0 = ft_lib.evaluate(frozen, s.cfg, first, (jnp.asarray(h[n:]), jnp.asarray(s.evals.packed)))
  return Cache(h[:n], h[n:], F0, sw.steady_seconds / len(tokens))


# ---------------------------------------------------------------------------------------------
# Design

@dataclasses.dataclass(frozen=True)
class Design:
  S_rand: np.ndarray    # [num_subsets, K] fine-tuned random subsets (first num_fit fit)
  S_truth: np.ndarray   # [K + 1, K] leave-one-out masks, then the full set
  S_probe: np.ndarray   # [1 + K + P, K] the empty set, singletons, planted pairs
  pairs: list           # [(relation, task a, task b, target)] of the planted pair rows
  S_est: np.ndarray     # [estimate.num_subsets, K] estimated subsets


def _bernoulli(key, m: int, K: int) -> np.ndarray:
  """m Bernoulli(0.5) subsets, an empty draw redrawn (nothing to fine-tune on)."""
  S = np.asarray(jax.random.bernoulli(key, 0.5, (m, K)))
  for i in np.flatnonzero(~S.any(1)):
    S[i] = np.asarray(jax.random.bernoulli(jax.random.fold_in(key, 10_000 + int(i)), 0.5, (K,)))
    S[i, int(i) % K] |= not S[i].any()
  return S


def planted_pairs() -> list:
  names = list(data_lib.TRAIN_TASKS)
  return [(rel, names.index(a), names.index(b), list(data_lib.TARGETS).index(t))
          for rel, rows in data_lib.PLANTED.items() for a, b, t in rows]


def probe_subsets(K: int, pairs) -> np.ndarray:
  rows = [np.zeros(K, bool), *np.eye(K, dtype=bool)]
  for _, a, b, _ in pairs:
    r = np.zeros(K, bool)
    r[[a, b]] = True
    rows.append(r)
  return np.stack(rows)


def design(c, s: Setup) -> Design:
  K = s.K
  pairs = planted_pairs()
  return Design(S_rand=_bernoulli(jax.random.key(c.seed + 2), c.design.num_subsets, K),
                S_truth=np.concatenate([np.asarray(ks.subsets.leave_one_out(K)), np.ones((1, K), bool)]),
                S_probe=probe_subsets(K, pairs), pairs=pairs,
                S_est=_bernoulli(jax.random.key(c.seed + 4), c.estimate.num_subsets, K))


# ---------------------------------------------------------------------------------------------
# Fine-tunes

def finetune_chunk(c, S_chunk, chunk: int, s: Setup, cch: Cache, seed: int = 0) -> dict:
  """Real fine-tunes of one chunk from theta0 of truth seed `seed`; every key a function of (config
  seed, truth seed, chunk), so a resumed run computes the same numbers. Empty rows: theta0."""
  S = np.asarray(S_chunk, bool)
  live = S.any(1)
  steps = s.recipe.num_steps
  F_ex = np.tile(cch.F0_examples, (len(S), 1))
  losses = np.zeros((len(S), steps), np.float32)   # an empty row takes no step
  seconds = compile_seconds = 0.0
  if live.any():
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(c.seed + 11), seed), chunk)
    frozen = lora_lib.frozen_part(s.params, s.recipe.first, s.cfg)
    # a short chunk is padded to the chunk size, so every chunk runs the one compiled shape
    with runs.stopwatch() as sw:
      ev, tl = ft_lib.finetune(s.cfg, s.recipe, s.lora0(seed, c.model.init_seed), frozen, cch.train_data(s),
                               cch.eval_data(s), s.train.group, S[live], key, chunk_size=c.design.chunk_size)
    F_ex[live], losses[live] = ev, tl
    seconds, compile_seconds = sw.steady_seconds / live.sum(), sw.compile_seconds
  return {"F": s.per_target(F_ex), "F_examples": F_ex, "train_loss": losses,
          "seconds": np.full(len(S), seconds), "seconds_compile": np.full(len(S), compile_seconds)}


def truth_finetunes(c, run: runs.Run, s: Setup, dsg: Design, cch: Cache) -> list:
  return [run.outcomes(f"truth_seed{r}", _seeded(r), c, dsg.S_truth, s, cch, chunk_size=c.design.chunk_size)
          for r in range(c.truth.seeds)]


def _seeded(seed: int):
  def chunk_fn(c, S_chunk, chunk, s, cch):
    return finetune_chunk(c, S_chunk, chunk, s, cch, seed=seed)
  return chunk_fn


def probe_summary(dsg: Design, probes: dict) -> dict:
  """Effects on each target, from the probe fine-tunes: singletons F({k}) - F({}) [K, T] and, per
  planted pair, both singles, the pair and the interaction F(ab) - F(a) - F(b) + F({})."""
  F = probes["F"]
  K = dsg.S_truth.shape[1]
  single = F[1:K + 1] - F[0]
  out = {"singleton_effects": single.tolist(), "empty": F[0].tolist(), "pairs": []}
  for i, (rel, a, b, t) in enumerate(dsg.pairs):
    ab = F[K + 1 + i, t] - F[0, t]
    out["pairs"].append({"relation": rel, "tasks": [data_lib.TRAIN_TASKS[a], data_lib.TRAIN_TASKS[b]],
                         "target": data_lib.TARGETS[t], "effect_a": float(single[a, t]),
                         "effect_b": float(single[b, t]), "effect_ab": float(ab),
                         "interaction": float(ab - single[a, t] - single[b, t])})
  return out


# ---------------------------------------------------------------------------------------------
# Estimate

@runs.stored("tasks.features")
@dataclasses.dataclass(frozen=True)
class FeatureSet:
  train_phi: np.ndarray
  train_offsets: np.ndarray
  eval_phi: np.ndarray
  eval_offsets: np.ndarray
  seconds: float

  def features(self, s: Setup):
    F = lambda phi, o, y: ks.Features(phi, o, y, "masked_token_ce")  # noqa: E731
    return F(self.train_phi, self.train_offsets, s.train.packed), F(self.eval_phi, self.eval_offsets, s.evals.packed)


def featurizer(s: Setup, lora0: dict, dim: int, dim_in: int, key):
  """(tapped, projections, factors) of the answer margins at theta0: LoGra over the LoRA B
  blocks (the A blocks are exactly zero there, B being zero)."""
  frozen = lora_lib.frozen_part(s.params, s.recipe.first, s.cfg)
  merged = lora_lib.merge(frozen, lora0, s.recipe.scale)
  tapped = projection.dense_taps(lambda ex: lora_lib.answer_margins(merged, s.cfg, s.recipe.first, *ex), s.adapted)
  pairs = {n: (ab["A"], ab["B"]) for n, ab in lora0.items()}
  shapes = {b: v for b, v in projection.lora_shapes(pairs).items() if b.endswith("/B")}
  dims = projection.split_dim(dim, shapes, min(dim_in, s.recipe.rank))
  return tapped, projection.projections(key, shapes, dims), projection.lora_factors(pairs, s.recipe.scale)


def featurize(c, s: Setup, cch: Cache) -> FeatureSet:
  tapped, P, factors = featurizer(s, s.lora0(0, c.model.init_seed), c.estimate.dim, c.estimate.dim_in,
                                  jax.random.key(c.seed + 5))
  with runs.stopwatch() as sw:
    tr = projection.featurize(tapped, P, cch.h_train, s.train.packed, factors=factors,
                              batch_size=c.estimate.feature_batch)
  ev = projection.featurize(tapped, P, cch.h_eval, s.evals.packed, factors=factors, batch_size=c.estimate.feature_batch)
  return FeatureSet(tr.phi, tr.offsets, ev.phi, ev.offsets, sw.steady_seconds / len(s.train))


@runs.stored("tasks.estimates")
@dataclasses.dataclass(frozen=True)
class Estimates:
  F_est: np.ndarray        # [num_estimated, T]
  F_est_rand: np.ndarray   # [num_subsets, T] the fine-tuned random subsets, estimated
  F_est_truth: np.ndarray  # [K + 1, T] leave-one-out and full set, estimated
  info: dict


def estimate(c, s: Setup, dsg: Design, fs: FeatureSet, tuned: dict) -> Estimates:
  """The one-step estimate (`ks.estimate`, mean loss, ridge calibrated on the first
  estimate.num_calibration fit fine-tunes) of every subset; its error against the other fit
  fine-tunes and its LDS against the held-out ones."""
  train_f, eval_f = fs.features(s)
  loss = lora_lib.masked_token_loss()
  task = s.train.group
  stats = ks.task_statistics(train_f, task, s.K, loss=loss)
  kw = dict(method="onestep", loss=loss, mean=True, stats=stats)
  n_cal, n_fit = c.estimate.num_calibration, c.design.num_fit
  F_ex = tuned["F_examples"]
  ridge, table = ks.calibrate_ridge(train_f, task, eval_f, dsg.S_rand[:n_cal], F_ex[:n_cal],
                                    grid=10.0 ** np.arange(-4.0, 6.0), **kw)
  F_est, t_est, compile_est = runs.steady(lambda: s.per_target(ks.estimate(train_f, task, dsg.S_est, eval_f,
                                                                          ridge=ridge, **kw)))
  F_rand = s.per_target(ks.estimate(train_f, task, dsg.S_rand, eval_f, ridge=ridge, **kw))
  loo = s.per_target(ks.estimate(train_f, task, dsg.S_truth, eval_f, ridge=ridge, **kw))
  scored, held = np.arange(n_cal, n_fit), np.arange(n_fit, len(dsg.S_rand))
  F_real = tuned["F"]
  skipped = {}   # figures undefined on this data (metrics.Undefined): None, and why
  median = lambda r: None if r is None else r["median"]  # noqa: E731
  ft_seconds = float(np.mean(tuned["seconds"]))
  info = {
      "method": "onestep", "projection": "logra", "dim": int(train_f.dim), "ridge": float(ridge),
      "ridge_calibration": {str(k): v for k, v in table.items()},
      "median_relative_error": median(metrics.attempt(skipped, "median_relative_error", metrics.relative_error,
                                                      F_rand[scored], F_real[scored])),
      "no_change_median_relative_error": median(metrics.attempt(
          skipped, "no_change_median_relative_error", metrics.relative_error,
          np.tile(s.per_target(_offsets_loss(fs, s, loss))[0], (len(scored), 1)), F_real[scored])),
      "lds_vs_finetune_heldout": metrics.attempt(skipped, "lds_vs_finetune_heldout", metrics.lds, F_rand[held],
                                                 F_real[held]),
      "seconds_features_per_example": fs.seconds, "seconds_estimate_per_subset": t_est / len(dsg.S_est),
      "seconds_compile_estimate": compile_est, "seconds_finetune_per_subset": ft_seconds,
      "num_estimated": int(len(dsg.S_est)), "skipped": skipped,
  }
  return Estimates(F_est=F_est, F_est_rand=F_rand, F_est_truth=loo, info=info)


def _offsets_loss(fs: FeatureSet, s: Setup, loss) -> np.ndarray:
  """[1, N_eval] theta0's losses as the features see them (z = 0): equal to the cache's F0."""
  return np.asarray(loss.values(jnp.asarray(fs.eval_offsets), jnp.asarray(s.evals.packed)))[None]


# ---------------------------------------------------------------------------------------------
# Composition

def problems(config, run: runs.Run, families=None):
  del families
  c = config
  cs = c.design.chunk_size
  s = run.phase("setup", setup, c, store=False)
  dsg = run.phase("design", design, c, s, store=False)
  cch = run.phase("cache", cache, c, s)
  tuned = run.outcomes("finetune", finetune_chunk, c, dsg.S_rand, s, cch, chunk_size=cs)
  common.require_varying(tuned["F"], 0.0, c.min_varying_targets, phase="finetune", threshold_field=None)
  truths = truth_finetunes(c, run, s, dsg, cch)
  probes = run.outcomes("probes", finetune_chunk, c, dsg.S_probe, s, cch, chunk_size=cs)
  fs = run.phase("features", featurize, c, s, cch)
  est = run.phase("estimate", estimate, c, s, dsg, fs, tuned)
  yield _problem(c, s, dsg, cch, tuned, truths, probes, est)


def _problem(c, s: Setup, dsg: Design, cch: Cache, tuned, truths, probes, est: Estimates) -> driver.Problem:
  K = s.K
  effects = np.stack([t["F"][:K] - t["F"][K][None] for t in truths])   # [seeds, K, T]
  fit, held = np.arange(c.design.num_fit), np.arange(c.design.num_fit, len(dsg.S_rand))
  F0 = s.per_target(cch.F0_examples[None])[0]
  curves = np.asarray(tuned["train_loss"])
  return driver.Problem(
      name="tasks", S=dsg.S_rand, F=tuned["F"], splits=[(fit, held)],
      truths={"loo": driver.Truth(effects, predictions={
          "estimator_direct": est.F_est_truth[:K] - est.F_est_truth[K][None]})},
      sources={"estimated": (dsg.S_est, est.F_est)}, estimates_of={"estimated": "exact"},
      info={"planted": {rel: [list(r) for r in rows] for rel, rows in data_lib.PLANTED.items()},
            "probes": probe_summary(dsg, probes), "estimator": est.info,
            "finetune": {"seconds_per_subset": float(np.mean(tuned["seconds"])),
                         "seconds_compile": float(np.max(tuned["seconds_compile"])),
                         "first_step_loss": float(np.mean(curves[:, 0])),
                         "last_step_loss": float(np.mean(curves[:, -1])),
                         "recipe": dataclasses.asdict(s.recipe), "model": s.description},
            "cache": {"seconds_per_sequence": cch.seconds, "sequences": int(len(cch.h_train) + len(cch.h_eval))},
            "theta0": {"target_loss": dict(zip(data_lib.TARGETS, F0.tolist()))},
            "ground_truth": {"seeds": int(len(effects)), "loo_effect_sd": float(effects.mean(0).std()),
                             "seed_noise_sd": float(effects.std(0, ddof=1).mean()) if len(effects) > 1 else None}},
      higher_is_better=False, outcome_name="target answer cross-entropy", task_labels=list(data_lib.TRAIN_TASKS))
