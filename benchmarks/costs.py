"""The time cost model's per-unit constants (experiments/costs.py) against their measured costs.

  nice -n 10 python benchmarks/costs.py                      # the sizes the constants speak of
  python benchmarks/costs.py --sizes=40 --targets=8 --tasks=10 --bootstrap=100 --width=64 --repeats=1   # seconds

Each row is one unit of the model, measured on this machine, beside the constant the config checks
use; the last column is measured / constant. A check refuses a count only when its units times the
constant exceed the bound, so the constant must stay at or below the quiet measured cost (ratio >= 1
on a quiet machine; load only raises the ratio): then a refused count could not have finished.

  fit           one fit of every `ksurrogate.families.standard()` family (CV over its grid where
                tuned), averaged over the families, on FIT_SUBSETS subsets    vs FIT_SECONDS
  fit growth    (fit(m) - fit(FIT_SUBSETS)) / (m - FIT_SUBSETS)^3 at each larger m
                                                                              vs FIT_CUBIC_SECONDS
  bootstrap     `intervals.bootstrap_loo` as the driver calls it (every comparison pair), seconds per
                resample per method per (task x target) entry                vs BOOTSTRAP_SECONDS
  training      seconds per FLOP of a jitted dense MLP's forward + backward + update (FLOPs as XLA's
                cost analysis counts them), the best of the repeats          vs 1 / TRAIN_FLOPS_PER_SECOND

Fit and bootstrap times are the median of `repeats` warm calls (compilation excluded, as the
constants leave it out); the training figure is the fastest repeat, the one nearest a quiet machine.
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app
from absl import flags

from ksurrogate import families as families_lib
from ksurrogate import intervals
from ksurrogate_experiments import costs

_SIZES = flags.DEFINE_list("sizes", ["40", "200", "400"], "fit sizes m; the first is the constant's FIT_SUBSETS")
_TASKS = flags.DEFINE_integer("tasks", 25, "K (the modular protocol's 25 tasks)")
_TARGETS = flags.DEFINE_list("targets", ["168", "6"], "T of the fits: the modular protocol's 168 targets, the tasks "
                              "experiment's 6 (the fewest a shipped config scores); the growth and the bootstrap "
                              "use the first")
_SEEDS = flags.DEFINE_integer("seeds", 3, "truth seeds the bootstrap resamples")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 1000, "bootstrap resamples")
_WIDTH = flags.DEFINE_integer("width", 512, "hidden width of the MLP whose training step is timed")
_BATCH = flags.DEFINE_integer("batch", 512, "batch of that training step")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed repeats of each unit")


def _median_seconds(fn, repeats: int) -> float:
  fn()   # compile and warm up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(jax.tree.leaves(fn()))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def _design(rng, m: int, K: int, T: int):
  S = rng.random((m, K)) < 0.5
  F = S @ rng.normal(0, 0.3, (K, T)) + 0.1 * rng.normal(size=(m, T))
  return S, F


def fit_seconds(rng, m: int, K: int, T: int, repeats: int) -> float:
  """Mean seconds of one standard family's fit on m subsets (the families' total over their count)."""
  S, F = _design(rng, m, K, T)
  fams = families_lib.standard()
  total = sum(_median_seconds(lambda f=f: f(S, F).predict(S[:1]), repeats) for f in fams)
  return total / len(fams)


def bootstrap_seconds(rng, K: int, T: int, seeds: int, num_resamples: int, repeats: int) -> float:
  """Seconds per resample, method and (task x target) entry of the driver's bootstrap_loo call:
  every standard family and two baselines' predictions, every comparison pair."""
  fams = families_lib.standard()
  names = [f.name for f in fams] + ["influence", "tracin"]
  effects = rng.normal(size=(seeds, K, T))
  preds = {n: effects.mean(0) + rng.normal(size=(K, T)) for n in names}
  pairs = families_lib.comparison_pairs(fams)
  seconds = _median_seconds(lambda: intervals.bootstrap_loo(preds, effects, pairs=pairs, num_resamples=num_resamples),
                            repeats)
  return seconds / (num_resamples * len(names) * K * T)


