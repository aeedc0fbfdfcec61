"""Configs of the `regmix` experiment: RegMix's 512 + 256 released LM runs (mixtures of 17 Pile
domains -> validation loss on 13), every surrogate family on raw and mapped proportions against
the authors' LightGBM, at several training sizes; mixture selection; active choice of runs.
Nothing is trained, so the phases store only what they compute from the shipped data.
"""
from __future__ import annotations

import pathlib

import ml_collections

from ksurrogate_experiments import common, costs
from ksurrogate_experiments import contract

DATA_DIR = pathlib.Path(__file__).parent / "data"
NUM_TRAIN, NUM_TEST = 512, 256
TARGETS = ("arxiv", "freelaw", "pubmed_central", "wikipedia_en", "dm_mathematics", "github", "stackexchange",
           "gutenberg_pg_19", "pile_cc", "ubuntu_irc", "hackernews", "pubmed_abstracts", "uspto_backgrounds")
# The families beside ksurrogate.families.standard(): the raw-proportion twins of the tuned ones,
# the official pair on log(1 + r / eps), the linear model with pairwise terms, and LightGBM.
EXTRA_FAMILIES = ("kernel_raw", "kernel_lds_raw", "kernel_official_log", "linear_raw", "linear_official_log",
                  "linear_pairwise", "linear_pairwise_raw", "lightgbm")

CONFIGS = {
    "default": contract.Variant(
        description="every family at 32-512 training runs (20 re-draws), LightGBM, mixture selection, active "
                    "selection over 10 seeds; minutes",
        command="ksurrogate-run --experiment=regmix --workdir=runs/regmix",
        runtime="measured in BUILD_NOTES.md ('Data mixtures: RegMix's released runs')"),
    "tiny": contract.Variant(
        description="a smoke test of every phase on 48 training runs, 3 families; seconds",
        command="ksurrogate-run --experiment=regmix --config=tiny --workdir=/tmp/regmix_tiny",
        runtime="measured in BUILD_NOTES.md"),
}

VARIANTS = {
    "default": {},
    "tiny": {
        "top": dict(progress=False, smoke_test=True),
        "design": dict(num_fit=48, sizes=(32, 48), redraws=2),
        "selection": dict(families=("kernel", "lightgbm"), num_samples=2000, top_k=20, num_starts=2, steps=20),
        "active": dict(seeds=2, initial=32, batch=16),
        "surrogates": dict(cv=3, families=("kernel", "linear", "lightgbm")),
        "eval": dict(resplits=2, bootstrap=100),
    },
}


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  """The config `arg` names (CONFIGS): the base below with the variant's fields."""
  c = common.base_config("regmix", arg, VARIANTS)
  # OpenBLAS threads while the experiment runs (threadpoolctl): on cores shared with other work
  # its spinning threads slowed float64 eigh 5-30x (BUILD_NOTES.md); raise it on a quiet machine.
  c.blas_threads = 1
  c.data = dict(dir=str(DATA_DIR))
  # num_fit: the training runs used (the first num_fit of the 512); sizes: training-set sizes of
  # the learning curve, each re-drawn `redraws` times from those (once at num_fit itself).
  c.design = dict(num_fit=NUM_TRAIN, sizes=(32, 64, 128, 256, 512), redraws=20)
  # RegMix's LightGBM (boosting.py): the authors' settings; early stopping on a seeded
  # validation_fraction of the training runs.
  c.lightgbm = dict(num_iterations=1000, learning_rate=1e-2, stopping_rounds=3, validation_fraction=0.2,
                    num_threads=1)
  # Mixture selection (ksurrogate.mixtures.select) for the named families, minimizing the
  # validation loss of `target` ("mean": of all 13); RegMix targets Pile-CC.
  c.selection = dict(target="pile_cc", families=("kernel", "linear_pairwise", "lightgbm"), num_samples=100_000,
                     top_k=100, num_starts=8, steps=300, learning_rate=0.05)
  # Active choice of training runs from the num_fit pool (the `kernel` family's posterior
  # variance) against random order, both from the same `initial` random runs, `batch` at a time;
  # a curve "reaches" the full pool's test Spearman within `tolerance` (mean Spearman, not x100).
  c.active = dict(seeds=10, initial=32, batch=32, tolerance=0.0)
  c.surrogates.official_ridge = 1e-2
  c.surrogates.official_eps = 1e-3
  # The driver's re-splits refit every family on random 512 / 256 splits of all 768 runs (the
  # learning curve's intervals come from re-drawn training sets and a bootstrap over test runs).
  c.eval.resplits = 5
  # Bootstrap resamples of the learning curve's intervals (the driver has no ground truth here to
  # resample): 400 keep the 2.5 / 97.5 % quantiles within about 0.1 s.e. of their limit.
  c.eval.bootstrap = 400
  return common.apply_variant(c, VARIANTS[arg])


RULES = {
    **common.SHARED_RULES,
    "blas_threads": common.integer(1),
    "data.dir": common.existing_dir(),
    "design.num_fit": common.integer(8, NUM_TRAIN),
    "design.sizes": common.sequence(common.integer(4, NUM_TRAIN), distinct=True),
    "design.redraws": common.integer(1),
    "lightgbm.num_iterations": common.integer(1),
    "lightgbm.learning_rate": common.positive(),
    "lightgbm.stopping_rounds": common.integer(1),
    "lightgbm.validation_fraction": common.fraction(),
    "lightgbm.num_threads": common.integer(1),
    "selection.target": common.choice("mean", *TARGETS),
    "selection.families": common.sequence(common.Rule(lambda v: isinstance(v, str) and v.isidentifier(),
                                                      "a family name"), distinct=True),
    "selection.num_samples": common.integer(2),
    "selection.top_k": common.integer(1),
    "selection.num_starts": common.integer(1),
    "selection.steps": common.integer(1),
    "selection.learning_rate": common.positive(),
    "active.seeds": common.integer(1),
    "active.initial": common.integer(4),
    "active.batch": common.integer(1),
    "active.tolerance": common.number(0.0, 1.0),
    "surrogates.official_eps": common.positive(),
}


