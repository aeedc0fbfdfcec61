"""Selection summaries shared by the experiments that select tasks with surrogates (morl, icl):
paired regret differences between surrogate families over selection seeds, with one interval.

A selection seed re-runs what the chosen sets give (fresh fine-tunes, held-out queries); in icl
each seed also refits the surrogates on its own draw of `design.num_fit` of the
`design.num_subsets` measured subsets, so the seeds' fit sets overlap and a t interval for
independent draws would be too narrow. Every regret interval is therefore Nadeau & Bengio's
re-split-corrected one (`intervals.resplit_interval`, test fraction 1 - num_fit / num_subsets):
right where fit sets overlap, wider than needed (conservative) where the seeds are independent.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ksurrogate import intervals


def test_fraction(config) -> float:
  """The held-out fraction of the design's subsets, the test fraction of `seed_interval`.

  Args:
    config: the experiment's config (its design.num_fit and design.num_subsets).

  Returns:
    1 - design.num_fit / design.num_subsets.
  """
  return 1.0 - config.design.num_fit / config.design.num_subsets


def seed_interval(values, config) -> intervals.Interval:
  """The mean over selection seeds of a per-seed figure (a loss, a regret, a paired difference)
  and its re-split-corrected 95 % interval (see the module doc).

  Args:
    values: [seeds] one figure per selection seed.
    config: the experiment's config (its design.num_fit and design.num_subsets).

  Returns:
    The `intervals.Interval` (NaN interval for fewer than 2 seeds).
  """
  return intervals.resplit_interval(values, test_fraction=test_fraction(config))


def regret_comparisons(regret: Mapping[str, np.ndarray], pairs: Sequence[tuple[str, str]], config,
                       *, source: str = "exact") -> dict:
  """Paired regret differences of family pairs, each family's pick on `source` outcomes.

  For each (a, b) with both `<a>_<source>` and `<b>_<source>` in `regret`:
  `<a>_vs_<b>_regret_reduction` (1 - mean regret of a / that of b) and its value per seed,
  `<a>_minus_<b>_regret` with `seed_interval`'s entries, and its verdict (lower regret wins).

  Args:
    regret: {method: [seeds] regret per selection seed} (lower is better).
    pairs: (a, b) family names, e.g. `ksurrogate.families.counterpart_pairs(families)`.
    config: the experiment's config (for `seed_interval`).
    source: the outcome source whose picks are compared.

  Returns:
    The summary entries, flat.
  """
  out = {}
  for a, b in pairs:
    ra, rb = regret.get(f"{a}_{source}"), regret.get(f"{b}_{source}")
    if ra is None or rb is None:
      continue
    ra, rb = np.asarray(ra), np.asarray(rb)   # in their own precision, as the summaries always had them
    difference = seed_interval(ra - rb, config)
    key = f"{a}_minus_{b}_regret"
    out.update({f"{a}_vs_{b}_regret_reduction": float(1 - ra.mean() / max(rb.mean(), 1e-9)),
                f"{a}_vs_{b}_regret_reduction_per_seed": (1 - ra / np.maximum(rb, 1e-9)).tolist(),
                **difference.entries(key), f"{key}_verdict": difference.verdict(higher_is_better=False)})
  return out
