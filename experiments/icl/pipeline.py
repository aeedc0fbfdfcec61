"""In-context-learning attribution pipeline: short named phases composed by `problems`.

model (unsaved) -> per task: data (unsaved) -> design (prompts, estimator prompts, swap pairs,
random sets) -> exact outcomes of the sampled prompts (chunked real inference) -> swap outcomes
(real inference on the swapped prompts) -> estimate (first-order embedding-space estimator at a
few anchors, on thousands of prompts; error, LDS and speed against real inference) -> swap
correlation of every method -> selection (per selection seed, every C(K, shots) set scored by each
surrogate fitted on that seed's prompts; the chosen sets and the baselines run for real on
HELD-OUT queries) -> one driver.Problem per task.
Outcomes are per-query 2-way cross-entropies (lower is better; ln 2 = chance).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

import ksurrogate as ks
from ksurrogate_experiments import common
from ksurrogate_experiments.icl import data as icl_data
from ksurrogate_experiments.icl import estimate as embedding_estimate
from ksurrogate_experiments.icl import inference
from ksurrogate_experiments.shared import gguf_llama
from ksurrogate_experiments.shared import llama
from ksurrogate_experiments.shared import selection
from ksurrogate import families as families_lib
from ksurrogate import metrics
from ksurrogate.harness import driver, report, runs

LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------
# Model and data (unsaved: cheap to rebuild, and the 135M parameters need not be copied)

@dataclasses.dataclass(frozen=True)
class Model:
  params: dict
  cfg: llama.LlamaConfig
  tokenizer: object
  description: str


def raw_data(c, name: str) -> icl_data.ICLData:
  n = c.data.num_queries + c.data.num_heldout_queries
  if name == "sentiment":
    return icl_data.sentiment_data(c.data.num_demos, n, c.data.seed, max_words=c.data.max_words)
  if name == "coin_flip":
    return icl_data.coin_flip_data(c.data.num_demos, n, c.data.seed)
  raise ValueError(f"tasks: unknown task {name!r}; expected 'sentiment' or 'coin_flip'")


def tiny_tokenizer(texts, vocab_size: int):
  """Byte-level BPE trained on the task texts: small enough for a d=32 model, and (like SmolLM2's)
  it maps each option string and the pad space to one token, which `data.encode` checks."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(list(texts), trainers.BpeTrainer(
      vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  return tok


def load_model(c) -> Model:
  if c.model.kind == "gguf":
    path = c.model.gguf_path or None
    params, cfg = gguf_llama.load_params(path)
    return Model(params, cfg, gguf_llama.load_tokenizer(path), f"GGUF {path or gguf_llama.default_gguf_path()}")
  if c.model.kind == "tiny":
    texts = []
    for name in c.tasks:
      d = raw_data(c, name)
      texts += [d.demo_text(k) for k in range(d.num_demos)] + [d.query_text(q) for q in range(d.num_queries)]
    tok = tiny_tokenizer(texts, c.model.tiny_vocab)
    cfg = llama.tiny_config(vocab_size=tok.get_vocab_size())
    return Model(llama.init_params(cfg, jax.random.key(c.model.init_seed)), cfg, tok,
                 f"random-init tiny Llama (d={cfg.d_model}, {cfg.n_layers} layers, vocab {cfg.vocab_size})")
  raise ValueError(f"model.kind: must be 'gguf' or 'tiny', got {c.model.kind!r}")


@dataclasses.dataclass(frozen=True)
class Setup:
  name: str
  data: icl_data.ICLData          # all queries (the first num_queries score, the rest are held out)
  task: icl_data.EncodedTask      # demonstrations + the scoring queries
  heldout: icl_data.EncodedTask   # demonstrations + the held-out queries (selection evaluation only)
  model: Model

  @property
  def K(self) -> int:
    return self.task.num_demos


def make_data(c, model: Model, name: str) -> Setup:
  d = raw_data(c, name)
  full = icl_data.encode(d, model.tokenizer, aligned=True)
  nq = c.data.num_queries
  take = lambda rows: dataclasses.replace(full, query_tokens=tuple(full.query_tokens[i] for i in rows),
                                          query_labels=full.query_labels[rows])
  return Setup(name, d, take(np.arange(nq)), take(np.arange(nq, d.num_queries)), model)


# ---------------------------------------------------------------------------------------------
# Design

# Each design is its own phase reading only its own fields, so changing e.g. the swap count
# never invalidates the (expensive) exact outcomes of the sampled prompts.

@runs.stored("icl.design")
@dataclasses.dataclass(frozen=True)
class Design:
  prompts: np.ndarray      # [m, shots] sampled ordered prompts (the attribution's subsets)
  S: np.ndarray            # [m, K] their indicators


@runs.stored("icl.swap_design")
@dataclasses.dataclass(frozen=True)
class SwapDesign:
  demo: np.ndarray         # [K * n_swap] the demonstration swapped out
  base: np.ndarray         # [K * n_swap, shots] a prompt containing it
  new: np.ndarray          # [K * n_swap, shots] the same prompt with it replaced in place
  run: np.ndarray          # [r, shots] prompts of the swaps that are not among the sampled ones


def swaps(rng, prompts, K, per_demo):
  """(demo [n], base [n, shots], new [n, shots]): per_demo prompts holding each demonstration (the
  sampled ones first), each with it replaced in place by one the prompt does not hold."""
  demo, base, new = [], [], []
  shots = prompts.shape[1]
  for k in range(K):
    have = np.flatnonzero((prompts == k).any(1))
    rows = [prompts[i] for i in rng.choice(have, min(per_demo, len(have)), replace=False)]
    while len(rows) < per_demo:   # too few sampled prompts hold k: draw more holding it
      others = rng.choice(np.setdiff1d(np.arange(K), [k]), shots - 1, replace=False)
      rows.append(np.insert(others, rng.integers(shots), k))
    for row in rows:
      swapped = row.copy()
      swapped[row == k] = rng.choice(np.setdiff1d(np.arange(K), row))
      demo.append(k)
      base.append(row)
      new.append(swapped)
  return np.asarray(demo, np.int32), np.asarray(base, np.int32), np.asarray(new, np.int32)


def design(c, s: Setup) -> Design:
  prompts = icl_data.sample_prompts(jax.random.key(c.seed), c.design.num_subsets, s.K, c.data.shots,
                                    distinct_sets=True)   # a reordered fit prompt is no held-out input
  return Design(prompts, icl_data.indicators(prompts, s.K))


def swap_design(c, s: Setup, dsg: Design) -> SwapDesign:
  demo, base, new = swaps(np.random.default_rng(c.seed + 2), dsg.prompts, s.K, c.truth.swaps_per_demo)
  known = {tuple(r) for r in dsg.prompts}
  run = []
  for r in np.concatenate([base, new]):
    if tuple(r) not in known:   # outcomes of sampled prompts are already known
      known.add(tuple(r))
      run.append(r)
  return SwapDesign(demo, base, new, np.asarray(run, np.int32).reshape(-1, base.shape[1]))


def exact_chunk(c, P_chunk, chunk: int, s: Setup, which: str) -> dict:
  """Real inference of every query after each prompt of the chunk (`which`: the scoring queries
  or the held-out ones); deterministic, so a resumed run recomputes identical numbers."""
  del chunk
  task = s.task if which == "scoring" else s.heldout
  P = np.asarray(P_chunk, np.int32)
  # A short chunk is padded (by repeating its last prompt) to a whole number of prompt batches,
  # so every chunk runs the one compiled batch shape instead of compiling a smaller one.
  nb = c.inference.prompt_batch
  P_full = np.concatenate([P, np.repeat(P[-1:], -len(P) % nb, axis=0)])
  # steady-state seconds (the same whichever chunk compiled), one-time seconds apart
  F, seconds, one_time = runs.steady(lambda: inference.outcomes(P_full, params=s.model.params, cfg=s.model.cfg, task=task,
                                                        prompt_batch=nb, query_multiple=c.inference.query_multiple))
  return {"F": F[:len(P)], "seconds": np.full(len(P), seconds / len(P)),
          "seconds_compile": np.full(len(P), one_time)}


def _lookup(rows, *tables):
  """Outcome rows of prompts `rows` from (prompts, F) tables (every row must be in one)."""
  index = {}
  for P, F in tables:
    for r, f in zip(P, F):
      index.setdefault(tuple(int(x) for x in r), f)
  return np.stack([index[tuple(int(x) for x in r)] for r in rows])


# ---------------------------------------------------------------------------------------------
# Estimator

@runs.stored("icl.estimates")
@dataclasses.dataclass(frozen=True)
class Estimates:
  many: np.ndarray          # [n, shots] prompts only the estimator scores
  F_many: np.ndarray        # [n, T] their estimated outcomes
  F_prompts: np.ndarray     # [m, T] estimated outcomes of the sampled prompts
  anchors: np.ndarray       # the Linearization, kept so later phases estimate any prompt
  F0: np.ndarray
  coef: np.ndarray
  info: dict

  @property
  def lin(self) -> embedding_estimate.Linearization:
    return embedding_estimate.Linearization(self.anchors, self.F0, self.coef, ())


def estimate(c, s: Setup, dsg: Design, exact: dict) -> Estimates:
  """The first-order embedding-space estimator (ksurrogate_experiments.icl.estimate) at the first
  num_anchors sampled prompts, scored against real inference on the other sampled prompts. Its
  zeroth-order counterpart (the nearest anchor's real value) is scored the same way and reported
  next to it: for whole-demonstration swaps the expansion is measured to be less accurate."""
  A = c.estimate.num_anchors
  anchors = dsg.prompts[:A]
  with runs.stopwatch() as lin_sw:
    lin = embedding_estimate.linearize(anchors, params=s.model.params, cfg=s.model.cfg, task=s.task)
  many = icl_data.sample_prompts(jax.random.key(c.seed + 1), c.estimate.num_subsets, s.K, c.data.shots)
  # compile (and a program's first run) timed apart from the steady figure
  F_many, t_many, compile_many = runs.steady(lambda: embedding_estimate.estimate(lin, many))
  F_prompts = embedding_estimate.estimate(lin, dsg.prompts)
  F_real = exact["F"]
  rest = np.arange(A, len(dsg.prompts))
  zeroth = lin.F0[embedding_estimate.nearest_anchor(dsg.prompts, anchors)]
  # Held-out prompts for the LDS: the first split's test rows, anchors excluded (exact there).
  held = splits(c, len(dsg.prompts))[0][1]
  held = held[held >= A]
  fro = lambda x: float(np.linalg.norm(x))
  t_real = float(np.mean(exact["seconds"]))          # steady-state: compile excluded per chunk
  t_grad = float(np.mean(lin.seconds[1:])) if A > 1 else float(lin.seconds[0])
  err, err0 = F_prompts[rest] - F_real[rest], zeroth[rest] - F_real[rest]
  spread = fro(F_real[rest] - F_real[rest].mean(0))
  # the experiment's own estimator through the library's report: its "no change" is the nearest
  # anchor's real value (the prompt left as its anchor), its setup the anchors' gradients
  estimator = ks.estimators.EstimatorReport(
      solver="first_order", space="embedding", dim=int(s.model.cfg.d_model), output="two_way_cross_entropy",
      memory_bytes=int(lin.coef.nbytes + lin.F0.nbytes), num_estimated=int(len(many)),
      seconds_setup=lin_sw.steady_seconds, seconds_compile=compile_many, seconds_per_subset=t_many / len(many))
  estimator = estimator.scored(
      F_prompts[rest], F_real[rest], F_base=zeroth[rest], lds_rows=held - A, seconds_real_per_subset=t_real,
      seconds_real_compile=float(np.max(exact["seconds_compile"])) if "seconds_compile" in exact else None,
      details={"anchors": int(A), "relative_frobenius_error": fro(err) / fro(F_real[rest]),
               "no_change_relative_frobenius_error": fro(err0) / fro(F_real[rest]),
               "error_over_spread": fro(err) / spread, "no_change_error_over_spread": fro(err0) / spread,
               "first_order_beats_no_change": bool(fro(err) < fro(err0)),
               "seconds_gradients_per_anchor": t_grad, "seconds_compile_linearize": lin_sw.compile_seconds})
  info = estimator.to_summary()
  return Estimates(many=many, F_many=F_many, F_prompts=F_prompts, anchors=lin.anchors_idx, F0=lin.F0,
                   coef=lin.coef, info=info)


# ---------------------------------------------------------------------------------------------
# Splits, swaps, selection

def splits(c, m: int) -> list:
  """The declared splits: per design.split_seeds seed, num_fit fit prompts and the rest held out."""
  out = []
  for seed in c.design.split_seeds:
    perm = np.random.default_rng(1000 + seed).permutation(m)
    out.append((np.sort(perm[:c.design.num_fit]), np.sort(perm[c.design.num_fit:])))
  return out


def swap_truth(dsg: Design, sw: SwapDesign, exact: dict, swapped: dict, K: int):
  """[n_swap, K, T] real F(S) - F(S with k swapped out), pair i of every demonstration."""
  tables = ((dsg.prompts, exact["F"]), (sw.run, swapped["F"]))
  diff = _lookup(sw.base, *tables) - _lookup(sw.new, *tables)
  order = np.argsort(sw.demo, kind="stable")
  return diff[order].reshape(K, -1, diff.shape[1]).transpose(1, 0, 2)


def swap_readout(sw: SwapDesign, K: int):
  """A fitted surrogate -> its predicted swap effect [K, T] on the truth's own prompt pairs (the
  mean over each demonstration's pairs of g(base) - g(swapped)): the driver's readout of the
  swap truth."""
  order = np.argsort(sw.demo, kind="stable")
  base, new = icl_data.indicators(sw.base, K), icl_data.indicators(sw.new, K)

  def readout(g):
    d = np.asarray(g.predict(base)) - np.asarray(g.predict(new))
    return d[order].reshape(K, -1, d.shape[1]).mean(1)
  return readout


def estimator_swaps(sw: SwapDesign, est: Estimates, K: int) -> np.ndarray:
  """The first-order estimator's own predicted swap effect [K, T] on the same pairs."""
  order = np.argsort(sw.demo, kind="stable")
  d = embedding_estimate.estimate(est.lin, sw.base) - embedding_estimate.estimate(est.lin, sw.new)
  return d[order].reshape(K, -1, d.shape[1]).mean(1)


def all_sets(K: int, shots: int) -> np.ndarray:
  """Every `shots`-subset of K demonstrations as sorted ids [C(K, shots), shots]."""
  return np.asarray(list(itertools.combinations(range(K), shots)), np.int32)


def similarity_set(s: Setup, shots: int) -> np.ndarray:
  """The `shots` demonstrations whose mean input embedding (pads excluded) is most cosine-similar
  to the scoring queries' mean embedding, most similar last (next to the query)."""
  E = lambda t: np.asarray(llama.embed(s.model.params, s.model.cfg, jnp.asarray(t[t != s.task.pad_id]))).mean(0)
  demos = np.stack([E(t) for t in s.task.demo_tokens])
  q = np.stack([E(t) for t in s.task.query_tokens]).mean(0)
  sim = demos @ q / (np.linalg.norm(demos, axis=1) * np.linalg.norm(q) + 1e-12)
  return np.argsort(sim)[-shots:].astype(np.int32)


def random_sets(c, K: int) -> np.ndarray:
  rng = np.random.default_rng(c.seed + 3)
  return np.stack([rng.choice(K, c.data.shots, replace=False) for _ in range(c.selection.num_random)]).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Picks:
  """Per selection seed (one per design.split_seeds seed), the set each method picks: every
  surrogate family fitted on that split's fit prompts' real outcomes ("exact") or on a seeded
  half of the estimated prompts ("estimated"), and the best of the split's fit prompts by real
  loss; plus the similarity baseline, which has no seed. Swap pairs and held-out queries are
  never part of a fit."""
  per_seed: list         # [{method: demonstration ids [shots]}], one dict per seed
  similarity: np.ndarray  # [shots]
  families: list          # the ksurrogate.families.Family list the surrogates were fitted from


def _mean_scores(g, cand, K: int, chunk: int) -> np.ndarray:
  """A surrogate's predicted mean query loss of every candidate set, scored in chunks."""
  return np.concatenate([np.asarray(g.predict(icl_data.indicators(cand[i:i + chunk], K))).mean(1)
                         for i in range(0, len(cand), chunk)])


def select(c, s: Setup, dsg: Design, exact: dict, est: Estimates, families) -> Picks:
  """Per seed, each surrogate's lowest predicted mean loss over all C(K, shots) sets.

  The seeds re-draw what a user would have measured (the split's num_fit prompts, as the paper's
  80), so the spread of the picks' held-out losses over seeds is the selection's own noise."""
  cand = all_sets(s.K, c.data.shots)
  X_est = icl_data.indicators(est.many, s.K)
  per_seed = []
  fams = families(c, s.name)
  for seed, (fit, _) in zip(c.design.split_seeds, splits(c, len(dsg.prompts))):
    half = np.sort(np.random.default_rng(2000 + seed).permutation(len(est.many))[:len(est.many) // 2])
    surrogates = families_lib.fit_all(fams, {
        "exact": (dsg.S[fit], exact["F"][fit]), "estimated": (X_est[half], est.F_many[half])})
    picks = {name: cand[int(np.argmin(_mean_scores(g, cand, s.K, c.selection.predict_chunk)))]
             for name, g in surrogates.items()}
    picks["best_sampled"] = dsg.prompts[fit][int(np.argmin(exact["F"][fit].mean(1)))]
    per_seed.append(picks)
  return Picks(per_seed=per_seed, similarity=similarity_set(s, c.data.shots), families=list(fams))


def selection_prompts(c, s: Setup, picks: Picks) -> np.ndarray:
  """Every distinct picked set, the similarity set and the random sets: what runs for real on the
  held-out queries (each set once, however many seeds or methods chose it)."""
  chosen = [p for d in picks.per_seed for p in d.values()] + [picks.similarity]
  return np.unique(np.concatenate([np.stack(chosen), random_sets(c, s.K)]).astype(np.int32), axis=0)


def _bootstrap(rng, n, B):
  return rng.integers(0, n, (B, n))


def selection_summary(c, s: Setup, picks: Picks, prompts: np.ndarray, F_sel: np.ndarray) -> tuple[dict, dict]:
  """Held-out loss, accuracy and regret per method over the selection seeds, and the paired regret
  differences of every family with its counterpart (`selection.regret_comparisons`).

  regret = a pick's held-out loss minus the lowest held-out loss of any set run here (every
  seed's picks, the similarity and the random sets), so it is >= 0 and comparable across seeds.
  The seeds' fit prompts overlap (num_fit of num_subsets each), so the intervals over seeds are
  `selection.seed_interval`'s re-split-corrected ones, not t intervals for independent draws.
  The similarity set has no seed: its s.e. is a bootstrap over queries; random: s.d. over sets."""
  row = {tuple(int(k) for k in p): i for i, p in enumerate(prompts)}
  at = lambda sets: np.array([row[tuple(int(k) for k in p)] for p in sets])
  loss, acc = F_sel.mean(1), (F_sel < LN2).mean(1)
  best = float(loss.min())
  table, regret = {}, {}
  for m in picks.per_seed[0]:
    sets = [d[m] for d in picks.per_seed]
    i = at(sets)
    li, ai = (selection.seed_interval(v, c) for v in (loss[i], acc[i]))
    regret[m] = loss[i] - best   # a shift of the losses: the same s.e.
    table[m] = {"loss": li.mean, "loss_se": li.se, "accuracy": ai.mean, "accuracy_se": ai.se,
                "regret": li.mean - best, "regret_se": li.se, "loss_per_seed": loss[i].tolist(),
                "demos_per_seed": [[int(k) for k in p] for p in sets]}
  f = F_sel[at([picks.similarity])[0]]
  idx = _bootstrap(np.random.default_rng(c.seed + 5), F_sel.shape[1], c.selection.num_bootstrap)
  table["similarity"] = {"loss": float(f.mean()), "loss_se": float(f[idx].mean(1).std()),
                         "accuracy": float((f < LN2).mean()), "accuracy_se": float((f[idx] < LN2).mean(1).std()),
                         "regret": float(f.mean() - best), "demos": [int(k) for k in picks.similarity]}
  r = at(random_sets(c, s.K))
  table["random"] = {"loss": float(loss[r].mean()), "loss_sd_over_sets": float(loss[r].std()),
                     "accuracy": float(acc[r].mean()), "accuracy_sd_over_sets": float(acc[r].std()),
                     "regret": float(loss[r].mean() - best), "num_sets": int(len(r))}
  b = int(np.argmin(loss))
  gain = {"num_heldout_queries": int(F_sel.shape[1]), "num_selection_seeds": len(picks.per_seed),
          "num_sets_run": int(len(prompts)), "lowest_heldout_loss": best,
          "lowest_loss_set": [int(k) for k in prompts[b]]}
  gain.update(selection.regret_comparisons(regret, families_lib.counterpart_pairs(picks.families), c))
  return table, gain


# ---------------------------------------------------------------------------------------------
# Plots

def _short(s: Setup, k: int, width: int = 56) -> str:
  """'#k [label] text' with the words every demonstration starts with (coin flip's 'A coin is
  heads up.') dropped, so a short label still shows what differs."""
  common = os.path.commonprefix(list(s.data.demo_inputs))
  common = common[:common.rfind(" ") + 1] if len(common) < len(s.data.demo_inputs[k]) else ""
  text = s.data.demo_inputs[k][len(common):]
  text = text if len(text) <= width else text[:width - 3] + "..."
  return f"#{k} [{s.data.options[int(s.data.demo_labels[k])].strip()}] {text}"


def plot_swaps(path, truth, preds: dict, corr: dict, title: str) -> None:
  import matplotlib.ticker
  names = list(preds)
  cols = min(3, len(names))
  rows = -(-len(names) // cols)
  fig, axes = report.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
  t = truth.mean(1)
  px, ux = report.power_of_ten(t)
  for ax, n in zip(axes.ravel(), names):
    p = preds[n].mean(1)
    py, uy = report.power_of_ten(p)
    ax.scatter(t / 10.0 ** px, p / 10.0 ** py, s=10)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))   # short labels that never run together
    row = corr[n] or {}
    ax.set_title(f"{n}\npearson_mean_query = {report.score_text(row.get('pearson_mean_target'))}\n"
                 f"spearman_mean_query = {report.score_text(row.get('spearman_mean_target'))}", fontsize=7)
    ax.set(xlabel=f"real swap effect{ux}", ylabel=f"predicted swap effect{uy}")
    ax.axhline(0, color="0.7", lw=0.5)
    ax.axvline(0, color="0.7", lw=0.5)
  for ax in axes.ravel()[len(names):]:
    ax.axis("off")
  fig.suptitle(f"{title}: F(S) - F(S, demo swapped out), mean query loss", fontsize=9)
  report.save(fig, path)


def plot_top_demos(path, truth, labels, title: str, top: int = 12) -> None:
  """The demonstrations whose real swap-out changes the mean query loss most, with their text."""
  effect = -truth.mean(1)            # F(S with k swapped out) - F(S): > 0 means k helped
  order = np.argsort(-np.abs(effect))[:top][::-1]
  fig, ax = report.subplots(figsize=(9.0, 0.32 * len(order) + 1.6))
  ax.barh(range(len(order)), effect[order], color=np.where(effect[order] > 0, "tab:green", "tab:red"))
  ax.set_yticks(range(len(order)), [labels[i] for i in order], fontsize=7)
  ax.axvline(0, color="k", lw=0.6)
  ax.set_xlabel("real change of mean query loss when the demonstration is swapped out\n"
                "(green: it helps, red: it hurts)", fontsize=8)
  ax.set_title(title, fontsize=9)
  report.save(fig, path)


def plot_selection(path, table: dict, title: str) -> None:
  """Held-out loss and accuracy of each method's chosen sets: bars the mean over selection seeds
  with its s.e. (similarity: bootstrap s.e. over queries; random: s.d. over the random sets),
  dots each seed's pick."""
  methods = [m for m in table if m != "random"] + ["random"]
  fig, axes = report.subplots(1, 2, figsize=(9.0, 3.6))
  for ax, metric in zip(axes, ("loss", "accuracy")):
    err = [table[m].get(f"{metric}_se", table[m].get(f"{metric}_sd_over_sets")) for m in methods]
    ax.bar(range(len(methods)), [table[m][metric] for m in methods], yerr=err, capsize=2,
           color=["tab:blue" if m.startswith("kernel") else "tab:orange" if m.startswith("linear") else "0.6"
                  for m in methods])
    if metric == "loss":
      for j, m in enumerate(methods):
        seeds = table[m].get("loss_per_seed", [])
        ax.scatter(np.full(len(seeds), j), seeds, s=8, color="k", zorder=3,
                   label="one seed's pick" if j == 0 and seeds else None)
      if any(table[m].get("loss_per_seed") for m in methods):
        ax.legend(fontsize=7, loc="upper left")
    ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel(f"held-out query {metric}" + (" (2-way CE)" if metric == "loss" else ""), fontsize=8)
    chance = LN2 if metric == "loss" else 0.5
    ax.axhline(chance, color="k", lw=0.6, ls="--")
    # named beside the axes, where it can cover no bar
    ax.annotate("chance" + (" (ln 2)" if metric == "loss" else ""), xy=(1, chance),
                xycoords=("axes fraction", "data"), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    if metric == "loss":
      lo = min([table[m][metric] for m in methods] + [v for m in methods for v in table[m].get("loss_per_seed", [])])
      ax.set_ylim(max(0.0, lo - 0.15), None)
  fig.suptitle(title, fontsize=9)
  report.save(fig, path)


# ---------------------------------------------------------------------------------------------
# Composition

def problems(config, run: runs.Run, families):
  c = config
  cs = c.design.chunk_size
  model = run.phase("model", load_model, c, store=False)
  for name in c.tasks:
    s = run.phase(f"data_{name}", make_data, c, model, name, store=False)
    dsg = run.phase(f"design_{name}", design, c, s)
    exact = run.outcomes(f"exact_{name}", exact_chunk, c, dsg.prompts, s, "scoring", chunk_size=cs)
    # Every query is a target (none is left out by a threshold): the run stops here when fewer than
    # min_varying_targets of them vary at all across the prompts.
    common.require_varying(exact["F"], 0.0, c.min_varying_targets, phase=f"exact_{name}", threshold_field=None)
    est = run.phase(f"estimate_{name}", estimate, c, s, dsg, exact)
    sw = run.phase(f"swap_design_{name}", swap_design, c, s, dsg)
    swapped = run.outcomes(f"swap_{name}", exact_chunk, c, sw.run, s, "scoring", chunk_size=cs)
    picks = run.phase(f"selection_picks_{name}", select, c, s, dsg, exact, est, families, store=False)
    sel_prompts = run.phase(f"selection_prompts_{name}", selection_prompts, c, s, picks, store=False)
    sel = run.outcomes(f"selection_{name}", exact_chunk, c, sel_prompts, s, "heldout", chunk_size=cs)
    yield _problem(c, s, dsg, sw, exact, est, swapped, picks, sel_prompts, sel)
  if c.released_coin_flip:
    yield released_coin_flip()


def released_coin_flip() -> driver.Problem:
  """The paper authors' released Qwen2-7B coin-flip outcomes (200 prompts x 869 queries, shipped
  with the reference experiment), scored with the same surrogates on the paper's 80 / 120 splits:
  the large-model counterpart of this experiment's own coin-flip rows."""
  from ksurrogate_experiments.reference import config as reference_config
  from ksurrogate_experiments.reference import pipeline as reference_pipeline
  p = reference_pipeline.problem(reference_config.get_config(), "coin_flip")
  return driver.Problem(name="coin_flip_qwen2_7b_released", S=p.S, F=p.F, splits=p.splits,
                        higher_is_better=False, outcome_name="query cross-entropy", task_noun="demonstration",
                        normalized_error_threshold=0.1)   # the paper's cut, so the figures compare


def _problem(c, s: Setup, dsg: Design, sw: SwapDesign, exact, est, swapped, picks: Picks, sel_prompts, sel):
  K = s.K
  per_pair = swap_truth(dsg, sw, exact, swapped, K)        # [n_swap, K, T]: the truth's repeats
  table, gain = selection_summary(c, s, picks, sel_prompts, sel["F"])
  labels = [_short(s, k) for k in range(K)]
  prompt_loss = exact["F"].mean(1)

  def swaps_figure(result, path):
    preds = {k.split("/")[0]: v for k, v in result.arrays.items() if k.endswith("/predicted_swap")}
    corr = {m: {k: result.scores[m].get(f"swap_{k}") for k in driver.CORRELATIONS} for m in preds}
    plot_swaps(path, result.arrays["swap_true"], preds, corr, s.name)

  return driver.Problem(
      name=s.name, S=dsg.S, F=exact["F"], splits=splits(c, len(dsg.prompts)),
      truths={"swap": driver.Truth(per_pair, readout=swap_readout(sw, K),
                                   predictions={"estimator_first_order": estimator_swaps(sw, est, K)})},
      sources={"estimated": (icl_data.indicators(est.many, K), est.F_many)}, estimates_of={"estimated": "exact"},
      info={"estimator": est.info, "selection": table, "selection_gain": gain,
            "prompts": {"num_prompts": int(len(dsg.prompts)), "num_demos": K, "shots": int(dsg.prompts.shape[1]),
                        "num_queries": s.task.num_queries, "num_heldout_queries": s.heldout.num_queries,
                        "slot_len": s.task.slot_len, "swap_pairs_per_demo": int(per_pair.shape[0]),
                        "swap_prompts_run": int(len(sw.run)), "model": s.model.description,
                        "mean_loss": float(prompt_loss.mean()), "loss_sd_over_prompts": float(prompt_loss.std()),
                        "mean_accuracy": float((exact["F"] < LN2).mean())}},
      higher_is_better=False, outcome_name="query cross-entropy",
      task_labels=[_short(s, k, 28) for k in range(K)], task_noun="demonstration",
      figures={"swap_real_vs_predicted": swaps_figure,
               "top_demonstrations": lambda result, path: plot_top_demos(
                   path, per_pair.mean(0), labels, f"{s.name}: top demonstrations by real swap effect"),
               "selection": lambda result, path: plot_selection(
                   path, table, f"{s.name}: chosen demonstrations on {gain['num_heldout_queries']} held-out queries, "
                   f"{gain['num_selection_seeds']} selection seeds\n(bars: mean and s.e. over seeds; similarity: "
                   "bootstrap s.e. over queries; random: s.d. over sets)")})
