"""The figures of a study, each a function of plain data that returns a matplotlib Figure:
the report saves them, the notebook shows them, and a reproduction draws its heatmap with
the same `heatmap` as the report's degeneracy map. No pyplot state: every figure has its
own canvas, so drawing is safe in a server or a thread."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.stats import BudgetBand, pareto_mask


def new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def heatmap(
    values: Sequence[Sequence[float]],
    xs: Sequence[object],
    ys: Sequence[object],
    x_label: str,
    y_label: str,
    title: str,
    counts: Sequence[Sequence[int]] | None = None,
    vmin: float = 0.0,
    vmax: float = 1.0,
):
    """A grid of values (rows follow `ys`, columns `xs`; NaN is an empty cell) with each
    cell's value written in it, and its count of runs beneath when `counts` is given."""
    grid = np.array(values, dtype=float)
    figure = new_figure(1.6 + 1.0 * len(xs), 1.2 + 0.75 * len(ys))
    axes = figure.add_subplot()
    image = axes.imshow(grid, origin="lower", cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    middle = vmin + 0.6 * (vmax - vmin)
    for j, row in enumerate(grid):
        for i, value in enumerate(row):
            text = "–" if not math.isfinite(value) else f"{value:.2f}"
            if counts is not None and math.isfinite(value):
                text += f"\nn={int(counts[j][i])}"
            colour = "white" if math.isfinite(value) and value < middle else "black"
            axes.text(i, j, text, ha="center", va="center", color=colour, fontsize=8)
    axes.set_xticks(range(len(xs)), [str(x) for x in xs], fontsize=8)
    axes.set_yticks(range(len(ys)), [str(y) for y in ys], fontsize=8)
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    return figure


def budget_figure(band: BudgetBand, expected: np.ndarray, metric: str, mode: str):
    """Best-so-far against trials (as run, and the median and 95% band over orderings) with
    the expected best of k random configurations."""
    figure = new_figure(5.2, 3.6)
    axes = figure.add_subplot()
    if len(band.trials):
        axes.fill_between(
            band.trials, band.low, band.high, color="tab:blue", alpha=0.2, label="95% of orderings"
        )
        axes.plot(band.trials, band.median, color="tab:blue", label="median over orderings")
        axes.plot(band.trials, band.observed, "k.-", ms=4, lw=0.8, label="as the study ran")
        axes.plot(band.trials, expected, "--", color="tab:red", label="expected best of k")
    axes.set_xlabel("trials (k)")
    axes.set_ylabel(f"best {metric} so far ({mode})")
    axes.legend(fontsize=7)
    figure.tight_layout()
    return figure


def seed_figure(seeds: pd.DataFrame, metric: str, mode: str):
    """Each re-run config's seeds (dots), mean and 95% bootstrap interval, best robust
    score at the top."""
    figure = new_figure(5.6, 0.9 + 0.32 * max(len(seeds), 1))
    axes = figure.add_subplot()
    for y, (_, row) in enumerate(seeds.iloc[::-1].iterrows()):
        if math.isfinite(row["low"]):
            axes.plot([row["low"], row["high"]], [y, y], color="tab:blue", lw=2)
        axes.plot(row["values"], [y] * len(row["values"]), "k.", ms=4, alpha=0.6)
        axes.plot([row["mean"]], [y], "o", color="tab:red", ms=5)
    axes.set_yticks(range(len(seeds)), list(seeds["variant"].iloc[::-1]), fontsize=7)
    axes.set_xlabel(f"{metric} ({mode}): seeds, mean, 95% bootstrap interval")
    figure.tight_layout()
    return figure


def slice_figure(
    done: pd.DataFrame,
    params: list[str],
    objectives: list[tuple[str, str]],
    log_params: set[str],
    seeds: pd.DataFrame | None = None,
    seed_rows: pd.DataFrame | None = None,
    seed_bands: bool = False,
):
    """Each objective against each searched parameter (columns of `done` named by
    `params`); with `seed_bands` (trials with seed replicas), each trial's seed mean with
    its 95% interval over seeds (the M_lower / M_upper columns) as an error bar; with seed
    re-runs, each re-run config's mean and interval in red at its parameter value
    (`seed_rows`: one row per variant, holding its parameter values)."""
    from matplotlib.ticker import NullFormatter

    from analysis.records import stat_metric

    figure = new_figure(3.2 * len(params), 2.8 * len(objectives))
    axes_grid = figure.subplots(len(objectives), len(params), squeeze=False)
    for r, (metric, mode) in enumerate(objectives):
        for c, column in enumerate(params):
            axes = axes_grid[r][c]
            x = done[column]
            numeric = pd.api.types.is_numeric_dtype(x)
            lower, upper = stat_metric(metric, "lower"), stat_metric(metric, "upper")
            if seed_bands and lower in done and upper in done:
                _seed_bands(
                    axes, x if numeric else x.astype(str), done[metric], done[lower], done[upper]
                )
            axes.scatter(x if numeric else x.astype(str), done[metric], s=14, alpha=0.7)
            if seeds is not None and seed_rows is not None and r == 0:
                for _, row in seeds.iterrows():
                    value = seed_rows.loc[row["variant"], column]
                    if not math.isfinite(row["low"]):
                        continue
                    axes.errorbar(
                        [value if numeric else str(value)],
                        [row["mean"]],
                        yerr=[[row["mean"] - row["low"]], [row["high"] - row["mean"]]],
                        fmt="o",
                        color="tab:red",
                        ms=4,
                        capsize=3,
                    )
            if numeric and column in log_params:
                axes.set_xscale("log")
                axes.xaxis.set_minor_formatter(NullFormatter())
            axes.set_xlabel(column.split(".", 1)[-1])
            if c == 0:
                axes.set_ylabel(f"{metric} ({mode})")
    figure.tight_layout()
    return figure


def _seed_bands(axes, x: pd.Series, mean: pd.Series, low: pd.Series, high: pd.Series) -> None:
    """Each trial's interval over its seeds, a thin bar behind its mean's dot."""
    values = pd.DataFrame({"x": x, "mean": mean, "low": low, "high": high})
    values = values[np.isfinite(values[["mean", "low", "high"]].to_numpy(float)).all(axis=1)]
    if values.empty:
        return
    below = np.clip(values["mean"] - values["low"], 0.0, None)
    above = np.clip(values["high"] - values["mean"], 0.0, None)
    axes.errorbar(
        values["x"],
        values["mean"],
        yerr=[below, above],
        fmt="none",
        ecolor="tab:blue",
        alpha=0.35,
        lw=1,
    )


def search_luck_figure(table: pd.DataFrame):
    """The config-against-seed share across the search (analysis.robustness.search_luck)
    against epoch with its 95% interval, one line per metric."""
    figure = new_figure(5.2, 3.4)
    axes = figure.add_subplot()
    for metric, rows in table.groupby("metric", sort=False):
        rows = rows.sort_values("epoch")
        shown = rows[np.isfinite(rows["config_share"].to_numpy(float))]
        if shown.empty:
            continue
        line = axes.plot(shown["epoch"], shown["config_share"], "o-", ms=4, label=metric)[0]
        axes.fill_between(
            shown["epoch"].to_numpy(float),
            shown["low"].to_numpy(float),
            shown["high"].to_numpy(float),
            color=line.get_color(),
            alpha=0.2,
        )
    axes.set_ylim(-0.02, 1.02)
    axes.set_xticks(sorted(table["epoch"].unique()))
    axes.set_xlabel("epoch (the study's rungs)")
    axes.set_ylabel("config share of variance (ICC)")
    if axes.lines:
        axes.legend(fontsize=7)
    figure.tight_layout()
    return figure


def pareto_figure(values: np.ndarray, objectives: list[tuple[str, str]]):
    """Two objectives of the finished trials, the non-dominated ones joined."""
    (m1, d1), (m2, d2) = objectives
    front = pareto_mask(values, [d1, d2])
    figure = new_figure(4.5, 3.6)
    axes = figure.add_subplot()
    axes.scatter(values[~front, 0], values[~front, 1], s=14, color="tab:gray", label="dominated")
    order = np.argsort(values[front, 0])
    axes.plot(
        values[front, 0][order],
        values[front, 1][order],
        "o-",
        color="tab:red",
        ms=5,
        label="Pareto front",
    )
    axes.set_xlabel(f"{m1} ({d1})")
    axes.set_ylabel(f"{m2} ({d2})")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure
