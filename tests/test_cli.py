"""The absl entry point, end to end on the reference experiment."""
import json
import math
import pathlib
import subprocess
import sys

import pytest

from ksurrogate import families
from ksurrogate_experiments.reference import config as reference_config
from ksurrogate_experiments.reference import pipeline as reference_pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _main(*args, cwd=ROOT, timeout=600):
  return subprocess.run([sys.executable, "-m", "ksurrogate_experiments.main", *args], cwd=cwd, capture_output=True, text=True,
                        timeout=timeout)


@pytest.mark.slow   # minutes: every family on the three released datasets; the README's main job is the same run
def test_reference_run_writes_summary_and_plots(tmp_path):
  # 576 s on 2 cores at load average ~9 (five families x three datasets x six splits, CV compiled per shape)
  r = _main("--experiment=reference", "--config=tiny", f"--workdir={tmp_path}", timeout=1800)
  assert r.returncode == 0, r.stderr[-2000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  for name in ("modular_addition", "modular_quad", "coin_flip"):
    for method in (f"{f.name}_exact" for f in families.standard()):
      for key in ("lds", "normalized_error", "lds_declared", "normalized_error_declared", "lds_se"):
        assert math.isfinite(summary["datasets"][name][method][key]), (name, method, key)
    for png in ("predicted_vs_true.png", "scores.png", "interactions.png"):
      assert (tmp_path / name / png).stat().st_size > 1000
  # the official recipe on the released split reproduces the reference README (sample-level fits)
  quad = summary["datasets"]["modular_quad"]
  assert quad["kernel_official_exact"]["lds_declared"] == pytest.approx(0.536, abs=5e-4)
  assert quad["linear_official_exact"]["lds_declared"] == pytest.approx(0.510, abs=5e-4)
  assert summary["evaluation"]["resplits"] == 5
  assert set(summary["comparisons"]["coin_flip"]) >= {f"{a}_exact-{b}_exact" for a, b in families.comparison_pairs(
      families.standard())}
  assert "kernel_official_exact" in r.stdout and " ± " in r.stdout and "lds verdict" in r.stdout


def test_unknown_experiment_config_and_field_are_one_line_errors(tmp_path):
  for args, msg in ((["--experiment=nope"], "error: --experiment: unknown experiment 'nope'"),
                    (["--experiment=reference", "--config=huge"], "error: config: unknown config 'huge'"),
                    (["--experiment=modular", "--config=tiny", "--config.train.nosuch=1"],
                     "error: --config.train.nosuch: no such field in modular's config 'tiny'"),
                    (["--experiment=modular", "--config=tiny", "--config.train.num_steps=-5"],
                     "error: train.num_steps: must be an integer >= 1, got -5"),
                    (["--experiment=modular", "--config=tiny", "--config.data.train_fraction=1.5"],
                     "error: data.train_fraction: must be a finite number in (0, 1), got 1.5"),
                    (["--experiment=reference", "--config.surrogates.cv=1"],
                     "error: surrogates.cv: must be an integer >= 2, got 1")):
    r = _main(*args, f"--workdir={tmp_path}")
    assert r.returncode == 2 and r.stderr.strip().startswith(msg), (args, r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
  r = _main("--experiment=modular", "--config=tiny", "--config.train.lr=abc", f"--workdir={tmp_path}")
  assert r.returncode == 2 and r.stderr.strip() == "error: --config.train.lr: expected float, got 'abc'"
  assert not any(tmp_path.iterdir())    # nothing computed, nothing written


def test_bad_workdirs_are_refused_before_any_compute(tmp_path):
  r = _main("--experiment=reference", "--workdir=")
  assert r.returncode == 2 and r.stderr.strip().startswith("error: workdir: empty")
  (tmp_path / "f").write_text("x")
  r = _main("--experiment=reference", f"--workdir={tmp_path / 'f'}")
  assert r.returncode == 2 and r.stderr.strip() == f"error: workdir: {tmp_path / 'f'} is a file, not a directory; use another --workdir"


def test_help_lists_experiments_configs_and_fields_without_importing_a_pipeline():
  r = _main("--help")
  assert r.returncode == 0
  for text in ("experiment reference:", "experiment modular:", "--config=tiny", "--config=cpu (default)",
               "--config.train.num_steps=170  [int]", "--config.train.batch_size=None", "~15 min on 2 cores",
               "command: ksurrogate-run --experiment=morl --config=cpu", "--config.eval.resplits=20  [int]"):
    assert text in r.stdout, text
  # the registry is lazy: --help loads every experiment's config module and nothing heavier
  probe = subprocess.run([sys.executable, "-c", "import sys; from ksurrogate_experiments import contract, main; contract.describe(); "
                          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'gymnax', 'flax', 'orbax', "
                          "'tokenizers', 'gguf', 'matplotlib', 'ksurrogate') or m.endswith(('pipeline', 'envs'))))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stdout + probe.stderr


def test_missing_reference_files_named(tmp_path):
  config = reference_config.get_config("tiny")
  config.data.dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="^data.dir: reference file .*modular_addition.npz is missing"):
    list(reference_pipeline.problems(config))


def test_config_overrides_reach_the_run(tmp_path):
  r = _main("--experiment=reference", "--config=tiny", "--config.surrogates.cv=3",
            "--config.data.datasets=('modular_quad',)", "--config.surrogates.families=kernel,linear",
            f"--workdir={tmp_path}")
  assert r.returncode == 0, r.stderr[-2000:]
  s = json.loads((tmp_path / "summary.json").read_text())
  assert s["config"]["surrogates"]["cv"] == 3 and list(s["datasets"]) == ["modular_quad"]
  assert list(s["datasets"]["modular_quad"]) == ["kernel_exact", "linear_exact"]
