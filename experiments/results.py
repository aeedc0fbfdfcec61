"""The results tables, generated from the runs' own summaries, never typed.

  python -m ksurrogate_experiments.results add WORKDIR     # copy WORKDIR/summary.json into results/
  python -m ksurrogate_experiments.results render          # write RESULTS.md and the docs' tables
  python -m ksurrogate_experiments.results check           # exit 1 if any is stale

`results/<experiment>-<config>.json` is a run's summary.json (less its absolute file paths) with the
provenance the driver records (command, commit, machine, load, date). RESULTS.md holds every
family's scores with intervals and every standard comparison's verdict, each run headed by its
command, commit, machine and date; the README's headline table (between the two `results:headline`
markers) is one row per problem and score of the kernel against its linear counterpart, and the
regmix table of docs/experiments.md (between the `results:curve` markers) is the stored regmix
run's learning curve; a
summary's `learning_curve` block is also in RESULTS.md in full. A test renders them again and
fails when any differs from what is committed, so a figure in them is always one a run produced.
"""
import json
import pathlib
import sys
from typing import Mapping, Optional, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "results"
def markers(block: str) -> tuple:
  """The markdown comments a generated block sits between."""
  return f"<!-- results:{block} begin -->", f"<!-- results:{block} end -->"


BEGIN, END = markers("headline")
# docs/experiments.md's regmix table: (stored run, problem, families shown, paired differences shown)
README_CURVE = ("regmix-default", "regmix", ("kernel", "linear", "linear_pairwise", "lightgbm"),
                ("kernel-linear", "kernel-linear_pairwise", "kernel-lightgbm"))
NAMES = {"lds": "held-out LDS", "normalized_error": "normalized error", "loo_pearson": "LOO Pearson",
         "loo_spearman": "LOO Spearman", "swap_pearson": "swap Pearson", "swap_spearman": "swap Spearman",
         "loo_finetune_pearson": "fine-tune LOO Pearson", "loo_finetune_spearman": "fine-tune LOO Spearman",
         "spearman": "Spearman"}
HEADLINE_PAIR = ("kernel_exact", "linear_exact")
# the scores a headline row reports, in order; the first two a summary has are shown
HEADLINE_SCORES = ("loo_pearson", "swap_pearson", "spearman", "lds")


def _name(key: str) -> str:
  for suffix, said in (("_mean_target", " (mean target)"), ("_of_ceiling", " / ceiling"),
                       ("_pooled", " (pooled)"), ("_magnitude_error", " magnitude error")):
    if key.endswith(suffix):
      return _name(key[: -len(suffix)]) + said
  return NAMES.get(key, key.replace("_", " "))


def _num(v) -> str:
  return "–" if v is None else f"{v:.3f}"


def _interval(scores: Mapping, key: str) -> str:
  lo_hi = scores.get(f"{key}_ci95")
  value = _num(scores.get(key))
  if not lo_hi or None in lo_hi:
    return value
  return f"{value} [{_num(lo_hi[0])}, {_num(lo_hi[1])}]"


def score_keys(scores: Mapping) -> list:
  """The scalar scores of one family that carry an interval, in the summary's order."""
  return [k for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
          and f"{k}_ci95" in scores]


def load(results_dir: pathlib.Path) -> dict:
  """{name: summary} of every results/*.json, by name."""
  out = {}
  for path in sorted(pathlib.Path(results_dir).glob("*.json")):
    summary = json.loads(path.read_text())
    if "provenance" not in summary:
      raise ValueError(f"{path}: has no provenance (command, commit, machine, date); add it again from its workdir "
                       f"with `python -m ksurrogate_experiments.results add`")
    out[path.stem] = summary
  return out


def _heading(name: str, summary: Mapping) -> list:
  p = summary["provenance"]
  m = p["machine"]
  commit = (p["commit"] or "not a git checkout")[:10] + (" (with local changes)" if p.get("dirty") else "")
  computed = [t.get("seconds", 0.0) for t in summary.get("timing", []) if t.get("status") == "computed"]
  phases = f"; phases computed in this run: {sum(computed) / 60:.1f} min" if computed else ""
  return [f"## {name}", "",
          f"`{p['command']}`", "",
          f"commit {commit}, ksurrogate {p.get('version')}; {p['date']}; {m['cpu']}, {m['cores']} cores, "
          f"{m['memory_gib']} GiB, {m['accelerator']}, load {m['load']} at the end{phases}", ""]


