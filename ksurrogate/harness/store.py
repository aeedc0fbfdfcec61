"""Run storage: every write is atomic (temp file + rename), so an interrupted run never leaves a
half-written summary or array file behind, and existing results are only replaced whole.

A write that fails for want of space or permission raises `StorageError`, whose message is one
line naming the path and what to free or fix; `storage_error` makes one from any such failure
(an OSError, or the errors orbax/tensorstore raise with the OS error code in their text).
"""
from __future__ import annotations

import errno
import json
import math
import os
import pathlib
import re
import shutil
import tempfile
from typing import Optional

import numpy as np


class StorageError(ValueError):
  """A write failed for want of space or permission (one-line message: the path and the fix).
  Nothing stored before it is lost: a rerun of the same command resumes."""


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)
_RESUME = "then rerun the same command: finished phases are kept"


def _existing(path: pathlib.Path) -> pathlib.Path:
  while not path.exists() and path != path.parent:
    path = path.parent
  return path


def _inside(path: pathlib.Path, directory) -> bool:
  path, directory = os.path.abspath(path), os.path.abspath(directory)
  return os.path.commonpath([path, directory]) == directory


def _size(n: int) -> str:
  for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= scale:
      return f"{n / scale:.1f} {unit}"
  return f"{n} B"


def _mount_point(path: pathlib.Path) -> pathlib.Path:
  """The top of the filesystem that holds `path` (what has to be freed)."""
  path = _existing(path).resolve()
  device = path.stat().st_dev
  while path != path.parent and path.parent.stat().st_dev == device:
    path = path.parent
  return path


def storage_message(path, code: int) -> str:
  """The one line a failed write of `path` with OS error `code` (ENOSPC, EDQUOT, EACCES, EPERM, EROFS) gets.

  Args:
    path: the file or directory whose write failed.
    code: the errno.

  Returns:
    The message, starting "workdir: ".
  """
  path = pathlib.Path(path)
  if code in _NO_SPACE:
    try:
      where = _mount_point(path)
      usage = shutil.disk_usage(where)
      room = f"{_size(usage.free)} free of {_size(usage.total)} on {where}"
    except OSError:
      room = "free space unknown"
    what = "disk quota exceeded" if code == errno.EDQUOT else "no space left on device"
    return f"workdir: {what} writing {path} ({room}); free space there or use another --workdir, {_RESUME}"
  if code == errno.EROFS:
    return (f"workdir: {path} is on a read-only filesystem; remount it read-write or use another --workdir, {_RESUME}")
  target = _not_writable(path)
  return (f"workdir: permission denied writing {path}; make {target} writable by this user "
          f"(chmod u+w {target}) or use another --workdir, {_RESUME}")


def _not_writable(path: pathlib.Path) -> pathlib.Path:
  """What to make writable: the file itself when it is read-only, else the nearest directory on
  the way up that this user cannot write (creating or removing an entry needs the directory)."""
  if path.is_file() and not os.access(path, os.W_OK):
    return path
  start = _existing(path if path.is_dir() else path.parent)
  for d in (start, *start.parents):
    if not os.access(d, os.W_OK | os.X_OK):
      return d
  return start


_OS_CODE = re.compile(r"os_error_code='?(\d+)")
_TS_PATH = re.compile(r'(?:Failed writing|Error opening|local file): "([^"]+)"')


