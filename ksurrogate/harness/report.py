"""Plots and console tables for a finished attribution run.

Figures are drawn with matplotlib's object-oriented API (`matplotlib.figure.Figure`, saved through
its own canvas), never through pyplot: no backend is selected and no global state is touched, so
importing or using this module leaves the user's matplotlib setup as it was.
"""
from __future__ import annotations

import pathlib
import textwrap

import jax
import matplotlib.figure
import matplotlib.ticker
import numpy as np


def subplots(rows: int = 1, cols: int = 1, *, figsize, **kwargs):
  """(figure, axes) like `pyplot.subplots`, on a standalone `Figure` (no pyplot, no backend).

  Args:
    rows: subplot rows.
    cols: subplot columns.
    figsize: (width, height) in inches.
    **kwargs: passed to `Figure.subplots` (e.g. squeeze=False).

  Returns:
    (Figure, an Axes or an array of them).
  """
  fig = matplotlib.figure.Figure(figsize=figsize)
  return fig, fig.subplots(rows, cols, **kwargs)


def _grid(n: int, width: float = 3.2, height: float = 3.0, max_cols: int = 4):
  cols = min(max_cols, n)
  rows = -(-n // cols)
  fig, axes = subplots(rows, cols, figsize=(width * cols, height * rows + 0.5), squeeze=False)
  for ax in axes.ravel()[n:]:
    ax.axis("off")
  return fig, axes.ravel()[:n]


def _plain_axes(ax):
  # Offsets ("1e-3 + ...") collide with axis labels; tick labels without an offset never do.
  for axis in (ax.xaxis, ax.yaxis):
    formatter = axis.get_major_formatter()
    if isinstance(formatter, matplotlib.ticker.ScalarFormatter):
      formatter.set_useOffset(False)


def score_text(v) -> str:
  """A score for a title or a table: 3 decimals, "n/a" when it is absent (undefined on the data);
  a (mean, standard error) pair as "mean ± s.e." (the s.e. left out where it is absent).

  Args:
    v: a float, None, or a (mean, se) pair of floats or None.

  Returns:
    The text.
  """
  if isinstance(v, tuple):
    mean, se = v
    return score_text(mean) if se is None or mean is None else f"{mean:.3f} ± {se:.3f}"
  return "n/a" if v is None else f"{v:.3f}"


def score_intervals(path, scores: dict, ceiling: dict, title: str, *, keys: list) -> None:
  """One panel per score key (lds, loo_pearson, ...): every method's mean with its 95 % interval
  (`<key>_ci95`) as an error bar, and the ground truth's ceiling with its interval as a band where
  the summary has one. Methods without the score are left out of its panel.

  Args:
    path: the image file written.
    scores: {method: {key: mean, key_ci95: [lo, hi], ...}}.
    ceiling: {key: ceiling, key_ci95: [lo, hi]} (keys may be missing).
    title: the figure title's start.
    keys: the score keys, one panel each (empty: ["lds"]).
  """
  keys = keys or ["lds"]
  fig, axes = subplots(1, len(keys), figsize=(4.6 * len(keys), 0.28 * len(scores) + 1.8), squeeze=False)
  for ax, key in zip(axes[0], keys):
    names = [m for m, s in scores.items() if s.get(key) is not None]
    y = np.arange(len(names))
    mean = np.array([scores[m][key] for m in names], np.float64)
    ci = [scores[m].get(f"{key}_ci95") or [scores[m][key]] * 2 for m in names]
    err = np.abs(np.array(ci, np.float64).reshape(-1, 2).T - mean) if names else None
    ax.errorbar(mean, y, xerr=err, fmt="o", ms=3, capsize=2, lw=1)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    top, band = ceiling.get(key), ceiling.get(f"{key}_ci95")
    if top is not None:
      ax.axvline(top, color="grey", lw=1, ls="--", label="ceiling")
      if band:
        ax.axvspan(*band, color="grey", alpha=0.15, label="ceiling 95 % interval")
      # above the axes: inside, it covered the last method's point wherever that sat near the ceiling
      ax.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), borderaxespad=0.2, ncol=2, frameon=False)
    ax.set_xlabel(f"{key} (mean, 95 % interval)", fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    _plain_axes(ax)
  fig.suptitle(f"{title}: scores with 95 % intervals", fontsize=10)
  save(fig, path)


def predicted_vs_true(path, preds: dict, true, title: str, *, scores: dict | None = None,
                      outcome_name: str = "outcome", max_points: int = 4000, seed: int = 0,
                      resplits: int = 0) -> None:
  """Predicted vs true outcome on held-out (subset, target) pairs, one panel per method, each
  titled with its scores as the summary table names them (`scores[method] = {name: value or
  (mean, s.e.)}`, None: n/a) (a random sample of at most `max_points` pairs is drawn, the same
  pairs for every method). The points are the declared split's; with `resplits` the scores are
  means ± s.e. over that many re-splits.

  Args:
    path: the image file written.
    preds: {method: predicted outcomes [m, T]} (any shape matching `true`).
    true: the real outcomes.
    title: the figure title's start.
    scores: {method: {name: value or (mean, se)}} shown in each panel's title.
    outcome_name: the axes' name of the outcome.
    max_points: the most pairs drawn.
    seed: the seed of the drawn pairs.
    resplits: the number of re-splits the scores are means over (0: none), for the title.
  """
  t = np.asarray(true).ravel()
  keep = np.arange(t.size)
  if t.size > max_points:
    keep = np.sort(np.random.default_rng(seed).choice(t.size, max_points, replace=False))
  names = list(preds)   # the summary table's order
  fig, axes = _grid(len(names))
  lo, hi = np.percentile(t, [0.5, 99.5])
  for ax, name in zip(axes, names):
    p = np.asarray(preds[name]).ravel()
    ax.scatter(t[keep], p[keep], s=3, alpha=0.35)
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
    score = "".join(f"\n{k} = {score_text(v)}" for k, v in (scores or {}).get(name, {}).items())
    ax.set(xlabel=f"true {outcome_name}", ylabel=f"predicted {outcome_name}", title=f"{name}{score}")
    ax.title.set_fontsize(9)
    _plain_axes(ax)
  axes[0].legend(fontsize=7, loc="upper left")
  shown = f"{len(keep)} of {t.size}" if len(keep) < t.size else f"all {t.size}"
  splits = f"; points: the declared split, scores: mean ± s.e. over {resplits} re-splits" if resplits else ""
  fig.suptitle(f"{title}: held-out subsets ({shown} subset-target pairs{splits})", fontsize=10)
  save(fig, path)


def power_of_ten(values) -> tuple[int, str]:
  """(power, label suffix) that put small or large values on a readable axis: values / 10**power,
  with " (x 1e<power>)" in the axis label, rather than an offset or multiplier drawn over the axes
  where it crowds the labels. Power 0 (no suffix) for values of ordinary size.

  Args:
    values: an array of numbers (non-finite ones ignored).

  Returns:
    (power int, suffix str).
  """
  values = np.asarray(values, np.float64)
  finite = values[np.isfinite(values)]
  peak = float(np.abs(finite).max()) if finite.size else 0.0
  power = int(np.floor(np.log10(peak))) if peak > 0 and (peak < 1e-2 or peak >= 1e4) else 0
  return power, (f" (x 1e{power})" if power else "")


REMOVAL = {"subsets": ("1", ""),
           "simplex": ("u", "u: the uniform mixture; -e_j: weight j to 0, the rest renormalized"),
           "weights": ("1", "1: every weight 1; -e_j: weight j to 0")}


def top_tasks(path, loo_KxT, title: str, top: int = 15, labels=None, *, higher_is_better: bool = False,
              outcome_name: str = "target loss", task_noun: str = "task", domain: str = "subsets") -> None:
  """Bar chart of the tasks with the largest predicted leave-one-out effect on the mean target,
  coloured by whether the task helps the target (removing it makes the outcome worse). `domain`
  (`ksurrogate.inputs`) says what removing means: from the full set, the uniform mixture or unit
  weights.

  Args:
    path: the image file written.
    loo_KxT: [K, T] predicted leave-one-out effects.
    title: the title's first line.
    top: the most tasks drawn.
    labels: K task names, or None for "<task_noun> <i>".
    higher_is_better: whether the outcome is a score (a helping task then has a negative effect).
    outcome_name: the outcome's name in the axis label.
    task_noun: what a task is called.
    domain: "subsets", "simplex" or "weights".
  """
  effect = np.asarray(loo_KxT).mean(axis=1)          # g(1 - e_k) - g(1)
  helps = effect < 0 if higher_is_better else effect > 0
  power, unit = power_of_ten(effect)
  effect = effect / 10.0 ** power
  order = np.argsort(-np.abs(effect))[:top][::-1]
  fig, ax = subplots(figsize=(6.2, 0.3 * len(order) + 1.9))
  colors = np.where(helps[order], "tab:green", "tab:red")
  ax.barh(range(len(order)), effect[order], color=colors)
  names = [str(labels[i]) if labels is not None else f"{task_noun} {i}" for i in order]
  ax.set_yticks(range(len(order)), names, fontsize=7)
  ax.axvline(0, color="k", lw=0.6)
  # The colours are explained under the axis (a legend inside would cover bars).
  where = {"subsets": "", "simplex": " from the uniform mixture (the rest renormalized)",
           "weights": " (its weight 1 to 0)"}[domain]
  ax.set_xlabel(textwrap.fill(f"predicted change of mean {outcome_name} when the {task_noun} is removed{where}{unit}",
                              60)
                + f"\n(green: the {task_noun} helps the target, red: it hurts)", fontsize=8)
  shown = f"the {len(order)} of {len(effect)} {task_noun}s with the largest |effect|" if len(order) < len(effect) \
      else f"all {len(effect)} {task_noun}s"
  ax.set_title(f"{title}\n{shown}", fontsize=9)
  _plain_axes(ax)
  save(fig, path)


def loo_scatter(path, loos: dict, loo_true, title: str, *, scores: dict | None = None,
                outcome_name: str = "target loss") -> None:
  """Real vs predicted leave-one-out effect of each task on the mean target, one panel per method.
  Each panel names two scores: `loo_pearson` (the table's: Pearson per target, averaged) and the
  Pearson of the plotted points (mean target), which can differ a lot.

  Args:
    path: the image file written.
    loos: {method: predicted LOO [K, T]}.
    loo_true: [K, T] real LOO effects.
    title: the figure title's start.
    scores: {method: loo_pearson value or (mean, se)}, or None.
    outcome_name: the outcome's name in the title.
  """
  names = list(loos)   # the summary table's order
  fig, axes = _grid(len(names))
  t = np.asarray(loo_true).mean(axis=1)
  for ax, name in zip(axes, names):
    p = np.asarray(loos[name]).mean(axis=1)
    r = np.corrcoef(p, t)[0, 1] if np.std(p) > 0 and np.std(t) > 0 else float("nan")
    head = f"loo_pearson = {score_text(scores[name])}\n" if scores and name in scores else ""
    ax.scatter(t, p, s=10)
    ax.set_title(f"{name}\n{head}loo_pearson_mean_target (plotted) = {r:.3f}", fontsize=8)
    ax.set(xlabel="real LOO effect", ylabel="predicted LOO effect")
    _plain_axes(ax)
  fig.suptitle(f"{title}: leave-one-out effect on the mean {outcome_name}", fontsize=10)
  save(fig, path)


def curves(path, named_curves: dict, title: str, ylabel: str = "training loss", *, log_scale: bool = True,
           xlabel: str = "step") -> None:
  """Curves over steps; a log y axis (when asked) only where the values span a decade or more:
  over a narrower range it shows few, crowded tick labels and no more than a linear axis.

  Args:
    path: the image file written.
    named_curves: {name: values [steps]}.
    title: the title.
    ylabel: the y axis label.
    log_scale: allow a log y axis.
    xlabel: the x axis label.
  """
  fig, ax = subplots(figsize=(5.5, 3.8))
  values = []
  for name, c in named_curves.items():
    c = np.asarray(c, np.float64)
    ax.plot(c, label=name, lw=1)
    values.append(c[np.isfinite(c)])
  values = np.concatenate(values) if values else np.zeros(0)
  log = log_scale and values.size and values.min() > 0 and values.max() / values.min() >= 10
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title, yscale="log" if log else "linear")
  ax.title.set_fontsize(9)
  if not log:
    _plain_axes(ax)
  ax.legend(fontsize=7)
  save(fig, path)


