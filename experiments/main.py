"""Runs any experiment through the shared attribution driver.

  ksurrogate-run                                   # the default experiment and config
  ksurrogate-run --experiment=reference --workdir=runs/ref
  ksurrogate-run --experiment=modular --config=tiny --config.train.num_steps=80
  ksurrogate-run --help                            # experiments, configs and fields

`--config` names one of the experiment's configs (or, as ml_collections' config_flags takes it,
PATH:ARG of any config file); `--config.SECTION.FIELD=VALUE` overrides a field (type-checked, then
range-checked by the experiment's `validate` before anything runs). A tuple field takes its items
comma-separated (`--config.objectives=balance,stay_left`) or as a Python literal
(`--config.design.pairs='((1,2),(3,4))'`); a field shown as None takes a value of its type, or
None. Results go to --workdir (default runs/default); a killed or interrupted run resumes from its
finished phases when rerun with the same command.
"""
from __future__ import annotations

import ast
import pathlib
import shlex
import signal
import sys
import warnings
from typing import Optional

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ksurrogate_experiments import common
from ksurrogate_experiments import contract

DEFAULT_WORKDIR = "runs/default"

_EXPERIMENT = flags.DEFINE_string("experiment", contract.DEFAULT, f"one of {sorted(contract.REGISTRY)}")
_WORKDIR = flags.DEFINE_string("workdir", DEFAULT_WORKDIR, "where summary.json, arrays and plots go")
# Several processes on one run (one per host or GPU; README "Across hosts"): --distributed reads the
# group from the launcher (SLURM, Open MPI, Kubernetes, TPU pods), or give the three values.
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "join a jax.distributed group (auto-detected from the launcher)")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (implies --distributed)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in the group (implies --distributed)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index, 0 .. num_processes - 1")


def load_experiment(name: str) -> contract.Experiment:
  """The registered experiment (its config module only; a usage error for an unknown name)."""
  try:
    return contract.load(name)
  except ValueError as e:
    _fail(str(e))


def config_file(experiment: contract.Experiment) -> str:
  """The file that defines the experiment's get_config (what config_flags loads)."""
  return str(pathlib.Path(experiment.get_config.__code__.co_filename).resolve())


def _flag_value(argv, name):
  value = None
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


# --config.F=None for fields that default to None: config_flags cannot parse None into an int
# field, so these are taken out of argv and applied once the config is parsed.
_NONE_OVERRIDES: list[str] = []


def prepare_argv(argv, flag_values=flags.FLAGS):
  """Defines --config for the chosen experiment and rewrites `--config=NAME` into config_flags'
  `--config=FILE:NAME` form and tuple overrides into Python literals. Every override is
  type-checked here, one line per error. Returns the new argv."""
  name = _flag_value(argv, "experiment") or contract.DEFAULT
  experiment = load_experiment(name)
  path = config_file(experiment)
  variant = _flag_value(argv, "config") or experiment.default_config
  config = None
  if ":" not in variant and "/" not in variant:
    try:
      config = experiment.get_config(variant)
    except ValueError as e:
      _fail(str(e))
  _NONE_OVERRIDES.clear()
  out = []
  for arg in argv:
    if arg.startswith("--config=") and ":" not in arg and "/" not in arg:
      arg = f"--config={path}:{arg.split('=', 1)[1]}"
    elif arg.startswith("--config.") and config is not None:
      field, _, text = arg[len("--config."):].partition("=")
      defaults = dict(common.fields(config))
      sections = {f.rsplit(".", 1)[0] for f in defaults if "." in f}
      if field not in defaults and field not in sections:
        _fail(f"--config.{field}: no such field in {name}'s config {variant!r} (--help lists them)")
      if field in defaults:
        rule = experiment.rules.get(field)
        text = parse_override(config, field, text, nullable=rule is not None and rule.ok(None))
        if text is None:
          _NONE_OVERRIDES.append(field)
          continue
        arg = f"--config.{field}={text}"
    out.append(arg)
  config_flags.DEFINE_config_file("config", f"{path}:{experiment.default_config}",
                                  "a config name of the experiment (see --help)", flag_values=flag_values,
                                  lock_config=True, sys_argv=out)
  return out


