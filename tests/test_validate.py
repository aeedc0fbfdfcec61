"""Every setting is checked before the first phase: one line naming the field, exit code 2.

The cases run through the CLI's own parsing (`main.configure`: the same flags, config_flags
and validate as a real run, on a fresh flag set) in-process; a few run as real subprocesses."""
import pathlib
import shlex
import subprocess
import sys
import warnings

import pytest

from ksurrogate_experiments import common
from ksurrogate_experiments import contract
from ksurrogate_experiments import main
from ksurrogate import families

ROOT = pathlib.Path(__file__).resolve().parents[1]
HUGE = "1000000000"

# (command-line arguments, the start of the one error line); issue 16's cases first.
REFUSED = [
    (["--experiment=modular", "--config=tiny", "--config.surrogates.cv=1"], "surrogates.cv: must be an integer >= 2, got 1"),
    (["--experiment=modular", "--config=tiny", "--config.surrogates.cv=6"],
     "surrogates.cv: 6 folds exceed the 5 subsets of the smallest fit set (finetune.num_fit)"),
    (["--experiment=modular", "--config=tiny", "--config.surrogates.exact_krr_max=1"],
     "--config.surrogates.exact_krr_max: no such field in modular's config 'tiny'"),
    (["--experiment=modular", "--config=tiny", "--config.data.target_variance_threshold=inf"],
     "data.target_variance_threshold: must be a finite number >= 0, got inf"),
    (["--experiment=modular", "--config=tiny", "--config.model.num_heads=3"],
     "model.num_heads: 3 must divide model.d_model=16"),
    (["--experiment=modular", "--config=tiny", f"--config.estimate.dim={HUGE}"],
     "estimate.dim: the projected features (121 rows x 1000000000) and the one-step statistics "),
    (["--experiment=modular", "--config=tiny", f"--config.estimate.num_subsets={HUGE}"],
     "estimate.num_subsets: 1000000000 exceeds the 696 distinct subsets of 13..15 of 16 tasks (estimate.sizes)"),
    (["--experiment=modular", "--config=tiny", f"--config.design.num_subsets={HUGE}"],
     "design.num_subsets: 1000000000 exceeds the C(16, 13) = 560 distinct subsets of design.size=13 tasks"),
    (["--experiment=modular", "--config=tiny", "--config.data.p=2"], "data.p: must be an integer >= 3, got 2"),
    (["--experiment=modular", "--config=tiny", "--config.data.bar=11"], "data.bar: 11 must be below data.p=11"),
    (["--experiment=modular", "--config=tiny", "--config.estimate.sizes=abc"],
     "--config.estimate.sizes: expected a tuple like 13,15, got 'abc'"),
    (["--experiment=modular", "--config=tiny", "--config.estimate.sizes=14,17"],
     "estimate.sizes: expected low <= high <= 16 (the number of tasks), got (14, 17)"),
    (["--experiment=modular", "--config=tiny", "--config.train.batch_size=0"],
     "train.batch_size: must be None or an integer >= 1, got 0"),
    (["--experiment=modular", "--config=tiny", "--config.train.batch_size=5000"],
     "train.batch_size: 5000 exceeds the 97 training examples"),
    (["--experiment=modular", "--config=tiny", "--config.train.batch_size=abc"],
     "--config.train.batch_size: expected int or None, got 'abc'"),
    (["--experiment=modular", "--config=tiny", "--config.finetune.lr=nan"], "finetune.lr: must be a finite number > 0"),
    (["--experiment=modular", "--config=tiny", "--config.min_varying_targets=25"],
     "min_varying_targets: 25 exceeds the 24 targets"),   # 30 asked, 24 validation pairs exist
    (["--experiment=modular", "--config=tiny", "--config.study.budget_rate=0.6"],
     "study.budget_rate: 0.6 must be one of study.rates (0.5, 0.7, 0.9)"),
    (["--experiment=modular", "--config=tiny", "--config.seed=-1"], "seed: must be an integer in [0, "),
    (["--experiment=reference", "--config.data.dir=/nonexistent"], "data.dir: '/nonexistent' does not exist"),
    (["--experiment=reference", "--config.surrogates.cv=1"], "surrogates.cv: must be an integer >= 2, got 1"),
    (["--experiment=reference", "--config.surrogates.cv=41", "--config.design.num_fit=60"],
     "surrogates.cv: 41 folds exceed the 40 subsets of the smallest fit set"),
    (["--experiment=reference", "--config.data.datasets=modular_add"],
     "data.datasets: ('modular_add',) item 'modular_add' is not one of"),
    (["--experiment=reference", "--config.eval.resplits=1"], "eval.resplits: must be an integer >= 2, got 1"),
    (["--experiment=reference", "--config.surrogates.families=kernel,krr"],
     f"surrogates.families: unknown ['krr']; expected some of {[f.name for f in families.standard()]} (or 'standard' "
     "for all)"),
    (["--experiment=icl", "--config=tiny", "--config.model.gguf_path=missing.gguf"],
     "model.gguf_path: 'missing.gguf' cannot be read (No such file or directory)"),
    (["--experiment=icl", "--config=tiny", f"--config.model.gguf_path={__file__}"],
     f"model.gguf_path: '{__file__}' is not a GGUF file (it does not start with b'GGUF')"),
    (["--experiment=icl", "--config=tiny", "--config.data.num_demos=7"],
     "data.num_demos: must be an even integer >= 2 (balanced classes), got 7"),
    (["--experiment=icl", "--config=tiny", "--config.data.num_demos=100000"], "data.num_demos: all C(100000, 4) = "),
    (["--experiment=icl", "--config=tiny", f"--config.estimate.num_subsets={HUGE}"],
     "estimate.num_subsets: 1000000000 exceeds the 11880 distinct ordered prompts"),
    (["--experiment=icl", "--config=tiny", "--config.surrogates.cv=17"],
     "surrogates.cv: 17 folds exceed the design.num_fit=16 fitted prompts"),
    (["--experiment=morl", "--config=tiny", "--config.objectives=balance,stay_left"],
     "objectives: must be a tuple of 3+ distinct items"),
    (["--experiment=morl", "--config=tiny", "--config.objectives=(balance,nope,stay_left)"],
     "objectives: ('balance', 'nope', 'stay_left') item 'nope' is not one of 'balance'"),
    (["--experiment=morl", "--config=tiny", "--config.design.pairs=0,1"],
     "--config.design.pairs: expected a tuple like ((1, 2), (3, 4)), got '0,1'"),
    (["--experiment=morl", "--config=tiny", "--config.design.pairs=((0,7),)"],
     "design.pairs: (0, 7) is not a pair of distinct objective indices in [0, 5)"),
    (["--experiment=morl", "--config=tiny", f"--config.estimate.dim={HUGE}"], "estimate.dim: the projected features"),
    (["--experiment=modular", "--config=tiny", f"--config.truth.seeds={HUGE}"],
     "truth.seeds: 1000000000 truth seeds x 17 retrains (17000000000 retrains of 40 steps) would take at least ~"),
    (["--experiment=modular", "--config=tiny", f"--config.eval.resplits={HUGE}"],
     "eval.resplits: 1000000000 re-splits x 5 families (5000000000 fits of 10 subsets) would take at least ~"),
    (["--experiment=modular", "--config=tiny", f"--config.eval.bootstrap={HUGE}"], "eval.bootstrap: 1000000000 bootstrap"),
    (["--experiment=morl", "--config=tiny", "--config.meta.num_envs=4"],
     "meta.num_envs: 4 env slots leave some of the 5 objectives without one"),
    # every experiment's counts bounded by the time they imply (common's cost model) or by the
    # distinct subsets its sampler can draw, before any compute
    (["--experiment=reference", "--config=tiny", f"--config.eval.resplits={HUGE}"],
     "eval.resplits: 1000000000 re-splits x 5 families x 3 problems (15000000000 fits of 40..80 subsets) would take"),
    (["--experiment=morl", "--config=tiny", f"--config.eval.resplits={HUGE}"],
     "eval.resplits: 1000000000 re-splits x 5 families (5000000000 fits of 14 subsets) would take at least ~"),
    (["--experiment=morl", "--config=tiny", f"--config.eval.bootstrap={HUGE}0"],
     "eval.bootstrap: 10000000000 bootstrap resamples x 12 methods x 1 truth of 5 x 5 effects would take at least ~"),
    (["--experiment=morl", "--config=tiny", f"--config.truth.seeds={HUGE}"],
     "truth.seeds: must be an integer in [2, 1000], got 1000000000"),
    (["--experiment=morl", "--config=tiny", "--config.truth.seeds=1000", "--config.finetune.num_updates=100000000"],
     "truth.seeds: 1000 truth seeds x 8 fine-tunes (8000 fine-tunes of 100000000 PPO updates) would take at least ~"),
    (["--experiment=morl", "--config=tiny", f"--config.finetune.num_updates={HUGE}0"],
     "finetune.num_updates: 19 fine-tunes (the fewest the rules allow) of 10000000000 PPO updates would take at least"),
    (["--experiment=morl", "--config=tiny", f"--config.meta.num_updates={HUGE}00"],
     "meta.num_updates: the meta-policy's 100000000000 PPO updates would take at least ~"),
    (["--experiment=morl", "--config=tiny", "--config.design.num_subsets=32"],
     "design.num_subsets: 32 exceeds the 31 non-empty subsets of 5 objectives"),
    (["--experiment=icl", "--config=tiny", f"--config.eval.resplits={HUGE}"],
     "eval.resplits: 1000000000 re-splits x 5 families x 3 problems (15000000000 fits of 16..80 subsets) would take"),
    (["--experiment=icl", "--config=tiny", f"--config.eval.bootstrap={HUGE}"],
     "eval.bootstrap: 1000000000 bootstrap resamples x 1584 method x truth x effect entries of 3 problems would take"),
    (["--experiment=icl", "--config=tiny", f"--config.truth.swaps_per_demo={HUGE}"],
     "truth.swaps_per_demo: 1000000000 exceeds the 31680 distinct swaps of a demonstration (4 slots x P(11, 3) prompts "
     "around it x 8 replacements)"),
    (["--experiment=icl", "--config.truth.swaps_per_demo=100000"],
     "truth.swaps_per_demo: 100000 swaps x 50 demonstrations x 2 tasks (at least 9999600 new prompts of 50 queries) "
     "would take at least ~"),
    (["--experiment=icl", "--config=tiny", "--config.design.num_subsets=496"],
     "design.num_subsets: 496 exceeds the C(12, 4) = 495 distinct demonstration sets"),
    (["--experiment=tasks", "--config=tiny", f"--config.eval.resplits={HUGE}"],
     "eval.resplits: 1000000000 re-splits x 5 families (5000000000 fits of 8 subsets) would take at least ~"),
    (["--experiment=tasks", "--config=tiny", f"--config.eval.bootstrap={HUGE}"],
     "eval.bootstrap: 1000000000 bootstrap resamples x 14 methods x 1 truth of 15 x 6 effects would take at least ~"),
    (["--experiment=tasks", "--config=tiny", f"--config.truth.seeds={HUGE}"],
     "truth.seeds: 1000000000 truth seeds x 21 fine-tunes (21000000000 fine-tunes of 3 steps) would take at least ~"),
    (["--experiment=tasks", "--config=tiny", f"--config.truth.probe_seeds={HUGE}"],
     "truth.probe_seeds: 1000000000 probe seeds x 21 fine-tunes (21000000000 fine-tunes of 3 steps) would take"),
    (["--experiment=tasks", "--config=tiny", f"--config.selection.seeds={HUGE}0"],
     "selection.seeds: 10000000000 selection seeds x 6 targets' picks (at least 60000000000 fine-tunes of 3 steps)"),
    (["--experiment=tasks", "--config=tiny", f"--config.finetune.num_steps={HUGE}0"],
     "finetune.num_steps: 46 fine-tunes (the fewest the rules allow) of 10000000000 steps of 4 would take at least ~"),
    (["--experiment=tasks", "--config=tiny", "--config.design.num_subsets=32768"],
     "design.num_subsets: 32768 exceeds the 32767 non-empty subsets of 15 tasks"),
    (["--experiment=regmix", "--config=tiny", f"--config.eval.resplits={HUGE}"],
     "eval.resplits: 1000000000 re-splits x 3 families (3000000000 fits of 48 subsets) would take at least ~"),
    (["--experiment=regmix", "--config=tiny", f"--config.eval.bootstrap={HUGE}"],
     "eval.bootstrap: 1000000000 bootstrap resamples x 3 families x 2 sizes of 256 test runs x 13 targets would take"),
    (["--experiment=regmix", "--config=tiny", f"--config.design.redraws={HUGE}"],
     "design.redraws: 1000000000 re-draws x 2 sizes x 3 families would take at least ~"),
    (["--experiment=regmix", "--config=tiny", f"--config.active.seeds={HUGE}"],
     "active.seeds: 1000000000 seeds x 2 orders x 2 sizes of kernel fits would take at least ~"),
    # the flags themselves, parsed by absl / config_flags, refused in the same one line
    (["--experiment=modular", "--config=tiny", "--config.train.num_steps=None"],
     "--config.train.num_steps: expected int, got 'None'"),
    (["--experiment=modular", "--config=tiny", "--config.nosection.field=1"],
     "--config.nosection.field: no such field in modular's config 'tiny'"),
    (["--experiment=reference", "--num_processes=two"], "--num_processes: expected int, got 'two'"),
    (["--experiment=reference", "--nosuchflag=1"], "unexpected arguments: ['--nosuchflag=1']"),
    (["--experiment=reference", "--config=/nonexistent/config.py:tiny"], "--config: "),
]


