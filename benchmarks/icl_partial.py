"""Interim results of a (still running or stopped) `icl` run: attribution LDS of the four
surrogate methods and the estimator's accuracy, from the phases already finished.

  python benchmarks/icl_partial.py --workdir=/tmp/icl_cpu --config=cpu [--task=sentiment]

The running process holds a lock on its workdir, so this copies the finished phases to a scratch
directory and opens that; it never computes an outcome chunk (it stops when `exact_<task>` is not
complete) and computes the estimator only when --estimate is given and the phase is missing.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import tempfile


import numpy as np  # noqa: E402

from ksurrogate_experiments import contract  # noqa: E402
from ksurrogate_experiments.icl import data as icl_data  # noqa: E402
from ksurrogate_experiments.icl import pipeline as icl_pipeline  # noqa: E402
from ksurrogate.harness import driver, report, runs  # noqa: E402


def _complete(directory: pathlib.Path) -> tuple[int, int]:
  record = directory / "record.json"
  if not record.is_file():
    return 0, -1
  r = json.loads(record.read_text())
  return len(r.get("chunks", {})), r.get("num_chunks", -1)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--config", default="cpu")
  ap.add_argument("--task", default="sentiment")
  ap.add_argument("--estimate", action="store_true", help="compute the estimator if it is not stored yet")
  args = ap.parse_args(argv)
  experiment = contract.load("icl")
  c = experiment.get_config(args.config)
  c.progress = False
  src = pathlib.Path(args.workdir)
  done, total = _complete(src / f"exact_{args.task}")
  if done != total:
    print(f"exact_{args.task}: {done} of {total} chunks finished; nothing to score yet")
    return None
  if not (src / f"estimate_{args.task}" / "record.json").is_file() and not args.estimate:
    print(f"estimate_{args.task}: not finished (pass --estimate to compute it here)")
  scratch = pathlib.Path(tempfile.mkdtemp(prefix="icl_partial_"))
  for name in ("design", "exact", "estimate"):
    if (src / f"{name}_{args.task}" / "record.json").is_file():
      shutil.copytree(src / f"{name}_{args.task}", scratch / f"{name}_{args.task}")
  with runs.Run(scratch, name="icl_partial", progress=False) as run:
    model = run.phase("model", icl_pipeline.load_model, c, store=False)
    s = run.phase(f"data_{args.task}", icl_pipeline.make_data, c, model, args.task, store=False)
    dsg = run.phase(f"design_{args.task}", icl_pipeline.design, c, s)
    exact = run.outcomes(f"exact_{args.task}", icl_pipeline.exact_chunk, c, dsg.prompts, s, "scoring",
                         chunk_size=c.design.chunk_size)
    extra, info = {}, {}
    if (scratch / f"estimate_{args.task}").is_dir() or args.estimate:
      est = run.phase(f"estimate_{args.task}", icl_pipeline.estimate, c, s, dsg, exact)
      extra = {"estimated": (icl_data.indicators(est.many, s.K), est.F_many)}
      info = est.info
    problem = driver.Problem(name=args.task, S=dsg.S, F=exact["F"], splits=icl_pipeline.splits(c, len(dsg.prompts)),
                             sources=extra, estimates_of={"estimated": "exact"} if extra else {})
    result = driver.evaluate(problem, experiment.families(c, args.task), threshold=c.normalized_error_threshold,
                             resplit_count=c.eval.resplits, num_bootstrap=c.eval.bootstrap, seed=c.seed)
  summary = result.scores
  rows = [{"method": m, **{k: (v.get(k), v.get(f"{k}_se")) for k in ("lds", "normalized_error")}}
          for m, v in summary.items()]
  print(report.table(rows, ["method", "lds", "normalized_error"]))
  F = exact["F"]
  out = {"summary": summary, "estimator": info,
         "prompts": {"mean_loss": float(F.mean()), "loss_sd_over_prompts": float(F.mean(1).std()),
                     "mean_accuracy": float((F < icl_pipeline.LN2).mean()),
                     "seconds_real_per_prompt": float(np.median(exact["seconds"]))}}
  print(json.dumps(out, indent=1))
  shutil.rmtree(scratch, ignore_errors=True)
  return out


if __name__ == "__main__":
  main()
