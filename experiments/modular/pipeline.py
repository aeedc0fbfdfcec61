"""Modular-arithmetic attribution pipeline: resumable phases, each writing to the run directory.

theta0 -> exact retrains (LOO + random subsets, chunked) -> features at theta0 -> real fine-tunes
(ridge calibration + estimator error) -> estimated outcomes -> baselines -> one driver.Problem.
Every phase's output is an orbax checkpoint (params, outcome chunks) or an atomic file, and a
completion record lists finished chunks, so a killed run resumes where it stopped with the same
numbers: every random choice is a function of (config.seed, chunk index), never of timing.
"""
from __future__ import annotations

import contextlib
import functools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

import ksurrogate as ks
from experiments.modular import data as data_lib
from experiments.modular import model as model_lib
from ksurrogate import baselines, driver, features, finetune, metrics, report, retrain, store


class Phases:
  """Times phases and remembers the figures for the summary's timing table."""

  def __init__(self):
    self.seconds = {}

  @contextlib.contextmanager
  def __call__(self, name):
    t0 = time.perf_counter()
    print(f"[modular] phase {name} ...", flush=True)
    yield
    self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


@functools.lru_cache(maxsize=None)
def _model(vocab, classes, d_model, layers, heads, mlp, activation):
  return model_lib.Transformer(vocab, classes, 4, d_model=d_model, num_layers=layers, num_heads=heads,
                               mlp_dim=mlp, activation=activation)


def _schedule(name, lr, warmup, steps):
  if name == "constant":
    return optax.constant_schedule(lr)
  if name == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps, end_value=0.0)
  raise ValueError(f"lr_schedule: unknown value {name!r}; expected 'constant' or 'cosine'")


@functools.lru_cache(maxsize=None)
def _optimizer(lr, wd, b2, schedule, warmup, steps):
  # Built once per setting and cached: jit keys on the optimizer object.
  return optax.adamw(_schedule(schedule, lr, warmup, steps), weight_decay=wd, b2=b2)


@functools.lru_cache(maxsize=None)
def _finetune_optimizer(name, lr):
  if name == "sgd":
    return optax.sgd(lr)
  if name == "adam":
    return optax.adam(lr)
  raise ValueError(f"finetune_optimizer: unknown value {name!r}; expected 'sgd' or 'adam'")


def _checkpointer():
  return ocp.StandardCheckpointer()


def _save_tree(path: pathlib.Path, tree) -> None:
  ck = _checkpointer()
  ck.save(path.resolve(), tree, force=True)
  ck.wait_until_finished()


def _load_tree(path: pathlib.Path):
  return _checkpointer().restore(path.resolve())


class ChunkedResult:
  """Outcome chunks as orbax checkpoints plus a completion record (atomic JSON)."""

  def __init__(self, directory: pathlib.Path, num_chunks: int, fingerprint: dict):
    self.dir = directory
    self.record = directory / "completed.json"
    self.fingerprint = fingerprint
    directory.mkdir(parents=True, exist_ok=True)
    if self.record.exists():
      rec = store.load_json(self.record)
      if rec["fingerprint"] != _canonical(fingerprint):
        raise ValueError(f"workdir: {directory} holds results of a different config ({rec['fingerprint']}); use a new --workdir")
      self.done = set(rec["chunks"])
    else:
      self.done = set()
    self.num_chunks = num_chunks

  def path(self, i):
    return self.dir / f"chunk_{i:05d}"

  def save(self, i, tree):
    _save_tree(self.path(i), tree)
    self.done.add(i)
    store.save_json(self.record, {"fingerprint": self.fingerprint, "chunks": sorted(self.done)})

  def load(self, i):
    return _load_tree(self.path(i))


def _canonical(fingerprint: dict):
  """The fingerprint as it reads back from JSON (tuples become lists, numpy scalars plain)."""
  return json.loads(store.dumps(fingerprint))


def _fingerprint(config, *keys):
  return {k: (config[k] if not hasattr(config[k], "to_dict") else config[k].to_dict()) for k in keys}


