"""Peak host memory of the estimator pipeline at the modular experiment's sizes (CPU).

  python benchmarks/estimate_memory.py --p=97 --bar=20 --d_model=128 --dim=1024 --subsets=5000

Featurizes every training and target example at params0 (an untrained model: memory does not
depend on the weights), builds per-task statistics and solves `--subsets` subsets with the one-step
solver, printing the process's peak resident memory after each phase next to the sizes of the
arrays the design says dominate.
"""
from __future__ import annotations



import resource
import time

import jax
import numpy as np
from absl import app
from absl import flags

import ksurrogate as ks
from ksurrogate_experiments.modular import data as data_lib
from ksurrogate_experiments.modular import config as config_lib
from ksurrogate_experiments.modular import phases as pipeline
from ksurrogate import features

_P = flags.DEFINE_integer("p", 97, "modulus")
_BAR = flags.DEFINE_integer("bar", 20, "task block width")
_D_MODEL = flags.DEFINE_integer("d_model", 128, "transformer width")
_DIM = flags.DEFINE_integer("dim", 1024, "projection dimension")
_SUBSETS = flags.DEFINE_integer("subsets", 5000, "subsets to estimate")
_TARGETS = flags.DEFINE_integer("targets", 500, "target examples")
_EXAMPLES = flags.DEFINE_integer("examples", 1024, "training examples featurized (memory is per batch; the "
                                 "stored features of all N examples are N*d*4 bytes, printed)")


def peak_mib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv):
  del argv
  d = data_lib.make(_P.value, "add", _BAR.value, 0.8, 0)
  c = config_lib.get_config("cpu")
  c.model.d_model, c.model.mlp_dim = _D_MODEL.value, 4 * _D_MODEL.value
  net = pipeline.network(c.model, d)
  params0 = net.init(jax.random.key(0), d.X_train[:2])
  D = sum(x.size for x in jax.tree.leaves(params0))
  N, dim = len(d.X_train), _DIM.value
  print(f"D={D} params, N={N}, d={dim}, K={d.num_tasks}; start: peak {peak_mib():.0f} MiB")
  print(f"  sizes: P would be D*d*4 = {D * dim * 4 / 2**20:.0f} MiB (streamed when > 1 GiB); features N*d*4 = "
        f"{N * dim * 4 / 2**20:.0f} MiB; per-batch Jacobian 64*D*4 = {64 * D * 4 / 2**20:.0f} MiB; task statistics "
        f"K*d*d*8 = {d.num_tasks * dim * dim * 8 / 2**20:.0f} MiB")
  key = jax.random.key(1)
  t0 = time.perf_counter()
  n = min(_EXAMPLES.value, N)
  train = features.featurize(net.apply, params0, d.X_train[:n], d.y_train[:n], key=key, dim=dim)
  target = features.featurize(net.apply, params0, d.X_val[:_TARGETS.value], d.y_val[:_TARGETS.value], key=key, dim=dim)
  print(f"featurize {n} + {len(target.labels)} examples (P streamed): {time.perf_counter() - t0:.1f} s, peak {peak_mib():.0f} MiB")
  stats = ks.task_statistics(train, d.task_train[:n], d.num_tasks)
  print(f"task statistics: peak {peak_mib():.0f} MiB")
  S = np.asarray(ks.subsets.fixed_size(jax.random.key(2), _SUBSETS.value, d.num_tasks, d.num_tasks - 3))
  t0 = time.perf_counter()
  ks.estimate(train, d.task_train[:n], S, target, ridge=1e4, method="onestep", stats=stats)
  print(f"onestep on {_SUBSETS.value} subsets: {time.perf_counter() - t0:.1f} s, peak {peak_mib():.0f} MiB")


if __name__ == "__main__":
  app.run(main)
