"""What an experiment is, in one place, and the registry of experiments.

An experiment is one `Experiment` value, `EXPERIMENT`, defined in its config module (the module
`REGISTRY` names). That module imports only ml_collections and `ksurrogate_experiments.common` (and this
module), so `--help` and config checks never import a pipeline, JAX models or an environment
library: the pipeline is named by a string ("package.module:function") and imported when the
experiment runs.

An experiment provides:
  name, configs     its named configs, each a `Variant` (a one-line description for --help and the
                    big_vision facts: the exact command and its measured runtime; what it gives is in results/)
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
`parse_config`, `validate` and `protocol` are the same for every experiment (below); the driver
never special-cases one. `describe()` is the experiments' part of `--help`.
"""
from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Any, Callable, Mapping, Optional, Sequence

from absl import flags
from ml_collections import config_flags

from ksurrogate_experiments import common
from ksurrogate_experiments import results

# name -> the module holding its EXPERIMENT (imported on demand).
REGISTRY = {
    "reference": "ksurrogate_experiments.reference.config",
    "modular": "ksurrogate_experiments.modular.config",
    "morl": "ksurrogate_experiments.morl.config",
    "icl": "ksurrogate_experiments.icl.config",
    "tasks": "ksurrogate_experiments.tasks.config",
    "regmix": "ksurrogate_experiments.regmix.config",
}
DEFAULT = "reference"


@dataclasses.dataclass(frozen=True)
class Variant:
  """One named config: what --help says about it and how long it takes. What it gives is not typed
  here: a figure in code goes stale unseen, so results live in results/ (rendered into RESULTS.md)."""
  description: str   # one line for --help
  command: str       # the exact command that runs it
  runtime: str       # measured, with the machine


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

  def parse_config(self, name: str, args: Sequence[str]):
    """The config `name` (one of `configs`, or PATH:ARG of any config file as config_flags takes
    it) with the `--config.FIELD=VALUE` overrides among `args` applied.

    config_flags parses the overrides (each as its field's type; a tuple as a Python literal or
    bare comma-separated words, `common.tuple_override`; an `Optional[int]` field also as None);
    a field the config does not have, or a value its type refuses, is one ValueError line that
    starts with the argument. Ranges are `validate`'s.

    Args:
      name: the config's name.
      args: the command line without the flags parsed before (args[0] is the program).

    Returns:
      (config, the arguments left: the program and anything that is not an override).
    """
    config_flags.register_flag_parser_for_type(Optional[int], _OptionalIntParser())
    fv, known = flags.FlagValues(), None
    try:
      if ":" in name or "/" in name:
        config_flags.DEFINE_config_file("config", name, flag_values=fv, sys_argv=list(args[:1]), lock_config=False)
        fv(list(args[:1]))
        base = fv.config
      else:
        base = self.get_config(name)
      known = dict(common.fields(base))   # before the overrides change `base`
      sections = {f.rsplit(".", i)[0] for f in known for i in range(1, f.count(".") + 1)}
      unknown = lambda field: field not in known and field not in sections  # noqa: E731
      fv = flags.FlagValues()
      config_flags.DEFINE_config_dict("config", base, flag_values=fv, sys_argv=list(args), lock_config=False,
                                      accept_new_attributes=True)
      rest = fv(list(args), known_only=True)
    except flags.Error as e:
      raise ValueError(flag_error(e, fv)) from None
    except (OSError, AttributeError, KeyError) as e:
      # config_flags adds an unknown field but not an unknown section: name the override it fails on
      given = [a.split("=", 1)[0][len("--config."):] for a in args if a.startswith("--config.")]
      field = next((f for f in given if unknown(f)), None) if known is not None else None
      if field is None:
        raise ValueError(f"--config: {' '.join(str(e).split())}") from None
      raise ValueError(f"--config.{field}: no such field in {self.name}'s config {name!r} (--help lists them)") from None
    config = fv.config
    for field, parsed in fv["config"].override_values.items():
      if unknown(field):
        raise ValueError(f"--config.{field}: no such field in {self.name}'s config {name!r} (--help lists them)")
      if isinstance(known.get(field), tuple):
        section, _, key = field.rpartition(".")
        (common.value(config, section) if section else config)[key] = common.tuple_override(field, parsed, known[field])
    config.lock()
    return config, rest

  def validate(self, config, *, memory_available: Optional[int] = None) -> None:
    """Every field's range (`rules`), then the checks across fields, then this machine's memory;
    each error is one ValueError line that starts with the field to change."""
    common.check(config, self.rules)
    self.checks(config)
    if "surrogates" in config:   # the family names exist (this imports the library, not a pipeline)
      self.families(config, self.name)
    common.check_memory(self.memory(config), available=memory_available)

  def train_and_evaluate(self, config, workdir) -> None:
    """Runs every phase of the experiment under a checked `config`, stored in `workdir` (a
    `runs.Run`: finished phases are reused), and the driver's scoring, summary and figures.

    Args:
      config: the config, checked by `validate`.
      workdir: the run directory (`runs.check_workdir`).
    """
    from ksurrogate.harness import driver, runs
    with runs.Run(workdir, name=self.name, progress=config.get("progress", True), config=config) as run:
      driver.run(self.protocol(config), config, run)

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


