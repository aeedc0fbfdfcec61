"""ksurrogate.projection: the factorized (LoGra) projection equals the dense Kronecker projection of
the exact per-example gradient, for plain dense layers and LoRA pairs; span coordinates are lossless."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import ksurrogate as ks
from ksurrogate import projection


def test_project_is_the_kronecker_projection():
  k = jax.random.split(jax.random.key(0), 4)
  x, d = jax.random.normal(k[0], (5, 7)), jax.random.normal(k[1], (5, 6))
  P_in, P_out = projection.side(k[2], 7, 3), projection.side(k[3], 6, 4)
  G = x.T @ d                                             # the per-example gradient sum_t x_t d_t^T
  dense = projection.kronecker(P_in, P_out).T @ G.reshape(-1)
  np.testing.assert_allclose(projection.project(x, d, P_in, P_out), dense, rtol=1e-5, atol=1e-5)


def test_side_keeps_a_small_side_exact_and_split_dim_adds_up():
  np.testing.assert_array_equal(projection.side(jax.random.key(0), 4, 8), np.eye(4))
  dims = projection.split_dim(256, {"a/B": (8, 576), "b/B": (8, 192), "c/B": (8, 1536)}, 8)
  assert sum(i * o for i, o in dims.values()) == 256 and all(i == 8 and o >= 1 for i, o in dims.values())
  assert dims["c/B"][1] > dims["a/B"][1] > dims["b/B"][1]
  with pytest.raises(ValueError, match="^dim:"):
    projection.split_dim(8, {"a": (8, 4), "b": (8, 4)}, 8)
  with pytest.raises(ValueError, match="^kind:"):
    projection.side(jax.random.key(0), 4, 2, "sparse")


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x):                       # x [T, 5] -> two outputs
    h = jnp.tanh(nn.Dense(6, use_bias=False, name="l1")(x))
    y = nn.Dense(3, use_bias=False, name="l2")(h)
    return jnp.stack([y.sum(), (y ** 2).mean()])


def _setup(lora_b_zero=False):
  net = _Net()
  x = jax.random.normal(jax.random.key(1), (4, 5))
  params = net.init(jax.random.key(2), x)
  keys = jax.random.split(jax.random.key(3), 4)
  shapes = {"l1": (5, 6), "l2": (6, 3)}
  lora = {n: {"A": jax.random.normal(keys[2 * i], (I, 2)),
              "B": (0.0 if lora_b_zero else 1.0) * jax.random.normal(keys[2 * i + 1], (2, O))}
          for i, (n, (I, O)) in enumerate(shapes.items())}
  return net, params, lora, jax.random.normal(jax.random.key(4), (3, 4, 5))


def _merged(params, lora, scale):
  p = {"params": {n: {"kernel": params["params"][n]["kernel"] + scale * ab["A"] @ ab["B"]} for n, ab in lora.items()}}
  return p


def test_dense_layers_equal_the_dense_kronecker_projection():
  net, params, _, X = _setup()
  tapped = projection.dense_taps(lambda ex: net.apply(params, ex[0]), ["l1", "l2"])
  P = projection.projections(jax.random.key(5), {"l1": (5, 6), "l2": (6, 3)}, {"l1": (2, 3), "l2": (4, 2)})
  feats = projection.featurize(tapped, P, X, np.zeros(len(X)), batch_size=2)
  for i, x in enumerate(X):
    J = jax.jacrev(lambda p: net.apply(p, x))(params)["params"]          # {layer: {kernel: [C, I, O]}}
    dense = np.concatenate([J[n]["kernel"].reshape(2, -1) @ projection.kronecker(*P[n]) for n in ("l1", "l2")], 1)
    np.testing.assert_allclose(feats.phi[i], dense, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats.offsets[i], net.apply(params, x), rtol=1e-6)


@pytest.mark.parametrize("b_zero", [False, True])
def test_lora_pairs_equal_the_dense_kronecker_projection(b_zero):
  net, params, lora, X = _setup(lora_b_zero=b_zero)
  scale = 0.5
  pairs = {n: (ab["A"], ab["B"]) for n, ab in lora.items()}
  shapes = projection.lora_shapes(pairs)
  P = projection.projections(jax.random.key(6), shapes, {b: (2, 2) for b in shapes})
  tapped = projection.dense_taps(lambda ex: net.apply(_merged(params, lora, scale), ex[0]), ["l1", "l2"])
  feats = projection.featurize(tapped, P, X, np.zeros(len(X)), factors=projection.lora_factors(pairs, scale))
  for i, x in enumerate(X):
    J = jax.jacrev(lambda lo: net.apply(_merged(params, lo, scale), x))(lora)   # exact LoRA gradients
    dense = np.concatenate([J[b.split("/")[0]][b.split("/")[1]].reshape(2, -1) @ projection.kronecker(*P[b])
                            for b in sorted(shapes)], 1)
    np.testing.assert_allclose(feats.phi[i], dense, rtol=1e-4, atol=1e-5)
    if b_zero:   # at B = 0 every A-gradient vanishes
      a_cols = np.concatenate([np.full(4, b.endswith("/A")) for b in sorted(shapes)])
      np.testing.assert_allclose(feats.phi[i][:, a_cols], 0.0, atol=1e-7)


def test_taps_name_a_layer_that_never_ran():
  net, params, _, X = _setup()
  tapped = projection.dense_taps(lambda ex: net.apply(params, ex[0]), ["l1", "l3"])
  with pytest.raises(ValueError, match="^names:.*l3"):
    tapped(None, (X[0], 0.0))


def test_span_coordinates_give_the_unprojected_estimate():
  net, params, _, _ = _setup()
  X = jax.random.normal(jax.random.key(7), (12, 4, 5))
  y = jnp.zeros(12)
  flat, unravel = ravel_pytree(params)
  out = lambda p, ex: net.apply(p, ex[0])  # noqa: E731
  loss = ks.OutputLoss("sq", lambda o, _: 0.5 * jnp.sum((o - 1.0) ** 2))
  exact = ks.featurize(None, params, X[:8], y[:8], key=jax.random.key(0), dim=flat.size, output=out,
                       projection="identity")
  exact_t = ks.featurize(None, params, X[8:], y[8:], key=jax.random.key(0), dim=flat.size, output=out,
                         projection="identity")
  span, span_t = projection.span_coordinates(exact, exact_t)
  assert span.dim <= 8 * 2
  task = np.repeat(np.arange(4), 2)
  S = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1]], bool)
  for method in ("onestep", "newton"):
    kw = dict(ridge=0.3, method=method, loss=loss, mean=True)
    np.testing.assert_allclose(ks.estimate(span, task, S, span_t, **kw), ks.estimate(exact, task, S, exact_t, **kw),
                               rtol=1e-4, atol=1e-5)
