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

from ksurrogate import families

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAMILIES = tuple(f.name for f in families.standard())
SOURCES = ("exact", "estimated", "finetuned", "estimated_same")
METHODS = tuple(f"{f}_{s}" for s in SOURCES for f in FAMILIES)
ESTIMATOR_KEYS = ("median_relative_error", "mean_relative_error", "linearization_error", "lds_vs_real",
                  "seconds_per_subset", "seconds_real_per_subset", "speedup_with_setup", "speedup_per_subset")
# Seeded figures of the tiny config, pinned so that a change altering results is seen (the held-out
# scores re-pinned on 2026-12-07 when the design became distinct subsets). Two runs on
# one machine gave bitwise-identical summaries; the bands only absorb float rounding across CPUs.
PINNED = {
    ("theta0", "final_train_loss"): (2.4515, 1e-3),
    ("theta0", "val_accuracy"): (0.0833, 1e-4),
    ("ground_truth", "loo_effect_sd"): (0.1169, 1e-3),
    ("ceiling", "loo_pearson"): (0.7211, 5e-3),
    ("estimator", "median_relative_error"): (0.00449, 5e-4),          # the replay (estimate.solver="replay")
    ("datasets", "kernel_exact", "lds"): (0.4938, 5e-3),
    ("datasets", "kernel_exact", "lds_declared"): (0.7667, 5e-3),
    ("datasets", "kernel_exact", "loo_pearson"): (0.5920, 5e-3),
    ("datasets", "linear_exact", "loo_pearson"): (0.5856, 5e-3),
    ("datasets", "influence", "loo_pearson"): (0.7217, 5e-3),
    ("datasets", "kernel_estimated", "loo_finetune_pearson"): (0.9815, 5e-3),
}


def _cmd(workdir, config="tiny", *extra):
  return [sys.executable, "-m", "ksurrogate_experiments.main", "--experiment=modular", f"--config={config}",
          f"--workdir={workdir}", *extra]


def _stable(summary):
  """Everything but wall-clock figures and file locations."""
  out = {k: v for k, v in summary.items() if k not in ("timing", "estimator", "files", "provenance")}
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


@pytest.mark.slow   # the modular tiny run end to end (~2 min); the units above stay default
def test_tiny_summary_pins_seeded_figures_and_holds_every_section(full_run):
  workdir, s, r = full_run
  for key, (value, band) in PINNED.items():
    node = s[key[0]]["modular"] if key[0] != "datasets" else s["datasets"]["modular"][key[1]]
    got = node[key[-1]]
    assert got == pytest.approx(value, abs=band), (key, got)
  d = s["datasets"]["modular"]
  for m in METHODS:
    for k in ("lds", "lds_se", "normalized_error", "lds_declared", "loo_pearson", "loo_pearson_se", "lds_finetune"):
      assert math.isfinite(d[m][k]), (m, k)
    assert d[m]["lds_ci95"][0] <= d[m]["lds"] <= d[m]["lds_ci95"][1]
  for m in METHODS + ("influence", "tracin", "trak", "estimator_direct"):
    # the second ground truth (LOO by fine-tuning from theta0) scores every method too
    assert math.isfinite(d[m]["loo_finetune_pearson"]) and "loo_pearson_of_ceiling" in d[m]
  comparisons = s["comparisons"]["modular"]
  lead = next(f.name for f in families.standard() if not f.baseline)   # the driver's lead family
  for pair in ([f"{a}_exact-{b}_exact" for a, b in families.comparison_pairs(families.standard())] +
               [f"{lead}_exact-influence", f"{lead}_estimated-{lead}_exact", f"{lead}_estimated_same-{lead}_finetuned"]):
    assert comparisons[pair]["loo_pearson_verdict"] in ("wins", "ties", "loses"), pair
  assert comparisons["kernel_exact-linear_exact"]["lds_verdict"] == "ties"
  truth = s["ground_truth"]["modular"]
  assert truth["training_seeds"] == 2 and truth["finetuned_subsets"] == {"calibration": 4, "fit": 5, "heldout": 3}
  assert s["reliability"]["modular"]["loo_repeats"] == 2 and s["seeds_for_reliability"]["modular"]["loo_pearson"] == 8
  for k in ESTIMATOR_KEYS:
    assert math.isfinite(s["estimator"]["modular"][k]), k
  assert s["config"]["data"]["p"] == 11 and s["evaluation"]["resplits"] == 8
  retrains = s["retrain_final_train_loss"]["modular"]
  # 40 steps cannot fit the tiny task to loss 0.1: every retrain (random + 2 seeds x (LOO + full))
  # takes the retry path once and none converges; the warning says the tiny config is a smoke test.
  assert retrains["retried"] == 14 + 2 * 17 and retrains["unconverged"] == 14 + 2 * 17
  assert "the tiny config is a smoke test" in r.stderr
  est = s["estimator"]["modular"]
  # the default estimator replays the finetune block's recipe; the tiny kernel fits the memory rule
  assert est["solver"] == "replay" and est["space"] == "example" and est["recipe"]["steps"] == 10
  assert math.isfinite(est["details"]["lds_vs_retrain"]) and est["num_scored"] == 12 - 4
  for what in ("loo_real_vs_predicted", "interactions", "predicted_vs_true", "training_curves", "top_tasks", "scores"):
    path = pathlib.Path(s["files"][f"modular/{what}"])
    assert path.parent == workdir / "modular" and path.stat().st_size > 1000
    assert str(path) in r.stdout            # the run says where every file is
  assert {row["phase"] for row in s["timing"]} >= {"theta0", "retrain", "truth_seed0", "truth_seed1", "features", "finetune",
                                                    "finetune_loo", "estimate", "baselines"}
  assert "kernel_lds_estimated" in r.stdout and "status" in r.stdout and "ceiling modular loo_pearson:" in r.stdout
  # every warning is one line (Python's default adds the source line under it, indented)
  assert not [line for line in r.stderr.splitlines() if line.startswith(" ")], r.stderr
  # where the retrains sit, beside the released addition outcomes (the authors' filter, fit subsets)
  outcomes = s["outcomes"]["modular"]
  assert outcomes["total"] == 24 and 0 < outcomes["kept"] <= 24 and outcomes["threshold"] == 1e-2
  assert outcomes["min"] <= outcomes["median"] and outcomes["min"] <= outcomes["mean"]
  assert round(outcomes["released_mean"], 3) == 1.975 and round(outcomes["released_variance_median"], 3) == 0.701
  # the tiny config runs with the base thresholds (cpu_grokked's)
  assert s["config"]["normalized_error_threshold"] == 1e-3 and s["config"]["data"]["target_variance_threshold"] == 1e-3


