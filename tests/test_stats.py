"""The robustness statistics on constructed data, where the right answer is known: seed
intervals that stay in a rate's range, robust-best by the lower confidence bound, the
config-vs-seed variance share (and its interval's coverage), budget curves and the
expected best of k. No Ray, no MLflow server: studies are built as the reader sees them."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis import records
from analysis.records import StudyRecord, param_column, run_column
from analysis.robustness import budget, degeneracy_map, luck, seed_summary
from analysis.runs import StudyRuns
from analysis.stats import (
    best_so_far,
    bootstrap_interval,
    budget_band,
    expected_best_of_k,
    variance_share,
)

RATE = (0.0, 1.0)


def constructed_study(
    name: str, rows: list[dict], metric: str = "swap_acc", mode: str = "max"
) -> StudyRuns:
    """A study as analysis.runs reads it from MLflow: a parent record and trial rows."""
    tags = records.study_tags(name, "mlvae", "digits", [f"{metric}:{mode}"], "test", {metric: RATE})
    parent = StudyRecord("parent", name, "0", "FINISHED", tags, {}, {})
    trials = pd.DataFrame(
        [
            {
                "run_id": f"run{i}",
                "status": "FINISHED",
                "trial_id": f"t{i:03d}",
                "start_time": i,
                **row,
            }
            for i, row in enumerate(rows)
        ]
    )
    return StudyRuns(name, parent, trials)


def reruns(values: dict[str, list[float]], metric: str = "swap_acc") -> list[dict]:
    return [
        {run_column("variant"): variant, run_column("seed"): 1000 + s, metric: v}
        for variant, seeds in values.items()
        for s, v in enumerate(seeds)
    ]


# --- intervals ------------------------------------------------------------------------------
def test_a_rate_near_one_keeps_its_interval_inside_zero_one():
    seeds = [1.0, 0.99, 0.94]  # the kind of swap_acc whose t-interval left [0, 1]
    from scipy import stats

    half = stats.t.ppf(0.975, len(seeds) - 1) * np.std(seeds, ddof=1) / math.sqrt(len(seeds))
    assert np.mean(seeds) + half > 1.0  # the Student-t interval the report used to print
    found = bootstrap_interval(seeds, RATE)
    assert 0.0 <= found.low <= found.mean <= found.high <= 1.0
    assert found.low >= min(seeds) and found.high <= max(seeds)
    assert found.mean == pytest.approx(np.mean(seeds))


def test_an_interval_needs_two_seeds_and_equal_seeds_give_a_point():
    one = bootstrap_interval([0.4])
    assert one.n == 1 and one.mean == 0.4 and math.isnan(one.low) and math.isnan(one.high)
    same = bootstrap_interval([0.5, 0.5, 0.5])
    assert (same.low, same.mean, same.high) == (0.5, 0.5, 0.5)
    assert bootstrap_interval([math.nan, None, 0.3, 0.5]).n == 2  # non-finite values dropped


def test_the_steadier_config_beats_the_one_with_the_luckiest_seed():
    """Config a has the best single seed (0.95) and even the better mean; b is steady. Ranked
    by the lower bound of the seed interval, b is robust-best."""
    study = constructed_study(
        "s-robust", reruns({"a": [0.95, 0.55, 0.62], "b": [0.68, 0.70, 0.69]})
    )
    table = seed_summary(study, "swap_acc", "max")
    assert list(table["variant"]) == ["b", "a"]
    a = table.set_index("variant").loc["a"]
    assert a["mean"] > table.iloc[0]["mean"]  # a's mean is higher, and still it loses
    assert table.iloc[0]["robust_score"] == table.iloc[0]["low"]
    assert all(0 <= row["low"] <= row["high"] <= 1 for _, row in table.iterrows())


def test_when_minimising_the_upper_bound_ranks():
    study = constructed_study(
        "s-robust",
        reruns({"a": [0.010, 0.030, 0.011], "b": [0.016, 0.017, 0.015]}, "recon_mse"),
        metric="recon_mse",
        mode="min",
    )
    table = seed_summary(study, "recon_mse", "min")
    assert list(table["variant"]) == ["b", "a"]  # a has the lowest seed, b the lower bound
    assert table.iloc[0]["robust_score"] == table.iloc[0]["high"]


def test_a_config_with_one_seed_ranks_below_those_with_an_interval():
    study = constructed_study("s-robust", reruns({"lone": [0.99], "pair": [0.5, 0.52]}))
    assert list(seed_summary(study, "swap_acc", "max")["variant"]) == ["pair", "lone"]


# --- how much is luck -----------------------------------------------------------------------
def simulated(config_sd: float, seed_sd: float, configs: int, seeds: int, rng):
    effects = rng.normal(0.0, config_sd, configs)
    groups = np.repeat(np.arange(configs), seeds)
    return effects[groups] + rng.normal(0.0, seed_sd, configs * seeds), groups


def test_when_the_seed_dominates_the_config_share_is_small():
    values, groups = simulated(0.0, 0.1, 12, 5, np.random.default_rng(0))
    share = variance_share(values, groups)
    # The configs do not differ: the interval reaches 0 and the seed holds most variance.
    assert share.low == 0.0 and share.config_share < share.seed_share
    assert share.seed_variance == pytest.approx(0.01, rel=0.5)


def test_when_the_config_dominates_the_config_share_is_large():
    values, groups = simulated(0.2, 0.02, 8, 3, np.random.default_rng(1))
    share = variance_share(values, groups)
    assert share.config_share > 0.9 and share.low > 0.7
    assert share.low <= share.config_share <= share.high <= 1.0


def test_the_config_share_interval_covers_the_truth_about_95_percent_of_the_time():
    """ICC = 0.5 by construction; the F interval must cover it in ~95% of studies."""
    rng = np.random.default_rng(2)
    covered = [
        (found := variance_share(*simulated(1.0, 1.0, 10, 3, rng))).low <= 0.5 <= found.high
        for _ in range(400)
    ]
    assert 0.91 <= np.mean(covered) <= 0.99


def test_the_variance_share_of_a_textbook_balanced_design():
    """Three configs x two seeds, computed by hand: MSB = 8, MSW = 0.5, so the config
    variance is (8 - 0.5) / 2 = 3.75 and ICC = 3.75 / 4.25."""
    share = variance_share([1, 2, 3, 4, 5, 6], ["a", "a", "b", "b", "c", "c"])
    assert share.config_variance == pytest.approx(3.75)
    assert share.seed_variance == pytest.approx(0.5)
    assert share.config_share == pytest.approx(3.75 / 4.25)


def test_no_variance_share_without_two_configs_or_a_repeated_seed():
    assert variance_share([0.1, 0.2], ["a", "a"]) is None
    assert variance_share([0.1, 0.2], ["a", "b"]) is None


def test_luck_reads_the_re_runs_by_variant():
    study = constructed_study("s-robust", reruns({"a": [0.2, 0.21], "b": [0.8, 0.79]}))
    assert luck(study, "swap_acc").config_share > 0.99


# --- budget ---------------------------------------------------------------------------------
def test_expected_best_of_k_matches_random_picks():
    values = [0.1, 0.4, 0.35, 0.9, 0.2, 0.6]
    expected = expected_best_of_k(values, "max")
    assert expected[0] == pytest.approx(np.mean(values))
    rng = np.random.default_rng(3)
    for k in (2, 4):
        picks = rng.choice(values, size=(200_000, k)).max(axis=1)
        assert expected[k - 1] == pytest.approx(picks.mean(), abs=0.005)
    assert np.all(np.diff(expected) >= 0) and expected[-1] < max(values)
    lowest = expected_best_of_k(values, "min")
    assert lowest[0] == pytest.approx(np.mean(values)) and np.all(np.diff(lowest) <= 0)


def test_budget_band_runs_from_a_random_trial_to_the_best_one():
    values = [0.3, 0.1, 0.5, 0.2, 0.45]
    band = budget_band(values, "max")
    assert list(band.observed) == [0.3, 0.3, 0.5, 0.5, 0.5]
    assert np.all(band.low <= band.median) and np.all(band.median <= band.high)
    assert band.low[-1] == band.high[-1] == 0.5  # every ordering ends at the best
    assert band.low[0] == min(values) and band.high[0] == max(values)
    assert list(best_so_far([0.3, math.nan, 0.1], "min")) == [0.3, 0.3, 0.1]


def test_the_budget_follows_the_order_the_trials_started_in():
    rows = [{"swap_acc": v} for v in (0.2, 0.7, 0.4)]
    study = constructed_study("s", rows)
    study.trials["start_time"] = [3, 1, 2]  # ran 0.7, 0.4, 0.2
    assert list(budget(study, "swap_acc", "max").band.observed) == [0.7, 0.7, 0.7]


# --- degeneracy -----------------------------------------------------------------------------
def test_the_degeneracy_map_counts_each_seed_re_run_as_a_run():
    search = constructed_study(
        "s",
        [
            {param_column("a"): a, param_column("b"): b, "degenerate": d, "swap_acc": 0.5}
            for a, b, d in [(1, 10, 1.0), (1, 20, 0.0), (2, 10, 0.0), (2, 20, 0.0)]
        ],
    )
    robust = constructed_study(
        "s-robust",
        [
            {param_column("a"): 1, param_column("b"): 10, "degenerate": d, "swap_acc": 0.5}
            for d in (1.0, 0.0, 1.0)
        ],
    )
    found = degeneracy_map([search, robust], ["a", "b"])
    assert (found.x, found.y) == ("a", "b")
    assert found.runs.loc["10", "1"] == 4 and found.share.loc["10", "1"] == pytest.approx(0.75)
    assert found.runs.loc["20", "2"] == 1 and found.share.loc["20", "2"] == 0.0
    assert json.loads(search.parent.tags[records.TAG_METRIC_RANGES])["swap_acc"] == [0.0, 1.0]
