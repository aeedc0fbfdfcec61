"""Writes neural-tangents golden values for tests/test_linearize.py. Run ONLY in the legacy
environment that build_legacy_env.sh makes (CI never does):

  bash tests/golden/build_legacy_env.sh /tmp/ntenv
  /tmp/ntenv/bin/python tests/golden/make_golden.py      # writes tests/golden/nt_golden.npz
"""
import pathlib
import sys

import jax
import neural_tangents as nt
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import golden_models  # noqa: E402

out = {}
for name, (f, p0, p1, x1, x2) in golden_models.cases().items():
  out[f"{name}/f_lin"] = np.asarray(nt.linearize(f, p0)(p1, x1))
  out[f"{name}/ntk_traced"] = np.asarray(nt.empirical_ntk_fn(f, trace_axes=(-1,))(x1, x2, p0))
  out[f"{name}/ntk_full"] = np.asarray(nt.empirical_ntk_fn(f, trace_axes=())(x1, x2, p0))
  out[f"{name}/ntk_diag"] = np.asarray(nt.empirical_ntk_fn(f, trace_axes=(), diagonal_axes=(-1,))(x1, None, p0))
out["versions"] = np.array(f"jax {jax.__version__}, neural-tangents 0.6.5")
np.savez(pathlib.Path(__file__).parent / "nt_golden.npz", **out)
print({k: v.shape for k, v in out.items()})