def selection_bars(path, table: dict, title: str, *, ylabel: str = "return") -> None:
  """Grouped bars: per target (group) the mean return of each method's chosen set, with the s.d.
  over evaluation seeds as error bars. `table[target][method] = {"return", "return_std"}`.

  Args:
    path: the image file written.
    table: as above; every target holds the same methods.
    title: the title.
    ylabel: the y axis label.
  """
  targets = list(table)
  methods = list(next(iter(table.values())))
  width = 0.8 / len(methods)
  fig, ax = subplots(figsize=(max(6.0, 1.1 * len(targets) + 2) + 2.2, 4.2))
  # tab20: up to 20 methods without a repeated colour (the default cycle repeats after 10)
  colors = matplotlib.colormaps["tab20"](np.arange(len(methods)) % 20)
  for i, m in enumerate(methods):
    mean = [table[t][m]["return"] for t in targets]
    std = [table[t][m]["return_std"] for t in targets]
    ax.bar(np.arange(len(targets)) + (i - (len(methods) - 1) / 2) * width, mean, width, yerr=std, capsize=2,
           label=m, color=colors[i])
  ax.set_xticks(np.arange(len(targets)), targets, rotation=30, ha="right", fontsize=8)
  ax.set(ylabel=ylabel, xlabel="target objective")
  ax.set_title(title, fontsize=9)
  # beside the axes: below them it covered the x-axis label
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
  save(fig, path)


