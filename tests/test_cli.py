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


def test_unknown_experiment_and_config_are_one_line_errors(tmp_path):
  r = _main("--experiment=nope", f"--workdir={tmp_path}")
  assert r.returncode != 0 and "--experiment: unknown experiment 'nope'" in r.stderr
  r = _main("--experiment=reference", "--config=huge", f"--workdir={tmp_path}")
  assert r.returncode != 0 and "config: unknown config 'huge'" in r.stderr
  assert not (tmp_path / "summary.json").exists()


def test_missing_reference_files_named(tmp_path):
  config = reference.get_config("tiny")
  config.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="^data_dir: reference file .*modular_addition.npz is missing"):
    list(reference.problems(config))


def test_config_overrides():
  from absl import app
  from experiments.main import apply_overrides
  import experiments.modular as modular
  c = apply_overrides(modular.get_config("tiny"), ["num_steps=7", "op=quad", "estimated_sizes=(12, 15)", "lr=0.01"])
  assert (c.num_steps, c.op, tuple(c.estimated_sizes), c.lr) == (7, "quad", (12, 15), 0.01)
  for bad, msg in (("nosuch=1", "expected FIELD=VALUE"), ("num_steps", "expected FIELD=VALUE"),
                   ("num_steps='many'", "num_steps")):
    with pytest.raises(app.UsageError, match=msg):
      apply_overrides(modular.get_config("tiny"), [bad])
