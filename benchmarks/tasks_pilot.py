"""Pilot of the tasks experiment on the real model: what one fine-tune and the cache cost, how far
each planted task moves its target, and the projection error of the one-step estimate.

  python benchmarks/tasks_pilot.py [--config=cpu] [--set finetune.lr=2e-3 ...] [--dims=256,1024,4096]

1. The cache (hidden states entering the first adapted block) of every example, timed.
2. Real fine-tunes (the config's recipe) of the empty set, every singleton and the planted pairs:
   per planted relation the singles' and the pair's effect on its target and the interaction.
3. On the planted tasks and their targets: exact per-example gradients of the LoRA parameters
   (`ks.featurize`, identity projection) in span coordinates (lossless), and LoGra features at
   each dim; the one-step estimate (`ks.estimate`) of the singletons and pairs with each, at the
   ridge calibrated for the exact one on those fine-tunes; the relative error of the estimated
   effects (F_hat - F0) of each projection against the exact one, and their Pearson correlation.
"""
from __future__ import annotations

import argparse
import ast
import time

import jax
import jax.numpy as jnp
import numpy as np

import ksurrogate as ks
from ksurrogate import projection
from ksurrogate.harness import runs
from ksurrogate_experiments.shared import llama
from ksurrogate_experiments.tasks import config as config_lib
from ksurrogate_experiments.tasks import data as data_lib
from ksurrogate_experiments.tasks import lora as lora_lib
from ksurrogate_experiments.tasks import estimate as est_lib
from ksurrogate_experiments.tasks import pipeline
from ksurrogate_experiments.tasks import relations


def _config(name, overrides):
  c = config_lib.get_config(name)
  for item in overrides:
    path, value = item.split("=", 1)
    node = c
    *head, last = path.split(".")
    for part in head:
      node = node[part]
    node[last] = ast.literal_eval(value) if value[:1].isdigit() or value[:1] in "-[(" else value
  config_lib.EXPERIMENT.validate(c)
  return c


def _rows(s, groups, which):
  enc = s.train if which == "train" else s.evals
  return np.flatnonzero(np.isin(enc.group, groups))


def _print_probes(summary):
  single, sd = np.asarray(summary["singleton_effects"]), np.asarray(summary["singleton_effects_sd"])
  related = relations.related_cells()
  print(f"singleton effects F({{k}}) - F({{}}), mean over {summary['seeds']} seeds (s.d. over seeds); "
        "* a planted (task, target) cell:")
  print(" " * 20 + " ".join(f"{t[:14]:>16s}" for t in data_lib.TARGETS))
  for k, name in enumerate(data_lib.TRAIN_TASKS):
    print(f"{name:20s}" + " ".join(f"{'*' if related[k, t] else ' '}{single[k, t]:+7.3f} ({sd[k, t]:.3f})"
                                   for t in range(len(data_lib.TARGETS))))
  print(f"mean |effect|: planted cells {summary['related_mean_abs_effect']:.3f}, other cells "
        f"{summary['unrelated_mean_abs_effect']:.3f}; mean seed s.d. of an effect {summary['seed_sd_mean']}")
  for p in summary["pairs"]:
    f = lambda k: f"{p[k]:+.3f}" + (f" ({p[k + '_sd']:.3f})" if p.get(k + "_sd") is not None else "")  # noqa: E731
    print(f"{p['relation']:12s} {'+'.join(p['tasks']):34s} -> {p['target']:22s} a {f('effect_a')}  b {f('effect_b')}  "
          f"ab {f('effect_ab')}  interaction {f('interaction')}")


