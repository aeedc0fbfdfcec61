"""Modular-arithmetic attribution pipeline: short named phases composed by `problems`.

setup -> design -> theta0 -> retrain (chunked) -> truth_seed<r> (chunked) -> features -> finetune
(chunked) -> finetune_loo (chunked) -> estimate -> baselines -> one driver.Problem (with
`config.study.enabled`, the regime study's cells instead: `study.py`). Each phase is a
pure function of the config view it reads and the results it is given; `ksurrogate.harness.runs.Run` stores, checks and reuses them, so a killed run
resumes with the same numbers: every random choice is a function of (config.seed, chunk index),
never of timing.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

import ksurrogate as ks
from ksurrogate_experiments import common
from ksurrogate_experiments.modular import data as data_lib
from ksurrogate_experiments.modular import model as model_lib
from ksurrogate_experiments.modular import regime
from ksurrogate import baselines, diagnostics, estimation, features, metrics, training
from ksurrogate.harness import driver, report, runs


# ----------------------------------------------------------------------------------------------
# Public builders (benchmarks use these too).

def schedule(c_train):
  if c_train.lr_schedule == "constant":
    return optax.constant_schedule(c_train.lr)
  return optax.warmup_cosine_decay_schedule(0.0, c_train.lr, c_train.warmup_steps, c_train.num_steps, end_value=0.0)


def optimizer(c_train) -> optax.GradientTransformation:
  """theta0's and every retrain's optimizer: AdamW on the warmup + cosine schedule."""
  return optax.adamw(schedule(c_train), weight_decay=c_train.weight_decay, b2=c_train.b2)


def finetune_optimizer(c_finetune) -> optax.GradientTransformation:
  return {"sgd": optax.sgd, "adam": optax.adam}[c_finetune.optimizer](c_finetune.lr)


def network(c_model, d: data_lib.ModularData) -> model_lib.Transformer:
  return model_lib.Transformer(d.vocab_size, d.num_classes, 4, d_model=c_model.d_model, num_layers=c_model.num_layers,
                               num_heads=c_model.num_heads, mlp_dim=c_model.mlp_dim, activation=c_model.activation)


@dataclasses.dataclass(frozen=True)
class Setup:
  """Data, model and the compiled-once training programs (not stored: rebuilt in a second)."""
  d: data_lib.ModularData
  X_val: np.ndarray
  y_val: np.ndarray
  apply_fn: Callable
  init_fn: Callable
  theta0_train: Callable       # full-data training with checkpoints (TracIn)
  retrain: Callable            # the same recipe, no checkpoints
  val_loss: Callable           # stacked params -> [m, T] validation losses
  loss_fn: Callable            # weighted mean training loss
  schedule: Callable
  init_key: jax.Array
  data_key: jax.Array
  common_random_numbers: bool

  @property
  def K(self) -> int:
    return self.d.num_tasks

  @property
  def train_data(self):
    return (self.d.X_train, self.d.y_train)

  def train_keys(self, train_seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """(init key, data key) of a training seed: seed 0 is theta0's (and, with common random
    numbers, every retrain's); seed r > 0 folds r into both, changing init and data order."""
    if train_seed == 0:
      return self.init_key, self.data_key
    return jax.random.fold_in(self.init_key, train_seed), jax.random.fold_in(self.data_key, train_seed)


