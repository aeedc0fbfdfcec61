import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from scipy import optimize

import ksurrogate as ks
from ksurrogate import diagnostics, estimators, features, training


def logreg(params, X):
  return X @ params["w"] + params["b"]


def _problem(C, seed=0, N=48, K=4, T=9):
  r = np.random.default_rng(seed)
  X = r.normal(size=(N + T, 3)).astype(np.float32)
  y = r.integers(0, C, N + T)
  params0 = {"w": r.normal(0, 0.3, (3, C)).astype(np.float32), "b": np.zeros(C, np.float32)}
  task_ids = np.repeat(np.arange(K), N // K)
  return params0, X[:N], y[:N], X[N:], y[N:], task_ids


def _exact_minimizer_outcomes(params0, X, y, Xt, yt, mask, ridge):
  """Minimizes sum_{selected} CE + ridge/2 ||theta - theta0||^2 in float64 with scipy."""
  flat0, unravel = ravel_pytree(jax.tree.map(lambda a: a.astype(np.float64), params0))
  flat0 = np.asarray(flat0)
  Xs, ys = X[mask].astype(np.float64), y[mask]
  def obj(theta):
    p = unravel(theta)
    logits = np.asarray(Xs @ np.asarray(p["w"]) + np.asarray(p["b"]))
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    probs = np.exp(logits - lse[:, None])
    probs[np.arange(len(ys)), ys] -= 1.0
    g = {"w": Xs.T @ probs, "b": probs.sum(0)}
    return (lse - logits[np.arange(len(ys)), ys]).sum() + 0.5 * ridge * np.sum((theta - flat0) ** 2), \
        np.asarray(ravel_pytree(g)[0]) + ridge * (theta - flat0)
  res = optimize.minimize(obj, flat0, jac=True, method="L-BFGS-B", options=dict(gtol=1e-12, ftol=1e-15, maxiter=5000))
  p = unravel(res.x)
  logits = Xt.astype(np.float64) @ np.asarray(p["w"]) + np.asarray(p["b"])
  return np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, yt))


@pytest.mark.parametrize("C,output", [(3, "logits"), (2, "margin")])
def test_estimate_equals_exact_minimizer_for_model_linear_in_params(C, output):
  params0, X, y, Xt, yt, task_ids = _problem(C)
  D = ravel_pytree(params0)[0].size
  key = jax.random.key(0)
  train = features.featurize(logreg, params0, X, y, key=key, dim=D, output=output, projection="identity")
  target = features.featurize(logreg, params0, Xt, yt, key=key, dim=D, output=output, projection="identity")
  S = np.array([[1, 1, 1, 1], [1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1]], bool)
  ridge = 0.5
  F_hat = ks.estimate(train, task_ids, S, target, ridge=ridge, method="newton", num_iters=25)
  for i, s in enumerate(S):
    expect = _exact_minimizer_outcomes(params0, X, y, Xt, yt, s[task_ids], ridge)
    np.testing.assert_allclose(F_hat[i], expect, rtol=2e-4, atol=2e-5)


def _random_features(seed=0, N=40, C=3, d=6, K=5, T=7):
  r = np.random.default_rng(seed)
  mk = lambda n: features.Features(phi=r.normal(0, 0.5, (n, C, d)).astype(np.float32),   # noqa: E731
                                   offsets=r.normal(size=(n, C)).astype(np.float32),
                                   labels=r.integers(0, C, n).astype(np.int32), output="logits")
  return mk(N), mk(T), np.arange(N) % K


