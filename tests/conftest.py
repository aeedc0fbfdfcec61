import os


def _pin_xdist_worker():
  """Each pytest-xdist worker on its own core, with one BLAS thread, before NumPy or JAX start
  their thread pools: two workers whose XLA and OpenBLAS threads share both cores wait on each
  other's parked threads (benchmarks/threads.py measured a kernel fit ~30x slower beside two busy
  processes than pinned). The runs a test starts inherit the worker's core."""
  worker = os.environ.get("PYTEST_XDIST_WORKER", "")
  cores = sorted(os.sched_getaffinity(0))
  if not worker.startswith("gw") or int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) < 2 or len(cores) < 2:
    return
  for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"
  os.sched_setaffinity(0, {cores[int(worker[2:]) % len(cores)]})


_pin_xdist_worker()

import numpy as np
import pytest


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture
def gpu_host_memory(monkeypatch):
  """The memory check as on the host the paper-size configs are sized for (an H200 machine, 128
  GiB): tests that every shipped config is valid then also pass on a small CI machine, where
  `validate` rightly refuses the paper config. The refusal itself is tested on its own
  (tests/test_validate.py::test_memory_bound_names_the_field_and_both_figures)."""
  from ksurrogate_experiments import common
  real = common.machine_memory()
  monkeypatch.setattr(common, "machine_memory", lambda: max(real, 128 * 2 ** 30))


def planted_xor(rng, m, K=12, T=4, pair=(3, 7), strength=1.5, noise=0.1):
  """F(s) = additive effects + strength * XOR(s_j, s_k) + noise, for T targets."""
  S = rng.random((m, K)) < 0.5
  a = rng.normal(0, 0.3, (K, T))
  xor = (S[:, pair[0]] ^ S[:, pair[1]]).astype(float)
  F = S @ a + strength * xor[:, None] + noise * rng.normal(size=(m, T))
  return S, F


def run_experiment(tmp_path_factory, experiment: str, config: str = "tiny", timeout: int = 900):
  """Runs an experiment through the CLI into a fresh workdir: (workdir, summary, command)."""
  import json
  import pathlib
  import subprocess
  import sys
  workdir = tmp_path_factory.mktemp(f"{experiment}_{config}")
  cmd = [sys.executable, "-m", "ksurrogate_experiments.main", f"--experiment={experiment}", f"--config={config}",
         f"--workdir={workdir}"]
  r = subprocess.run(cmd, cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=timeout)
  assert r.returncode == 0, r.stderr[-3000:]
  return workdir, json.loads((workdir / "summary.json").read_text()), cmd
