"""The fault trials, end to end through the driver on a tiny synthetic protocol: a damaged store
is recomputed with one warning line and the rerun's summary equals a clean run's (as
benchmarks/same_summary.py compares them); a run killed as it writes never leaves a summary that
names a missing file."""
import json
import pathlib
import runpy
import shutil
import signal
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from ksurrogate import families
from ksurrogate.harness import driver, runs

ROOT = pathlib.Path(__file__).resolve().parents[1]
compare = runpy.run_path(str(ROOT / "benchmarks" / "same_summary.py"))["compare"]

K, T, M = 5, 3, 24
CALLS = []


def _config():
  return ml_collections.ConfigDict({"normalized_error_threshold": 1e-3, "seed": 0, "noise": 0.3,
                                    "eval": {"resplits": 2, "bootstrap": 50}})


def _design(c):
  CALLS.append("design")
  r = np.random.default_rng(c.seed)
  return {"S": r.random((M, K)) < 0.5, "beta": r.normal(size=(K, T))}


def _truth_chunk(c, S_chunk, i, design, train_seed):
  """Outcomes of one training seed: the seeds differ by their noise (the ceiling measures it)."""
  CALLS.append(("truth", train_seed, i))
  noise = np.random.default_rng([c.seed, train_seed, i]).normal(size=(len(S_chunk), T))
  return {"F": S_chunk @ design["beta"] + c.noise * noise}


def _estimate(c, design, truth):
  CALLS.append("estimate")
  guess = design["S"] @ (0.9 * design["beta"])
  error = np.median(np.abs(guess - truth["F"]) / np.abs(truth["F"]).clip(1e-3))
  return {"F_hat": guess, "median_relative_error": float(error)}


def _problems(c, run, fam):
  design = run.phase("design", _design, c)
  truths = [run.outcomes(f"truth_seed{r}", _truth_chunk, c, design["S"], design, r, chunk_size=8) for r in range(2)]
  estimate = run.phase("estimate", _estimate, c, design, truths[0])
  ceiling = float(np.corrcoef(truths[0]["F"].ravel(), truths[1]["F"].ravel())[0, 1])
  yield driver.Problem(name="p", S=design["S"], F=truths[0]["F"], splits=[(np.arange(M - 8), np.arange(M - 8, M))],
                       truths={"loo": driver.Truth(-design["beta"])}, sources={"estimated": (design["S"], estimate["F_hat"])},
                       info={"ceiling": ceiling, "median_relative_error": estimate["median_relative_error"]})


def _families(config=None, name=None):
  return [f for f in families.standard(cv=2) if f.name == "linear"]


def _run(workdir):
  protocol = driver.Protocol("synthetic", problems=_problems, families=_families)
  with runs.Run(workdir, name="synthetic", progress=False, log=lambda m: None, config=_config()) as run:
    return driver.run(protocol, _config(), run)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("clean")
  _run(workdir)
  return workdir


def _rerun(clean, tmp_path, capsys, damage):
  workdir = tmp_path / "w"
  shutil.copytree(clean, workdir)
  damage(workdir)
  capsys.readouterr()
  CALLS.clear()
  _run(workdir)
  warnings = capsys.readouterr().err.strip().splitlines()
  return workdir, warnings


def _record(workdir, phase):
  return json.loads((workdir / phase / "record.json").read_text())


def test_a_truth_seed_copied_onto_the_other_is_recomputed_and_the_summary_is_the_clean_ones(clean, tmp_path, capsys):
  """The fault: truth_seed0/ copied onto truth_seed1/ was reused and the ceiling read 1.000."""
  def copy(w):
    shutil.rmtree(w / "truth_seed1")
    shutil.copytree(w / "truth_seed0", w / "truth_seed1")

  workdir, warnings = _rerun(clean, tmp_path, capsys, copy)
  assert len(warnings) == 1 and warnings[0].endswith(
      "truth_seed1/record.json is damaged (it is the record of phase 'truth_seed0', not 'truth_seed1': copied from "
      "there); recomputing truth_seed1")
  assert sorted(c for c in CALLS if c != "design") == [("truth", 1, 0), ("truth", 1, 1), ("truth", 1, 2)]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["ceiling"]["p"] < 0.99
  assert compare(clean, workdir) == []