def test_onestep_is_one_newton_step_from_zero():
  train, target, task_ids = _random_features()
  S = np.array([[1, 0, 1, 1, 0], [1, 1, 1, 1, 1]], bool)
  F_hat, Z = ks.estimate(train, task_ids, S, target, ridge=2.0, method="onestep", return_params=True)
  for s, z in zip(S, Z):
    w = s[task_ids]
    phi, o = train.phi[w], train.offsets[w]
    p = np.exp(o - o.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    r = p - np.eye(3)[train.labels[w]]
    g = np.einsum("ncd,nc->d", phi, r)
    H = sum(phi[n].T @ (np.diag(p[n]) - np.outer(p[n], p[n])) @ phi[n] for n in range(len(phi)))
    np.testing.assert_allclose(z, -np.linalg.solve(H + 2.0 * np.eye(6), g), rtol=1e-4, atol=1e-5)


def test_newton_decreases_to_optimum_and_chunking_is_invisible():
  train, target, task_ids = _random_features(1)
  S = np.asarray(ks.subsets.fixed_size(jax.random.key(0), 7, 5, 3))
  a = ks.estimate(train, task_ids, S, target, ridge=1.0, method="newton", num_iters=12)
  b = ks.estimate(train, task_ids, S, target, ridge=1.0, method="newton", num_iters=12, chunk_size=2)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  c = ks.estimate(train, task_ids, S, target, ridge=1.0, method="newton", num_iters=30)
  np.testing.assert_allclose(a, c, rtol=1e-4)   # converged
  margin = ks.estimate(train, task_ids, S, target, ridge=1.0, method="newton", num_iters=12, outcome="margin")
  np.testing.assert_allclose(a, np.logaddexp(0, -margin), rtol=1e-4)   # CE = softplus(-margin)


def test_estimate_is_deterministic_and_calibrates():
  train, target, task_ids = _random_features(2)
  S = np.asarray(ks.subsets.fixed_size(jax.random.key(1), 6, 5, 4, distinct=False))
  truth = ks.estimate(train, task_ids, S, target, ridge=3.0)
  np.testing.assert_array_equal(truth, ks.estimate(train, task_ids, S, target, ridge=3.0))
  best, table = ks.calibrate_ridge(train, task_ids, target, S, truth, grid=[0.1, 1.0, 3.0, 30.0])
  assert best == 3.0 and table[3.0] == 0.0
  # By ranking instead: any monotone transform of the truth is matched perfectly at ridge 3.
  best, table = ks.calibrate_ridge(train, task_ids, target, S, np.exp(2 * truth), grid=[0.1, 1.0, 3.0, 30.0],
                                   criterion="lds")
  assert table[3.0] == pytest.approx(1.0) and table[best] == max(table.values())
  with pytest.raises(ValueError, match="^criterion: unknown value"):
    ks.calibrate_ridge(train, task_ids, target, S, truth, criterion="mse")


def test_bad_inputs():
  train, target, task_ids = _random_features()
  S = np.ones((2, 5), bool)
  with pytest.raises(ValueError, match="^task_ids: expected shape"):
    ks.estimate(train, task_ids[:-1], S, target, ridge=1.0)
  with pytest.raises(ValueError, match="^task_ids: ids must lie"):
    ks.estimate(train, task_ids + 1, S, target, ridge=1.0)
  with pytest.raises(ValueError, match="^S: subset 1 selects no training example"):
    ks.estimate(train, task_ids, np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], bool), target, ridge=1.0)
  bad = features.Features(phi=np.where(np.arange(train.phi.size).reshape(train.phi.shape) == 5, np.nan, train.phi),
                          offsets=train.offsets, labels=train.labels, output="logits")
  with pytest.raises(ValueError, match=r"^train.phi: 1 non-finite feature values \(first nan at example 0\)"):
    ks.estimate(bad, task_ids, S, target, ridge=1.0)
  small = features.Features(phi=target.phi[..., :4], offsets=target.offsets, labels=target.labels, output="logits")
  with pytest.raises(ValueError, match="^target: features"):
    ks.estimate(train, task_ids, S, small, ridge=1.0)
  with pytest.raises(ValueError, match="^ridge"):
    ks.estimate(train, task_ids, S, target, ridge=0.0)
  with pytest.raises(ValueError, match="^S: has 4 task columns|^task_ids: ids must lie"):
    ks.estimate(train, task_ids, np.ones((2, 4), bool), target, ridge=1.0)
  with pytest.raises(ValueError, match="^method"):
    ks.estimate(train, task_ids, S, target, ridge=1.0, method="sgd")


def test_vmapped_finetune_equals_sequential_and_linear_model_has_zero_linearization_error():
  params0, X, y, Xt, yt, task_ids = _problem(3, seed=4)
  S = np.array([[1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 1, 1]], bool)
  opt = optax.adam(0.05)
  loss = training.supervised(logreg)
  stacked, losses = training.finetune_subsets(training.trainer(loss, opt, num_steps=30), params0, (X, y), task_ids, S,
                                              chunk_size=2)
  for i, s in enumerate(S):
    p, l = training.train(loss, params0, (X, y), s[task_ids].astype(np.float32), optimizer=opt, num_steps=30,
                          key=jax.random.split(jax.random.key(0), 3)[i])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a)[i], np.asarray(b), rtol=1e-5, atol=1e-6), stacked, p)
  assert np.all(np.diff(np.asarray(losses), axis=1).mean(1) < 0)
  lin = diagnostics.linearization_error(logreg, params0, stacked, Xt)
  assert lin.shape == (3, len(Xt)) and lin.max() < 1e-5


