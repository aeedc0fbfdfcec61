"""Memory of exact KRR with CV, measured two ways, and the time of a default fit at the switch.

  python benchmarks/krr_memory.py                       # m in {1000, 2000, 3000, 4000}
  python benchmarks/krr_memory.py --sizes=1000 --switch=false   # quick look

For each m (K = 25, 4 targets, cv = 5): XLA's own buffer plan of the compiled CV program
(`memory_analysis()`, no run), and the peak resident memory of a whole exact fit above the
process's resting level, in a fresh subprocess (a 2 x 2 grid: the grid is a sequential map, so its
size changes the time, not the memory). Both as multiples of one m x m float64 matrix, the unit of
`surrogates.exact_krr_bytes`. With --switch, times the default `fit_kernel(S, F)` (9 x 9 grid) at
m*, the largest m the default memory budget keeps exact, and at m* + 1 (Nystrom), wall and CPU
seconds, cold (compilation included, as a first call in a process pays it).
"""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np
from absl import app
from absl import flags

_SIZES = flags.DEFINE_list("sizes", ["1000", "2000", "3000", "4000"], "numbers of fitted subsets")
_SWITCH = flags.DEFINE_bool("switch", True, "also time the default fit at the exact/Nystrom switch")

K, T = 25, 4

_CHILD = """
import sys, time, numpy as np
import ksurrogate as ks
m = int(sys.argv[1])
rng = np.random.default_rng(0)
S = rng.random((m, {K})) < 0.5
F = rng.normal(size=(m, {T}))
kw = dict(gamma_grid=[0.5, 2.0], ridge_grid=[0.1, 1.0], num_inducing=None, memory_budget=1e15)
status = lambda key: int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) * 1024
ks.fit_kernel(S, F, **kw).alpha.block_until_ready()      # compile outside the measured call
base = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")            # resets VmHWM to the current RSS
t0 = time.perf_counter()
ks.fit_kernel(S, F, **kw).alpha.block_until_ready()
print(status("VmHWM") - base, time.perf_counter() - t0)
""".format(K=K, T=T)


def planned(m: int) -> float:
  import jax
  import jax.numpy as jnp
  from ksurrogate import surrogates
  with jax.enable_x64(True):
    X, Y = jnp.zeros((m, K)), jnp.zeros((m, T))
    compiled = surrogates._kernel_cv.lower(X, Y, jnp.ones(9), jnp.ones(9), *surrogates.cv_folds(m, 5, 0), kind="rbf",
                                           degree=2, coef0=1.0, center=True, cv_metric="mse").compile()
  return compiled.memory_analysis().temp_size_in_bytes / (8 * m * m)


def main(argv):
  del argv
  print(f"{'m':>6} {'XLA plan (m^2 doubles)':>24} {'peak RSS (m^2 doubles)':>24} {'fit s (2x2 grid)':>18}")
  for m in map(int, _SIZES.value):
    out = subprocess.run([sys.executable, "-c", _CHILD, str(m)], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT}, check=True).stdout.split()
    extra, seconds = int(out[-2]), float(out[-1])
    print(f"{m:>6} {planned(m):>24.2f} {extra / (8 * m * m):>24.2f} {seconds:>18.1f}", flush=True)
  if not _SWITCH.value:
    return
  import time
  import ksurrogate as ks
  from ksurrogate import surrogates
  m_star = max(m for m in range(1000, 20000) if surrogates.exact_krr_bytes(m, T) <= surrogates.MEMORY_BUDGET)
  rng = np.random.default_rng(0)
  for m in (m_star + 1, m_star):
    S = rng.random((m, K)) < 0.5
    F = S @ rng.normal(size=(K, T)) + rng.normal(size=(m, T))
    t0, c0 = time.perf_counter(), time.process_time()
    g = ks.fit_kernel(S, F)
    g.alpha.block_until_ready()
    print(f"default fit at m={m}: {g!r}: {time.perf_counter() - t0:.1f} s wall, {time.process_time() - c0:.1f} s CPU "
          f"(load average {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
  app.run(main)
