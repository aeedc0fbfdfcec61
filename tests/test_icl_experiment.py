"""The icl experiment end to end through the CLI on its tiny config, and its design helpers."""
import json
import math
import pathlib
import subprocess

import numpy as np
import pytest
from conftest import run_experiment

from ksurrogate import families
from ksurrogate_experiments.icl import config as icl_config
from ksurrogate_experiments.icl import pipeline as icl_pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]
TASKS = ("sentiment", "coin_flip")
FAMILIES = tuple(f.name for f in families.standard())
METHODS = tuple(f"{f}_{s}" for s in ("exact", "estimated") for f in FAMILIES)
# Seeded figures of the tiny config, pinned so that a change altering results is seen (re-pinned on
# 2026-12-07 when the exact prompts became distinct demonstration sets). Two runs on
# one machine gave bitwise-identical summaries; the bands only absorb float rounding across CPUs.
PINNED = {
    ("prompts", "sentiment", "mean_loss"): (0.69333, 1e-4),
    ("prompts", "coin_flip", "mean_loss"): (0.71057, 1e-4),
    ("estimator", "sentiment", "median_relative_error"): (0.01590, 5e-4),
    ("datasets", "sentiment", "kernel_exact", "lds"): (0.4489, 5e-3),
    ("datasets", "sentiment", "linear_exact", "swap_pearson"): (0.7393, 5e-3),
    ("datasets", "coin_flip", "kernel_exact", "swap_pearson"): (0.6612, 5e-3),
    ("datasets", "coin_flip", "estimator_first_order", "swap_pearson"): (-0.1045, 5e-3),
    ("ceiling", "coin_flip", "swap_pearson"): (0.7327, 5e-3),
    ("selection", "sentiment", "kernel_exact", "loss"): (0.69447, 1e-4),
    ("selection", "coin_flip", "similarity", "loss"): (0.67065, 1e-4),
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  return run_experiment(tmp_path_factory, "icl")


def _at(s, key):
  node = s
  for part in key:
    node = node[part]
  return node


@pytest.mark.slow   # minutes: the tiny run on the real SmolLM2; the data, model and oracle tests stay default
def test_tiny_summary_pins_seeded_figures_and_holds_every_section(tiny_run):
  _, s, _ = tiny_run
  for key, (value, band) in PINNED.items():
    assert _at(s, key) == pytest.approx(value, abs=band), (key, _at(s, key))
  # the paper's released Qwen2-7B coin-flip outcomes are scored with the same surrogates, on the
  # paper's declared splits (the reference experiment's figure) and on re-splits
  released = s["datasets"]["coin_flip_qwen2_7b_released"]
  assert set(s["datasets"]) == set(TASKS) | {"coin_flip_qwen2_7b_released"}
  assert released["kernel_exact"]["lds_declared"] == pytest.approx(0.527, abs=0.002)
  assert released["kernel_exact"]["lds"] == pytest.approx(0.5135, abs=5e-3)
  # With the cpu config's threshold (1e-3) no query's loss varies enough under the random-init
  # tiny model for a normalized error: it is absent with its reason, the run still ends in a summary.
  assert s["config"]["normalized_error_threshold"] == 1e-3
  skipped = {(e["dataset"], e["metric"]): e for e in s["skipped"]}
  for task in TASKS:
    d = s["datasets"][task]
    for m in METHODS:
      assert math.isfinite(d[m]["lds"]) and d[m]["normalized_error"] is None, (task, m)
      assert math.isfinite(d[m]["swap_pearson"]) and math.isfinite(d[m]["swap_pearson_se"]), (task, m)
    entry = skipped[(task, "normalized_error")]
    assert entry["methods"] == list(METHODS) and entry["reason"].startswith("threshold: no target has variance >= 0.001")
    est = s["estimator"][task]
    for k in ("median_relative_error", "no_change_median_relative_error", "lds_vs_real", "no_change_lds_vs_real",
              "speedup_per_subset", "seconds_real_per_subset", "seconds_per_subset", "speedup_with_setup"):
      assert math.isfinite(est[k]), (task, k)
    assert est["solver"] == "first_order" and est["details"]["anchors"] == 2
    assert "kernel_exact-estimator_first_order" in s["comparisons"][task]
    sel = s["selection"][task]
    assert set(sel) == set(METHODS) | {"best_sampled", "similarity", "random"}
    gain = s["selection_gain"][task]
    assert gain["num_selection_seeds"] == 2                          # one per split seed
    for m, row in sel.items():
      if m in ("random", "similarity"):
        continue
      assert len(row["demos_per_seed"]) == 2 and all(len(set(d)) == 4 for d in row["demos_per_seed"])
      assert row["loss"] == pytest.approx(np.mean(row["loss_per_seed"]))
      # regret is measured from the lowest held-out loss of any set run, so never below it
      assert min(row["loss_per_seed"]) >= gain["lowest_heldout_loss"] and row["regret"] >= 0
    assert len(set(sel["similarity"]["demos"])) == 4 and sel["random"]["num_sets"] == 4
    assert sel["random"]["loss"] >= gain["lowest_heldout_loss"]
    diff = gain["kernel_minus_linear_regret"]
    assert diff == pytest.approx(sel["kernel_exact"]["regret"] - sel["linear_exact"]["regret"])
    lo, hi = gain["kernel_minus_linear_regret_ci95"]
    assert gain["kernel_minus_linear_regret_verdict"] == ("ties" if lo <= 0 <= hi else "wins" if hi < 0 else "loses")
    assert s["prompts"][task]["swap_pairs_per_demo"] == 2
    for what in ("swap_real_vs_predicted", "top_demonstrations", "selection", "predicted_vs_true", "top_tasks",
                 "interactions", "scores"):
      assert pathlib.Path(s["files"][f"{task}/{what}"]).stat().st_size > 1000, (task, what)
  # 2 swap pairs per demonstration: the sentiment truth is too noisy (reliability 0.13 with distinct
  # demonstration sets) and the surrogates score above its ceiling's interval, which says so; the
  # coin flip's is measurable (0.73) and nothing scores above it
  assert s["reliability"]["sentiment"]["swap_pearson"] < 0.3
  assert "kernel_exact" in s["ceiling_unreliable"]["sentiment"]["swap_pearson"]
  assert s["reliability"]["coin_flip"]["swap_pearson"] > 0.3 and s["ceiling"]["coin_flip"]["swap_pearson"] > 0.5
  assert "coin_flip" not in s["ceiling_unreliable"]


@pytest.mark.slow   # minutes: the rerun evaluates every family again
def test_rerun_reuses_every_phase(tiny_run):
  workdir, s, cmd = tiny_run
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  again = json.loads((workdir / "summary.json").read_text())
  status = {row["phase"]: row["status"] for row in again["timing"]}
  for task in TASKS:
    for phase in ("design", "exact", "estimate", "swap", "selection"):
      assert status[f"{phase}_{task}"] == "reused", (phase, task, status)
    assert again["datasets"][task]["kernel_exact"]["lds"] == s["datasets"][task]["kernel_exact"]["lds"]
    assert again["selection"][task] == s["selection"][task]


def test_swaps_replace_the_demo_in_place():
  rng = np.random.default_rng(0)
  prompts = np.stack([rng.choice(10, 4, replace=False) for _ in range(12)]).astype(np.int32)
  demo, base, new = icl_pipeline.swaps(np.random.default_rng(1), prompts, 10, 3)
  assert len(demo) == 30 and np.array_equal(np.bincount(demo, minlength=10), np.full(10, 3))
  for k, b, n in zip(demo, base, new):
    assert k in b and k not in n                 # k swapped out ...
    assert (b != n).sum() == 1                   # ... in its own slot, the rest kept in order
    assert n[b == k][0] not in b                 # for a demo not already in the prompt


def test_all_sets_and_config_errors():
  sets = icl_pipeline.all_sets(7, 3)
  assert sets.shape == (math.comb(7, 3), 3) and len({tuple(r) for r in sets}) == len(sets)
  c = icl_config.get_config("tiny")
  icl_config.EXPERIMENT.validate(c)
  c.tasks = ("sentiment", "nope")
  with pytest.raises(ValueError, match="^tasks: .* item 'nope' is not one of 'sentiment', 'coin_flip'"):
    icl_config.EXPERIMENT.validate(c)
  c = icl_config.get_config("tiny")
  c.data.shots = 12
  with pytest.raises(ValueError, match="^data.shots:"):
    icl_config.EXPERIMENT.validate(c)
  with pytest.raises(ValueError, match="^config: unknown config 'big'"):
    icl_config.get_config("big")
  with pytest.raises(ValueError, match="^tasks: unknown task 'nope'"):
    icl_pipeline.raw_data(icl_config.get_config("tiny"), "nope")
