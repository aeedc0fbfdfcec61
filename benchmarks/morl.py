"""Env steps per second of vmapped subset fine-tuning vs one fine-tune at a time (same subsets).

  python benchmarks/morl.py [--subsets 16] [--repeats 2] [--num-envs 16 --num-steps 64]

Both paths fine-tune the same meta-policy (a short PPO run, trained here) on the same random
subsets with the same key and the experiment's FINETUNE config; compile time is measured
separately and excluded from the rates.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

import jax
import numpy as np


from ksurrogate_experiments.morl import envs, ppo  # noqa: E402
from ksurrogate import subsets  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--subsets", type=int, default=16)
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--num-envs", type=int, default=ppo.FINETUNE.num_envs)
  ap.add_argument("--num-steps", type=int, default=ppo.FINETUNE.num_steps)
  args = ap.parse_args()
  suite = envs.Suite()
  # Other shapes keep the env-step budget per subset (num_updates rescaled).
  budget = ppo.FINETUNE.total_steps
  cfg = dataclasses.replace(ppo.FINETUNE, num_envs=args.num_envs, num_steps=args.num_steps,
                            num_updates=max(1, budget // (args.num_envs * args.num_steps)))
  meta = ppo.train_meta(suite, ppo.PPOConfig(num_envs=40, num_steps=64, num_updates=20), seed=0)
  S = np.asarray(subsets.sized(jax.random.key(0), args.subsets, suite.K, 1, suite.K, distinct=False))
  key = jax.random.key(0)
  steps = args.subsets * cfg.total_steps

  vm, one = ppo.make_finetune(suite, cfg), ppo.make_finetune_one(suite, cfg)
  t = time.perf_counter()
  jax.block_until_ready(vm(meta, S, key))
  c_vm = time.perf_counter() - t
  t = time.perf_counter()
  jax.block_until_ready(one(meta, S[0], key))
  c_one = time.perf_counter() - t

  t_vm, t_one = [], []
  for _ in range(args.repeats):
    t = time.perf_counter()
    out_vm = jax.block_until_ready(vm(meta, S, key))
    t_vm.append(time.perf_counter() - t)
    t = time.perf_counter()
    out_one = [jax.block_until_ready(one(meta, s, key)) for s in S]
    t_one.append(time.perf_counter() - t)
  # The two paths must agree, or the comparison is meaningless.
  err = max(float(np.abs(np.asarray(a[i]) - np.asarray(b)).max())
            for i, p in enumerate(out_one)
            for a, b in zip(jax.tree.leaves(out_vm), jax.tree.leaves(p)))
  r_vm, r_one = steps / min(t_vm), steps / min(t_one)
  print(f"subsets={args.subsets} env_steps_per_subset={cfg.total_steps} num_envs={cfg.num_envs} "
        f"num_steps={cfg.num_steps} minibatch={cfg.num_envs * cfg.num_steps // cfg.num_minibatches} "
        f"devices={jax.devices()[0].platform}x{jax.device_count()} cpus={os.cpu_count()}")
  print(f"compile: vmapped {c_vm:.2f}s (incl. first run), single {c_one:.2f}s (incl. first run)")
  print(f"vmapped:   {min(t_vm):.2f}s  {r_vm:,.0f} env steps/s")
  print(f"one-by-one: {min(t_one):.2f}s  {r_one:,.0f} env steps/s")
  print(f"ratio vmapped/one-by-one: {r_vm / r_one:.2f}x   max |param diff| {err:.2e}")


if __name__ == "__main__":
  main()