def storage_error(exc: BaseException, path=None, within=None, name_path: bool = False) -> Optional[StorageError]:
  """A StorageError for `exc` (or an exception it was raised from) when it is a failed write for
  want of space or permission, else None. `path` names the target when the error does not (or
  always, with name_path: what was being stored rather than a file deep inside a checkpoint).
  With `within`, a permission error on a path outside that directory is not taken for a failed
  write (it may be an input that cannot be read) and gets None.

  Args:
    exc: the exception caught.
    path: the target to name when the error names none (or always, with name_path).
    within: a directory permission errors must lie inside to count, or None.
    name_path: name `path` rather than the file the error names.

  Returns:
    A `StorageError`, or None when `exc` and its causes hold no such failure.
  """
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, StorageError):
      return exc
    code, where = None, None
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE + _NO_PERMISSION:
      code, where = exc.errno, exc.filename
    elif isinstance(exc, (ValueError, RuntimeError)):   # tensorstore (orbax) reports OS errors in its text
      m = _OS_CODE.search(str(exc))
      if m and int(m.group(1)) in _NO_SPACE + _NO_PERMISSION:
        code = int(m.group(1))
        found = _TS_PATH.search(str(exc))
        where = found.group(1) if found else None
    if code is not None:
      target = pathlib.Path((path if name_path and path else where) or path or ".")
      if within is not None and code in _NO_PERMISSION and code != errno.EROFS and not _inside(target, within):
        return None
      return StorageError(storage_message(target, code))
    exc = exc.__cause__ or exc.__context__
  return None


def _file_mode() -> int:
  """0o666 less the process umask: what open() would give (mkstemp's temp files are 0o600)."""
  mask = os.umask(0)
  os.umask(mask)
  return 0o666 & ~mask


def _atomic_write(path: pathlib.Path, write) -> None:
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  except OSError as e:
    raise (storage_error(e, path) or e) from None
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.chmod(tmp, _file_mode())
    os.replace(tmp, path)
  except BaseException as e:
    pathlib.Path(tmp).unlink(missing_ok=True)
    failure = storage_error(e, path) if isinstance(e, Exception) else None
    if failure is not None:
      raise failure from None
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
  """JSON text of `obj` (numpy arrays and scalars included; NaN/inf become null).

  Args:
    obj: dicts, lists, tuples, numbers, strings, numpy arrays and scalars (dict keys become str).

  Returns:
    Indented JSON with sorted keys.
  """
  return json.dumps(_jsonable(obj), indent=2, sort_keys=True, allow_nan=False)


def save_json(path, obj) -> None:
  """Writes `obj` as JSON (`dumps`) to `path` atomically.

  Args:
    path: the file.
    obj: what `dumps` takes.

  Raises:
    StorageError: when the write fails for want of space or permission.
  """
  text = dumps(obj).encode()
  _atomic_write(pathlib.Path(path), lambda f: f.write(text))


def load_json(path):
  """The JSON value stored at `path`.

  Args:
    path: the file.

  Returns:
    The decoded value (stored NaN / inf read back as None).
  """
  return json.loads(pathlib.Path(path).read_text())


def save_bytes(path, data: bytes) -> None:
  """Writes `data` to `path` atomically (a reader sees the old file or the whole new one).

  Args:
    path: the file.
    data: the bytes.

  Raises:
    StorageError: when the write fails for want of space or permission.
  """
  _atomic_write(pathlib.Path(path), lambda f: f.write(data))


def save_arrays(path, **arrays) -> None:
  """Writes named arrays to `path` as one compressed .npz, atomically.

  Args:
    path: the file.
    **arrays: name=array (anything `np.asarray` takes).

  Raises:
    StorageError: when the write fails for want of space or permission.
  """
  _atomic_write(pathlib.Path(path), lambda f: np.savez_compressed(f, **{k: np.asarray(v) for k, v in arrays.items()}))


def save_npy(path, array) -> None:
  """One array as .npy (memory-mappable on reload).

  Args:
    path: the file.
    array: anything `np.asarray` takes.

  Raises:
    StorageError: when the write fails for want of space or permission.
  """
  _atomic_write(pathlib.Path(path), lambda f: np.save(f, np.asarray(array)))


def load_arrays(path) -> dict:
  """The arrays of an .npz file, read into memory.

  Args:
    path: the file.

  Returns:
    {name: numpy array}.
  """
  with np.load(path) as data:
    return {k: data[k] for k in data.files}
