"""The results tables are generated from the runs' summaries: every figure they show is one a
summary holds, each run is cited with its command, commit, machine and date, and a stale table is
caught."""
import dataclasses
import json
import re

import pytest

from ksurrogate.harness import provenance
from ksurrogate_experiments import contract
from ksurrogate_experiments import results


def _summary(lds_kernel=0.61, lds_linear=0.58):
  fam = lambda v: {"lds": v, "lds_ci95": [v - 0.05, v + 0.05], "lds_se": 0.025, "normalized_error": 0.4,
                   "normalized_error_ci95": [0.3, 0.5], "seconds": 1.0}
  return {
      "experiment": "modular", "datasets": {"p": {"kernel_exact": fam(lds_kernel), "linear_exact": fam(lds_linear)}},
      "comparisons": {"p": {"kernel_exact-linear_exact": {"lds": lds_kernel - lds_linear, "lds_ci95": [0.01, 0.05],
                                                          "lds_verdict": "wins"}}},
      "ceiling": {"p": {"lds": 0.9, "lds_ci95": [0.85, 0.95]}},
      "timing": [{"phase": "design", "seconds": 120.0, "status": "computed"}],
      "files": {"summary": "/abs/path/summary.json"},
      "provenance": provenance.describe(["ksurrogate-run", "--experiment=modular", "--config=cpu", "--workdir=/x"]),
  }


def test_provenance_names_the_command_commit_machine_and_date():
  p = provenance.describe(["/some/where/main.py", "--experiment=regmix"])
  assert p["command"] == "ksurrogate-run --experiment=regmix"
  assert set(p) >= {"command", "date", "commit", "dirty", "version", "machine"}
  assert p["machine"]["cores"] >= 1 and p["machine"]["accelerator"].startswith("cpu")
  assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", p["date"])


def test_every_figure_of_the_tables_is_in_the_summary(tmp_path):
  work = tmp_path / "run"
  work.mkdir()
  (work / "summary.json").write_text(json.dumps(_summary()))
  out = results.add(work, results_dir=tmp_path / "results")
  assert out.name == "modular-cpu.json" and "files" not in json.loads(out.read_text())
  loaded = results.load(tmp_path / "results")
  text, headline = results.render(loaded), results.render_headline(loaded)
  assert "`ksurrogate-run --experiment=modular --config=cpu --workdir=/x`" in text
  assert "| kernel_exact | 0.610 [0.560, 0.660] | 0.400 [0.300, 0.500] |" in text
  assert "| *ceiling (truth vs its repeat)* | 0.900 [0.850, 0.950] |" in text
  assert "| kernel_exact − linear_exact | held-out LDS | 0.030 [0.010, 0.050] | wins |" in text
  assert "phases computed in this run: 2.0 min" in text
  assert ("| modular-cpu | p | held-out LDS | 0.610 [0.560, 0.660] | 0.580 [0.530, 0.630] | 0.030 [0.010, 0.050] "
          "| wins | 0.900 [0.850, 0.950] |") in headline
  summary_numbers = {f"{float(n):.3f}" for n in re.findall(r"-?\d+\.\d+", json.dumps(_summary()))}
  for row in [line for line in (text + headline).splitlines() if line.startswith("| ") and "[" in line]:
    assert set(re.findall(r"-?\d\.\d{3}", row)) <= summary_numbers, row


def test_a_summary_without_provenance_or_a_missing_workdir_is_one_line(tmp_path):
  with pytest.raises(ValueError, match=r"^WORKDIR: .* does not exist"):
    results.add(tmp_path / "nope", results_dir=tmp_path / "r")
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / "summary.json").write_text(json.dumps({"experiment": "modular"}))
  with pytest.raises(ValueError, match=r"^WORKDIR: .* has no provenance block"):
    results.add(tmp_path / "old", results_dir=tmp_path / "r")


def test_a_stale_headline_is_caught_and_rendering_replaces_only_the_block():
  readme = f"intro\n{results.BEGIN}\nold table\n{results.END}\nrest\n"
  new = results.splice(readme, results.render_headline({"modular-cpu": _summary()}))
  assert new.startswith("intro\n" + results.BEGIN) and new.endswith(results.END + "\nrest\n")
  assert "old table" not in new and new != readme
  with pytest.raises(ValueError, match=r"^README.md: needs exactly one"):
    results.splice("no markers", "x")


def test_the_committed_tables_are_what_the_committed_runs_render():
  # RESULTS.md and the README's headline block hold only figures of results/*.json: a hand edit,
  # or a run added without rendering again, fails here
  assert results.main(["results", "check"]) == 0


def test_configs_type_no_results_and_help_points_at_the_stored_ones():
  # a figure typed into a config goes stale unseen; --help names the stored run instead
  assert "result" not in {f.name for f in dataclasses.fields(contract.Variant)}
  text = contract.describe()
  assert "result:  RESULTS.md, from results/reference-default.json" in text
  stored = {p.stem for p in results.RESULTS_DIR.glob("*.json")}
  assert text.count("result:  none stored in results/") == sum(
      len(contract.load(n).configs) for n in contract.REGISTRY) - len(stored)


def _curve():
  cell = lambda v: {"spearman": v, "spearman_se": 0.002, "spearman_ci95": [v - 0.004, v + 0.004]}
  return {"sizes": [32, 64], "families": ["kernel", "linear"], "baselines": ["linear"], "redraws": 20,
          "bootstrap": 400, "scores": {"kernel": {"32": cell(0.9), "64": cell(0.95)},
                                       "linear": {"32": cell(0.88), "64": cell(0.9)}},
          "comparisons": {"kernel-linear": {"32": {**cell(0.02), "spearman_verdict": "wins"},
                                            "64": {**cell(0.05), "spearman_verdict": "wins"}}}}


def test_a_learning_curve_is_rendered_from_its_summary_and_a_missing_run_is_one_line():
  rows = results.curve_table(_curve())
  assert rows[0] == "| runs | kernel | linear | kernel − linear |"
  assert rows[2:] == ["| 32 | 90.0 ± 0.2 | 88.0 ± 0.2 | 2.0 ± 0.2 wins |", "| 64 | 95.0 ± 0.2 | 90.0 ± 0.2 | 5.0 ± 0.2 wins |"]
  section = results.render_run("regmix-default", {**_summary(), "learning_curve": {"regmix": _curve()}})
  assert "### regmix: learning curve" in section and "| 64 | 95.0 ± 0.2 |" in section
  with pytest.raises(ValueError, match=r"^docs/experiments.md: its regmix-default learning-curve table needs results/"):
    results.render_curve_block({})
