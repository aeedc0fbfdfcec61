"""The regmix experiment: its data, its scores, RegMix's LightGBM, and the tiny config end to end
through the CLI (one run shared by the tests); the full experiment is marked slow."""
import json
import pathlib

import numpy as np
import pytest
import scipy.stats
from conftest import run_experiment

from ksurrogate_experiments.regmix import boosting
from ksurrogate_experiments.regmix import config as regmix_config
from ksurrogate_experiments.regmix import released
from ksurrogate_experiments.regmix import scores

DATA = regmix_config.DATA_DIR


def test_the_shipped_runs_load_with_their_names_and_sit_on_the_simplex(tmp_path):
  d = released.load(DATA)
  assert d["train"][0].shape == (512, 17) and d["train"][1].shape == (512, 13)
  assert d["test"][0].shape == (256, 17) and d["test"][1].shape == (256, 13)
  assert tuple(d["targets"]) == regmix_config.TARGETS and d["domains"][11] == "pile_cc"
  for X, _ in (d["train"], d["test"]):
    assert np.all(X >= 0) and np.abs(X.sum(1) - 1).max() < 0.005
  assert (DATA / "LICENSE").read_text().startswith("MIT License")
  with pytest.raises(FileNotFoundError, match="^data.dir: .*train_mixture_1m.csv is missing"):
    released.load(tmp_path)
  for name in ("train_mixture_1m.csv", "train_pile_loss_1m.csv", "test_mixture_1m.csv", "test_pile_loss_1m.csv"):
    lines = (DATA / name).read_text().splitlines()
    if name == "train_pile_loss_1m.csv":
      lines = [lines[0]] + [lines[2], lines[1]] + lines[3:]          # two rows swapped: indices differ
    (tmp_path / name).write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match="^data.dir: the rows of train_mixture_1m.csv and train_pile_loss_1m.csv do not"):
    released.load(tmp_path)


def test_resampled_spearman_equals_scipy_on_the_expanded_rows():
  rng = np.random.default_rng(0)
  n, T = 40, 3
  Y = rng.normal(size=(n, T))
  P = np.round(rng.normal(size=(3, n, T)), 1)       # ties in the predictions
  P[2, :, 1] = 0.5                                  # a constant prediction
  counts, draws = scores.resamples(1, n, 3, 6)
  r = scores.resampled_scores(P, Y, counts, draws)
  for b in range(6):
    rows = np.repeat(np.arange(n), counts[b].astype(int))
    rho = np.array([[scipy.stats.spearmanr(P[d, rows, t], Y[rows, t])[0] if np.ptp(P[d, rows, t]) else 0.0
                     for t in range(T)] for d in range(3)])
    np.testing.assert_allclose(r["spearman_per_target"][b], draws[b] @ rho, atol=1e-12)
    err = np.array([np.mean([np.mean((P[d, rows, t] - Y[rows, t]) ** 2) / np.var(Y[rows, t]) for t in range(T)])
                    for d in range(3)])
    np.testing.assert_allclose(r["normalized_error"][b], draws[b] @ err, rtol=1e-12)
  point = scores.point_scores(P, Y)
  assert point["spearman"] == pytest.approx(np.mean([[scipy.stats.spearmanr(P[d, :, t], Y[:, t])[0]
                                                       if np.ptp(P[d, :, t]) else 0.0 for t in range(T)]
                                                      for d in range(3)]))
  assert scores.reach([32, 64, 128], [0.8, 0.95, 0.96], 0.96, 0.0) == 128
  assert scores.reach([32, 64, 128], [0.8, 0.955, 0.96], 0.96, 0.01) == 64


def test_lightgbm_early_stops_on_training_rows_only():
  d = released.load(DATA)
  X, Y = d["train"][0][:200], d["train"][1][:200]
  g = boosting.fit_lightgbm(X, Y[:, :2], num_iterations=200, learning_rate=0.1)
  assert len(g.boosters) == 2 and all(1 <= it <= 200 for it in g.best_iterations)
  assert np.asarray(g.predict(d["test"][0])).shape == (256, 2) and g.domain == "simplex"
  again = boosting.fit_lightgbm(X, Y[:, :2], num_iterations=200, learning_rate=0.1)
  np.testing.assert_array_equal(g.predict(X[:5]), again.predict(X[:5]))       # seeded split, seeded boosters
  with pytest.raises(ValueError, match="^X: 2 rows leave 1 to train"):
    boosting.fit_lightgbm(X[:2], Y[:2], validation_fraction=0.5)
  with pytest.raises(ValueError, match="^validation_fraction"):
    boosting.fit_lightgbm(X, Y, validation_fraction=1.0)


