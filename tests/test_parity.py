"""Parity with the numbers the official recipe gets on the released data (reference README)."""
import numpy as np
import pytest

from ksurrogate_experiments.reference import config as reference_config
from ksurrogate_experiments.reference import pipeline as reference_pipeline
from ksurrogate import metrics
from ksurrogate import parity

# dataset -> (KRR LDS, KRR normalized error, lstsq LDS, lstsq normalized error), from the README.
EXPECTED = {
    "modular_addition": (0.363, 2.261, 0.294, 3.707),
    "modular_quad": (0.536, 0.372, 0.510, 0.472),
    "coin_flip": (0.523, 0.680, 0.431, 1.237),
}
EXPECTED_COIN_STD = (0.055, 0.044, 0.067, 0.305)


@pytest.fixture(scope="module")
def problems():
  return {p.name: p for p in reference_pipeline.problems(reference_config.get_config())}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_official_recipe_matches_reference_table(problems, name):
  p = problems[name]
  rows = []
  for fit, test in p.splits:
    krr = parity.official_krr(p.W[fit], p.F[fit], ridge=reference_config.OFFICIAL_RIDGE[name])
    lsq = parity.official_lstsq(p.W[fit], p.F[fit])
    row = []
    for s in (krr, lsq):
      pred = np.asarray(s.predict(p.W[test]))
      row += [metrics.lds(pred, p.F[test]), metrics.normalized_error(pred, p.F[test], threshold=0.1)]
    rows.append(row)
  rows = np.array(rows)
  np.testing.assert_allclose(rows.mean(0), EXPECTED[name], atol=5e-4)
  if name == "coin_flip":
    assert len(p.splits) == 5
    np.testing.assert_allclose(rows.std(0), EXPECTED_COIN_STD, atol=5e-4)


def test_sample_level_columns_collapse_to_25_tasks(problems):
  for name in ("modular_addition", "modular_quad"):
    assert problems[name].W.shape[1] == 500
    assert problems[name].S.shape[1] == 25
