"""Estimated outcomes and gradient baselines of the tasks experiment, through the library.

The trainable part is the LoRA pytree alone (`ks.estimators.Data` over it, the frozen model closed
over by the output function: per answer token, its margin). Every gradient is projected per layer
(`ks.projection`, LoGra: each LoRA B block's input side kept exact at the rank, its output side
Gaussian), never formed whole. Two library estimators are prepared on those features:
  onestep  `ks.estimators.Onestep` on the stored features, ridge calibrated on the first
           `estimate.num_calibration` fit fine-tunes;
  replay   `ks.estimators.Replay` of the fine-tunes' Adam recipe in the same projected space, its
           preconditioner folded into the features per block in factored form
           (`projection.factored`), step scale calibrated on the same fine-tunes.
The one whose estimates of the other fit fine-tunes are closer (median relative error) estimates
every subset; the held-out fine-tunes score it (never used to choose anything).

Baselines (`ks.baselines`, predicted LOO [K, T] per target, positive = the task helps), in the
same feature space, where the linearized model is o0 + phi z: influence functions (Gauss-Newton,
CG), TracIn with one checkpoint (theta0: its gradient dot products) and TRAK (one row per answer
token, margins); and the similarity scores of the selection (cosine of per-task mean loss
gradients with each target's).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import ksurrogate as ks
from ksurrogate import projection
from ksurrogate.harness import runs
from ksurrogate_experiments.tasks import lora as lora_lib

SOLVERS = ("onestep", "replay")


def output_fn(s, frozen):
  """(lora, (h, packed)) -> [C] answer-token margins of the model with that LoRA."""
  return lambda lo, ex: lora_lib.answer_margins(lora_lib.merge(frozen, lo, s.recipe.scale), s.cfg, s.recipe.first, *ex)


def data(s, frozen, lora0, cch) -> ks.estimators.Data:
  """The estimators' data: the LoRA pytree at theta0 (B = 0), training and target examples."""
  return ks.estimators.Data(output_fn(s, frozen), lora0, (cch.h_train, s.train.packed), s.train.group,
                            (cch.h_eval, s.evals.packed), lora_lib.masked_token_loss(), output="answer_margins",
                            num_tasks=s.K)


def logra(s, frozen, lora0, dim: int, dim_in: int, key, sqrt_p=None):
  """(tapped, projections, factors) of the answer margins at theta0 over the LoRA B blocks (the A
  blocks' gradients are exactly zero at B = 0); sqrt_p (a LoRA-shaped pytree) folds a per-parameter
  scale into each B block's projections in factored form (`projection.factored`, `scaled`)."""
  merged = lora_lib.merge(frozen, lora0, s.recipe.scale)
  tapped = projection.dense_taps(lambda ex: lora_lib.answer_margins(merged, s.cfg, s.recipe.first, *ex), s.adapted)
  pairs = {n: (ab["A"], ab["B"]) for n, ab in lora0.items()}
  shapes = {b: v for b, v in projection.lora_shapes(pairs).items() if b.endswith("/B")}
  dims = projection.split_dim(dim, shapes, min(dim_in, s.recipe.rank))
  P = projection.projections(key, shapes, dims)
  if sqrt_p is not None:
    P = projection.scaled(P, {f"{n}/B": projection.factored(sqrt_p[n]["B"]) for n in pairs})
  return tapped, P, projection.lora_factors(pairs, s.recipe.scale)


def project(s, cch, parts, batch_size: int):
  """(train, target) Features of the LoGra parts (`logra`)."""
  tapped, P, factors = parts
  kw = dict(factors=factors, output="answer_margins", batch_size=batch_size)
  return (projection.featurize(tapped, P, cch.h_train, s.train.packed, **kw),
          projection.featurize(tapped, P, cch.h_eval, s.evals.packed, **kw))


@runs.stored("tasks.features")
@dataclasses.dataclass(frozen=True)
class FeatureSet:
  train_phi: np.ndarray
  train_offsets: np.ndarray
  eval_phi: np.ndarray
  eval_offsets: np.ndarray
  seconds: float          # all of it: training and target examples

  def features(self, s):
    F = lambda phi, o, y: ks.Features(phi, o, y, "answer_margins")  # noqa: E731
    return F(self.train_phi, self.train_offsets, s.train.packed), F(self.eval_phi, self.eval_offsets, s.evals.packed)


