"""How far the modular ground truth moves with floating-point order alone, next to how far it moves
with the training seed.

  XLA_FLAGS=--xla_cpu_max_isa=SSE4_2 python benchmarks/truth_fp_order.py --workdir=/tmp/mod_cpu   # another vector width
  taskset -c 0 python benchmarks/truth_fp_order.py --workdir=/tmp/mod_cpu                           # one thread

Reads the leave-one-out retrains of every training seed that a finished modular run stored
(`truth_seed<r>`, from a scratch copy of the workdir, so nothing there changes), retrains seed
--seed's leave-one-out and full-set masks again in this process, chunk by chunk as the run did
(same config, keys and shapes: only the machine's floating-point order can differ), and prints, for the LOO effects F(1 - e_k) - F(1)
over the run's kept targets:
  * recomputed vs stored, same seed: identical or not, largest and median absolute difference,
    Pearson over all (task, target) effects and the mean per-target Pearson;
  * stored seed vs each other stored seed: the same correlations (what a new seed changes).
Run under the machine's defaults it checks that a rerun gives the stored bits.
"""
from __future__ import annotations

import os


import pathlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from ksurrogate_experiments.modular import config as config_lib  # noqa: E402
from ksurrogate_experiments.modular import phases as pipeline  # noqa: E402
from ksurrogate import metrics  # noqa: E402
from ksurrogate.harness import runs  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "a finished modular run", required=True)
_CONFIG = flags.DEFINE_string("config", "cpu", "the run's config")
_SEED = flags.DEFINE_integer("seed", 0, "the training seed to retrain again")


def _correlations(a, b) -> tuple[float, float]:
  """(Pearson over all entries, mean over targets of the Pearson across tasks) of [K, T] effects."""
  overall = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
  per_target = [np.corrcoef(a[:, t], b[:, t])[0, 1] for t in range(a.shape[1]) if a[:, t].std() > 0 and b[:, t].std() > 0]
  return overall, float(np.mean(per_target))


def main(argv):
  del argv
  c = config_lib.get_config(_CONFIG.value)
  config_lib.EXPERIMENT.validate(c)
  scratch = pathlib.Path(tempfile.mkdtemp()) / "run"
  shutil.copytree(_WORKDIR.value, scratch, ignore=shutil.ignore_patterns(".lock*"))
  with runs.Run(scratch, name="modular", progress=False, log=lambda line: None, config=c) as run:
    s = run.phase("setup", pipeline.setup, c, store=False)
    dsg = run.phase("design", pipeline.design, c, s, store=False)
    retrains = run.outcomes("retrain", pipeline.retrain_chunk, c, dsg.S_rand, s, chunk_size=c.design.chunk_size)
    stored = pipeline.truth_retrains(c, run, s, dsg)   # every chunk reused from the store
    statuses = {name: t.status for name, t in run.timings.items() if name.startswith("truth_seed")}
  if any(v != "reused" for v in statuses.values()):
    raise SystemExit(f"workdir: not every truth seed was stored ({statuses})")
  keep = np.asarray(metrics.varying_targets(retrains["F"], c.data.target_variance_threshold))
  K = dsg.K
  t0 = time.perf_counter()
  # chunk by chunk, as the run's `outcomes` called it: the same programs on the same shapes
  cs = c.design.chunk_size
  parts = [pipeline.retrain_chunk(c, dsg.S_truth[i:i + cs], i // cs, s, train_seed=_SEED.value)
           for i in range(0, len(dsg.S_truth), cs)]
  again = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
  seconds = time.perf_counter() - t0
  effects = pipeline.loo_effects(stored, K)[:, :, keep]
  mine = pipeline.loo_effects([again], K)[0][:, keep]
  same = effects[_SEED.value]
  d = np.abs(mine - same)
  print(f"seed {_SEED.value} retrained again in {seconds:.0f} s (XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
        f"{os.cpu_count()} cpus, affinity {len(os.sched_getaffinity(0))}); {int(keep.sum())} kept targets, {K} tasks")
  print(f"recomputed vs stored seed {_SEED.value}: {'identical' if np.array_equal(again['F'], stored[_SEED.value]['F']) else 'different'}; "
        f"|difference| of LOO effects max {d.max():.4g}, median {np.median(d):.4g} (effects' s.d. {same.std():.4g}); "
        "Pearson overall / mean per target %.3f / %.3f" % _correlations(mine, same))
  for r in range(len(stored)):
    if r != _SEED.value:
      print(f"stored seed {_SEED.value} vs stored seed {r}: Pearson overall / mean per target "
            "%.3f / %.3f" % _correlations(effects[r], same))


if __name__ == "__main__":
  app.run(main)
