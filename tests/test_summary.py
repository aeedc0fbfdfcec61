"""Every run ends in a summary: metrics undefined on a test set are reported absent with their
reason (summary, arrays and plots still written), a design that cannot measure anything stops with
one line, and K = 1 / K = 2 problems go through the driver."""
import dataclasses
import json
import pathlib

import ml_collections
import numpy as np
import pytest

import ksurrogate as ks
from ksurrogate_experiments import common
from ksurrogate import families
from ksurrogate.harness import driver, runs

# The cpu configs' threshold (issue 16: the tiny configs had 0 and never met an undefined metric).
PRODUCTION_THRESHOLD = common.base_config("x", "v", {"v": {}}).normalized_error_threshold


def _problem(K=6, T=3, m=40, seed=0, **kw):
  r = np.random.default_rng(seed)
  S = r.random((m, K)) < 0.5
  beta = r.normal(size=(K, T))
  F = S @ beta + 0.05 * r.normal(size=(m, T))
  loo = -beta
  return driver.Problem(name=kw.pop("name", "p"), S=S, F=F, splits=[(np.arange(m - 10), np.arange(m - 10, m))],
                        truths={"loo": driver.Truth(loo)}, **kw)


def _families(config=None, name=None):
  return [f for f in families.standard(cv=2) if f.name in ("kernel", "linear")]


def _config(threshold=PRODUCTION_THRESHOLD):
  return ml_collections.ConfigDict({"normalized_error_threshold": threshold, "seed": 0,
                                    "eval": {"resplits": 3, "bootstrap": 100}})


def _run(tmp_path, problems, threshold=PRODUCTION_THRESHOLD, families_=_families):
  protocol = driver.Protocol("synthetic", problems=lambda c, run, fam: iter(problems), families=families_)
  config = _config(threshold)
  with runs.Run(tmp_path, progress=False, log=lambda m: None) as run:
    return driver.run(protocol, config, run)


def test_a_test_set_that_barely_varies_is_reported_not_fatal(tmp_path, capsys):
  """The modular cpu and paper runs died here after all their compute: held-out real fine-tunes
  whose outcomes vary less than the threshold (max variance 0.000556 < 0.001)."""
  base = _problem()
  r = np.random.default_rng(1)
  S_test = r.random((8, base.S.shape[1])) < 0.5
  F_test = 0.3 + 0.02 * r.normal(size=(8, base.F.shape[1]))   # variance ~4e-4 on every target
  problem = dataclasses.replace(base, other_tests={"finetune": (S_test, F_test)})
  s = _run(tmp_path, [problem])
  k = s["datasets"]["p"]["kernel_exact"]
  assert k["normalized_error_finetune"] is None and np.isfinite(k["lds_finetune"]) and np.isfinite(k["normalized_error"])
  (entry,) = s["skipped"]
  assert entry["metric"] == "normalized_error_finetune" and entry["methods"] == ["kernel_exact", "linear_exact"]
  assert entry["reason"].startswith(f"threshold: no target has variance >= {PRODUCTION_THRESHOLD:g} across the 8 rows")
  on_disk = json.loads((tmp_path / "summary.json").read_text())
  assert on_disk["datasets"]["p"]["kernel_exact"]["normalized_error_finetune"] is None and on_disk["skipped"] == s["skipped"]
  for what, path in on_disk["files"].items():
    assert pathlib.Path(path).stat().st_size > 0, what
  out = capsys.readouterr().out
  assert "n/a: p: normalized_error_finetune not computed for kernel_exact, linear_exact: threshold: no target" in out


def test_non_finite_and_constant_test_sets_are_absent_with_their_reason(tmp_path):
  base = _problem()
  F = base.F.copy()
  held = base.splits[0][1]
  F[held[2], 1] = np.nan                                       # one broken held-out outcome
  nan_problem = dataclasses.replace(base, name="nan", F=F)
  flat = base.F.copy()
  flat[held] = 1.0                                             # a held-out set that does not vary at all
  flat_problem = dataclasses.replace(base, name="flat", F=flat)
  s = _run(tmp_path, [nan_problem, flat_problem])
  for method in ("kernel_exact", "linear_exact"):
    assert s["datasets"]["nan"][method]["lds"] is None and s["datasets"]["nan"][method]["normalized_error"] is None
  reasons = {(e["dataset"], e["metric"]): e["reason"] for e in s["skipped"]}
  # the broken outcome is held out on the declared split and fitted on some re-splits: either way
  # the reason names it (a fit refuses non-finite outcomes)
  nan_reason = reasons.get(("nan", "lds")) or reasons[("nan", "fit")]
  assert "1 non-finite values" in nan_reason and "\n" not in nan_reason
  # the declared held-out set does not vary; the re-splits' held-out sets do
  assert s["datasets"]["flat"]["kernel_exact"]["lds_declared"] is None
  assert reasons[("flat", "lds_declared")].startswith("true: no target has both a varying truth and a varying prediction")
  assert (tmp_path / "flat" / "predicted_vs_true.png").stat().st_size > 1000   # plots cope with n/a scores
  assert not (tmp_path / "nan" / "predicted_vs_true.png").exists()            # nothing was fitted to plot


