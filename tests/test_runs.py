"""ksurrogate.harness.runs: phases keyed by what they read, resumable chunked outcomes, damage repair, lock."""
import dataclasses
import json
import os
import subprocess
import sys

import flax.struct
import ml_collections
import numpy as np
import pytest

from ksurrogate.harness import runs
from ksurrogate.harness.runs import records


def _config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(width=3, depth=2)
  c.train = dict(steps=5, lr=0.1)
  return c


@runs.stored("test.model")
@flax.struct.dataclass
class Model:
  weights: dict
  note: str = flax.struct.field(pytree_node=False, default="")


CALLS = []


def make_model(c):
  CALLS.append("model")
  return Model(weights={"w": np.full((c.model.width,), float(c.train.steps))}, note=f"seed {c.seed}")


def scale(c, model):
  CALLS.append("scale")
  return {"v": model.weights["w"] * c.train.lr, "label": "scaled"}


def chunk_outcomes(c, S_chunk, chunk, model):
  CALLS.append(chunk)
  return {"F": S_chunk.astype(float) * model.weights["w"].sum() + chunk, "n": np.full(len(S_chunk), chunk)}


S = np.eye(5, dtype=bool)[np.arange(7) % 5]


def _run_all(workdir, c, log=None):
  with runs.Run(workdir, name="t", progress=False, log=log or (lambda m: None)) as run:
    model = run.phase("model", make_model, c)
    scaled = run.phase("scale", scale, c, model)
    F = run.outcomes("outcomes", chunk_outcomes, c, S, model, chunk_size=3)
    return model, scaled, F, run


def test_phases_are_reused_and_keyed_by_what_they_read(tmp_path):
  c = _config()
  CALLS.clear()
  model, scaled, F, run = _run_all(tmp_path, c)
  assert CALLS == ["model", "scale", 0, 1, 2]
  assert run.timings["outcomes"].status == "computed"
  record = json.loads((tmp_path / "model" / "record.json").read_text())
  assert record["reads"] == {"model.width": 3, "train.steps": 5, "seed": 0}      # only what it read
  assert set(json.loads((tmp_path / "scale" / "record.json").read_text())["reads"]) == {
      "model.width", "train.steps", "seed", "train.lr"}                            # plus its input's
  CALLS.clear()
  model2, scaled2, F2, run2 = _run_all(tmp_path, c)
  assert CALLS == [] and {t.status for t in run2.timings.values()} == {"reused"}
  assert isinstance(model2, Model) and model2.note == "seed 0" and scaled2["label"] == "scaled"
  np.testing.assert_array_equal(scaled2["v"], scaled["v"])
  np.testing.assert_array_equal(F2["F"], F["F"])
  assert F2["F"].shape == (7, 5) and list(F2["n"]) == [0, 0, 0, 1, 1, 1, 2]
  # A field no phase read changes nothing; one that a phase read is refused, naming it.
  c.model.depth = 7
  _run_all(tmp_path, c)
  c.train.lr = 0.5
  with pytest.raises(runs.DifferentConfigError, match=r"^workdir: phase 'scale' .* train\.lr=0\.1 when stored, 0\.5 now"):
    _run_all(tmp_path, c)


def test_phase_views_cannot_change_the_config(tmp_path):
  def bad(c):
    c.seed = 3
  with runs.Run(tmp_path, progress=False, log=lambda m: None) as run:
    with pytest.raises(AttributeError, match="phases read the config"):
      run.phase("bad", bad, _config())


def _damage_and_rerun(tmp_path, damage, capsys):
  c = _config()
  _, _, F, _ = _run_all(tmp_path, c)
  damage(tmp_path)
  CALLS.clear()
  messages = []
  _, scaled, F2, run = _run_all(tmp_path, c, log=messages.append)
  np.testing.assert_array_equal(F2["F"], F["F"])
  return CALLS, capsys.readouterr().err, run


def test_random_bytes_in_a_chunk_recompute_that_chunk(tmp_path, capsys):
  def damage(d):
    files = sorted(p for p in (d / "outcomes" / "chunks" / "1").rglob("*") if p.is_file() and p.stat().st_size > 100)
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2:len(data) // 2 + 16] = os.urandom(16)
    files[0].write_bytes(bytes(data))
  calls, err, run = _damage_and_rerun(tmp_path, damage, capsys)
  assert calls == [1]
  assert "WARNING: outcomes: chunk 1 is damaged" in err and len(err.strip().splitlines()) == 1
  assert run.timings["outcomes"].status == "repaired"


def test_truncated_record_recomputes_the_phase(tmp_path, capsys):
  def damage(d):
    rec = d / "outcomes" / "record.json"
    rec.write_text(rec.read_text()[:40])
  calls, err, _ = _damage_and_rerun(tmp_path, damage, capsys)
  assert calls == [0, 1, 2]
  assert "record.json is damaged (JSONDecodeError" in err and len(err.strip().splitlines()) == 1


