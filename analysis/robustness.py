"""Seed robustness of re-run configs: mean, spread, confidence interval, robust score."""

from __future__ import annotations

import pandas as pd

from analysis.records import run_column
from analysis.runs import StudyRuns, has_value
from analysis.stats import mean_interval


def robust_summary(robust: StudyRuns, metric: str, mode: str) -> pd.DataFrame:
    """Per variant: n, mean, std, 95% t-interval, and the robust score (mean - std for a
    metric to maximise, mean + std to minimise). Best robust score first."""
    trials = robust.trials
    trials = trials[(trials["status"] == "FINISHED") & has_value(trials[metric])]
    rows = []
    for variant, group in trials.groupby(run_column("variant")):
        values = group[metric].astype(float)
        n, mean = len(values), values.mean()
        std = values.std(ddof=1) if n > 1 else 0.0
        interval = mean_interval(list(values))
        score = mean - std if mode == "max" else mean + std
        rows.append(
            {
                "variant": variant,
                "n": n,
                "mean": mean,
                "std": std,
                "ci95_low": interval["low"],
                "ci95_high": interval["high"],
                "robust_score": score,
                "example_run": group.iloc[0]["run_id"],
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values("robust_score", ascending=(mode == "min")).reset_index(drop=True)
