"""Does top-layer LoRA over cached hidden states rank task subsets as full-depth LoRA does?

  python benchmarks/tasks_depth.py                       # cpu config: 8 subsets, top 2 blocks vs all 30
  python benchmarks/tasks_depth.py --config=tiny --subsets=4

The tasks experiment's cpu config fine-tunes LoRA on the top `finetune.lora_layers` blocks over
cached inputs of those blocks, ~12x cheaper than adapting every block. This check runs both
recipes end to end on the same random subsets of the design: each arm with its own format
warm-up (theta0) on its own blocks, then one fine-tune per subset. It prints, per target, the
Spearman correlation across subsets between the arms' target losses, and Pearson of their effects
F(S) - F(theta0) pooled over subsets and targets. Rows are the design's first random subsets
(`pipeline.design`), so they are rows of the experiment's own fine-tuned set.

Cost on 2 cores: an all-blocks fine-tune is ~15x a top-2 one (~2-3 min each); 8 subsets take
~25-40 min with both warm-ups.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ksurrogate import metrics
from ksurrogate_experiments.tasks import config as config_lib
from ksurrogate_experiments.tasks import data as data_lib
from ksurrogate_experiments.tasks import pipeline


def arm(c, n: int) -> dict:
  """One recipe end to end on the design's first n random subsets: their target losses [n, T],
  theta0's [T] and the seconds each step took."""
  times = {}
  t = time.perf_counter()
  s = pipeline.setup(c)
  dsg = pipeline.design(c, s)
  cch = pipeline.cache(c, s)
  times["cache"] = time.perf_counter() - t
  t = time.perf_counter()
  t0 = pipeline.theta0(c, s, cch)
  times["theta0"] = time.perf_counter() - t
  t = time.perf_counter()
  out = pipeline.finetune_chunk(c, dsg.S_rand[:n], 0, s, cch, t0)
  times["finetunes"] = time.perf_counter() - t
  return {"F": out["F"], "F0": s.per_target(t0.F0_examples[None])[0], "S": dsg.S_rand[:n], "seconds": times,
          "blocks": s.cfg.n_layers - s.recipe.first}


def compare(top: dict, full: dict) -> dict:
  """Agreement of the two arms: per-target Spearman across subsets, Pearson of the effects pooled."""
  per = metrics.spearman(top["F"], full["F"], per_target=True)          # NaN where a target is constant
  ea, eb = (top["F"] - top["F0"]).ravel(), (full["F"] - full["F0"]).ravel()
  why = {}
  return {"spearman_per_target": {t: None if np.isnan(v) else float(v) for t, v in zip(data_lib.TARGETS, per)},
          "spearman_mean": metrics.attempt(why, "spearman", metrics.spearman, top["F"], full["F"]),
          "effects_pearson_pooled": metrics.attempt(why, "pearson", metrics.pearson, ea, eb)}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--config", default="cpu", choices=sorted(config_lib.CONFIGS))
  ap.add_argument("--subsets", type=int, default=8, help="random subsets of the design fine-tuned by both recipes")
  ap.add_argument("--json", default="", help="also write the result to this file")
  args = ap.parse_args()
  base = config_lib.get_config(args.config)
  if not 3 <= args.subsets <= base.design.num_subsets:
    ap.error(f"--subsets: need 3..{base.design.num_subsets} (the design's random subsets), got {args.subsets}")
  arms = {}
  for name, layers in (("top", base.finetune.lora_layers), ("full", 0)):
    c = config_lib.get_config(args.config)
    c.finetune.lora_layers = layers
    c.design.chunk_size = args.subsets        # one compiled program for all n fine-tunes
    # nothing is estimated here, but validation holds every field, the projection's width too
    c.estimate.dim = max(c.estimate.dim, config_lib.min_estimate_dim(c))
    config_lib.EXPERIMENT.validate(c)
    arms[name] = arm(c, args.subsets)
    print(f"{name}: {arms[name]['blocks']} blocks adapted; " +
          ", ".join(f"{k} {v:.1f} s" for k, v in arms[name]["seconds"].items()), flush=True)
  result = {"config": args.config, "subsets": args.subsets, **compare(arms["top"], arms["full"]),
            "seconds": {k: v["seconds"] for k, v in arms.items()},
            "blocks": {k: v["blocks"] for k, v in arms.items()},
            "F": {k: v["F"].tolist() for k, v in arms.items()}}
  print(f"Spearman across {args.subsets} subsets, top-{arms['top']['blocks']} vs all {arms['full']['blocks']} blocks:")
  for t, v in result["spearman_per_target"].items():
    print(f"  {t:24s} {'n/a' if v is None else f'{v:+.3f}'}")
  mean = result["spearman_mean"]
  pooled = result["effects_pearson_pooled"]
  print(f"  mean {'n/a' if mean is None else f'{mean:+.3f}'}; effects F(S) - F(theta0) Pearson pooled "
        f"{'n/a' if pooled is None else f'{pooled:+.3f}'}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