@pytest.mark.parametrize("args,message", REFUSED, ids=[a[-1].split("--config.")[-1][:40] for a, _ in REFUSED])
def test_bad_settings_are_one_line_before_any_phase(args, message, capsys):
  with pytest.raises(SystemExit) as e:
    main.configure(["main", *args])
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.startswith(f"error: {message}"), err
  assert len(err.strip().splitlines()) == 1, err


ACCEPTED = [
    (["--experiment=modular", "--config=tiny", "--config.train.batch_size=64"], "train.batch_size", 64),
    (["--experiment=modular", "--config=paper", "--config.train.batch_size=None"], "train.batch_size", None),
    (["--experiment=modular", "--config=tiny", "--config.surrogates.num_inducing=100"], "surrogates.num_inducing", 100),
    (["--experiment=modular", "--config=tiny", "--config.estimate.sizes=14,15"], "estimate.sizes", (14, 15)),
    (["--experiment=modular", "--config=tiny", "--config.estimate.sizes=(14,16)"], "estimate.sizes", (14, 16)),
    (["--experiment=morl", "--config=tiny", "--config.objectives=balance,stay_left,stay_right",
      "--config.design.num_subsets=6", "--config.design.num_fit=4", "--config.design.pairs=((1,2),)"],
     "objectives", ("balance", "stay_left", "stay_right")),
    (["--experiment=morl", "--config=tiny", "--config.design.num_subsets=12", "--config.design.num_fit=8",
      "--config.design.pairs=((1,2),)",
      "--config.objectives=(balance,stay_left,stay_right,centered)"],
     "objectives", ("balance", "stay_left", "stay_right", "centered")),
    (["--experiment=reference", "--config.data.datasets=modular_quad"], "data.datasets", ("modular_quad",)),
    (["--experiment=icl", "--config=tiny", "--config.surrogates.families=linear,kernel"], "surrogates.families",
     ("linear", "kernel")),
    # the released data has no ground truth: nothing is resampled, so any bootstrap count finishes
    (["--experiment=reference", "--config=tiny", f"--config.eval.bootstrap={HUGE}"], "eval.bootstrap", int(HUGE)),
]


