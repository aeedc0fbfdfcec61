"""Config views that record what a phase reads: a phase's cache key is the part of the config it
read, and a stored phase is checked against the current config field by field."""
from __future__ import annotations

import json
from typing import Optional

from ksurrogate.harness import store


def canonical(value):
  """A config value as it reads back from JSON (tuples become lists, numpy scalars plain)."""
  return json.loads(store.dumps(value))


def _is_config(value) -> bool:
  return hasattr(value, "to_dict") and hasattr(value, "keys")


class ConfigView:
  """Read-only view of a (nested) ConfigDict that records each leaf it hands out, by dotted path."""

  def __init__(self, config, reads: dict, path: str = ""):
    object.__setattr__(self, "_config", config)
    object.__setattr__(self, "_reads", reads)
    object.__setattr__(self, "_path", path)

  def _child(self, name):
    value = self._config[name]
    full = f"{self._path}.{name}" if self._path else name
    if _is_config(value):
      return ConfigView(value, self._reads, full)
    self._reads[full] = canonical(value)
    return value

  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    try:
      return self._child(name)
    except KeyError:
      raise AttributeError(f"config: no field {name!r} in {self._path or 'the config'}") from None

  def __getitem__(self, name):
    return self._child(name)

  def __contains__(self, name):
    return name in self._config

  def __setattr__(self, name, value):
    raise AttributeError(f"config: phases read the config, they never change it (tried to set {name!r})")

  def get(self, name, default=None):
    return self._child(name) if name in self._config else default

  def keys(self):
    return self._config.keys()

  def to_dict(self):
    """The whole sub-tree (recorded as read in full)."""
    value = self._config.to_dict()
    self._reads[self._path or "<config>"] = canonical(value)
    return value


def _lookup(config, path: str):
  if path == "<config>":
    return config.to_dict()
  node = config
  for part in path.split("."):
    if not _is_config(node) or part not in node:
      raise KeyError(path)
    node = node[part]
  return node.to_dict() if _is_config(node) else node


USE_ANOTHER = "use a new --workdir (or the stored settings)"
_RENAMED = ("use a new --workdir: a workdir made by a version with other config field names cannot be reused "
            "(the field was renamed or removed)")


def difference(config, reads: dict) -> Optional[str]:
  """What differs between `config` and the recorded reads of a stored phase.

  Args:
    config: the current config (a ConfigDict).
    reads: {dotted path: value} a stored phase read.

  Returns:
    'path=stored when stored, now now; what to do' for the read to report (a field the config no
    longer has first: then no setting of this config reproduces the stored phase), else None.
  """
  changed = None
  for path, stored in sorted(reads.items()):
    try:
      now = canonical(_lookup(config, path))
    except KeyError:
      return f"{path}={stored!r} when stored, a field this config does not have; {_RENAMED}"
    if now != stored and changed is None:
      changed = f"{path}={stored!r} when stored, {now!r} now; {USE_ANOTHER}"
  return changed