def featurize(c, s, cch, t0, frozen) -> FeatureSet:
  lora0 = s.lora0(0, c.model.init_seed)
  parts = logra(s, frozen, lora0, c.estimate.dim, c.estimate.dim_in, jax.random.key(c.seed + 5))
  with runs.stopwatch() as sw:
    tr, ev = project(s, cch, parts, c.estimate.feature_batch)
  return FeatureSet(tr.phi, tr.offsets, ev.phi, ev.offsets, sw.seconds)


@runs.stored("tasks.estimates")
@dataclasses.dataclass(frozen=True)
class Estimates:
  F_est: np.ndarray        # [num_estimated, T]
  F_est_rand: np.ndarray   # [num_subsets, T] the fine-tuned random subsets, estimated
  F_est_truth: np.ndarray  # [rows of S_truth, T] leave-one-out, full set, leave-two-out, estimated
  info: dict               # the estimator block (`EstimatorReport.to_summary`)


def estimate(c, s, dsg, cch, t0, frozen, fs: FeatureSet, tuned: dict) -> Estimates:
  """Both estimators prepared and calibrated on the first estimate.num_calibration fit
  fine-tunes, the better on the other fit fine-tunes estimating every subset; its report scored
  against the held-out fine-tunes, with the features' seconds counted in its setup."""
  lora0 = s.lora0(0, c.model.init_seed)
  d = data(s, frozen, lora0, cch)
  n_cal, n_fit = c.estimate.num_calibration, c.design.num_fit
  cal = (dsg.S_rand[:n_cal], tuned["F_examples"][:n_cal])
  fit, held = np.arange(n_cal, n_fit), np.arange(n_fit, len(dsg.S_rand))
  F_real, F0 = tuned["F"], s.per_target(t0.F0_examples[None])[0]
  key = jax.random.key(c.seed + 5)
  prepared = {}
  if "onestep" in c.estimate.solvers:
    est = ks.estimators.Onestep(dim=fs.train_phi.shape[-1], mean=True, ridge_grid=tuple(10.0 ** np.arange(-4.0, 6.0)))
    prepared["onestep"] = (est, est.prepare(d, features=fs.features(s), calibrate=cal), fs.seconds)
  if "replay" in c.estimate.solvers:   # its own features (the preconditioner folded in): timed in its setup
    est = ks.estimators.Replay(recipe=s.recipe.optimizer, space="parameter", chunk_size=c.estimate.chunk_size)
    state = est.prepare(d, design=dsg.S_est, calibrate=cal, featurizer=lambda sqrt_p: project(
        s, cch, logra(s, frozen, lora0, c.estimate.dim, c.estimate.dim_in, key, sqrt_p), c.estimate.feature_batch))
    prepared["replay"] = (est, state, 0.0)
  on_fit = {}
  for name, (est, state, _) in prepared.items():
    F_hat, _ = est.estimate(state, dsg.S_rand[fit])
    on_fit[name] = ks.metrics.relative_error(s.per_target(F_hat), F_real[fit])["median"]
  chosen = min(on_fit, key=on_fit.get)
  est, state, feature_seconds = prepared[chosen]
  F_est, report = est.estimate(state, dsg.S_est)
  F_rand, _ = est.estimate(state, dsg.S_rand)
  F_truth, _ = est.estimate(state, dsg.S_truth)
  F_est, F_rand, F_truth = (s.per_target(F) for F in (F_est, F_rand, F_truth))
  report = dataclasses.replace(report, seconds_setup=report.seconds_setup + feature_seconds)
  report = report.scored(F_rand[held], F_real[held], F_base=F0, seconds_real_per_subset=float(np.mean(tuned["seconds"])),
                         seconds_real_compile=float(np.max(tuned["seconds_compile"])),
                         details={"projection": "logra", "chosen_on": "median relative error on the fit fine-tunes "
                                  "after the calibration ones", "fit_median_relative_error": on_fit,
                                  "fit_no_change_median_relative_error": ks.metrics.relative_error(
                                      np.tile(F0, (len(fit), 1)), F_real[fit])["median"],
                                  "scored_on": "held-out fine-tunes"})
  return Estimates(F_est=F_est, F_est_rand=F_rand, F_est_truth=F_truth, info=report.to_summary())


