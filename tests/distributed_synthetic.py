"""A small experiment through the harness, run by tests/test_distributed.py as one process or as
a jax.distributed group of several on one machine.

  python tests/distributed_synthetic.py WORKDIR OUT.npz [PROCESS_ID NUM_PROCESSES PORT]

Phases: `base` (stored: process 0 computes it, the others load it), `map` (7 chunks of 3
subsets) and `map2` (4 chunks of 2), both chunked outcomes that read `base`. With CHUNK_SLEEP=s
every chunk sleeps s seconds first (so a test can stop the group part-way). Process 0 writes the
outcomes to OUT.npz.
"""
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))   # the repository root

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from ksurrogate.harness import runs  # noqa: E402


def base(c):
  return {"w": np.asarray(jax.random.normal(jax.random.key(c.seed), (5, 4)))}


def chunk(c, S_chunk, i, b):
  time.sleep(float(os.environ.get("CHUNK_SLEEP", "0")))
  # a little training-like arithmetic: matmuls and reductions whose rounding depends on their order
  x = jnp.asarray(S_chunk, jnp.float32) @ jnp.asarray(b["w"])
  for _ in range(20):
    x = jnp.tanh(x * c.scale + x.mean(1, keepdims=True))
  return {"F": np.asarray(x), "chunk": np.full(len(S_chunk), i, np.int32), "seconds": np.full(len(S_chunk), 0.5)}


def main(argv):
  workdir, out = argv[1], argv[2]
  if len(argv) > 3:
    pid, n, port = int(argv[3]), int(argv[4]), argv[5]
    runs.initialize_distributed(f"127.0.0.1:{port}", n, pid)
  config = ml_collections.ConfigDict({"seed": 3, "scale": 1.5})
  S = np.asarray(jax.random.bernoulli(jax.random.key(1), 0.5, (20, 5)))
  with runs.Run(workdir, name="synthetic", config=config, progress=False) as run:
    b = run.phase("base", base, config)
    F = run.outcomes("map", chunk, config, S, b, chunk_size=3)
    G = run.outcomes("map2", chunk, config, S[:7], b, chunk_size=2)
    if run.is_primary:
      np.savez(out, F=F["F"], chunk=F["chunk"], G=G["F"], w=b["w"])
    print("timings", {k: v.status for k, v in run.timings.items()}, flush=True)


if __name__ == "__main__":
  main(sys.argv)
