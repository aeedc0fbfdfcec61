"""What every experiment's config shares: the variant check, the common fields, applying a variant,
the one range-check vocabulary every experiment's `validate` is written in, and how a field and
its value are written on the command line.

A `validate` is a table of rules, one per field `--help` lists (`check` refuses a config with a
field no rule covers, so a new field cannot slip through unchecked), then the cross-field checks
(`require`) and the machine's memory (`check_memory`), each failure one ValueError line that starts
with the field to change.
"""
from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import shlex
from typing import Any, Callable, Mapping, Optional

import ml_collections
import numpy as np
from ml_collections import config_dict

SEED_MAX = 2 ** 31 - 1000   # seeds are offset by small constants before they become PRNG keys


def base_config(experiment: str, arg: str, variants: dict) -> ml_collections.ConfigDict:
  """A config holding the fields and sections every experiment has, with the same names, once
  `arg` is known to name a variant. Their rules are `SHARED_RULES`."""
  if arg not in variants:
    raise ValueError(f"config: unknown config {arg!r} for experiment {experiment!r}; expected one of {list(variants)}")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.progress = True
  c.smoke_test = False                 # the config only exercises every phase; its numbers mean nothing
  c.normalized_error_threshold = 1e-3  # targets varying less than this are left out of scores
  # A design whose first exact outcomes vary on fewer targets than this cannot measure anything:
  # the run stops right after that phase instead of computing the rest.
  c.min_varying_targets = 2
  # How the driver scores: LDS and normalized error over `resplits` seeded random fit / held-out
  # re-splits of each problem's exact subsets (the declared split's sizes), correlations and
  # ceilings with `bootstrap` resamples (of targets, and of the truth's seeds).
  c.eval = dict(resplits=20, bootstrap=1000)
  # The surrogate families compared: "standard" = every family of ksurrogate.families.standard,
  # or their names (e.g. kernel,linear). cv: CV folds of the tuned ones; num_inducing None:
  # fit_kernel chooses exact or Nystrom KRR by memory, M: Nystrom on M inducing subsets for every
  # fit set larger than M; official_ridge: the released code's fixed ridge.
  c.surrogates = dict(cv=5, num_inducing=optional_int(), official_ridge=1e-2, families=("standard",))
  return c


def apply_variant(c: ml_collections.ConfigDict, variant: dict) -> ml_collections.ConfigDict:
  """Overwrites sections of `c` with a variant's values ("top" holds top-level fields)."""
  for section, values in variant.items():
    (c if section == "top" else c[section]).update(values)
  return c


def optional_int() -> config_dict.FieldReference:
  """A field that is None by default and takes an int or None (`--config.F=64`, `--config.F=None`;
  a plain None would refuse every value but None). `contract.Experiment.parse_config` registers
  the flag parser of its type, `Optional[int]`, with config_flags."""
  return config_dict.placeholder(Optional[int])


# ----------------------------------------------------------------------------------------------
# Range checks.

@dataclasses.dataclass(frozen=True)
class Rule:
  """A check of one field's value: `ok(value)` is True when the value is acceptable; `what`
  completes "must be ..." in the error line; `why(value)`, where given, says more precisely what
  is wrong with a refused value."""
  ok: Callable[[Any], bool]
  what: str
  why: Optional[Callable[[Any], Optional[str]]] = None


def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v) -> bool:
  return (_is_int(v) or isinstance(v, (float, np.floating))) and math.isfinite(float(v))


def _range_text(lo, hi, lo_open=False, hi_open=False) -> str:
  if lo is not None and hi is not None:
    return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
  if lo is not None:
    return f"{'>' if lo_open else '>='} {lo:g}"
  if hi is not None:
    return f"{'<' if hi_open else '<='} {hi:g}"
  return ""


def integer(lo: Optional[int] = 1, hi: Optional[int] = None) -> Rule:
  """An int in [lo, hi] (default: positive)."""
  text = _range_text(lo, hi)
  return Rule(lambda v: _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi),
              f"an integer {text}".strip())


