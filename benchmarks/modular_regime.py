"""Which modular recipe puts retrained models in the authors' regime: outcome statistics per recipe.

  python benchmarks/modular_regime.py --released        # the released statistics only (~5 s)
  A="data.p=41,data.bar=9,data.train_fraction=0.9,train.lr_schedule=constant,train.lr=1e-3,train.retries=0"
  python benchmarks/modular_regime.py --m=40 --seeds=0,1 --recipe "$A,train.num_steps=170"
      # ~12 min on 2 loaded cores: mean 2.65 / 3.03, variance median 1.19 / 0.89 (released 1.97 / 0.70)
  python benchmarks/modular_regime.py --m=40 --seeds=0,1 --recipe "$A,data.op=quad,model.activation=gelu,train.num_steps=360"
      # ~25 min: mean 1.71 / 1.74, variance median 3.18 / 2.91 (released 1.15 / 3.26)
  python benchmarks/modular_regime.py --curve --checkpoints=20 --curve_subsets=8 --recipe "$A,train.num_steps=400"

BUILD_NOTES.md ("The authors' regime: recipe search") has every recipe tried and its row.

A recipe is a comma-separated list of SECTION.FIELD=VALUE overrides of the modular config named
by --config (values are Python literals; a bare word is a string). For each recipe and training
seed, the default mode trains theta0 and --m subsets of design.size tasks (22 of 25 as the
paper's design), each retrained from scratch by the pipeline's own `retrain_chunk`, and prints one
row: theta0's validation accuracy and cross-entropy, then over the kept targets (the authors keep
targets whose variance across subsets exceeds --threshold = 1e-2): the mean, median and minimum of
the per-target cross-entropy over all subsets, the median across-subset variance, kept / total
targets, the mean |drop effect| (per task: mean outcome of the subsets without it minus that of the
subsets with it, the cheap LOO-like spread a 22-of-25 design gives), the fraction of kept targets
whose largest drop effect is the block holding their commuted pair (y, x) (chance: 1/25), the
common share (variance of the subsets' mean outcome over the mean per-target variance: ~1 when all
targets move together, ~1/T when each moves on its own), the retrains' largest final training
loss, and the seconds. The released addition and quad outcomes (the 40 fit subsets), computed the
same way, come first.

`--curve` trains theta0 and --curve_subsets subset retrains once with --checkpoints checkpoints and
prints the same statistics at every checkpoint (to find the phase before paying for retrains).
With lr_schedule 'constant' a checkpoint at step k is exactly the k-step model, full batch or
minibatch (the step keys are split from one key, and JAX's split is prefix-consistent); with a
cosine schedule it is not (the rate had not decayed yet), so the curve only locates phases. Few
curve subsets understate the variance median (8 subsets: ~0.8x the 20-subset figure).

Variances: targets are kept on the unbiased variance (as `metrics.varying_targets`); the median
variance printed is numpy's default (ddof 0), which is how the released 0.70 / 3.26 are computed.
"""
from __future__ import annotations



import ast  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from ksurrogate_experiments.modular import config as config_lib  # noqa: E402
from ksurrogate_experiments.modular import phases as pipeline  # noqa: E402
from ksurrogate_experiments.modular import regime  # noqa: E402
from ksurrogate_experiments.reference.config import DATA_DIR  # noqa: E402
from ksurrogate import metrics, subsets, training  # noqa: E402

_RECIPE = flags.DEFINE_multi_string("recipe", [], "SECTION.FIELD=VALUE,... on top of --config (repeatable)")
_CONFIG = flags.DEFINE_string("config", "cpu", "modular config the recipes start from")
_M = flags.DEFINE_integer("m", 40, "subset retrains per recipe and seed (the authors fit on 40)")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "training seeds (init and data order; 0 is the config's own)")
_THRESHOLD = flags.DEFINE_float("threshold", 1e-2, "targets kept: unbiased variance across subsets above this")
_CURVE = flags.DEFINE_bool("curve", False, "statistics along one training run instead of final retrains")
_CHECKPOINTS = flags.DEFINE_integer("checkpoints", 20, "--curve: checkpoints (must divide train.num_steps)")
_CURVE_SUBSETS = flags.DEFINE_integer("curve_subsets", 8, "--curve: subset retrains followed along the run (0: theta0 only)")
_RELEASED = flags.DEFINE_bool("released", False, "print the released statistics and stop")
_OUT = flags.DEFINE_string("out", None, "append every row as a JSON line to this file")
_OUTCOMES = flags.DEFINE_string("outcomes_npz", None, "retrain mode: save theta0's and the retrains' outcomes "
                                "(F, S, F0) of the last recipe and seed to this .npz (to compare runs bit by bit)")


