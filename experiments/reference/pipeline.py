"""The reference experiment's problems: the released outcome files as driver Problems."""
from __future__ import annotations

import pathlib

import numpy as np

from ksurrogate_experiments import common
from ksurrogate import subsets
from ksurrogate.harness import driver

COIN_FLIP_TASKS = 50


def load(data_dir: pathlib.Path, name: str) -> dict:
  path = pathlib.Path(data_dir) / f"{name}.npz"
  if not path.is_file():
    raise FileNotFoundError(f"data.dir: reference file {path} is missing (see experiments/reference/data/PROVENANCE.md)")
  with np.load(path) as d:
    return {k: d[k] for k in d.files}


def problem(config, name: str) -> driver.Problem:
  """One released dataset: its outcomes, sample- and task-level indicators, declared splits."""
  d = load(config.data.dir, name)
  if name == "coin_flip":
    W = subsets.from_ids(d["train_ids"], COIN_FLIP_TASKS)
    S, F = W, d["scores"]
    splits = []
    for seed in config.design.split_seeds:
      perm = np.random.default_rng(seed).permutation(len(S))
      splits.append((perm[:config.design.num_fit], perm[config.design.num_fit:]))
  else:
    W = np.concatenate([d["train_w"], d["test_w"]])
    F = np.concatenate([d["train_scores"], d["test_scores"]])
    S, _ = subsets.collapse_columns(W)
    n_fit = len(d["train_w"])
    splits = [(np.arange(n_fit), np.arange(n_fit, len(W)))]
  return driver.Problem(name=name, S=S, F=F, W=W, splits=splits,
                        task_noun="demonstration" if name == "coin_flip" else "task")


def problems(config, run=None, families=None):
  del run, families   # the released data needs no stored phase, and nothing here fits a surrogate
  for name in config.data.datasets:
    p = problem(config, name)
    common.require_varying(p.F, 0.0, config.min_varying_targets, phase=name, threshold_field=None)
    yield p