@pytest.mark.parametrize("args,field,value", ACCEPTED, ids=[a[-1].split("--config.")[-1][:40] for a, _, _ in ACCEPTED])
def test_none_valued_and_tuple_fields_take_command_line_values(args, field, value, gpu_host_memory):
  _, config = main.configure(["main", *args])
  assert common.value(config, field) == value


def test_a_config_file_given_as_path_and_arg_takes_overrides(tmp_path):
  """--config=PATH:ARG loads any config file, as config_flags does; overrides and rules apply."""
  from ksurrogate_experiments.reference import config as C
  _, config = main.configure(["main", "--experiment=reference", f"--config={C.__file__}:tiny", "--config.surrogates.cv=3"])
  assert config.surrogates.cv == 3 and config.to_dict() == {**C.get_config("tiny").to_dict(), "surrogates": {
      **C.get_config("tiny").surrogates.to_dict(), "cv": 3}}


def _configs():
  for name in contract.REGISTRY:
    experiment = contract.load(name)
    for variant in experiment.configs:
      yield name, experiment, variant


@pytest.mark.parametrize("name,experiment,variant", list(_configs()), ids=[f"{n}-{v}" for n, _, v in _configs()])
def test_every_config_is_valid_and_every_listed_field_takes_its_own_value(name, experiment, variant, gpu_host_memory):
  """validate accepts every shipped config (so its rules cover every field: common.check refuses
  a field without one), and every field --help lists round-trips through the command line,
  None-valued ones included, written as --help writes it."""
  config = experiment.get_config(variant)
  experiment.validate(config)
  args = [f"--experiment={name}", f"--config={variant}"]
  for field, value in common.fields(config):
    assert common.field_type(config, field) is not type(None), f"{field} has no type: the flag parser refuses it"
    if field == "data.dir":
      continue   # checked as a directory; its value is an absolute path
    args.append(f"--config.{field}={common.shown(value)}")
  _, parsed = main.configure(["main", *shlex.split(" ".join(args))])   # as a shell splits the line
  assert parsed.to_dict() == config.to_dict()


