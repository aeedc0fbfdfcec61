"""ksurrogate.harness.runs, what can go wrong on disk and in the numbers: edited and malformed records,
records of earlier versions, full disks and permission errors, changed settings refused before
any compute, non-finite outcomes, and compile time measured apart from steady-state time."""
import errno
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ksurrogate.harness import runs, store
from ksurrogate.harness.runs import checks, records

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(width=3)
  c.train = dict(steps=5, lr=0.1)
  return c


CALLS = []


def make_model(c):
  CALLS.append("model")
  return {"w": np.full((c.model.width,), float(c.train.steps)), "note": f"seed {c.seed}"}


def scale(c, model):
  CALLS.append("scale")
  return {"v": model["w"] * c.train.lr, "label": "scaled"}


def chunk_outcomes(c, S_chunk, chunk, model):
  CALLS.append(chunk)
  return {"F": S_chunk.astype(float) * model["w"].sum() + chunk * c.train.lr}


S = np.eye(5, dtype=bool)[np.arange(7) % 5]   # 3 chunks of 3 rows (the last one short)


def _run_all(workdir, c=None, *, config=None, chunk_fn=chunk_outcomes, **outcome_kw):
  c = c or _config()
  messages = []
  with runs.Run(workdir, name="t", progress=False, log=messages.append, config=config) as run:
    model = run.phase("model", make_model, c)
    scaled = run.phase("scale", scale, c, model)
    F = run.outcomes("outcomes", chunk_fn, c, S, model, chunk_size=3, **outcome_kw)
  return {"model": model, "scaled": scaled, "F": F, "run": run, "log": messages}


def _record(d, phase):
  return json.loads((d / phase / "record.json").read_text())


def _write_record(d, phase, record):
  (d / phase / "record.json").write_text(json.dumps(record))


# ----------------------------------------------------------------------------------------------
# A. Records: checksums, malformed records, records of earlier versions.

def test_records_carry_a_checksum_of_their_content(tmp_path):
  _run_all(tmp_path)
  for phase in ("model", "scale", "outcomes"):
    record = _record(tmp_path, phase)
    assert record["kind"] == ("outcomes" if phase == "outcomes" else "phase")
    assert records.problem(record) is None
    record["seconds"] += 1.0
    assert "does not match its checksum" in records.problem(record)


def test_a_hand_edited_record_value_is_damage_and_recomputed(tmp_path, capsys):
  _run_all(tmp_path)
  record = _record(tmp_path, "scale")
  record["plain"]["label"] = "edited by hand"
  _write_record(tmp_path, "scale", record)
  capsys.readouterr()
  CALLS.clear()
  out = _run_all(tmp_path)
  assert out["scaled"]["label"] == "scaled"              # the edited value does not flow on
  assert CALLS == ["scale"]                              # only the edited phase (its files are byte-identical)
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "scale/record.json is damaged (it does not match its checksum" in err[0]
  assert records.problem(_record(tmp_path, "scale")) is None


def _drop(field):
  def edit(r):
    del r[field]
  return edit


def _set(field, value):
  def edit(r):
    r[field] = value
  return edit


def _chunk_entry(field, value):
  def edit(r):
    if value is None:
      del r["chunks"]["1"][field]
    else:
      r["chunks"]["1"][field] = value
  return edit