# ----------------------------------------------------------------------------------------------
# Statistics (the same for released and retrained outcomes).

def outcome_stats(F, S, threshold: float, commuted_task=None) -> dict:
  """Statistics of outcomes F [m, T] of subsets S [m, K] over the targets that vary; with
  commuted_task [T] (the task holding each target's commuted pair (y, x)), also the fraction of
  kept targets whose largest drop effect is that task's."""
  F = np.asarray(F, np.float64)
  S = np.asarray(S, bool)
  keep = np.asarray(metrics.varying_targets(F, threshold))
  Fk = F[:, keep]
  out = {"kept": int(keep.sum()), "total": int(F.shape[1]), "top_is_commuted": np.nan}
  if not keep.any():
    return {**out, "mean": np.nan, "median": np.nan, "min": np.nan, "var_median": np.nan, "drop_effect": np.nan,
            "common": np.nan}
  # the figures every modular summary reports, computed by the one definition the pipeline uses
  shared = regime.outcome_statistics(F, threshold)
  # Per task: outcome without it minus with it (a task in every subset, or in none, has no effect here).
  tasks = [k for k in range(S.shape[1]) if 0 < S[:, k].sum() < len(S)]
  effects = np.array([Fk[~S[:, k]].mean(0) - Fk[S[:, k]].mean(0) for k in tasks]).reshape(len(tasks), -1)
  if commuted_task is not None and tasks:
    top = np.asarray(tasks)[np.argmax(effects, 0)]
    known = np.isin(np.asarray(commuted_task)[keep], tasks)
    out["top_is_commuted"] = float(np.mean(top[known] == np.asarray(commuted_task)[keep][known])) if known.any() else np.nan
  return {**out, "mean": shared["mean"], "median": shared["median"], "min": shared["min"],
          "var_median": shared["variance_median"],
          # ~1 when every target moves with the subset's overall progress, ~1/T when targets move independently
          "common": float(Fk.mean(1).var() / Fk.var(0).mean()),
          "drop_effect": float(np.mean(np.abs(effects))) if tasks else np.nan}


def released_stats(threshold: float) -> dict:
  """{'add': stats, 'quad': stats} of the released outcomes' 40 fit subsets."""
  out = {}
  for op, name in (("add", "modular_addition"), ("quad", "modular_quad")):
    with np.load(DATA_DIR / f"{name}.npz") as d:
      S, _ = subsets.collapse_columns(np.concatenate([d["train_w"], d["test_w"]]))
      F = d["train_scores"]
    out[op] = outcome_stats(F, S[:len(F)], threshold)
  return out


# ----------------------------------------------------------------------------------------------
# Recipes.

def parse_recipe(text: str) -> dict:
  """'a.b=1,c.d=x' -> {'a.b': 1, 'c.d': 'x'}; a value that is no Python literal stays a string."""
  setting = {}
  for item in filter(None, (part.strip() for part in _split(text))):
    if "=" not in item:
      raise ValueError(f"recipe: {item!r} is not SECTION.FIELD=VALUE")
    path, value = (s.strip() for s in item.split("=", 1))
    try:
      setting[path] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      setting[path] = value
  return setting


def _split(text: str):
  """Splits on commas outside brackets (a tuple value keeps its commas)."""
  depth, start = 0, 0
  for i, ch in enumerate(text):
    depth += ch in "(["
    depth -= ch in ")]"
    if ch == "," and depth == 0:
      yield text[start:i]
      start = i + 1
  yield text[start:]


def make_config(base: str, setting: dict):
  c = config_lib.get_config(base)
  for path, value in setting.items():
    node, *rest = path.split(".")
    parent = c
    for part in [node, *rest][:-1]:
      if part not in parent:
        raise ValueError(f"recipe: {path} names no config field")
      parent = parent[part]
    field = path.split(".")[-1]
    if field not in parent:
      raise ValueError(f"recipe: {path} names no config field")
    if isinstance(parent[field], float) and isinstance(value, int):
      value = float(value)
    parent[field] = value
  config_lib.EXPERIMENT.validate(c)
  return c


def _accuracy(s, params, X, y) -> float:
  return float(np.mean(np.argmax(np.asarray(s.apply_fn(params, X)), -1) == y))


