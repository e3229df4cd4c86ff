"""How much is luck across a search whose trials trained seed replicas (`--seeds S`), on
studies constructed where the answer is known: written into a real MLflow store the way
the writers write them (the parent run's tags and params, each trial's run with its
per-seed metric histories, one step per epoch), with ASHA-like stops.

At each epoch e a metric's values over the trials that reached e are drawn, then scaled
so that their one-way analysis of variance by trial gives exactly a seed variance sigma**2
and a config variance a**2 (`exact_design`): the config's share there (the intraclass
correlation) is a**2 / (a**2 + sigma**2) by construction, and the RNG only decides which
trial gets which value. The epochs' means differ by more than any two configs do, so
pooling epochs would count that difference as seed noise; epochs that are no rung have a
config effect no rung has, so a reader that strayed off the rungs would show."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sweep_helpers import sqlite_store

from analysis import records
from analysis.records import StudyRecord, TrialConfig
from analysis.seeds import summarize
from analysis.stats import variance_share

EPOCHS = 20
GRACE = 2
RUNGS = [2, 6, 18, 20]  # ASHA's milestones for max_t 20, grace 2, factor 3; then 20
SEEDS = 4
FIRST_SEED = 0
# Trial i stops after STOPS[i] epochs: 30 at the first rung, 12 at the second, 18 run on.
STOPS = [2] * 30 + [6] * 12 + [EPOCHS] * 18
REACHED = {rung: sum(stop >= rung for stop in STOPS) for rung in RUNGS}  # 60, 30, 18, 18
OBJECTIVES = ["swap_acc:max", "recon_mse:min"]
METRICS = ["swap_acc", "recon_mse"]


def epoch_mean(epoch: int) -> float:
    return 0.05 * epoch


OFF_RUNG = (1.0, 0.001)  # (config effect a, seed noise sigma) at epochs that are no rung


def effects(at_rungs: dict[int, tuple[float, float]]) -> dict[int, tuple[float, float]]:
    return {e: at_rungs.get(e, OFF_RUNG) for e in range(1, EPOCHS + 1)}


# Per metric: epoch -> (a, sigma).
SEEDS_DOMINATE = {m: effects(dict.fromkeys(RUNGS, (0.0, 0.05))) for m in METRICS}
CONFIGS_DOMINATE = {
    "swap_acc": effects(dict.fromkeys(RUNGS, (0.2, 0.01))),
    # The config matters at epochs 6 and 20 only: each rung must be read on its own.
    "recon_mse": effects({e: ((0.2 if e in (6, 20) else 0.0), 0.05) for e in RUNGS}),
}
DIVERGED = ("t0059", FIRST_SEED + 1, 20)  # (trial, seed, epoch): NaN, as a diverged seed


def exact_design(
    sizes: list[int], effect: float, sigma: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Random values in groups of `sizes` (a trial's finite seeds), scaled so that their
    one-way ANOVA (analysis.stats.variance_share) has within mean square sigma**2 and
    between mean square n0 * effect**2 + sigma**2: seed variance sigma**2, config variance
    effect**2, config share effect**2 / (effect**2 + sigma**2), exactly."""
    n = np.array(sizes, dtype=float)
    k, total = len(sizes), n.sum()
    n0 = (total - (n**2).sum() / total) / (k - 1)
    within = [d - d.mean() for d in (rng.standard_normal(size) for size in sizes)]
    scale = sigma * math.sqrt((total - k) / sum((d**2).sum() for d in within))
    means = rng.standard_normal(k)
    means -= (n * means).sum() / total
    means *= math.sqrt((n0 * effect**2 + sigma**2) * (k - 1) / (n * means**2).sum())
    return [mean + scale * d for mean, d in zip(means, within, strict=True)]


def icc(effect: float, sigma: float) -> float:
    return effect**2 / (effect**2 + sigma**2)


# --- writing studies as the writers do --------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    return sqlite_store(tmp_path_factory.mktemp("search-luck-store"))