def _field_type(config, field: str) -> type:
  """The declared type of a field (None-valued fields declare theirs as typed placeholders)."""
  section, _, key = field.rpartition(".")
  node = common.value(config, section) if section else config
  return node.get_type(key)


def _tuple_items(text: str) -> list:
  """The items of a tuple override: a Python literal, else comma-separated bare words."""
  try:
    parsed = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    body = text.strip()
    if body[:1] + body[-1:] in ("()", "[]"):
      body = body[1:-1]
    return [item.strip() for item in body.split(",") if item.strip()]
  return list(parsed) if isinstance(parsed, (tuple, list)) else [parsed]


def _convert_items(items: list, default) -> list:
  """Items cast to the type of the default's items (str, int, float; nested tuples as given)."""
  kinds = {type(x) for x in default}
  if len(kinds) != 1:
    return items
  (kind,) = kinds
  out = []
  for item in items:
    if kind in (tuple, list):
      if not isinstance(item, (tuple, list)):
        raise ValueError
      out.append(tuple(item))
    elif kind is str:
      out.append(str(item))
    elif kind is int:
      if isinstance(item, (float, bool)):
        raise ValueError
      out.append(int(item))
    elif kind is float:
      out.append(float(item))
    else:
      out.append(item)
  return out


def parse_override(config, field: str, text: str, *, nullable: bool = False):
  """The text config_flags should parse for `--config.FIELD=text`, after the type check it would
  make (as a one-line error: absl's is two lines with rc 1); None for a None override of a field
  that may be None."""
  kind = _field_type(config, field)
  default = common.value(config, field)
  if text == "None" and (nullable or default is None):
    return None
  try:
    if kind is bool:
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError
    elif kind is int:
      int(text)
    elif kind is float:
      float(text)
    elif kind in (tuple, list):
      return repr(tuple(_convert_items(_tuple_items(text), default)))
  except ValueError:
    if kind in (tuple, list):
      plain = default and not isinstance(default[0], (tuple, list))
      what = f"a tuple like {_shown(default) if plain else repr(default)}"
    else:
      what = kind.__name__
    _fail(f"--config.{field}: expected {what}, got {text!r}")
  return text


def usage() -> str:
  lines = [__doc__.strip(), "", "flags:",
           f"  --experiment   one of {sorted(contract.REGISTRY)} (default {contract.DEFAULT})",
           f"  --workdir      results directory (default {DEFAULT_WORKDIR})",
           "  --config       a config name below (each experiment's default is marked)",
           "  --config.F=V   override field F (tuples: a,b,c or a Python literal; None-valued fields: a value or None)",
           "  --distributed  one of several processes sharing the run (or --coordinator_address=HOST:PORT",
           "                 --num_processes=N --process_id=I); see README, \"Across hosts\"",
           ""]
  for name in contract.REGISTRY:
    experiment = contract.load(name)
    lines.append(f"experiment {name}:")
    for cname, v in experiment.configs.items():
      mark = " (default)" if cname == experiment.default_config else ""
      lines.append(f"  --config={cname}{mark}: {v.description}")
      lines.append(f"      command: {v.command}  [{v.runtime}]")
      lines.append(f"      result:  {v.result}")
    lines.append(f"  fields (defaults of --config={experiment.default_config}):")
    config = experiment.get_config(experiment.default_config)
    for field, value in common.fields(config):
      kind = _field_type(config, field).__name__
      if isinstance(value, tuple) and value:
        kind = f"tuple of {type(value[0]).__name__}"
      lines.append(f"    --config.{field}={_shown(value)}  [{kind}]")
    lines.append("")
  return "\n".join(lines)


def _shown(value) -> str:
  """A value as it is typed in a shell (quoted where needed; a tuple of plain items
  comma-separated, a nested one as a literal without spaces)."""
  if isinstance(value, tuple) and value and all(isinstance(x, (str, int, float)) for x in value):
    return shlex.quote(",".join(str(x) for x in value))
  if isinstance(value, tuple):
    return shlex.quote(repr(value).replace(" ", ""))
  return shlex.quote(value) if isinstance(value, str) else str(value)


