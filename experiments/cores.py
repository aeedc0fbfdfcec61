"""How many CPU cores a run uses: every one unless other work already keeps them all busy, then one.

Why one: on cores shared with other CPU-bound work, XLA's CPU thread pool and OpenBLAS (which also
serves jaxlib's LAPACK calls) wait at every parallel step for a thread the scheduler has parked;
the kernel fit of the reference experiment took ~20 s instead of 0.4-0.6 s beside two busy
processes, and 0.6 s once the process was pinned to one core (`benchmarks/threads.py`; the table
is in BUILD_NOTES.md, "A busy machine"). On an idle machine the threads pay, so `auto`
keeps them there.
"""
from __future__ import annotations

import os
import time
from typing import Optional

# `auto` takes one core when the 1-minute load average is at least the number of cores: every core
# busy already. A lower bar (1.0) pinned the tests' own runs on an otherwise idle 2-core machine,
# where the test process keeps the load near 1.4 and two threads still pay.


def available() -> list[int]:
  """The cores this process may run on.

  Returns:
    Their ids, sorted.
  """
  return sorted(os.sched_getaffinity(0))


def choose(request: str, *, load: Optional[float] = None, cores: Optional[int] = None) -> tuple[int, str]:
  """The number of cores a `--cores` value asks for, and why.

  Args:
    request: "auto" (all when the load average is below the number of cores, else 1), "all", or a count.
    load: the 1-minute load average (read from the machine when None).
    cores: the cores available (read from the process's affinity when None).

  Returns:
    (count, reason): the count in [1, cores] and a short reason for the console.

  Raises:
    ValueError: a request that is none of these, or a count outside [1, cores].
  """
  cores = len(available()) if cores is None else cores
  text = str(request).strip().lower()
  if text == "all":
    return cores, "--cores=all"
  if text == "auto":
    load = os.getloadavg()[0] if load is None else load
    if load >= cores > 1:
      return 1, (f"the machine is busy (load {load:.1f} on {cores} cores): one core is faster there than "
                 "threads that wait for each other; --cores=all to use every core")
    return cores, f"load {load:.1f}: every core"
  try:
    count = int(text)
  except ValueError:
    raise ValueError(f"--cores: expected auto, all or a number of cores, got {request!r}") from None
  if not 1 <= count <= cores:
    raise ValueError(f"--cores: {count} is outside [1, {cores}] (the cores this process may use)")
  return count, f"--cores={count}"


_LIMITS = []   # threadpoolctl's limiter, kept alive for the run


def _busy(seconds: float = 0.2) -> dict:
  """{core: share of its time busy over `seconds`} from /proc/stat ({} where it cannot be read)."""

  def ticks():
    out = {}
    try:
      with open("/proc/stat") as f:
        for line in f:
          name, *values = line.split()
          if name.startswith("cpu") and name != "cpu":
            v = [int(x) for x in values]
            out[int(name[3:])] = (sum(v), v[3] + (v[4] if len(v) > 4 else 0))   # (total, idle + iowait)
    except (OSError, ValueError):
      return {}
    return out
  a = ticks()
  time.sleep(seconds)
  b = ticks()
  return {c: 1 - (b[c][1] - a[c][1]) / max(b[c][0] - a[c][0], 1) for c in a if c in b}


def least_busy(count: int, busy: Optional[dict] = None) -> list[int]:
  """The `count` cores of this process that were least busy just now: pinned to core 0 beside a
  job on core 0, a run would share it. Shares are compared rounded to a tenth, so sampling noise
  between two idle cores does not reorder them; on a tie, or where /proc/stat cannot be read, the
  first cores.

  Args:
    count: how many, >= 1.
    busy: {core: busy share} (sampled over 0.2 s when None).

  Returns:
    Their ids, sorted.
  """
  mine = available()
  busy = _busy() if busy is None else busy
  return sorted(sorted(mine, key=lambda c: (round(busy.get(c, 0.0), 1), c))[:count])


def limit(count: int) -> list[int]:
  """Runs this process (every thread it has, and those it starts later) on the `count` cores
  least busy now (`least_busy`), with OpenBLAS at `count` threads.

  Args:
    count: cores to keep, >= 1.

  Returns:
    The core ids kept.
  """
  keep = set(available()) if count >= len(available()) else set(least_busy(count))
  for tid in os.listdir("/proc/self/task"):   # threads XLA or OpenBLAS started already
    try:
      os.sched_setaffinity(int(tid), keep)
    except OSError:   # a thread that ended meanwhile
      pass
  os.sched_setaffinity(0, keep)
  from threadpoolctl import threadpool_limits
  _LIMITS[:] = [threadpool_limits(limits=count, user_api="blas")]
  return sorted(keep)
