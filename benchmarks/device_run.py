"""One device call: the modular paper config's whole protocol beside the morl gpu config, on one GPU.

  OUT=/tmp/out bash benchmarks/device_run.sh          # the wrapper installs .whl/ and runs this

What it runs, as two lanes sharing the GPU at once (each process capped to a fraction of its
memory: these models leave most of an H200 idle):
  lane A  1. the step-count check (CURVE=1, ~1 min): `benchmarks/modular_regime.py --curve` on the
             paper config: theta0 and the paper run's own 40 fit subsets (the first 40 of its
             design) followed over 500 steps on training seed 0 (the run's own: with a constant
             rate the checkpoint at step k is exactly the k-step retrain the run would make), the
             outcome statistics every 25 steps. The step chosen is the one where the statistics (of
             every seed in CURVE_SEEDS) are in the authors' range (mean CE in [1, 4], variance
             median in [0.35, 1.4], every target kept) and closest to the released 1.97 / 0.70;
             none in range: the config's own (425). Only fit-subset retrains are used: never
             leave-one-out or held-out outcomes.
          2. `ksurrogate-run --experiment=modular --config=paper` with that step count:
             3-seed LOO truth, fine-tune LOO, estimates, baselines, surrogates, plots, summary.
  lane B  `ksurrogate-run --experiment=morl --config=gpu` (24 truth seeds, 5
          selection seeds).
  last    (DETCOST=1, when at least 100 s are left) what deterministic GPU ops cost: the same
          32 paper-size retrains of 200 steps timed with and without the determinism flag.

Every child gets XLA_FLAGS with the determinism flag (--xla_gpu_deterministic_ops=true, or the
newer --xla_gpu_exclude_nondeterministic_ops=true where the first is unknown; probed first) and a
timeout that ends it before the BUDGET_S deadline (SIGTERM: the run stops at a phase or chunk
boundary, what it finished stays in its workdir).

Outputs under $OUT (at most 8 files, no folders):
  device_run.log            everything this script printed (its table last)
  measured.json             the table as data: lanes, exit codes, wall and phase seconds, choices, figures
  curve.jsonl               the step-count check's rows (modular_regime.py --out)
  modular.tar.gz, morl.tar.gz   per run: summary.json, run.log (phase lines, time-left estimates),
                            console.log, the figures (*.png), arrays.npz; the whole workdir when
                            it fits in 14 MiB
  modular_summary.json, morl_summary.json   the two summaries, uncompressed

Sizes and steps for a CPU smoke test (tests/test_device_run.py): MODULAR_CONFIG, MORL_CONFIG,
CURVE_CONFIG name configs (paper, gpu, paper); MODULAR_SET, MORL_SET add --config overrides;
CURVE_RECIPE, CURVE_CHECKPOINTS, CURVE_SUBSETS, CURVE_SEEDS shape the check; CURVE=0, MORL=0,
MODULAR=0, DETCOST=0 leave a step out; BUDGET_S (560) is the whole script's deadline;
MEM_MODULAR / MEM_MORL (0.55 / 0.25) the GPU memory fractions.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
T0 = time.time()
OUT = pathlib.Path(os.environ.get("OUT") or "/tmp/ksurrogate_device")
BUDGET = float(os.environ.get("BUDGET_S", "560"))
RESERVE = 20.0                     # seconds kept for packing the outputs
LOG_LOCK = threading.Lock()
LOG = []

RELEASED = {"mean": 1.975, "variance_median": 0.701}   # released addition, 40 fit subsets
RANGE = {"mean": (1.0, 4.0), "variance_median": (0.35, 1.4)}   # issue 18's target range


def env(name, default):
  return os.environ.get(name, default)


def say(*parts):
  line = " ".join(str(p) for p in parts)
  with LOG_LOCK:
    LOG.append(line)
    print(line, flush=True)


def left() -> float:
  return BUDGET - (time.time() - T0)


# ----------------------------------------------------------------------------------------------
# The determinism flag, probed: XLA aborts on a flag it does not know.

def probe_flags() -> tuple[str, str]:
  """(XLA_FLAGS for every child, the determinism flag that was accepted or 'none')."""
  base = os.environ.get("XLA_FLAGS", "")
  for flag in ("--xla_gpu_deterministic_ops=true", "--xla_gpu_exclude_nondeterministic_ops=true"):
    trial = f"{base} {flag}".strip()
    r = subprocess.run([sys.executable, "-c", "import jax, jax.numpy as jnp; print(jax.default_backend(), "
                        "jax.devices()[0].device_kind, float(jnp.ones(4).sum()))"],
                       env={**os.environ, "XLA_FLAGS": trial}, capture_output=True, text=True, timeout=120)
    if r.returncode == 0:
      say(f"determinism flag {flag}: accepted ({r.stdout.strip()})")
      return trial, flag
    say(f"determinism flag {flag}: refused ({(r.stderr.strip().splitlines() or ['?'])[-1][:160]})")
  return base, "none"


# ----------------------------------------------------------------------------------------------
# Children.

class Child:
  """A command run with a deadline: SIGTERM at the deadline (the experiments stop at the next
  phase or chunk boundary and keep what they finished), SIGKILL 15 s later."""

  def __init__(self, name, argv, log_path, extra_env=None):
    self.name, self.argv, self.log_path = name, argv, pathlib.Path(log_path)
    self.env = {**os.environ, **(extra_env or {})}
    self.rc, self.wall, self.timed_out = None, None, False

  def run(self, timeout):
    if timeout < 5:
      say(f"[{self.name}] skipped: {timeout:.0f} s left")
      self.rc = "skipped"
      return self
    say(f"[{self.name}] start (timeout {timeout:.0f} s): {' '.join(shlex.quote(a) for a in self.argv)}")
    t = time.time()
    with open(self.log_path, "w") as f:
      p = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
      try:
        self.rc = p.wait(timeout=timeout)
      except subprocess.TimeoutExpired:
        self.timed_out = True
        os.killpg(p.pid, signal.SIGTERM)
        try:
          self.rc = p.wait(timeout=15)
        except subprocess.TimeoutExpired:
          os.killpg(p.pid, signal.SIGKILL)
          self.rc = p.wait()
    self.wall = time.time() - t
    say(f"[{self.name}] exit {self.rc} after {self.wall:.0f} s{' (deadline reached)' if self.timed_out else ''}")
    return self


def python(*args):
  return [sys.executable, *args]


def memory_env(fraction: str) -> dict:
  # No preallocation: each process takes what it uses, capped at its fraction of the GPU.
  return {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "XLA_CLIENT_MEM_FRACTION": fraction,
          "XLA_PYTHON_CLIENT_MEM_FRACTION": fraction}


# ----------------------------------------------------------------------------------------------
# The step-count check: fit subsets only.

def in_range(row: dict) -> bool:
  """Every target kept, mean and variance median inside the target range."""
  numbers = [row.get("mean"), row.get("var_median")]
  if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers):
    return False
  return (row.get("kept") == row.get("total") and RANGE["mean"][0] <= numbers[0] <= RANGE["mean"][1]
          and RANGE["variance_median"][0] <= numbers[1] <= RANGE["variance_median"][1])


def choose_steps(rows: list[dict]) -> tuple[int | None, str]:
  """The checkpoint step where every seed's statistics are in range and their mean is closest to
  the released ones (log distance); None (the config's own step count) when none is."""
  by_step = {}
  for r in rows:
    by_step.setdefault(int(r["step"]), []).append(r)
  seeds = {r["seed"] for r in rows}
  best, best_d = None, math.inf
  for step, rs in sorted(by_step.items()):
    if len(rs) < len(seeds):
      continue
    if not all(in_range(r) for r in rs):
      continue
    mean = sum(r["mean"] for r in rs) / len(rs)
    var = sum(r["var_median"] for r in rs) / len(rs)
    d = abs(math.log(mean / RELEASED["mean"])) + abs(math.log(var / RELEASED["variance_median"]))
    if d < best_d:
      best, best_d = step, d
  if best is None:
    return None, "no checkpoint in range on every seed: the config's own step count"
  rs = by_step[best]
  return best, (f"step {best}: mean {sum(r['mean'] for r in rs) / len(rs):.3f}, variance median "
                f"{sum(r['var_median'] for r in rs) / len(rs):.3f} over seeds {sorted(seeds)} (released 1.975 / 0.701)")


# ----------------------------------------------------------------------------------------------
# Reading back what a run measured.

def read_summary(workdir: pathlib.Path):
  try:
    return json.loads((workdir / "summary.json").read_text())
  except (OSError, ValueError):
    return None


def phase_seconds(workdir: pathlib.Path, summary) -> dict:
  """{phase: seconds} from the summary, else from the run log's 'computed in' lines."""
  if summary:
    return {r["phase"]: round(r["seconds"], 1) for r in summary.get("timing", [])}
  out = {}
  try:
    for line in (workdir / "run.log").read_text().splitlines():
      if "] " in line and (": computed in " in line or " s of compute" in line):
        body = line.split("] ", 1)[1]
        name = body.split(":", 1)[0]
        num = [w for w in body.replace(",", " ").split() if w.replace(".", "", 1).isdigit()]
        out[name] = float(num[-1]) if num else None
  except OSError:
    pass
  return out


def figures(summary, dataset: str) -> dict:
  if not summary:
    return {}
  d = summary.get("datasets", {}).get(dataset, {})
  pick = lambda m, k: d.get(m, {}).get(k)  # noqa: E731
  out = {}
  for m in ("kernel_exact", "kernel_lds_exact", "kernel_official_exact", "linear_exact", "linear_official_exact",
            "influence", "kernel_estimated"):
    for k in ("loo_pearson", "loo_pearson_se", "lds", "lds_se"):
      if pick(m, k) is not None:
        out[f"{k}/{m}"] = pick(m, k)
  comparisons = summary.get("comparisons", {}).get(dataset, {})
  for pair in ("kernel_exact-linear_exact", "kernel_official_exact-linear_official_exact"):
    for k in ("loo_pearson", "lds"):
      row = comparisons.get(pair, {})
      if f"{k}_verdict" in row:
        out[f"{k}_verdict/{pair}"] = row[f"{k}_verdict"]
  ceiling = summary.get("ceiling", {}).get(dataset) or {}
  out["ceiling/loo_pearson"], out["ceiling/loo_pearson_ci95"] = ceiling.get("loo_pearson"), ceiling.get("loo_pearson_ci95")
  out["reliability/loo_pearson"] = (summary.get("reliability", {}).get(dataset) or {}).get("loo_pearson")
  outcomes = summary.get("outcomes", {}).get(dataset)
  if outcomes:
    out.update({f"outcomes/{k}": outcomes.get(k) for k in ("mean", "median", "variance_median", "kept", "total",
                                                          "released_mean", "released_variance_median")})
  est = summary.get("estimator", {}).get(dataset) or {}
  for k in ("median_relative_error", "speedup_per_subset"):
    if k in est:
      out[f"estimator/{k}"] = est[k]
  gain = summary.get("selection_gain", {}).get(dataset) or {}
  if "kernel_vs_linear_regret_reduction" in gain:
    out["selection/kernel_vs_linear_regret_reduction"] = gain["kernel_vs_linear_regret_reduction"]
  return out


PACK_LIMIT = 14 * 2**20   # one file back from the device holds at most 16 MiB


def pack(name: str, workdir: pathlib.Path, console: pathlib.Path) -> None:
  """OUT/<name>.tar.gz and OUT/<name>_summary.json.

  The tarball holds the summary, run log, console log, figures and the evaluation arrays, and the
  whole workdir (every stored phase, so that it can be evaluated again elsewhere) when it fits.
  """
  files = [p for p in sorted(workdir.rglob("*")) if p.is_file() and ".lock" not in p.name] if workdir.is_dir() else []
  if sum(p.stat().st_size for p in files) > PACK_LIMIT:
    files = [workdir / "summary.json", workdir / "run.log", *sorted(workdir.glob("*/*.png")), *sorted(workdir.glob("*/arrays.npz"))]
  with tarfile.open(OUT / f"{name}.tar.gz", "w:gz") as tar:
    for path in [*files, console]:
      if path.is_file():
        tar.add(path, arcname=f"{name}/{path.relative_to(workdir) if path.is_relative_to(workdir) else path.name}")
  if (workdir / "summary.json").is_file():
    shutil.copy(workdir / "summary.json", OUT / f"{name}_summary.json")


def fmt(v):
  if isinstance(v, float):
    return f"{v:.4g}"
  return "-" if v is None else str(v)


# ----------------------------------------------------------------------------------------------

def main() -> int:
  OUT.mkdir(parents=True, exist_ok=True)
  scratch = pathlib.Path(tempfile.mkdtemp(prefix="ks_device_"))
  say(f"device_run: budget {BUDGET:.0f} s, scratch {scratch}, OUT {OUT}")
  r = subprocess.run(python("-c", "import jax; print('jax', jax.__version__, jax.devices())"), capture_output=True, text=True)
  say((r.stdout or r.stderr).strip().splitlines()[-1] if (r.stdout or r.stderr).strip() else "jax: ?")
  if shutil.which("nvidia-smi"):
    r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                       capture_output=True, text=True)
    say("gpu:", r.stdout.strip())
  xla_flags, det_flag = probe_flags()
  precision = env("PRECISION", "")   # e.g. 'highest': float32 matmuls (default: JAX's, TF32 on the GPU)
  common = {"XLA_FLAGS": xla_flags, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))}
  if precision:
    common["JAX_DEFAULT_MATMUL_PRECISION"] = precision
  measured = {"budget_s": BUDGET, "xla_flags": xla_flags, "determinism_flag": det_flag,
              "matmul_precision": precision or "default", "lanes": {}}

  modular_config, morl_config = env("MODULAR_CONFIG", "paper"), env("MORL_CONFIG", "gpu")
  mod_work, morl_work = scratch / "modular", scratch / "morl"
  curve_out = OUT / "curve.jsonl"
  mem_a, mem_b = env("MEM_MODULAR", "0.55"), env("MEM_MORL", "0.25")

  def lane_a():
    steps_set, choice = [], None
    if env("CURVE", "1") == "1" and env("MODULAR", "1") == "1":
      cfg = env("CURVE_CONFIG", modular_config)
      subsets = int(env("CURVE_SUBSETS", "40"))
      child = Child("curve", python("benchmarks/modular_regime.py", f"--config={cfg}", "--curve",
                                    f"--checkpoints={env('CURVE_CHECKPOINTS', '20')}", f"--curve_subsets={subsets}",
                                    f"--seeds={env('CURVE_SEEDS', '0')}", "--recipe", env("CURVE_RECIPE", "train.num_steps=500"),
                                    f"--out={curve_out}"),
                    scratch / "curve_console.log", {**common, **memory_env(mem_a)})
      child.run(min(float(env("CURVE_TIMEOUT_S", "150")), left() - RESERVE - 120))
      rows = []
      if curve_out.exists():
        rows = [json.loads(line) for line in curve_out.read_text().splitlines() if line.strip()]
      steps, why = choose_steps(rows) if rows else (None, "the check gave no rows: the config's own step count")
      choice = {"steps": steps, "why": why, "rows": len(rows), "exit": child.rc, "wall_s": child.wall}
      say(f"[curve] chosen: {why}")
      if steps is not None:
        steps_set = [f"--config.train.num_steps={steps}"]
      measured["curve"] = choice
    if env("MODULAR", "1") != "1":
      return
    run_experiment("modular", modular_config, mod_work, mem_a, [*steps_set, *shlex.split(env("MODULAR_SET", ""))])

  def lane_b():
    if env("MORL", "1") != "1":
      return
    run_experiment("morl", morl_config, morl_work, mem_b, shlex.split(env("MORL_SET", "")))

  def run_experiment(name, config, workdir, memory_fraction, overrides):
    """One experiment to its summary (or the deadline), recorded under measured["lanes"][name]."""
    argv = python("-m", "ksurrogate_experiments.main", f"--experiment={name}", f"--config={config}", f"--workdir={workdir}",
                  *overrides)
    child = Child(name, argv, scratch / f"{name}_console.log", {**common, **memory_env(memory_fraction)})
    child.run(left() - RESERVE)
    summary = read_summary(workdir)
    measured["lanes"][name] = {"config": config, "argv": argv[1:], "exit": child.rc, "wall_s": child.wall,
                               "deadline_reached": child.timed_out, "phases_s": phase_seconds(workdir, summary),
                               "figures": figures(summary, name)}

  lanes = [threading.Thread(target=lane_a), threading.Thread(target=lane_b)]
  for t in lanes:
    t.start()
  for t in lanes:
    t.join()

  if env("DETCOST", "1") == "1" and det_flag != "none" and left() > RESERVE + 100:
    # The same retrains with and without the flag, one process each (a flag holds per process).
    out = {}
    for label, flags_ in (("deterministic", xla_flags), ("default", os.environ.get("XLA_FLAGS", ""))):
      path = scratch / f"detcost_{label}.jsonl"
      child = Child(f"detcost {label}", python("benchmarks/modular_regime.py", f"--config={env('CURVE_CONFIG', modular_config)}",
                                               "--m=32", "--seeds=0", "--recipe", env("DETCOST_RECIPE", "train.num_steps=200"),
                                               f"--out={path}"),
                    scratch / f"detcost_{label}.log", {**common, "XLA_FLAGS": flags_})
      child.run(min(60.0, (left() - RESERVE) / 2))
      try:
        row = json.loads(path.read_text().splitlines()[-1])
        out[label] = {"seconds_theta0": row["seconds_theta0"], "seconds_retrain": row["seconds_retrain"], "wall_s": child.wall}
      except (OSError, ValueError, IndexError, KeyError):
        out[label] = {"exit": child.rc}
    measured["determinism_cost"] = out

  for name, work in (("modular", mod_work), ("morl", morl_work)):
    if work.exists():
      pack(name, work, scratch / f"{name}_console.log")
  measured["wall_s"] = time.time() - T0

  # The table of what was measured.
  say("")
  say(f"== measured (wall {measured['wall_s']:.0f} s of a {BUDGET:.0f} s budget; determinism {det_flag}; "
      f"matmul precision {measured['matmul_precision']}) ==")
  if "curve" in measured:
    c = measured["curve"]
    say(f"step-count check: exit {c['exit']}, {fmt(c['wall_s'])} s, {c['rows']} rows -> {c['why']}")
  for name, lane in measured["lanes"].items():
    say(f"{name} ({lane['config']}): exit {lane['exit']}, wall {fmt(lane['wall_s'])} s"
        + (" (stopped at the deadline)" if lane["deadline_reached"] else ""))
    say("  phases (s): " + ", ".join(f"{k} {fmt(v)}" for k, v in lane["phases_s"].items()))
    for k, v in lane["figures"].items():
      say(f"  {k:<45} {fmt(v)}")
  if "determinism_cost" in measured:
    d = measured["determinism_cost"]
    say("determinism cost (32 paper-size retrains, 200 steps, compile included): " +
        ", ".join(f"{k} retrain {fmt(v.get('seconds_retrain'))} s" for k, v in d.items()))
  (OUT / "measured.json").write_text(json.dumps(measured, indent=1, default=str))
  (OUT / "device_run.log").write_text("\n".join(LOG) + "\n")
  ok = all(lane["exit"] == 0 for lane in measured["lanes"].values())
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