def number(lo: Optional[float] = None, hi: Optional[float] = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Rule:
  """A finite number in the given range (open ends where asked)."""
  def ok(v):
    if not _is_number(v):
      return False
    v = float(v)
    return ((lo is None or (v > lo if lo_open else v >= lo)) and
            (hi is None or (v < hi if hi_open else v <= hi)))
  return Rule(ok, f"a finite number {_range_text(lo, hi, lo_open, hi_open)}".strip())


def positive() -> Rule:
  return number(0.0, lo_open=True)


def fraction() -> Rule:
  """A number in the open interval (0, 1)."""
  return number(0.0, 1.0, lo_open=True, hi_open=True)


def choice(*options) -> Rule:
  return Rule(lambda v: v in options, "one of " + ", ".join(repr(o) for o in options))


def boolean() -> Rule:
  return Rule(lambda v: isinstance(v, (bool, np.bool_)), "True or False")


def optional(rule: Rule) -> Rule:
  """None, or what `rule` accepts."""
  return Rule(lambda v: v is None or rule.ok(v), f"None or {rule.what}")


def sequence(item: Rule, *, min_len: int = 1, max_len: Optional[int] = None, distinct: bool = False) -> Rule:
  """A tuple (or list) of `min_len`..`max_len` items each accepted by `item`."""
  def ok(v):
    if not isinstance(v, (tuple, list)) or len(v) < min_len or (max_len is not None and len(v) > max_len):
      return False
    if distinct and len({repr(x) for x in v}) != len(v):
      return False
    return all(item.ok(x) for x in v)
  def why(v):
    if isinstance(v, (tuple, list)):
      bad = [x for x in v if not item.ok(x)]
      if bad:
        return f"item {bad[0]!r} is not {item.what}"
      if distinct and len({repr(x) for x in v}) != len(v):
        return f"items repeat in {tuple(v)!r}"
    return None
  count = f"{min_len}" if max_len == min_len else f"{min_len}+" if max_len is None else f"{min_len}-{max_len}"
  return Rule(ok, f"a tuple of {count}{' distinct' if distinct else ''} items, each {item.what}", why)


def existing_dir() -> Rule:
  """A directory that exists."""
  def why(v):
    path = pathlib.Path(v).expanduser() if isinstance(v, str) else None
    return None if path is None else "is a file, not a directory" if path.is_file() else "does not exist"
  return Rule(lambda v: isinstance(v, str) and pathlib.Path(v).expanduser().is_dir(), "an existing directory", why)


def file_with_magic(magic: bytes, kind: str, *, allow_empty: bool = False) -> Rule:
  """A readable file whose first bytes are `magic` ("" too, where `allow_empty`: a default is used)."""
  def problem(v) -> Optional[str]:
    if not isinstance(v, str):
      return "not a path"
    if not v:
      return None if allow_empty else "empty"
    try:
      with open(pathlib.Path(v).expanduser(), "rb") as f:
        head = f.read(len(magic))
    except OSError as e:
      return f"cannot be read ({e.strerror or type(e).__name__})"
    return None if head == magic else f"is not a {kind} file (it does not start with {magic!r})"
  return Rule(lambda v: problem(v) is None, f"{'empty (the default) or ' if allow_empty else ''}a readable {kind} file",
              problem)


SHARED_RULES = {
    "seed": integer(0, SEED_MAX),
    "progress": boolean(),
    "smoke_test": boolean(),
    "normalized_error_threshold": number(0.0),
    "min_varying_targets": integer(1),
    "eval.resplits": integer(2),
    "eval.bootstrap": integer(100),
    "surrogates.cv": integer(2),
    "surrogates.num_inducing": optional(integer(1)),
    "surrogates.official_ridge": number(0.0),
    # names checked against ksurrogate.families.standard by contract.Experiment.validate
    "surrogates.families": sequence(Rule(lambda v: isinstance(v, str) and v.isidentifier(), "a family name"),
                                    distinct=True),
}


def fields(config, prefix: str = ""):
  """(dotted path, value) of every leaf of a (nested) ConfigDict, in sorted order."""
  for key in sorted(config.keys()):
    value = config[key]
    path = f"{prefix}{key}"
    if hasattr(value, "keys") and hasattr(value, "to_dict"):
      yield from fields(value, path + ".")
    else:
      yield path, value


def value(config, path: str):
  node = config
  for part in path.split("."):
    node = node[part]
  return node


def check(config, rules: Mapping[str, Rule]) -> None:
  """Checks every field of `config` against its rule; the first failure is a ValueError line
  "FIELD: must be ..., got VALUE". A field without a rule (or a rule without a field) is a bug
  in the experiment, not in the user's settings, and says so."""
  present = dict(fields(config))
  uncovered = sorted(set(present) - set(rules))
  unknown = sorted(set(rules) - set(present))
  if uncovered or unknown:
    raise RuntimeError(f"validate: the range rules do not match the config (fields without a rule: {uncovered}; "
                       f"rules without a field: {unknown})")
  for path, v in present.items():
    rule = rules[path]
    try:
      good = rule.ok(v)
    except (TypeError, ValueError, OverflowError):
      good = False
    if not good:
      detail = rule.why(v) if rule.why else None
      raise ValueError(f"{path}: {v!r} {detail}" if detail else f"{path}: must be {rule.what}, got {v!r}")


def require(condition: bool, field: str, message: str) -> None:
  """A cross-field check: `field: message` when `condition` does not hold."""
  if not condition:
    raise ValueError(f"{field}: {message}")


def machine_memory() -> int:
  """Physical memory of this machine in bytes."""
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def gib(n_bytes: float) -> str:
  return f"{n_bytes / 2 ** 30:.3g} GiB"


def check_memory(estimates: Mapping[str, tuple[float, str]], *, available: Optional[int] = None) -> None:
  """Refuses settings whose largest array cannot fit in memory. `estimates` maps the field that
  sets an array's size to (bytes, what the array is); the first that exceeds the machine's memory
  (or `available`) is one ValueError line with both figures. Where several exceed, the largest is
  named: it is the field to change first (a huge dim also inflates the arrays sized by it)."""
  available = machine_memory() if available is None else available
  over = [(n_bytes, path, what) for path, (n_bytes, what) in estimates.items() if n_bytes > available]
  if over:
    n_bytes, path, what = max(over, key=lambda o: o[0])
    raise ValueError(f"{path}: {what} needs {gib(n_bytes)}, more than this machine's {gib(available)} of memory")


def require_varying(F, threshold: float, minimum: int, *, phase: str, threshold_field: Optional[str]) -> np.ndarray:
  """bool [T]: the targets of F [m, T] whose variance across subsets exceeds `threshold` (the
  field `threshold_field`, or None where the experiment keeps every target that varies at all).
  Raises `driver.Unmeasurable` (one line naming the phase, the count and the fields to change)
  when fewer than `minimum` do: the rest of the run could not measure anything."""
  from ksurrogate import metrics
  from ksurrogate.harness import driver
  keep = metrics.varying_targets(F, threshold)
  if keep.sum() < minimum:
    var = np.var(np.asarray(F, np.float64), axis=0, ddof=1)
    fields_ = " or ".join(f for f in (threshold_field, "min_varying_targets") if f)
    raise driver.Unmeasurable(
        f"{threshold_field or 'min_varying_targets'}: after phase {phase!r} only {int(keep.sum())} of {len(keep)} "
        f"targets vary by more than {threshold:g} across its {len(F)} subsets (largest variance {float(np.max(var)):.3g}; "
        f"min_varying_targets={minimum}); lower {fields_}, or change the design so that outcomes differ")
  return keep


# ----------------------------------------------------------------------------------------------
# Fields on the command line.

def field_type(config, field: str):
  """The declared type of a field (None-valued fields declare theirs as typed placeholders).

  Args:
    config: a ConfigDict.
    field: the field's dotted path, e.g. "train.num_steps".

  Returns:
    The type config_flags parses its overrides as.
  """
  section, _, key = field.rpartition(".")
  node = value(config, section) if section else config
  return node.get_type(key)


def type_name(kind) -> str:
  """How --help and type errors name a field type.

  Args:
    kind: a type, as `field_type` gives it.

  Returns:
    Its name ("int", ...; `Optional[int]` as "int or None").
  """
  if kind == Optional[int]:
    return "int or None"
  return getattr(kind, "__name__", str(kind))


def shown(v, *, quote: bool = True) -> str:
  """A value as it is typed in a shell.

  Args:
    v: a field's value.
    quote: shell-quote it where needed.

  Returns:
    The text (a tuple of plain items comma-separated, a nested one as a literal without spaces).
  """
  if isinstance(v, tuple) and v and all(isinstance(x, (str, int, float)) for x in v):
    text = ",".join(str(x) for x in v)
  elif isinstance(v, tuple):
    text = repr(v).replace(" ", "")
  elif isinstance(v, str):
    text = v
  else:
    return str(v)
  return shlex.quote(text) if quote else text


def tuple_override(field: str, parsed: tuple, default: tuple) -> tuple:
  """A tuple override as config_flags parsed it, with its items of the default's item type.

  config_flags reads a Python literal (`14,17`, `((1,2),)`); bare words (`a,b,c`, `(a,b)`) come
  back as one string, split here.

  Args:
    field: the field's dotted path (for the error).
    parsed: what config_flags parsed.
    default: the field's value before the override (its items' type is the one cast to).

  Returns:
    The tuple. A ValueError "--config.FIELD: expected a tuple like ..." when the items cannot
    take the default's type.
  """
  items = list(parsed)
  if len(items) == 1 and isinstance(items[0], str):
    body = items[0].strip()
    wrapped = body[:1] + body[-1:] in ("()", "[]")
    if wrapped or "," in body:
      items = [item.strip() for item in (body[1:-1] if wrapped else body).split(",") if item.strip()]
  kinds = {type(x) for x in default}
  if len(kinds) != 1:
    return tuple(items)
  (kind,) = kinds
  try:
    out = []
    for item in items:
      if kind in (tuple, list):
        if not isinstance(item, (tuple, list)):
          raise ValueError
        out.append(tuple(item))
      elif kind is int and isinstance(item, (float, bool)):
        raise ValueError
      else:
        out.append(kind(item) if kind in (str, int, float) else item)
  except (TypeError, ValueError):
    plain = not isinstance(default[0], (tuple, list))
    raise ValueError(f"--config.{field}: expected a tuple like {shown(default) if plain else repr(default)}, got "
                     f"{shown(parsed, quote=False)!r}") from None
  return tuple(out)


def one_line_warning(message, category, filename, lineno, line=None) -> str:
  """warnings.formatwarning for the CLI: one line (the default adds the source line below)."""
  del line
  return f"{category.__name__}: {' '.join(str(message).split())} ({pathlib.Path(filename).name}:{lineno})\n"
