"""Inputs that used to give finite, wrong numbers without a word: class labels outside the model's
classes (JAX clamps an out-of-range index into a real class) and target features projected by
another P than the training features. Each is now one ValueError line before any compute."""
import jax
import numpy as np
import optax
import pytest

import ksurrogate as ks
from ksurrogate import estimators, features, training

from test_estimate import _problem, logreg

C = 3


def _with_label(y, value, at=5):
  y = np.array(y)
  y[at] = value
  return y


@pytest.mark.parametrize("bad", [C, -1])
def test_featurize_refuses_labels_outside_the_classes(bad):
  params0, X, y, _, _, _ = _problem(C)
  with pytest.raises(ValueError, match=rf"^y: label {bad} \(example 5\) is outside \[0, 3\) for a model with 3 classes$"):
    features.featurize(logreg, params0, X, _with_label(y, bad), key=jax.random.key(0), dim=4, output="logits")
  with pytest.raises(ValueError, match=r"^y: class labels must be integers in \[0, 3\), got dtype float"):
    features.featurize(logreg, params0, X, y.astype(np.float32), key=jax.random.key(0), dim=4, output="logits")


def test_estimator_data_refuses_labels_outside_the_classes():
  params0, X, y, Xt, yt, task_ids = _problem(C)
  data = estimators.Data.classifier(logreg, params0, (X, _with_label(y, 7)), task_ids, (Xt, yt), output="logits")
  with pytest.raises(ValueError, match=r"^train: label 7 \(example 5\) is outside \[0, 3\)"):
    data.checked()
  data = estimators.Data.classifier(logreg, params0, (X, y), task_ids, (Xt, _with_label(yt, -1, at=2)), output="logits")
  with pytest.raises(ValueError, match=r"^target: label -1 \(example 2\) is outside \[0, 3\)"):
    data.checked()


def test_finetune_and_retrain_refuse_labels_outside_the_classes():
  params0, X, y, _, _, task_ids = _problem(C)
  run = ks.trainer(training.supervised(logreg), optax.sgd(0.1), num_steps=2)
  S = np.eye(4, dtype=bool)
  with pytest.raises(ValueError, match=r"label 3 \(example 5\) is outside \[0, 3\)"):
    ks.finetune_subsets(run, params0, (X, _with_label(y, C)), task_ids, S)
  with pytest.raises(ValueError, match=r"label -1 \(example 5\) is outside \[0, 3\)"):
    ks.retrain_subsets(run, lambda k: params0, (X, _with_label(y, -1)), task_ids, S)
  stacked, _ = ks.finetune_subsets(run, params0, (X, y), task_ids, S)   # the good labels still train
  assert np.all(np.isfinite(np.asarray(jax.tree.leaves(stacked)[0])))


def test_target_features_of_another_projection_are_refused():
  params0, X, y, Xt, yt, task_ids = _problem(C)
  train = features.featurize(logreg, params0, X, y, key=jax.random.key(0), dim=8)
  same = features.featurize(logreg, params0, Xt, yt, key=jax.random.key(0), dim=8)
  other = features.featurize(logreg, params0, Xt, yt, key=jax.random.key(1), dim=8)
  assert train.projection == same.projection != other.projection
  S = np.array([[1, 1, 0, 1], [0, 1, 1, 1]], bool)
  F = ks.estimate(train, task_ids, S, same, ridge=1.0)    # one projection: estimates as before
  assert np.all(np.isfinite(np.asarray(F)))
  with pytest.raises(ValueError, match=r"^target: features were projected by another P \(gaussian/D=12/d=8/.*\) than "
                                       r"train's \(gaussian/D=12/d=8/"):
    ks.estimate(train, task_ids, S, other, ridge=1.0)
  hand = features.Features(other.phi, other.offsets, other.labels, other.output)   # made by hand: fingerprint unknown
  assert hand.projection == "" and np.all(np.isfinite(np.asarray(ks.estimate(train, task_ids, S, hand, ridge=1.0))))
