"""Small statistics shared by the report, the robustness summary and reproductions: numpy
and scipy only, so a reproduction's summary imports neither MLflow nor Ray."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def finite_or_none(value: Any) -> float | None:
    """`value` as a float when it is a finite number (bools are not), else None: what
    every reader of results and metrics means by "has a value"."""
    if isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def mean_interval(
    values: list[float], bounds: tuple[float | None, float | None] = (None, None)
) -> dict[str, float]:
    """Mean of the finite values with a two-sided 95% Student-t interval, clipped to
    `bounds` (a rate stays in [0, 1]); fewer than two values give no interval (NaN ends)."""
    from scipy import stats

    finite = [v for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    mean = sum(finite) / n if n else math.nan
    if n < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "n": n}
    sd = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    lowest, highest = bounds
    low = mean - half if lowest is None else max(mean - half, lowest)
    high = mean + half if highest is None else min(mean + half, highest)
    return {"mean": mean, "low": low, "high": high, "n": n}


def pareto_mask(values: np.ndarray, modes: list[str]) -> np.ndarray:
    """Non-dominated rows of `values` (one column per objective)."""
    signed = np.column_stack(
        [values[:, i] * (-1 if m == "max" else 1) for i, m in enumerate(modes)]
    )
    keep = np.ones(len(signed), dtype=bool)
    for i, row in enumerate(signed):
        dominated = np.all(signed <= row, axis=1) & np.any(signed < row, axis=1)
        keep[i] = not dominated.any()
    return keep