def render_run(name: str, summary: Mapping) -> str:
  """One run's section of RESULTS.md: per problem, every family's scores with 95 % intervals, the
  truth's ceiling where measured, and the verdicts of the standard comparisons."""
  lines = _heading(name, summary)
  for problem, fams in summary.get("datasets", {}).items():
    keys = []
    for scores in fams.values():
      keys += [k for k in score_keys(scores) if k not in keys]
    lines += [f"### {problem}", "", "| family | " + " | ".join(_name(k) for k in keys) + " |",
              "|---|" + "---|" * len(keys)]
    ceiling = summary.get("ceiling", {}).get(problem) or {}
    if any(ceiling.get(k) is not None for k in keys):
      lines.append("| *ceiling (truth vs its repeat)* | " + " | ".join(_interval(ceiling, k) if k in ceiling else ""
                                                                        for k in keys) + " |")
    for family, scores in fams.items():
      lines.append(f"| {family} | " + " | ".join(_interval(scores, k) if k in scores else "" for k in keys) + " |")
    comps = summary.get("comparisons", {}).get(problem, {})
    if comps:
      lines += ["", "| comparison | score | difference [95 % CI] | verdict |", "|---|---|---|---|"]
      for pair, diff in comps.items():
        for k in [k[: -len("_verdict")] for k in diff if k.endswith("_verdict")]:
          lines.append(f"| {pair.replace('-', ' − ')} | {_name(k)} | {_interval(diff, k)} | {diff[f'{k}_verdict']} |")
    lines.append("")
  lines += _curve_sections(summary)
  return "\n".join(lines)


def _x100(row: Optional[Mapping], key: str = "spearman") -> str:
  """A learning-curve cell as the experiment prints it: x100, one decimal, ± its s.e."""
  if not row or row.get(key) is None:
    return "n/a"
  se = row.get(f"{key}_se")
  return f"{100 * row[key]:.1f}" + ("" if se is None else f" ± {100 * se:.1f}")


def curve_table(curve: Mapping, families: Optional[Sequence[str]] = None,
                pairs: Optional[Sequence[str]] = None) -> list:
  """Markdown rows of a `learning_curve` block (one problem): test Spearman x100 ± s.e. per
  training size of each family in `families` (default all), then the paired differences `pairs`
  (default every one stored) with their verdicts."""
  families = [f for f in (families or curve["families"]) if f in curve["scores"]]
  pairs = [p for p in (curve["comparisons"] if pairs is None else pairs) if p in curve["comparisons"]]
  head = ["runs", *families, *[p.replace("-", " − ") for p in pairs]]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for size in (str(s) for s in curve["sizes"]):
    cells = [_x100(curve["scores"][f].get(size)) for f in families]
    for p in pairs:
      diff = curve["comparisons"][p].get(size)
      cells.append(_x100(diff) + (f" {diff['spearman_verdict']}" if diff and "spearman_verdict" in diff else ""))
    lines.append(f"| {size} | " + " | ".join(cells) + " |")
  return lines


def _curve_sections(summary: Mapping) -> list:
  lines = []
  for problem, curve in summary.get("learning_curve", {}).items():
    lines += [f"### {problem}: learning curve", "",
              f"Test Spearman x100 (mean over targets) ± s.e. by training runs ({curve['redraws']} re-drawn "
              f"training sets, {curve['bootstrap']} bootstrap resamples); differences are paired.", ""]
    lines += curve_table(curve) + [""]
  return lines


def headline_rows(results: Mapping[str, Mapping]) -> list:
  """(run, problem, score, kernel, linear, difference, verdict, ceiling) of the kernel against its
  linear counterpart, for the first two of `HEADLINE_SCORES` each problem has."""
  rows = []
  kernel, linear = HEADLINE_PAIR
  for name, summary in results.items():
    for problem, fams in summary.get("datasets", {}).items():
      if kernel not in fams or linear not in fams:
        continue
      diff = summary.get("comparisons", {}).get(problem, {}).get(f"{kernel}-{linear}", {})
      ceiling = summary.get("ceiling", {}).get(problem) or {}
      for k in [k for k in HEADLINE_SCORES if k in fams[kernel]][:2]:
        rows.append((name, problem, _name(k), _interval(fams[kernel], k), _interval(fams[linear], k),
                     _interval(diff, k) if k in diff else "–", diff.get(f"{k}_verdict", "–"),
                     _interval(ceiling, k) if ceiling.get(k) is not None else "–"))
  return rows


def render_headline(results: Mapping[str, Mapping]) -> str:
  lines = [BEGIN, "| run | problem | score | kernel | linear | kernel − linear | verdict | ceiling |",
           "|---|---|---|---|---|---|---|---|"]
  lines += ["| " + " | ".join(row) + " |" for row in headline_rows(results)]
  lines += ["", "Generated from `results/*.json` by `python -m ksurrogate_experiments.results render` "
            "(95 % intervals; commands, commits and machines in [RESULTS.md](RESULTS.md)).", END]
  return "\n".join(lines)


