"""Thread settings under load: the kernel fit and a LAPACK eigh, quiet and beside CPU-bound work.

  python benchmarks/threads.py                     # as the machine is, then beside 2 busy processes
  python benchmarks/threads.py --burners=0,1 --repeats=3

Each setting runs in its own process (thread pools are fixed at import): `default` (OpenBLAS and
XLA choose), `blas1` (OpenBLAS, which also serves jaxlib's LAPACK calls, limited to one thread
with threadpoolctl: what `ksurrogate-run` does) `blas1+xla1` (XLA's CPU thread pool off too) and `one core` (blas1, the process pinned to one
core before JAX starts).
For each number of burners (busy Python processes started beside it) every setting is timed in
turn, so their ratios are side by side under the same load. The workload is the reference
experiment's largest scoring fit (fit_kernel with its CV on 160 subsets of K = 50 tasks x 869
targets) and a 256 x 256 eigh; times are the least of --repeats warm calls.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

_BURNERS = flags.DEFINE_list("burners", ["0", "2"], "numbers of busy processes to run beside")
_REPEATS = flags.DEFINE_integer("repeats", 5, "warm calls per setting (the least is kept)")
_M = flags.DEFINE_integer("m", 160, "fitted subsets")

SETTINGS = {
    "default": {},
    "blas1": {"KS_BLAS_THREADS": "1"},
    "blas1+xla1": {"KS_BLAS_THREADS": "1",
                   "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"},
    "one core": {"KS_BLAS_THREADS": "1", "KS_ONE_CORE": "1"},
}

CHILD = r"""
import json, os, sys, time
from threadpoolctl import threadpool_limits
limit = os.environ.get("KS_BLAS_THREADS")
ctx = threadpool_limits(limits=int(limit), user_api="blas") if limit else None
if os.environ.get("KS_ONE_CORE"):   # every thread of the process on one core
  os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
import jax, jax.numpy as jnp, numpy as np
import ksurrogate as ks
m, repeats = int(sys.argv[1]), int(sys.argv[2])
r = np.random.default_rng(0)
S = np.unique(r.random((2 * m, 50)) < 0.5, axis=0)[:m]
F = S @ r.normal(size=(50, 869)) + 0.3 * r.normal(size=(m, 869))
A = r.normal(size=(256, 256)); A = jnp.asarray(A + A.T)
out = {}
for name, call in (("fit_kernel", lambda: ks.fit_kernel(S, F).predict(S[:2]).block_until_ready()),
                   ("eigh256", lambda: jnp.linalg.eigh(A)[0].block_until_ready())):
  call()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter(); call(); best = min(best, time.perf_counter() - t)
  out[name] = best
print(json.dumps(out))
"""


def _burn(stop):
  x = 0
  while not stop.is_set():
    x = (x * 1103515245 + 12345) % 2147483648


def main(argv):
  del argv
  rows = []
  for burners in (int(b) for b in _BURNERS.value):
    stop = multiprocessing.Event()
    procs = [multiprocessing.Process(target=_burn, args=(stop,), daemon=True) for _ in range(burners)]
    for p in procs:
      p.start()
    time.sleep(2 if burners else 0)
    try:
      for name, env in SETTINGS.items():
        load = os.getloadavg()[0]
        run = subprocess.run([sys.executable, "-c", CHILD, str(_M.value), str(_REPEATS.value)], capture_output=True,
                             text=True, env={**os.environ, **env}, check=True)
        rows.append((burners, name, load, json.loads(run.stdout.strip().splitlines()[-1])))
        print(f"burners={burners} {name:11s} load {load:4.1f}: " +
              ", ".join(f"{k} {v * 1e3:8.1f} ms" for k, v in rows[-1][3].items()), flush=True)
    finally:
      stop.set()
      for p in procs:
        p.join()
  print("\nratio to `default` under the same load (below 1: faster)")
  for burners in sorted({r[0] for r in rows}):
    base = next(r[3] for r in rows if r[0] == burners and r[1] == "default")
    for _, name, _, t in (r for r in rows if r[0] == burners and r[1] != "default"):
      print(f"burners={burners} {name:11s} " + ", ".join(f"{k} x{t[k] / base[k]:.2f}" for k in t))


if __name__ == "__main__":
  app.run(main)
