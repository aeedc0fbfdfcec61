"""KRR fit + cross-validation: ksurrogate vs scikit-learn, side by side in one run.

  python benchmarks/krr.py                  # m in {100, 1000, 2000}, 500 targets, K = 50
  python benchmarks/krr.py --sizes=100 --nystrom_m=2000 --inducing=200   # quick look

Both sides search the same (gamma, ridge) grid with the same 5 folds on the same data, scoring
held-out MSE; sklearn is GridSearchCV(KernelRidge) refitting the winner. ksurrogate's time includes
compilation on the first call ("cold") and is also given warm. Prints the ratio per m, then the
Nystrom path: fit + CV time at a large m and its prediction gap to exact KRR at the largest m.
"""
from __future__ import annotations




import jax
import numpy as np
from absl import app
from absl import flags

import ksurrogate as ks
from common import timed
from ksurrogate import surrogates

_SIZES = flags.DEFINE_list("sizes", ["100", "1000", "2000"], "numbers of fitted subsets")
_TARGETS = flags.DEFINE_integer("targets", 500, "number of targets")
_TASKS = flags.DEFINE_integer("tasks", 50, "K")
_NYS_M = flags.DEFINE_integer("nystrom_m", 10000, "m for the Nystrom timing")
_INDUCING = flags.DEFINE_integer("inducing", 1000, "Nystrom inducing subsets")
_SKIP_SKLEARN_ABOVE = flags.DEFINE_integer("skip_sklearn_above", 4000, "no sklearn run beyond this m")


def make_data(rng, m, K, T, truth_seed=123):
  """Outcomes with additive effects, random pairwise interactions and noise; the ground-truth
  function depends on truth_seed only, so fit and test draws share it."""
  truth = np.random.default_rng(truth_seed)
  A = truth.normal(0, 0.2, (K, T))
  pairs = truth.integers(0, K, (10, 2))
  W = truth.normal(0, 0.5, (10, T))
  S = np.unique(rng.random((int(m * 1.05) + 10, K)) < 0.5, axis=0)[:m]
  rng.shuffle(S)
  inter = sum((S[:, i] & S[:, j]).astype(float)[:, None] * W[n] for n, (i, j) in enumerate(pairs))
  return S, S @ A + inter + 0.3 * rng.normal(size=(m, T))


def sklearn_fit(S, F, gammas, ridges, folds):
  from sklearn.kernel_ridge import KernelRidge
  from sklearn.model_selection import GridSearchCV, PredefinedSplit
  Fc = F - F.mean(0)
  search = GridSearchCV(KernelRidge(kernel="rbf"), {"gamma": list(gammas), "alpha": list(ridges)},
                        cv=PredefinedSplit(folds), scoring="neg_mean_squared_error", refit=True)
  return search.fit(S.astype(float), Fc)


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  K, T = _TASKS.value, _TARGETS.value
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; K={K}, targets={T}, grid 9 gamma x 9 ridge, 5 folds")
  print(f"{'m':>6} {'ours cold s':>12} {'ours warm s':>12} {'sklearn s':>10} {'speedup warm':>13} {'speedup cold':>13}")
  sizes = [int(s) for s in _SIZES.value]
  last = None
  for m in sizes:
    S, F = make_data(rng, m, K, T)
    _, cold = timed(lambda: ks.fit_kernel(S, F))
    ours, warm = timed(lambda: ks.fit_kernel(S, F))
    with jax.enable_x64(True):
      gammas = np.asarray(ours.gamma_grid)
    folds = np.zeros(m, int)
    idx, valid, _ = surrogates.cv_folds(m, 5, 0)
    for f in range(5):
      folds[np.asarray(idx[f])[np.asarray(valid[f])]] = f
    if m <= _SKIP_SKLEARN_ABOVE.value:
      _, sk = timed(lambda: sklearn_fit(S, F, gammas, surrogates.RIDGE_GRID, folds))
      print(f"{m:>6} {cold:>12.2f} {warm:>12.2f} {sk:>10.2f} {sk / warm:>12.1f}x {sk / cold:>12.1f}x", flush=True)
    else:
      print(f"{m:>6} {cold:>12.2f} {warm:>12.2f} {'-':>10}", flush=True)
    last = (S, F, ours)

  m = _NYS_M.value
  S, F = make_data(rng, m, K, T)
  _, cold = timed(lambda: ks.fit_kernel(S, F, num_inducing=_INDUCING.value))
  _, warm = timed(lambda: ks.fit_kernel(S, F, num_inducing=_INDUCING.value))
  print(f"\nNystrom, m={m}, {_INDUCING.value} inducing: fit + CV {cold:.2f} s cold, {warm:.2f} s warm")

  S, F, exact = last
  S_test, F_test = make_data(np.random.default_rng(1), 1000, K, T)
  inducing = min(_INDUCING.value, len(S))
  nys = ks.fit_kernel(S, F, num_inducing=inducing)
  pe, pn = np.asarray(exact.predict(S_test)), np.asarray(nys.predict(S_test))
  gap = np.linalg.norm(pn - pe) / np.linalg.norm(pe - pe.mean(0))
  print(f"Nystrom vs exact at m={len(S)} ({inducing} inducing): relative prediction gap {gap:.4f} "
        f"(||pred_nys - pred_exact|| / ||pred_exact - mean||); held-out LDS exact "
        f"{ks.metrics.lds(pe, F_test):.4f}, nystrom {ks.metrics.lds(pn, F_test):.4f}")


if __name__ == "__main__":
  app.run(main)