def test_pluggable_output_loss_squared_is_ridge_regression_and_edge_of_grid_warns():
  r = np.random.default_rng(7)
  N, T, d, K = 30, 5, 4, 3
  mk = lambda n: features.Features(phi=r.normal(size=(n, 1, d)).astype(np.float32),   # noqa: E731
                                   offsets=r.normal(size=(n, 1)).astype(np.float32),
                                   labels=r.normal(size=(n, 1)).astype(np.float32), output="margin")
  train, target, task_ids = mk(N), mk(T), np.arange(N) % K
  S = np.array([[1, 0, 1], [1, 1, 1]], bool)
  for method in ("onestep", "newton"):
    F_hat = ks.estimate(train, task_ids, S, target, ridge=0.5, loss=ks.estimation.SQUARED, method=method)
    for i, s in enumerate(S):
      w = s[task_ids]
      Phi, res = train.phi[w, 0].astype(np.float64), (train.offsets[w, 0] - train.labels[w, 0]).astype(np.float64)
      z = -np.linalg.solve(Phi.T @ Phi + 0.5 * np.eye(d), Phi.T @ res)   # quadratic: one Newton step is exact
      want = 0.5 * (target.offsets[:, 0] + target.phi[:, 0] @ z - target.labels[:, 0]) ** 2
      np.testing.assert_allclose(F_hat[i], want, rtol=2e-4, atol=1e-5)
  truth = ks.estimate(train, task_ids, S, target, ridge=3.0, loss=ks.estimation.SQUARED)
  with pytest.warns(UserWarning, match="edge of the grid"):
    best, _ = ks.calibrate_ridge(train, task_ids, target, S, truth, grid=[3.0, 30.0], loss=ks.estimation.SQUARED)
  assert best == 3.0


# ----------------------------------------------------------------------------------------------
# The replay estimator: the fine-tuning recipe replayed in the linearized model.

def _real_finetunes(apply_fn, params0, X, y, Xt, yt, task_ids, S, optimizer, steps):
  """Target cross-entropies after full-batch fine-tuning from params0 on each subset (real training)."""
  run = ks.trainer(training.supervised(apply_fn), optimizer, num_steps=steps)
  stacked, _ = ks.finetune_subsets(run, params0, (X, y), task_ids, S, chunk_size=len(S))
  return np.asarray(jax.vmap(lambda p: training.cross_entropy(apply_fn(p, Xt), yt))(stacked))


def _replay(apply_fn, params0, X, y, Xt, yt, task_ids, S, recipe, *, output="logits", calibrate=None, **settings):
  """(F_hat, report) of the replay estimator on the subsets S (its preconditioner's design)."""
  est = estimators.Replay(recipe, **settings)
  data = estimators.Data.classifier(apply_fn, params0, (X, y), task_ids, (Xt, yt), output=output)
  return est.estimate(est.prepare(data, design=S, calibrate=calibrate), S)


@pytest.mark.parametrize("space", ["example", pytest.param("parameter", marks=pytest.mark.slow)])
def test_replay_equals_real_sgd_finetuning_on_a_model_linear_in_params(space):
  params0, X, y, Xt, yt, task_ids = _problem(3)
  D = ravel_pytree(params0)[0].size
  S = np.array([[1, 1, 1, 1], [1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1], [0, 0, 1, 1]], bool)
  recipe = ks.Recipe("sgd", 0.5, 30)
  # parameter space at dim >> D: the Gaussian projection keeps the kernel to a few percent
  F_hat, rep = _replay(logreg, params0, X, y, Xt, yt, task_ids, S, recipe, space=space,
                       dim=20000 if space == "parameter" else 8, chunk_size=2)
  real = _real_finetunes(logreg, params0, X, y, Xt, yt, task_ids, S, optax.sgd(0.5), 30)
  base = np.asarray(training.cross_entropy(logreg(params0, Xt), yt))
  assert rep.space == space and rep.dim == (D if space == "example" else 20000) and D == 12
  assert np.abs(real - base).max() > 0.05                  # the fine-tunes really move
  np.testing.assert_allclose(F_hat, real, **(dict(rtol=1e-4, atol=1e-5) if space == "example" else dict(rtol=0.03, atol=1e-3)))


