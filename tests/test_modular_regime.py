"""benchmarks/modular_regime.py: the released statistics it prints and its recipe parsing (no training)."""
import functools
import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "modular_regime.py"


@functools.cache   # its absl flags may be defined once per process
def _module():
  spec = importlib.util.spec_from_file_location("modular_regime", SCRIPT)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_released_statistics_match_the_issue():
  out = subprocess.run([sys.executable, str(SCRIPT), "--released"], capture_output=True, text=True, check=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout
  add = next(line for line in out.splitlines() if "released add" in line).split()
  quad = next(line for line in out.splitlines() if "released quad" in line).split()
  # columns: seed acc0 ce0 mean median min varmed kept ...
  assert add[3:8] == ["1.975", "1.788", "0.301", "0.701", "500/500"]
  assert quad[3:8] == ["1.154", "0.246", "0.022", "3.263", "500/500"]


def test_outcome_stats_drop_effect_and_commuted_block():
  mod = _module()
  rng = np.random.default_rng(0)
  S = np.ones((12, 4), bool)
  for i in range(12):
    S[i, i % 4] = False
  # target t jumps by 2 when task t is dropped: its drop effect is 2, every other task's is about 0
  F = 0.1 * rng.standard_normal((12, 4)) + 2.0 * ~S
  r = mod.outcome_stats(F, S, 1e-2, commuted_task=np.arange(4))
  assert r["kept"] == 4 and r["top_is_commuted"] == 1.0
  assert r["drop_effect"] == pytest.approx(np.mean(np.abs(
      [F[~S[:, k]].mean(0) - F[S[:, k]].mean(0) for k in range(4)])))
  assert mod.outcome_stats(F, S, 1e-2, commuted_task=np.array([1, 2, 3, 0]))["top_is_commuted"] == 0.0


def test_recipe_parsing_and_bad_fields():
  mod = _module()
  assert mod.parse_recipe("train.lr=3e-3, data.op=quad,estimate.sizes=(20, 24)") == {
      "train.lr": 3e-3, "data.op": "quad", "estimate.sizes": (20, 24)}
  c = mod.make_config("tiny", {"train.lr": 1, "train.lr_schedule": "constant"})
  assert c.train.lr == 1.0 and isinstance(c.train.lr, float)
  with pytest.raises(ValueError, match="^recipe: train.nope"):
    mod.make_config("tiny", {"train.nope": 1})
  with pytest.raises(ValueError, match="^recipe: "):
    mod.parse_recipe("train.lr")
  with pytest.raises(ValueError, match="^data.train_fraction"):
    mod.make_config("tiny", {"data.train_fraction": 1.5})


def test_summary_outcome_statistics_keep_the_authors_targets_and_sit_beside_the_released():
  from ksurrogate_experiments.modular import regime
  rng = np.random.default_rng(0)
  F = np.stack([rng.normal(2.0, 1.0, 40), rng.normal(1.0, 0.05, 40), np.full(40, 3.0)], 1)   # [40 subsets, 3 targets]
  r = regime.outcome_statistics(F)
  # target 1 varies by 0.0025 < 1e-2 and target 2 not at all: only target 0 is kept
  assert (r["kept"], r["total"]) == (1, 3)
  assert r["mean"] == pytest.approx(F[:, 0].mean()) and r["min"] == pytest.approx(F[:, 0].min())
  assert r["variance_median"] == pytest.approx(F[:, 0].var())   # ddof 0, as the released 0.70 is computed
  s = regime.summary(F, "quad")
  assert s["released_mean"] == pytest.approx(1.1536, abs=1e-4) and s["released_variance_median"] == pytest.approx(3.263, abs=1e-3)
  assert regime.outcome_statistics(np.ones((4, 2)))["mean"] is None
  with pytest.raises(ValueError, match="^data.op"):
    regime.released_statistics("mul")
