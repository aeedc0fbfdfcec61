"""The morl experiment end to end through the CLI on its tiny config (one run shared by the tests)."""
import json
import math
import pathlib
import subprocess
import sys

import pytest
from conftest import run_experiment

from ksurrogate import families

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAMILIES = tuple(f.name for f in families.standard())
# Seeded figures of the tiny config, pinned so that a change altering results is seen. Two runs on
# one machine gave bitwise-identical summaries; the bands only absorb float rounding across CPUs.
PINNED = {
    ("meta_policy", "return", "balance"): (86.0, 0.5),
    ("full_set_outcome", "stay_left"): (-1.3703, 1e-3),
    ("ceiling", "loo_pearson"): (0.8677, 5e-3),
    ("estimator", "median_relative_error"): (0.2332, 5e-3),   # the library projection (issue 17)
    ("datasets", "kernel_exact", "lds"): (0.1940, 5e-3),
    ("datasets", "kernel_exact", "loo_pearson"): (-0.3588, 5e-3),
    ("datasets", "linear_exact", "loo_pearson"): (-0.0168, 5e-3),
    ("datasets", "tracin", "loo_pearson"): (0.3446, 5e-3),
    ("selection_regret", "linear_exact"): (2.6339, 5e-3),   # regret vs the best compared set, kernel_estimated's pick included
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  return run_experiment(tmp_path_factory, "morl")


def without_seconds(datasets):
  """Scores without the fit times (wall clock)."""
  return {n: {m: {k: v for k, v in row.items() if k != "seconds"} for m, row in rows.items()}
          for n, rows in datasets.items()}


@pytest.mark.slow   # minutes: policy trainings; tests/test_morl.py keeps its units in the default run
def test_tiny_summary_pins_seeded_figures_and_holds_every_section(tiny_run):
  workdir, s, _ = tiny_run
  for key, (value, band) in PINNED.items():
    node = s["datasets"]["morl"][key[1]] if key[0] == "datasets" else s[key[0]]["morl"]
    got = node[key[-2]][key[-1]] if len(key) == 3 and key[0] != "datasets" else node[key[-1]]
    assert got == pytest.approx(value, abs=band), (key, got)
  d = s["datasets"]["morl"]
  for source in ("exact", "estimated"):
    for f in FAMILIES:
      m = f"{f}_{source}"
      for k in ("lds", "lds_se", "loo_pearson", "loo_pearson_se"):
        assert math.isfinite(d[m][k]), (m, k)
      assert "loo_pearson_of_ceiling" in d[m]
  assert math.isfinite(d["influence"]["loo_pearson"]) and math.isfinite(d["tracin"]["loo_pearson"])
  assert s["reliability"]["morl"]["loo_repeats"] == 2 and s["seeds_for_reliability"]["morl"]["loo_pearson"] == 3
  assert {"kernel_exact-linear_exact", "kernel_exact-influence", "kernel_estimated-kernel_exact"} <= set(s["comparisons"]["morl"])
  est = s["estimator"]["morl"]
  for k in ("median_relative_error", "lds_vs_real", "linearization_error", "speedup_per_subset"):
    assert math.isfinite(est[k]), k
  assert est["solver"] == "onestep" and est["ridge"] > 0 and est["details"]["targets_scored"] == s["targets"]["morl"]
  sel = s["selection"]["morl"]
  assert set(sel) == set(s["targets"]["morl"]) and len(sel) == 5   # every target that varies
  for row in sel.values():   # every family on both sources picks a set, beside the baselines
    assert set(row) == {f"{f}_{src}" for f in FAMILIES for src in ("exact", "estimated")} | {
        "all_objectives", "target_alone", "random"}
    assert all(math.isfinite(v["return"]) for v in row.values())
  assert len(s["interactions_measured"]["morl"]) == 2
  for what in ("meta_policy_curve", "selection", "loo_real_vs_predicted", "interactions", "top_tasks", "scores"):
    assert pathlib.Path(s["files"][f"morl/{what}"]).stat().st_size > 1000


@pytest.mark.slow
def test_rerun_reuses_every_phase(tiny_run):
  workdir, s, cmd = tiny_run
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  again = json.loads((workdir / "summary.json").read_text())
  status = {row["phase"]: row["status"] for row in again["timing"]}
  assert all(status[p] == "reused" for p in ("meta_policy", "exact_random", "estimate", "baselines", "selection_seed0"))
  assert without_seconds(again["datasets"]) == without_seconds(s["datasets"])   # the same scores, bit for bit
  assert again["selection"] == s["selection"] and again["comparisons"] == s["comparisons"]


@pytest.mark.slow
def test_estimator_sweep_reproduces_the_runs_estimator_and_refuses_bad_settings(tiny_run, tmp_path):
  workdir, s, _ = tiny_run
  out = tmp_path / "sweep.json"
  # the tiny config's own estimator setting (estimate: dim 16, ridge 1, onestep, 2 envs) and a stronger ridge
  cmd = [sys.executable, "benchmarks/morl_estimator_sweep.py", f"--workdir={workdir}", "--config=tiny",
         "--settings=16:1:onestep:2:surrogate,16:1000:onestep:2:surrogate", f"--out={out}"]
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "were computed here" not in r.stdout          # every stored phase read back, nothing recomputed
  rows = json.loads(out.read_text())["rows"]
  d = s["datasets"]["morl"]
  default, strong = rows
  assert default["constant_targets"] == 0
  # The sweep's setting equal to the config is the run's own estimator: the kernel on its estimates
  # scores the run's kernel_estimated LOO Pearson, over the run's kernel_exact.
  assert default["surrogate_loo"] == pytest.approx(d["kernel_estimated"]["loo_pearson"], abs=1e-6)
  assert default["surrogate_ratio"] == pytest.approx(
      d["kernel_estimated"]["loo_pearson"] / d["kernel_exact"]["loo_pearson"], abs=1e-6)
  # A ridge 1000 times the curvature all but freezes the policy: the estimate nears no change.
  assert abs(strong["held_ratio"] - 1) < abs(default["held_ratio"] - 1) or abs(strong["held_ratio"] - 1) < 0.02
  bad = subprocess.run(cmd[:3] + ["--settings=16:1:onestep"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "is not dim:ridge:solver:num_envs:mode" in bad.stderr + bad.stdout