MALFORMED = {
    "phase record with reads only": ("model", lambda r: (r.clear(), r.update({"reads": {}}))),
    "phase record without its type": ("model", _drop("type")),
    "phase record whose type is a number": ("scale", _set("type", 5)),
    "phase record whose files are a list": ("scale", _set("files", ["a"])),
    "seconds as text": ("model", _set("seconds", "fast")),
    "chunk record without chunk_size": ("outcomes", _drop("chunk_size")),
    "chunk entry without files": ("outcomes", _chunk_entry("files", None)),
    "chunk entry with text seconds": ("outcomes", _chunk_entry("seconds", "1 s")),
    "chunk index out of range": ("outcomes", lambda r: r["chunks"].update({"9": r["chunks"]["0"]})),
    "phase record where a chunk record belongs": ("outcomes", lambda r: r.update(kind="phase")),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_record_is_damage_not_a_traceback(tmp_path, capsys, case):
  phase, edit = MALFORMED[case]
  first = _run_all(tmp_path)
  record = _record(tmp_path, phase)
  edit(record)
  _write_record(tmp_path, phase, records.seal(record))   # sealed again: only the field checks can catch it
  capsys.readouterr()
  CALLS.clear()
  again = _run_all(tmp_path)
  np.testing.assert_array_equal(again["F"]["F"], first["F"]["F"])
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and f"{phase}/record.json is damaged (" in err[0] and err[0].endswith(f"recomputing {phase}")
  assert CALLS[0] == (0 if phase == "outcomes" else phase)


def test_a_record_that_is_not_an_object_is_damage(tmp_path, capsys):
  _run_all(tmp_path)
  (tmp_path / "model" / "record.json").write_text("[1, 2]")
  capsys.readouterr()
  _run_all(tmp_path)
  assert "model/record.json is damaged (it holds a list, not a phase record)" in capsys.readouterr().err


def test_a_record_without_a_checksum_is_damage_not_accepted(tmp_path, capsys):
  """A value edited by hand and the checksum key removed: recomputed, the edit never flows on."""
  first = _run_all(tmp_path)
  record = _record(tmp_path, "scale")
  record["plain"]["label"] = "edited by hand"
  del record["checksum"]
  _write_record(tmp_path, "scale", record)
  capsys.readouterr()
  CALLS.clear()
  again = _run_all(tmp_path)
  assert again["scaled"]["label"] == "scaled" and CALLS == ["scale"]
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].endswith("scale/record.json is damaged (it has no checksum: edited by hand or "
                                           "written by other code); recomputing scale")
  np.testing.assert_array_equal(again["F"]["F"], first["F"]["F"])
  assert records.problem(_record(tmp_path, "scale")) is None


def test_a_workdir_of_an_earlier_record_format_is_refused_on_entry(tmp_path):
  """Records as the version before identities wrote them (sealed, no format, args or chunk
  identities): refused before anything runs, naming the field, never reinterpreted."""
  _run_all(tmp_path)
  for phase in ("model", "scale", "outcomes"):
    record = _record(tmp_path, phase)
    del record["format"], record["args"]
    record["checksum"] = records.checksum(record)
    _write_record(tmp_path, phase, record)
  CALLS.clear()
  with pytest.raises(runs.DifferentConfigError, match=r"^workdir: phase '\w+' in .* was stored with record format=1, "
                                                      r"2 now \(an earlier version's run storage\); use a new --workdir$"):
    _run_all(tmp_path, config=_config())
  assert CALLS == []


def test_stored_chunks_of_code_returning_other_fields_are_recomputed(tmp_path, capsys):
  _run_all(tmp_path)
  record = _record(tmp_path, "outcomes")
  del record["chunks"]["2"]
  _write_record(tmp_path, "outcomes", records.seal(record))

  def more_fields(c, S_chunk, chunk, model):
    out = chunk_outcomes(c, S_chunk, chunk, model)
    return {**out, "G": out["F"] * 2}

  CALLS.clear()
  out = _run_all(tmp_path, chunk_fn=more_fields)
  assert CALLS == [2, 0, 1] and out["F"]["G"].shape == (7, 5)
  assert "outcomes: chunks 0, 1 were stored by code returning other fields; recomputing them" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# B. Full disks and permission errors: one line naming the path, stored phases intact.

def test_storage_errors_are_one_line_naming_the_path_and_the_fix(tmp_path):
  path = tmp_path / "a" / "record.json"
  full = str(store.storage_error(OSError(errno.ENOSPC, "No space left on device", str(path))))
  assert full.startswith(f"workdir: no space left on device writing {path} (") and " free of " in full
  assert "free space there or use another --workdir" in full and "\n" not in full
  denied = str(store.storage_error(PermissionError(errno.EACCES, "Permission denied", str(path))))
  assert denied.startswith(f"workdir: permission denied writing {path}; make {tmp_path} writable") and "chmod u+w" in denied
  assert "read-only filesystem" in str(store.storage_error(OSError(errno.EROFS, "Read-only file system", str(path))))
  # orbax/tensorstore report the OS error inside a ValueError's text
  ts = ValueError('RESOURCE_EXHAUSTED: Error writing "a/0" in OCDBT database at local file "/w/p/": Failed writing: '
                  '"/w/p/result/d/f1": Failed to write 177784 bytes to file 14: No space left on device [os_error_code=\'28\']')
  assert str(store.storage_error(ts)).startswith("workdir: no space left on device writing /w/p/result/d/f1 (")
  assert store.storage_error(ValueError("shapes differ")) is None
  assert store.storage_error(OSError(errno.ENOENT, "missing")) is None