def test_replay_is_adam_exactly_for_one_parameter():
  # one parameter, one output: the scalar second-moment tracking is Adam's own (up to eps)
  apply_fn = lambda p, X: jnp.stack([jnp.zeros(len(X)), X[:, 0] * p["a"]], -1)   # noqa: E731
  r = np.random.default_rng(1)
  X = r.normal(size=(40, 1)).astype(np.float32)
  y = (X[:, 0] + r.normal(0, 0.5, 40) > 0).astype(np.int32)
  Xt, yt = X[:7], y[:7]
  params0 = {"a": np.float32(0.2)}
  task_ids = np.repeat(np.arange(4), 10)
  S = np.array([[1, 1, 1, 1], [1, 0, 0, 1], [0, 1, 1, 0]], bool)
  F_hat, _ = _replay(apply_fn, params0, X, y, Xt, yt, task_ids, S, ks.Recipe("adam", 0.05, 25))
  real = _real_finetunes(apply_fn, params0, X, y, Xt, yt, task_ids, S, optax.adam(0.05), 25)
  np.testing.assert_allclose(F_hat, real, rtol=1e-4, atol=1e-5)


def test_replay_tracks_adam_finetunes_of_an_mlp_better_than_no_change():
  sys.path.insert(0, str(pathlib.Path(__file__).parent / "golden"))
  import golden_models
  r = np.random.default_rng(0)
  params0 = golden_models.mlp_params(0)
  X = r.normal(size=(96, 6)).astype(np.float32)
  teacher = golden_models.mlp_params(5)
  y = np.asarray(jnp.argmax(golden_models.mlp(teacher, X), -1))
  Xt, yt, X, y = X[:24], y[:24], X[24:], y[24:]
  task_ids = np.repeat(np.arange(6), 12)
  S = np.array(ks.subsets.bernoulli(jax.random.key(0), 12, 6, 0.6))
  S[S.sum(1) == 0, 0] = True
  real = _real_finetunes(golden_models.mlp, params0, X, y, Xt, yt, task_ids, S, optax.adam(3e-3), 40)
  base = np.asarray(training.cross_entropy(golden_models.mlp(params0, Xt), yt))
  for output in ("logits", "margin", "top1"):
    F_hat, rep = _replay(golden_models.mlp, params0, X, y, Xt, yt, task_ids, S, ks.Recipe("adam", 3e-3, 40),
                         output=output)
    scored = rep.scored(F_hat, real, F_base=base)
    assert scored.ratio_to_no_change < 0.5 and scored.output == output, output


def test_replay_bad_inputs():
  params0, X, y, Xt, yt, task_ids = _problem(3)
  S = np.ones((2, 4), bool)
  recipe = ks.Recipe("sgd", 0.1, 3)
  for bad, match in [(dict(recipe=("sgd", 0.1, 3)), "^recipe:"), (dict(space="both"), "^space:"), (dict(dim=0), "^dim:"),
                     (dict(groups="all"), "^groups:"), (dict(preconditioner="none"), "^preconditioner:")]:
    with pytest.raises(ValueError, match=match):
      estimators.Replay(**{"recipe": recipe, **bad})
  with pytest.raises(ValueError, match="^recipe.optimizer:"):
    ks.Recipe("rmsprop", 0.1, 3)
  with pytest.raises(ValueError, match="^recipe.lr:"):
    ks.Recipe("sgd", -1.0, 3)
  with pytest.raises(ValueError, match="^recipe.steps:"):
    ks.Recipe("sgd", 0.1, 0)
  est = estimators.Replay(recipe)
  out = features.output_fn(logreg, "logits")
  loss = ks.estimation.SOFTMAX_CROSS_ENTROPY
  for data, match in [(estimators.Data(out, params0, (X, y[:-1]), task_ids, (Xt, yt), loss), "^train:"),
                      (estimators.Data(None, params0, (X, y), task_ids, (Xt, yt), loss), "^output_fn:"),
                      (estimators.Data(out, params0, (X, y), task_ids, (Xt, yt), "ce"), "^loss:"),
                      (estimators.Data(out, params0, (X, y), task_ids, None, loss), "^data: the replay reads")]:
    with pytest.raises(ValueError, match=match):
      est.prepare(data, design=S)
  data = estimators.Data(out, params0, (X, y), task_ids, (Xt, yt), loss)
  state = est.prepare(data)   # SGD: no preconditioner, no design needed
  with pytest.raises(ValueError, match="^S:"):
    est.estimate(state, np.zeros((2, 4), bool))
  with pytest.raises(ValueError, match="^design: the 'design' preconditioner"):
    estimators.Replay(ks.Recipe("adam", 0.1, 3)).prepare(data)


