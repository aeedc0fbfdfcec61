"""Run storage: every write is atomic (temp file + rename), so an interrupted run never leaves a
half-written summary or array file behind, and existing results are only replaced whole."""
from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile

import numpy as np


def _file_mode() -> int:
  """0o666 less the process umask: what open() would give (mkstemp's temp files are 0o600)."""
  mask = os.umask(0)
  os.umask(mask)
  return 0o666 & ~mask


def _atomic_write(path: pathlib.Path, write) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.chmod(tmp, _file_mode())
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
    return _jsonable(x.tolist())
  if isinstance(x, float) and not math.isfinite(x):
    return None   # JSON has no NaN/inf; null says "undefined" explicitly
  return x


def dumps(obj) -> str:
  """JSON text of `obj` (numpy arrays and scalars included; NaN/inf become null)."""
  return json.dumps(_jsonable(obj), indent=2, sort_keys=True, allow_nan=False)


def save_json(path, obj) -> None:
  text = dumps(obj).encode()
  _atomic_write(pathlib.Path(path), lambda f: f.write(text))


def load_json(path):
  return json.loads(pathlib.Path(path).read_text())


def save_arrays(path, **arrays) -> None:
  _atomic_write(pathlib.Path(path), lambda f: np.savez_compressed(f, **{k: np.asarray(v) for k, v in arrays.items()}))


def save_npy(path, array) -> None:
  """One array as .npy (memory-mappable on reload)."""
  _atomic_write(pathlib.Path(path), lambda f: np.save(f, np.asarray(array)))


def load_arrays(path) -> dict:
  with np.load(path) as data:
    return {k: data[k] for k in data.files}
