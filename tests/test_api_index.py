"""docs/api.md's index of the public surface is generated from the docstrings and cannot drift."""
import ksurrogate as ks
from ksurrogate_experiments import api_index


def test_the_committed_index_is_what_the_docstrings_render():
  # a public name added, renamed or re-documented without rendering again fails here
  assert api_index.main(["api_index", "check"]) == 0


def test_every_top_level_name_has_a_row_and_a_changed_docstring_changes_it(monkeypatch):
  block = api_index.render_block()
  for name in ks.__all__:
    assert f"ks.{name}" in block
  monkeypatch.setattr(ks.fit_kernel, "__doc__", "Something else entirely.")
  changed = api_index.render_block()
  assert "Something else entirely." in changed and changed != block


def test_defaults_that_differ_between_processes_print_as_dots():
  def f(a, b=1, *c, d=(1, "x"), e=object(), **g):
    """One line.

    More."""
  assert api_index._signature(f) == "(a, b=1, *c, d=(1, 'x'), e=..., **g)"
  assert api_index._summary(f) == "One line."


def test_bad_usage_is_one_line(capsys):
  assert api_index.main(["api_index", "nonsense"]) == 2
  assert capsys.readouterr().err.count("\n") == 1