def _projection(c, s, cch, t0, dsg, probes, dims, num_seeds):
  """Step 3 of the module doc: both estimators on exact and on LoGra features of the planted tasks."""
  planted = sorted({data_lib.TRAIN_TASKS.index(x) for rows in data_lib.PLANTED.values() for r in rows for x in r[:2]})
  targets = sorted({data_lib.TARGETS.index(r[2]) for rows in data_lib.PLANTED.values() for r in rows})
  tr, ev = _rows(s, planted, "train"), _rows(s, targets, "eval")
  task = np.searchsorted(planted, s.train.group[tr]).astype(np.int32)
  frozen, lora0 = s.frozen(t0), s.lora0(0, c.model.init_seed)
  rows = [i for i in range(len(dsg.S_probe)) if dsg.S_probe[i].any() and not dsg.S_probe[i][
      np.setdiff1d(np.arange(s.K), planted)].any()]
  S = dsg.S_probe[rows][:, planted]
  F_ex = np.mean([p["F_examples"] for p in probes], 0)[:, ev]          # seed means
  onehot = np.eye(s.T)[s.evals.group[ev]][:, targets]
  per_target = lambda F: np.asarray(F) @ (onehot / onehot.sum(0))  # noqa: E731
  F_real, base = per_target(F_ex[rows]), per_target(F_ex[0][None])[0]
  data = ks.estimators.Data(est_lib.output_fn(s, frozen), lora0, (cch.h_train[tr], s.train.packed[tr]), task,
                            (cch.h_eval[ev], s.evals.packed[ev]), lora_lib.masked_token_loss(), "answer_margins",
                            num_tasks=len(planted))
  tapped, _, factors = est_lib.logra(s, frozen, lora0, dims[0], c.estimate.dim_in, jax.random.key(0))
  pairs = {n: (ab["A"], ab["B"]) for n, ab in lora0.items()}
  shapes = {b: v for b, v in projection.lora_shapes(pairs).items() if b.endswith("/B")}
  dim_in = min(c.estimate.dim_in, s.recipe.rank)
  keys = [(d, r) for d in dims for r in range(num_seeds)]
  sets = [projection.projections(jax.random.key(1000 * r + d), shapes, projection.split_dim(d, shapes, dim_in))
          for d, r in keys]

  def features(projection_sets):
    kw = dict(factors=factors, output="answer_margins", batch_size=c.estimate.feature_batch)
    t_start = time.time()
    out = list(zip(projection.featurize(tapped, projection_sets, cch.h_train[tr], s.train.packed[tr], **kw),
                   projection.featurize(tapped, projection_sets, cch.h_eval[ev], s.evals.packed[ev], **kw)))
    return out, time.time() - t_start

  feats, t_feat = features([projection.identity(shapes), *sets])
  exact = feats[0]
  print(f"features: {len(tr)} + {len(ev)} examples x {s.train.packed.shape[2]} outputs, exact ({exact[0].dim} B-block "
        f"parameters) and {len(sets)} LoGra sets from one pass: {t_feat:.1f} s", flush=True)
  err = lambda d, ref: float(np.linalg.norm(d - ref) / np.linalg.norm(ref))  # noqa: E731
  corr = lambda d, ref: float(np.corrcoef(d.ravel(), ref.ravel())[0, 1])  # noqa: E731

  def report(name, d_exact, effects):
    """effects {(d, seed): estimated effects [rows, targets]} of the LoGra sets."""
    d_real = F_real - base
    print(f"{name} on exact features: effect Pearson vs real fine-tunes {corr(d_exact, d_real):.3f}, relative error "
          f"vs real {err(d_exact, d_real):.3f} (no change 1.000)")
    by_dim = {}
    for (d, _), x in effects.items():
      by_dim.setdefault(d, []).append(x)
    for d, ds in by_dim.items():
      e, p = [err(x, d_exact) for x in ds], [corr(x, d_exact) for x in ds]
      print(f"  LoGra d={d:5d}: relative error vs exact {np.mean(e):.3f} +- {np.std(e, ddof=1) if len(e) > 1 else 0:.3f}"
            f" (seeds {', '.join(f'{x:.3f}' for x in e)}), Pearson {np.mean(p):.3f}", flush=True)

  # onestep: exact = span coordinates of the exact gradients (lossless), ridge calibrated there
  span = projection.span_coordinates(*exact)
  est = ks.estimators.Onestep(dim=span[0].dim, mean=True, ridge_grid=tuple(10.0 ** np.arange(-4.0, 6.0)))
  state = est.prepare(data, features=span, calibrate=(S, F_ex[rows]))
  d_exact = per_target(est.estimate(state, S)[0]) - base
  print(f"onestep: ridge {state.ridge:g} calibrated on the {len(S)} probe fine-tunes (exact features)")
  fixed = ks.estimators.Onestep(dim=1, ridge=state.ridge, mean=True)
  report("onestep", d_exact, {k: per_target(fixed.estimate(fixed.prepare(data, features=f), S)[0]) - base
                              for k, f in zip(keys, feats[1:])})

  # replay: exact = the B-block gradients times the exact preconditioner, LoGra = the factored one
  # folded into the projections; the step scale calibrated on the exact replay
  seen = {}

  def exact_featurizer(sqrt_p):
    seen["sqrt_p"] = sqrt_p
    scale = jnp.concatenate([jnp.ravel(sqrt_p[b[:-2]]["B"]) for b in sorted(shapes)])
    return tuple(ks.Features(f.phi * np.asarray(scale), f.offsets, f.labels, f.output) for f in exact)

  rp = ks.estimators.Replay(recipe=s.recipe.optimizer, space="parameter")
  state = rp.prepare(data, design=S, calibrate=(S, F_ex[rows]), featurizer=exact_featurizer)
  d_exact = per_target(rp.estimate(state, S)[0]) - base
  print(f"replay: step scale {state.step_scale:g} calibrated on the probe fine-tunes (exact features)")
  scales = {f"{n}/B": projection.factored(seen["sqrt_p"][n]["B"]) for n in pairs}
  scaled, _ = features([projection.scaled(P, scales) for P in sets])
  fixed = ks.estimators.Replay(recipe=s.recipe.optimizer.scaled(state.step_scale), space="parameter")
  report("replay", d_exact, {k: per_target(fixed.estimate(fixed.prepare(data, design=S, featurizer=lambda _, f=f: f),
                                                          S)[0]) - base for k, f in zip(keys, scaled)})


