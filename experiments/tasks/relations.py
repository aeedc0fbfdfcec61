"""The planted relations as measured and as recovered: probe effects (singletons and pairs from
the empty set), the pairs' interactions at the full set (leave-two-out fine-tunes), and each
fitted surrogate's interactions of the planted pairs (sign, rank among all pairs).

Interaction of tasks a, b on target t at base B (B = {} or B = all tasks):
  I_B(a, b) = F(B + a + b) - F(B + a) - F(B + b) + F(B)     (B = {})
  I_B(a, b) = F(B) - F(B - a) - F(B - b) + F(B - a - b)      (B = all: `ks.interactions`)
For a loss, I < 0 is synergy (the pair does more than its parts: complements), I > 0 redundancy
(substitutes) or cancellation (a conflict).
"""
from __future__ import annotations

import numpy as np

import ksurrogate as ks
from ksurrogate import families as families_lib
from ksurrogate_experiments.tasks import data as data_lib

TOP = 10   # "recovered": the planted pair among a surrogate's TOP largest |interactions| on its target


def planted_pairs() -> list:
  """[(relation, task a, task b, target)] as indices."""
  names = list(data_lib.TRAIN_TASKS)
  return [(rel, names.index(a), names.index(b), list(data_lib.TARGETS).index(t))
          for rel, rows in data_lib.PLANTED.items() for a, b, t in rows]


def related_cells() -> np.ndarray:
  """bool [K, T]: the (task, target) cells a planted relation ties together."""
  out = np.zeros((len(data_lib.TRAIN_TASKS), len(data_lib.TARGETS)), bool)
  for rows in data_lib.PLANTED.values():
    for a, b, t in rows:
      out[[data_lib.TRAIN_TASKS.index(a), data_lib.TRAIN_TASKS.index(b)], data_lib.TARGETS.index(t)] = True
  return out


def _sd(a):
  """s.d. over the first (seed) axis; None-like NaN with one seed."""
  return a.std(0, ddof=1) if len(a) > 1 else np.full(a.shape[1:], np.nan)


def probe_summary(pairs, probes) -> dict:
  """Effects on each target from the probe fine-tunes (rows: empty set, K singletons, the pairs;
  one dict per seed): singletons F({k}) - F({}) [K, T] (mean and s.d. over seeds), their mean
  |effect| on the planted cells against the other cells, and, per planted pair, both singles,
  the pair and the interaction I_{}(a, b), each with its s.d. over seeds."""
  F = np.stack([p["F"] for p in (probes if isinstance(probes, (list, tuple)) else [probes])])   # [seeds, rows, T]
  K = len(data_lib.TRAIN_TASKS)
  single = F[:, 1:K + 1] - F[:, :1]
  related = related_cells()
  size = np.abs(single).mean(0)
  out = {"seeds": int(len(F)), "singleton_effects": single.mean(0).tolist(), "singleton_effects_sd": _sd(single).tolist(),
         "empty": F[0, 0].tolist(), "related_mean_abs_effect": float(size[related].mean()),
         "unrelated_mean_abs_effect": float(size[~related].mean()),
         "seed_sd_mean": float(np.nanmean(_sd(single))) if len(F) > 1 else None, "pairs": []}
  for i, (rel, a, b, t) in enumerate(pairs):
    ab = F[:, K + 1 + i, t] - F[:, 0, t]
    parts = {"effect_a": single[:, a, t], "effect_b": single[:, b, t], "effect_ab": ab,
             "interaction": ab - single[:, a, t] - single[:, b, t]}
    row = {"relation": rel, "tasks": [data_lib.TRAIN_TASKS[a], data_lib.TRAIN_TASKS[b]], "target": data_lib.TARGETS[t]}
    for k, v in parts.items():
      row[k], row[k + "_sd"] = float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)
    out["pairs"].append(row)
  return out


def pair_truths(pairs, interactions, probe_F) -> dict:
  """The planted pairs' interactions on their targets, per seed: at the full set from the truth
  fine-tunes' interactions ([seeds, P, T], `ks.pair_interactions`) and at the empty set from the
  probes ([seeds, 1 + K + P, T]: none, each singleton, each pair). What the driver's pair scores
  read: {"pairs": [[a, b, t]], "relations", "full": [seeds, P], "empty": [seeds, P]}."""
  K = len(data_lib.TRAIN_TASKS)
  full, empty = [], []
  for i, (_, a, b, t) in enumerate(pairs):
    full.append(interactions[:, i, t])
    empty.append(probe_F[:, K + 1 + i, t] - probe_F[:, 1 + a, t] - probe_F[:, 1 + b, t] + probe_F[:, 0, t])
  return {"pairs": [[a, b, t] for _, a, b, t in pairs], "relations": [r for r, *_ in pairs],
          "full": np.stack(full, 1).tolist(), "empty": np.stack(empty, 1).tolist()}


def _rank(values, x) -> float:
  """1-based rank of |x| among |values| from the largest, ties at their mean rank."""
  v, a = np.abs(values), abs(x)
  return float(1 + np.sum(v > a) + (np.sum(v == a) - 1) / 2)


def pair_recovery(surrogates: dict, pairs, truths: dict) -> dict:
  """Per fitted surrogate with pairwise interactions: each planted pair's predicted interaction
  at both bases, its sign against the measured one (seed mean), and the rank of its |I_all| among
  all K(K-1)/2 pairs on its target; the number among the top TOP. Additive surrogates (no
  interactions readout) are listed with None."""
  K = len(data_lib.TRAIN_TASKS)
  full_true, empty_true = np.mean(truths["full"], 0), np.mean(truths["empty"], 0)
  upper = np.triu_indices(K, 1)
  out = {}
  for name, g in surrogates.items():
    if "interactions" not in families_lib.readouts(g):
      out[name] = None
      continue
    I = np.asarray(ks.interactions(g, K))                   # [K, K, T]
    rows = []
    for i, (rel, a, b, t) in enumerate(pairs):
      S = np.zeros((4, K), bool)
      S[1, a] = S[2, b] = True
      S[3, [a, b]] = True
      g0, ga, gb, gab = np.asarray(g.predict(S))[:, t]
      rows.append({"relation": rel, "tasks": [data_lib.TRAIN_TASKS[a], data_lib.TRAIN_TASKS[b]],
                   "target": data_lib.TARGETS[t], "full": float(I[a, b, t]), "empty": float(gab - ga - gb + g0),
                   "rank_full": _rank(I[upper][:, t], I[a, b, t]),
                   "sign_full": bool(np.sign(I[a, b, t]) == np.sign(full_true[i])),
                   "sign_empty": bool(np.sign(gab - ga - gb + g0) == np.sign(empty_true[i]))})
    out[name] = {"pairs": rows, f"in_top{TOP}": int(sum(r["rank_full"] <= TOP for r in rows)),
                 "signs_full": int(sum(r["sign_full"] for r in rows)),
                 "signs_empty": int(sum(r["sign_empty"] for r in rows)), "num_pairs": len(rows)}
  return out