def training_seconds_per_flop(width: int, batch: int, repeats: int) -> tuple[float, float]:
  """(seconds per FLOP of the fastest repeat, FLOPs of one step) of a 3-layer MLP's Adam step."""
  key = jax.random.key(0)
  k1, k2, k3, kx = jax.random.split(key, 4)
  params = {"w1": jax.random.normal(k1, (width, width)) / width ** 0.5,
            "w2": jax.random.normal(k2, (width, width)) / width ** 0.5,
            "w3": jax.random.normal(k3, (width, width)) / width ** 0.5}
  x = jax.random.normal(kx, (batch, width))
  opt = optax.adam(1e-3)

  def loss(p, x):
    h = jax.nn.relu(x @ p["w1"])
    h = jax.nn.relu(h @ p["w2"])
    return jnp.mean((h @ p["w3"] - x) ** 2)

  @jax.jit
  def step(p, s, x):
    g = jax.grad(loss)(p, x)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  state = opt.init(params)
  cost = step.lower(params, state, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) or 6.0 * 3 * width * width * batch   # XLA's count; 6 N B without one
  jax.block_until_ready(step(params, state, x))
  steps = max(1, int(2e9 // flops))   # ~2 GFLOP per timed repeat
  best = float("inf")
  for _ in range(repeats):
    p, s = params, state
    t0 = time.perf_counter()
    for _ in range(steps):
      p, s = step(p, s, x)
    jax.block_until_ready(p)
    best = min(best, (time.perf_counter() - t0) / (steps * flops))
  return best, flops


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  sizes = [int(s) for s in _SIZES.value]
  targets = [int(t) for t in _TARGETS.value]
  K, T, reps = _TASKS.value, targets[0], _REPEATS.value
  print(f"load before: {os.getloadavg()[0]:.2f}; K={K}; {reps} repeats", flush=True)
  rows = []
  base = fit_seconds(rng, sizes[0], K, T, reps)
  rows.append((f"fit, m={sizes[0]}, T={T} (s per family fit)", base, costs.FIT_SECONDS))
  for t in targets[1:]:
    rows.append((f"fit, m={sizes[0]}, T={t} (s per family fit)", fit_seconds(rng, sizes[0], K, t, reps),
                 costs.FIT_SECONDS))
  for m in sizes[1:]:
    growth = (fit_seconds(rng, m, K, T, reps) - base) / max(m - costs.FIT_SUBSETS, 1) ** 3
    rows.append((f"fit growth, m={m}, T={T} (s per m^3)", growth, costs.FIT_CUBIC_SECONDS))
  boot = bootstrap_seconds(rng, K, T, _SEEDS.value, _BOOTSTRAP.value, reps)
  rows.append((f"bootstrap, B={_BOOTSTRAP.value}, K={K}, T={T} (s per resample x method x entry)", boot, costs.BOOTSTRAP_SECONDS))
  per_flop, flops = training_seconds_per_flop(_WIDTH.value, _BATCH.value, reps)
  rows.append((f"training, MLP {_WIDTH.value}x{_BATCH.value}, {flops:.3g} FLOP/step (s per FLOP)", per_flop,
               1.0 / costs.TRAIN_FLOPS_PER_SECOND))
  width = max(len(r[0]) for r in rows)
  print(f"{'unit':<{width}}  {'measured':>10}  {'constant':>10}  {'measured/constant':>17}")
  for name, measured, constant in rows:
    print(f"{name:<{width}}  {measured:10.3g}  {constant:10.3g}  {measured / constant:17.2f}")
  print(f"training throughput: {1 / per_flop:.3g} FLOP/s measured, TRAIN_FLOPS_PER_SECOND = "
        f"{costs.TRAIN_FLOPS_PER_SECOND:.3g}")
  print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  app.run(main)