def test_mean_objective_is_the_sum_at_a_ridge_scaled_by_subset_size():
  params0, X, y, Xt, yt, task_ids = _problem(3)
  train = features.featurize(logreg, params0, X, y, key=jax.random.key(0), dim=12, output="logits", projection="identity")
  S = np.array([[1, 1, 1, 1], [1, 0, 1, 0], [0, 1, 0, 0]], bool)
  n_S = S.astype(int) @ np.bincount(task_ids)
  for method in ("onestep", "newton"):
    z_mean = ks.solve(train, task_ids, S, ridge=0.01, method=method, mean=True, num_iters=20)
    for i in range(len(S)):
      z_sum = ks.solve(train, task_ids, S[i:i + 1], ridge=0.01 * n_S[i], method=method, num_iters=20)
      np.testing.assert_allclose(z_mean[i], z_sum[0], rtol=1e-3, atol=1e-5)
    assert not np.allclose(z_mean[0], ks.solve(train, task_ids, S[:1], ridge=0.01, method=method, num_iters=20)[0])


def test_calibrate_ridge_refuses_non_finite_real_outcomes_in_one_line():
  train, target, task_ids = _random_features(2)
  S = np.asarray(ks.subsets.fixed_size(jax.random.key(1), 6, 5, 4, distinct=False))
  truth = ks.estimate(train, task_ids, S, target, ridge=3.0)
  bad = truth.copy()
  bad[[1, 4], 2] = np.nan
  # It used to return ridge 0.001 from an all-NaN table with one "edge of the grid" warning.
  with pytest.raises(ValueError, match=r"^F_real: 2 non-finite values \(first nan at subset 1\) in subsets 1, 4; "
                                       r"targets 2$"):
    ks.calibrate_ridge(train, task_ids, target, S, bad)
  with pytest.raises(ValueError, match="^F_real: has 5 rows but S has 6 subsets"):
    ks.calibrate_ridge(train, task_ids, target, S, truth[:5])
  with pytest.raises(ValueError, match="^F_real: has 6 target columns but target holds 7 examples"):
    ks.calibrate_ridge(train, task_ids, target, S, truth[:, :6])
  for grid, pattern in [([1.0, np.nan], "^grid: entry 1 is nan"), ([0.0, 1.0], "^grid: entry 0 is 0.0"), ([], "^grid")]:
    with pytest.raises(ValueError, match=pattern):
      ks.calibrate_ridge(train, task_ids, target, S, truth, grid=grid)
  # Real outcomes that do not vary: the LDS is undefined at every ridge, so no ridge can be chosen.
  with pytest.raises(ValueError, match="^grid: the lds criterion is non-finite at every ridge"):
    ks.calibrate_ridge(train, task_ids, target, S, np.ones_like(truth), criterion="lds", grid=[1.0, 10.0])