def test_a_full_disk_while_storing_a_chunk_is_one_line_and_resumes(tmp_path, monkeypatch):
  """A simulated ENOSPC when the record that lists chunk 1 is written."""
  real = os.replace

  def full_at_chunk_1(src, dst):
    if str(dst).endswith("outcomes/record.json") and len(json.loads(pathlib.Path(src).read_text())["chunks"]) == 2:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real(src, dst)

  monkeypatch.setattr(store.os, "replace", full_at_chunk_1)
  CALLS.clear()
  with pytest.raises(runs.StorageError) as e:
    _run_all(tmp_path)
  assert str(e.value).startswith(f"workdir: no space left on device writing {tmp_path / 'outcomes' / 'record.json'} (")
  assert "\n" not in str(e.value)
  assert CALLS == ["model", "scale", 0, 1]
  assert list(_record(tmp_path, "outcomes")["chunks"]) == ["0"]          # what was stored stays stored
  assert not list((tmp_path / "outcomes").glob(".record.json.*"))       # no temporary file left
  monkeypatch.setattr(store.os, "replace", real)
  CALLS.clear()
  out = _run_all(tmp_path)
  assert CALLS == [1, 2]                                                # resumes where it stopped
  assert out["run"].timings["outcomes"].status == "resumed"


def test_a_failed_write_anywhere_in_the_run_ends_in_one_storage_error(tmp_path):
  """Writes outside runs.py (the driver's summary and plots) fail inside the Run's block too."""
  with pytest.raises(runs.StorageError, match=r"^workdir: no space left on device writing .*plot\.png \("):
    with runs.Run(tmp_path, progress=False, log=lambda m: None):
      raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "plot.png"))
  with runs.Run(tmp_path, log=lambda m: None):   # the lock was released
    pass
  # an input outside the workdir that cannot be read is not a failed write: left as it is
  with pytest.raises(PermissionError):
    with runs.Run(tmp_path / "w", progress=False, log=lambda m: None):
      raise PermissionError(errno.EACCES, "Permission denied", "/data/elsewhere.npz")


def _mount_tmpfs(where: pathlib.Path, size: str) -> bool:
  where.mkdir(parents=True, exist_ok=True)
  try:
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0
  except OSError:
    return False


def big_result(c, model):
  return {"x": np.random.default_rng(0).standard_normal((c.model.width, 100_000)).astype(np.float32)}


def test_a_real_full_disk_keeps_stored_phases_and_resumes(tmp_path, caplog):
  """A 512 KiB tmpfs: the first phases fit, a 1.2 MB result does not (needs mount permission)."""
  disk = tmp_path / "disk"
  if not _mount_tmpfs(disk, "512k"):
    pytest.skip("mounting a tmpfs is not permitted here")
  try:
    c = _config()
    workdir = disk / "w"
    CALLS.clear()
    with pytest.raises(runs.StorageError) as e:
      with runs.Run(workdir, name="t", progress=False, log=lambda m: None) as run:
        model = run.phase("model", make_model, c)
        run.outcomes("outcomes", chunk_outcomes, c, S, model, chunk_size=3)
        run.phase("big", big_result, c, model)
    message = str(e.value)
    assert message.startswith(f"workdir: no space left on device writing {workdir}/big (") and "\n" not in message
    assert f"free of 512.0 KiB on {disk})" in message
    assert not [r.getMessage()[:80] for r in caplog.records if r.levelno >= logging.ERROR]   # orbax's held back
    assert not (workdir / "big").exists()                              # the half-written phase is removed
    subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
    CALLS.clear()
    with runs.Run(workdir, name="t", progress=False, log=lambda m: None) as run:
      model = run.phase("model", make_model, c)
      F = run.outcomes("outcomes", chunk_outcomes, c, S, model, chunk_size=3)
      big = run.phase("big", big_result, c, model)
    assert CALLS == [] and F["F"].shape == (7, 5) and big["x"].shape == (3, 100_000)
    assert run.timings["model"].status == "reused" and run.timings["big"].status == "computed"
  finally:
    subprocess.run(["umount", str(disk)], check=False)


