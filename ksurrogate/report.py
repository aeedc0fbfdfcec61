"""Plots and console tables for a finished attribution run (matplotlib, headless)."""
from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def predicted_vs_true(path, preds: dict, true, title: str) -> None:
  """Scatter of predicted vs true outcome on held-out subsets, one colour per method."""
  fig, ax = plt.subplots(figsize=(4.8, 4.5))
  t = np.asarray(true).ravel()
  for name, p in preds.items():
    ax.scatter(t, np.asarray(p).ravel(), s=3, alpha=0.35, label=name)
  lo, hi = np.percentile(t, [0.5, 99.5])
  ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
  ax.set(xlabel="true outcome", ylabel="predicted outcome", title=title)
  ax.legend(markerscale=4, fontsize=7)
  _save(fig, path)


def top_tasks(path, loo_KxT, title: str, top: int = 15, labels=None) -> None:
  """Bar chart of the tasks with the largest |predicted LOO| on the mean target."""
  score = np.asarray(loo_KxT).mean(axis=1)
  order = np.argsort(-np.abs(score))[:top]
  fig, ax = plt.subplots(figsize=(5.5, 0.28 * len(order) + 1.2))
  ax.barh(range(len(order)), score[order][::-1], color=np.where(score[order][::-1] > 0, "tab:green", "tab:red"))
  names = [str(labels[i]) if labels is not None else f"task {i}" for i in order][::-1]
  ax.set_yticks(range(len(order)), names, fontsize=7)
  ax.set(xlabel="predicted leave-one-out effect on mean target (g(1-e_k) - g(1))", title=title)
  _save(fig, path)


def loo_scatter(path, loos: dict, loo_true, title: str) -> None:
  """Real vs predicted leave-one-out effect on the mean target, one panel per method."""
  names = sorted(loos)
  cols = min(4, len(names))
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
  t = np.asarray(loo_true).mean(axis=1)
  for ax, name in zip(axes.ravel(), names):
    p = np.asarray(loos[name]).mean(axis=1)
    r = np.corrcoef(p, t)[0, 1] if np.std(p) > 0 and np.std(t) > 0 else float("nan")
    ax.scatter(t, p, s=10)
    ax.set(title=f"{name} (r={r:.2f})", xlabel="real LOO", ylabel="predicted")
  for ax in axes.ravel()[len(names):]:
    ax.axis("off")
  fig.suptitle(title)
  _save(fig, path)


def curves(path, named_curves: dict, title: str, ylabel: str = "training loss") -> None:
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name, c in named_curves.items():
    ax.plot(np.asarray(c), label=name, lw=1)
  ax.set(xlabel="step", ylabel=ylabel, title=title, yscale="log")
  ax.legend(fontsize=7)
  _save(fig, path)


def interaction_heatmap(path, inter_KxKxT, title: str) -> None:
  mat = np.asarray(inter_KxKxT).mean(axis=2)
  v = np.abs(mat).max() or 1.0
  fig, ax = plt.subplots(figsize=(5, 4.3))
  im = ax.imshow(mat, cmap="RdBu_r", vmin=-v, vmax=v)
  fig.colorbar(im, ax=ax, shrink=0.8)
  ax.set(xlabel="task k", ylabel="task j", title=title)
  _save(fig, path)


def _save(fig, path) -> None:
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def table(rows: list[dict], columns: list[str]) -> str:
  """Plain fixed-width table for the console."""
  def fmt(v):
    return f"{v:.3f}" if isinstance(v, float) else str(v)
  cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
  line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
  return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])
