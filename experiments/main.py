"""Runs any experiment through the shared attribution driver.

  python -m experiments.main                                   # the default experiment and config
  python -m experiments.main --experiment=reference --workdir=runs/ref
  python -m experiments.main --experiment=modular --config=tiny --config.train.num_steps=80
  python -m experiments.main --help                            # experiments, configs and fields

`--config` names one of the experiment's configs (or, as ml_collections' config_flags takes it,
PATH:ARG of any config file); `--config.SECTION.FIELD=VALUE` overrides a field (type-checked, then
range-checked by the experiment's `validate`). Results go to --workdir (default runs/default); a
killed or interrupted run resumes from its finished phases when rerun with the same command.
"""
from __future__ import annotations

import importlib
import pathlib
import signal
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

EXPERIMENTS = {"reference": "experiments.reference", "modular": "experiments.modular", "morl": "experiments.morl", "icl": "experiments.icl"}
DEFAULT_EXPERIMENT = "reference"
DEFAULT_WORKDIR = "runs/default"

_EXPERIMENT = flags.DEFINE_string("experiment", DEFAULT_EXPERIMENT, f"one of {sorted(EXPERIMENTS)}")
_WORKDIR = flags.DEFINE_string("workdir", DEFAULT_WORKDIR, "where summary.json, arrays and plots go")


def load_experiment(name: str):
  if name not in EXPERIMENTS:
    _fail(f"--experiment: unknown experiment {name!r}; expected one of {sorted(EXPERIMENTS)}")
  return importlib.import_module(EXPERIMENTS[name])


def config_file(module) -> str:
  """The file that defines the experiment's get_config (what config_flags loads)."""
  return str(pathlib.Path(module.get_config.__code__.co_filename).resolve())


def _flag_value(argv, name):
  value = None
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def prepare_argv(argv):
  """Defines --config for the chosen experiment and rewrites `--config=NAME` into config_flags'
  `--config=FILE:NAME` form. Returns the new argv."""
  name = _flag_value(argv, "experiment") or DEFAULT_EXPERIMENT
  if name not in EXPERIMENTS:
    _fail(f"--experiment: unknown experiment {name!r}; expected one of {sorted(EXPERIMENTS)}")
  module = importlib.import_module(EXPERIMENTS[name])
  path = config_file(module)
  variant = _flag_value(argv, "config") or module.DEFAULT_CONFIG
  if ":" not in variant and "/" not in variant:
    try:
      config = module.get_config(variant)
    except ValueError as e:
      _fail(str(e))
    defaults = {f: v for f, _, v in _fields(config)}
    sections = {f.rsplit(".", 1)[0] for f in defaults if "." in f}
    for arg in argv[1:]:
      if arg.startswith("--config."):
        field, _, text = arg[len("--config."):].partition("=")
        if field not in defaults and field not in sections:
          _fail(f"--config.{field}: no such field in {name}'s config {variant!r} (--help lists them)")
        _check_type(field, defaults.get(field), text)
  out = []
  for arg in argv:
    if arg.startswith("--config=") and ":" not in arg and "/" not in arg:
      arg = f"--config={path}:{arg.split('=', 1)[1]}"
    out.append(arg)
  config_flags.DEFINE_config_file("config", f"{path}:{module.DEFAULT_CONFIG}",
                                  "a config name of the experiment (see --help)", lock_config=True)
  return out


def _fields(config, prefix=""):
  for key in sorted(config.keys()):
    value = config[key]
    path = f"{prefix}{key}"
    if hasattr(value, "keys") and hasattr(value, "to_dict"):
      yield from _fields(value, path + ".")
    else:
      yield path, type(value).__name__ if value is not None else "None (any)", value


def _check_type(field, default, text):
  """The type check config_flags makes, as a one-line error (absl's would be two lines, rc 1)."""
  kind = type(default)
  try:
    if kind is bool:
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError
    elif kind is int:
      int(text)
    elif kind is float:
      float(text)
  except ValueError:
    _fail(f"--config.{field}: expected {kind.__name__}, got {text!r}")


def usage() -> str:
  lines = [__doc__.strip(), "", "flags:",
           f"  --experiment   one of {sorted(EXPERIMENTS)} (default {DEFAULT_EXPERIMENT})",
           f"  --workdir      results directory (default {DEFAULT_WORKDIR})",
           "  --config       a config name below (each experiment's default is marked)",
           "  --config.F=V   override field F", ""]
  for name, path in EXPERIMENTS.items():
    module = importlib.import_module(path)
    lines.append(f"experiment {name}:")
    for cname, text in module.DESCRIPTIONS.items():
      mark = " (default)" if cname == module.DEFAULT_CONFIG else ""
      lines.append(f"  --config={cname}{mark}: {text}")
    lines.append(f"  fields (defaults of --config={module.DEFAULT_CONFIG}):")
    for field, kind, value in _fields(module.get_config(module.DEFAULT_CONFIG)):
      lines.append(f"    --config.{field}={value!r}  [{kind}]")
    lines.append("")
  return "\n".join(lines)


def _fail(message: str):
  """A usage error in one line (absl's UsageError would print the whole module doc first)."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:   # orbax logs every save at INFO; keep the console readable
    logging.set_verbosity(logging.WARNING)
  from ksurrogate import driver, runs  # imported here so --help stays fast
  module = load_experiment(_EXPERIMENT.value)
  config = flags.FLAGS.config
  try:
    module.validate(config)
    workdir = runs.check_workdir(_WORKDIR.value)
  except ValueError as e:
    _fail(str(e))
  signal.signal(signal.SIGTERM, runs.request_stop)
  signal.signal(signal.SIGINT, runs.request_stop)
  try:
    with runs.Run(workdir, name=_EXPERIMENT.value, progress=config.get("progress", True), config=config) as run:
      driver.run(module.protocol(config), config, run)
  except KeyboardInterrupt:
    print(f"\ninterrupted: finished phases in {workdir} are kept; rerun the same command to resume", file=sys.stderr)
    sys.exit(130)
  except (runs.DifferentConfigError, runs.WorkdirInUse, runs.StorageError, runs.NonFiniteOutcomes) as e:
    _fail(str(e))


def run_cli(argv=None):
  argv = list(sys.argv if argv is None else argv)
  if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
    print(usage())
    sys.exit(0)
  app.run(main, argv=prepare_argv(argv))


if __name__ == "__main__":
  run_cli()
