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
from jax.flatten_util import ravel_pytree

import ksurrogate as ks
from ksurrogate import projection
from ksurrogate_experiments.tasks import config as config_lib
from ksurrogate_experiments.tasks import data as data_lib
from ksurrogate_experiments.tasks import lora as lora_lib
from ksurrogate_experiments.tasks import pipeline


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


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="cpu")
  ap.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. finetune.lr=2e-3")
  ap.add_argument("--dims", default="256,1024,4096")
  ap.add_argument("--skip_projection", action="store_true")
  a = ap.parse_args()
  c = _config(a.config, a.set)
  t0 = time.time()
  s = pipeline.setup(c)
  print(f"setup {time.time() - t0:.1f} s; {s.description}; recipe {s.recipe}; "
        f"{len(s.train)} training / {len(s.evals)} evaluation examples, L = {s.train.tokens.shape[1]}", flush=True)
  t0 = time.time()
  cch = pipeline.cache(c, s)
  print(f"cache {time.time() - t0:.1f} s ({cch.seconds * 1e3:.1f} ms per sequence steady)", flush=True)
  F0 = s.per_target(cch.F0_examples[None])[0]
  print("theta0 target losses: " + ", ".join(f"{t} {v:.3f}" for t, v in zip(data_lib.TARGETS, F0)))

  dsg = pipeline.design(c, s)
  t0 = time.time()
  parts = [pipeline.finetune_chunk(c, dsg.S_probe[i:i + c.design.chunk_size], i, s, cch)
           for i in range(0, len(dsg.S_probe), c.design.chunk_size)]
  probes = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  n_ft = int(dsg.S_probe.any(1).sum())
  print(f"{n_ft} fine-tunes in {time.time() - t0:.1f} s: {np.mean(probes['seconds'][1:]):.1f} s per fine-tune "
        f"steady, {np.max(probes['seconds_compile']):.1f} s compiling; training loss first step "
        f"{probes['train_loss'][1:, 0].mean():.3f}, last {probes['train_loss'][1:, -1].mean():.3f}", flush=True)
  summary = pipeline.probe_summary(dsg, probes)
  single = np.asarray(summary["singleton_effects"])
  print("singleton effects F({k}) - F({}) (rows tasks, columns targets):")
  print(" " * 20 + " ".join(f"{t[:10]:>10s}" for t in data_lib.TARGETS))
  for k, name in enumerate(data_lib.TRAIN_TASKS):
    print(f"{name:20s}" + " ".join(f"{v:10.3f}" for v in single[k]))
  for p in summary["pairs"]:
    print(f"{p['relation']:12s} {'+'.join(p['tasks']):34s} -> {p['target']:22s} a {p['effect_a']:+.3f}  "
          f"b {p['effect_b']:+.3f}  ab {p['effect_ab']:+.3f}  interaction {p['interaction']:+.3f}")
  if a.skip_projection:
    return

  # --- projection error on the planted tasks and targets
  planted = sorted({data_lib.TRAIN_TASKS.index(x) for rows in data_lib.PLANTED.values() for r in rows for x in r[:2]})
  targets = sorted({data_lib.TARGETS.index(r[2]) for rows in data_lib.PLANTED.values() for r in rows})
  tr, ev = _rows(s, planted, "train"), _rows(s, targets, "eval")
  task = np.searchsorted(planted, s.train.group[tr])
  lora0 = s.lora0(0, c.model.init_seed)
  frozen = lora_lib.frozen_part(s.params, s.recipe.first, s.cfg)
  flat0, _ = ravel_pytree(lora0)

  def margins(lo, ex):
    return lora_lib.answer_margins(lora_lib.merge(frozen, lo, s.recipe.scale), s.cfg, s.recipe.first, *ex)

  t0 = time.time()
  exact = [ks.featurize(None, lora0, h, s_.packed[rows], key=jax.random.key(0), dim=flat0.size, output=margins,
                        projection="identity", batch_size=c.estimate.feature_batch)
           for h, s_, rows in ((cch.h_train[tr], s.train, tr), (cch.h_eval[ev], s.evals, ev))]
  exact = [ks.Features(f.phi, f.offsets, f.labels, "masked_token_ce") for f in exact]
  t_exact = time.time() - t0
  span = projection.span_coordinates(*exact)
  del exact
  print(f"exact per-example gradients: {len(tr)} + {len(ev)} examples x {s.train.packed.shape[2]} outputs x "
        f"{flat0.size} parameters in {t_exact:.1f} s; span dimension {span[0].dim}", flush=True)
  rows = [i for i in range(len(dsg.S_probe)) if dsg.S_probe[i].any() and not dsg.S_probe[i][
      np.setdiff1d(np.arange(s.K), planted)].any()]
  S = dsg.S_probe[rows][:, planted]
  onehot = np.eye(s.T)[s.evals.group[ev]][:, targets]
  per_target = lambda F: np.asarray(F) @ (onehot / onehot.sum(0))  # noqa: E731
  F_real = probes["F"][rows][:, targets]
  loss = lora_lib.masked_token_loss()
  kw = dict(method="onestep", loss=loss, mean=True)
  ridge, table = ks.calibrate_ridge(span[0], task, span[1], S, probes["F_examples"][rows][:, ev],
                                    grid=10.0 ** np.arange(-4.0, 4.0), **kw)
  base = per_target(cch.F0_examples[ev][None])[0]
  F_exact = per_target(ks.estimate(span[0], task, S, span[1], ridge=ridge, **kw))
  d_exact, d_real = F_exact - base, F_real - base
  err = lambda d: float(np.linalg.norm(d - d_exact) / np.linalg.norm(d_exact))  # noqa: E731
  print(f"ridge {ridge:g} (calibrated on the {len(S)} fine-tunes, exact features; table {table})")
  print(f"exact one-step: effect Pearson vs real fine-tunes {np.corrcoef(d_exact.ravel(), d_real.ravel())[0, 1]:.3f}, "
        f"relative error vs real {float(np.linalg.norm(d_exact - d_real) / np.linalg.norm(d_real)):.3f}")
  for dim in (int(x) for x in a.dims.split(",")):
    t0 = time.time()
    tapped, P, factors = pipeline.featurizer(s, lora0, dim, c.estimate.dim_in, jax.random.key(c.seed + 5))
    f_tr = projection.featurize(tapped, P, cch.h_train[tr], s.train.packed[tr], factors=factors,
                                output="masked_token_ce", batch_size=c.estimate.feature_batch)
    f_ev = projection.featurize(tapped, P, cch.h_eval[ev], s.evals.packed[ev], factors=factors,
                                output="masked_token_ce", batch_size=c.estimate.feature_batch)
    t_feat = time.time() - t0
    d = per_target(ks.estimate(f_tr, task, S, f_ev, ridge=ridge, **kw)) - base
    print(f"LoGra d={f_tr.dim:5d}: relative error of the estimated effects vs exact {err(d):.3f}, Pearson "
          f"{np.corrcoef(d.ravel(), d_exact.ravel())[0, 1]:.3f}; features {t_feat:.1f} s", flush=True)


if __name__ == "__main__":
  main()
