"""What every experiment's config shares: the variant check, the common fields, applying a variant."""
from __future__ import annotations

import ml_collections


def base_config(experiment: str, arg: str, variants: dict) -> ml_collections.ConfigDict:
  """A config holding the fields every experiment has, once `arg` is known to name a variant."""
  if arg not in variants:
    raise ValueError(f"config: unknown config {arg!r} for experiment {experiment!r}; expected one of {list(variants)}")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.progress = True
  c.smoke_test = False                 # the config only exercises every phase; its numbers mean nothing
  c.normalized_error_threshold = 1e-3  # targets varying less than this are left out of scores
  return c


def apply_variant(c: ml_collections.ConfigDict, variant: dict) -> ml_collections.ConfigDict:
  """Overwrites sections of `c` with a variant's values ("top" holds top-level fields)."""
  for section, values in variant.items():
    (c if section == "top" else c[section]).update(values)
  return c


def surrogate_experiment(name: str, pipeline: str):
  """(problems, methods, protocol) of an experiment whose phases live in the module `pipeline`
  (imported only when it runs, so `--help` and config loading stay light) and which compares
  kernel and linear surrogates on exact and on estimated outcomes."""
  import importlib

  from ksurrogate import driver

  def problems(config, run):
    yield from importlib.import_module(pipeline).problems(config, run)

  def methods(config, problem):
    return driver.surrogate_methods(cv=config.surrogates.cv, data=("exact", *problem.extra_fit))

  def protocol(config):
    del config
    return driver.Protocol(name=name, problems=problems, methods=methods, plot_method="kernel_exact")

  return problems, methods, protocol