def test_config_checks_are_one_line():
  def bad(section, field, value):
    c = regmix_config.get_config()
    c[section][field] = value
    return c
  for c, message in (
      (bad("design", "sizes", (32, 1024)), r"design.sizes: \(32, 1024\) item 1024 is not an integer in \[4, 512\]"),
      (bad("design", "num_fit", 64), "design.sizes: 512 exceeds design.num_fit=64"),
      (bad("selection", "families", ("kernel", "krr")), r"selection.families: unknown \['krr'\]"),
      (bad("selection", "target", "pile"), "selection.target: must be one of 'mean'"),
      (bad("active", "initial", 512), "active.initial: 512 leaves no run of the 512 to choose"),
  ):
    with pytest.raises(ValueError, match="^" + message):
      regmix_config.EXPERIMENT.validate(c)
  regmix_config.EXPERIMENT.validate(regmix_config.get_config("tiny"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  return run_experiment(tmp_path_factory, "regmix")


def test_tiny_run_holds_every_section_and_figure(tiny_run):
  workdir, s, _ = tiny_run
  curve = s["learning_curve"]["regmix"]
  assert set(curve["scores"]) == {"kernel", "linear", "lightgbm"} and curve["sizes"] == [32, 48]
  k48 = curve["scores"]["kernel"]["48"]
  lo, hi = k48["spearman_ci95"]
  assert lo <= k48["spearman"] <= hi and 0.8 < k48["spearman"] < 1.0
  assert set(k48["spearman_per_target"]) == set(regmix_config.TARGETS)
  pair = curve["comparisons"]["kernel-lightgbm"]["32"]
  assert pair["spearman_verdict"] in ("wins", "ties", "loses")
  assert (pair["spearman_ci95"][0] > 0) == (pair["spearman_verdict"] == "wins")
  assert curve["scores"]["lightgbm"]["32"]["spearman"] == 0.0      # 26 rows: no leaf of 20, a constant
  sel = s["mixture_selection"]["regmix"]
  assert set(sel["selected"]) == {"kernel/regmix", "kernel/gradient", "lightgbm/regmix"}
  for pick in sel["selected"].values():
    assert sum(pick["mixture"]) == pytest.approx(1.0, abs=1e-3)
  assert sel["selected"]["kernel/regmix"]["variance"] >= 0 and sel["selected"]["lightgbm/regmix"]["variance"] is None
  assert sel["ranked_first"]["kernel"]["test"]["rank"] >= 1
  act = s["active_selection"]["regmix"]
  assert act["sizes"] == [32, 48] and len(act["curves"]["active"]) == 2
  assert act["curves"]["active"][0][-1] == act["curves"]["random"][0][-1] == act["full_pool_spearman"]
  assert s["datasets"]["regmix"]["kernel_exact"]["lds_declared"] > 0.8
  for what in ("learning_curve", "active_selection", "selected_mixtures", "predicted_vs_true", "top_tasks",
               "interactions"):
    assert pathlib.Path(s["files"][f"regmix/{what}"]).is_file(), what


@pytest.mark.slow   # a second tiny run; the first stays default
def test_tiny_run_is_reused_and_the_same(tiny_run):
  import subprocess
  import sys
  workdir, s, cmd = tiny_run
  r = subprocess.run(cmd, cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-2000:]
  again = json.loads((workdir / "summary.json").read_text())
  assert {t["phase"]: t["status"] for t in again["timing"]} == {
      "learning_curve": "reused", "mixture_selection": "reused", "active_selection": "reused"}
  assert again["learning_curve"] == s["learning_curve"] and again["active_selection"] == s["active_selection"]
  del sys


@pytest.mark.slow
def test_full_experiment(tmp_path_factory):
  """The documented run (docs/experiments.md): the targets it reports (BUILD_NOTES.md has the figures and their runtime)."""
  _, s, _ = run_experiment(tmp_path_factory, "regmix", config="default", timeout=3600)   # ~14-16 min, more loaded
  curve = s["learning_curve"]["regmix"]
  assert curve["scores"]["kernel"]["512"]["spearman"] >= 0.98
  assert curve["comparisons"]["kernel-linear"]["512"]["spearman_verdict"] == "wins"
  assert len(s["active_selection"]["regmix"]["curves"]["active"]) == 10