_FULL_DISK_APP = """
import sys
import ml_collections
import numpy as np
from absl import app, logging
from ksurrogate.harness import runs


def chunk(c, S_chunk, i):
  return {{"F": np.random.default_rng(i).standard_normal((len(S_chunk), 40_000)).astype(np.float32)}}


def main(argv):
  logging.set_verbosity(logging.WARNING)   # as the command line sets it
  c = ml_collections.ConfigDict({{"seed": 0}})
  try:
    with runs.Run({workdir!r}, name="t", progress=False) as run:
      run.phase("small", lambda c: {{"x": np.arange(10.0) + c.seed}}, c)
      run.outcomes("big", chunk, c, np.eye(4, dtype=bool)[np.arange(8) % 4], chunk_size=2)
  except runs.StorageError as e:
    print(f"error: {{e}}", file=sys.stderr)
    sys.exit(2)


app.run(main)
"""


def test_a_real_full_disk_on_the_command_line_prints_one_line(tmp_path):
  """A 2 MiB tmpfs with ~100 KiB left: a chunk's save fails inside orbax; stderr holds the one
  StorageError line and nothing else (no orbax or asyncio tracebacks from its threads)."""
  disk = tmp_path / "disk"
  if not _mount_tmpfs(disk, "2m"):
    pytest.skip("mounting a tmpfs is not permitted here")
  try:
    (disk / "fill").write_bytes(b"\0" * (2048 - 100) * 1024)
    done = subprocess.run([sys.executable, "-c", _FULL_DISK_APP.format(workdir=str(disk / "w"))], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(f"error: workdir: no space left on device writing {disk / 'w' / 'big'}")
  finally:
    subprocess.run(["umount", str(disk)], check=False)


def _thread_that_fails():
  import threading

  def fail():
    raise RuntimeError("Event loop is closed")

  t = threading.Thread(target=fail, name="orbax-save")
  t.start()
  t.join()


def test_what_orbax_threads_report_during_a_failed_write_is_dropped(tmp_path, caplog, monkeypatch):
  """What orbax's save threads say as a save fails for want of space (an ERROR record, asyncio's
  complaint about a closed loop, a thread's traceback) is held back: only the one line remains."""
  import threading
  from ksurrogate.harness.runs import storage
  died = []
  monkeypatch.setattr(threading, "excepthook", died.append)
  with pytest.raises(runs.StorageError):
    with storage.writing(tmp_path / "p"):
      logging.getLogger("asyncio").error("Task exception was never retrieved")
      _thread_that_fails()
      raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "p" / "x"))
  assert died == [] and not [r for r in caplog.records if r.name == "asyncio"]
  assert threading.excepthook == died.append                  # the hook is put back
  with pytest.raises(KeyError):   # any other failure: they come through as they came
    with storage.writing(tmp_path / "p"):
      logging.getLogger("asyncio").error("Task exception was never retrieved")
      _thread_that_fails()
      raise KeyError("x")
  assert [str(a.exc_value) for a in died] == ["Event loop is closed"]
  assert [r for r in caplog.records if r.name == "asyncio"]


_UNPRIVILEGED = """
import sys
from ksurrogate.harness import runs
sys.path.insert(0, {tests!r})
import test_run_storage as t
try:
  t._run_all({workdir!r})
except runs.StorageError as e:
  print("STORAGE", e)
"""


