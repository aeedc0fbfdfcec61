"""Several processes on one run directory (jax.distributed, 2 CPU processes on this machine):
the outcomes equal a single process's, the lock refuses independent runs, a killed group resumes
with only the missing chunks. The experiment is tests/distributed_synthetic.py (through the
harness, seconds); test_modular.py runs the modular tiny config the same way (slow)."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from ksurrogate.harness import runs

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "distributed_synthetic.py"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_group(workdir, out, n=2, **env):
  port = free_port()
  environ = {**os.environ, "JAX_PLATFORMS": "cpu", **{k: str(v) for k, v in env.items()}}
  return [subprocess.Popen([sys.executable, str(SCRIPT), str(workdir), str(out), str(p), str(n), str(port)], cwd=ROOT,
                           env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True) for p in range(n)]


def finish(procs, timeout=300):
  return [(p.wait(timeout=timeout), p.stdout.read()) for p in procs]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  d = tmp_path_factory.mktemp("single")
  r = subprocess.run([sys.executable, str(SCRIPT), str(d / "w"), str(d / "out.npz")], cwd=ROOT, capture_output=True,
                     text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0, r.stdout + r.stderr
  return dict(np.load(d / "out.npz"))


def test_two_processes_share_the_chunks_and_give_the_outcomes_of_one(single, tmp_path):
  (rc0, log0), (rc1, log1) = finish(start_group(tmp_path / "w", tmp_path / "out.npz"))
  assert rc0 == 0 and rc1 == 0, log0 + log1
  group = dict(np.load(tmp_path / "out.npz"))
  for k in single:
    np.testing.assert_array_equal(group[k], single[k], err_msg=k)   # bitwise
  # the 7 chunks of `map` dealt round-robin: 4 to process 0, 3 to process 1
  assert "map: computing 7 chunks of 3 subsets (4 in this process)" in log0
  assert "map: computing 7 chunks of 3 subsets (3 in this process)" in log1
  assert "base: computed" in log0 and "base: loaded (stored by process 0)" in log1
  assert "map: loaded 7 chunks (stored by process 0)" in log1
  record = json.loads((tmp_path / "w" / "map" / "record.json").read_text())
  assert sorted(record["chunks"], key=int) == [str(i) for i in range(7)]
  assert not (tmp_path / "w" / "map" / "incoming").exists()
  assert "Traceback" not in log0 + log1


@pytest.mark.slow   # multi-process runs end to end; the shared-chunks test stays default
def test_an_independent_run_is_refused_by_a_group_and_the_group_by_a_run(tmp_path):
  w = tmp_path / "w"
  procs = start_group(w, tmp_path / "out.npz", CHUNK_SLEEP=1)
  record = w / "map" / "record.json"
  deadline = time.time() + 120
  while time.time() < deadline and not record.exists():
    time.sleep(0.1)
  try:
    with pytest.raises(runs.WorkdirInUse, match="in use by another run"):
      with runs.Run(w, name="synthetic"):
        pass
  finally:
    results = finish(procs)
  assert all(rc == 0 for rc, _ in results), results
  with runs.Run(w, name="synthetic"):   # the lock held here: a group started now is refused in every process
    results = finish(start_group(w, tmp_path / "out2.npz"))
  for rc, log in results:
    assert rc != 0 and "is in use by another run" in log, log
  assert not (tmp_path / "out2.npz").exists()


@pytest.mark.slow   # multi-process runs end to end; the shared-chunks test stays default
def test_a_killed_group_resumes_computing_only_the_missing_chunks(single, tmp_path):
  w = tmp_path / "w"
  procs = start_group(w, tmp_path / "out.npz", CHUNK_SLEEP=1.5)
  record, inbox = w / "map" / "record.json", w / "map" / "incoming"
  deadline = time.time() + 120
  # wait until process 0 has stored two chunks of `map` and process 1 has handed one over
  while time.time() < deadline and not (record.exists() and len(json.loads(record.read_text())["chunks"]) >= 2
                                        and len(list(inbox.glob("*.json"))) >= 1):
    time.sleep(0.05)
  for p in procs:
    os.killpg(p.pid, signal.SIGKILL)
  finish(procs)
  assert not (tmp_path / "out.npz").exists()
  stored = len(json.loads(record.read_text())["chunks"])
  handed = len(list(inbox.glob("*.json")))
  assert stored >= 2 and handed >= 1
  (rc0, log0), (rc1, log1) = finish(start_group(w, tmp_path / "out.npz"))
  assert rc0 == 0 and rc1 == 0, log0 + log1
  assert "base: reused" in log0
  # what process 0 stored and what process 1 handed over before the kill are both kept
  assert f"map: {stored + handed} of 7 chunks reused, computing {7 - stored - handed}" in log0, log0
  group = dict(np.load(tmp_path / "out.npz"))
  for k in single:
    np.testing.assert_array_equal(group[k], single[k], err_msg=k)


@pytest.mark.slow   # multi-process runs end to end; the shared-chunks test stays default
def test_a_dead_peer_is_reported_in_one_line_and_process_0_stops(tmp_path):
  """Before: process 0 waited for its dead peer until jax.distributed's heartbeat aborted it
  (58 s, a faulthandler dump, rc -6). Now the peer watch on the locks ends it in one line. (The
  other way round, process 0 dead, JAX's client ends the others itself at once, with its own
  fatal message: no public JAX API lets Python code run first.)"""
  w = tmp_path / "w"
  procs = start_group(w, tmp_path / "out.npz", CHUNK_SLEEP=1.5)
  record = w / "map" / "record.json"
  deadline = time.time() + 120
  while time.time() < deadline and not (record.exists() and json.loads(record.read_text())["chunks"]):
    time.sleep(0.05)
  os.killpg(procs[1].pid, signal.SIGKILL)
  (rc, log), _ = finish(procs, timeout=90)
  assert rc == 1, log
  lines = [line for line in log.splitlines() if "died" in line]
  assert len(lines) == 1 and lines[0].endswith(
      f"stopped: process 1 of 2 died (its lock {w / '.lock.1'} was released while it ran: killed, or its machine "
      "lost); rerun the same command in every process to resume (finished phases and chunks are kept)"), log
  assert not any(s in log for s in ("Traceback", "Fatal Python error", "Check failure", "Terminating process")), log
  assert "process 1 of 2 died" in (w / "run.log").read_text()
  (rc0, log0), (rc1, log1) = finish(start_group(w, tmp_path / "out.npz"))   # and the rerun resumes
  assert rc0 == 0 and rc1 == 0, log0 + log1
  assert " of 7 chunks reused, computing " in log0, log0