def write_study(
    store, name: str, effects: dict, seeds: int, rng_seed: int, diverged: tuple = ()
) -> str:
    """A study of len(STOPS) trials with `seeds` replicas each, trial i logging every epoch
    up to STOPS[i] (ASHA's stops) as study/tracking.py does; the seed `diverged` names
    (trial, seed, epoch) reports NaN. Returns the parent run id."""
    from study.tracking import result_metrics

    client = store.client
    rng = np.random.default_rng(rng_seed)
    parent = client.create_run(
        store.experiment,
        run_name=name,
        tags=records.study_tags(name, "mlvae", "digits", OBJECTIVES, "test"),
    )
    parent_id = parent.info.run_id
    spec = {
        "name": name,
        "family": "mlvae",
        "epochs": EPOCHS,
        "scheduler": "asha",
        "grace_period": GRACE,
        "seed": FIRST_SEED,
        "seeds": seeds,
        "seed_aggregate": "mean",
    }
    client.log_batch(parent_id, params=records.params_of(spec))
    replica_seeds = list(range(FIRST_SEED, FIRST_SEED + seeds))
    ranges = dict.fromkeys(METRICS, (None, None))
    names = {*METRICS, "diverged"}
    values = drawn_values(effects, replica_seeds, rng, diverged)
    for i, stop in enumerate(STOPS):
        trial_id = f"t{i:04d}"
        run = client.create_run(
            store.experiment,
            run_name=f"{name}-{trial_id}",
            tags=records.trial_tags(parent_id, name, trial_id),
        )
        run_id = run.info.run_id
        settings = {"family": "mlvae", "epochs": EPOCHS, "seed": FIRST_SEED, "seeds": seeds}
        trial = TrialConfig(settings, {"lr": float(10 ** rng.uniform(-4, -2))})
        client.log_batch(run_id, params=records.params_of(trial.to_tune()))
        metrics = []
        for epoch in range(1, stop + 1):
            per_seed = [
                {**{m: values[m, epoch][trial_id][j] for m in METRICS}, "diverged": 0.0}
                for j in range(len(replica_seeds))
            ]
            result = {**summarize(per_seed, replica_seeds, ranges), "epoch": epoch}
            metrics += result_metrics(result, names, epoch)
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start : start + 1000])
        client.set_tag(run_id, records.TAG_TRIAL_STATUS, "TERMINATED")
        client.set_terminated(run_id, "FINISHED")
    client.set_terminated(parent_id, "FINISHED")
    return parent_id


def drawn_values(
    effects: dict, seeds: list[int], rng: np.random.Generator, diverged: tuple
) -> dict[tuple[str, int], dict[str, list[float]]]:
    """(metric, epoch) -> trial id -> each seed's value (NaN for the diverged one)."""
    values = {}
    for epoch in range(1, EPOCHS + 1):
        trials = [f"t{i:04d}" for i, stop in enumerate(STOPS) if stop >= epoch]
        lost = {t: [s for s in seeds if (t, s, epoch) == diverged] for t in trials}
        for metric in METRICS:
            if len(seeds) < 2:  # a solo study: one run per config, no share to construct
                drawn = [rng.standard_normal(1) for _ in trials]
            else:
                sizes = [len(seeds) - len(lost[t]) for t in trials]
                drawn = exact_design(sizes, *effects[metric][epoch], rng)
            values[metric, epoch] = {}
            for trial, finite in zip(trials, drawn, strict=True):
                finite = iter(epoch_mean(epoch) + finite)
                values[metric, epoch][trial] = [
                    math.nan if s in lost[trial] else next(finite) for s in seeds
                ]
    return values


@pytest.fixture(scope="module")
def seedy(store):
    write_study(store, "seedy", SEEDS_DOMINATE, SEEDS, rng_seed=1)
    return load(store, "seedy")


