"""The released RegMix runs: mixtures [n, 17] and validation losses [n, 13], train and test."""
from __future__ import annotations

import csv
import pathlib

import numpy as np

FILES = {"train": ("train_mixture_1m.csv", "train_pile_loss_1m.csv"),
         "test": ("test_mixture_1m.csv", "test_pile_loss_1m.csv")}
MIXTURE_PREFIX = "train_the_pile_"
LOSS_PREFIX, LOSS_SUFFIX = "metric/the_pile_", "_val_loss"
NUM_DOMAINS, NUM_TARGETS = 17, 13


def _read(path: pathlib.Path):
  if not path.is_file():
    raise FileNotFoundError(f"data.dir: {path} is missing (see experiments/regmix/data/PROVENANCE.md)")
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  header, body = rows[0], np.asarray(rows[1:], np.float64)
  if header[0] != "index":
    raise ValueError(f"data.dir: {path} does not start with an 'index' column (header {header[:3]})")
  return header[1:], body[:, 0].astype(np.int64), body[:, 1:]


def load(data_dir) -> dict:
  """{"train" / "test": (mixtures [n, 17], losses [n, 13]), "domains": 17 names, "targets": 13
  names}; refuses files whose columns or row indices do not match."""
  out = {}
  for split, (mix_file, loss_file) in FILES.items():
    mix_cols, mix_idx, X = _read(pathlib.Path(data_dir) / mix_file)
    loss_cols, loss_idx, Y = _read(pathlib.Path(data_dir) / loss_file)
    if not np.array_equal(mix_idx, loss_idx):
      raise ValueError(f"data.dir: the rows of {mix_file} and {loss_file} do not have the same index")
    domains = [c[len(MIXTURE_PREFIX):] for c in mix_cols]
    targets = [c[len(LOSS_PREFIX):-len(LOSS_SUFFIX)] for c in loss_cols]
    if len(domains) != NUM_DOMAINS or len(targets) != NUM_TARGETS:
      raise ValueError(f"data.dir: expected {NUM_DOMAINS} domains and {NUM_TARGETS} targets, found {len(domains)} and "
                       f"{len(targets)} in {mix_file} / {loss_file}")
    if out.setdefault("domains", domains) != domains or out.setdefault("targets", targets) != targets:
      raise ValueError(f"data.dir: {mix_file} / {loss_file} name other columns than the training files")
    out[split] = (X, Y)
  return out
