"""The examples the docs quote run, and say what the docs say they say."""
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))

import estimated_outcomes  # noqa: E402
import surrogates_and_designs  # noqa: E402


@pytest.mark.slow   # the example script end to end
def test_estimated_outcomes_example_beats_the_no_change_guess():
  out = estimated_outcomes.main()
  assert out["relative_error"] < out["no_change_error"]
  assert out["speedup"] > 10
  assert np.argmax(out["loo"]) in (0, 1)    # the target was drawn like tasks 0 and 1


def test_bernoulli_design_reveals_the_planted_interaction():
  out = surrogates_and_designs.main(seeds=range(2))
  b = out["Bernoulli(0.5)"]
  assert b["planted"][0] > 3 * b["largest_other"][0]
  assert out["fixed size 22 of 25"]["loo_pearson"][0] > 0.98