@pytest.fixture(scope="module")
def configy(store):
    write_study(store, "configy", CONFIGS_DOMINATE, SEEDS, rng_seed=2, diverged=DIVERGED)
    return load(store, "configy")


@pytest.fixture(scope="module")
def solo(store):
    write_study(store, "solo", CONFIGS_DOMINATE, 1, rng_seed=3)
    return load(store, "solo")


def load(store, name: str):
    from analysis.report import load_analysis

    return load_analysis(name, store.uri, records.DEFAULT_EXPERIMENT)


def at(found, metric: str, epoch: int) -> pd.Series:
    table = found.search_luck
    row = table[(table["metric"] == metric) & (table["epoch"] == epoch)]
    assert len(row) == 1
    return row.iloc[0]


# --- the rungs ----------------------------------------------------------------------------------
GRID = sorted(
    {(max_t, grace) for max_t in range(1, 31) for grace in range(1, max_t + 1)}
    | {(18, 2), (100, 10), (20, 2), (243, 1), (81, 1), (10, 10), (200, 5)}
)


def test_the_asha_milestones_are_those_of_rays_own_scheduler():
    from ray.tune.schedulers import ASHAScheduler

    for max_t, grace in GRID:
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            metric="m",
            mode="max",
            max_t=max_t,
            grace_period=grace,
            reduction_factor=records.ASHA_REDUCTION_FACTOR,
        )
        rays = sorted(milestone for milestone, _ in scheduler._brackets[0]._rungs)
        assert records.asha_milestones(max_t, grace) == rays, (max_t, grace)


def test_the_study_plan_builds_asha_with_the_rungs_the_analysis_reads():
    from study.plan import _scheduler

    spec = SimpleNamespace(
        scheduler="asha",
        searched_objectives=[("swap_acc", "max")],
        epochs=EPOCHS,
        grace_period=GRACE,
    )
    rays = sorted(milestone for milestone, _ in _scheduler(spec)._brackets[0]._rungs)
    assert rays == [2, 6, 18]
    assert parent_of(epochs=EPOCHS, scheduler="asha", grace_period=GRACE).rungs == RUNGS


def parent_of(**params) -> StudyRecord:
    return StudyRecord("p", "p", "0", "FINISHED", {}, records.mlflow_params(params), {})


@pytest.mark.parametrize(
    ("params", "rungs"),
    [
        ({"epochs": 20, "scheduler": "asha", "grace_period": 2}, [2, 6, 18, 20]),
        ({"epochs": 18, "scheduler": "asha", "grace_period": 2}, [2, 6, 18]),
        ({"epochs": 100, "scheduler": "asha", "grace_period": 10}, [10, 30, 90, 100]),
        ({"epochs": 5, "scheduler": "asha", "grace_period": 5}, [5]),
        ({"epochs": 3, "scheduler": "asha", "grace_period": 8}, [3]),  # grace capped
        ({"epochs": 20, "scheduler": "none", "grace_period": 2}, [20]),
        ({"epochs": 20}, [20]),
        ({}, []),
    ],
)
def test_a_study_compares_its_trials_at_its_rungs_and_last_epoch(params, rungs):
    assert parent_of(**params).rungs == rungs


# --- the share per rung ---------------------------------------------------------------------------
def test_the_reader_returns_each_seed_at_each_rung_reached(configy):
    from analysis.runs import rung_values

    started = time.perf_counter()
    values = rung_values(configy.study)
    elapsed = time.perf_counter() - started
    assert list(values.columns) == ["trial_id", "seed", "epoch", "metric", "value"]
    assert sorted(values["epoch"].unique()) == RUNGS
    for rung in RUNGS:
        rows = values[values["epoch"] == rung]
        assert rows["trial_id"].nunique() == REACHED[rung]
        assert len(rows) == REACHED[rung] * SEEDS * len(METRICS)
    assert set(values["seed"]) == set(range(FIRST_SEED, FIRST_SEED + SEEDS))
    trial, seed, epoch = DIVERGED
    diverged = values[(values["trial_id"] == trial) & (values["seed"] == seed)]
    assert diverged.set_index(["epoch", "metric"])["value"].isna().groupby(
        "epoch"
    ).all().to_dict() == {
        2: False,
        6: False,
        18: False,
        epoch: True,
    }
    print(f"{len(STOPS) * SEEDS * len(METRICS)} history reads in {elapsed:.2f} s")