def one_line_warning(message, category, filename, lineno, line=None) -> str:
  """warnings.formatwarning for the CLI: one line (the default adds the source line below)."""
  del line
  return f"{category.__name__}: {' '.join(str(message).split())} ({pathlib.Path(filename).name}:{lineno})\n"


def _fail(message: str):
  """A usage error in one line (absl's UsageError would print the whole module doc first)."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:   # orbax logs every save at INFO; keep the console readable
    logging.set_verbosity(logging.WARNING)
  from ksurrogate.harness import driver, runs  # imported here so --help stays fast
  experiment = load_experiment(_EXPERIMENT.value)
  config = finish_config(experiment, flags.FLAGS.config)
  try:
    workdir = runs.check_workdir(_WORKDIR.value)
  except ValueError as e:
    _fail(str(e))
  signal.signal(signal.SIGTERM, runs.request_stop)
  signal.signal(signal.SIGINT, runs.request_stop)
  try:
    with runs.Run(workdir, name=_EXPERIMENT.value, progress=config.get("progress", True), config=config) as run:
      driver.run(experiment.protocol(config), config, run)
  except KeyboardInterrupt:
    print(f"\ninterrupted: finished phases in {workdir} are kept; rerun the same command to resume", file=sys.stderr)
    sys.exit(130)
  except (runs.DifferentConfigError, runs.WorkdirInUse, runs.StorageError, runs.NonFiniteOutcomes) as e:
    _fail(str(e))
  except driver.Unmeasurable as e:   # the design cannot measure anything: stopped after its first outcomes
    print(f"stopped: {e}", file=sys.stderr)
    sys.exit(1)


def finish_config(experiment: contract.Experiment, config):
  """The parsed config with its None overrides applied, range-checked by the experiment's
  `validate` (a bad setting exits 2 with its one line, before anything runs)."""
  for field in _NONE_OVERRIDES:
    section, _, key = field.rpartition(".")
    (common.value(config, section) if section else config)[key] = None
  try:
    experiment.validate(config)
  except ValueError as e:
    _fail(str(e))
  return config


def configure(argv):
  """(experiment, checked config) for a command line, built exactly as the CLI builds them but on
  a fresh flag set: for tests and scripts. A bad setting exits 2 with its one line."""
  fv = flags.FlagValues()
  argv = prepare_argv(list(argv), flag_values=fv)
  fv([argv[0]] + [a for a in argv[1:] if a.startswith("--config")])
  experiment = load_experiment(_flag_value(argv, "experiment") or contract.DEFAULT)
  return experiment, finish_config(experiment, fv.config)


def group_from_argv(argv) -> Optional[tuple]:
  """(coordinator_address, num_processes, process_id) when the command line asks to join a
  jax.distributed group (None values: detected from the launcher), else None. Read from the raw
  argv: the group must be joined before the experiment's modules are imported (some of their
  dependencies compute at import, which starts JAX's backend)."""
  coordinator, n, pid = (_flag_value(argv, f) for f in ("coordinator_address", "num_processes", "process_id"))
  switch = _flag_value(argv, "distributed")
  on = "--distributed" in argv or (switch is not None and switch.lower() in ("true", "1"))
  if not on and coordinator is None and n is None and pid is None:
    return None
  try:
    return coordinator, None if n is None else int(n), None if pid is None else int(pid)
  except ValueError:
    _fail(f"--num_processes / --process_id: expected integers, got {n!r} / {pid!r}")


def run_cli(argv=None):
  argv = list(sys.argv if argv is None else argv)
  warnings.formatwarning = one_line_warning
  if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
    print(usage())
    sys.exit(0)
  group = group_from_argv(argv)
  if group is not None:
    from ksurrogate.harness import runs
    runs.initialize_distributed(*group, on_error=_fail)
  app.run(main, argv=prepare_argv(argv))


if __name__ == "__main__":
  run_cli()
