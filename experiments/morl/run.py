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
  """Second differences for a few pairs at two base sets: the full set (the brief's definition)
  and the small set {balance, i, j}, where each objective holds a third of the slots instead of a
  tenth, so effects are larger. All masks of all seeds go through one compiled program."""
  suite = envs.Suite()
  meta = _load_meta(suite)
  K = suite.K
  pairs = [("stay_left", "stay_right"), ("short_pole", "coarse_time"), ("centered", "slow_cart"),
           ("stay_left", "centered")]
  blocks = []
  for a, b in pairs:
    i, j = suite.index(a), suite.index(b)
    small = np.zeros(K, bool)
    small[[suite.index("balance"), i, j]] = True
    blocks.append((f"{a},{b}", "full", ppo.interaction_masks(K, i, j)))
    blocks.append((f"{a},{b}", "balance+pair", ppo.interaction_masks(K, i, j, small)))
  S = np.concatenate([m for *_, m in blocks])
  chunk = 16
  per_seed, secs = [], []
  for seed in range(args.seeds):
    fn, _ = ppo.make_outcome_fn(suite, meta, ppo.FINETUNE, seed=seed, chunk=chunk)
    t = time.perf_counter()
    per_seed.append(fn(S))
    secs.append(time.perf_counter() - t)
  F = np.stack(per_seed)  # [seeds, rows, T]
  out = {"seeds": args.seeds, "subsets_per_seed": len(S), "seconds_per_seed": secs, "pairs": {}}
  for r, (pair, base, _) in enumerate(blocks):
    f = F[:, 4 * r:4 * r + 4]
    I = f[:, 0] - f[:, 1] - f[:, 2] + f[:, 3]  # [seeds, T]
    sd = I.std(axis=0, ddof=1)
    out["pairs"].setdefault(pair, {})[base] = {
        t: {"mean": float(I[:, k].mean()), "std": float(sd[k]),
            "stderr": float(sd[k] / np.sqrt(len(I))), "per_seed": I[:, k].round(4).tolist()}
        for k, t in enumerate(suite.names)}
  # The helper must agree with the batched computation (same seed, same program).
  fn0, _ = ppo.make_outcome_fn(suite, meta, ppo.FINETUNE, seed=0, chunk=chunk)
  a, b = pairs[0]
  check = ppo.interaction(fn0, K, suite.index(a), suite.index(b))
  f0 = F[0, :4]
  out["helper_matches_batch_seed0"] = bool(np.allclose(check, f0[0] - f0[1] - f0[2] + f0[3], atol=1e-5))
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
  ap.add_argument("--seeds", type=int, default=5)
  ap.add_argument("--subsets", type=int, default=48)
  ap.add_argument("--chunk", type=int, default=16)
  ap.add_argument("--many", type=int, default=2048)
  args = ap.parse_args()
  {"meta": stage_meta, "interactions": stage_interactions, "estimate": stage_estimate}[args.stage](args)


if __name__ == "__main__":
  main()
