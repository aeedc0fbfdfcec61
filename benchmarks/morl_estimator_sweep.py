"""Which lever moves the MORL estimator against the fine-tuning it replaces (issue 17's sweep).

  python benchmarks/morl_estimator_sweep.py --workdir=/tmp/runs/morl_cpu   # a finished morl cpu run (~30 min at load)

Reads the meta-policy, the random subsets' real fine-tunes (`exact_random`) and the leave-one-out
truth (`exact_structured_seed*`) from a finished morl run (a scratch copy: a running job keeps its
lock) and, per estimator setting `dim:ridge:solver:num_envs:mode[:seed]` (one lever changed at a time from
the cpu config's 128:1:onestep:64:surrogate; see experiments/morl/estimate.py), rebuilds the
first-order estimator and reports:
  * median relative error against the real fine-tunes, beside the no-change guess (the
    meta-policy's own return) and their ratio (target <= 0.5), and LDS against them (target >= 0.8),
    each on the design's fit subsets (the only columns a setting may be chosen by) and on its
    held-out subsets;
  * the surrogate ratio: LOO Pearson per target (against the multi-seed leave-one-out truth) of a
    kernel surrogate fitted on the estimates of the run's estimated subsets, over the same of the
    kernel fitted on the real fine-tunes of the fit subsets (the run's `kernel_exact`; target >= 0.9);
  * seconds per estimated subset (warm, plus the one-time rollouts and features spread over the
    estimated subsets) against one chunk of real fine-tunes timed in the same process (target >= 100x).
The estimator's first-order error at really fine-tuned policies (the run's
`estimator.morl.linearization_error`) bounds every setting alike and is printed once.
"""
from __future__ import annotations



import dataclasses  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import common  # noqa: E402
import ksurrogate as ks  # noqa: E402
from ksurrogate_experiments.morl import config as config_lib  # noqa: E402
from ksurrogate_experiments.morl import estimate as morl_estimate  # noqa: E402
from ksurrogate_experiments.morl import pipeline as P  # noqa: E402
from ksurrogate import metrics  # noqa: E402
from ksurrogate.harness import report, runs  # noqa: E402

DEFAULT = "128:1:onestep:64:surrogate"
_WORKDIR = flags.DEFINE_string("workdir", None, "a finished morl run", required=True)
_CONFIG = flags.DEFINE_string("config", "cpu", "the run's config")
_SET = flags.DEFINE_multi_string("set", [], "section.field=value the run was made with on top of --config "
                                 "(e.g. estimate.num_envs=16 for a run of an older default)")
_SETTINGS = flags.DEFINE_list(
    "settings", ["128:1:onestep:16:surrogate", "32:1:onestep:16:surrogate", "512:1:onestep:16:surrogate",
                 "2048:1:onestep:16:surrogate", "128:0.1:onestep:16:surrogate", "128:10:onestep:16:surrogate",
                 "128:100:onestep:16:surrogate", "128:1000:onestep:16:surrogate", DEFAULT,
                 "128:1:onestep:256:surrogate", "128:1:onestep:16:rollout", "128:10:onestep:16:rollout",
                 "512:10:onestep:64:surrogate"],
    "dim:ridge:solver:num_envs:mode[:seed] (mode 'surrogate' reads returns off the meta-policy's rollouts, "
    "'rollout' rolls the linearized policy out in every target, ~10x slower; seed: the estimator's rollouts, "
    "default the config's)")
_OUT = flags.DEFINE_string("out", None, "write every row as JSON here")


def parse(setting: str, base: morl_estimate.EstimatorConfig):
  try:
    parts = setting.split(":")
    if len(parts) not in (5, 6):
      raise ValueError(f"{len(parts)} fields")
    dim, ridge, solver, num_envs, mode = parts[:5]
    seed = int(parts[5]) if len(parts) == 6 else base.seed
    cfg = dataclasses.replace(base, dim=int(dim), ridge=float(ridge), solver=solver, num_envs=int(num_envs), seed=seed)
  except ValueError as e:
    raise SystemExit(f"settings: {setting!r} is not dim:ridge:solver:num_envs:mode[:seed] ({e})") from None
  if mode not in ("surrogate", "rollout"):
    raise SystemExit(f"settings: mode in {setting!r} must be 'surrogate' or 'rollout'")
  return cfg, mode


