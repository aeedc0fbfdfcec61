"""benchmarks/device_run.sh, the one-call GPU script, run on CPU at reduced size (the tiny configs,
a 4-checkpoint step-count check) so that it cannot rot; the choice of step count on its own."""
import importlib.util
import json
import os
import pathlib
import subprocess
import tarfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _module():
  spec = importlib.util.spec_from_file_location("device_run", ROOT / "benchmarks" / "device_run.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _row(seed, step, mean, var, kept=5):
  return {"seed": seed, "step": step, "mean": mean, "var_median": var, "kept": kept, "total": 5}


def test_the_step_count_is_chosen_in_range_on_every_seed_closest_to_the_released():
  choose = _module().choose_steps
  rows = [_row(0, 25, 2.5, 0.3), _row(1, 25, 2.4, 0.5),      # seed 0 below the variance range
          _row(0, 50, 2.2, 0.6), _row(1, 50, 2.0, 0.9),
          _row(0, 75, 1.9, 0.7), _row(1, 75, 2.0, 0.7),      # closest to the released 1.975 / 0.701
          _row(0, 100, 1.97, 0.7, kept=4), _row(1, 100, 1.97, 0.7)]   # a target not kept
  step, why = choose(rows)
  assert step == 75 and "mean 1.950, variance median 0.700" in why
  assert choose(rows[:2]) == (None, "no checkpoint in range on every seed: the config's own step count")
  assert choose([_row(0, 25, float("nan"), 0.7), _row(1, 25, 2.0, 0.7)])[0] is None


@pytest.mark.slow
def test_the_device_script_runs_on_cpu_at_reduced_size(tmp_path):
  out = tmp_path / "out"
  env = {**os.environ, "OUT": str(out), "JAX_PLATFORMS": "cpu", "BUDGET_S": "1700", "MODULAR_CONFIG": "tiny",
         "MORL_CONFIG": "tiny", "CURVE_RECIPE": "train.num_steps=40", "CURVE_CHECKPOINTS": "4", "CURVE_SUBSETS": "6",
         "CURVE_SEEDS": "0,1", "DETCOST": "0"}
  r = subprocess.run(["bash", "benchmarks/device_run.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  files = sorted(p.name for p in out.iterdir())
  assert files == ["curve.jsonl", "device_run.log", "measured.json", "modular.tar.gz", "modular_summary.json",
                   "morl.tar.gz", "morl_summary.json"]
  measured = json.loads((out / "measured.json").read_text())
  assert measured["determinism_flag"] in ("--xla_gpu_deterministic_ops=true", "--xla_gpu_exclude_nondeterministic_ops=true")
  for lane in ("modular", "morl"):
    assert measured["lanes"][lane]["exit"] == 0 and measured["lanes"][lane]["phases_s"]
  assert measured["curve"]["rows"] == 2 * 4   # 2 seeds x 4 checkpoints
  assert "outcomes/released_mean" in measured["lanes"]["modular"]["figures"]
  assert "== measured" in r.stdout and "phases (s):" in r.stdout
  with tarfile.open(out / "modular.tar.gz") as tar:
    names = tar.getnames()
  assert "modular/summary.json" in names and "modular/run.log" in names and any(n.endswith(".png") for n in names)
  # the run log says how long each chunked phase has left after its first chunk
  with tarfile.open(out / "modular.tar.gz") as tar:
    log = tar.extractfile("modular/run.log").read().decode()
  assert "retrain: chunk 1/2 took" in log and "s left" in log
