"""Runs any experiment through the shared attribution driver.

  python -m experiments.main                                  # the default experiment and config
  python -m experiments.main --experiment=reference --workdir=/tmp/ref
"""
from __future__ import annotations

import importlib

from absl import app
from absl import flags
from absl import logging

EXPERIMENTS = {"reference": "experiments.reference", "modular": "experiments.modular"}
DEFAULT_EXPERIMENT = "reference"

_EXPERIMENT = flags.DEFINE_string("experiment", DEFAULT_EXPERIMENT, f"one of {sorted(EXPERIMENTS)}")
_CONFIG = flags.DEFINE_string("config", None, "name of a config of that experiment (default: its own default)")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "where summary.json, arrays and plots go")
_SEED = flags.DEFINE_integer("seed", 0, "seed for every random choice of the run")


def load_experiment(name: str):
  if name not in EXPERIMENTS:
    raise app.UsageError(f"--experiment: unknown experiment {name!r}; expected one of {sorted(EXPERIMENTS)}")
  return importlib.import_module(EXPERIMENTS[name])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:   # orbax logs every save at INFO; keep the console readable
    logging.set_verbosity(logging.WARNING)
  from ksurrogate import driver  # imported here so --help stays fast
  module = load_experiment(_EXPERIMENT.value)
  try:
    config = module.get_config(_CONFIG.value) if _CONFIG.value else module.get_config()
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  config.seed = _SEED.value
  logging.info("experiment=%s config=%s workdir=%s", _EXPERIMENT.value, _CONFIG.value, _WORKDIR.value)
  driver.run(module.protocol(config), config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
