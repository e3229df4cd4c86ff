"""What a trial with S seed replicas reports, and how readers turn it back into seeds.

A trial trained with `--seeds S` evaluates every replica; `summarize` turns the S results
into one flat result (records.py spells the names): each metric's mean over the seeds,
their standard deviation, a 95% bootstrap interval of the mean, and each seed's own
value. `seed_rows` goes the other way for the analysis: one row per seed, shaped like the
rows of seed re-runs, so intervals, the config-vs-seed variance share and the robust-best
treat replicas and re-runs alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from analysis import records

if TYPE_CHECKING:
    import pandas as pd
from analysis.stats import bootstrap_bounds

# The share of diverged replicas, not a mean that one diverged seed makes undefined.
DIVERGED = "diverged"


def summarize(
    per_seed: Sequence[Mapping[str, float]],
    seeds: Sequence[int],
    ranges: Mapping[str, tuple[float | None, float | None]],
) -> dict[str, float]:
    """One result from each seed's: a solo result unchanged; for S > 1 seeds, every key's
    mean and per-seed values, and for the metrics in `ranges` (the family's declared ones)
    also their std and bootstrap interval, clipped to the declared range.

    A mean (and its statistics) is NaN when any seed's value is: a config that diverges
    on one seed in S is not one to pick, and a searcher reads NaN as a failed trial.
    "diverged" is the share of diverged seeds."""
    if len(per_seed) != len(seeds):
        raise ValueError(f"{len(per_seed)} results for {len(seeds)} seeds")
    if len(per_seed) == 1:
        return dict(per_seed[0])
    names = list(per_seed[0])
    values = np.array([[result[name] for result in per_seed] for name in names], dtype=float)
    summary: dict[str, float] = {}
    for name, row in zip(names, values, strict=True):
        finite = bool(np.isfinite(row).all())
        summary[name] = float(row.mean()) if finite or name == DIVERGED else math.nan
        for seed, value in zip(seeds, row, strict=True):
            summary[records.seed_metric(name, seed)] = float(value)
    stated = [i for i, name in enumerate(names) if name in ranges and name != DIVERGED]
    finite_rows = [i for i in stated if np.isfinite(values[i]).all()]
    lows, highs = (
        bootstrap_bounds(values[finite_rows]) if finite_rows else (np.array([]), np.array([]))
    )
    bounds = dict(zip(finite_rows, zip(lows, highs, strict=True), strict=True))
    for i in stated:
        name = names[i]
        low, high = bounds.get(i, (math.nan, math.nan))
        lowest, highest = ranges[name]
        if lowest is not None:
            low = max(low, lowest)
        if highest is not None:
            high = min(high, highest)
        std = float(values[i].std(ddof=1)) if i in bounds else math.nan
        summary[records.stat_metric(name, "std")] = std
        summary[records.stat_metric(name, "lower")] = float(low)
        summary[records.stat_metric(name, "upper")] = float(high)
    return summary


def seeds_of(row: Mapping[str, object]) -> list[int]:
    """The replica seeds a trial row reports per-seed values for (none for a solo trial)."""
    found = {parsed[0] for key in row if (parsed := records.parse_seed_metric(str(key)))}
    return sorted(found)


def seed_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per seed: a solo trial's row as it is; a replicated trial's row once per
    replica seed, its metric columns holding that seed's values and `study.seed` the
    seed. Per-seed and statistic columns are dropped: each row is one seed's run."""
    import pandas as pd

    if trials.empty:
        return trials
    seed_column = records.run_column("seed")
    per_seed_columns = [c for c in trials.columns if records.parse_seed_metric(str(c))]
    stat_columns = [
        c
        for c in trials.columns
        if any(str(c).endswith(f"_{stat}") for stat in records.SEED_STATS)
        and str(c).rsplit("_", 1)[0] in trials.columns
    ]
    plain = trials.drop(columns=per_seed_columns + stat_columns)
    rows = []
    for index, trial in trials.iterrows():
        seeds = seeds_of({c: None for c in per_seed_columns if pd.notna(trial[c])})
        if not seeds:
            rows.append(plain.loc[index])
            continue
        for seed in seeds:
            row = plain.loc[index].copy()
            row[seed_column] = seed
            for column in per_seed_columns:
                parsed = records.parse_seed_metric(str(column))
                if parsed[0] == seed:
                    row[parsed[1]] = trial[column]
            rows.append(row)
    return pd.DataFrame(rows).reset_index(drop=True)


def single_seed_rankings(trials: pd.DataFrame, metric: str, mode: str, by: str) -> pd.DataFrame:
    """What a sweep scoring each config on one seed would have picked, seed by seed, next
    to the ranking by `by` (the seeds' mean `metric`, or its bound): per replica seed, the
    winner by that seed's value alone, where that winner stands by `by` (1 = the same
    winner) and Kendall's tau between the two orders of every trial. `trials`: finished
    trials' rows of a replicated study (one row per trial)."""
    import pandas as pd
    from scipy import stats

    ascending = mode == "min"
    by_order = trials.sort_values(by, ascending=ascending, kind="stable")
    position = {trial: i + 1 for i, trial in enumerate(by_order["trial_id"])}
    rows = []
    for seed in seeds_of({column: None for column in trials.columns}):
        column = records.seed_metric(metric, seed)
        values = trials[["trial_id", column, by]].dropna()
        if len(values) < 2:
            continue
        winner = values.sort_values(column, ascending=ascending, kind="stable").iloc[0]
        tau = stats.kendalltau(values[column], values[by]).statistic
        rows.append(
            {
                "seed": seed,
                "winner": winner["trial_id"],
                f"winner's {metric} at this seed": float(winner[column]),
                f"winner's rank by {by}": position[winner["trial_id"]],
                "kendall_tau": float(tau),
            }
        )
    return pd.DataFrame(rows)