def checks(c) -> None:
  """The data files, and sizes / folds / pools against the training runs used."""
  from ksurrogate_experiments.regmix import released
  for mix, loss in released.FILES.values():
    for name in (mix, loss):
      path = pathlib.Path(c.data.dir).expanduser() / name
      common.require(path.is_file(), "data.dir", f"{path} is missing (see experiments/regmix/data/PROVENANCE.md)")
  n = c.design.num_fit
  common.require(max(c.design.sizes) <= n, "design.sizes", f"{max(c.design.sizes)} exceeds design.num_fit={n}")
  common.require(c.surrogates.cv <= min(c.design.sizes), "surrogates.cv",
                 f"{c.surrogates.cv} folds exceed the {min(c.design.sizes)} runs of the smallest size")
  common.require(c.active.initial < n, "active.initial", f"{c.active.initial} leaves no run of the {n} to choose")
  common.require(c.surrogates.cv <= c.active.initial, "active.initial",
                 f"{c.active.initial} runs are fewer than surrogates.cv={c.surrogates.cv} folds")
  common.require(c.selection.top_k <= c.selection.num_samples, "selection.top_k",
                 f"{c.selection.top_k} exceeds selection.num_samples={c.selection.num_samples}")
  costs.check_time(compute_time(c), costs.TIME_BOUNDS["compute"])
  # the driver scores the released split (no ground truth: nothing resampled there); eval.bootstrap
  # resamples the learning curve's test runs for every family at every size
  fams = costs.num_families(c, standard=5 + len(EXTRA_FAMILIES))
  boot = c.eval.bootstrap * fams * len(c.design.sizes) * NUM_TEST * len(TARGETS)
  curve = (costs.BOOTSTRAP_SECONDS * boot, f"{c.eval.bootstrap} bootstrap resamples x {fams} families x "
           f"{len(c.design.sizes)} sizes of {NUM_TEST} test runs x {len(TARGETS)} targets")
  costs.scoring_time(c, [costs.Scored(n, released.NUM_DOMAINS, len(TARGETS), fams, num_truths=0)],
                      extra={"eval.bootstrap": curve})
  names = {f.name for f in families(c, "regmix", chosen_only=False)}
  unknown = [f for f in c.selection.families if f not in names]
  common.require(not unknown, "selection.families", f"unknown {unknown}; expected some of {sorted(names)}")


def compute_time(c) -> dict:
  """{field: (seconds, what)} of the learning curve's and the active selection's fits (common's cost
  model; every family's fit counted at the tuned-fit cost, LightGBM's boosting too)."""
  fams, n, a = costs.num_families(c, standard=5 + len(EXTRA_FAMILIES)), c.design.num_fit, c.active
  curve = sum(costs.fit_seconds(fams * (1 if size >= n else c.design.redraws), min(size, n))
              for size in c.design.sizes)
  sizes = list(range(a.initial, n, a.batch)) + [n]
  active = sum(costs.fit_seconds(2 * a.seeds, size) for size in sizes)
  return {"design.redraws": (curve, f"{c.design.redraws} re-draws x {len(c.design.sizes)} sizes x {fams} families"),
          "active.seeds": (active, f"{a.seeds} seeds x 2 orders x {len(sizes)} sizes of kernel fits")}


def families(config, problem_name: str, chosen_only: bool = True) -> list:
  """`ksurrogate.families.standard()` (the tuned families choose their input map by CV; the official
  pair fits raw proportions) and `EXTRA_FAMILIES`, filtered by `surrogates.families`."""
  del problem_name
  from ksurrogate import families as families_lib
  from ksurrogate import inputs
  from ksurrogate import parity
  from ksurrogate import surrogates
  from ksurrogate_experiments.regmix import boosting
  s = config.surrogates
  log = inputs.InputMap("log", float(s.official_eps))
  Family = families_lib.Family
  found = families_lib.standard(cv=s.cv, num_inducing=s.get("num_inducing"), official_ridge=s.official_ridge) + [
      Family("kernel_raw", surrogates.fit_kernel, {"cv": s.cv, "input_map": "identity"}),
      Family("kernel_lds_raw", surrogates.fit_kernel, {"cv": s.cv, "cv_metric": "lds", "input_map": "identity"}),
      Family("kernel_official_log", inputs.mapped(parity.official_krr, log), {"ridge": s.official_ridge}),
      Family("linear_raw", surrogates.fit_linear, {"cv": s.cv, "input_map": "identity"}, baseline=True),
      Family("linear_official_log", inputs.mapped(parity.official_lstsq, log), baseline=True),
      Family("linear_pairwise", surrogates.fit_linear, {"cv": s.cv, "pairwise": True}, baseline=True),
      Family("linear_pairwise_raw", surrogates.fit_linear, {"cv": s.cv, "pairwise": True, "input_map": "identity"},
             baseline=True),
      Family("lightgbm", boosting.fit_lightgbm, dict(config.lightgbm), baseline=True),
  ]
  return contract.chosen(config, found) if chosen_only else found


EXPERIMENT = contract.Experiment(
    name="regmix", configs=CONFIGS, default_config="default", get_config=get_config, rules=RULES, checks=checks,
    problems="ksurrogate_experiments.regmix.pipeline:problems", families=families)
