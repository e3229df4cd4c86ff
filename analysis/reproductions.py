"""Figures of a reproduction summary (`study train --preset`'s summary.json): a heatmap of
one metric's mean over two parameters, and a Pareto plot of two metrics' means with their
seed intervals."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from analysis.stats import pareto_mask


def draw_figures(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    draw = {"heatmap": heatmap, "pareto": pareto}
    return [draw[f["kind"]](summary, f, out_dir) for f in summary["figures"]]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def heatmap(summary: dict[str, Any], spec: dict[str, str], out_dir: Path) -> Path:
    x, y, metric = spec["x"], spec["y"], spec["metric"]
    cells = {
        (v["resolved"][x], v["resolved"][y]): v["metrics"][metric]["mean"]
        for v in summary["variants"]
    }
    xs, ys = sorted({k[0] for k in cells}), sorted({k[1] for k in cells})
    grid = [[cells.get((a, b), math.nan) for a in xs] for b in ys]
    figure = _figure(1.2 + 0.9 * len(xs), 1.0 + 0.7 * len(ys))
    axes = figure.add_subplot()
    image = axes.imshow(grid, origin="lower", cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for j, row in enumerate(grid):
        for i, value in enumerate(row):
            text = "–" if not math.isfinite(value) else f"{value:.2f}"
            axes.text(
                i,
                j,
                text,
                ha="center",
                va="center",
                color="white" if value < 0.6 else "black",
                fontsize=9,
            )
    axes.set_xticks(range(len(xs)), [str(a) for a in xs])
    axes.set_yticks(range(len(ys)), [str(b) for b in ys])
    axes.set_xlabel(x)
    axes.set_ylabel(y)
    n = len(summary["seeds"])
    axes.set_title(f"{metric}, mean of {n} seeds, {summary['epochs']} epochs", fontsize=9)
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    path = out_dir / f"heatmap-{metric}.png"
    figure.savefig(path)
    return path


def pareto(summary: dict[str, Any], spec: dict[str, str], out_dir: Path) -> Path:
    """Means with seed intervals; the front (both metrics minimised) joined by a line."""
    x, y, label = spec["x"], spec["y"], spec["label"]
    points = []
    for v in summary["variants"]:
        sx, sy = v["metrics"][x], v["metrics"][y]
        points.append((sx, sy, v["resolved"].get(label)))
    figure = _figure(5.0, 3.6)
    axes = figure.add_subplot()
    for sx, sy, tag in points:
        axes.errorbar(
            sx["mean"],
            sy["mean"],
            xerr=_half_widths(sx),
            yerr=_half_widths(sy),
            fmt="o",
            capsize=3,
        )
        axes.annotate(
            f"{label}={tag}",
            (sx["mean"], sy["mean"]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    means = np.array([(p[0]["mean"], p[1]["mean"]) for p in points])
    front = sorted(map(tuple, means[pareto_mask(means, ["min", "min"])]))
    axes.plot(*zip(*front, strict=True), "k--", lw=0.8, label="Pareto front")
    axes.set_xlabel(f"{x} (lower is better)")
    axes.set_ylabel(f"{y} (lower is better)")
    axes.legend(fontsize=8)
    axes.set_title(f"mean and 95% interval over {len(summary['seeds'])} seeds", fontsize=9)
    figure.tight_layout()
    path = out_dir / f"pareto-{x}-{y}.png"
    figure.savefig(path)
    return path


def _half_widths(stat: dict[str, float]) -> list[list[float]] | None:
    if not (math.isfinite(stat["low"]) and math.isfinite(stat["high"])):
        return None
    return [[stat["mean"] - stat["low"]], [stat["high"] - stat["mean"]]]