def test_one_chunk_copied_onto_another_seed_is_recomputed_and_the_summary_is_the_clean_ones(clean, tmp_path, capsys):
  """A chunk of truth_seed0 put in truth_seed1's place, its digests listed in the record (resealed)."""
  from ksurrogate.harness.runs import records

  def copy_chunk(w):
    shutil.rmtree(w / "truth_seed1" / "chunks" / "1")
    shutil.copytree(w / "truth_seed0" / "chunks" / "1", w / "truth_seed1" / "chunks" / "1")
    record = _record(w, "truth_seed1")
    record["chunks"]["1"] = _record(w, "truth_seed0")["chunks"]["1"]
    (w / "truth_seed1" / "record.json").write_text(json.dumps(records.seal(record)))

  workdir, warnings = _rerun(clean, tmp_path, capsys, copy_chunk)
  assert len(warnings) == 1 and "truth_seed1: chunk 1 is damaged (" in warnings[0] and warnings[0].endswith(
      "recomputing it")
  assert [c for c in CALLS if c != "design"] == [("truth", 1, 1)]
  assert compare(clean, workdir) == []


def test_a_record_edited_with_its_checksum_removed_is_recomputed_and_the_summary_is_the_clean_ones(clean, tmp_path,
                                                                                                    capsys):
  """The fault: median_relative_error edited to 0.999 and the checksum key deleted was accepted as
  a record that predates checksums, and the edit flowed into summary.json."""
  def edit(w):
    record = _record(w, "estimate")
    record["plain"]["median_relative_error"] = 0.999
    del record["checksum"]
    (w / "estimate" / "record.json").write_text(json.dumps(record))

  workdir, warnings = _rerun(clean, tmp_path, capsys, edit)
  assert len(warnings) == 1 and warnings[0].endswith(
      "estimate/record.json is damaged (it has no checksum: edited by hand or written by other code); "
      "recomputing estimate")
  assert "estimate" in CALLS and not [c for c in CALLS if isinstance(c, tuple)]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["median_relative_error"]["p"] != 0.999
  assert compare(clean, workdir) == []


_KILLED = """
import os, pathlib, signal, sys
sys.path.insert(0, {tests!r})
import test_fault_summary as t
from ksurrogate.harness import store

save_json = store.save_json

def save_json_then(path, obj):
  if pathlib.Path(path).name == "summary.json":
    os.kill(os.getpid(), signal.SIGKILL)        # the arrays are written; the summary is not
  save_json(path, obj)

store.save_json = save_json_then
t._run(pathlib.Path({workdir!r}))
"""


@pytest.mark.parametrize("earlier_summary", [False, True])
def test_a_run_killed_between_the_arrays_and_the_summary_leaves_no_summary_naming_a_missing_file(
    clean, tmp_path, earlier_summary):
  """Killed after arrays.npz is written and before summary.json is: no summary, or the earlier
  run's, whose every file still exists."""
  workdir = tmp_path / "w"
  if earlier_summary:
    shutil.copytree(clean, workdir)
    summary = workdir / "summary.json"
    summary.write_text(summary.read_text().replace(str(clean), str(workdir)))
    (workdir / "p" / "arrays.npz").unlink()   # so the rerun must write it again
  done = subprocess.run([sys.executable, "-c", _KILLED.format(tests=str(ROOT / "tests"), workdir=str(workdir))],
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
  assert (workdir / "p" / "arrays.npz").is_file()
  summary = workdir / "summary.json"
  assert summary.exists() == earlier_summary
  if earlier_summary:
    files = json.loads(summary.read_text())["files"]
    assert "p/arrays" in files and all(pathlib.Path(path).is_file() for path in files.values())
