"""Stored results are bound to their identity: a phase or chunk copied from another phase, seed
or workdir is damage (recomputed with one warning line), even where its checksums hold."""
import functools
import json
import shutil

import ml_collections
import numpy as np

from ksurrogate.harness import runs
from ksurrogate.harness.runs import records

CALLS = []


def _config(lr=0.1):
  return ml_collections.ConfigDict({"seed": 0, "train": {"lr": lr, "steps": 3}})


def base(c):
  CALLS.append("base")
  return {"w": np.arange(5.0) * c.train.steps}


def seeded(c, seed):
  CALLS.append(("seeded", seed))
  return {"v": np.full(3, c.seed + 10.0 * seed)}


def truth_chunk(c, S_chunk, i, b, train_seed=0):
  CALLS.append((train_seed, i))
  return {"F": S_chunk.astype(float) * b["w"] * c.train.lr + 100.0 * train_seed + i}


S = np.eye(5, dtype=bool)[np.arange(7) % 5]


def _run(workdir, c=None):
  c = c or _config()
  with runs.Run(workdir, name="t", progress=False, log=lambda m: None, config=c) as run:
    b = run.phase("base", base, c)
    per_seed = [run.phase(f"seeded{r}", seeded, c, r) for r in range(2)]
    truths = [run.outcomes(f"truth_seed{r}", functools.partial(truth_chunk, train_seed=r), c, S, b, chunk_size=3)
              for r in range(2)]
  return {"per_seed": per_seed, "truths": truths, "run": run}


def _record(d, phase):
  return json.loads((d / phase / "record.json").read_text())


def _rerun(d, capsys, c=None):
  capsys.readouterr()
  CALLS.clear()
  out = _run(d, c)
  return out, capsys.readouterr().err.strip().splitlines()


def test_records_and_chunks_carry_their_identity(tmp_path):
  _run(tmp_path)
  record = _record(tmp_path, "truth_seed1")
  assert record["phase"] == "truth_seed1" and record["args"] == {"train_seed": 1}
  assert _record(tmp_path, "seeded1")["args"] == {"input0": 1}
  meta = json.loads((tmp_path / "truth_seed1" / "chunks" / "2" / "_CHECKPOINT_METADATA").read_text())["custom_metadata"]
  assert {k: meta[k] for k in ("phase", "chunk", "chunk_size", "args")} == {
      "phase": "truth_seed1", "chunk": 2, "chunk_size": 3, "args": {"train_seed": 1}}
  assert meta["reads"] == {"train.steps": 3, "train.lr": 0.1} and meta["subsets"] == record["subsets"]


def test_a_chunked_phase_copied_onto_another_seed_is_recomputed(tmp_path, capsys):
  """The fault: truth_seed0/ copied onto truth_seed1/ was reused silently (ceiling 1.000)."""
  clean = _run(tmp_path)
  shutil.rmtree(tmp_path / "truth_seed1")
  shutil.copytree(tmp_path / "truth_seed0", tmp_path / "truth_seed1")
  out, err = _rerun(tmp_path, capsys)
  assert sorted(c for c in CALLS if c[0] == 1) == [(1, 0), (1, 1), (1, 2)] and (0, 0) not in CALLS
  assert len(err) == 1 and err[0].endswith(
      "truth_seed1/record.json is damaged (it is the record of phase 'truth_seed0', not 'truth_seed1': copied from "
      "there); recomputing truth_seed1")
  np.testing.assert_array_equal(out["truths"][1]["F"], clean["truths"][1]["F"])
  assert not np.array_equal(out["truths"][0]["F"], out["truths"][1]["F"])


def test_a_record_renamed_to_the_other_seed_is_still_refused_by_its_arguments(tmp_path, capsys):
  """Even a record whose phase name was changed (and resealed) by hand: its arguments differ."""
  clean = _run(tmp_path)
  for src, dst in (("seeded0", "seeded1"), ("truth_seed0", "truth_seed1")):
    shutil.rmtree(tmp_path / dst)
    shutil.copytree(tmp_path / src, tmp_path / dst)
    record = _record(tmp_path, dst)
    record["phase"] = dst
    (tmp_path / dst / "record.json").write_text(json.dumps(records.seal(record)))
  out, err = _rerun(tmp_path, capsys)
  assert ("seeded", 1) in CALLS and ("seeded", 0) not in CALLS
  assert len(err) == 2
  assert err[0].endswith("seeded1/record.json is damaged (it was computed for input0=0, not input0=1); "
                         "recomputing seeded1")
  assert err[1].endswith("truth_seed1/record.json is damaged (it was computed for train_seed=0, not train_seed=1); "
                         "recomputing truth_seed1")
  assert out["per_seed"][1]["v"][0] == 10.0
  np.testing.assert_array_equal(out["truths"][1]["F"], clean["truths"][1]["F"])


def _swap_chunks(d, phase, a, b):
  """Swaps two chunk folders and their entries in the record (resealed: the digests all hold)."""
  chunks = d / phase / "chunks"
  (chunks / str(a)).rename(chunks / "tmp")
  (chunks / str(b)).rename(chunks / str(a))
  (chunks / "tmp").rename(chunks / str(b))
  record = _record(d, phase)
  record["chunks"][str(a)], record["chunks"][str(b)] = record["chunks"][str(b)], record["chunks"][str(a)]
  (d / phase / "record.json").write_text(json.dumps(records.seal(record)))


def test_swapped_chunks_are_recomputed(tmp_path, capsys):
  clean = _run(tmp_path)
  _swap_chunks(tmp_path, "truth_seed0", 0, 1)
  out, err = _rerun(tmp_path, capsys)
  assert sorted(CALLS) == [(0, 0), (0, 1)]
  assert len(err) == 2 and all("truth_seed0: chunk" in e and "copied or swapped here); recomputing it" in e for e in err)
  np.testing.assert_array_equal(out["truths"][0]["F"], clean["truths"][0]["F"])
  assert out["run"].timings["truth_seed0"].status == "repaired"


def test_a_chunk_of_another_config_slipped_into_a_record_is_recomputed(tmp_path, capsys):
  """A chunk from a workdir run with another learning rate, listed (with its digests) in this
  record: its own settings give it away."""
  clean = _run(tmp_path / "a")
  _run(tmp_path / "b", _config(lr=0.5))
  src, dst = tmp_path / "b" / "truth_seed0", tmp_path / "a" / "truth_seed0"
  shutil.rmtree(dst / "chunks" / "2")
  shutil.copytree(src / "chunks" / "2", dst / "chunks" / "2")
  record = _record(tmp_path / "a", "truth_seed0")
  record["chunks"]["2"] = _record(tmp_path / "b", "truth_seed0")["chunks"]["2"]
  (dst / "record.json").write_text(json.dumps(records.seal(record)))
  out, err = _rerun(tmp_path / "a", capsys)
  assert CALLS == [(0, 2)]
  assert len(err) == 1 and "truth_seed0: chunk 2 is damaged (" in err[0] and (
      "it was computed with train.lr=0.5 when stored, 0.1 now); recomputing it") in err[0]
  np.testing.assert_array_equal(out["truths"][0]["F"], clean["truths"][0]["F"])


def test_a_clean_rerun_reuses_everything(tmp_path, capsys):
  _run(tmp_path)
  out, err = _rerun(tmp_path, capsys)
  assert CALLS == [] and err == [] and {t.status for t in out["run"].timings.values()} == {"reused"}
