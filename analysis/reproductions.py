"""Figures of a reproduction summary (`study train --preset`'s summary.json): a heatmap of
one metric's mean over two parameters, and a Pareto plot of two metrics' means with their
seed intervals."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from analysis import figures
from analysis.stats import pareto_mask


def draw_figures(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    draw = {"heatmap": heatmap, "pareto": pareto}
    return [draw[f["kind"]](summary, f, out_dir) for f in summary["figures"]]


def heatmap(summary: dict[str, Any], spec: dict[str, str], out_dir: Path) -> Path:
    """One metric's mean over seeds across two parameters (the report's degeneracy map is
    drawn by the same `figures.heatmap`)."""
    x, y, metric = spec["x"], spec["y"], spec["metric"]
    cells = {
        (v["resolved"][x], v["resolved"][y]): v["metrics"][metric]["mean"]
        for v in summary["variants"]
    }
    xs, ys = sorted({k[0] for k in cells}), sorted({k[1] for k in cells})
    grid = [[cells.get((a, b), math.nan) for a in xs] for b in ys]
    n = len(summary["seeds"])
    title = f"{metric}, mean of {n} seeds, {summary['epochs']} epochs"
    figure = figures.heatmap(grid, xs, ys, x, y, title)
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
    figure = figures.new_figure(5.0, 3.6)
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
