"""Task selection: per target, the training-task subset each method picks, fine-tuned for real on
fresh seeds, and the regret of each pick (modelled on the morl experiment's selection).

Methods per target t: every surrogate family fitted on the real fit fine-tunes and on the
estimated subsets (`<family>_exact`, `<family>_estimated`), each the subset of all 2^K - 1
non-empty ones it predicts lowest on t (chosen on the fit rows only); all tasks; the best
singleton (lowest on t among the probe fine-tunes, seed-averaged); similarity (the tasks whose
mean loss gradient has a positive cosine with t's, the top one if none has); `num_random` random
non-empty subsets (the same for every target, their outcomes averaged as "random").
Regret on a seed: the method's target loss minus the best of the compared methods' on that seed.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ksurrogate import intervals
from ksurrogate_experiments.tasks import data as data_lib

BASELINES = ("all_tasks", "best_singleton", "similarity")
SOURCES = ("exact", "estimated")


@dataclasses.dataclass(frozen=True)
class Picks:
  choices: dict        # {target index: {method: bool mask [K]}}
  surrogates: dict     # {method: fitted surrogate} the surrogates' picks came from


def candidates(K: int) -> np.ndarray:
  """[2^K - 1, K] every non-empty subset."""
  return ((np.arange(1, 2 ** K)[:, None] >> np.arange(K)) & 1) == 1


def picks(c, K: int, T: int, fitted: dict, singles_KxT, similarity_KxT) -> Picks:
  """Every method's subset per target (module doc); `fitted` {<family>_<source>: surrogate} (fit
  rows only), of which the families `selection.families` pick."""
  surrogates = {f"{f}_{src}": fitted[f"{f}_{src}"] for f in c.selection.families for src in SOURCES
                if f"{f}_{src}" in fitted}
  cand = candidates(K)
  predicted = {name: np.asarray(g.predict(cand)) for name, g in surrogates.items()}   # [2^K - 1, T]
  rng = np.random.default_rng(c.seed + 23)
  randoms = [cand[i] for i in rng.choice(len(cand), c.selection.num_random, replace=False)]
  choices = {}
  for t in range(T):
    choice = {name: cand[int(np.argmin(P[:, t]))] for name, P in predicted.items()}
    choice["all_tasks"] = np.ones(K, bool)
    choice["best_singleton"] = np.eye(K, dtype=bool)[int(np.argmin(singles_KxT[:, t]))]
    positive = similarity_KxT[:, t] > 0
    choice["similarity"] = positive if positive.any() else np.eye(K, dtype=bool)[int(np.argmax(similarity_KxT[:, t]))]
    for r, m in enumerate(randoms):
      choice[f"random_{r}"] = m
    choices[t] = choice
  return Picks(choices=choices, surrogates=surrogates)


def masks(picks_: Picks) -> np.ndarray:
  """The distinct subsets any method picked: what the selection seeds fine-tune."""
  return np.unique(np.stack([m for choice in picks_.choices.values() for m in choice.values()]), axis=0)


def summary(picks_: Picks, masks_, selected) -> dict:
  """Per target and method: the target loss after the real fine-tunes (mean and s.d. over the
  selection seeds), the tasks picked, the regret; per method the mean regret over targets; for
  each surrogate pick, on how many targets it beats all tasks and the best singleton (its
  seed-mean loss lower), and its paired regret difference to the linear pick over seeds."""
  index = {m.tobytes(): i for i, m in enumerate(masks_)}
  F = np.stack([sel["F"] for sel in selected])            # [seeds, masks, T]
  table, regrets = {}, {}
  for t, choice in picks_.choices.items():
    rows = {name: F[:, index[m.tobytes()], t] for name, m in choice.items()}
    best = np.min(np.stack(list(rows.values())), axis=0)   # [seeds]
    randoms = np.stack([v for k, v in rows.items() if k.startswith("random_")])
    rows = {k: v for k, v in rows.items() if not k.startswith("random_")}
    rows["random"] = randoms.mean(0)
    table[data_lib.TARGETS[t]] = {
        k: {"loss": float(v.mean()), "loss_sd": float(v.std(ddof=1)) if len(v) > 1 else None,
            "regret": float((v - best).mean()),
            "tasks": [data_lib.TRAIN_TASKS[j] for j in np.flatnonzero(choice[k])] if k in choice else None}
        for k, v in rows.items()}
    for k, v in rows.items():
      regrets.setdefault(k, []).append(v - best)
  regret = {k: np.stack(v) for k, v in regrets.items()}    # [T, seeds]
  out = {"per_target": table, "mean_regret": {k: float(v.mean()) for k, v in regret.items()},
         "seeds": int(F.shape[0]), "num_masks": int(len(masks_))}
  wins = {}
  for name in picks_.surrogates:
    losses = {t: row[name]["loss"] for t, row in table.items()}
    wins[name] = {"beats_all_tasks": sum(losses[t] < table[t]["all_tasks"]["loss"] for t in table),
                  "beats_best_singleton": sum(losses[t] < table[t]["best_singleton"]["loss"] for t in table),
                  "beats_both": sum(losses[t] < min(table[t]["all_tasks"]["loss"], table[t]["best_singleton"]["loss"])
                                    for t in table), "targets": len(table)}
  out["wins"] = wins
  for source in SOURCES:
    k, lin = f"kernel_{source}", f"linear_{source}"
    if k in regret and lin in regret and regret[k].shape[1] > 1:
      diff = intervals.replicate_interval(regret[k].mean(0) - regret[lin].mean(0))   # over seeds
      out[f"{k}_minus_{lin}_regret"] = {**diff.entries("difference"), "verdict": diff.verdict(higher_is_better=False)}
  return out
