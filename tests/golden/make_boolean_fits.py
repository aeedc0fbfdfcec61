"""Writes tests/golden/boolean_fits.npz: fits and readouts of the surrogates on boolean subsets, as
the library computed them before it took real-valued inputs (commit 18c02ab of branch `layout`).
tests/test_mixture_inputs.py checks that boolean inputs still give these numbers.

  python tests/golden/make_boolean_fits.py      # from the repository root, in the project's venv
"""
import pathlib

import jax
import numpy as np

import ksurrogate as ks


def cases():
  """{name: (S bool [m, K], F [m, T])}: seeded designs the golden values are computed on."""
  rng = np.random.default_rng(20261206)
  out = {}
  for name, (m, K, T) in {"small": (40, 8, 3), "medium": (120, 12, 4)}.items():
    S = rng.random((m, K)) < 0.6
    w = rng.normal(size=(K, T))
    F = S @ w + 0.8 * (S[:, 0] & S[:, 1])[:, None] - 0.5 * (S[:, 2] ^ S[:, 3])[:, None] + 0.1 * rng.normal(size=(m, T))
    out[name] = (S, F)
  return out


def values(names=None) -> dict:
  """{"<case>/<family>/<what>": array} for the named cases (default: all)."""
  out = {}
  for name, (S, F) in cases().items():
    if names is not None and name not in names:
      continue
    K = S.shape[1]
    probe = np.random.default_rng(1).random((16, K)) < 0.5
    fits = {
        "kernel": ks.fit_kernel(S, F, cv=4),
        "kernel_lds": ks.fit_kernel(S, F, cv=4, cv_metric="lds"),
        "nystrom": ks.fit_kernel(S, F, cv=4, num_inducing=min(30, len(S))),
        "linear": ks.fit_linear(S, F, cv=4),
        "official_krr": ks.parity.official_krr(S, F, ridge=1e-2),
        "official_lstsq": ks.parity.official_lstsq(S, F),
    }
    for fam, g in fits.items():
      key = f"{name}/{fam}"
      out[f"{key}/predict"] = np.asarray(g.predict(probe))
      out[f"{key}/loo"] = np.asarray(ks.predicted_loo(g))
      if g.cv_scores is not None:
        out[f"{key}/cv_scores"] = np.asarray(g.cv_scores)
      out[f"{key}/ridge"] = np.asarray(g.ridge)
      if hasattr(g, "gamma"):
        out[f"{key}/gamma"] = np.asarray(g.gamma)
        out[f"{key}/variance"] = np.asarray(g.predict_variance(probe))
        out[f"{key}/interactions"] = np.asarray(ks.interactions(g))
    out[f"{name}/shapley"] = np.asarray(ks.shapley(fits["kernel"], None, jax.random.key(0), num_permutations=16)[0])
    picked, var = ks.suggest_subsets(fits["kernel"], jax.random.key(3), 5, num_candidates=256)
    out[f"{name}/suggest"] = np.asarray(picked)
    out[f"{name}/suggest_variance"] = np.asarray(var)
  return out


if __name__ == "__main__":
  vals = values()
  vals["made_by"] = np.array(f"ksurrogate before real-valued inputs (layout 18c02ab), jax {jax.__version__}")
  np.savez(pathlib.Path(__file__).parent / "boolean_fits.npz", **vals)
  print(len(vals), "arrays")
