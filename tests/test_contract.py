"""The experiment contract: every registered experiment fulfils it, the registry is lazy, and the
checklist "Adding an experiment" (docs/experiments.md), followed step by step for a throwaway synthetic
experiment, gives an experiment that --help lists and that runs end to end with every
surrogate family, intervals and a ceiling; a user's own surrogate family joins through the
protocol."""
import json
import sys
import textwrap

import numpy as np
import pytest

from ksurrogate_experiments import common
from ksurrogate_experiments import contract
from ksurrogate_experiments import main
from ksurrogate import families
from ksurrogate import surrogates
from ksurrogate.harness import driver, runs


@pytest.mark.parametrize("name", sorted(contract.REGISTRY))
def test_every_registered_experiment_fulfils_the_contract(name, gpu_host_memory):
  e = contract.load(name)
  assert e.name == name and e.default_config in e.configs
  for variant, facts in e.configs.items():
    assert facts.description and facts.command.startswith(("ksurrogate-run", "OUT=")), variant
    assert facts.runtime
    config = e.get_config(variant)
    e.validate(config)                                    # the rules cover every field
    assert set(dict(common.fields(config))) >= set(common.SHARED_RULES)
  module, _, function = e.problems.partition(":")
  assert module.startswith(f"ksurrogate_experiments.{name}.") and function == "problems"


def test_an_unknown_experiment_is_one_line():
  with pytest.raises(ValueError, match=r"^--experiment: unknown experiment 'nope'; expected one of \["):
    contract.load("nope")


# The docs/experiments.md checklist, step by step: (1) a package with a docstring, (2) config.py holding the
# configs, rules, checks, memory and EXPERIMENT, (3) pipeline.py yielding driver Problems from
# stored phases, (4) one line in contract.REGISTRY, (5) a tiny config end to end.
INIT = '"""`synth`: a throwaway synthetic experiment (tests/test_contract.py)."""\n'

CONFIG = '''
"""Configs of `synth`."""
from ksurrogate_experiments import common
from ksurrogate_experiments import contract

CONFIGS = {
    "tiny": contract.Variant(
        description="8 tasks, one planted pair, 60 random subsets; seconds",
        command="ksurrogate-run --experiment=synth --config=tiny --workdir=/tmp/synth",
        runtime="~30 s on 2 cores"),
}
VARIANTS = {"tiny": {"eval": dict(resplits=3, bootstrap=100), "surrogates": dict(cv=3)}}


def get_config(arg="tiny"):
  c = common.base_config("synth", arg, VARIANTS)
  c.data = dict(num_tasks=8, num_targets=3, noise=0.05)
  c.design = dict(num_subsets=60, num_fit=40, chunk_size=16)
  c.truth = dict(seeds=3)
  return common.apply_variant(c, VARIANTS[arg])


RULES = {
    **common.SHARED_RULES,
    "data.num_tasks": common.integer(3),
    "data.num_targets": common.integer(1),
    "data.noise": common.number(0.0),
    "design.num_subsets": common.integer(4),
    "design.num_fit": common.integer(2),
    "design.chunk_size": common.integer(1),
    "truth.seeds": common.integer(2),
}


def checks(c):
  common.require(c.design.num_fit <= c.design.num_subsets - 2, "design.num_fit",
                 f"{c.design.num_fit} leaves fewer than 2 held-out subsets")
  common.require(c.surrogates.cv <= c.design.num_fit, "surrogates.cv", f"{c.surrogates.cv} folds exceed design.num_fit")


def memory(c):
  return {"design.num_subsets": (8 * c.design.num_subsets * c.data.num_targets, "the outcomes")}


EXPERIMENT = contract.Experiment(
    name="synth", configs=CONFIGS, default_config="tiny", get_config=get_config, rules=RULES, checks=checks,
    memory=memory, problems="synth_exp.pipeline:problems")
'''

