"""`--cores`: one core when every core is busy already, all otherwise, a count when asked; bad values are one
line before anything runs."""
import os
import subprocess
import sys

import pytest

from ksurrogate_experiments import cores


def test_auto_takes_one_core_on_a_busy_machine_and_all_on_an_idle_one():
  assert cores.choose("auto", load=0.3, cores=4) == (4, "load 0.3: every core")
  assert cores.choose("auto", load=2.5, cores=4)[0] == 4      # cores left idle: threads still pay
  count, why = cores.choose("auto", load=4.5, cores=4)
  assert count == 1 and "busy (load 4.5 on 4 cores)" in why and "--cores=all" in why
  assert cores.choose("auto", load=9.0, cores=1)[0] == 1
  assert cores.choose("all", load=9.0, cores=4)[0] == 4
  assert cores.choose(" 2 ", cores=4)[0] == 2


@pytest.mark.parametrize("bad, message", [
    ("half", "--cores: expected auto, all or a number of cores, got 'half'"),
    ("0", r"--cores: 0 is outside \[1, 4\]"),
    ("5", r"--cores: 5 is outside \[1, 4\]"),
])
def test_bad_values_are_one_line(bad, message):
  with pytest.raises(ValueError, match=f"^{message}"):
    cores.choose(bad, cores=4)


def test_limit_pins_every_thread_and_openblas():
  # in a child: affinity is the process's, and the test process must keep its cores
  code = ("import threading, time, os\n"
          "from ksurrogate_experiments import cores\n"
          "ev = threading.Event(); t = threading.Thread(target=ev.wait); t.start()\n"
          "kept = cores.limit(1)\n"
          "from threadpoolctl import threadpool_info\n"
          "tids = os.listdir('/proc/self/task')\n"
          "assert all(os.sched_getaffinity(int(i)) == set(kept) for i in tids), 'a thread kept its cores'\n"
          "assert all(p['num_threads'] == 1 for p in threadpool_info() if p['user_api'] == 'blas')\n"
          "ev.set(); print(len(kept), len(tids))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.split()[0] == "1" and int(out.stdout.split()[1]) >= 2


def test_the_command_line_refuses_a_bad_count_in_one_line(tmp_path):
  out = subprocess.run([sys.executable, "-m", "ksurrogate_experiments.main", "--cores=0", f"--workdir={tmp_path / 'w'}"],
                       capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [f"error: --cores: 0 is outside [1, {len(os.sched_getaffinity(0))}] (the "
                                             "cores this process may use)"]
  assert not (tmp_path / "w").exists()


def test_one_core_is_the_least_busy_one(monkeypatch):
  # beside a job on core 0 a run pinned to core 0 would share it; ties (and no reading) keep the order
  monkeypatch.setattr(cores, "available", lambda: [0, 1, 2])
  assert cores.least_busy(1, busy={0: 0.98, 1: 0.05, 2: 0.5}) == [1]
  assert cores.least_busy(2, busy={0: 0.98, 1: 0.05, 2: 0.5}) == [1, 2]
  assert cores.least_busy(1, busy={0: 0.51, 1: 0.49, 2: 0.9}) == [0]   # both round to 0.5: a tie, the first
  assert cores.least_busy(1, busy={}) == [0]
  monkeypatch.undo()
  shares = cores._busy(0.05)
  assert set(shares) >= set(cores.available()) and all(-1e-9 <= v <= 1 + 1e-9 for v in shares.values())
