"""The estimator interface (ksurrogate.estimators): every solver behind prepare / estimate, one
report with the same summary keys everywhere, the cost rule the configs check, and each kept
variant against a reference it must equal."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import ksurrogate as ks
from ksurrogate import estimators, training
from test_estimate import _problem, logreg

# Every experiment's summary block has exactly these keys (EstimatorReport.to_summary).
SUMMARY_KEYS = {
    "solver", "space", "dim", "output", "memory_bytes", "num_estimated", "seconds_setup", "seconds_compile",
    "seconds_per_subset", "ridge", "step_scale", "recipe", "calibration", "num_calibration", "num_scored",
    "median_relative_error", "mean_relative_error", "no_change_median_relative_error", "ratio_to_no_change",
    "lds_vs_real", "no_change_lds_vs_real", "linearization_error", "linearization_error_mean",
    "seconds_real_per_subset", "seconds_real_compile", "details", "skipped", "speedup_per_subset",
    "speedup_with_setup"}
S = np.array([[1, 1, 1, 1], [1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1], [0, 0, 1, 1], [0, 1, 1, 1], [1, 0, 0, 1]], bool)


def _data(C=3, output="logits", apply_fn=logreg, **kw):
  params0, X, y, Xt, yt, task_ids = _problem(C, **kw)
  return estimators.Data.classifier(apply_fn, params0, (X, y), task_ids, (Xt, yt), output=output)


def _real(data, apply_fn, optimizer, steps, S_=S):
  run = ks.trainer(training.supervised(apply_fn), optimizer, num_steps=steps)
  stacked, _ = ks.finetune_subsets(run, data.params0, data.train, data.task_ids, S_, chunk_size=len(S_))
  Xt, yt = data.target
  return np.asarray(jax.vmap(lambda p: training.cross_entropy(apply_fn(p, Xt), yt))(stacked))


def _run(est, data, S_=S, **kw):
  return est.estimate(est.prepare(data, design=S_, **kw), S_)


def test_every_solver_reports_the_same_summary_keys_and_is_found_by_name():
  data = _data()
  recipe = ks.Recipe("adam", 0.05, 10)
  real = _real(data, logreg, optax.adam(0.05), 10)
  base = np.asarray(training.cross_entropy(logreg(data.params0, data.target[0]), data.target[1]))
  assert set(estimators.SOLVERS) == {"onestep", "newton", "replay", "linearized"}
  for solver in estimators.SOLVERS:
    est = estimators.from_settings(solver, dict(recipe=recipe, dim=6, ridge=1.0, space="example", unused=3))
    assert isinstance(est, estimators.get(solver)) and est.solver == solver
    F, rep = _run(est, data)
    assert F.shape == (len(S), 9) and rep.solver == solver and rep.num_estimated == len(S)
    assert rep.seconds_setup > 0 and rep.seconds_per_subset > 0 and rep.seconds_compile >= 0 and rep.memory_bytes > 0
    scored = rep.scored(F, real, F_base=base, seconds_real_per_subset=2.0, details={"mine": 1})
    block = scored.to_summary()
    assert set(block) == SUMMARY_KEYS, solver
    assert block["ratio_to_no_change"] == pytest.approx(block["median_relative_error"] / block["no_change_median_relative_error"])
    assert block["lds_vs_real"] == pytest.approx(ks.metrics.lds(F, real))
    assert block["no_change_lds_vs_real"] is None and block["details"] == {"mine": 1} and block["num_scored"] == len(S)
    assert block["speedup_per_subset"] == pytest.approx(2.0 / rep.seconds_per_subset)
    assert block["speedup_with_setup"] == pytest.approx(2.0 / (rep.seconds_per_subset + rep.seconds_setup / len(S)))
  # an experiment's own estimator writes the same block through the report
  own = estimators.EstimatorReport("first_order", "embedding", 4, "loss", 10, 7, 1.0, 0.0, 1e-3)
  F_base = real + 0.1 * np.random.default_rng(0).normal(size=real.shape)      # a per-subset baseline: its LDS too
  block = own.scored(real + 0.01, real, F_base=F_base, lds_rows=[0, 2, 4, 6]).to_summary()
  assert set(block) == SUMMARY_KEYS and block["no_change_lds_vs_real"] == pytest.approx(
      ks.metrics.lds(F_base[[0, 2, 4, 6]], real[[0, 2, 4, 6]]))
  # undefined figures are None with their reason, never an error
  flat = own.scored(real[:2], real[:2], F_base=base)
  assert flat.lds_vs_real is None and flat.skipped["lds_vs_real"].startswith("rows: 2 scored subsets")


def test_unknown_solver_space_and_bad_settings_are_refused_in_one_line():
  recipe = ks.Recipe("sgd", 0.1, 3)
  for make, match in [(lambda: estimators.get("quadratic"), "^solver: unknown estimator 'quadratic'; expected one of"),
                      (lambda: estimators.from_settings("ridge", {}), "^solver: unknown estimator"),
                      (lambda: estimators.Replay(recipe, space="both"), "^space: unknown value 'both'"),
                      (lambda: estimators.Onestep(criterion="mse"), "^criterion: unknown value"),
                      (lambda: estimators.Onestep(ridge=-1.0), "^ridge: must be finite and positive"),
                      (lambda: estimators.Onestep(relative_ridge=True), "^relative_ridge: needs a ridge"),
                      (lambda: estimators.Linearized(recipe=None), "^recipe: expected"),
                      (lambda: estimators.register(estimators.Replay), "^solver: Replay needs a new solver name")]:
    with pytest.raises(ValueError, match=match):
      make()
  data = _data()
  est = estimators.Onestep(dim=4)
  state = est.prepare(data)                      # a ridge to calibrate, not set yet
  with pytest.raises(ValueError, match="^ridge: not set; pass calibrate="):
    est.estimate(state, S)
  with pytest.raises(ValueError, match="^calibrate: expected"):
    est.prepare(data, calibrate=S)
  with pytest.raises(ValueError, match="^task_ids: expected integer shape"):
    est.prepare(dataclasses.replace(data, task_ids=data.task_ids[:-1]))
  with pytest.raises(ValueError, match="^calibrate: the linearized reference"):
    estimators.Linearized(recipe).prepare(data, calibrate=(S, np.zeros((len(S), 9))))
  # per-array groups need the exact kernels: refused by the cost rule before any compute
  with pytest.raises(ValueError, match="^groups: 'layer' needs the example space"):
    estimators.Replay(recipe, groups="layer", space="parameter").memory(estimators.Sizes(10, 2, 1, 100, 2, 3))


def test_cost_rule_is_what_prepare_holds_and_what_the_modular_config_checks():
  from ksurrogate_experiments.modular import config as config_lib
  from ksurrogate_experiments.modular import phases
  c = config_lib.get_config("tiny")
  s = phases.setup(c)
  dsg = phases.design(c, s)
  params = s.init_fn(s.init_key)       # the cost depends on shapes only: an untrained model will do
  checked = config_lib.memory(c)
  data = estimators.Data.classifier(s.apply_fn, params, s.train_data, s.d.task_train, (s.X_val, s.y_val),
                                    output=c.estimate.output, num_tasks=dsg.K)
  est = config_lib.estimator(c)
  state = est.prepare(data, design=dsg.S_est)
  assert state.space == "example" and state.memory_bytes == checked["estimate.memory_gib"][0]
  assert ravel_pytree(params)[0].size == config_lib.network_size(c)
  # the features phase's margin features and one-step statistics, plus the projection formed once
  ridge = config_lib.estimator(c, solver="onestep")
  margin = dataclasses.replace(data, output_fn=ks.features.output_fn(s.apply_fn, "margin"),
                               loss=ks.estimation.LOGISTIC, output="margin")
  _, rep = ridge.estimate(ridge.prepare(margin, calibrate=(dsg.S_est[:4], np.ones((4, len(s.y_val))))), dsg.S_est[:4])
  D, d = config_lib.network_size(c), c.estimate.dim
  assert rep.memory_bytes + 4 * D * d == checked["estimate.dim"][0]
  # a budget below the exact kernel sends the replay to parameter space, and the config says so
  c.estimate.memory_gib = 1e-4
  assert "projected features" in config_lib.memory(c)["estimate.memory_gib"][1]
  assert config_lib.estimator(c).prepare(data, design=dsg.S_est).space == "parameter"


def test_sgd_replay_equals_the_linearized_optax_reference_on_a_nonlinear_model():
  # full-batch GD is exact in function space: the NTK replay and optax on the unprojected
  # linearized model are the same trajectory, on any model
  import sys, pathlib
  sys.path.insert(0, str(pathlib.Path(__file__).parent / "golden"))
  import golden_models
  r = np.random.default_rng(0)
  params0 = golden_models.mlp_params(0)
  X = r.normal(size=(60, 6)).astype(np.float32)
  y = np.asarray(jnp.argmax(golden_models.mlp(golden_models.mlp_params(5), X), -1))
  data = estimators.Data.classifier(golden_models.mlp, params0, (X[12:], y[12:]), np.repeat(np.arange(4), 12),
                                    (X[:12], y[:12]), output="logits")
  recipe = ks.Recipe("sgd", 0.2, 20)
  F_replay, _ = _run(estimators.Replay(recipe, space="example"), data)
  F_linear, rep = _run(estimators.Linearized(recipe, chunk_size=3), data)
  assert rep.space == "parameter" and rep.dim == ravel_pytree(params0)[0].size
  np.testing.assert_allclose(F_replay, F_linear, rtol=2e-4, atol=2e-5)
  base = np.asarray(training.cross_entropy(golden_models.mlp(params0, X[:12]), y[:12]))
  assert np.abs(F_linear - base).max() > 0.05                        # they really move


def test_linearized_adam_equals_real_adam_on_a_model_linear_in_params():
  data = _data()
  F, _ = _run(estimators.Linearized(ks.Recipe("adam", 0.05, 25)), data)
  np.testing.assert_allclose(F, _real(data, logreg, optax.adam(0.05), 25), rtol=1e-4, atol=1e-5)


def test_top_k_outputs_keeping_every_competitor_replay_sgd_exactly_on_a_linear_model():
  # with C - 2 competitors kept, the lumped rest is one logit: the output is linear in the
  # parameters and its loss is the exact cross-entropy, so the SGD replay is the real fine-tune
  data = _data(C=4, output="top2")
  real = _real(data, logreg, optax.sgd(0.5), 30)
  F, rep = _run(estimators.Replay(ks.Recipe("sgd", 0.5, 30), space="example"), data)
  assert rep.output == "top2"
  np.testing.assert_allclose(F, real, rtol=1e-4, atol=1e-5)
  F1, _ = _run(estimators.Replay(ks.Recipe("sgd", 0.5, 30), space="example"), _data(C=4, output="top1"))
  assert np.abs(F1 - real).max() > 100 * np.abs(F - real).max()    # one competitor lumps the other two


def test_layer_groups_make_adam_exact_with_one_parameter_per_array():
  # two scalar parameters, each its own array: one tracked second moment per array is Adam's own
  apply_fn = lambda p, X: jnp.stack([jnp.zeros(len(X)), X[:, 0] * p["a"] + X[:, 1] * p["b"]], -1)   # noqa: E731
  r = np.random.default_rng(1)
  X = r.normal(size=(40, 2)).astype(np.float32) * np.array([1.0, 5.0], np.float32)   # unequal gradient scales
  y = (X[:, 0] - 0.2 * X[:, 1] + r.normal(0, 0.5, 40) > 0).astype(np.int32)
  data = estimators.Data.classifier(apply_fn, {"a": np.float32(0.2), "b": np.float32(-0.1)}, (X, y),
                                    np.repeat(np.arange(4), 10), (X[:7], y[:7]), output="logits")
  recipe = ks.Recipe("adam", 0.05, 25)
  real = _real(data, apply_fn, optax.adam(0.05), 25)
  F_layer, rep = _run(estimators.Replay(recipe, groups="layer", space="example"), data)
  F_global, _ = _run(estimators.Replay(recipe, space="example"), data)
  np.testing.assert_allclose(F_layer, real, rtol=1e-4, atol=1e-5)
  assert np.abs(F_global - real).max() > 10 * np.abs(F_layer - real).max()
  assert rep.memory_bytes == estimators.Replay(recipe, groups="layer").memory(
      estimators.Sizes(40, 7, 2, 2, 4, num_groups=2)).bytes


def test_full_preconditioner_is_the_design_one_of_the_full_set():
  data = _data()
  recipe = ks.Recipe("adam", 0.05, 10)
  full = np.ones((1, 4), bool)
  est = estimators.Replay(recipe, space="example")
  F_design, _ = est.estimate(est.prepare(data, design=full), S)
  F_full, _ = _run(estimators.Replay(recipe, space="example", preconditioner="full"), data)
  np.testing.assert_allclose(F_full, F_design, rtol=1e-5, atol=1e-6)
  F_other, _ = _run(est, data)                                     # averaged over S: another preconditioner
  assert np.abs(F_other - F_full).max() > 1e-4


def test_ridge_estimators_are_the_solvers_and_relative_ridge_is_scale_free():
  data = _data()
  for solver in ("onestep", "newton"):
    est = estimators.get(solver)(dim=5, ridge=2.0)
    state = est.prepare(data, key=jax.random.key(4))
    F, rep = est.estimate(state, S)
    np.testing.assert_array_equal(F, ks.estimate(state.train, data.task_ids, S, state.target, ridge=2.0, method=solver,
                                                 loss=data.loss))
    assert rep.ridge == 2.0 and rep.dim == 5 and rep.output == "logits"
    # calibration picks the grid's ridge that reproduces outcomes made at it
    cal = estimators.get(solver)(dim=5, ridge_grid=(0.2, 2.0, 20.0))
    assert cal.requires_calibration and not est.requires_calibration
    _, rep = cal.estimate(cal.prepare(data, key=jax.random.key(4), calibrate=(S, F)), S)
    assert rep.ridge == 2.0 and rep.calibration[2.0] == 0.0 and rep.num_calibration == len(S)
  # relative: lam = ridge * trace(sum_k H_k) / (N d); scaling the loss scales lam alike
  rel = estimators.Onestep(dim=5, ridge=0.5, relative_ridge=True, mean=True)
  state = rel.prepare(dataclasses.replace(data, target=None), key=jax.random.key(4))
  assert state.ridge == pytest.approx(0.5 * np.trace(state.stats[1].sum(0)) / 48 / 5)
  Z, rep = rel.solve(state, S)
  np.testing.assert_allclose(Z, ks.solve(state.train, data.task_ids, S, ridge=state.ridge, mean=True, loss=data.loss),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="^data: estimate needs target examples"):
    rel.estimate(state, S)
  double = ks.OutputLoss("double_ce", lambda o, y: 2 * ks.estimation.SOFTMAX_CROSS_ENTROPY.value(o, y))
  state2 = rel.prepare(dataclasses.replace(data, target=None, loss=double), key=jax.random.key(4))
  assert state2.ridge == pytest.approx(2 * state.ridge, rel=1e-5)
  np.testing.assert_allclose(rel.solve(state2, S)[0], Z, rtol=1e-4, atol=1e-6)


def test_timings_count_compilation_apart_from_the_steady_state():
  data = _data()
  est = estimators.Replay(ks.Recipe("sgd", 0.1, 5), space="example", chunk_size=2)
  state = est.prepare(data)
  S_many = np.repeat(S, 3, axis=0)                         # 11 chunks of 2
  _, first = est.estimate(state, S_many)
  _, again = est.estimate(state, S_many)                   # the program is cached: nothing to compile
  assert first.seconds_compile > 0 and again.seconds_compile < first.seconds_compile
  assert 0 < first.seconds_per_subset < first.seconds_compile