PIPELINE = '''
"""Phases of `synth`: outcomes F(S) = S beta + 2 s_0 s_1 + noise, chunk by chunk."""
import numpy as np

from ksurrogate_experiments import common
from ksurrogate.harness import driver, runs


def effects(c):   # a stored phase returns a dict, or a dataclass registered with @runs.stored("synth.<name>")
  r = np.random.default_rng(c.seed)
  return {"beta": r.normal(size=(c.data.num_tasks, c.data.num_targets))}


def outcome_chunk(c, S_chunk, chunk, eff, seed=0):
  r = np.random.default_rng([c.seed, seed, chunk])
  S = np.asarray(S_chunk, np.float64)
  return {"F": S @ eff["beta"] + 2.0 * S[:, :1] * S[:, 1:2] + c.data.noise * r.normal(size=(len(S), c.data.num_targets))}


def problems(config, run, families):
  c = config
  K = c.data.num_tasks
  eff = run.phase("effects", effects, c)
  S = np.random.default_rng(c.seed + 1).random((c.design.num_subsets, K)) < 0.5
  F = run.outcomes("random", outcome_chunk, c, S, eff, chunk_size=c.design.chunk_size)["F"]
  common.require_varying(F, c.normalized_error_threshold, c.min_varying_targets, phase="random",
                         threshold_field="normalized_error_threshold")
  S_truth = np.concatenate([~np.eye(K, dtype=bool), np.ones((1, K), bool)])
  seeds = [run.outcomes(f"truth_seed{r}", outcome_chunk, c, S_truth, eff, r + 1, chunk_size=c.design.chunk_size)["F"]
           for r in range(c.truth.seeds)]
  loo = np.stack([f[:K] - f[K][None] for f in seeds])           # [seeds, K, T]
  fit, held = np.arange(c.design.num_fit), np.arange(c.design.num_fit, len(S))
  yield driver.Problem(name="synth", S=S, F=F, splits=[(fit, held)], truths={"loo": driver.Truth(loo)},
                       info={"planted_pair": [0, 1]})
'''


def _write_experiment(root):
  package = root / "synth_exp"
  package.mkdir()
  (package / "__init__.py").write_text(INIT)
  (package / "config.py").write_text(textwrap.dedent(CONFIG))
  (package / "pipeline.py").write_text(textwrap.dedent(PIPELINE))