def render(results: Mapping[str, Mapping]) -> str:
  """RESULTS.md: a contents list, then every run's section."""
  lines = ["# Results", "",
           "Generated by `python -m ksurrogate_experiments.results render` from the summaries in `results/`; "
           "do not edit by hand. Intervals are 95 % (bootstrap over targets and truth repeats, or over the "
           "re-splits, as each summary's `evaluation` block says); a verdict is `wins` or `loses` only where the "
           "paired interval excludes 0.", ""]
  lines += [f"- [{name}](#{name.lower()})" for name in results] + [""]
  lines += [render_run(name, s) for name, s in results.items()]
  return "\n".join(lines).rstrip() + "\n"


def render_curve_block(results: Mapping[str, Mapping]) -> str:
  """docs/experiments.md's learning-curve table (`README_CURVE`), between its markers."""
  run, problem, families, pairs = README_CURVE
  curve = results.get(run, {}).get("learning_curve", {}).get(problem)
  if curve is None:
    raise ValueError(f"docs/experiments.md: its {run} learning-curve table needs results/{run}.json with a "
                     f"learning_curve block for {problem!r}")
  begin, end = markers("curve")
  return "\n".join([begin, *curve_table(curve, families, pairs), "",
                    f"Generated from `results/{run}.json` ({curve['redraws']} re-drawn training sets, "
                    f"{curve['bootstrap']} bootstrap resamples of the test runs).", end])


def splice(readme: str, text: str, block: str = "headline", where: str = "README.md") -> str:
  """Markdown text with its generated `block` replaced by `text` (which carries the markers)."""
  begin, end = markers(block)
  if readme.count(begin) != 1 or readme.count(end) != 1:
    raise ValueError(f"{where}: needs exactly one {begin!r} ... {end!r} block for the {block} table")
  head, rest = readme.split(begin)
  return head + text + rest.split(end, 1)[1]


def rendered_docs(results: Mapping[str, Mapping]) -> dict:
  """{path: text} of every file holding generated tables, as `results` renders them: RESULTS.md,
  the README's headline block, docs/experiments.md's learning-curve block."""
  readme, experiments = ROOT / "README.md", ROOT / "docs" / "experiments.md"
  return {ROOT / "RESULTS.md": render(results),
          readme: splice(readme.read_text(), render_headline(results)),
          experiments: splice(experiments.read_text(), render_curve_block(results), "curve", "docs/experiments.md")}


def add(workdir: pathlib.Path, name: Optional[str] = None, results_dir: pathlib.Path = RESULTS_DIR) -> pathlib.Path:
  """Copies a finished run's summary into `results_dir` as `<name>.json` (default
  `<experiment>-<config>` from its command), without its absolute file paths.

  Args:
    workdir: a run's workdir holding summary.json.
    name: the results row's name.
    results_dir: where the copies live.

  Returns:
    The path written.
  """
  path = pathlib.Path(workdir) / "summary.json"
  if not path.is_file():
    raise ValueError(f"WORKDIR: {path} does not exist; run the experiment to its summary first")
  summary = json.loads(path.read_text())
  if "provenance" not in summary:
    raise ValueError(f"WORKDIR: {path} has no provenance block (written by an older ksurrogate); rerun it")
  if name is None:
    flags = dict(a[2:].split("=", 1) for a in summary["provenance"]["command"].split() if a.startswith("--") and "=" in a)
    name = f"{summary['experiment']}-{flags.get('config', 'default')}"
  summary.pop("files", None)
  results_dir.mkdir(parents=True, exist_ok=True)
  out = results_dir / f"{name}.json"
  out.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
  return out


def main(argv) -> int:
  usage = "usage: python -m ksurrogate_experiments.results {add WORKDIR [NAME] | render | check}"
  if len(argv) < 2 or argv[1] not in ("add", "render", "check") or (argv[1] == "add") != (len(argv) in (3, 4)):
    print(usage, file=sys.stderr)
    return 2
  try:
    if argv[1] == "add":
      print(f"wrote {add(pathlib.Path(argv[2]), argv[3] if len(argv) == 4 else None)}")
      return 0
    want = rendered_docs(load(RESULTS_DIR))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if argv[1] == "check":
    stale = [p.name for p, text in want.items() if not p.is_file() or p.read_text() != text]
    if stale:
      print(f"error: {', '.join(stale)} differ from what results/ renders; run "
            f"`python -m ksurrogate_experiments.results render`", file=sys.stderr)
    return 1 if stale else 0
  for path, text in want.items():
    path.write_text(text)
    print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
