"""Which training recipe makes the modular theta0 generalize: validation accuracy per setting.

  python benchmarks/modular_recipe.py                  # the grid below on the cpu config (~3 min)
  python benchmarks/modular_recipe.py --seeds=3 --set train.lr=1e-2 --set train.num_steps=600

Each setting trains theta0 (all tasks) from --seeds init seeds and, for the first seed, one
leave-one-out retrain (24 of 25 tasks) and one 13-of-25 retrain (their final training loss and
mean validation loss on the targets), and prints theta0's train / validation accuracy, final
training loss and seconds. It also counts the validation pairs whose commuted
pair (y, x) is in training: a model that only memorizes (plus commutativity) gets exactly those.
"""
from __future__ import annotations



import dataclasses
import time

import jax
import numpy as np
from absl import app
from absl import flags

from ksurrogate_experiments.modular import config as config_lib
from ksurrogate_experiments.modular import phases as pipeline

GRID = [  # (field, value) settings tried, each on top of the cpu config
    {"train.lr": 1e-3, "train.num_steps": 800},
    {"train.lr": 1e-3, "train.num_steps": 2000},
    {"train.lr": 3e-3, "train.num_steps": 800},
    {"train.lr": 1e-3, "train.num_steps": 800, "model.d_model": 64, "model.mlp_dim": 256},
    {"train.lr": 3e-3, "train.num_steps": 800, "train.weight_decay": 5.0},
    {"train.lr": 1e-2, "train.num_steps": 600},
    {"train.lr": 1e-2, "train.num_steps": 800},
]

_SET = flags.DEFINE_multi_string("set", [], "field=value on top of the cpu config; replaces the grid")
_SEEDS = flags.DEFINE_integer("seeds", 1, "init seeds per setting")
_CONFIG = flags.DEFINE_string("config", "cpu", "modular config to start from")


def _apply(c, setting: dict):
  for path, value in setting.items():
    section, field = path.split(".")
    c[section][field] = type(c[section][field])(value) if c[section][field] is not None else value
  return c


def _accuracy(s, params, X, y) -> float:
  return float(np.mean(np.argmax(np.asarray(s.apply_fn(params, X)), -1) == y))


def main(argv):
  del argv
  grid = [dict(kv.split("=", 1) for kv in _SET.value)] if _SET.value else GRID
  for setting in grid:
    c = _apply(config_lib.get_config(_CONFIG.value), setting)
    s0 = pipeline.setup(c)
    d = s0.d
    in_train = {(a, b) for a, _, b, _ in d.X_train.tolist()}
    commuted = float(np.mean([(b, a) in in_train for a, _, b, _ in d.X_val.tolist()]))
    for seed in range(_SEEDS.value):
      init_key, data_key = s0.train_keys(seed)
      s = dataclasses.replace(s0, init_key=init_key, data_key=data_key)
      t0 = time.perf_counter()
      th = pipeline.theta0(c, s)
      jax.block_until_ready(th.params)
      seconds = time.perf_counter() - t0
      line = (f"{setting} seed {seed}: theta0 train acc {_accuracy(s, th.params, d.X_train, d.y_train):.3f}, "
              f"val acc {_accuracy(s, th.params, d.X_val, d.y_val):.3f} (memorize+commute {commuted:.3f}), "
              f"final loss {th.curve[-1]:.4f}, {seconds:.1f} s")
      if seed == 0:
        for name, S in (("LOO", np.r_[0, np.ones(s.K - 1)]), ("13 of 25", np.arange(s.K) % 2 == 0)):
          out = pipeline.retrain_chunk(c, np.asarray(S, bool)[None], 0, s)
          line += (f"; {name} retrain: final loss {out['final_train_loss'][0]:.4f}, "
                   f"mean target val loss {out['F'][0].mean():.3f}")
      print(line, flush=True)


if __name__ == "__main__":
  app.run(main)
