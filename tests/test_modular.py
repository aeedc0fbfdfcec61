"""The modular experiment end to end through the CLI: summary, resume after a kill or Ctrl-C,
repair of a damaged store, refusal of a workdir made under another config."""
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("kernel_exact", "linear_exact", "kernel_estimated", "linear_estimated", "kernel_finetuned",
           "linear_finetuned", "kernel_estimated_same", "linear_estimated_same", "official_krr_exact",
           "official_lstsq_exact")
ESTIMATOR_KEYS = ("median_relative_error", "mean_relative_error", "linearization_error", "lds_vs_retrain",
                  "seconds_estimate", "seconds_finetune", "speedup", "speedup_per_subset")


def _cmd(workdir, config="tiny", *extra):
  return [sys.executable, "-m", "experiments.main", "--experiment=modular", f"--config={config}",
          f"--workdir={workdir}", *extra]


def _stable(summary):
  """Everything but wall-clock figures and file locations."""
  out = {k: v for k, v in summary.items() if k not in ("timing", "estimator", "files")}
  out["estimator"] = {k: v for k, v in summary["estimator"]["modular"].items() if "seconds" not in k and "speedup" not in k}
  for d in out["datasets"].values():
    for m in d.values():
      m.pop("seconds", None)
  return out


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("modular_full")
  r = subprocess.run(_cmd(workdir), cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  return workdir, json.loads((workdir / "summary.json").read_text()), r


def test_tiny_summary_keys_finite(full_run):
  workdir, s, r = full_run
  d = s["datasets"]["modular"]
  for m in METHODS:
    assert math.isfinite(d[m]["lds"]) and math.isfinite(d[m]["normalized_error"])
  for m in METHODS + ("influence", "tracin", "trak", "estimator_direct"):
    assert math.isfinite(d[m]["loo_pearson"]) and math.isfinite(d[m]["loo_spearman"])
    # the second ground truth (LOO by fine-tuning from theta0) scores every method too
    assert math.isfinite(d[m]["loo_finetune_pearson"]) and "loo_pearson_of_ceiling" in d[m]
  for m in METHODS:   # and every surrogate predicts held-out real fine-tunes
    assert math.isfinite(d[m]["lds_finetune"])
  truth = s["ground_truth"]["modular"]
  assert truth["training_seeds"] == 2 and truth["finetuned_subsets"] == {"calibration": 4, "fit": 5, "heldout": 3}
  assert set(s["ceiling"]["modular"]) >= {"pearson", "spearman", "pearson_mean_target"}
  for k in ESTIMATOR_KEYS:
    assert math.isfinite(s["estimator"]["modular"][k]), k
  assert s["config"]["data"]["p"] == 11
  retrains = s["retrain_final_train_loss"]["modular"]
  # 40 steps cannot fit the tiny task to loss 0.1, so every retrain takes the retry path once,
  # and the warning says the tiny config is a smoke test.
  assert retrains["retried"] == 14 + 2 * 17 and 0 <= retrains["unconverged"] <= 14 + 2 * 17   # random + 2 seeds x (LOO + full)
  assert "the tiny config is a smoke test" in r.stderr
  est = s["estimator"]["modular"]
  # the default estimator replays the finetune block's recipe; the tiny kernel fits the memory rule
  assert est["method"] == "replay" and est["space"] == "example" and est["recipe"]["steps"] == 10
  for what in ("loo_real_vs_predicted", "interactions", "predicted_vs_true", "training_curves", "top_tasks"):
    path = pathlib.Path(s["files"][f"modular/{what}"])
    assert path.parent == workdir / "modular" and path.stat().st_size > 1000
    assert str(path) in r.stdout            # the run says where every file is
  assert {row["phase"] for row in s["timing"]} >= {"theta0", "retrain", "truth_seed0", "truth_seed1", "features", "finetune",
                                                    "finetune_loo", "estimate", "baselines"}
  assert "kernel_estimated" in r.stdout and "status" in r.stdout


def test_rerun_reuses_every_stored_phase(full_run, tmp_path):
  workdir, reference, first = full_run
  shutil.copytree(workdir, tmp_path / "w")
  r = subprocess.run(_cmd(tmp_path / "w"), cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  s = json.loads((tmp_path / "w" / "summary.json").read_text())
  status = {row["phase"]: row["status"] for row in s["timing"]}
  assert all(status[p] == "reused" for p in ("theta0", "retrain", "features", "finetune", "estimate", "baselines"))
  seconds = {row["phase"]: row["seconds"] for row in s["timing"]}
  assert seconds["theta0"] == {row["phase"]: row["seconds"] for row in reference["timing"]}["theta0"]   # compute time kept
  assert "theta0: reused (computed in" in r.stdout
  assert _stable(s) == _stable(reference)


def test_damaged_store_is_repaired_to_the_same_summary(full_run, tmp_path):
  workdir, reference, _ = full_run
  w = tmp_path / "w"
  shutil.copytree(workdir, w)
  chunk_file = max((p for p in (w / "retrain" / "chunks" / "1").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  data = bytearray(chunk_file.read_bytes())
  data[len(data) // 2:len(data) // 2 + 32] = os.urandom(32)
  chunk_file.write_bytes(bytes(data))                                            # random bytes in a chunk
  record = w / "finetune" / "record.json"
  record.write_text(record.read_text()[:100])                                   # a truncated completion record
  next(p for p in (w / "features" / "result").rglob("*") if p.is_file()).unlink()   # a deleted feature file
  r = subprocess.run(_cmd(w), cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  warnings = [line for line in r.stderr.splitlines() if "WARNING" in line and "smoke test" not in line]
  assert len(warnings) == 3, warnings
  assert any("retrain: chunk 1 is damaged" in w_ for w_ in warnings)
  assert any("finetune/record.json is damaged" in w_ for w_ in warnings)
  assert any("features:" in w_ and "is missing" in w_ for w_ in warnings)
  assert _stable(json.loads((w / "summary.json").read_text())) == _stable(reference)


def test_killed_run_resumes_to_the_same_summary(full_run, tmp_path):
  _, reference, _ = full_run
  proc = subprocess.Popen(_cmd(tmp_path), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  record = tmp_path / "retrain" / "record.json"
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
  assert "chunks reused, computing" in r.stdout
  assert _stable(json.loads((tmp_path / "summary.json").read_text())) == _stable(reference)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_says_how_to_resume_and_keeps_finished_phases(tmp_path, sig):
  proc = subprocess.Popen(_cmd(tmp_path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  record = tmp_path / "retrain" / "record.json"
  deadline = time.time() + 600
  while not record.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be interrupted"
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 130
  assert err.strip().splitlines()[-1] == (f"interrupted: finished phases in {tmp_path} are kept; "
                                          "rerun the same command to resume")
  assert "Traceback" not in err
  assert (tmp_path / "theta0" / "record.json").exists()
  assert json.loads(record.read_text())["chunks"]


def test_workdir_of_another_config_is_refused(full_run):
  workdir, _, _ = full_run
  r = subprocess.run(_cmd(workdir, "tiny", "--config.train.num_steps=42"), cwd=ROOT, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode != 0
  assert "workdir: phase 'theta0'" in r.stderr and "train.num_steps=40 when stored, 42 now" in r.stderr
  assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_cpu_config_end_to_end(tmp_path):
  r = subprocess.run(_cmd(tmp_path, "cpu"), cwd=ROOT, capture_output=True, text=True, timeout=3600)
  assert r.returncode == 0, r.stderr[-3000:]
  s = json.loads((tmp_path / "summary.json").read_text())
  assert all(math.isfinite(s["datasets"]["modular"][m]["lds"]) for m in METHODS)


STUDY_TINY = ("--config.study.enabled=True", "--config.study.budgets=(8,12)", "--config.study.other_budget=8",
              "--config.study.num_heldout=4", "--config.study.num_estimated=60", "--config.study.num_pairs=2",
              "--config.study.active_seeds=2", "--config.study.active_base=4", "--config.study.active_more=4")


def test_regime_study_end_to_end(tmp_path):
  """The study's cells share one ground truth and ceiling; the cross-cell figure and readouts exist."""
  r = subprocess.run(_cmd(tmp_path, "tiny", *STUDY_TINY), cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  s = json.loads((tmp_path / "summary.json").read_text())
  cells = {"p0.5_m8", "p0.7_m8", "p0.7_m12", "p0.9_m8"}
  assert set(s["datasets"]) == cells
  for name in cells:
    d = s["datasets"][name]
    assert math.isfinite(d["kernel_exact"]["loo_pearson"]) and math.isfinite(d["influence"]["loo_pearson"])
    assert ("kernel_estimated" in d) == name.endswith("_m8")          # estimates fit where m = other_budget
  # one ground truth for all cells: influence (not fitted on the cell) scores the same everywhere
  assert len({s["datasets"][n]["influence"]["loo_pearson"] for n in cells}) == 1
  across = s["study_across"]
  assert set(across["linear_bias_relative_rms"]) == {"0.5", "0.7", "0.9"}
  assert len(across["interactions_exact_mean_target"]) == 2 and set(across["interactions_kernel_mean_target"]) == cells
  active = s["study"]["p0.5_m8"]["active_sampling"]
  assert len(active["suggested"]["lds_per_seed"]) == 2 and active["setting"]["candidates"] == 12 - 4   # pool 16 - 4 held out, minus the base 4
  assert pathlib.Path(s["files"]["study"]).stat().st_size > 10000
