"""Every bad path is refused in one line: workdirs that cannot hold a run (pseudo-filesystems, names
too long, dangling symbolic links, a path under a file) and process ids or counts that cannot
make a group, by the harness and through the command line (exit code 2, one stderr line)."""
import os
import pathlib
import subprocess
import sys

import pytest

from ksurrogate.harness import runs

REPO = pathlib.Path(__file__).resolve().parents[1]


def _pseudo(where: str) -> pathlib.Path:
  if not os.path.ismount(where):
    pytest.skip(f"{where} is not mounted here")
  return pathlib.Path(where) / "ksurrogate-run"


def _bad_workdirs(tmp: pathlib.Path) -> dict:
  """{case: (workdir, what the one line says)}, the files they need made under `tmp`."""
  (tmp / "a_file").write_text("x")
  (tmp / "dangling").symlink_to(tmp / "nowhere")
  return {
      "a name longer than the filesystem takes": (tmp / ("n" * 300), "bytes, longer than the"),
      "a path longer than the filesystem takes": (tmp.joinpath(*["d" * 200] * 25), "bytes long, too long for the"),
      "a dangling symbolic link": (tmp / "dangling", f"{tmp / 'dangling'} is a symbolic link to {tmp / 'nowhere'}, "
                                                     "which does not exist"),
      "under a dangling symbolic link": (tmp / "dangling" / "sub", "is a symbolic link to"),
      "under a regular file": (tmp / "a_file" / "sub", f"is under {tmp / 'a_file'}, which is a file, not a directory"),
      "a regular file": (tmp / "a_file", "is a file, not a directory"),
  }


CASES = ["a name longer than the filesystem takes", "a path longer than the filesystem takes", "a dangling symbolic link",
         "under a dangling symbolic link", "under a regular file", "a regular file"]


def _assert_one_line(message: str, expected: str):
  assert message.startswith("workdir: ") and "\n" not in message and "--workdir" in message, message
  assert expected in message, message


@pytest.mark.parametrize("case", CASES)
def test_check_workdir_refuses_in_one_line(tmp_path, case):
  workdir, expected = _bad_workdirs(tmp_path)[case]
  with pytest.raises(ValueError) as e:
    runs.check_workdir(workdir)
  _assert_one_line(str(e.value), expected)
  with pytest.raises(ValueError):   # and a Run never gets as far as its lock
    runs.Run(workdir, log=lambda m: None)


@pytest.mark.parametrize("where", ["/proc", "/sys"])
def test_pseudo_filesystems_are_refused_in_one_line(where):
  workdir = _pseudo(where)
  with pytest.raises(ValueError) as e:
    runs.check_workdir(workdir)
  _assert_one_line(str(e.value), f"nothing can be created in {where} (")
  assert not workdir.exists()
  with pytest.raises(ValueError):
    runs.check_workdir(f"{where}/self/sub")   # also below an existing entry of theirs


def test_a_good_workdir_is_accepted_and_left_as_it_was(tmp_path):
  assert runs.check_workdir(tmp_path / "new" / "run") == tmp_path / "new" / "run"
  assert sorted(tmp_path.iterdir()) == []   # nothing made: the probe is removed again
  (tmp_path / "target").mkdir()
  (tmp_path / "link").symlink_to(tmp_path / "target")
  assert runs.check_workdir(tmp_path / "link") == tmp_path / "link"


def _cli(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "ksurrogate_experiments.main", "--experiment=modular", "--config=tiny",
                         *args], capture_output=True, text=True, cwd=str(REPO), timeout=timeout,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _cli_refuses(workdir, expected):
  done = _cli(f"--workdir={workdir}")
  assert done.returncode == 2, done.stderr[-2000:]
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
  _assert_one_line(lines[0][len("error: "):], expected)


def test_the_command_line_refuses_a_workdir_under_a_file_in_one_line(tmp_path):
  _cli_refuses(*_bad_workdirs(tmp_path)["under a regular file"])


@pytest.mark.slow
def test_the_command_line_refuses_every_bad_workdir_in_one_line(tmp_path):
  """~20 s per case on a loaded machine (each starts the command line)."""
  cases = _bad_workdirs(tmp_path)
  chosen = [cases[c] for c in CASES if c != "under a regular file"]
  if os.path.ismount("/proc"):
    chosen.append((pathlib.Path("/proc/ksurrogate-run"), "nothing can be created in /proc ("))
  for workdir, expected in chosen:
    _cli_refuses(workdir, expected)


BAD_GROUPS = {
    "an index past the count": ((None, 2, 5), "--process_id: 5 is outside 0 .. 1 (--num_processes=2)"),
    "a negative index": ((None, 2, -1), "--process_id: -1 is outside 0 .. 1"),
    "no processes": ((None, 0, 0), "--num_processes: 0 is not a positive number of processes"),
    "a count that is not a number": ((None, "2", 0), "--num_processes: '2' is not a positive"),
    "an address without a port": (("localhost", 2, 0), "--coordinator_address: 'localhost' is not host:port"),
    "a port out of range": (("localhost:70000", 2, 0), "--coordinator_address: 'localhost:70000' is not host:port"),
}


@pytest.mark.parametrize("case", sorted(BAD_GROUPS))
def test_process_ids_and_counts_are_checked_in_one_line(case):
  group, expected = BAD_GROUPS[case]
  with pytest.raises(ValueError) as e:
    runs.check_group(*group)
  assert str(e.value).startswith(expected) and "\n" not in str(e.value)
  said = []
  runs.initialize_distributed(*group, on_error=said.append)   # refused before joining anything
  assert said == [str(e.value)]


def test_good_groups_pass_the_check():
  for group in ((None, None, None), ("10.0.0.1:8476", 4, 3), ("[::1]:1234", 1, 0), (None, None, 2)):
    runs.check_group(*group)


def test_the_command_line_refuses_a_process_id_outside_the_group_in_one_line(tmp_path):
  done = _cli(f"--workdir={tmp_path}", "--num_processes=2", "--process_id=5", "--coordinator_address=127.0.0.1:1",
              timeout=120)
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr.strip().splitlines() == [
      "error: --process_id: 5 is outside 0 .. 1 (--num_processes=2); give each process of the group its own index "
      "in that range"]
