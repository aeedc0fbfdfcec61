"""The morl experiment end to end through the CLI on its tiny config."""
import json
import math
import pathlib
import subprocess

import pytest
from conftest import run_experiment

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  return run_experiment(tmp_path_factory, "morl")


def test_summary_holds_every_section(tiny_run):
  workdir, s, _ = tiny_run
  d = s["datasets"]["morl"]
  for m in ("kernel_exact", "linear_exact", "kernel_estimated", "linear_estimated"):
    assert math.isfinite(d[m]["lds"]) and math.isfinite(d[m]["loo_pearson"])
    assert "loo_pearson_of_ceiling" in d[m]
  assert math.isfinite(d["influence"]["loo_pearson"]) and math.isfinite(d["tracin"]["loo_pearson"])
  assert set(s["ceiling"]["morl"]) == {"pearson", "spearman", "pearson_mean_target", "spearman_mean_target"}
  est = s["estimator"]["morl"]
  for k in ("median_relative_error", "lds_vs_finetune", "linearization_error", "speedup_per_subset"):
    assert math.isfinite(est[k]), k
  sel = s["selection"]["morl"]
  assert set(sel) == set(s["targets"]["morl"]) and len(sel) >= 2   # every target that varies
  for row in sel.values():
    assert {"kernel_exact", "linear_exact", "kernel_estimated", "all_objectives", "target_alone", "random"} <= set(row)
    assert all(math.isfinite(v["return"]) for v in row.values())
  assert len(s["interactions_measured"]["morl"]) == 2
  for what in ("meta_policy_curve", "selection", "loo_real_vs_predicted", "interactions", "top_tasks"):
    assert pathlib.Path(s["files"][f"morl/{what}"]).stat().st_size > 1000


def test_rerun_reuses_every_phase(tiny_run):
  workdir, s, cmd = tiny_run
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  again = json.loads((workdir / "summary.json").read_text())
  status = {row["phase"]: row["status"] for row in again["timing"]}
  assert all(status[p] == "reused" for p in ("meta_policy", "exact_random", "estimate", "baselines", "selection_seed0"))
  assert again["datasets"]["morl"]["kernel_exact"]["lds"] == s["datasets"]["morl"]["kernel_exact"]["lds"]
