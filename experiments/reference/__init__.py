"""`reference`: the official recipe and ours on the outcome data released by the paper's authors.

Command:  python -m experiments.main --experiment=reference --workdir=/tmp/ref
Runtime:  ~30 s on 2 CPU cores (mostly compilation).
Result (summary.json, measured; see BUILD_NOTES.md for the command and the full table):
  official_krr / official_lstsq reproduce the reference README's figures to 3 decimals;
  kernel / linear are our cross-validated surrogates on the task-level indicators.
"""
from __future__ import annotations

import pathlib

import ml_collections
import numpy as np

from experiments import common
from ksurrogate.harness import driver
from ksurrogate import parity
from ksurrogate import subsets
from ksurrogate.surrogates import fit_kernel
from ksurrogate.surrogates import fit_linear

DATA_DIR = pathlib.Path(__file__).parent / "data"
DATASETS = ("modular_addition", "modular_quad", "coin_flip")
# The official code's fixed ridges (reference README).
OFFICIAL_RIDGE = {"modular_addition": 1e-2, "modular_quad": 1e-2, "coin_flip": 1e-1}
COIN_FLIP_TASKS = 50


DESCRIPTIONS = {
    "default": "the released outcome data: modular addition, modular quad, coin flip (5 splits); ~30 s",
    "tiny": "the same with one coin-flip split (tests)",
}
DEFAULT_CONFIG = "default"


def get_config(name: str = "default") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.data_dir = str(DATA_DIR)
  c.datasets = tuple(DATASETS)
  c.coin_flip_seeds = (0, 1, 2, 3, 4)   # numpy default_rng(seed).permutation(200), 80 fit / 120 held out
  c.coin_flip_num_fit = 80
  c.normalized_error_threshold = 0.1
  c.cv = 5
  c.progress = True
  if name == "tiny":
    c.coin_flip_seeds = (0,)
  elif name != "default":
    raise ValueError(f"config: unknown config {name!r} for experiment 'reference'; expected 'default' or 'tiny'")
  return c


def _load(data_dir: pathlib.Path, name: str) -> dict:
  path = data_dir / f"{name}.npz"
  if not path.is_file():
    raise FileNotFoundError(f"data_dir: reference file {path} is missing (see experiments/reference/data/PROVENANCE.md)")
  with np.load(path) as d:
    return {k: d[k] for k in d.files}


RULES = {
    "data_dir": common.existing_dir(),
    "datasets": common.sequence(common.choice(*DATASETS), distinct=True),
    "coin_flip_seeds": common.sequence(common.integer(0, common.SEED_MAX), distinct=True),
    "coin_flip_num_fit": common.integer(2, 198),
    "normalized_error_threshold": common.number(0.0),
    "cv": common.integer(2),
    "progress": common.boolean(),
}


def validate(c) -> None:
  """Every field's range (RULES), then the data files and the folds; one line naming the field."""
  common.check(c, RULES)
  for name in c.datasets:
    path = pathlib.Path(c.data_dir).expanduser() / f"{name}.npz"
    common.require(path.is_file(), "data_dir", f"{path} is missing (see experiments/reference/data/PROVENANCE.md)")
  # the smallest fit set: 40 released modular subsets, coin_flip_num_fit coin-flip prompts
  fit = min([40] * any(n != "coin_flip" for n in c.datasets) + [c.coin_flip_num_fit] * ("coin_flip" in c.datasets))
  common.require(c.cv <= fit, "cv", f"{c.cv} folds exceed the {fit} subsets of the smallest fit set")


def problems(config, run=None):
  del run  # the reference data needs no intermediate state
  data_dir = pathlib.Path(config.data_dir)
  for name in config.datasets:
    if name not in DATASETS:
      raise ValueError(f"datasets: unknown reference dataset {name!r}; expected one of {list(DATASETS)}")
    d = _load(data_dir, name if name != "coin_flip" else "coin_flip")
    if name == "coin_flip":
      W = subsets.from_ids(d["train_ids"], COIN_FLIP_TASKS)
      S, F = W, d["scores"]
      m = len(S)
      splits = []
      for seed in config.coin_flip_seeds:
        perm = np.random.default_rng(seed).permutation(m)
        splits.append((perm[:config.coin_flip_num_fit], perm[config.coin_flip_num_fit:]))
    else:
      W = np.concatenate([d["train_w"], d["test_w"]])
      F = np.concatenate([d["train_scores"], d["test_scores"]])
      S, _ = subsets.collapse_columns(W)
      n_fit = len(d["train_w"])
      splits = [(np.arange(n_fit), np.arange(n_fit, len(W)))]
    yield driver.Problem(name=name, S=S, F=F, W=W, splits=splits,
                         task_noun="demonstration" if name == "coin_flip" else "task")


def methods(config, problem: driver.Problem) -> dict:
  ridge = OFFICIAL_RIDGE[problem.name]
  return {
      "official_krr": driver.Method("official_krr", lambda W, F: parity.official_krr(W, F, ridge=ridge), view="sample"),
      "official_lstsq": driver.Method("official_lstsq", lambda W, F: parity.official_lstsq(W, F), view="sample"),
      "kernel": driver.Method("kernel", lambda S, F: fit_kernel(S, F, cv=config.cv)),
      "linear": driver.Method("linear", lambda S, F: fit_linear(S, F, cv=config.cv)),
  }


def protocol(config) -> driver.Protocol:
  del config
  return driver.Protocol(name="reference", problems=problems, methods=methods)
