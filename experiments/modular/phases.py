"""Modular-arithmetic phases: each a pure function of the config view it reads and the results it
is given (`ksurrogate.harness.runs.Run` stores, checks and reuses them, so a killed run resumes
with the same numbers: every random choice is a function of (config.seed, chunk index), never of
timing). `pipeline.py` composes them into the experiment's Problem, `study.py` into the regime
study's cells; benchmarks use the builders too.
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
from ksurrogate_experiments.modular import config as config_lib
from ksurrogate_experiments.modular import data as data_lib
from ksurrogate_experiments.modular import model as model_lib
from ksurrogate import baselines, diagnostics, estimators, features, metrics, training
from ksurrogate.harness import runs


# ----------------------------------------------------------------------------------------------
# Public builders (benchmarks use these too).

def schedule(c_train):
  if c_train.lr_schedule == "constant":
    return optax.constant_schedule(c_train.lr)
  return optax.warmup_cosine_decay_schedule(0.0, c_train.lr, c_train.warmup_steps, c_train.num_steps, end_value=0.0)


def optimizer(c_train) -> optax.GradientTransformation:
  """theta0's and every retrain's optimizer: AdamW on the warmup + cosine schedule."""
  return optax.adamw(schedule(c_train), weight_decay=c_train.weight_decay, b2=c_train.b2)


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
  it never touches theta0 or the retrains): `config.recipe(c)`, the recipe the replay follows."""
  recipe = config_lib.recipe(c)
  return training.trainer(s.loss_fn, recipe.optax(), num_steps=recipe.steps)


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
  F_est: np.ndarray          # [num_estimated, T]: what the surrogates fit (the ridge solvers: at the attribution ridge)
  F_est_ft: np.ndarray       # [finetune.num_subsets, T]: the fine-tuned subsets (the ridge solvers: at the fine-tune ridge)
  F_est_truth: np.ndarray    # [K + 1, T]: the LOO masks and the full set (likewise)
  info: dict                 # the estimator's summary block (`EstimatorReport.to_summary`)


def estimate(c, s: Setup, dsg: Design, fs: FeatureSet, ft: dict, retrains: dict, tg: Targets, th: Theta0) -> Estimates:
  """The estimator `config.estimator(c)` for every estimated, retrained and LOO subset, scored on
  the fine-tunes after the first finetune.num_calibration (`EstimatorReport.scored`).

  "replay" (default): the finetune block's recipe replayed in the linearized model on the
  `estimate.output`, its preconditioner averaged over every subset it estimates. "onestep" /
  "newton": the ridge minimizer on the stored margin features, its ridge calibrated on the first
  finetune.num_calibration fine-tunes; with estimate.attribution_ridge "retrain" the subsets the
  surrogates fit are estimated at a second ridge, the best LDS against the fit retrains."""
  e, f = c.estimate, c.finetune
  est = config_lib.estimator(c)
  half, nft = f.num_calibration, f.num_subsets
  S_ft, F_ft = dsg.S_est[:nft], ft["F"]
  keep, F_rand = tg.keep, retrains["F"]
  fit, held = np.arange(c.design.num_fit), np.arange(c.design.num_fit, len(dsg.S_rand))
  if est.requires_calibration:   # the ridge minimizer, on the features phase's margin features
    data = estimators.Data.classifier(s.apply_fn, th.params, s.train_data, s.d.task_train, (s.X_val, s.y_val),
                                      output=fs.output, num_tasks=dsg.K)
    state = est.prepare(data, features=(fs.train, fs.target), calibrate=(S_ft[:half], F_ft[:half]))
    attribution = state
    if e.attribution_ridge == "retrain":
      attribution = est.calibrated(state, dsg.S_rand[fit], F_rand[fit][:, keep], criterion="lds", targets=keep)
  else:
    S_all = np.concatenate([dsg.S_est, dsg.S_rand, dsg.S_truth])
    data = estimators.Data.classifier(s.apply_fn, th.params, s.train_data, s.d.task_train, (s.X_val, s.y_val),
                                      output=e.output, num_tasks=dsg.K)
    state = attribution = est.prepare(data, key=jax.random.key(c.seed + 5), design=S_all)
  if attribution is state:
    (F_est, F_est_exact, F_est_truth), report = _estimate_blocks(est, state, dsg.S_est, dsg.S_rand, dsg.S_truth)
    F_est_ft = F_est[:nft]
  else:
    (F_est, F_est_exact), report = _estimate_blocks(est, attribution, dsg.S_est, dsg.S_rand)
    (F_est_ft, F_est_truth), _ = _estimate_blocks(est, state, S_ft, dsg.S_truth)
    # the summary's ridge is the one scored against the fine-tunes
    report = dataclasses.replace(report, ridge=state.ridge, calibration=state.calibration,
                                 num_calibration=state.num_calibration)
  skipped = {}   # figures undefined on this data (metrics.Undefined): None, and why
  details = {
      "lds_vs_retrain": metrics.attempt(skipped, "lds_vs_retrain", metrics.lds, F_est_exact[held][:, keep],
                                        F_rand[held][:, keep]),
      "lds_vs_retrain_fit": metrics.attempt(skipped, "lds_vs_retrain_fit", metrics.lds, F_est_exact[fit][:, keep],
                                            F_rand[fit][:, keep]),
      "finetuned_subsets_calibration": int(half)}
  if est.requires_calibration:
    details.update({"attribution_ridge": attribution.ridge, "attribution_ridge_selection": e.attribution_ridge,
                    "attribution_ridge_lds_fit": {str(k): v for k, v in (attribution.calibration or {}).items()}
                    if attribution is not state else {}})
  report = report.scored(
      F_est_ft[half:], F_ft[half:], F_base=tg.F_full, linearization_errors=ft["linearization_error"][half:],
      seconds_real_per_subset=float(np.mean(ft["seconds"])),
      # chunks stored before compile time was measured apart have no "seconds_compile"
      seconds_real_compile=float(np.max(ft["seconds_compile"])) if "seconds_compile" in ft else None,
      details=details, skipped=skipped)
  return Estimates(F_est=F_est, F_est_ft=F_est_ft, F_est_truth=F_est_truth, info=report.to_summary())


def _estimate_blocks(est, state, *blocks):
  """The estimates of several blocks of subsets in one call (one report), split back."""
  F, report = est.estimate(state, np.concatenate(blocks))
  return np.split(F, np.cumsum([len(b) for b in blocks])[:-1]), report


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