# ---------------------------------------------------------------------------------------------
# Baselines in the feature space

def _linear_model(fs: FeatureSet):
  """(apply_fn, X, X_t): the linearized model o0 + phi z with the offsets as a last input column,
  so `ks.baselines` sees an ordinary (params, inputs) -> outputs function."""
  X = np.concatenate([fs.train_phi, fs.train_offsets[..., None]], -1)
  X_t = np.concatenate([fs.eval_phi, fs.eval_offsets[..., None]], -1)
  return (lambda z, x: jnp.einsum("...cd,d->...c", x[..., :-1], z) + x[..., -1]), X, X_t


def _per_target(s, scores_KxN) -> np.ndarray:
  onehot = np.eye(s.T)[s.evals.group]
  return np.asarray(scores_KxN) @ (onehot / onehot.sum(0))


def baselines(c, s, fs: FeatureSet) -> dict:
  """Predicted LOO [K, T] of influence, TracIn (checkpoint theta0) and TRAK, and the per-task
  cosine similarities [K, T] of mean loss gradients, all on the LoGra features."""
  loss = lora_lib.masked_token_loss()
  apply_fn, X, X_t = _linear_model(fs)
  loss_fn = lambda o, y: jax.vmap(loss.value)(o, y)  # noqa: E731
  z0 = jnp.zeros(fs.train_phi.shape[-1], jnp.float32)
  kw = dict(num_tasks=s.K, loss_fn=loss_fn, batch_size=c.estimate.feature_batch * 8)
  influence, info = ks.baselines.influence(apply_fn, z0, X, s.train.packed, s.train.group, X_t, s.evals.packed,
                                           damping=c.baselines.damping, return_info=True, **kw)
  tracin = ks.baselines.tracin(apply_fn, [z0], [s.recipe.lr], X, s.train.packed, s.train.group, X_t, s.evals.packed, **kw)
  # TRAK: one margin row per answer token; padding rows have zero features and do not count
  C = fs.train_phi.shape[1]
  mask, mask_t = s.train.packed[:, 2].astype(bool), s.evals.packed[:, 2].astype(bool)
  rows = lambda phi, o: ks.Features(phi.reshape(-1, 1, phi.shape[-1]), o.reshape(-1, 1), None, "margin")  # noqa: E731
  trak = np.asarray(ks.baselines.trak(rows(fs.train_phi[mask], fs.train_offsets[mask]), s.train.group[
      np.nonzero(mask)[0]], rows(fs.eval_phi.reshape(-1, fs.eval_phi.shape[-1])[mask_t.ravel()][:, None], fs.eval_offsets[
          mask_t][:, None]), num_tasks=s.K))
  example = np.repeat(np.arange(len(mask_t)), C)[mask_t.ravel()]
  per_example = np.stack([np.bincount(example, w, minlength=len(mask_t)) for w in trak]) / mask_t.sum(1)
  return {"influence": _per_target(s, influence), "tracin": _per_target(s, tracin),
          "trak": _per_target(s, per_example), "similarity": similarity(fs, s, loss), "influence_solve": info}


def similarity(fs: FeatureSet, s, loss) -> np.ndarray:
  """[K, T] cosine of each task's mean loss gradient (in the feature space) with each target's."""
  def grads(phi, o, y, group, n):
    r = np.asarray(jax.vmap(jax.grad(loss.value))(jnp.asarray(o), jnp.asarray(y)))   # dloss/do [N, C]
    per = np.einsum("ncd,nc->nd", phi, r)
    return np.stack([per[group == k].mean(0) for k in range(n)])
  G = grads(fs.train_phi, fs.train_offsets, s.train.packed, s.train.group, s.K)
  G_t = grads(fs.eval_phi, fs.eval_offsets, s.evals.packed, s.evals.group, s.T)
  norm = lambda a: a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-30)  # noqa: E731
  return norm(G) @ norm(G_t).T