MODEL_KEYS = ("p", "op", "bar", "train_fraction", "seed", "d_model", "num_layers", "num_heads", "mlp_dim",
              "activation", "num_steps", "batch_size", "lr", "weight_decay", "num_targets", "lr_schedule",
              "warmup_steps", "common_random_numbers")


def _cached(directory: pathlib.Path, fingerprint: dict) -> bool:
  """True if `directory` holds a finished phase made with this fingerprint; refuses a different one."""
  record = directory / "fingerprint.json"
  if not record.exists():
    return False
  saved = store.load_json(record)
  if saved != _canonical(fingerprint):
    raise ValueError(f"workdir: {directory} holds results of a different config ({saved}); use a new --workdir")
  return True


def _mark_done(directory: pathlib.Path, fingerprint: dict) -> None:
  store.save_json(directory / "fingerprint.json", fingerprint)


def problems(config, workdir):
  workdir = pathlib.Path(workdir)
  phases = Phases()
  c = config
  with phases("data"):
    d = data_lib.make(c.p, c.op, c.bar, c.train_fraction, c.seed)
    rng = np.random.default_rng(c.seed)
    val_rows = np.sort(rng.choice(len(d.X_val), min(c.num_targets, len(d.X_val)), replace=False))
    X_val, y_val = d.X_val[val_rows], d.y_val[val_rows]
    net = _model(d.vocab_size, d.num_classes, c.d_model, c.num_layers, c.num_heads, c.mlp_dim, c.activation)
    apply_fn, init_fn = net.apply, _init_fn(net)
    opt = _optimizer(c.lr, c.weight_decay, 0.98, c.lr_schedule, c.warmup_steps, c.num_steps)
    sampling = "shared" if c.common_random_numbers else "subset"
    data_key = jax.random.key(c.seed + 3)   # theta0's minibatch stream; with CRN every retrain's too
    init_key = jax.random.key(c.seed)
    K = d.num_tasks
    val_loss = jax.jit(jax.vmap(lambda p: finetune.cross_entropy(apply_fn(p, X_val), y_val)))
  print(f"[modular] p={c.p} op={c.op} K={K} N={len(d.X_train)} targets={len(X_val)}", flush=True)

  # theta0: the full-data model, with checkpoints for TracIn.
  with phases("theta0"):
    th_dir = workdir / "theta0"
    th_fp = _fingerprint(c, *MODEL_KEYS, "tracin_checkpoints")
    if _cached(th_dir, th_fp):
      saved = _load_tree(th_dir / "params")
      params0, ckpts = saved["params"], saved["checkpoints"]
      curve = store.load_arrays(th_dir / "curve.npz")["loss"]
    else:
      params0, curve, ckpts = jax.jit(lambda p: finetune.train(
          apply_fn, p, d.X_train, d.y_train, jnp.ones(len(d.y_train)), optimizer=opt, num_steps=c.num_steps,
          batch_size=c.batch_size, key=data_key, checkpoint_every=c.num_steps // c.tracin_checkpoints,
          sampling=sampling))(
              init_fn(init_key))
      _save_tree(th_dir / "params", {"params": params0, "checkpoints": ckpts})
      store.save_arrays(th_dir / "curve.npz", loss=np.asarray(curve))
      _mark_done(th_dir, th_fp)
    F_full = np.asarray(val_loss(jax.tree.map(lambda t: t[None], params0)))[0]

  # Exact retrains from the same init: K leave-one-out masks, then random subsets of fixed size.
  S_rand = np.asarray(ks.subsets.fixed_size(jax.random.key(c.seed + 2), c.num_subsets, K, c.subset_size))
  S_exact = np.concatenate([np.asarray(ks.subsets.leave_one_out(K)), S_rand])
  n_chunks = -(-len(S_exact) // c.chunk_size)
  fp = _fingerprint(c, *MODEL_KEYS, "num_subsets", "subset_size", "chunk_size", "converged_train_loss",
                    "retrain_retries")
  chunks = ChunkedResult(workdir / "retrain", n_chunks, fp)
  with phases("retrain"):
    todo = [i for i in range(n_chunks) if i not in chunks.done]
    for i in tqdm(todo, desc="retrain chunks", disable=not c.progress):
      S_c = S_exact[i * c.chunk_size:(i + 1) * c.chunk_size]
      chunks.save(i, _retrain_chunk(c, S_c, i, d, init_fn, apply_fn, opt, init_key, data_key, val_loss))
    loaded = [chunks.load(i) for i in range(n_chunks)]
    F_exact = np.concatenate([np.asarray(r["F"]) for r in loaded])
    retrain_losses = np.concatenate([np.asarray(r["final_train_loss"]) for r in loaded])
    retrain_attempts = np.concatenate([np.asarray(r["attempts"]) for r in loaded])
  F_loo, F_rand = F_exact[:K], F_exact[K:]
  # A retrain that never fit its data gives an outcome of optimization noise, not of the subset.
  unconverged = int(np.sum(retrain_losses > c.converged_train_loss))
  if unconverged:
    print(f"[modular] WARNING: {unconverged} of {len(retrain_losses)} retrains end with training loss above "
          f"{c.converged_train_loss} after {c.retrain_retries} retries (max {retrain_losses.max():.3f}); their "
          "outcomes are noise: train longer", flush=True)

  # Targets whose outcome varies across the random subsets (the official code drops the others).
  keep = metrics.varying_targets(F_rand, c.target_variance_threshold)
  if keep.sum() < 2:
    raise ValueError(f"target_variance_threshold: only {int(keep.sum())} targets vary more than "
                     f"{c.target_variance_threshold} across subsets; lower it or train longer")
  loo_true = (F_loo - F_full[None])[:, keep]   # [K, T]: F(1 - e_k) - F(1)

  # Features at theta0, then real fine-tunes from theta0 on a few estimation subsets.
  S_est = np.asarray(ks.subsets.sized(jax.random.key(c.seed + 4), c.num_estimated, K, *c.estimated_sizes))
  with phases("features"):
    fdir = workdir / "features"
    f_fp = _fingerprint(c, *MODEL_KEYS, "tracin_checkpoints", "proj_dim")
    if _cached(fdir, f_fp):
      train_f, target_f = features.load(fdir / "train"), features.load(fdir / "target")
    else:
      fkey = jax.random.key(c.seed + 5)
      train_f = features.featurize(apply_fn, params0, d.X_train, d.y_train, key=fkey, dim=c.proj_dim, batch_size=c.feature_batch)
      target_f = features.featurize(apply_fn, params0, X_val, y_val, key=fkey, dim=c.proj_dim, batch_size=c.feature_batch)
      features.save(fdir / "train", train_f)
      features.save(fdir / "target", target_f)
      _mark_done(fdir, f_fp)
    stats = ks.task_statistics(train_f, d.task_train, K)

  with phases("finetune"):
    ft_dir = workdir / "finetune"
    S_ft = S_est[:c.num_finetune]
    ft_fp = _fingerprint(c, *MODEL_KEYS, "tracin_checkpoints", "num_estimated", "estimated_sizes", "num_finetune",
                         "finetune_lr", "finetune_steps", "finetune_optimizer")
    if _cached(ft_dir, ft_fp):
      ft = _load_tree(ft_dir / "result")
      F_ft, lin_err, t_ft = np.asarray(ft["F"]), np.asarray(ft["linearization_error"]), float(ft["seconds"])
    else:
      t0 = time.perf_counter()
      stacked, _ = finetune.finetune_subsets(apply_fn, params0, d.X_train, d.y_train, d.task_train, S_ft,
                                             optimizer=_finetune_optimizer(c.finetune_optimizer, c.finetune_lr), num_steps=c.finetune_steps,
                                             chunk_size=c.chunk_size)
      jax.block_until_ready(stacked)
      t_ft = time.perf_counter() - t0
      F_ft = np.asarray(val_loss(stacked))
      lin_err = finetune.linearization_error(apply_fn, params0, stacked, X_val)
      _save_tree(ft_dir / "result", {"F": F_ft, "linearization_error": lin_err, "seconds": np.float64(t_ft)})
      _mark_done(ft_dir, ft_fp)

  with phases("estimate"):
    half = len(S_ft) // 2
    est = dict(method=c.estimator, stats=stats) if c.estimator == "onestep" else dict(method=c.estimator)
    ridge, table = ks.calibrate_ridge(train_f, d.task_train, target_f, S_ft[:half], F_ft[:half],
                                      grid=10.0 ** np.arange(-1.0, 8.0), **est)
    ks.estimate(train_f, d.task_train, S_ft[half:], target_f, ridge=ridge, **est)   # compile outside the timing
    t0 = time.perf_counter()
    F_hat_ft = ks.estimate(train_f, d.task_train, S_ft[half:], target_f, ridge=ridge, **est)
    t_est_ft = time.perf_counter() - t0
    rel = metrics.relative_error(F_hat_ft, F_ft[half:])
    base = metrics.relative_error(np.broadcast_to(F_full, F_ft[half:].shape), F_ft[half:])
    fit, held = np.arange(c.num_fit), np.arange(c.num_fit, len(S_rand))
    if c.attribution_ridge == "retrain":
      ridge_attr, table_attr = ks.calibrate_ridge(train_f, d.task_train, _subset_features(target_f, keep), S_rand[fit],
                                                  F_rand[fit][:, keep], grid=10.0 ** np.arange(-1.0, 8.0),
                                                  criterion="lds", **est)
    else:
      ridge_attr, table_attr = ridge, {}
    t0 = time.perf_counter()
    F_est = ks.estimate(train_f, d.task_train, S_est, target_f, ridge=ridge_attr, **est)
    t_est_all = time.perf_counter() - t0
    F_est_exact = ks.estimate(train_f, d.task_train, S_rand, target_f, ridge=ridge_attr, **est)
  seconds_ft = t_ft / len(S_ft) * (len(S_ft) - half)
  estimator = {
      "median_relative_error": rel["median"], "mean_relative_error": rel["mean"],
      "no_change_median_relative_error": base["median"],
      "linearization_error": float(np.median(lin_err[half:])),
      "linearization_error_mean": float(np.mean(lin_err[half:])),
      "lds_vs_finetune": metrics.lds(F_hat_ft, F_ft[half:]) if len(S_ft) - half > 2 else float("nan"),
      "lds_vs_retrain": metrics.lds(F_est_exact[held][:, keep], F_rand[held][:, keep]),
      "lds_vs_retrain_fit": metrics.lds(F_est_exact[fit][:, keep], F_rand[fit][:, keep]),
      "attribution_ridge": ridge_attr, "attribution_ridge_selection": c.attribution_ridge,
      "attribution_ridge_lds_fit": {str(k): v for k, v in table_attr.items()},
      "seconds_estimate": t_est_ft, "seconds_finetune": seconds_ft, "speedup": seconds_ft / t_est_ft,
      "seconds_estimate_all": t_est_all, "num_estimated": int(c.num_estimated), "ridge": ridge,
      "ridge_calibration": {str(k): v for k, v in table.items()}, "method": c.estimator,
      "finetuned_subsets_calibration": int(half), "finetuned_subsets_scored": int(len(S_ft) - half),
  }

  with phases("baselines"):
    Xt, yt = X_val[keep], y_val[keep]
    extra_loo = {
        "influence": baselines.influence(apply_fn, params0, d.X_train, d.y_train, d.task_train, Xt, yt,
                                         num_tasks=K, damping=c.influence_damping, cg_iters=c.cg_iters),
        "tracin": baselines.tracin(apply_fn, [jax.tree.map(lambda t: t[i], ckpts) for i in range(c.tracin_checkpoints)],
                                   _tracin_rates(c), d.X_train, d.y_train, d.task_train, Xt, yt, num_tasks=K),
        "trak": baselines.trak(train_f, d.task_train, _subset_features(target_f, keep), num_tasks=K),
    }

  report.curves(workdir / "modular" / "training_curves.png",
                {"theta0 (all tasks)": curve}, f"p={c.p} {c.op}: full-data training loss")
  yield driver.Problem(
      name="modular", S=S_rand, F=F_rand[:, keep], splits=[(fit, held)],
      loo_true=loo_true, extra_fit={"estimated": (S_est, F_est[:, keep])}, extra_loo=extra_loo,
      info={"estimator": estimator, "timing": dict(phases.seconds),
            "targets": {"kept": int(keep.sum()), "total": int(len(keep)), "variance_threshold": c.target_variance_threshold},
            "retrain_final_train_loss": {"mean": float(retrain_losses.mean()), "max": float(retrain_losses.max()),
                                         "unconverged": unconverged, "threshold": c.converged_train_loss,
                                         "retried": int(np.sum(retrain_attempts > 1))},
            "theta0": {"final_train_loss": float(np.asarray(curve)[-1]), "val_loss": float(F_full.mean()),
                       "val_accuracy": float(np.mean(np.argmax(np.asarray(apply_fn(params0, X_val)), -1) == y_val))}},
      task_labels=[f"({i // int(np.sqrt(K))},{i % int(np.sqrt(K))})" for i in range(K)])


def _retrain_chunk(c, S_c, chunk, d, init_fn, apply_fn, opt, init_key, data_key, val_loss):
  """Retrains one chunk of subsets; rows whose training loss (over all of their subset's examples)
  stays above c.converged_train_loss are redone on a fresh minibatch stream, up to
  c.retrain_retries times. Every key is a function of (seed, chunk, attempt): resumes reproduce it."""
  def run(S_rows, attempt):
    shared = c.common_random_numbers and attempt == 0
    key = data_key if shared else jax.random.fold_in(jax.random.fold_in(data_key, chunk), attempt)
    stacked, _ = retrain.retrain_subsets(init_fn, apply_fn, d.X_train, d.y_train, d.task_train, S_rows,
                                         optimizer=opt, num_steps=c.num_steps, init_key=init_key,
                                         batch_size=c.batch_size, key=key, chunk_size=c.chunk_size,
                                         common_random_numbers=c.common_random_numbers)
    loss = finetune.subset_losses(apply_fn, stacked, d.X_train, d.y_train, d.task_train, S_rows)
    return np.array(val_loss(stacked)), np.array(loss)

  F, loss = run(S_c, 0)
  attempts = np.ones(len(S_c), np.int32)
  for attempt in range(1, c.retrain_retries + 1):
    bad = np.flatnonzero(loss > c.converged_train_loss)
    if not len(bad):
      break
    F_b, loss_b = run(S_c[bad], attempt)
    better = loss_b < loss[bad]
    F[bad[better]], loss[bad[better]] = F_b[better], loss_b[better]
    attempts[bad] += 1
  return {"F": F, "final_train_loss": loss, "attempts": attempts}


def _tracin_rates(c):
  """The learning rate in force at each saved checkpoint (TracIn weights each checkpoint by it)."""
  every = c.num_steps // c.tracin_checkpoints
  schedule = _schedule(c.lr_schedule, c.lr, c.warmup_steps, c.num_steps)
  return [float(schedule((i + 1) * every - 1)) for i in range(c.tracin_checkpoints)]


def _subset_features(f: features.Features, keep):
  return features.Features(phi=np.asarray(f.phi)[keep], offsets=np.asarray(f.offsets)[keep],
                           labels=np.asarray(f.labels)[keep], output=f.output)


def _init(net, key):
  return net.init(key, jnp.zeros((1, 4), jnp.int32))


@functools.lru_cache(maxsize=None)
def _init_fn(net):
  """One hashable init function per model, so jit caches hit across chunks."""
  return functools.partial(_init, net)
