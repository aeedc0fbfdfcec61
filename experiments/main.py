"""Runs any experiment through the shared attribution driver.

  ksurrogate-run --experiment=modular --config=tiny --config.train.num_steps=80 --workdir=runs/mod
  ksurrogate-run --help                            # these flags, every experiment, config and field

--config.F=V overrides field F (a tuple as a,b,c or a Python literal; a None-valued field takes a
value or None); rerun the same command to resume a killed run.
"""
from __future__ import annotations

import signal
import sys
import warnings

from absl import app, flags, logging

from ksurrogate_experiments import common, contract, cores


def _define(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("experiment", contract.DEFAULT, f"one of {sorted(contract.REGISTRY)}", flag_values=fv)
  flags.DEFINE_string("config", None, "a config of the experiment (its default when not given; below), or PATH:ARG "
                      "of a config file", flag_values=fv)
  flags.DEFINE_string("workdir", "runs/default", "where summary.json, arrays and plots go", flag_values=fv)
  flags.DEFINE_bool("distributed", False, "one of several processes sharing the run, the group read from the "
                    "launcher (docs/scaling.md)", flag_values=fv)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (implies --distributed)", flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "processes in the group (implies --distributed)", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "this process's index, 0 .. num_processes - 1", flag_values=fv)
  flags.DEFINE_string("cores", "auto", "CPU cores to run on: auto (one when the machine is already busy, else "
                      "all), all, or a number (docs/scaling.md)", flag_values=fv)


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)   # absl's UsageError would print the module doc first
  sys.exit(2)


def _parse(argv, fv: flags.FlagValues, *, to_run: bool = False) -> tuple:
  """(experiment, checked config, workdir) of a command line: the flags above, then the experiment's
  config flag and `validate`; `to_run`: first joins the process group the flags name (before any
  pipeline is imported), and checks the workdir. A bad setting exits 2 with its one line."""
  _define(fv)
  try:
    rest = fv(list(argv), known_only=True)
    fv.mark_as_parsed()
    if to_run and (fv.distributed or any(fv[f].present for f in ("coordinator_address", "num_processes", "process_id"))):
      from ksurrogate.harness import runs
      runs.initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id, on_error=_fail)
    experiment = contract.load(fv.experiment)
    config, rest = experiment.parse_config(fv.config or experiment.default_config, rest)
    if len(rest) > 1:
      raise ValueError(f"unexpected arguments: {rest[1:]}")
    experiment.validate(config)
    if to_run:
      from ksurrogate.harness import runs
      return experiment, config, runs.check_workdir(fv.workdir), cores.choose(fv.cores)
  except flags.Error as e:
    _fail(contract.flag_error(e, fv))
  except ValueError as e:
    _fail(str(e))
  return experiment, config, fv.workdir


def configure(argv):
  """The experiment and checked config of a command line, built as the CLI builds them but on a
  fresh flag set (for tests and scripts); a bad setting exits 2 with its one line.

  Args:
    argv: the command line, argv[0] the program.

  Returns:
    (contract.Experiment, its validated config).
  """
  return _parse(argv, flags.FlagValues())[:2]


def main(parsed) -> None:
  experiment, config, workdir, (count, why) = parsed
  total = len(cores.available())
  if count < total:
    cores.limit(count)
    print(f"[cores] running on {count} of {total} cores: {why}")
  if not flags.FLAGS["verbosity"].present:   # orbax logs every save at INFO; keep the console readable
    logging.set_verbosity(logging.WARNING)
  from ksurrogate.harness import driver, runs   # here, so --help stays fast
  signal.signal(signal.SIGTERM, runs.request_stop)
  signal.signal(signal.SIGINT, runs.request_stop)
  try:
    experiment.train_and_evaluate(config, workdir)
  except KeyboardInterrupt:
    print(f"\ninterrupted: finished phases in {workdir} are kept; rerun the same command to resume", file=sys.stderr)
    sys.exit(130)
  except driver.Unmeasurable as e:   # the design cannot measure anything: stopped after its first outcomes
    print(f"stopped: {e}", file=sys.stderr)
    sys.exit(1)
  except (runs.DifferentConfigError, runs.WorkdirInUse, runs.StorageError, runs.NonFiniteOutcomes) as e:
    _fail(str(e))


def run_cli(argv=None):
  """The `ksurrogate-run` console script."""
  argv = list(sys.argv if argv is None else argv)
  warnings.formatwarning = common.one_line_warning
  if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
    fv = flags.FlagValues()
    _define(fv)
    listed = fv.get_help(include_special_flags=False).split(":\n", 1)[1]   # less absl's module-name line
    print(f"{__doc__.strip()}\n\nflags:\n{listed}\n\n{contract.describe()}")
    sys.exit(0)
  app.run(main, argv=argv, flags_parser=lambda args: _parse(args, flags.FLAGS, to_run=True))


if __name__ == "__main__":
  run_cli()