def _run_unprivileged(workdir: pathlib.Path) -> subprocess.CompletedProcess:
  """Runs _run_all on `workdir` as an unprivileged user (root ignores permission bits)."""
  cmd = [sys.executable, "-c", _UNPRIVILEGED.format(tests=str(REPO / "tests"), workdir=str(workdir))]
  if os.geteuid() == 0:
    if shutil.which("setpriv") is None:
      pytest.skip("running as root without setpriv: permission bits cannot be tested")
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
  # The installed packages may live where only root can read (a root-owned pyenv, a user site):
  # hand the child this interpreter's path, and skip when the unprivileged user still cannot import.
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, sys.path)]),
         "HOME": str(workdir.parent), "JAX_PLATFORMS": "cpu"}
  if os.geteuid() == 0:
    probe = subprocess.run([*cmd[:4], sys.executable, "-c", "import jax, ksurrogate"], capture_output=True,
                           text=True, env=env, cwd=str(workdir.parent), timeout=120)
    if probe.returncode != 0:
      pytest.skip("the unprivileged user cannot import jax here (installed packages are private to root): "
                  + probe.stderr.strip().splitlines()[-1])
  return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(workdir.parent), timeout=120)


@pytest.fixture
def shared_dir():
  """A directory an unprivileged user can reach (pytest's tmp_path is private to root)."""
  path = pathlib.Path(tempfile.mkdtemp(prefix="ksurrogate-perm-"))
  path.chmod(0o777)
  yield path
  shutil.rmtree(path, ignore_errors=True)


def _give_away(path: pathlib.Path):
  if os.geteuid() == 0:
    for p in [path, *path.rglob("*")]:
      os.chown(p, 65534, 65534)


@pytest.mark.parametrize("read_only", ["run.log", "outcomes/chunks", "scale"])
def test_read_only_files_in_a_writable_workdir_are_one_line(shared_dir, read_only):
  workdir = shared_dir / "w"
  _run_all(workdir)
  record = _record(workdir, "outcomes")
  del record["chunks"]["2"]                   # so the rerun must store a chunk
  _write_record(workdir, "outcomes", records.seal(record))
  (workdir / "scale" / "record.json").unlink()   # so the rerun must replace the phase
  _give_away(workdir)
  victim = workdir / read_only
  victim.chmod(0o444 if victim.is_file() else 0o555)
  done = _run_unprivileged(workdir)
  assert "Traceback" not in done.stderr, done.stderr[-2000:]
  line = done.stdout.strip().splitlines()[-1]
  assert line.startswith(f"STORAGE workdir: permission denied writing {victim}") and f"chmod u+w {victim})" in line, line
  victim.chmod(0o755 if victim.is_dir() else 0o644)
  done = _run_unprivileged(workdir)             # fixed: resumes
  assert done.returncode == 0 and "STORAGE" not in done.stdout, done.stdout + done.stderr[-2000:]
  assert sorted(_record(workdir, "outcomes")["chunks"]) == ["0", "1", "2"] and (workdir / "scale" / "record.json").exists()


def test_a_read_only_workdir_is_refused_before_anything_runs(shared_dir):
  workdir = shared_dir / "w"
  _run_all(workdir)
  workdir.chmod(0o555)
  done = _run_unprivileged(workdir)
  assert "Traceback" in done.stderr and done.stderr.strip().splitlines()[-1] == (
      f"ValueError: workdir: {workdir} is not writable; make it writable by this user or use another --workdir")


# ----------------------------------------------------------------------------------------------
# C. A changed setting is refused before anything is computed.

def test_a_changed_setting_is_refused_on_entry_before_any_phase(tmp_path):
  _run_all(tmp_path)
  c = _config()
  c.train.lr = 0.5
  CALLS.clear()
  with pytest.raises(runs.DifferentConfigError,
                     match=r"^workdir: phase 'scale' in .* train\.lr=0\.1 when stored, 0\.5 now "
                           r"\(and 1 more stored phase\(s\) differ\); use a new --workdir"):
    _run_all(tmp_path, c, config=c)
  assert CALLS == []
  with runs.Run(tmp_path, name="t", log=lambda m: None, config=_config()):   # same settings: accepted, lock released
    pass
  c2 = _config()
  c2.model.depth = 4                                                            # a field no phase read
  _run_all(tmp_path, c2, config=c2)