def assert_share(row: pd.Series, effect: float, sigma: float) -> None:
    """The figures of a rung constructed with config effect `effect` and seed noise
    `sigma`: exactly its share, its variances, and an interval holding the share."""
    truth = icc(effect, sigma)
    assert row["config_share"] == pytest.approx(truth, abs=1e-9)
    assert row["config_variance"] == pytest.approx(effect**2, abs=1e-12)
    assert row["seed_variance"] == pytest.approx(sigma**2)
    assert row["low"] <= truth <= row["high"]


def test_where_the_seeds_dominate_the_share_is_zero_at_every_rung(seedy):
    assert list(seedy.search_luck[["metric", "epoch"]].itertuples(index=False, name=None)) == [
        (m, e) for m in METRICS for e in RUNGS
    ]
    for metric in METRICS:
        for rung in RUNGS:
            row = at(seedy, metric, rung)
            assert row["trials"] == REACHED[rung] and row["runs"] == REACHED[rung] * SEEDS
            assert row["seeds_per_config"] == SEEDS
            assert_share(row, *SEEDS_DOMINATE[metric][rung])  # 0
            # Informative: the interval leaves out a config-dominated 0.8.
            assert row["low"] == 0.0 < row["high"] < 0.8, (metric, rung)


def test_where_the_configs_dominate_the_share_is_near_one_at_every_rung(configy):
    for rung in RUNGS:
        row = at(configy, "swap_acc", rung)
        assert_share(row, *CONFIGS_DOMINATE["swap_acc"][rung])  # 0.9975
        assert row["low"] > 0.9, rung


def test_each_rung_is_its_own_epoch(configy):
    """recon_mse depends on the config at epochs 6 and 20 only; swap_acc's epochs differ
    by 0.05 per epoch, more than its configs do, so pooling epochs would read that as
    seed noise."""
    for rung in RUNGS:
        effect, sigma = CONFIGS_DOMINATE["recon_mse"][rung]
        row = at(configy, "recon_mse", rung)
        assert_share(row, effect, sigma)  # 0 or 0.94
        if effect == 0.0:
            assert row["low"] == 0.0 and row["high"] < 0.8, rung
        else:
            assert row["low"] > 0.5, rung
    from analysis.runs import rung_values

    values = rung_values(configy.study)
    swap = values[values["metric"] == "swap_acc"]
    # Pooled by (trial, seed) over the rungs, the epochs' difference is the "seed's".
    pooled = variance_share(list(swap["value"]), list(swap["trial_id"]))
    assert pooled.config_share < 0.5 < at(configy, "swap_acc", 20)["low"]


def test_a_diverged_seed_counts_its_trial_but_not_its_value(configy):
    trial, seed, epoch = DIVERGED
    row = at(configy, "swap_acc", epoch)
    assert row["trials"] == REACHED[epoch]
    assert row["runs"] == REACHED[epoch] * SEEDS - 1
    assert row["seeds_per_config"] < SEEDS
    assert_share(row, *CONFIGS_DOMINATE["swap_acc"][epoch])