def test_estimate_and_statistics_name_the_non_finite_rows():
  train, target, task_ids = _random_features()
  S = np.ones((2, 5), bool)
  phi = np.array(train.phi)
  phi[[3, 17], 1, 0] = np.inf
  bad = features.Features(phi=phi, offsets=train.offsets, labels=train.labels, output="logits")
  pattern = r"^train.phi: 2 non-finite feature values \(first inf at example 3\) in examples 3, 17; outputs 1$"
  with pytest.raises(ValueError, match=pattern):
    ks.estimate(bad, task_ids, S, target, ridge=1.0)
  with pytest.raises(ValueError, match=pattern):
    ks.task_statistics(bad, task_ids, 5)
  offsets = np.array(target.offsets)
  offsets[4, 0] = np.nan
  bad_t = features.Features(phi=target.phi, offsets=offsets, labels=target.labels, output="logits")
  with pytest.raises(ValueError, match=r"^target.offsets: 1 non-finite values \(first nan at example 4\) in examples 4; "
                                       "outputs 0$"):
    ks.estimate(train, task_ids, S, bad_t, ridge=1.0)
  with pytest.raises(ValueError, match="^ridge: must be finite and positive, got inf$"):
    ks.estimate(train, task_ids, S, target, ridge=float("inf"))
  with pytest.raises(ValueError, match="^ridge: must be finite and positive, got nan$"):
    ks.estimate(train, task_ids, S, target, ridge=float("nan"))
  with pytest.raises(ValueError, match="^task_ids: ids must lie in"):
    ks.task_statistics(train, task_ids, 3)
  with pytest.raises(ValueError, match="^num_tasks: expected a positive integer"):
    ks.task_statistics(train, task_ids, 0)
  g_K, H_K = ks.task_statistics(train, task_ids, 5)
  g_bad = g_K.copy()
  g_bad[2, 0] = np.nan
  with pytest.raises(ValueError, match=r"^stats: 1 non-finite gradient values \(first nan at task 2\)"):
    ks.estimate(train, task_ids, S, target, ridge=1.0, stats=(g_bad, H_K))
  with pytest.raises(ValueError, match="^stats: expected shapes"):
    ks.estimate(train, task_ids, S, target, ridge=1.0, stats=(g_K[:4], H_K))


def test_replay_step_calibration_picks_the_scale_the_calibration_fine_tunes_ask_for():
  # Real fine-tunes run at half the rate the recipe names: the calibration, given a few of them,
  # must pick scale 0.5 and then match the other subsets' real fine-tunes (SGD on a model linear
  # in its parameters is replayed exactly, so only the scale can be wrong).
  params0, X, y, Xt, yt, task_ids = _problem(3)
  S = np.array([[1, 1, 1, 1], [1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1], [0, 0, 1, 1], [0, 1, 1, 1]], bool)
  real = _real_finetunes(logreg, params0, X, y, Xt, yt, task_ids, S, optax.sgd(0.25), 30)
  kw = dict(space="example")
  recipe = ks.Recipe("sgd", 0.5, 30)
  F_plain, plain = _replay(logreg, params0, X, y, Xt, yt, task_ids, S[3:], recipe, **kw)
  F_cal, cal = _replay(logreg, params0, X, y, Xt, yt, task_ids, S[3:], recipe, calibrate=(S[:3], real[:3]), **kw)
  assert plain.step_scale == 1.0 and plain.calibration is None and plain.num_calibration is None
  assert cal.step_scale == 0.5 and set(cal.calibration) == set(estimators.replay.STEP_SCALES) and cal.num_calibration == 3
  assert min(cal.calibration.values()) == cal.calibration[0.5] < 1e-4
  assert cal.recipe == recipe and cal.to_summary()["calibration"]["0.5"] == cal.calibration[0.5]
  np.testing.assert_allclose(F_cal, real[3:], rtol=1e-4, atol=1e-5)
  assert np.abs(F_plain - real[3:]).max() > 100 * np.abs(F_cal - real[3:]).max()   # the recipe's own rate is off
  with pytest.warns(UserWarning, match="^calibrate: step scale 0.25 at the edge"):
    _, edge = _replay(logreg, params0, X, y, Xt, yt, task_ids, S[3:], recipe, calibrate=(S[:3], real[:3]),
                      step_scales=(0.25, 1.0), **kw)
  assert edge.step_scale == 0.25
  for bad, match in [((S[:3],), "^calibrate: expected"), ((S[:3, :2], real[:3]), "^calibrate: S_cal: 2 tasks"),
                     ((S[:3], real[:2]), "^calibrate: F_cal has shape"),
                     ((S[:3], np.full_like(real[:3], np.nan)), "^calibrate: F_cal holds non-finite")]:
    with pytest.raises(ValueError, match=match):
      _replay(logreg, params0, X, y, Xt, yt, task_ids, S[3:], recipe, calibrate=bad, **kw)
  for scales in [(), (0.5, -1.0)]:
    with pytest.raises(ValueError, match="^step_scales:"):
      estimators.Replay(recipe, step_scales=scales)
