"""Plots of training runs for reports: loss curves from fast-reid's ``metrics.json`` and bar
charts of retrieval metrics. Matplotlib with the Agg backend (no display needed)."""
from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .io import atomic_open  # noqa: E402

__all__ = ["read_metrics", "plot_loss_curves", "plot_metric_bars"]


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a fast-reid ``metrics.json`` (one JSON object per line), in file order.

    Raises ValueError naming the file and line when a line is not JSON."""
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON record ({e.msg})") from e
    return records


def _save(fig, out_png: str | os.PathLike) -> None:
    with atomic_open(out_png, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_loss_curves(runs: Mapping[str, str | os.PathLike], out_png: str | os.PathLike,
                     title: str = "training losses") -> list[str]:
    """One panel per run: every ``loss*`` series and ``total_loss`` against the iteration.

    Args:
        runs: label -> path of that run's ``metrics.json``.
    Returns:
        the sorted names of the loss series that were plotted (union over runs).
    """
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), squeeze=False)
    plotted: set[str] = set()
    for ax, (label, path) in zip(axes[0], runs.items()):
        records = [r for r in read_metrics(path) if "iteration" in r]
        names = sorted({k for r in records for k in r if k.startswith("loss") or k == "total_loss"})
        for name in names:
            pts = [(r["iteration"], r[name]) for r in records if name in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name,
                    linewidth=2.2 if name == "total_loss" else 1.2)
        plotted.update(names)
        ax.set_title(label)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if names:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, out_png)
    return sorted(plotted)


def plot_metric_bars(results: Mapping[str, Mapping[str, float]], metrics: Sequence[str],
                     out_png: str | os.PathLike, title: str = "retrieval", errors:
                     Mapping[str, Mapping[str, float]] | None = None) -> None:
    """Grouped bars: one group per metric, one bar per run (``results[run][metric]``, percent),
    with optional error bars (``errors[run][metric]``, e.g. the std over seeds)."""
    runs = list(results)
    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(metrics), 3.6))
    for i, run in enumerate(runs):
        xs = [m + (i - (len(runs) - 1) / 2) * width for m in range(len(metrics))]
        ys = [results[run][k] for k in metrics]
        yerr = [errors[run][k] for k in metrics] if errors else None
        bars = ax.bar(xs, ys, width, yerr=yerr, capsize=3, label=run)
        for b, y, e in zip(bars, ys, yerr or [0.0] * len(ys)):  # the label sits above the error bar
            ax.annotate(f"{y:.1f}", (b.get_x() + b.get_width() / 2, y + e), xytext=(0, 1),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(metrics)), list(metrics))
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)  # room for the value labels of bars near 100
    ax.set_title(title)
    # below the axes, so that it never hides a bar or its label
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    _save(fig, out_png)