@pytest.mark.parametrize("K", [1, 2])
def test_one_and_two_tasks_go_through_the_driver(tmp_path, K):
  """K = 1: no leave-one-out correlation exists (one task); K = 2: it is defined on two points."""
  def fams(config, name):   # K = 1 has 2 distinct subsets: too few to cross-validate, so fixed settings
    fixed = [families.Family("kernel", ks.fit_kernel, dict(gamma=1.0, ridge=1e-3, cv=None)),
             families.Family("linear", ks.fit_linear, dict(ridge=1e-3, cv=None), baseline=True),
             families.Family("kernel_cv", ks.fit_kernel, dict(cv=2))]
    return fixed if K == 1 else _families()

  protocol = driver.Protocol("synthetic", problems=lambda c, run, fam: iter([_problem(K=K, m=30)]), families=fams)
  with runs.Run(tmp_path, progress=False, log=lambda m: None) as run:
    s = driver.run(protocol, _config(), run)
  k = s["datasets"]["p"]["kernel_exact"]
  assert np.isfinite(k["lds"])
  if K == 1:
    assert k["loo_pearson"] is None
    assert any(e["metric"] == "loo_pearson" and "need at least 2 rows" in e["reason"] for e in s["skipped"])
    assert any(e["metric"] == "interactions" and "kernel_exact" in e["methods"] for e in s["skipped"])
    # a method that cannot be fitted is reported with its reason; the run still ends in a summary
    assert s["datasets"]["p"]["kernel_cv_exact"]["lds"] is None
    assert any(e["metric"] == "fit" and e["methods"] == ["kernel_cv_exact"]
               and "cross-validation needs at least 3" in e["reason"] for e in s["skipped"])
  else:
    assert abs(k["loo_pearson"]) == pytest.approx(1.0)
  for png in ("predicted_vs_true", "loo_real_vs_predicted", "top_tasks") + (("interactions",) if K > 1 else ()):
    assert (tmp_path / "p" / f"{png}.png").stat().st_size > 1000, png
  assert (tmp_path / "p" / "interactions.png").exists() == (K > 1)


def test_an_unmeasurable_design_stops_with_one_line():
  F = np.zeros((10, 5))
  F[:, 2] = np.linspace(0, 1, 10)                # one target varies
  keep = common.require_varying(F, 1e-3, 1, phase="retrain", threshold_field="data.target_variance_threshold")
  assert keep.tolist() == [False, False, True, False, False]
  with pytest.raises(driver.Unmeasurable) as e:
    common.require_varying(F, 1e-3, 2, phase="retrain", threshold_field="data.target_variance_threshold")
  msg = str(e.value)
  assert msg.startswith("data.target_variance_threshold: after phase 'retrain' only 1 of 5 targets vary by more than "
                        "0.001 across its 10 subsets") and "\n" not in msg
  assert "min_varying_targets=2" in msg
  with pytest.raises(driver.Unmeasurable, match="^min_varying_targets: after phase 'exact_sentiment' only 0 of 5"):
    common.require_varying(np.ones((4, 5)), 0.0, 2, phase="exact_sentiment", threshold_field=None)


_KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import dataclasses
import test_summary as t
from ksurrogate.harness import store

def die(*args, **kwargs):
  os.kill(os.getpid(), signal.SIGKILL)

where = {where!r}
problem = t._problem()
if where == "arrays":
  store.save_arrays = die                                  # between the summary and the arrays it lists
elif where == "figure":
  problem = dataclasses.replace(problem, figures={{"late": lambda res, path: die()}})   # among the figures
t._run({workdir!r}, [problem])
"""


@pytest.mark.parametrize("where", ["arrays", "figure"])
def test_a_run_killed_while_writing_never_leaves_a_summary_listing_a_missing_file(tmp_path, where):
  """Before: summary.json was written first, listing arrays.npz and every figure; a kill right
  after it left a summary naming files that did not exist."""
  import subprocess
  import sys
  tests = str(pathlib.Path(__file__).resolve().parent)
  done = subprocess.run([sys.executable, "-c", _KILLED_RUN.format(tests=tests, where=where, workdir=str(tmp_path))],
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == -9, done.stderr[-2000:]
  summary = tmp_path / "summary.json"
  if where == "figure":
    assert summary.exists()
  if summary.exists():
    files = json.loads(summary.read_text())["files"]
    assert "p/arrays" in files and "summary" in files
    missing = [what for what, path in files.items() if not pathlib.Path(path).is_file()]
    assert not missing, missing


def test_a_figure_that_fails_leaves_the_summary_listing_what_was_drawn(tmp_path):
  def broken(res, path):
    raise RuntimeError("plotting failed")

  problem = dataclasses.replace(_problem(), figures={"broken": broken})
  with pytest.raises(RuntimeError, match="plotting failed"):
    _run(tmp_path, [problem])
  files = json.loads((tmp_path / "summary.json").read_text())["files"]
  assert "p/broken" not in files and "p/predicted_vs_true" in files and "p/arrays" in files
  assert all(pathlib.Path(path).is_file() for path in files.values())
