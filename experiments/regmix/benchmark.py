"""Fit time of every regmix family at every training size, one fit each: cold (compiling) and warm,
with OpenBLAS limited to one thread (what the experiment runs with) and not limited, side by side
in one run.

  python -m ksurrogate_experiments.regmix.benchmark                       # every family, 32..512 runs
  python -m ksurrogate_experiments.regmix.benchmark --families=kernel,linear --sizes=256,512

Passes, in this order, on the same seeded training rows: "cold" (1 thread; includes every
compilation), "warm" (1 thread, compiled), "warm, BLAS unlimited" (OpenBLAS's own thread count).
Prints seconds per family and size, each pass's total and the load average before and after.
"""
from __future__ import annotations

import os
import time

import numpy as np
from absl import app
from absl import flags
from threadpoolctl import threadpool_limits

from ksurrogate_experiments.regmix import config as regmix_config
from ksurrogate_experiments.regmix import pipeline

_FAMILIES = flags.DEFINE_list("families", None, "families to time (default: every family of the default config)")
_SIZES = flags.DEFINE_list("sizes", ["32", "64", "128", "256", "512"], "training sizes")
PASSES = (("cold", 1), ("warm", 1), ("warm, BLAS unlimited", None))


def _time_pass(config, fams, sizes, data) -> dict:
  """{family: {size: seconds}} of one fit per family and size (the first re-draw's rows)."""
  out = {}
  for fam in fams:
    for size in sizes:
      rows = pipeline.draws(config, size)[0]
      t0 = time.perf_counter()
      surr, _ = pipeline.fit_one(fam, data["X"][rows], data["Y"][rows], {})
      if surr is not None:
        np.asarray(surr.predict(data["X_test"]))
      out.setdefault(fam.name, {})[size] = time.perf_counter() - t0
  return out


def main(argv):
  del argv
  config = regmix_config.get_config()
  if _FAMILIES.value:
    config.surrogates.families = tuple(_FAMILIES.value)
  fams = regmix_config.families(config, "regmix")
  sizes = [int(s) for s in _SIZES.value]
  data = pipeline.load(config)
  load = [os.getloadavg()[0]]
  results = {}
  for name, threads in PASSES:
    with threadpool_limits(limits=threads, user_api="blas"):
      results[name] = _time_pass(config, fams, sizes, data)
  load.append(os.getloadavg()[0])
  width = max(len(f.name) for f in fams)
  head = " ".join(f"{f'n={s}':>8}" for s in sizes)
  for name, _ in PASSES:
    print(f"\n{name}: seconds per fit (fit + predict at the 256 test runs)")
    print(f"{'family':<{width}} {head} {'total':>8}")
    for fam in fams:
      row = results[name][fam.name]
      print(f"{fam.name:<{width}} " + " ".join(f"{row[s]:8.2f}" for s in sizes) + f" {sum(row.values()):8.2f}")
    print(f"{'all':<{width}} " + " ".join(f"{sum(results[name][f.name][s] for f in fams):8.2f}" for s in sizes)
          + f" {sum(sum(r.values()) for r in results[name].values()):8.2f}")
  totals = {name: sum(sum(r.values()) for r in results[name].values()) for name, _ in PASSES}
  print(f"\ntotals: " + ", ".join(f"{k} {v:.1f} s" for k, v in totals.items())
        + f"; BLAS unlimited / 1 thread (warm): {totals['warm, BLAS unlimited'] / totals['warm']:.2f}x"
        + f"; load average {load[0]:.1f} -> {load[1]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
  app.run(main)
