"""benchmarks/estimator_replay.py at tiny size: the grid prints what the library gives when called
directly on the same cached theta0 and fine-tunes, and refuses a bad estimator name up front."""
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import ksurrogate as ks
from ksurrogate import estimators
from ksurrogate_experiments.modular import config as config_lib
from ksurrogate_experiments.modular import phases

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow   # ~2 CPU-minutes: theta0, 29 fine-tunes and the replay, in the script and again here
def test_estimator_grid_prints_the_library_figures(tmp_path):
  cache, out = tmp_path / "cache", tmp_path / "rows.json"
  cmd = [sys.executable, "benchmarks/estimator_replay.py", "--config=tiny", f"--cache={cache}",
         "--recipes=adam:1e-3:10", "--estimators=replay:top1+cal", f"--out={out}"]
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  (row,) = json.loads(out.read_text())["rows"]
  # the library itself on the benchmark's cached theta0 and real fine-tunes
  c = config_lib.get_config("tiny")
  s = phases.setup(c)
  dsg = phases.design(c, s)
  _, unravel = ravel_pytree(s.init_fn(s.init_key))
  params = unravel(jnp.asarray(np.load(next(cache.glob("theta0_*.npz")))["flat"]))
  F_ft = np.load(next(cache.glob("ft_*.npz")))["F"]
  f = c.finetune
  S_all = np.concatenate([dsg.S_est[:f.num_subsets], dsg.S_truth])
  data = estimators.Data.classifier(s.apply_fn, params, s.train_data, s.d.task_train, (s.X_val, s.y_val), output="top1",
                                    num_tasks=dsg.K)
  est = estimators.Replay(ks.Recipe("adam", 1e-3, 10), dim=256)
  state = est.prepare(data, key=jax.random.key(c.seed + 5), design=S_all,
                      calibrate=(dsg.S_est[:f.num_calibration], F_ft[:f.num_calibration]))
  F_hat, rep = est.estimate(state, S_all)
  held = np.arange(f.num_calibration + f.num_fit, f.num_subsets)
  err = ks.metrics.relative_error(F_hat[held], F_ft[held])["median"]
  assert row["median_rel_error"] == pytest.approx(err, rel=1e-6) and row["scale_or_ridge"] == rep.step_scale
  assert row["space"] == rep.space == "example" and row["memory_mib"] == pytest.approx(rep.memory_bytes / 2 ** 20)
  printed = next(line for line in r.stdout.splitlines() if line.startswith("replay:top1+cal"))
  assert f"{err:.3f}" in printed.split()


@pytest.mark.parametrize("name, message", [
    ("replay:top1:nope", "estimators: 'replay:top1:nope': unknown option 'nope' for replay"),
    ("quadratic", "estimators: 'quadratic': solver: unknown estimator 'quadratic'"),
    ("onestep:top1", "estimators: 'onestep:top1': onestep takes no output and no +cal"),
    ("replay:top1:layer:parameter", "estimators: 'replay:top1:layer:parameter': groups: 'layer' needs the example space")])
def test_bad_estimator_names_are_refused_before_any_work(tmp_path, name, message):
  r = subprocess.run([sys.executable, "benchmarks/estimator_replay.py", "--config=tiny", f"--cache={tmp_path}",
                      f"--estimators={name}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode != 0 and message in r.stderr + r.stdout, r.stderr[-2000:]
  assert not list(tmp_path.iterdir())          # nothing built: no theta0, no fine-tune
