"""Timing: wall time with the JAX compile time apart (`stopwatch`, `steady`) and each phase's
timing as the summary reports it (`PhaseTiming`)."""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable

import jax


@dataclasses.dataclass
class PhaseTiming:
  seconds: float          # compute time (of the run that computed it, when reused)
  status: str             # "computed", "reused", "resumed" (some chunks reused), "repaired" or "loaded"
  compile_seconds: float = 0.0   # the part of `seconds` JAX spent compiling


class Stopwatch:
  """Wall time of a block and the part of it JAX spent compiling (tracing, lowering to MLIR and
  XLA compilation, as `jax.monitoring` reports them). `steady_seconds` is the rest: what the block
  costs once its programs are compiled, the same whichever phase or chunk happened to compile."""

  def __init__(self):
    self.seconds = 0.0
    self._spans: list[tuple[float, float]] = []

  @property
  def compile_seconds(self) -> float:
    total, end = 0.0, -float("inf")
    for a, b in sorted(self._spans):   # union: nested or overlapping events count once
      if b > end:
        total += b - max(a, end)
        end = b
    return min(total, self.seconds)

  @property
  def steady_seconds(self) -> float:
    return self.seconds - self.compile_seconds


_WATCHES: list[Stopwatch] = []
_LISTENING = {"registered": False}


def _on_time_span(event: str, start: float, end: float, **kwargs) -> None:
  del kwargs
  if _WATCHES and event.startswith("/jax/core/compile/"):
    for watch in _WATCHES:
      watch._spans.append((start, end))


def _listen() -> None:
  """Registers the compile-time listener with jax.monitoring once, at the first stopwatch (not on
  import: importing the harness changes no global state)."""
  if not _LISTENING["registered"]:
    jax.monitoring.register_event_time_span_listener(_on_time_span)
    _LISTENING["registered"] = True


@contextlib.contextmanager
def stopwatch():
  """Times a block: `with stopwatch() as sw: ...` (block on its results inside it). Stopwatches nest.

  Returns:
    A context manager yielding a `Stopwatch` (sw.seconds, sw.compile_seconds, sw.steady_seconds,
    set when the block ends).
  """
  _listen()
  watch = Stopwatch()
  _WATCHES.append(watch)
  t0 = time.perf_counter()
  try:
    yield watch
  finally:
    watch.seconds = time.perf_counter() - t0
    _WATCHES.remove(watch)


def steady(work: Callable[[], Any], min_seconds: float = 0.5, max_calls: int = 50) -> tuple[Any, float, float]:
  """Times `work()` once compiled.

  When the first call compiles anything it is not timed: the first call of a program also pays,
  besides the compilation `jax.monitoring` reports, for its first execution (on CPU, XLA
  finishes preparing the program then), which no event reports; a first run can take several
  times a steady one. Work that takes less than `min_seconds` is called again until the timed
  calls add up to it (at most `max_calls`), and the least time counts (as timeit does: load on a
  shared machine only ever adds time; a call of a few milliseconds varies several-fold).

  Args:
    work: a deterministic function of no arguments (its result is blocked on).
    min_seconds: how long the timed calls take together at least.
    max_calls: the most timed calls.

  Returns:
    (the last result, steady seconds, one-time seconds: what the first call cost beyond the
    steady time, 0 when it compiled nothing).
  """
  with stopwatch() as first:
    result = jax.block_until_ready(work())
  compiled = first.compile_seconds > 0.0
  times = [] if compiled else [first.seconds]
  while not times or (sum(times) < min_seconds and len(times) < max_calls):
    with stopwatch() as again:
      result = jax.block_until_ready(work())
    times.append(again.steady_seconds)   # a work that compiles on every call: the events are all that can be taken out
  seconds = min(times)
  return result, seconds, max(first.seconds - seconds, 0.0) if compiled else 0.0