def test_deleted_result_file_recomputes_the_phase(tmp_path, capsys):
  def damage(d):
    victim = next(p for p in (d / "model" / "result").rglob("*") if p.is_file())
    victim.unlink()
  calls, err, _ = _damage_and_rerun(tmp_path, damage, capsys)
  assert calls[0] == "model"   # and whatever was computed from it, unless its files came out byte-identical
  assert "WARNING: model: " in err and "is missing; recomputing it" in err


def test_second_run_on_the_same_workdir_is_refused(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", (
      "import sys, time; from ksurrogate.harness import runs\n"
      f"r = runs.Run({str(tmp_path)!r}).__enter__(); print('locked', flush=True); time.sleep(60)")],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(runs.WorkdirInUse, match=rf"^workdir: {tmp_path} is in use by another run \(pid {holder.pid}\)"):
      runs.Run(tmp_path).__enter__()
  finally:
    holder.kill()
    holder.wait()
  with runs.Run(tmp_path, log=lambda m: None):   # released when its holder dies
    pass


def test_bad_workdirs_are_refused_before_anything_runs(tmp_path):
  with pytest.raises(ValueError, match="^workdir: empty"):
    runs.check_workdir("")
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match="is a file, not a directory"):
    runs.check_workdir(tmp_path / "file")
  if os.geteuid() != 0:   # root writes anywhere
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(ValueError, match="is not writable"):
      runs.check_workdir(ro / "sub")


def test_stored_files_follow_the_umask(tmp_path):
  from ksurrogate.harness import store
  old = os.umask(0o022)
  try:
    store.save_json(tmp_path / "a.json", {"x": 1})
    store.save_arrays(tmp_path / "a.npz", x=np.ones(2))
  finally:
    os.umask(old)
  assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
  assert (tmp_path / "a.npz").stat().st_mode & 0o777 == 0o644


@runs.stored("test.holder")
@dataclasses.dataclass
class _Holder:
  x: int


@dataclasses.dataclass
class _Unregistered:
  x: int


def test_a_phase_must_return_a_storable_result(tmp_path):
  with runs.Run(tmp_path, progress=False, log=lambda m: None) as run:
    with pytest.raises(TypeError, match="^result: a stored phase must return a dataclass or a dict"):
      run.phase("p", lambda c: [1, 2], _config())
    assert run.phase("q", lambda c: _Holder(c.seed), _config()) == _Holder(0)
    with pytest.raises(TypeError, match="^result: _Unregistered is not registered for storage; decorate it with "
                                        "@runs.stored"):
      run.phase("r", lambda c: _Unregistered(c.seed), _config())
  assert json.loads((tmp_path / "q" / "record.json").read_text())["type"] == "test.holder"
  with pytest.raises(ValueError, match="^name: 'test.holder' is already the stored name of"):
    runs.stored("test.holder")(_Unregistered)


def test_records_are_keyed_by_stable_names_not_python_paths(tmp_path, capsys):
  """A record names its type by the stable name (a class moved or renamed in the code keeps its
  records); a name no registered class has now, a Python path among them, is recomputed."""
  c = _config()
  _run_all(tmp_path, c)
  path = tmp_path / "model" / "record.json"
  assert json.loads(path.read_text())["type"] == "test.model"
  for gone in (f"{Model.__module__}:{Model.__qualname__}", "some.module.Gone"):
    record = json.loads(path.read_text())
    record["type"] = gone
    path.write_text(json.dumps(records.seal(record)))
    CALLS.clear()
    model, *_ = _run_all(tmp_path, c)
    assert CALLS[:1] == ["model"] and isinstance(model, Model)
    assert (f"WARNING: model: it holds a result stored as {gone!r}, a type no registered result has now; "
            "recomputing it") in capsys.readouterr().err
    assert json.loads(path.read_text())["type"] == "test.model"


def test_a_recomputed_input_recomputes_what_was_computed_from_it(tmp_path):
  c = _config()
  _run_all(tmp_path, c)
  import shutil
  shutil.rmtree(tmp_path / "model")          # e.g. deleted by hand, or repaired
  CALLS.clear()
  messages = []
  _run_all(tmp_path, c, log=messages.append)
  assert CALLS[:2] == ["model", "scale"] and sorted(CALLS[2:]) == [0, 1, 2]
  assert any("scale: its input model was recomputed since it was stored" in m for m in messages)


def test_a_workdir_of_another_experiment_is_refused(tmp_path):
  with runs.Run(tmp_path, name="modular", log=lambda m: None):
    pass
  with pytest.raises(runs.DifferentConfigError, match=r"^workdir: .* holds a 'modular' run, not 'reference'"):
    runs.Run(tmp_path, name="reference", log=lambda m: None).__enter__()
  with runs.Run(tmp_path, name="modular", log=lambda m: None):   # the lock was released by the refusal
    pass
