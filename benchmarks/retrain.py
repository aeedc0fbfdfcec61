"""Vmapped retraining vs a sequential loop of single-model training, same models, one run.

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/retrain.py   # one device per core (~1 min)
  python benchmarks/retrain.py                       # one CPU device
  python benchmarks/retrain.py --batch_size=0        # full-batch training

On a CPU, XLA runs one device's program with intra-op threads only, which small per-step ops do
not fill; exposing each core as a host device lets `retrain_subsets` shard the subset axis over
the cores (the same `NamedSharding` path that spreads it over GPUs). The sequential loop cannot
split one model over devices, so it gets the same XLA either way.

Both sides train the same models (same init, same per-subset data keys, same steps) on the same
subsets; the sequential side is one `jit`ted single-model trainer called once per subset (compiled
once), the vmapped side is `ksurrogate.retrain_subsets` with chunks of --chunk models per call.
Prints cold (with compilation) and warm wall times and their ratios, and checks the two sides give
the same final losses.
"""
from __future__ import annotations



import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

import ksurrogate as ks
from common import timed
from ksurrogate_experiments.modular import config as config_lib
from ksurrogate_experiments.modular import phases as pipeline
from ksurrogate import training

_P = flags.DEFINE_integer("p", 29, "modulus")
_BAR = flags.DEFINE_integer("bar", 6, "task block width (29 / 6 -> 25 tasks)")
_D_MODEL = flags.DEFINE_integer("d_model", 32, "transformer width")
_LAYERS = flags.DEFINE_integer("layers", 1, "transformer layers")
_STEPS = flags.DEFINE_integer("steps", 300, "training steps per model")
_SUBSETS = flags.DEFINE_integer("subsets", 16, "subsets (models) trained")
_CHUNK = flags.DEFINE_integer("chunk", 16, "models per compiled vmapped call")
_BATCH = flags.DEFINE_integer("batch_size", 128, "minibatch size (0: full batch)")


def main(argv):
  del argv
  # The modular experiment's own builders: its data, model, optimizer and training recipe.
  c = config_lib.get_config("cpu")
  c.data.p, c.data.bar = _P.value, _BAR.value
  c.model.d_model, c.model.num_layers, c.model.mlp_dim = _D_MODEL.value, _LAYERS.value, 4 * _D_MODEL.value
  c.train.num_steps, c.train.batch_size = _STEPS.value, _BATCH.value or None
  c.train.common_random_numbers = False   # each model its own stream, as the sequential side
  config_lib.validate(c)
  s = pipeline.setup(c)
  d = s.d
  K, m, steps = d.num_tasks, _SUBSETS.value, _STEPS.value
  S = np.asarray(ks.subsets.fixed_size(jax.random.key(0), m, K, 22))
  init_key, key = jax.random.key(1), jax.random.key(2)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} devices); p={_P.value}, "
        f"N={len(d.X_train)}, K={K}, {m} models x {steps} steps, batch {c.train.batch_size or 'full'}, chunk {_CHUNK.value}")

  def vmapped():
    return training.retrain_subsets(s.retrain, s.init_fn, s.train_data, d.task_train, S, init_key=init_key, key=key,
                                    chunk_size=_CHUNK.value)

  one = jax.jit(lambda w, k: s.retrain(s.init_fn(init_key), s.train_data, w, k))
  keys = jax.random.split(key, m)   # retrain_subsets gives row i the data key split(key, m)[i]
  W = S[:, d.task_train].astype(np.float32)

  def sequential():
    return [one(jnp.asarray(W[i]), keys[i]) for i in range(m)]

  (_, loss_v), t_v_cold = timed(vmapped)
  seq, t_s_cold = timed(sequential)
  (_, loss_v), t_v = timed(vmapped)
  seq, t_s = timed(sequential)
  loss_s = np.stack([np.asarray(l) for _, l in seq])
  gap = float(np.max(np.abs(np.asarray(loss_v)[:, -1] - loss_s[:, -1])))
  print(f"{'':12s}{'vmapped s':>12s}{'sequential s':>14s}{'speedup':>10s}")
  print(f"{'cold':12s}{t_v_cold:12.2f}{t_s_cold:14.2f}{t_s_cold / t_v_cold:9.2f}x")
  print(f"{'warm':12s}{t_v:12.2f}{t_s:14.2f}{t_s / t_v:9.2f}x")
  print(f"models/s warm: vmapped {m / t_v:.2f}, sequential {m / t_s:.2f}; "
        f"max final-loss gap between the two sides {gap:.2e}")


if __name__ == "__main__":
  app.run(main)
