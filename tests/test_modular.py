"""The modular experiment end to end through the CLI, and resuming a killed run."""
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("kernel_exact", "linear_exact", "kernel_estimated", "linear_estimated", "official_krr_exact",
           "official_lstsq_exact")
ESTIMATOR_KEYS = ("median_relative_error", "mean_relative_error", "linearization_error", "lds_vs_retrain",
                  "seconds_estimate", "seconds_finetune", "speedup")


def _cmd(workdir, config="tiny"):
  return [sys.executable, "-m", "experiments.main", "--experiment=modular", f"--config={config}", f"--workdir={workdir}"]


def _stable(summary):
  """Everything but wall-clock figures."""
  out = {k: v for k, v in summary.items() if k not in ("timing", "estimator")}
  out["estimator"] = {k: v for k, v in summary["estimator"].items() if "seconds" not in k and k != "speedup"}
  for d in out["datasets"].values():
    for m in d.values():
      m.pop("seconds", None)
  return out


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("modular_full")
  r = subprocess.run(_cmd(workdir), cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  return workdir, json.loads((workdir / "summary.json").read_text()), r.stdout


def test_tiny_summary_keys_finite(full_run):
  workdir, s, stdout = full_run
  for m in METHODS:
    assert math.isfinite(s["lds"][m]) and math.isfinite(s["normalized_error"][m])
  for m in METHODS + ("influence", "tracin", "trak"):
    assert math.isfinite(s["loo_correlation"][m]["pearson"]) and math.isfinite(s["loo_correlation"][m]["spearman"])
  for k in ESTIMATOR_KEYS:
    assert math.isfinite(s["estimator"][k]), k
  assert s["config"]["p"] == 11
  retrains = s["retrain_final_train_loss"]
  # 40 steps cannot fit the tiny task to loss 0.1, so every retrain takes the retry path once.
  assert retrains["retried"] == 16 + 14 and 0 <= retrains["unconverged"] <= 16 + 14
  assert s["estimator"]["attribution_ridge_selection"] == "retrain" and s["estimator"]["attribution_ridge"] > 0
  for png in ("loo_real_vs_predicted.png", "interactions.png", "predicted_vs_true.png", "training_curves.png"):
    assert (workdir / "modular" / png).stat().st_size > 1000
  assert "phase" in stdout and "kernel_estimated" in stdout


def test_killed_run_resumes_to_the_same_summary(full_run, tmp_path):
  _, reference, _ = full_run
  proc = subprocess.Popen(_cmd(tmp_path), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  record = tmp_path / "retrain" / "completed.json"
  deadline = time.time() + 600
  while not record.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  killed = proc.poll() is None
  if killed:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "summary.json").exists()
    assert len(json.loads(record.read_text())["chunks"]) < 4
  r = subprocess.run(_cmd(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  assert killed, "the run finished before it could be interrupted; the test proved nothing"
  assert _stable(json.loads((tmp_path / "summary.json").read_text())) == _stable(reference)


def test_workdir_of_another_config_is_refused(full_run, tmp_path):
  workdir, _, _ = full_run
  import experiments.modular as modular
  config = modular.get_config("tiny")
  config.num_steps = 41
  with pytest.raises(ValueError, match="^workdir: .* different config"):
    list(modular.problems(config, workdir))


@pytest.mark.slow
def test_cpu_config_end_to_end(tmp_path):
  r = subprocess.run(_cmd(tmp_path, "cpu"), cwd=ROOT, capture_output=True, text=True, timeout=3600)
  assert r.returncode == 0, r.stderr[-3000:]
  s = json.loads((tmp_path / "summary.json").read_text())
  assert all(math.isfinite(s["lds"][m]) for m in METHODS)