def main(argv):
  del argv
  c = common.apply_overrides(config_lib.get_config(_CONFIG.value), dict(kv.split("=", 1) for kv in _SET.value))
  base = P.setup(c).est_cfg
  settings = [parse(text, base) for text in _SETTINGS.value]   # bad settings refused before any work
  scratch = common.scratch_copy(_WORKDIR.value)
  try:
    with runs.Run(scratch, name="morl", progress=False, log=lambda m: None) as run:
      s = run.phase("setup", P.setup, c, store=False)
      meta = run.phase("meta_policy", P.meta_policy, c, s)
      dsg = run.phase("design", P.design, c, s, store=False)
      cs = c.design.chunk_size
      exact = run.outcomes("exact_random", P.exact_chunk, c, dsg.S_rand, s, meta, -1, chunk_size=cs)
      struct = [run.outcomes(f"exact_structured_seed{r}", P.exact_chunk, c, dsg.S_struct, s, meta, r, chunk_size=cs)
                for r in range(c.truth.seeds)]
      est = run.phase("estimate", P.estimate, c, s, meta, dsg, exact, tuple(struct))
      computed = [n for n, t in run.timings.items() if t.status != "reused" and n not in ("setup", "design")]
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  if computed:
    print(f"note: {computed} were not stored in {_WORKDIR.value} and were computed here")
  K = s.K
  F_real = exact["F"]
  varying = metrics.varying_targets(F_real, c.normalized_error_threshold)
  F_real = F_real[:, varying]
  F_struct = np.stack([r["F"] for r in struct])[:, :, varying]
  loo_truth = (F_struct[:, 1:K + 1] - F_struct[:, :1]).mean(0)             # [K, T]: the truth's mean
  fit, held = np.arange(c.design.num_fit), np.arange(c.design.num_fit, len(dsg.S_rand))
  F_base = np.broadcast_to(np.asarray(meta.norm(jax.numpy.asarray(meta.meta_return)))[varying], F_real.shape)

  def surrogate_loo(S, F):
    """LOO Pearson per target (mean over targets) of a kernel surrogate of F against the truth; a
    target the outcomes leave constant has no predicted effect and counts as correlation 0
    (dropping it would flatter an estimator that is blind to it)."""
    moving = metrics.varying_targets(F)
    loo = np.zeros_like(loo_truth)
    if moving.any():
      loo[:, moving] = np.asarray(ks.predicted_loo(ks.fit_kernel(S, F[:, moving], cv=c.surrogates.cv)))
    return float(np.nan_to_num(metrics.pearson(loo, loo_truth, per_target=True), nan=0.0).mean()), int((~moving).sum())

  real_loo, _ = surrogate_loo(dsg.S_rand[fit], F_real[fit])
  # one real fine-tuning chunk timed here (steady state), so that the speed-ups are side by side
  # with the estimates below on whatever load the machine has now
  t_ft = float(np.mean(P.exact_chunk(c, dsg.S_rand[:c.design.chunk_size], 0, s, meta, -1)["seconds"]))
  print(f"{_WORKDIR.value}: {int(varying.sum())} targets, {len(fit)} fit / {len(held)} held-out fine-tunes, "
        f"{c.truth.seeds}-seed LOO truth; kernel on real fine-tunes LOO Pearson {real_loo:.3f}; "
        f"{t_ft:.3f} s per fine-tune; first-order error of the logits at fine-tuned policies "
        f"{est.info['linearization_error']:.3f} (median)", flush=True)
  rows = []
  for text, (cfg, mode) in zip(_SETTINGS.value, settings):
    # one-time: rollouts, Jacobians, statistics; its compilation apart, as the pipeline times it
    with runs.stopwatch() as setup_sw:
      e = morl_estimate.Estimator(s.suite, meta.params, meta.norm, s.targets_T, cfg, s.ecfg)
      jax.block_until_ready(e.arrays)
    t_setup = setup_sw.steady_seconds
    chunk = 256 if mode == "surrogate" else 64     # the pipeline's chunks
    F_many, t_many, _ = runs.steady(lambda: e.outcome(dsg.S_many, mode, chunk), min_seconds=0.0)
    F_rand = e.outcome(dsg.S_rand, mode, chunk)
    F_rand, F_many = np.asarray(F_rand)[:, varying], np.asarray(F_many)[:, varying]
    err = {k: metrics.relative_error(F_rand[i], F_real[i])["median"] for k, i in (("fit", fit), ("held", held))}
    base = {k: metrics.relative_error(F_base[i], F_real[i])["median"] for k, i in (("fit", fit), ("held", held))}
    skipped = {}
    sur_loo, flat = surrogate_loo(dsg.S_many, F_many)
    t_est = t_many / len(dsg.S_many) + t_setup / len(dsg.S_many)
    row = {"setting": text,
           "fit_err": err["fit"], "fit_ratio": err["fit"] / base["fit"],
           "fit_lds": metrics.attempt(skipped, "fit_lds", metrics.lds, F_rand[fit], F_real[fit]),
           "held_err": err["held"], "no_change": base["held"], "held_ratio": err["held"] / base["held"],
           "held_lds": metrics.attempt(skipped, "held_lds", metrics.lds, F_rand[held], F_real[held]),
           "surrogate_loo": sur_loo, "surrogate_ratio": sur_loo / real_loo, "constant_targets": flat,
           "setup_s": t_setup, "s_per_subset": t_est, "speedup": t_ft / t_est, "skipped": skipped or None}
    rows.append(row)
    print(report.table([row], list(row)), flush=True)
  print(f"\nkernel on {len(fit)} real fine-tunes: LOO Pearson {real_loo:.3f}\n")
  print(report.table(rows, list(rows[0])))
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(json.dumps({"workdir": _WORKDIR.value, "real_loo": real_loo, "rows": rows},
                                                   indent=1, default=float))


if __name__ == "__main__":
  app.run(main)