@pytest.fixture
def synth(tmp_path, monkeypatch):
  _write_experiment(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setitem(contract.REGISTRY, "synth", "synth_exp.config")   # step 4: one line in the registry
  yield
  for name in [m for m in sys.modules if m.startswith("synth_exp")]:
    del sys.modules[name]


@pytest.mark.slow   # a new experiment run end to end
def test_the_readme_checklist_gives_a_working_experiment(synth, tmp_path, capsys):
  assert "experiment synth:" in contract.describe() and "--config.design.num_subsets=60  [int]" in contract.describe()
  with pytest.raises(SystemExit):                                         # its rules and checks run
    main.configure(["main", "--experiment=synth", "--config.design.num_fit=59"])
  assert capsys.readouterr().err.startswith("error: design.num_fit: 59 leaves fewer than 2 held-out subsets")
  experiment, config = main.configure(["main", "--experiment=synth", "--config=tiny"])
  with runs.Run(tmp_path / "w", name="synth", progress=False, log=lambda m: None, config=config) as run:
    s = driver.run(experiment.protocol(config), config, run)
  d = s["datasets"]["synth"]
  assert set(d) == {f"{f.name}_exact" for f in families.standard()}      # every standard family
  assert d["kernel_exact"]["lds"] > 0.8 and d["kernel_exact"]["lds_ci95"] and d["kernel_exact"]["loo_pearson_se"]
  assert s["ceiling"]["synth"]["loo_pearson"] > 0.9 and s["planted_pair"] == {"synth": [0, 1]}
  assert s["comparisons"]["synth"]["kernel_exact-linear_exact"]["lds_verdict"] in ("wins", "ties", "loses")
  on_disk = json.loads((tmp_path / "w" / "summary.json").read_text())
  assert on_disk["datasets"] == json.loads(json.dumps(s["datasets"]))
  # rerun: the stored phases are reused, the summary is the same
  with runs.Run(tmp_path / "w", name="synth", progress=False, log=lambda m: None, config=config) as run:
    again = driver.run(experiment.protocol(config), config, run)
    assert {t.status for t in run.timings.values()} == {"reused"}
  strip = lambda x: {n: {m: {k: v for k, v in row.items() if k != "seconds"} for m, row in rows.items()}  # noqa: E731
                     for n, rows in x["datasets"].items()}
  assert strip(again) == strip(s)


def test_a_user_surrogate_joins_every_problem_through_the_protocol(synth, tmp_path):
  """Adding a surrogate touches one place: a Family (here a user's, passed to the protocol; for
  every experiment, one line in ksurrogate.families.standard)."""
  def ridge_one(S, F):
    return surrogates.fit_linear(S, F, ridge=1.0)

  mine = families.Family("linear_ridge1", ridge_one, baseline=True)
  experiment, config = main.configure(["main", "--experiment=synth", "--config=tiny", "--config.surrogates.families=kernel"])
  with runs.Run(tmp_path, name="synth", progress=False, log=lambda m: None) as run:
    s = driver.run(experiment.protocol(config, extra_families=[mine]), config, run)
  d = s["datasets"]["synth"]
  assert set(d) == {"kernel_exact", "linear_ridge1_exact"} and d["linear_ridge1_exact"]["loo_pearson"] is not None
  assert "kernel_exact-linear_ridge1_exact" in s["comparisons"]["synth"]     # paired as the baseline it declares


def test_families_are_declared_and_selected_by_name():
  std = families.standard()
  names = [f.name for f in std]
  assert len(set(names)) == len(names) == 5
  # the kernel surrogates are measured against the linear ones, like for like where they name one
  assert [f.name for f in std if f.baseline] == ["linear", "linear_official"]
  assert families.counterpart_pairs(std) == [("kernel", "linear"), ("kernel_official", "linear_official")]
  with pytest.raises(ValueError, match=r"^families: unknown \['krr'\]"):
    families.select(std, ["kernel", "krr"])
  r = np.random.default_rng(0)
  S = r.random((30, 5)) < 0.5
  F = S @ r.normal(size=(5, 2))
  W = np.repeat(S, 2, axis=1)                                             # sample-level: two columns per task
  fitted = families.fit_all(families.standard(cv=3, official_view="sample"), {"exact": (S, F, W)})
  assert fitted["kernel_official_exact"].num_tasks == 10 and fitted["kernel_exact"].num_tasks == 5
  assert families.readouts(fitted["linear_exact"]) == ("loo", "shapley")
  skipped = {}
  out = families.fit_all([families.standard(cv=3)[0]], {"tiny": (S[:2], F[:2])}, skipped=skipped)
  assert out == {} and skipped["kernel_tiny"].startswith("S: 2 distinct subsets (after merging duplicates); cross-validation needs at least 3")
  with pytest.raises(ValueError, match="^name: a family name is letters"):
    families.Family("my family", surrogates.fit_linear)


def test_pairs_follow_each_familys_declaration():
  """A third family type is paired by what it declares: a non-baseline one against every baseline,
  a baseline one by every non-baseline; a counterpart is reported only where both are fitted."""
  std = families.standard()
  mine = families.Family("mine", surrogates.fit_linear)
  ref = families.Family("ref", surrogates.fit_linear, baseline=True)
  candidates = [f.name for f in std if not f.baseline]
  bases = [f.name for f in std if f.baseline]
  pairs = families.comparison_pairs([*std, mine, ref])
  assert pairs == [(a, b) for a in [*candidates, "mine"] for b in [*bases, "ref"]]
  assert families.comparison_pairs([mine]) == [] and families.comparison_pairs([ref, mine]) == [("mine", "ref")]
  assert families.counterpart_pairs([f for f in std if f.name != "linear"]) == [("kernel_official", "linear_official")]
  problem = driver.Problem(name="p", S=np.ones((4, 2), bool), F=np.zeros((4, 1)), splits=[(np.arange(2), np.arange(2, 4))],
                           sources={"estimated": (np.ones((4, 2), bool), np.zeros((4, 1)))},
                           estimates_of={"estimated": "exact"})
  methods = [f"{f}_{src}" for f in ("mine", "ref", "kernel") for src in ("exact", "estimated")]
  fams = [mine, ref, *families.select(std, ["kernel"])]
  assert driver.standard_comparisons(problem, fams, methods) == [
      ("mine_exact", "ref_exact"), ("kernel_exact", "ref_exact"), ("mine_estimated", "ref_estimated"),
      ("kernel_estimated", "ref_estimated"), ("mine_estimated", "mine_exact"), ("ref_estimated", "ref_exact"),
      ("kernel_estimated", "kernel_exact")]
  for bad in (dict(baseline=True, counterpart="linear"), dict(counterpart="mine")):
    with pytest.raises(ValueError, match="^counterpart: "):
      families.Family("mine", surrogates.fit_linear, **bad)


def test_the_registry_config_modules_import_nothing_heavy():
  import subprocess
  code = ("import sys; from ksurrogate_experiments import contract\n"
          "for n in contract.REGISTRY: contract.load(n).get_config(contract.load(n).default_config)\n"
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'gymnax', 'flax', 'ksurrogate')))")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
