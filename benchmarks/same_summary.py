"""Are two runs of one config the same? Compares their summaries and arrays, leaving out what
depends on the clock or the workdir's name.

  python benchmarks/same_summary.py RUN_A RUN_B      # two --workdir directories (or summary.json files)

Left out: the `timing` table, the `files` list, the `provenance` block (command, commit, machine,
date), and every value whose key holds `seconds` or `speedup` (wall-clock figures). Everything else must be equal to the bit: each leaf of
summary.json, and every array of every <dataset>/arrays.npz. Prints each difference (path, the two
values, the largest absolute difference of arrays) and exits 1 when there is one, else prints
"identical" and exits 0.
"""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

CLOCK = ("seconds", "speedup")


def _load(path: pathlib.Path):
  path = pathlib.Path(path)
  summary = path / "summary.json" if path.is_dir() else path
  return json.loads(summary.read_text()), summary.parent


def _differences(a, b, where=""):
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      if where == "" and k in ("timing", "files", "provenance"):
        continue
      if any(c in k for c in CLOCK):
        continue
      if k not in a or k not in b:
        yield f"{where}.{k}: only in {'B' if k not in a else 'A'}"
        continue
      yield from _differences(a[k], b[k], f"{where}.{k}")
  elif isinstance(a, list) and isinstance(b, list):
    if len(a) != len(b):
      yield f"{where}: {len(a)} vs {len(b)} items"
    else:
      for i, (x, y) in enumerate(zip(a, b)):
        yield from _differences(x, y, f"{where}[{i}]")
  elif a != b and not (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b)):
    yield f"{where}: {a!r} vs {b!r}"


def compare(run_a, run_b) -> list[str]:
  (sa, da), (sb, db) = _load(run_a), _load(run_b)
  out = list(_differences(sa, sb))
  for npz in sorted(da.glob("*/arrays.npz")):
    other = db / npz.relative_to(da)
    if not other.exists():
      out.append(f"{npz.relative_to(da)}: missing in B")
      continue
    with np.load(npz) as x, np.load(other) as y:
      for k in sorted(set(x.files) | set(y.files)):
        if k not in x.files or k not in y.files:
          out.append(f"{npz.relative_to(da)}:{k}: only in one")
        elif x[k].shape != y[k].shape or not np.array_equal(x[k], y[k], equal_nan=True):
          diff = (float(np.nanmax(np.abs(x[k].astype(np.float64) - y[k].astype(np.float64))))
                  if x[k].shape == y[k].shape and np.issubdtype(x[k].dtype, np.number) else "shape")
          out.append(f"{npz.relative_to(da)}:{k}: differs (largest absolute difference {diff})")
  return out


def main(argv):
  if len(argv) != 3:
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    return 2
  diffs = compare(argv[1], argv[2])
  for line in diffs:
    print(line)
  print("identical" if not diffs else f"{len(diffs)} differences")
  return 1 if diffs else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