def test_a_rule_table_that_misses_a_field_is_a_bug_not_a_user_error():
  from ksurrogate_experiments.modular import config as C
  rules = dict(C.RULES)
  del rules["train.lr"]
  with pytest.raises(RuntimeError, match=r"fields without a rule: \['train.lr'\]"):
    common.check(C.get_config("tiny"), rules)


def test_memory_bound_names_the_field_and_both_figures():
  from ksurrogate_experiments.modular import config as C
  with pytest.raises(ValueError, match=r"^design.chunk_size: 8 vmapped trainings .* needs [0-9.e-]+ GiB, more than this "
                                       r"machine's 0.000977 GiB of memory$"):
    C.EXPERIMENT.validate(C.get_config("tiny"), memory_available=1 << 10 << 10)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "ksurrogate_experiments.main", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)


def test_real_command_lines(tmp_path):
  # A None-valued field is parsed (it used to stop the flag parser: "FATAL Flags parsing error"),
  # and the run is refused on another field, before any phase.
  r = _cli("--experiment=modular", "--config=tiny", "--config.train.batch_size=64", "--config.model.num_heads=3",
           f"--workdir={tmp_path}")
  assert r.returncode == 2 and r.stderr.strip() == "error: model.num_heads: 3 must divide model.d_model=16", r.stderr
  r = _cli("--experiment=icl", "--config.model.gguf_path=missing.gguf", f"--workdir={tmp_path}")
  assert r.returncode == 2 and r.stderr.strip().startswith("error: model.gguf_path: 'missing.gguf' cannot be read")
  r = _cli("--experiment=morl", "--config=tiny", "--config.objectives=balance,stay_left", f"--workdir={tmp_path}")
  assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "objectives: must be a tuple" in r.stderr
  assert not any(tmp_path.iterdir())   # nothing ran, nothing written


def test_warnings_print_one_line():
  r = subprocess.run([sys.executable, "-c", "import warnings; from ksurrogate_experiments import common; "
                      "warnings.formatwarning = common.one_line_warning; warnings.warn('grid: edge\\n of the grid')"],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.stderr.strip().startswith("UserWarning: grid: edge of the grid (<string>:1)"), r.stderr
  assert len(r.stderr.strip().splitlines()) == 1
  line = common.one_line_warning(warnings.WarningMessage("a\nb", RuntimeWarning, "/x/y.py", 3).message, RuntimeWarning,
                                 "/x/y.py", 3, "source line")
  assert line == "RuntimeWarning: a b (y.py:3)\n"