def test_a_design_whose_retrains_do_not_vary_stops_after_retrain(tmp_path):
  """A model that barely trains (lr 1e-7) gives retrains whose outcomes do not vary: with the cpu
  config's threshold nothing can be measured, so the run stops right after `retrain` with one
  line instead of computing the truth, fine-tunes and estimates (issue 16)."""
  r = subprocess.run(_cmd(tmp_path, "tiny", "--config.train.lr=1e-7"), cwd=ROOT, capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 1, r.stderr[-3000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("stopped: data.target_variance_threshold: after phase 'retrain' only 0 of 24 targets vary by "
                         "more than 0.001 across its 14 subsets"), last
  assert "Traceback" not in r.stderr
  assert (tmp_path / "retrain" / "record.json").exists() and not (tmp_path / "truth_seed0").exists()


@pytest.mark.slow   # minutes: a second tiny run; tests/test_run_storage.py covers the same at small size
def test_rerun_repairs_damage_reuses_the_rest_and_gives_the_same_summary(full_run, tmp_path):
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
  s = json.loads((w / "summary.json").read_text())
  status = {row["phase"]: row["status"] for row in s["timing"]}
  assert status["retrain"] == "repaired" and status["features"] == status["finetune"] == "computed"
  assert all(status[p] == "reused" for p in ("theta0", "truth_seed0", "truth_seed1", "finetune_loo"))
  seconds = {row["phase"]: row["seconds"] for row in s["timing"]}
  assert seconds["theta0"] == {row["phase"]: row["seconds"] for row in reference["timing"]}["theta0"]   # compute time kept
  assert "theta0: reused (computed in" in r.stdout
  assert _stable(s) == _stable(reference)


@pytest.mark.slow   # minutes: a second tiny run; tests/test_run_storage.py covers the same at small size
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


@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
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


@pytest.mark.slow   # the modular tiny run end to end (~2 min); the units above stay default
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
  assert s["ceiling"]["modular"]["loo_pearson_ci95"] and s["reliability"]["modular"]["loo_repeats"] == 3


STUDY_TINY = ("--config.study.enabled=True", "--config.study.budgets=(8,12)", "--config.study.other_budget=8",
              "--config.study.num_heldout=4", "--config.study.num_estimated=60", "--config.study.num_pairs=2",
              "--config.study.active_seeds=2", "--config.study.active_base=4", "--config.study.active_more=4")


@pytest.mark.slow   # minutes: six cells of retrains
def test_regime_study_end_to_end(tmp_path):
  """The study's cells share one ground truth and ceiling; study-wide readouts sit at the top of
  the summary; the cross-cell figure and readouts come from the evaluated cells in memory."""
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
  assert len({json.dumps(s["ceiling"][n]) for n in cells}) == 1
  across = s["study_across"]
  assert set(across["linear_bias_relative_rms"]) == {"0.5", "0.7", "0.9"}
  assert len(across["interactions_exact_mean_target"]) == 2 and set(across["interactions_kernel_mean_target"]) == cells
  active = s["study"]["active_sampling"]                             # study-wide: not under a cell
  assert len(active["suggested"]["lds_per_seed"]) == 2 and active["setting"]["candidates"] == 12 - 4   # pool 16 - 4 held out, minus the base 4
  assert set(s["study"]) >= {"interactions_exact", "active_sampling", "retrains", "ground_truth"}
  assert pathlib.Path(s["files"]["study"]).stat().st_size > 10000


@pytest.mark.slow   # the modular tiny run end to end (~2 min); the units above stay default
def test_two_processes_give_the_summary_of_one(full_run, tmp_path):
  """The modular tiny config as a jax.distributed group of 2 CPU processes on this machine
  (tests/test_distributed.py does the same on a small synthetic experiment, in seconds)."""
  import socket
  _, reference, _ = full_run
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  group = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
  procs = [subprocess.Popen(_cmd(tmp_path, "tiny", *group, f"--process_id={p}"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
           for p in range(2)]
  logs = [p.communicate(timeout=1800)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
  assert "(stored by process 0)" in logs[1] and "in this process" in logs[1]
  assert "dataset" in logs[0] and "dataset" not in logs[1]   # process 0 alone evaluates and prints the table
  assert _stable(json.loads((tmp_path / "summary.json").read_text())) == _stable(reference)
