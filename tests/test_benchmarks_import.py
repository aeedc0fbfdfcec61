"""Every benchmark script loads: its imports still name modules that exist (a benchmark is not
run by the default tests, so a renamed module would otherwise break it unnoticed), and
estimator_table prints its table from summaries."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))

# Loads every script as a module (its `if __name__ == "__main__"` body does not run) with the
# scripts' folder first on sys.path, as `python benchmarks/X.py` has it, in one fresh interpreter
# (one JAX import instead of one per script). Scripts define absl flags of the same names, so the
# flags each one defines are removed before the next loads.
LOAD = """
import os, runpy, sys, traceback
from absl import flags
sys.path.insert(0, os.path.dirname(sys.argv[1]))
failed = []
for path in sys.argv[1:]:
  before = set(flags.FLAGS)
  try:
    runpy.run_path(path, run_name='bench')
  except BaseException:
    failed.append(os.path.basename(path) + ': ' + traceback.format_exc(limit=3).strip().splitlines()[-1])
  for name in set(flags.FLAGS) - before:
    delattr(flags.FLAGS, name)
print('\\n'.join(failed), file=sys.stderr)
sys.exit(1 if failed else 0)
"""


def test_every_benchmark_script_loads():
  r = subprocess.run([sys.executable, "-c", LOAD, *(str(ROOT / "benchmarks" / s) for s in SCRIPTS)], cwd=ROOT,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert len(SCRIPTS) >= 20


def test_estimator_table_prints_each_experiments_row(tmp_path):
  icl = {"estimator": {"sentiment": {"solver": "first_order", "median_relative_error": 1.5,
                                     "no_change_median_relative_error": 0.75, "ratio_to_no_change": 2.0,
                                     "lds_vs_real": 0.12, "seconds_per_subset": 1.5e-05,
                                     "seconds_real_per_subset": 4.0, "speedup_with_setup": 23.0}},
         "datasets": {"sentiment": {"kernel_exact": {"swap_pearson": 0.6}, "kernel_estimated": {"swap_pearson": 0.24}}}}
  (tmp_path / "summary.json").write_text(json.dumps(icl))
  r = subprocess.run([sys.executable, "benchmarks/estimator_table.py", f"--icl={tmp_path}"], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  row = next(line.split() for line in r.stdout.splitlines() if line.startswith("icl"))
  # dataset, method, error, no-change error, their ratio, lds, surrogate ratio (on the swaps), s per subset
  assert row[1:9] == ["sentiment", "first_order", "1.500", "0.750", "2.000", "0.120", "0.400", "1.5e-05"], r.stdout


def test_costs_prints_each_constant_beside_its_measured_cost():
  """benchmarks/costs.py at a tiny size (one fit size, so no growth row): one row per unit of the
  time cost model, the constant the config checks use beside a positive measured cost."""
  from ksurrogate_experiments import costs
  r = subprocess.run([sys.executable, "benchmarks/costs.py", "--sizes=40", "--targets=4", "--tasks=8",
                      "--bootstrap=100", "--width=32", "--batch=32", "--repeats=1"], cwd=ROOT, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  rows = {line.split(",")[0]: line.split()[-3:] for line in r.stdout.splitlines()
          if line.startswith(("fit", "bootstrap", "training,"))}
  constants = {"fit": costs.FIT_SECONDS, "bootstrap": costs.BOOTSTRAP_SECONDS,
               "training": 1 / costs.TRAIN_FLOPS_PER_SECOND}
  assert set(rows) == set(constants), r.stdout
  for unit, (measured, constant, ratio) in rows.items():
    assert float(constant) == pytest.approx(constants[unit], rel=1e-2), (unit, r.stdout)
    assert float(measured) > 0 and float(ratio) == pytest.approx(float(measured) / float(constant), rel=0.02), r.stdout


@pytest.mark.slow   # ~1 min: two tiny-Llama recipes end to end
def test_tasks_depth_compares_the_two_recipes_on_the_same_subsets(tmp_path):
  out = tmp_path / "depth.json"
  r = subprocess.run([sys.executable, "benchmarks/tasks_depth.py", "--config=tiny", "--subsets=4", f"--json={out}"],
                     cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  res = json.loads(out.read_text())
  assert res["blocks"] == {"top": 1, "full": 2}
  top, full = np.asarray(res["F"]["top"]), np.asarray(res["F"]["full"])
  assert top.shape == full.shape == (4, 6) and not np.allclose(top, full)   # two different recipes
  assert -1 <= res["effects_pearson_pooled"] <= 1
  bad = subprocess.run([sys.executable, "benchmarks/tasks_depth.py", "--config=tiny", "--subsets=2"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "--subsets: need 3..12" in bad.stderr