def _seeded(s: pipeline.Setup, train_seed: int) -> pipeline.Setup:
  init_key, data_key = s.train_keys(train_seed)
  return dataclasses.replace(s, init_key=init_key, data_key=data_key)


def _commuted(s: pipeline.Setup) -> np.ndarray:
  """bool [T]: targets (x, y) whose commuted pair (y, x) is a training example."""
  in_train = {(a, b) for a, _, b, _ in s.d.X_train.tolist()}
  return np.array([(b, a) in in_train for a, _, b, _ in s.X_val.tolist()])


def _commuted_task(c, s: pipeline.Setup) -> np.ndarray:
  """int [T]: the grid-block task of each target's commuted pair (y, x), numbered as data.make does."""
  nb = -(-c.data.p // c.data.bar)
  return (s.X_val[:, 2] // c.data.bar) * nb + s.X_val[:, 0] // c.data.bar


# ----------------------------------------------------------------------------------------------
# The two modes.

def measure(c, m: int, train_seed: int, threshold: float) -> dict:
  """theta0 and m subset retrains of one recipe and training seed -> one row."""
  c = c.copy_and_resolve_references()
  c.design.num_subsets = m
  s = pipeline.setup(c)
  S = pipeline.design(c, s).S_rand
  t0 = time.perf_counter()
  th = pipeline.theta0(c, _seeded(s, train_seed))
  jax.block_until_ready(th.params)
  t_theta0 = time.perf_counter() - t0
  val0 = np.asarray(s.val_loss(jax.tree.map(lambda a: a[None], th.params)))[0]
  t0 = time.perf_counter()
  out = pipeline.retrain_chunk(c, S, 0, s, train_seed=train_seed)
  t_retrain = time.perf_counter() - t0
  if _OUTCOMES.value:
    np.savez(_OUTCOMES.value, F=out["F"], S=S, F0=val0)
  return {"theta0_val_acc": _accuracy(s, th.params, s.X_val, s.y_val), "theta0_val_ce": float(val0.mean()),
          "theta0_train_loss": float(th.curve[-1]), "commuted_in_train": float(_commuted(s).mean()),
          **outcome_stats(out["F"], S, threshold, _commuted_task(c, s)),
          "retrain_loss_max": float(out["final_train_loss"].max()),
          "retried": int(np.sum(out["attempts"] > 1)), "m": int(m),
          "seconds_theta0": t_theta0, "seconds_retrain": t_retrain}


def curve(c, n_checkpoints: int, n_subsets: int, train_seed: int, threshold: float) -> list[dict]:
  """Statistics at every checkpoint of theta0 and of n_subsets subset retrains (one run each;
  n_subsets = 0: theta0 only)."""
  c = c.copy_and_resolve_references()
  c.baselines.tracin_checkpoints = n_checkpoints
  # No fit / held-out split here, but the config must still pass `validate`. The design's draw is
  # prefix-consistent, so the n subsets followed are the first n of the config's own design: with
  # n <= design.num_fit, its fit subsets.
  c.design.num_subsets = max(n_subsets, 4)
  c.design.num_fit = c.design.num_subsets - 2
  c.surrogates.cv = min(c.surrogates.cv, c.design.num_fit)
  config_lib.EXPERIMENT.validate(c)
  s = _seeded(pipeline.setup(c), train_seed)
  S = pipeline.design(c, s).S_rand[:max(n_subsets, 2)]
  t0 = time.perf_counter()
  th = pipeline.theta0(c, s)
  jax.block_until_ready(th.checkpoints)
  if n_subsets:
    # The theta0 trainer keeps checkpoints; run over subsets it gives every retrain's checkpoints.
    _, losses, ckpts = training.retrain_subsets(s.theta0_train, s.init_fn, s.train_data, s.d.task_train, S,
                                                init_key=s.init_key, key=s.data_key, chunk_size=c.design.chunk_size,
                                                common_random_numbers=s.common_random_numbers)
    jax.block_until_ready(ckpts)
  seconds = time.perf_counter() - t0
  commuted = _commuted(s)
  every = c.train.num_steps // n_checkpoints
  rows = []
  for j in range(n_checkpoints):
    p0 = jax.tree.map(lambda a: a[j], th.checkpoints)
    logits = np.asarray(s.apply_fn(p0, s.X_val))
    correct = np.argmax(logits, -1) == s.y_val
    if n_subsets:
      F = np.asarray(s.val_loss(jax.tree.map(lambda a: a[:, j], ckpts)))
      sub = {"subset_train_loss_max": float(np.asarray(losses)[:, (j + 1) * every - 1].max()),
             **outcome_stats(F, S, threshold, _commuted_task(c, s)), "m": int(len(S))}
    else:
      sub = {"subset_train_loss_max": np.nan, **outcome_stats(np.zeros((2, len(s.y_val))), S[:2], threshold), "m": 0}
    rows.append({"step": (j + 1) * every, "theta0_train_loss": float(th.curve[(j + 1) * every - 1]),
                 "theta0_val_acc": float(correct.mean()),
                 "theta0_val_acc_commuted": float(correct[commuted].mean()) if commuted.any() else np.nan,
                 "theta0_val_acc_other": float(correct[~commuted].mean()) if (~commuted).any() else np.nan,
                 "theta0_val_ce": float(np.mean(np.asarray(training.cross_entropy(jnp.asarray(logits), s.y_val)))),
                 **sub, "seconds": seconds})
  return rows


# ----------------------------------------------------------------------------------------------

_HEAD = (f"{'seed':>4} {'acc0':>6} {'ce0':>6} {'mean':>6} {'median':>6} {'min':>6} {'varmed':>7} {'kept':>9} "
         f"{'|drop|':>7} {'top=comm':>8} {'common':>6} {'trmax':>7} {'sec':>6}  recipe")


def _row(label, seed, r) -> str:
  fmt = lambda k: f"{r[k]:.3f}" if k in r and np.isfinite(r[k]) else "-"   # noqa: E731
  kept = f"{r['kept']}/{r['total']}"
  sec = r.get("seconds_theta0", 0) + r.get("seconds_retrain", 0)
  return (f"{seed:>4} {fmt('theta0_val_acc'):>6} {fmt('theta0_val_ce'):>6} {fmt('mean'):>6} "
          f"{fmt('median'):>6} {fmt('min'):>6} {fmt('var_median'):>7} {kept:>9} {fmt('drop_effect'):>7} "
          f"{fmt('top_is_commuted'):>8} {fmt('common'):>6} {fmt('retrain_loss_max'):>7} {sec:>6.0f}  {label}")


def _emit(record: dict):
  if _OUT.value:
    with open(_OUT.value, "a") as f:
      f.write(json.dumps(record, default=float) + "\n")


def main(argv):
  del argv
  threshold = _THRESHOLD.value
  released = released_stats(threshold)
  print(_HEAD)
  for op, r in released.items():
    print(_row(f"released {op} (the 40 fit subsets)", "-", r))
  if _RELEASED.value or not _RECIPE.value:
    return
  seeds = [int(x) for x in _SEEDS.value]
  for text in _RECIPE.value:
    setting = parse_recipe(text)
    c = make_config(_CONFIG.value, setting)
    for seed in seeds:
      if _CURVE.value:
        rows = curve(c, _CHECKPOINTS.value, _CURVE_SUBSETS.value, seed, threshold)
        print(f"# curve of --config={_CONFIG.value} {text} seed {seed}: theta0 and {rows[0]['m']} subsets, "
              f"{rows[0]['seconds']:.0f} s ({c.train.lr_schedule} lr)", flush=True)
        print(f"{'step':>6} {'trloss0':>8} {'acc0':>6} {'acc0 comm/other':>15} {'ce0':>6} {'trmax':>7} {'mean':>6} "
              f"{'median':>6} {'min':>6} {'varmed':>7} {'kept':>9} {'|drop|':>7} {'top=comm':>8} {'common':>6}")
        for r in rows:
          f = lambda k: f"{r[k]:.3f}" if np.isfinite(r[k]) else "-"   # noqa: E731
          print(f"{r['step']:>6} {r['theta0_train_loss']:>8.4f} {f('theta0_val_acc'):>6} "
                f"{f('theta0_val_acc_commuted') + '/' + f('theta0_val_acc_other'):>15} {f('theta0_val_ce'):>6} "
                f"{f('subset_train_loss_max'):>7} {f('mean'):>6} {f('median'):>6} {f('min'):>6} {f('var_median'):>7} "
                f"{str(r['kept']) + '/' + str(r['total']):>9} {f('drop_effect'):>7} {f('top_is_commuted'):>8} {f('common'):>6}", flush=True)
          _emit({"mode": "curve", "config": _CONFIG.value, "recipe": text, "seed": seed, **r})
      else:
        r = measure(c, _M.value, seed, threshold)
        print(_row(text, seed, r), flush=True)
        _emit({"mode": "retrain", "config": _CONFIG.value, "recipe": text, "seed": seed, **r})


if __name__ == "__main__":
  app.run(main)