def test_the_phase_named_is_the_first_computed_also_in_a_copied_workdir(tmp_path):
  _run_all(tmp_path / "w")
  later = (tmp_path / "w" / "outcomes" / "record.json").stat().st_mtime + 60
  os.utime(tmp_path / "w" / "model" / "record.json", (later, later))   # file times say nothing (a copy without them)
  c = _config()
  c.seed = 3                                             # read by every phase
  with pytest.raises(runs.DifferentConfigError, match=r"^workdir: phase 'model' .* \(and 2 more stored phase"):
    runs.Run(tmp_path / "w", name="t", config=c).__enter__()


def test_damaged_records_do_not_stop_the_check_on_entry(tmp_path, capsys):
  _run_all(tmp_path)
  (tmp_path / "scale" / "record.json").write_text("{")
  CALLS.clear()
  _run_all(tmp_path, config=_config())
  assert CALLS == ["scale"] and "scale/record.json is damaged" in capsys.readouterr().err


def test_the_cli_refuses_a_changed_setting_before_setup(tmp_path):
  """ksurrogate_experiments.main passes the config to Run: the refusal comes before any phase runs."""
  from ksurrogate_experiments import contract
  config = contract.load("modular").get_config("tiny")
  with runs.Run(tmp_path, name="modular", log=lambda m: None) as run:
    run.phase("theta0", lambda c: {"lr": c.train.lr}, config)
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  done = subprocess.run([sys.executable, "-m", "ksurrogate_experiments.main", "--experiment=modular", "--config=tiny",
                         f"--workdir={tmp_path}", "--config.train.lr=0.5"],
                        capture_output=True, text=True, env=env, cwd=str(REPO), timeout=300)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines() == [
      f"error: workdir: phase 'theta0' in {tmp_path} was computed with train.lr={config.train.lr!r} when stored, 0.5 now; "
      "use a new --workdir (or the stored settings)"]
  assert "setup" not in (tmp_path / "run.log").read_text()


def test_a_workdir_of_a_version_with_other_field_names_is_refused_naming_the_field(tmp_path):
  """Issue 20 renamed config fields (train.chunk_size -> design.chunk_size, ...): a workdir stored
  before the rename is refused, in one line naming the stored field, before anything runs."""
  from ksurrogate_experiments import contract
  config = contract.load("modular").get_config("tiny")
  with runs.Run(tmp_path, name="modular", log=lambda m: None) as run:
    run.phase("retrain", lambda c: {"lr": c.train.lr}, config)
  record = _record(tmp_path, "retrain")
  record["reads"] = {**record["reads"], "train.chunk_size": 8}           # as the version before the rename stored it
  _write_record(tmp_path, "retrain", records.seal(record))
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  done = subprocess.run([sys.executable, "-m", "ksurrogate_experiments.main", "--experiment=modular", "--config=tiny",
                         f"--workdir={tmp_path}"], capture_output=True, text=True, env=env, cwd=str(REPO), timeout=300)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines() == [
      f"error: workdir: phase 'retrain' in {tmp_path} was computed with train.chunk_size=8 when stored, a field this "
      "config does not have; use a new --workdir: a workdir made by a version with other config field names cannot "
      "be reused (the field was renamed or removed)"]


# ----------------------------------------------------------------------------------------------
# D. Non-finite outcomes are refused before they are stored.

def diverging(c, S_chunk, chunk, model):
  CALLS.append(chunk)
  F = S_chunk.astype(float) * c.train.lr
  if chunk == 1:
    F[:2, 1:3] = np.nan
  return {"F": F, "n": np.full(len(S_chunk), chunk)}