def interaction_heatmap(path, inter_KxKxT, title: str, *, labels=None, outcome_name: str = "target loss",
                        task_noun: str = "task", domain: str = "subsets") -> None:
  """Pairwise interactions I_jk on the mean target (the diagonal is undefined and left blank),
  read from the point `domain` implies (`REMOVAL`).

  Args:
    path: the image file written.
    inter_KxKxT: [K, K, T] interactions.
    title: the title's first line.
    labels: K task names, or None for ids.
    outcome_name: the outcome's name in the colour bar label.
    task_noun: what a task is called.
    domain: "subsets", "simplex" or "weights".
  """
  mat = np.asarray(inter_KxKxT, np.float64).mean(axis=2)
  K = mat.shape[0]
  mat[np.arange(K), np.arange(K)] = np.nan
  power, unit = power_of_ten(mat)
  mat = mat / 10.0 ** power
  v = np.nanmax(np.abs(mat)) if np.isfinite(mat).any() else 1.0
  v = v if v > 0 else 1.0
  fig, ax = subplots(figsize=(6.0, 5.2))
  im = ax.imshow(mat, cmap="RdBu_r", vmin=-v, vmax=v)
  cbar = fig.colorbar(im, ax=ax, shrink=0.8)
  cbar.formatter.set_useOffset(False)
  at, meaning = REMOVAL[domain]
  cbar.set_label(f"g({at}) - g({at}-e_j) - g({at}-e_k) + g({at}-e_j-e_k)\n(mean {outcome_name}){unit}"
                 + (f"\n{meaning}" if meaning else ""), fontsize=7)
  step = max(1, K // 25)
  ticks = np.arange(0, K, step)
  names = [str(labels[i]) if labels is not None else str(i) for i in ticks]
  ax.set_xticks(ticks, names, fontsize=6, rotation=90)
  ax.set_yticks(ticks, names, fontsize=6)
  ax.set(xlabel=f"{task_noun} k", ylabel=f"{task_noun} j")
  ax.set_title(f"{title}\npairwise interactions" + (f" (one {task_noun} in {step} labelled)" if step > 1 else ""),
               fontsize=9)
  save(fig, path)


def save(fig, path) -> None:
  """Writes a figure (folders made as needed); long tick labels are never clipped. A `Figure` made
  without pyplot is freed with its last reference: nothing to close. In a group of processes
  (jax.distributed) process 0 alone writes: the others draw the same figure at the same path.

  Args:
    fig: the `Figure`.
    path: the image file (its format from the suffix).
  """
  if jax.process_index() != 0:
    return
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  # tight_layout packs the panels' own (multi-line) titles up to the top edge: keep a strip for
  # the figure's title, or it overprints the first row's.
  top = 1 - 0.45 / fig.get_figheight() if fig.get_suptitle() else 1
  fig.tight_layout(rect=(0, 0, 1, top))
  fig.savefig(path, dpi=110, bbox_inches="tight")


def table(rows: list[dict], columns: list[str]) -> str:
  """Plain fixed-width table for the console.

  Args:
    rows: dicts of cell values (floats and (mean, se) pairs through `score_text`, the rest str()).
    columns: the column keys, in order (a row without one gets a blank cell).

  Returns:
    The table's text: a header line, a rule, one line per row.
  """
  def fmt(v):
    return score_text(v) if v is None or isinstance(v, (float, tuple)) else str(v)
  cells = [[fmt(r[c]) if c in r else "" for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
  line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
  return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])