class _OptionalIntParser(flags.ArgumentParser):
  """config_flags' parser of `common.optional_int` fields: an int, or None."""

  def parse(self, argument):
    if argument is None or isinstance(argument, int):
      return argument
    return None if argument.strip() == "None" else int(argument)

  def flag_type(self) -> str:
    return common.type_name(Optional[int])


def flag_error(error: Exception, flag_values: flags.FlagValues) -> str:
  """A flags error as the CLI prints it.

  Args:
    error: an absl `flags.Error`.
    flag_values: the flag set it was raised on (for the flag's type).

  Returns:
    One line: a value its type refuses ("flag --F=V: why") as "--F: expected TYPE, got 'V'", any
    other error as its own text on one line.
  """
  found = re.match(r"flag --([^=\s]+)=(.*?): ", str(error))
  if found and found[1] in flag_values:
    return f"--{found[1]}: expected {flag_values[found[1]].flag_type()}, got {found[2]!r}"
  return " ".join(str(error).split())


def _stored_result(experiment: str, config: str) -> str:
  path = results.RESULTS_DIR / f"{experiment}-{config}.json"
  return f"RESULTS.md, from {path.relative_to(results.ROOT)}" if path.is_file() else "none stored in results/"


def describe() -> str:
  """The experiments' part of `--help`.

  Returns:
    Each registered experiment's configs (description, command, runtime, its stored result if
    results/ holds one) and every field
    of its default config with its default and type, as text.
  """
  lines = []
  for name in REGISTRY:
    experiment = load(name)
    lines.append(f"experiment {name}:")
    for cname, v in experiment.configs.items():
      mark = " (default)" if cname == experiment.default_config else ""
      lines += [f"  --config={cname}{mark}: {v.description}", f"      command: {v.command}  [{v.runtime}]",
                f"      result:  {_stored_result(name, cname)}"]
    lines.append(f"  fields (defaults of --config={experiment.default_config}):")
    config = experiment.get_config(experiment.default_config)
    for field, value in common.fields(config):
      kind = common.type_name(common.field_type(config, field))
      if isinstance(value, tuple) and value:
        kind = f"tuple of {type(value[0]).__name__}"
      lines.append(f"    --config.{field}={common.shown(value)}  [{kind}]")
    lines.append("")
  return "\n".join(lines)


def load(name: str) -> Experiment:
  """The registered experiment `name` (imports its config module only)."""
  if name not in REGISTRY:
    raise ValueError(f"--experiment: unknown experiment {name!r}; expected one of {sorted(REGISTRY)}")
  experiment = importlib.import_module(REGISTRY[name]).EXPERIMENT
  if not isinstance(experiment, Experiment) or experiment.name != name:
    raise RuntimeError(f"{REGISTRY[name]}.EXPERIMENT is not the Experiment {name!r}")
  return experiment