def test_the_parent_run_records_the_share_at_each_rung_as_its_step(store, configy):
    from analysis.report import record_analysis

    record_analysis(configy)
    parent = configy.study.parent.run_id
    for metric in METRICS:
        for key, column in (
            ("config_share", "config_share"),
            ("config_share_low", "low"),
            ("config_share_high", "high"),
            ("config_variance", "config_variance"),
            ("seed_variance", "seed_variance"),
        ):
            history = store.client.get_metric_history(parent, f"{metric}_search_{key}")
            logged = {m.step: m.value for m in history}
            assert sorted(logged) == RUNGS
            for rung in RUNGS:
                assert logged[rung] == pytest.approx(at(configy, metric, rung)[column])
    run = store.client.get_run(parent)
    # The run's value of each is the last rung's; the figures of before stay at step 0.
    assert run.data.metrics["swap_acc_search_config_share"] == pytest.approx(
        at(configy, "swap_acc", EPOCHS)["config_share"]
    )
    budget = store.client.get_metric_history(parent, "expected_best_swap_acc_of_1")
    assert [m.step for m in budget] == [0]


def test_study_run_records_the_share_without_the_rest_of_the_analysis(store, seedy):
    from analysis.report import record_search_luck

    table = record_search_luck("seedy", store.uri)
    pd.testing.assert_frame_equal(table, seedy.search_luck)
    history = store.client.get_metric_history(
        seedy.study.parent.run_id, "recon_mse_search_config_share_high"
    )
    assert sorted(m.step for m in history) == RUNGS


def test_a_solo_study_reads_no_histories_and_has_no_share(store, solo, monkeypatch):
    from analysis import runs
    from analysis.report import record_search_luck
    from analysis.robustness import search_luck_of

    assert solo.search_luck.empty and solo.stepped_metrics() == []

    def refuse(uri):
        raise AssertionError("a solo study must not read metric histories")

    monkeypatch.setattr(runs.records, "open_client", refuse)
    assert runs.rung_values(solo.study).empty
    assert search_luck_of(solo.study).empty
    monkeypatch.undo()
    assert record_search_luck("solo", store.uri).empty
    parent = store.client.get_run(solo.study.parent.run_id)
    assert not [k for k in parent.data.metrics if "_search_" in k]


# --- the report ---------------------------------------------------------------------------------
def report_of(found, out) -> tuple[list, str]:
    from analysis.report import render_html, render_markdown, report_sections

    out.mkdir()
    sections = report_sections(found, out)
    render_html(found, sections)
    return sections, render_markdown(found, sections)


def test_the_report_shows_the_share_per_rung_for_a_replicated_study(configy, tmp_path):
    sections, markdown = report_of(configy, tmp_path / "report")
    titles = [s.title for s in sections]
    assert "How much is luck across the search" in titles
    part = markdown.split("## How much is luck across the search", 1)[1].split("\n## ", 1)[0]
    assert f"each trial's {SEEDS} seed replicas at the same epoch" in part
    assert "ICC(1)" in part and "ASHA" in part and "quick evaluation" in part
    header, rule, *rows = [line for line in part.splitlines() if line.startswith("|")]
    assert header.split("|")[1:4] == [" metric ", " epoch ", " trials "]
    assert [tuple(r.split("|")[1:3]) for r in rows] == [
        (f" {m} ", f" {e} ") for m in METRICS for e in RUNGS
    ]
    assert (tmp_path / "report" / "search_luck.png").stat().st_size > 5000
    # The sections that read seeds say how.
    seeds = markdown.split("## Seed robustness", 1)[1].split("\n## ", 1)[0]
    assert f"The trials' own {SEEDS} seed replicas are analysed" in seeds
    assert "No seed re-runs yet" not in seeds
    slices = markdown.split("## Slices", 1)[1].split("\n## ", 1)[0]
    assert "seed bands" in slices
    importance = markdown.split("## Hyperparameter importance", 1)[1].split("\n## ", 1)[0]
    assert f"the mean of its {SEEDS} seeds" in importance


def test_the_report_of_a_solo_study_has_no_share_across_the_search(solo, tmp_path):
    sections, markdown = report_of(solo, tmp_path / "report")
    assert "How much is luck across the search" not in markdown
    assert "No seed re-runs yet" in markdown
    assert not (tmp_path / "report" / "search_luck.png").exists()
