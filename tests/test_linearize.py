"""linearize / empirical_ntk_fn against neural-tangents' own golden values and first principles."""
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ksurrogate as ks

sys.path.insert(0, str(pathlib.Path(__file__).parent / "golden"))
import golden_models  # noqa: E402

GOLDEN = np.load(pathlib.Path(__file__).parent / "golden" / "nt_golden.npz")
CASES = golden_models.cases()


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "transformer" else n
                                  for n in sorted(CASES)])   # the transformer: ~50 s
def test_matches_neural_tangents_golden(name):
  f, p0, p1, x1, x2 = CASES[name]
  np.testing.assert_allclose(np.asarray(ks.linearize(f, p0)(p1, x1)), GOLDEN[f"{name}/f_lin"], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(ks.empirical_ntk_fn(f, trace_axes=(-1,))(x1, x2, p0)), GOLDEN[f"{name}/ntk_traced"], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(ks.empirical_ntk_fn(f, trace_axes=())(x1, x2, p0)), GOLDEN[f"{name}/ntk_full"], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(ks.empirical_ntk_fn(f, trace_axes=(), diagonal_axes=(-1,))(x1, None, p0)),
                             GOLDEN[f"{name}/ntk_diag"], atol=1e-5, rtol=1e-5)


def test_f_lin_at_params0_and_jvp_matches_finite_difference():
  f, p0, p1, x1, _ = CASES["transformer"]
  f_lin = ks.linearize(f, p0)
  np.testing.assert_allclose(np.asarray(f_lin(p0, x1)), np.asarray(f(p0, x1)), atol=1e-6)
  with jax.enable_x64(True):
    p0d = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if a.dtype.kind == "f" else a, p0)
    dirn = jax.tree.map(lambda a, b: jnp.asarray(b - a, jnp.float64), p0, p1)
    eps = 1e-6
    fd = (f(jax.tree.map(lambda a, d: a + eps * d, p0d, dirn), x1) - f(jax.tree.map(lambda a, d: a - eps * d, p0d, dirn), x1)) / (2 * eps)
    lin = ks.linearize(f, p0d)(jax.tree.map(lambda a, d: a + d, p0d, dirn), x1) - f(p0d, x1)
    np.testing.assert_allclose(np.asarray(lin), np.asarray(fd), rtol=1e-6, atol=1e-8)


def test_ntk_is_gram_of_projected_gradients_in_expectation():
  f, p0, _, x1, _ = CASES["mlp"]
  ntk = np.asarray(ks.empirical_ntk_fn(f, trace_axes=())(x1, None, p0))
  feats = ks.features.featurize(f, p0, x1, np.zeros(len(x1), int), key=jax.random.key(0), dim=8192, output="logits")
  phi = np.asarray(feats.phi)
  approx = np.einsum("ncd,med->nmce", phi, phi)
  assert np.abs(approx - ntk).max() < 0.1 * np.abs(ntk).max()
