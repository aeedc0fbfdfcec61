"""What an experiment is, in one place, and the registry of experiments.

An experiment is one `Experiment` value, `EXPERIMENT`, defined in its config module (the module
`REGISTRY` names). That module imports only ml_collections and `ksurrogate_experiments.common` (and this
module), so `--help` and config checks never import a pipeline, JAX models or an environment
library: the pipeline is named by a string ("package.module:function") and imported when the
experiment runs.

An experiment provides:
  name, configs     its named configs, each a `Variant` (a one-line description for --help and the
                    big_vision facts: the exact command, its measured runtime, what it gives)
  default_config    the config `--config` falls back to
  get_config(arg)   the ConfigDict of a named config (built on `common.base_config`)
  rules             {field: common.Rule}: the range of every field `--help` lists
  checks(config)    cross-field checks (`common.require`), after the rules
  memory(config)    {field: (bytes, what)}: the largest arrays the settings imply, checked
                    against this machine's memory
  problems          "module:function": problems(config, run, families) yields driver Problems
                    (and `driver.Across` entries) from phases stored in `run`; `families(config,
                    name)` gives the surrogate families for phases that select with surrogates
  families(config, problem_name)
                    the surrogate families compared (default: `ksurrogate.families.standard`
                    with the config's `surrogates` section)
  across            optional "module:function": across(config, results, shared) -> (summary
                    entries, figures) over every evaluated problem (`driver.Result`s in memory)
`validate` and `protocol` are the same for every experiment (below); the driver never
special-cases one.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping, Optional, Sequence

from ksurrogate_experiments import common

# name -> the module holding its EXPERIMENT (imported on demand).
REGISTRY = {
    "reference": "ksurrogate_experiments.reference.config",
    "modular": "ksurrogate_experiments.modular.config",
    "morl": "ksurrogate_experiments.morl.config",
    "icl": "ksurrogate_experiments.icl.config",
    "regmix": "ksurrogate_experiments.regmix.config",
}
DEFAULT = "reference"


@dataclasses.dataclass(frozen=True)
class Variant:
  """One named config: what --help says about it, and the facts its docstring used to hold."""
  description: str   # one line for --help
  command: str       # the exact command that runs it
  runtime: str       # measured, with the machine
  result: str        # what it gives (measured), or why it has no result yet


def _no_checks(config) -> None:
  del config


def _no_memory(config) -> dict:
  del config
  return {}


def chosen(config, found: Sequence) -> list:
  """The families `surrogates.families` names among `found` ("standard": all of them)."""
  from ksurrogate import families
  names = tuple(config.surrogates.families)
  try:
    return families.select(found, None if names == ("standard",) else names)
  except ValueError as e:
    raise ValueError(f"surrogates.families: {str(e).split(': ', 1)[1]} (or 'standard' for all)") from None


def standard_families(config, problem_name: str) -> list:
  """`ksurrogate.families.standard` set from the config's `surrogates` section (cv, num_inducing,
  official_ridge; families: the names to compare, "standard" for all)."""
  from ksurrogate import families
  del problem_name
  s = config.surrogates
  return chosen(config, families.standard(cv=s.cv, num_inducing=s.get("num_inducing"), official_ridge=s.official_ridge))


def _resolve(spec: str) -> Callable:
  module, _, function = spec.partition(":")
  return getattr(importlib.import_module(module), function)


@dataclasses.dataclass(frozen=True)
class Experiment:
  """See the module doc."""
  name: str
  configs: Mapping[str, Variant]
  default_config: str
  get_config: Callable[[str], Any]
  rules: Mapping[str, common.Rule]
  problems: str
  checks: Callable[[Any], None] = _no_checks
  memory: Callable[[Any], dict] = _no_memory
  families: Callable[[Any, str], Sequence] = standard_families
  across: Optional[str] = None
  plot_method: str = "kernel_exact"

  def __post_init__(self):
    if self.default_config not in self.configs:
      raise ValueError(f"default_config: {self.default_config!r} is not one of {self.name}'s configs {list(self.configs)}")
    for spec in (self.problems, self.across):
      if spec is not None and ":" not in spec:
        raise ValueError(f"problems: expected 'package.module:function', got {spec!r}")

  @property
  def descriptions(self) -> dict:
    return {name: v.description for name, v in self.configs.items()}

  def validate(self, config, *, memory_available: Optional[int] = None) -> None:
    """Every field's range (`rules`), then the checks across fields, then this machine's memory;
    each error is one ValueError line that starts with the field to change."""
    common.check(config, self.rules)
    self.checks(config)
    if "surrogates" in config:   # the family names exist (this imports the library, not a pipeline)
      self.families(config, self.name)
    common.check_memory(self.memory(config), available=memory_available)

  def protocol(self, config, *, extra_families: Sequence = ()):
    """The driver's Protocol for `config`; `extra_families` (ksurrogate.families.Family) are
    compared beside the experiment's own, on every problem and in its selection phases."""
    from ksurrogate.harness import driver

    def families(config_, problem_name):
      return [*self.families(config_, problem_name), *extra_families]

    def problems(config_, run, families_):
      yield from _resolve(self.problems)(config_, run, families_)

    across = None
    if self.across is not None:
      def across(config_, results, shared):
        return _resolve(self.across)(config_, results, shared)

    return driver.Protocol(name=self.name, problems=problems, families=families, plot_method=self.plot_method,
                           across=across)


def load(name: str) -> Experiment:
  """The registered experiment `name` (imports its config module only)."""
  if name not in REGISTRY:
    raise ValueError(f"--experiment: unknown experiment {name!r}; expected one of {sorted(REGISTRY)}")
  experiment = importlib.import_module(REGISTRY[name]).EXPERIMENT
  if not isinstance(experiment, Experiment) or experiment.name != name:
    raise RuntimeError(f"{REGISTRY[name]}.EXPERIMENT is not the Experiment {name!r}")
  return experiment