def test_non_finite_outcomes_are_refused_before_they_are_stored(tmp_path):
  CALLS.clear()
  with pytest.raises(runs.NonFiniteOutcomes) as e:
    _run_all(tmp_path, chunk_fn=diverging)
  message = str(e.value)
  assert message.startswith("outcomes: chunk 1 (subsets 3-5) has non-finite outcomes (F: 2 of 3 rows, 2 of 5 targets); "
                            "it was not stored (the 1 chunk(s) stored before it are kept). "
                            "Likely cause, among the settings this phase read: train.lr=0.1, "), message
  assert "\n" not in message
  assert list(_record(tmp_path, "outcomes")["chunks"]) == ["0"]
  CALLS.clear()
  out = _run_all(tmp_path, chunk_fn=diverging, allow_nonfinite=True)    # a source that may opt out
  assert CALLS == [1, 2] and np.isnan(out["F"]["F"]).sum() == 4


def test_non_finite_chunks_stored_by_earlier_versions_are_refused(tmp_path):
  _run_all(tmp_path, chunk_fn=diverging, allow_nonfinite=True)
  with pytest.raises(runs.NonFiniteOutcomes, match=r"^outcomes: stored chunk 1 \(subsets 3-5\) holds non-finite"):
    _run_all(tmp_path, chunk_fn=diverging)


def test_likely_causes_put_learning_rates_and_the_phase_section_first():
  reads = {"data.p": 7, "train.lr": 0.1, "finetune.lr": 1e30, "finetune.steps": 10, "train.chunk_size": 8}
  assert checks.likely_causes(reads, {"train.chunk_size"}, "finetune", limit=3) == (
      "finetune.lr=1e+30, train.lr=0.1, finetune.steps=10 (and 2 more)")


# ----------------------------------------------------------------------------------------------
# E. Compile time apart from steady-state time.

def _program(x):
  for _ in range(20):
    x = jnp.tanh(x @ x.T) + jnp.sin(x)
  return x


def test_stopwatch_separates_compile_time():
  f = jax.jit(lambda x: _program(x) * 3.0)
  x = jnp.ones((64, 64))
  with runs.stopwatch() as outer:
    with runs.stopwatch() as first:
      jax.block_until_ready(f(x))
    with runs.stopwatch() as second:
      jax.block_until_ready(f(x))
  assert 0 < first.compile_seconds <= first.seconds and first.steady_seconds >= 0
  assert second.compile_seconds == 0.0 and second.steady_seconds == second.seconds
  assert outer.compile_seconds == pytest.approx(first.compile_seconds)


def test_steady_reruns_a_call_that_compiled_and_times_the_rerun():
  f = jax.jit(lambda x: _program(x) - 1.0)
  x = jnp.ones((64, 64))
  calls = []

  def work():
    calls.append(1)
    return f(x)

  y, seconds, one_time = runs.steady(work, min_seconds=0.0)
  assert len(calls) == 2 and one_time > 0 and seconds > 0
  np.testing.assert_array_equal(np.asarray(y), np.asarray(f(x)))
  y, seconds, one_time = runs.steady(work, min_seconds=0.0)   # compiled now: one call, no one-time cost
  assert len(calls) == 3 and one_time == 0.0


def test_phase_timings_keep_compile_seconds_apart_and_across_reuse(tmp_path):
  def compiles(c):
    return {"y": np.asarray(jax.jit(lambda x: _program(x) + c.train.lr)(jnp.ones((32, 32))))}

  with runs.Run(tmp_path, progress=False, log=lambda m: None) as run:
    run.phase("p", compiles, _config())
  first = run.timings["p"]
  assert 0 < first.compile_seconds <= first.seconds
  assert {"phase", "seconds", "seconds_compile", "status"} == set(run.timing_rows()[0])
  with runs.Run(tmp_path, progress=False, log=lambda m: None) as run:
    run.phase("p", compiles, _config())
  assert run.timings["p"].status == "reused" and run.timings["p"].compile_seconds == first.compile_seconds


def test_steady_calls_cheap_work_again_and_keeps_the_least_time():
  calls = []

  def work():
    calls.append(1)
    return np.zeros(3)

  _, seconds, one_time = runs.steady(work, min_seconds=10.0, max_calls=7)
  assert len(calls) == 7 and one_time == 0.0 and seconds >= 0   # nothing compiled: the first call counts

  def slow():
    calls.append(1)
    time.sleep(0.05)

  calls.clear()
  runs.steady(slow, min_seconds=0.01)
  assert len(calls) == 1                                         # long enough: called once
