"""MORL experiment driver: meta-policy, interactions, estimator vs real fine-tuning.

  python -m experiments.morl.run meta            # trains and saves the meta-policy
  python -m experiments.morl.run interactions    # second differences for a few pairs, 3 seeds
  python -m experiments.morl.run estimate        # estimator errors, LDS and speed vs fine-tuning

Each stage loads the saved meta-policy, prints its numbers and writes them to
experiments/morl/results/<stage>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.morl import envs, estimate, ppo
from ksurrogate import metrics, subsets

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CKPT = os.path.join(RESULTS, "meta_ckpt")


def _dump(name, obj):
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
    json.dump(obj, f, indent=1)
  print(json.dumps(obj, indent=1))


def _load_meta(suite):
  like = ppo.init_params(jax.random.key(0), suite.obs_dim, suite.num_actions)
  return ppo.load_params(CKPT, like)


def stage_meta(args):
  suite = envs.Suite()
  t = time.perf_counter()
  params = jax.block_until_ready(ppo.train_meta(suite, ppo.META, seed=args.seed))
  secs = time.perf_counter() - t
  if os.path.exists(CKPT):
    import shutil
    shutil.rmtree(CKPT)
  ppo.save_params(CKPT, params)
  norm = ppo.make_normalizer(suite, params, ppo.target_ids(suite))
  _dump("meta", {"env_steps": ppo.META.total_steps, "seconds_incl_compile": secs,
                 "names": suite.names, "meta_return": np.asarray(norm.meta_T).tolist(),
                 "random_return": np.asarray(norm.random_T).tolist()})


def stage_interactions(args):
  suite = envs.Suite()
  meta = _load_meta(suite)
  pairs = [("stay_left", "stay_right"), ("short_pole", "coarse_time"), ("centered", "slow_cart"),
           ("balance", "upright")]
  K = suite.K
  # All masks of all pairs in one batch per seed: one compile, shared F(1).
  rows, index = [np.ones(K, bool)], {}
  for a, b in pairs:
    i, j = suite.index(a), suite.index(b)
    for key, drop in ((a, [i]), (b, [j]), (a + "+" + b, [i, j])):
      if key not in index:
        r = np.ones(K, bool)
        r[drop] = False
        index[key] = len(rows)
        rows.append(r)
  S = np.stack(rows)
  per_seed, secs = [], []
  for seed in range(args.seeds):
    fn, _ = ppo.make_outcome_fn(suite, meta, ppo.FINETUNE, seed=seed, chunk=len(S))
    t = time.perf_counter()
    per_seed.append(fn(S))
    secs.append(time.perf_counter() - t)
  F = np.stack(per_seed)  # [seeds, rows, T]
  out = {"subsets": len(S), "seconds_per_seed_incl_compile": secs, "pairs": {}}
  for a, b in pairs:
    I = F[:, 0] - F[:, index[a]] - F[:, index[b]] + F[:, index[a + "+" + b]]  # [seeds, T]
    out["pairs"][f"{a},{b}"] = {
        t: {"mean": float(I[:, k].mean()), "std": float(I[:, k].std(ddof=1)),
            "per_seed": I[:, k].round(4).tolist()}
        for k, t in enumerate(suite.names)}
    # The helper must agree with the batched computation (same seed, same program shape).
  fn0, _ = ppo.make_outcome_fn(suite, meta, ppo.FINETUNE, seed=0, chunk=len(S))
  a, b = pairs[0]
  check = ppo.interaction(fn0, K, suite.index(a), suite.index(b))
  out["helper_matches_batch_seed0"] = bool(np.allclose(
      check, F[0, 0] - F[0, index[a]] - F[0, index[b]] + F[0, index[a + "+" + b]], atol=1e-5))
  _dump("interactions", out)


def stage_estimate(args):
  suite = envs.Suite()
  meta = _load_meta(suite)
  K = suite.K
  t = time.perf_counter()
  fn, norm = ppo.make_outcome_fn(suite, meta, ppo.FINETUNE, seed=0, chunk=args.chunk)
  # Shared evaluation subsets: random sizes 1..K-1 plus the full set.
  S = np.asarray(subsets.sized(jax.random.key(args.seed), args.subsets - 1, K, 1, K - 1))
  S = np.concatenate([np.ones((1, K), bool), S])

  # Real fine-tuning, with its params kept for the first-order error.
  run_params = jax.jit(jax.vmap(lambda m: ppo.train(suite, ppo.FINETUNE, meta, m, jax.random.key(0))))
  fn(S[:args.chunk])  # compile
  t = time.perf_counter()
  F_real = fn(S)
  t_real = (time.perf_counter() - t) / len(S)
  one = ppo.make_finetune_one(suite, ppo.FINETUNE)
  one(meta, S[0], jax.random.key(0))
  t = time.perf_counter()
  for r in S[:3]:
    jax.block_until_ready(one(meta, r, jax.random.key(0)))
  t_one = (time.perf_counter() - t) / 3

  # Ceiling for any estimator: the same subsets fine-tuned with another seed.
  fn1, _ = ppo.make_outcome_fn(suite, meta, ppo.FINETUNE, seed=1, chunk=args.chunk)
  F_real1 = fn1(S)
  res = {"subsets": len(S), "finetune_env_steps": ppo.FINETUNE.total_steps,
         "exact_seconds_per_subset_vmapped_incl_eval": t_real,
         "exact_seconds_per_subset_single_finetune_no_eval": t_one}
  big = np.array(subsets.bernoulli(jax.random.key(99), args.many, K))
  big[~big.any(1), 0] = True
  varying = metrics.varying_targets(F_real, 1e-4)
  res["varying_targets"] = [n for n, v in zip(suite.names, varying) if v]
  res["seed0_vs_seed1_lds"] = metrics.lds(F_real1[:, varying], F_real[:, varying])
  res["seed0_vs_seed1_lds_per_target"] = dict(zip(res["varying_targets"], np.round(
      metrics.lds(F_real1[:, varying], F_real[:, varying], per_target=True), 3).tolist()))
  for label, ecfg_est in (("quadratic_d128", estimate.EstimatorConfig()),
                          ("newton_d32", estimate.NEWTON_SMALL)):
    t0 = time.perf_counter()
    e = estimate.Estimator(suite, meta, norm, ppo.target_ids(suite), ecfg_est)
    jax.block_until_ready(e.arrays)
    res[label] = {"setup_seconds_incl_compile": time.perf_counter() - t0}
    for mode in ("surrogate", "rollout"):
      many = big if mode == "surrogate" else big[:512]
      e.outcome(S[:2], mode)  # compile
      t = time.perf_counter()
      F_est = e.outcome(S, mode)
      t_est = (time.perf_counter() - t) / len(S)
      t = time.perf_counter()
      e.outcome(many, mode)
      t_big = (time.perf_counter() - t) / len(many)
      Fv, Rv = F_est[:, varying], F_real[:, varying]
      res[label][mode] = {
          "lds": metrics.lds(Fv, Rv),
          "lds_per_target": dict(zip(res["varying_targets"], np.round(metrics.lds(Fv, Rv, per_target=True), 3).tolist())),
          "pearson": metrics.pearson(Fv, Rv),
          "normalized_error": metrics.normalized_error(Fv, Rv, threshold=0.0),
          "mean_abs_error": float(np.abs(Fv - Rv).mean()),
          "median_relative_error": metrics.relative_error(Fv, Rv)["median"],
          "seconds_per_subset": t_est, f"seconds_per_subset_{len(many)}_subsets": t_big,
          "speedup_vs_vmapped_finetune_eval": t_real / t_big,
          "speedup_vs_single_finetune": t_one / t_big,
      }
    if label == "quadratic_d128":
      est = e
  # (a) first-order error of the logits at really fine-tuned params, on the rollout states.
  P_S = run_params(jnp.asarray(S[:args.chunk]))
  obs = est.data["obs"][::7]
  errs = [estimate.first_order_error(meta, jax.tree.map(lambda x: x[i], P_S), obs) for i in range(args.chunk)]
  e_scale = np.concatenate([np.asarray(e[0]) for e in errs])
  e_delta = np.concatenate([np.asarray(e[1]) for e in errs])
  res["first_order_error_rel_to_logit_norm"] = {"median": float(np.median(e_scale)), "mean": float(e_scale.mean())}
  res["first_order_error_rel_to_logit_change"] = {"median": float(np.median(e_delta)), "mean": float(e_delta.mean())}
  # Direction check: the estimated step vs the real one, in parameter space.
  flat0, _ = ppo.flat_actor(meta)
  z = est.z(jnp.asarray(S[:args.chunk]))
  cos = []
  for i in range(args.chunk):
    real = ppo.flat_actor(jax.tree.map(lambda x: x[i], P_S))[0] - flat0
    estd = est.delta_theta(z[i])
    # Against the real step's component in span(P): the estimator cannot leave that subspace.
    P = est.P
    real_in = P @ jnp.linalg.lstsq(P, real)[0]
    cos.append(float(real_in @ estd / (jnp.linalg.norm(real_in) * jnp.linalg.norm(estd))))
    if i == 0:
      res["norm_real_step_full_set"] = float(jnp.linalg.norm(real))
      res["norm_estimated_step_full_set"] = float(jnp.linalg.norm(estd))
  res["cosine_real_step_in_span_P_vs_estimated_step_median"] = float(np.median(cos))
  _dump("estimate", res)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("stage", choices=["meta", "interactions", "estimate"])
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--subsets", type=int, default=48)
  ap.add_argument("--chunk", type=int, default=16)
  ap.add_argument("--many", type=int, default=2048)
  args = ap.parse_args()
  {"meta": stage_meta, "interactions": stage_interactions, "estimate": stage_estimate}[args.stage](args)


if __name__ == "__main__":
  main()