def _show(s, t0, n_tokens: int = 8):
  """theta0's greedy reply to the first evaluation prompt of each target (its format)."""
  params = lora_lib.with_kernels(s.params, t0.kernels)
  fwd = jax.jit(lambda t: llama.forward(params, s.cfg, t))
  for t, name in enumerate(data_lib.TARGETS):
    i = int(np.flatnonzero(s.evals.group == t)[0])
    pk = s.evals.packed[i]
    row = s.evals.tokens[i].copy()
    n = int(pk[0, 0]) + 1                    # prompt length: the first answer token's position
    row[n:] = 0
    reply = []
    for _ in range(n_tokens):
      nxt = int(np.argmax(np.asarray(fwd(jnp.asarray(row)))[n - 1]))
      if n >= len(row) or nxt == 2:
        break
      row[n], n = nxt, n + 1
      reply.append(nxt)
    gold = pk[1, :int(pk[2].sum())].tolist()
    if s.cfg.vocab_size > 1000:   # the GGUF's tokenizer (the tiny model's BPE is not kept)
      from ksurrogate_experiments.shared import gguf_llama
      tok = gguf_llama.load_tokenizer(None)
      gold, reply = repr(tok.decode(gold)), repr(tok.decode(reply))
    print(f"  {name:22s} gold {gold} reply {reply}")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="cpu")
  ap.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. finetune.lr=2e-3")
  ap.add_argument("--workdir", default="/tmp/tasks_pilot", help="phases stored here are reused while their settings hold")
  ap.add_argument("--seeds", type=int, default=2, help="truth seeds of the probe fine-tunes")
  ap.add_argument("--dims", default="256,1024,4096")
  ap.add_argument("--projection_seeds", type=int, default=3)
  ap.add_argument("--skip_projection", action="store_true")
  ap.add_argument("--skip_probes", action="store_true")
  ap.add_argument("--show", action="store_true", help="theta0's greedy reply to one prompt per target")
  a = ap.parse_args()
  c = _config(a.config, a.set)
  with runs.Run(a.workdir, name="tasks_pilot", progress=False) as run:
    t_start = time.time()
    s = run.phase("setup", pipeline.setup, c, store=False)
    print(f"setup {time.time() - t_start:.1f} s; {s.description}; recipe {s.recipe}; {len(s.train)} training / "
          f"{len(s.evals)} evaluation / {len(s.warmup)} format examples, L = {s.train.tokens.shape[1]}", flush=True)
    cch = run.phase("cache", pipeline.cache, c, s)
    print(f"cache: {cch.seconds * 1e3:.1f} ms per sequence steady", flush=True)
    t0 = run.phase("theta0", pipeline.theta0, c, s, cch)
    curve = t0.warmup_loss
    print(f"warm-up: {t0.seconds:.1f} s steady; training loss "
          + (f"first {curve[:5].mean():.3f}, last {curve[-5:].mean():.3f}" if len(curve) else "(no warm-up)"))
    F_raw, F0 = (s.per_target(F[None])[0] for F in (t0.F_raw_examples, t0.F0_examples))
    print("target losses, pretrained -> theta0: " + ", ".join(f"{t} {r:.3f} -> {v:.3f}"
                                                              for t, r, v in zip(data_lib.TARGETS, F_raw, F0)), flush=True)
    if a.show:
      _show(s, t0)
    dsg = pipeline.design(c, s)
    probes = []
    if not a.skip_probes:
      probes = pipeline.seeded_outcomes(run, "probe_seed", range(a.seeds), c, dsg.S_probe, s, cch, t0)
      for r, p in enumerate(probes):
        print(f"seed {r}: {np.mean(p['seconds'][1:]):.1f} s per fine-tune steady, {np.max(p['seconds_compile']):.1f} s "
              f"compiling; training loss first step {p['train_loss'][1:, 0].mean():.3f}, last "
              f"{p['train_loss'][1:, -1].mean():.3f}")
      _print_probes(relations.probe_summary(dsg.pairs, probes))
    if not a.skip_projection:
      _projection(c, s, cch, t0, dsg, probes, [int(x) for x in a.dims.split(",")], a.projection_seeds)


if __name__ == "__main__":
  main()
