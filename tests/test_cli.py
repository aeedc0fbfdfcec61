"""The absl entry point, end to end on the reference experiment."""
import json
import math
import pathlib
import subprocess
import sys

import pytest

import experiments.reference as reference

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _main(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "experiments.main", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_reference_run_writes_summary_and_plots(tmp_path):
  r = _main("--experiment=reference", "--config=tiny", f"--workdir={tmp_path}")
  assert r.returncode == 0, r.stderr[-2000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  for name in ("modular_addition", "modular_quad", "coin_flip"):
    for method in ("official_krr", "official_lstsq", "kernel", "linear"):
      for key in ("lds", "normalized_error"):
        assert math.isfinite(summary["datasets"][name][method][key])
    for png in ("predicted_vs_true.png", "top_tasks.png", "interactions.png"):
      assert (tmp_path / name / png).stat().st_size > 1000
  assert summary["datasets"]["modular_quad"]["official_krr"]["lds"] == pytest.approx(0.536, abs=5e-4)
  assert "official_krr" in r.stdout and "normalized_error" in r.stdout


def test_unknown_experiment_config_and_field_are_one_line_errors(tmp_path):
  for args, msg in ((["--experiment=nope"], "error: --experiment: unknown experiment 'nope'"),
                    (["--experiment=reference", "--config=huge"], "error: config: unknown config 'huge'"),
                    (["--experiment=modular", "--config=tiny", "--config.train.nosuch=1"],
                     "error: --config.train.nosuch: no such field in modular's config 'tiny'"),
                    (["--experiment=modular", "--config=tiny", "--config.train.num_steps=-5"],
                     "error: train.num_steps: must be an integer >= 1, got -5"),
                    (["--experiment=modular", "--config=tiny", "--config.data.train_fraction=1.5"],
                     "error: data.train_fraction: must be a finite number in (0, 1), got 1.5"),
                    (["--experiment=reference", "--config.cv=1"], "error: cv: must be an integer >= 2, got 1")):
    r = _main(*args, f"--workdir={tmp_path}")
    assert r.returncode == 2 and r.stderr.strip() == msg or r.stderr.strip().startswith(msg), (args, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
  r = _main("--experiment=modular", "--config=tiny", "--config.train.lr=abc", f"--workdir={tmp_path}")
  assert r.returncode == 2 and r.stderr.strip() == "error: --config.train.lr: expected float, got 'abc'"
  assert not any(tmp_path.iterdir())    # nothing computed, nothing written


def test_bad_workdirs_are_refused_before_any_compute(tmp_path):
  r = _main("--experiment=reference", "--workdir=")
  assert r.returncode == 2 and r.stderr.strip().startswith("error: workdir: empty")
  (tmp_path / "f").write_text("x")
  r = _main("--experiment=reference", f"--workdir={tmp_path / 'f'}")
  assert r.returncode == 2 and r.stderr.strip() == f"error: workdir: {tmp_path / 'f'} is a file, not a directory"


def test_help_lists_experiments_configs_and_fields():
  r = _main("--help")
  assert r.returncode == 0
  for text in ("experiment reference:", "experiment modular:", "--config=tiny", "--config=cpu (default)",
               "--config.train.num_steps=170  [int]", "--config.train.batch_size=None", "~15 min on 2 cores"):
    assert text in r.stdout, text


def test_missing_reference_files_named(tmp_path):
  config = reference.get_config("tiny")
  config.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="^data_dir: reference file .*modular_addition.npz is missing"):
    list(reference.problems(config))


def test_config_overrides_reach_the_run(tmp_path):
  r = _main("--experiment=reference", "--config=tiny", "--config.cv=3", "--config.datasets=('modular_quad',)",
            f"--workdir={tmp_path}")
  assert r.returncode == 0, r.stderr[-2000:]
  s = json.loads((tmp_path / "summary.json").read_text())
  assert s["config"]["cv"] == 3 and list(s["datasets"]) == ["modular_quad"]
