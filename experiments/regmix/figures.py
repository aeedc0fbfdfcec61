"""The regmix experiment's own figures, from the stored phase results (a figure never computes)."""
from __future__ import annotations

import matplotlib
import numpy as np

from ksurrogate.harness import report

STYLE = {False: "-", True: "--"}   # families solid, their declared baselines dashed


def learning_curve(path, curve: dict) -> None:
  """Mean test Spearman (x100) against training runs, one line per family with its 95 % interval
  (bootstrap over test runs and re-drawn training sets) as error bars."""
  fams = [f for f in curve["families"] if f in curve["scores"]]
  colors = matplotlib.colormaps["tab20"](np.arange(len(fams)) % 20)
  fig, axes = report.subplots(1, 2, figsize=(12.5, 4.8), gridspec_kw={"width_ratios": [1.0, 1.0]})
  for ax, zoom in zip(axes, (False, True)):
    for i, f in enumerate(fams):
      rows = curve["scores"][f]
      sizes = sorted(int(s) for s in rows)          # a stored summary sorts its keys as strings
      mean = np.array([100 * rows[str(s)]["spearman"] for s in sizes])
      ci = np.array([[100 * v for v in (rows[str(s)]["spearman_ci95"] or [rows[str(s)]["spearman"]] * 2)]
                     for s in sizes])
      offset = 1 + 0.012 * (i - len(fams) / 2)        # spread the error bars of one size apart
      ax.errorbar(np.array(sizes) * offset, mean, yerr=[mean - ci[:, 0], ci[:, 1] - mean], capsize=2, lw=1,
                  ls=STYLE[f in curve["baselines"]], marker="o", ms=3, color=colors[i], label=f)
    ax.set_xscale("log", base=2)
    sizes = [int(s) for s in curve["sizes"]]
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set(xlabel="training runs", ylabel="test Spearman x100 (mean of 13 targets)")
    ax.grid(alpha=0.3)
    if zoom:
      top = [100 * curve["scores"][f][str(max(sizes))]["spearman"] for f in fams if str(max(sizes)) in curve["scores"][f]]
      # the families within 5 points of the best at the largest size: a zoom on the worst would be none
      near = [v for v in top if v >= max(top) - 5] if top else []
      ax.set_ylim(min(near) - 5 if near else 80, 100)
      ax.set_title("zoom on the top", fontsize=9)
    else:
      ax.set_title(f"95 % intervals: {curve['bootstrap']} bootstrap resamples of the 256 test runs and of "
                   f"{curve['redraws']} re-drawn training sets", fontsize=8)
  axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
  fig.suptitle("RegMix 1M runs: surrogates of the validation loss, by training runs (solid: kernel families, "
               "dashed: their baselines, linear and LightGBM)", fontsize=10)
  report.save(fig, path)


def active(path, result: dict) -> None:
  """Test Spearman against training runs chosen by posterior variance and at random: the mean
  over seeds with the range of the seeds, and the full pool's value."""
  fig, ax = report.subplots(figsize=(6.5, 4.2))
  sizes = np.asarray(result["sizes"])
  for name, color in (("active", "tab:red"), ("random", "tab:blue")):
    c = 100 * np.asarray(result["curves"][name])
    ax.plot(sizes, c.mean(0), color=color, marker="o", ms=3, label=f"{name} (mean of {len(c)} seeds)")
    ax.fill_between(sizes, c.min(0), c.max(0), color=color, alpha=0.15, label=f"{name}: range over seeds")
  ax.axhline(100 * result["full_pool_spearman"], color="k", lw=0.8, ls="--",
             label=f"all {sizes[-1]} runs: {100 * result['full_pool_spearman']:.1f}")
  ax.set(xlabel="training runs", ylabel="test Spearman x100 (kernel)",
         title="choosing runs by the kernel's posterior variance vs at random")
  ax.title.set_fontsize(9)
  lo = 100 * min(np.min(result["curves"]["active"]), np.min(result["curves"]["random"]))
  ax.set_ylim(max(lo - 1, 0), 100)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="lower right")
  report.save(fig, path)


def mixtures(path, result: dict, domains) -> None:
  """The selected mixtures (bars per domain) beside the best measured test run's mixture."""
  rows = {f"best measured test run (loss {result['best_measured']['test']['loss']:.3f})":
          result["best_measured"]["test"]["mixture"]}
  for name, sel in result["selected"].items():
    rows[f"{name} (predicted {sel['predicted']:.3f})"] = sel["mixture"]
  width = 0.8 / len(rows)
  fig, ax = report.subplots(figsize=(12.0, 4.2))
  colors = matplotlib.colormaps["tab10"](np.arange(len(rows)) % 10)
  for i, (label, mix) in enumerate(rows.items()):
    ax.bar(np.arange(len(domains)) + (i - (len(rows) - 1) / 2) * width, mix, width, label=label, color=colors[i])
  ax.set_xticks(np.arange(len(domains)), domains, rotation=40, ha="right", fontsize=8)
  ax.set(ylabel="proportion", xlabel="Pile domain")
  ax.set_title(f"mixtures selected for the {result['target']} validation loss", fontsize=9)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
  report.save(fig, path)
