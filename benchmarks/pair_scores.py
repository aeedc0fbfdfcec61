"""The LOO and pair scores on a planted toy where the answer is known: which of them see that an
additive fit gets substitutes and complements wrong.

  python benchmarks/pair_scores.py
  python benchmarks/pair_scores.py --noise=0.05 --resplits=10

K = 6 tasks, two targets of different scale: tasks 0/1 substitute (either helps as much as both),
2/3 add up, 4/5 complement (only the two together help). Outcomes of all 64 subsets with noise,
fit on 48, truths (leave-one-out, the pairs' drop-two effects and interactions) on 3 noisy seeds.
tests/test_loo_scores.py scores this file's `problem`.
"""
from __future__ import annotations

import numpy as np
from absl import app
from absl import flags

import ksurrogate as ks
from ksurrogate import families
from ksurrogate import subsets
from ksurrogate.harness import driver

_NOISE = flags.DEFINE_float("noise", 0.01, "s.d. of the outcomes' and the truths' noise")
_RESPLITS = flags.DEFINE_integer("resplits", 3, "random re-splits for the held-out scores")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 300, "bootstrap resamples for the intervals")

K = 6
PAIRS = [(0, 1), (2, 3), (4, 5)]
SHOWN = ("loo_pearson", "loo_pearson_pooled", "loo_magnitude_error", "drop_two_magnitude_error",
         "pair_interaction_magnitude_error", "pair_interaction_pearson_pooled")


def planted(S):
  """Target losses [m, 2] of subsets S [m, 6]."""
  S = np.asarray(S, float)
  either = np.maximum(S[:, 0], S[:, 1])
  loss = 3.0 - either - 0.4 * S[:, 2] - 0.4 * S[:, 3] - 0.8 * S[:, 4] * S[:, 5]
  return np.stack([loss, 0.5 * loss + 0.1 * S[:, 2]], 1)


def problem(noise: float = 0.01, seed: int = 5) -> driver.Problem:
  """The toy as a driver Problem with its three truths."""
  rng = np.random.default_rng(seed)
  S = np.array([[(i >> k) & 1 for k in range(K)] for i in range(1 << K)], bool)
  F = planted(S) + noise * rng.normal(size=(len(S), 2))
  full = planted(subsets.full(K))
  drop = planted(subsets.without_pairs(K, PAIRS)) - full
  loo = planted(subsets.leave_one_out(K)) - full
  inter = ks.pair_interactions(drop, loo, PAIRS)
  seeds = lambda x: x[None] + noise * rng.normal(size=(3, *x.shape))   # noqa: E731
  order = rng.permutation(len(S))
  return driver.Problem(name="toy", S=S[order], F=F[order], splits=[(np.arange(48), np.arange(48, 64))],
                        truths={"loo": driver.Truth(seeds(loo)),
                                "drop_two": driver.Truth(seeds(drop), pairs=PAIRS),
                                "pair_interaction": driver.Truth(seeds(inter), pairs=PAIRS, of="interaction")})


def main(_):
  fams = [f for f in families.standard(cv=3) if f.name in ("kernel", "linear")]
  res = driver.evaluate(problem(_NOISE.value), fams, threshold=0.0, resplit_count=_RESPLITS.value,
                        num_bootstrap=_BOOTSTRAP.value,
                        skipped=[])   # the additive fit's interaction correlations are undefined, by design
  fmt = lambda v: "–" if v is None else f"{v:.3f}"   # noqa: E731
  print("| method | " + " | ".join(SHOWN) + " |")
  print("|---" * (len(SHOWN) + 1) + "|")
  for m in ("kernel_exact", "linear_exact"):
    print(f"| {m} | " + " | ".join(fmt(res.scores[m].get(k)) for k in SHOWN) + " |")
  comp = res.comparisons["kernel_exact-linear_exact"]
  for k in ("loo_pearson", "loo_magnitude_error", "drop_two_magnitude_error", "pair_interaction_magnitude_error"):
    lo, hi = comp[f"{k}_ci95"]
    print(f"kernel - linear {k}: {comp[k]:.3f} [{lo:.3f}, {hi:.3f}] {comp[k + '_verdict']}")


if __name__ == "__main__":
  app.run(main)
