"""Runs any experiment through the shared attribution driver.

  python -m experiments.main                                  # the default experiment and config
  python -m experiments.main --experiment=reference --workdir=/tmp/ref
  python -m experiments.main --experiment=modular --config=paper --set=num_steps=500 --set=num_estimated=1000
"""
from __future__ import annotations

import ast
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
_SET = flags.DEFINE_multi_string("set", [], "override one config field, e.g. --set=num_steps=500 (a Python literal)")


def apply_overrides(config, overrides):
  """Applies 'field=literal' strings to a config; unknown fields and wrong types are usage errors."""
  for item in overrides:
    name, sep, text = item.partition("=")
    if not sep or name not in config:
      raise app.UsageError(f"--set: expected FIELD=VALUE with FIELD one of {sorted(config.keys())}, got {item!r}")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text   # a bare word is a string
    try:
      config[name] = value
    except TypeError as e:   # ConfigDict refuses a value of another type than the field's
      raise app.UsageError(f"--set: {name}: {e}") from None
  return config


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
  apply_overrides(config, _SET.value)
  logging.info("experiment=%s config=%s workdir=%s", _EXPERIMENT.value, _CONFIG.value, _WORKDIR.value)
  driver.run(module.protocol(config), config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