def setup(c) -> Setup:
  d = data_lib.make(c.data.p, c.data.op, c.data.bar, c.data.train_fraction, c.seed)
  rng = np.random.default_rng(c.seed)
  val_rows = np.sort(rng.choice(len(d.X_val), min(c.data.num_targets, len(d.X_val)), replace=False))
  X_val, y_val = d.X_val[val_rows], d.y_val[val_rows]
  net = network(c.model, d)
  apply_fn = net.apply
  loss_fn = training.supervised(apply_fn)
  t = c.train
  sampling = "shared" if t.common_random_numbers else "subset"
  opt = optimizer(t)
  return Setup(
      d=d, X_val=X_val, y_val=y_val, apply_fn=apply_fn,
      init_fn=lambda key: net.init(key, jnp.zeros((1, 4), jnp.int32)),
      theta0_train=training.trainer(loss_fn, opt, num_steps=t.num_steps, batch_size=t.batch_size, sampling=sampling,
                                    checkpoint_every=t.num_steps // c.baselines.tracin_checkpoints),
      retrain=training.trainer(loss_fn, opt, num_steps=t.num_steps, batch_size=t.batch_size, sampling=sampling),
      val_loss=jax.jit(jax.vmap(lambda p: training.cross_entropy(apply_fn(p, X_val), y_val))),
      loss_fn=loss_fn, schedule=schedule(t),
      init_key=jax.random.key(c.seed), data_key=jax.random.key(c.seed + 3),   # theta0's (and with CRN every retrain's) stream
      common_random_numbers=t.common_random_numbers)


@dataclasses.dataclass(frozen=True)
class Design:
  S_rand: np.ndarray    # [design.num_subsets, K]: random subsets, retrained (the first num_fit fit the surrogates)
  S_est: np.ndarray     # [num_estimated, K]: estimated subsets; the first finetune.num_subsets are also fine-tuned
  K: int

  @property
  def S_truth(self):
    """[K + 1, K]: the K leave-one-out masks, then the full set (retrained once per training seed)."""
    return np.concatenate([np.asarray(ks.subsets.leave_one_out(self.K)), np.ones((1, self.K), bool)])


def design(c, s: Setup) -> Design:
  K = s.K
  S_rand = np.asarray(ks.subsets.fixed_size(jax.random.key(c.seed + 2), c.design.num_subsets, K, c.design.size))
  S_est = np.asarray(ks.subsets.sized(jax.random.key(c.seed + 4), c.estimate.num_subsets, K, *c.estimate.sizes))
  return Design(S_rand, S_est, K)


@runs.stored("modular.theta0")
@flax.struct.dataclass
class Theta0:
  params: dict
  checkpoints: dict        # params stacked over the TracIn checkpoints
  curve: np.ndarray        # per-step training loss


def theta0(c, s: Setup) -> Theta0:
  params, curve, ckpts = jax.jit(lambda p: s.theta0_train(p, s.train_data, jnp.ones(len(s.d.y_train)), s.data_key))(
      s.init_fn(s.init_key))
  del c
  return Theta0(params=params, checkpoints=ckpts, curve=np.asarray(curve))


def retrain_chunk(c, S_chunk, chunk: int, s: Setup, train_seed: int = 0) -> dict:
  """Retrains one chunk of subsets from the init of `train_seed` (0: theta0's); rows whose
  training loss over all of their subset's examples stays above train.converged_loss are redone on
  a fresh minibatch stream, up to train.retries times. Every key is a function of (seed, train
  seed, chunk, attempt): resumes reproduce it."""
  t = c.train
  init_key, data_key = s.train_keys(train_seed)

  def attempt_rows(S_rows, attempt):
    shared = s.common_random_numbers and attempt == 0
    key = data_key if shared else jax.random.fold_in(jax.random.fold_in(data_key, chunk), attempt)
    stacked, _ = training.retrain_subsets(s.retrain, s.init_fn, s.train_data, s.d.task_train, S_rows,
                                          init_key=init_key, key=key, chunk_size=c.design.chunk_size,
                                          common_random_numbers=s.common_random_numbers)
    loss = training.subset_losses(s.loss_fn, stacked, s.train_data, s.d.task_train, S_rows)
    return np.array(s.val_loss(stacked)), np.array(loss)

  F, loss = attempt_rows(S_chunk, 0)
  attempts = np.ones(len(S_chunk), np.int32)
  for attempt in range(1, t.retries + 1):
    bad = np.flatnonzero(loss > t.converged_loss)
    if not len(bad):
      break
    F_b, loss_b = attempt_rows(S_chunk[bad], attempt)
    better = loss_b < loss[bad]
    F[bad[better]], loss[bad[better]] = F_b[better], loss_b[better]
    attempts[bad] += 1
  return {"F": F, "final_train_loss": loss, "attempts": attempts}


@runs.stored("modular.features")
@flax.struct.dataclass
class FeatureSet:
  """Projected margin gradients at theta0 of the training and target examples."""
  train_phi: np.ndarray
  train_offsets: np.ndarray
  train_labels: np.ndarray
  target_phi: np.ndarray
  target_offsets: np.ndarray
  target_labels: np.ndarray
  output: str = flax.struct.field(pytree_node=False, default="margin")

  @property
  def train(self) -> features.Features:
    return features.Features(self.train_phi, self.train_offsets, self.train_labels, self.output)

  @property
  def target(self) -> features.Features:
    return features.Features(self.target_phi, self.target_offsets, self.target_labels, self.output)

  def target_rows(self, keep) -> features.Features:
    """The target features of the kept targets only."""
    return features.Features(self.target_phi[keep], self.target_offsets[keep], self.target_labels[keep], self.output)


def featurize(c, s: Setup, th: Theta0) -> FeatureSet:
  key = jax.random.key(c.seed + 5)
  kw = dict(key=key, dim=c.estimate.dim, batch_size=c.estimate.feature_batch)
  tr = features.featurize(s.apply_fn, th.params, s.d.X_train, s.d.y_train, **kw)
  tg = features.featurize(s.apply_fn, th.params, s.X_val, s.y_val, **kw)
  return FeatureSet(tr.phi, tr.offsets, tr.labels, tg.phi, tg.offsets, tg.labels, tr.output)


def finetune_recipe(c, s: Setup) -> Callable:
  """The fine-tuning from theta0 that the estimator approximates (its own phase, so that changing
  it never touches theta0 or the retrains)."""
  return training.trainer(s.loss_fn, finetune_optimizer(c.finetune), num_steps=c.finetune.num_steps)


def finetune_chunk(c, S_chunk, chunk: int, s: Setup, th: Theta0, recipe: Callable) -> dict:
  """Real fine-tunes from theta0 (what the estimator approximates), their validation losses, the
  first-order error of their outputs, and the compute time per subset: steady-state (compilation
  and a program's first run excluded, so the figure does not depend on which chunk ran first)
  and those one-time seconds apart."""
  (stacked, _), seconds, one_time = runs.steady(lambda: training.finetune_subsets(
      recipe, th.params, s.train_data, s.d.task_train, S_chunk, key=jax.random.fold_in(s.data_key, 10_000 + chunk),
      chunk_size=c.design.chunk_size))
  return {"F": np.asarray(s.val_loss(stacked)),
          "linearization_error": diagnostics.linearization_error(s.apply_fn, th.params, stacked, s.X_val),
          "seconds": np.full(len(S_chunk), seconds / len(S_chunk)),
          "seconds_compile": np.full(len(S_chunk), one_time)}


@flax.struct.dataclass
class Targets:
  keep: np.ndarray   # bool [T]: targets whose outcome varies across the random subsets
  F_full: np.ndarray  # [T]: theta0's own validation losses, F(1)


def targets(c, s: Setup, th: Theta0, retrains: dict, dsg: Design, phase: str = "retrain") -> Targets:
  """The targets whose outcome varies across the retrained subsets; the run stops here (one line,
  `driver.Unmeasurable`) when fewer than min_varying_targets do."""
  keep = common.require_varying(retrains["F"], c.data.target_variance_threshold, c.min_varying_targets, phase=phase,
                                threshold_field="data.target_variance_threshold")
  F_full = np.asarray(s.val_loss(jax.tree.map(lambda a: a[None], th.params)))[0]
  return Targets(keep=np.asarray(keep), F_full=F_full)


@runs.stored("modular.estimates")
@flax.struct.dataclass
class Estimates:
  F_est: np.ndarray          # [num_estimated, T] at the attribution ridge
  F_est_ft: np.ndarray       # [finetune.num_subsets, T]: the fine-tuned subsets at the fine-tune ridge
  F_est_truth: np.ndarray    # [K + 1, T]: the LOO masks and the full set at the fine-tune ridge
  info: dict                 # estimator accuracy and timing figures for the summary


def estimate(c, s: Setup, dsg: Design, fs: FeatureSet, ft: dict, retrains: dict, tg: Targets, th: Theta0) -> Estimates:
  """estimate.solver "replay" (default): the fine-tuning recipe of c.finetune replayed in the
  linearized model (`ks.estimate_finetune`) for every subset, scored on the fine-tunes after the
  first finetune.num_calibration (the same split the ridge methods calibrate on). "onestep" /
  "newton": calibrates the ridge on the first finetune.num_calibration fine-tunes, scores the estimate
  on all the others (both error definitions), then estimates every subset at the attribution
  ridge, and the fine-tuned subsets and LOO masks at the calibrated one."""
  e = c.estimate
  if e.solver == "replay":
    return _estimate_replay(c, s, dsg, ft, retrains, tg, th)
  train_f, target_f, task = fs.train, fs.target, s.d.task_train
  stats = ks.task_statistics(train_f, task, dsg.K)
  est = dict(method=e.solver, stats=stats) if e.solver == "onestep" else dict(method=e.solver)
  grid = 10.0 ** np.arange(-1.0, 8.0)
  S_ft, F_ft = dsg.S_est[:c.finetune.num_subsets], ft["F"]
  half = c.finetune.num_calibration
  ridge, table = ks.calibrate_ridge(train_f, task, target_f, S_ft[:half], F_ft[:half], grid=grid, **est)
  # compile (and a program's first run) timed apart from the steady figures
  F_hat_ft, t_est_ft, compile_ft = runs.steady(
      lambda: ks.estimate(train_f, task, S_ft[half:], target_f, ridge=ridge, **est))
  keep = tg.keep
  F_rand = retrains["F"]
  fit, held = np.arange(c.design.num_fit), np.arange(c.design.num_fit, len(dsg.S_rand))
  if e.attribution_ridge == "retrain":
    ridge_attr, table_attr = ks.calibrate_ridge(train_f, task, fs.target_rows(keep), dsg.S_rand[fit], F_rand[fit][:, keep],
                                                grid=grid, criterion="lds", **est)
  else:
    ridge_attr, table_attr = ridge, {}
  F_est, t_est_all, compile_all = runs.steady(
      lambda: ks.estimate(train_f, task, dsg.S_est, target_f, ridge=ridge_attr, **est))
  F_est_exact = ks.estimate(train_f, task, dsg.S_rand, target_f, ridge=ridge_attr, **est)
  # the scored fine-tuned subsets were estimated above at this ridge; only the calibration rows are new
  F_est_ft = np.concatenate([ks.estimate(train_f, task, S_ft[:half], target_f, ridge=ridge, **est), F_hat_ft])
  F_est_truth = ks.estimate(train_f, task, dsg.S_truth, target_f, ridge=ridge, **est)
  report_ = diagnostics.error_report(F_hat_ft, F_ft[half:], F_base=tg.F_full,
                                     linearization_errors=ft["linearization_error"][half:])
  ft_per_subset = float(np.mean(ft["seconds"]))
  # chunks stored before compile time was measured apart have no "seconds_compile"
  ft_compile = float(np.max(ft["seconds_compile"])) if "seconds_compile" in ft else None
  est_per_subset = t_est_all / len(dsg.S_est)
  skipped = {}   # figures undefined on this data (metrics.Undefined): None, and why
  info = {
      **report_,
      "lds_vs_retrain": metrics.attempt(skipped, "lds_vs_retrain", metrics.lds, F_est_exact[held][:, keep],
                                        F_rand[held][:, keep]),
      "lds_vs_retrain_fit": metrics.attempt(skipped, "lds_vs_retrain_fit", metrics.lds, F_est_exact[fit][:, keep],
                                            F_rand[fit][:, keep]),
      "attribution_ridge": ridge_attr, "attribution_ridge_selection": e.attribution_ridge,
      "attribution_ridge_lds_fit": {str(k): v for k, v in table_attr.items()},
      # Seconds for the same scored fine-tuned subsets both ways, and per subset: the estimator
      # timed over all estimated subsets, fine-tuning over all really fine-tuned subsets.
      "seconds_estimate": t_est_ft, "seconds_finetune": ft_per_subset * (len(S_ft) - half),
      "speedup": ft_per_subset * (len(S_ft) - half) / t_est_ft,
      "seconds_estimate_per_subset": est_per_subset, "seconds_finetune_per_subset": ft_per_subset,
      "speedup_per_subset": ft_per_subset / est_per_subset,
      "seconds_estimate_all": t_est_all, "num_estimated": int(len(dsg.S_est)), "ridge": ridge,
      # one-time seconds (compilation and a program's first run), apart from the steady-state
      # figures above: the estimator's, and one fine-tuning chunk's (the first a process runs)
      "seconds_compile_estimate": compile_ft + compile_all,
      "seconds_compile_finetune": ft_compile,
      "ridge_calibration": {str(k): v for k, v in table.items()}, "method": e.solver,
      "finetuned_subsets_calibration": int(half), "finetuned_subsets_scored": int(len(S_ft) - half),
      "skipped": skipped,
  }
  return Estimates(F_est=F_est, F_est_ft=F_est_ft, F_est_truth=F_est_truth, info=info)


def _estimate_replay(c, s: Setup, dsg: Design, ft: dict, retrains: dict, tg: Targets, th: Theta0) -> Estimates:
  e, f = c.estimate, c.finetune
  recipe = ks.Recipe(f.optimizer, f.lr, f.num_steps)
  S_all = np.concatenate([dsg.S_est, dsg.S_rand, dsg.S_truth])
  F_all, rinfo = ks.estimate_finetune(
      features.output_fn(s.apply_fn, e.output), th.params, s.train_data, s.d.task_train, S_all, (s.X_val, s.y_val),
      recipe=recipe, loss=estimation.default_loss(e.output), space=e.space, dim=e.dim,
      key=jax.random.key(c.seed + 5), memory_bytes=int(e.memory_gib * 2 ** 30), batch_size=e.feature_batch,
      return_info=True)
  n_est, n_rand = len(dsg.S_est), len(dsg.S_rand)
  F_est, F_est_exact, F_est_truth = F_all[:n_est], F_all[n_est:n_est + n_rand], F_all[n_est + n_rand:]
  half, F_ft = f.num_calibration, ft["F"]
  F_est_ft = F_est[:f.num_subsets]
  keep, F_rand = tg.keep, retrains["F"]
  fit, held = np.arange(c.design.num_fit), np.arange(c.design.num_fit, n_rand)
  report_ = diagnostics.error_report(F_est_ft[half:], F_ft[half:], F_base=tg.F_full,
                                     linearization_errors=ft["linearization_error"][half:])
  # Per subset: the steady-state replay plus the one-time setup (preconditioner, Jacobians,
  # kernels) shared over the estimated subsets; fine-tuning: its measured compute per subset.
  est_per_subset = rinfo["seconds_per_subset"] + rinfo["seconds_setup"] / n_est
  ft_per_subset = float(np.mean(ft["seconds"]))
  scored = len(F_est_ft) - half
  skipped = {}   # figures undefined on this data (metrics.Undefined): None, and why
  info = {
      **report_,
      "ratio_to_no_change": report_["median_relative_error"] / report_["no_change_median_relative_error"],
      "lds_vs_retrain": metrics.attempt(skipped, "lds_vs_retrain", metrics.lds, F_est_exact[held][:, keep],
                                        F_rand[held][:, keep]),
      "lds_vs_retrain_fit": metrics.attempt(skipped, "lds_vs_retrain_fit", metrics.lds, F_est_exact[fit][:, keep],
                                            F_rand[fit][:, keep]),
      "method": "replay", "space": rinfo["space"], "output": e.output, "memory_bytes": rinfo["memory_bytes"],
      "recipe": {"optimizer": f.optimizer, "lr": f.lr, "num_steps": f.num_steps},
      "seconds_estimate": est_per_subset * scored, "seconds_finetune": ft_per_subset * scored,
      "speedup": ft_per_subset / est_per_subset,
      "seconds_estimate_per_subset": est_per_subset, "seconds_finetune_per_subset": ft_per_subset,
      "speedup_per_subset": ft_per_subset / est_per_subset,
      "seconds_setup": rinfo["seconds_setup"], "seconds_estimate_all": rinfo["seconds_replay"] + rinfo["seconds_setup"],
      "num_estimated": int(len(S_all)),
      "seconds_compile_finetune": float(np.max(ft["seconds_compile"])) if "seconds_compile" in ft else None,
      "finetuned_subsets_calibration": int(half), "finetuned_subsets_scored": int(scored),
      "skipped": skipped,
  }
  return Estimates(F_est=F_est, F_est_ft=F_est_ft, F_est_truth=F_est_truth, info=info)


def run_baselines(c, s: Setup, th: Theta0, fs: FeatureSet, tg: Targets) -> dict:
  """Predicted LOO [K, T] of influence functions, TracIn and a TRAK-style score on the kept targets."""
  keep, K = tg.keep, s.K
  Xt, yt = s.X_val[keep], s.y_val[keep]
  n_ck = c.baselines.tracin_checkpoints
  every = c.train.num_steps // n_ck
  # TracIn weighs each checkpoint by the learning rate in force when it was saved.
  rates = [float(s.schedule((i + 1) * every - 1)) for i in range(n_ck)]
  kept = fs.target_rows(keep)
  influence, influence_solve = baselines.influence(
      s.apply_fn, th.params, s.d.X_train, s.d.y_train, s.d.task_train, Xt, yt, num_tasks=K,
      curvature=c.baselines.curvature, damping=c.baselines.damping, cg_iters=c.baselines.cg_iters, return_info=True)
  return {
      "influence": influence, "influence_solve": influence_solve,   # the damping CG converged at
      "tracin": baselines.tracin(s.apply_fn, [jax.tree.map(lambda a: a[i], th.checkpoints) for i in range(n_ck)], rates,
                                 s.d.X_train, s.d.y_train, s.d.task_train, Xt, yt, num_tasks=K),
      "trak": baselines.trak(fs.train, s.d.task_train, kept, num_tasks=K),
  }


# ----------------------------------------------------------------------------------------------
# Composition.

def problems(config, run: runs.Run, families=None):
  """The experiment's one Problem (or, with `config.study.enabled`, the regime study's cells)."""
  if config.study.enabled:
    from ksurrogate_experiments.modular import study   # the study builds on this module's phases
    yield from study.problems(config, run, families)
    return
  c = config
  cs = c.design.chunk_size
  s = run.phase("setup", setup, c, store=False)
  dsg = run.phase("design", design, c, s, store=False)
  th = run.phase("theta0", theta0, c, s)
  retrains = run.outcomes("retrain", retrain_chunk, c, dsg.S_rand, s, chunk_size=cs)
  tg = run.phase("targets", targets, c, s, th, retrains, dsg, store=False)   # stops here if nothing varies
  truths = truth_retrains(c, run, s, dsg)
  fs = run.phase("features", featurize, c, s, th)
  recipe = run.phase("finetune_recipe", finetune_recipe, c, s, store=False)
  ft = run.outcomes("finetune", finetune_chunk, c, dsg.S_est[:c.finetune.num_subsets], s, th, recipe, chunk_size=cs)
  ft_loo = run.outcomes("finetune_loo", finetune_chunk, c, dsg.S_truth, s, th, recipe, chunk_size=cs)
  est = run.phase("estimate", estimate, c, s, dsg, fs, ft, retrains, tg, th)
  extra_loo = run.phase("baselines", run_baselines, c, s, th, fs, tg)
  yield _problem(c, run, s, dsg, th, retrains, truths, tg, ft, ft_loo, est, extra_loo)


def truth_retrains(c, run: runs.Run, s: Setup, dsg: Design) -> list:
  """The leave-one-out and full-set retrains of every training seed (phases truth_seed<r>)."""
  return [run.outcomes(f"truth_seed{r}", functools.partial(retrain_chunk, train_seed=r), c, dsg.S_truth, s,
                       chunk_size=c.design.chunk_size) for r in range(c.truth.seeds)]


def loo_effects(truths: list, K: int) -> np.ndarray:
  """[seeds, K, T]: F_r(1 - e_k) - F_r(1) per training seed."""
  return np.stack([t["F"][:K] - t["F"][K][None] for t in truths])


def retrain_losses(c, run: runs.Run, outcomes: list) -> tuple[np.ndarray, int]:
  """(final training losses of every retrain in `outcomes`, how many stay above
  train.converged_loss); the latter are warned about once."""
  losses = np.concatenate([o["final_train_loss"] for o in outcomes])
  unconverged = int(np.sum(losses > c.train.converged_loss))
  if unconverged:
    why = ("the tiny config is a smoke test: its retrains are too short to fit" if c.smoke_test else
           "their outcomes are noise: train longer")
    run.warn(f"{unconverged} of {len(losses)} retrains end with training loss above {c.train.converged_loss} after "
             f"{c.train.retries} retries (max {losses.max():.3f}); {why}")
  return losses, unconverged


def task_labels(K: int) -> list[str]:
  """(row, column) of each grid-block task."""
  side = int(np.sqrt(K))
  return [f"({i // side},{i % side})" for i in range(K)]


def _problem(c, run, s: Setup, dsg: Design, th: Theta0, retrains: dict, truths: list, tg: Targets, ft: dict,
             ft_loo: dict, est: Estimates, extra_loo: dict) -> driver.Problem:
  K, keep = dsg.K, tg.keep
  losses, unconverged = retrain_losses(c, run, [retrains, *truths])
  attempts = np.concatenate([retrains["attempts"]] + [t["attempts"] for t in truths])
  fit, held = np.arange(c.design.num_fit), np.arange(c.design.num_fit, len(dsg.S_rand))
  # Ground truths: LOO by retraining from scratch on every training seed (the driver takes their
  # mean as the truth and their split-half reliability as its ceiling), and LOO by the fine-tuning
  # from theta0 that the estimator approximates (full-batch and deterministic: no seed noise).
  effects = loo_effects(truths, K)[:, :, keep]
  loo_ft = (ft_loo["F"][:K] - ft_loo["F"][K][None])[:, keep]
  predictions = {**{k: v for k, v in extra_loo.items() if k != "influence_solve"},
                 "estimator_direct": (est.F_est_truth[:K] - est.F_est_truth[K][None])[:, keep]}
  # Fine-tuned subsets beyond the estimator's calibration: the first num_fit fit surrogates (on
  # the real fine-tunes, and on the estimates of the same subsets), the rest are held out.
  ncal, nfit = c.finetune.num_calibration, c.finetune.num_fit
  S_ft = dsg.S_est[:c.finetune.num_subsets]
  ft_fit, ft_held = np.arange(ncal, ncal + nfit), np.arange(ncal + nfit, len(S_ft))
  F_ft = ft["F"][:, keep]
  single_seed = (metrics.attempt({}, "single_seed", metrics.loo_correlation, effects[0], effects.mean(0))
                 if len(effects) >= 2 else None) or {}
  curve = th.curve
  return driver.Problem(
      name="modular", S=dsg.S_rand, F=retrains["F"][:, keep], splits=[(fit, held)],
      truths={"loo": driver.Truth(effects, predictions=predictions),
              "loo_finetune": driver.Truth(loo_ft, predictions=predictions)},
      other_tests={"finetune": (S_ft[ft_held], F_ft[ft_held])},
      sources={"estimated": (dsg.S_est, est.F_est[:, keep]),
               "finetuned": (S_ft[ft_fit], F_ft[ft_fit]),
               "estimated_same": (S_ft[ft_fit], est.F_est_ft[ft_fit][:, keep])},
      estimates_of={"estimated": "exact", "estimated_same": "finetuned"},
      info={"estimator": est.info, "influence_solve": extra_loo.get("influence_solve"),
            "ground_truth": {"training_seeds": int(len(effects)),
                             "single_seed_vs_mean": single_seed,
                             "loo_effect_sd": float(effects.mean(0).std()),
                             "seed_noise_sd": float(effects.std(0, ddof=1).mean()) if len(effects) >= 2 else float("nan"),
                             "finetune_loo_effect_sd": float(loo_ft.std()),
                             "finetuned_subsets": {"calibration": int(ncal), "fit": int(len(ft_fit)), "heldout": int(len(ft_held))}},
            # where the retrains sit (the fit subsets, the authors' filter) beside the released outcomes
            "outcomes": regime.summary(retrains["F"][fit], c.data.op),
            "targets": {"kept": int(keep.sum()), "total": int(len(keep)),
                        "variance_threshold": c.data.target_variance_threshold},
            "retrain_final_train_loss": {"mean": float(losses.mean()), "max": float(losses.max()),
                                         "unconverged": unconverged, "threshold": c.train.converged_loss,
                                         "retried": int(np.sum(attempts > 1))},
            "theta0": {"final_train_loss": float(np.asarray(th.curve)[-1]), "val_loss": float(tg.F_full.mean()),
                       "val_accuracy": float(np.mean(np.argmax(np.asarray(s.apply_fn(th.params, s.X_val)), -1) == s.y_val))}},
      figures={"training_curves": lambda result, path: report.curves(
          path, {"theta0 (all tasks)": curve}, f"p={c.data.p} {c.data.op}: full-data training loss")},
      outcome_name="validation loss", task_labels=task_labels(K))
