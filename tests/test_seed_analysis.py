"""Trials with seed replicas (`--seeds S`) as the analysis reads them, on constructed data
(no Ray, no MLflow): a replicated trial's row becomes one row per seed, a robustness study
of replicated trials gives the figures of the same seeds run as a trial each, a sweep that
searched the pessimistic bound is ranked by it, and an export carries the seeds."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import yaml

from analysis import records
from analysis.export import export_config, robust_best_config
from analysis.records import StudyRecord, param_column, run_column
from analysis.report import ranking_note
from analysis.robustness import degeneracy_map, luck, seed_summary, variant_params
from analysis.runs import StudyRuns, ranked
from analysis.seeds import seed_rows, summarize

RANGES = {"swap_acc": (0.0, 1.0), "degenerate": (0.0, 1.0)}
FIRST_SEED = 1000

# Per variant: its parameters and each seed's (swap_acc, degenerate, diverged). top2's second
# seed diverged: its metrics are NaN, which its own run and its replica record alike.
VARIANTS = {
    "top1": (
        {"lr": 0.001, "kl_style_weight": 1.0},
        [(0.90, 0.0, 0.0), (0.80, 0.0, 0.0), (0.85, 1.0, 0.0)],
    ),
    "top2": (
        {"lr": 0.002, "kl_style_weight": 2.0},
        [(0.95, 0.0, 0.0), (math.nan, 1.0, 1.0), (0.70, 0.0, 0.0)],
    ),
    "nbr:lr=0.004": (
        {"lr": 0.004, "kl_style_weight": 1.0},
        [(0.60, 1.0, 0.0), (0.65, 0.0, 0.0), (0.62, 0.0, 0.0)],
    ),
}


def parent(name: str, params: dict[str, str] | None = None, mode: str = "max") -> StudyRecord:
    tags = records.study_tags(name, "mlvae", "digits", [f"swap_acc:{mode}"], "test", RANGES)
    return StudyRecord("parent", name, "0", "FINISHED", tags, params or {}, {})


def run_columns(variant: str, seed: int, seeds: int) -> dict:
    return {
        run_column("family"): "mlvae",
        run_column("dataset"): "digits",
        run_column("epochs"): 2,
        run_column("variant"): variant,
        run_column("seed"): seed,
        run_column("seeds"): seeds,
    }


def seed_result(values: tuple[float, float, float]) -> dict[str, float]:
    swap_acc, degenerate, diverged = values
    return {"swap_acc": swap_acc, "degenerate": degenerate, "diverged": diverged, "epoch": 2.0}


def trial(i: int, columns: dict, params: dict, result: dict) -> dict:
    info = {"run_id": f"run{i}", "status": "FINISHED", "trial_id": f"t{i:03d}", "start_time": i}
    return {**info, **columns, **{param_column(k): v for k, v in params.items()}, **result}


def solo_study() -> StudyRuns:
    """The re-runs as older versions recorded them: a trial per seed."""
    rows = []
    for variant, (params, per_seed) in VARIANTS.items():
        for s, values in enumerate(per_seed):
            columns = run_columns(variant, FIRST_SEED + s, 1)
            rows.append(trial(len(rows), columns, params, seed_result(values)))
    return StudyRuns("s-robust", parent("s-robust"), pd.DataFrame(rows))


def replicated_study() -> StudyRuns:
    """The same seeds as replicas: a trial per variant, reporting what trials report."""
    rows = []
    for i, (variant, (params, per_seed)) in enumerate(VARIANTS.items()):
        seeds = [FIRST_SEED + s for s in range(len(per_seed))]
        result = summarize([seed_result(v) for v in per_seed], seeds, RANGES)
        rows.append(trial(i, run_columns(variant, FIRST_SEED, len(seeds)), params, result))
    study_params = {"seeds": "3", "seed_aggregate": "mean"}
    return StudyRuns("s-robust", parent("s-robust", study_params), pd.DataFrame(rows))


# --- one row per seed -----------------------------------------------------------------------
def test_a_replicated_trial_becomes_a_row_per_seed_and_a_solo_trial_stays():
    replicated = replicated_study().trials.iloc[[0]]
    solo = solo_study().trials.iloc[[0]].assign(run_id="solo")
    rows = seed_rows(pd.concat([replicated, solo], ignore_index=True))

    assert len(rows) == 4
    seeded = rows[rows["run_id"] == "run0"]
    assert list(seeded[run_column("seed")]) == [1000, 1001, 1002]
    assert list(seeded["swap_acc"]) == [0.90, 0.80, 0.85]
    assert list(seeded["degenerate"]) == [0.0, 0.0, 1.0]
    assert set(seeded[param_column("lr")]) == {0.001}
    # Each row is one seed's run: no seed's value or statistic of the mean is left over.
    assert not [c for c in rows if records.parse_seed_metric(c) or c.startswith("swap_acc_")]

    kept = rows[rows["run_id"] == "solo"].iloc[0]
    for column in rows.columns:
        assert kept[column] == solo.iloc[0][column], column


def test_a_study_without_replicas_reads_the_same_per_seed():
    study = solo_study()
    pd.testing.assert_frame_equal(study.per_seed().trials, study.trials)


# --- robustness figures: replicas read as seed re-runs --------------------------------------
def test_replicas_give_the_seed_summary_of_a_trial_per_seed():
    solo, replicated = solo_study(), replicated_study()
    expected = seed_summary(solo, "swap_acc", "max").drop(columns="example_run")
    found = seed_summary(replicated, "swap_acc", "max").drop(columns="example_run")
    pd.testing.assert_frame_equal(found, expected)
    # The diverged seed is left out of its config's interval, as its own run was.
    assert found.set_index("variant").loc["top2", "n"] == 2
    assert set(found["variant"]) == set(VARIANTS)


def test_replicas_give_the_config_vs_seed_share_and_degeneracy_of_a_trial_per_seed():
    solo, replicated = solo_study(), replicated_study()
    assert luck(replicated, "swap_acc") == luck(solo, "swap_acc")
    assert luck(replicated, "swap_acc").runs == 8  # 9 seeds, one diverged

    expected = degeneracy_map([solo], ["lr", "kl_style_weight"])
    found = degeneracy_map([replicated], ["lr", "kl_style_weight"])
    pd.testing.assert_frame_equal(found.share, expected.share)
    pd.testing.assert_frame_equal(found.runs, expected.runs)
    assert found.runs.to_numpy().sum() == 9  # each seed a run
    pd.testing.assert_frame_equal(variant_params(replicated), variant_params(solo))


# --- ranking by what the search optimised ---------------------------------------------------
def sweep(params: dict[str, str], mode: str = "max") -> StudyRuns:
    """Two replicated trials: "lucky" has the better mean, "steady" the better bound."""
    rows = []
    for i, (name, per_seed) in enumerate(
        {"lucky": [0.99, 0.50, 0.90], "steady": [0.78, 0.80, 0.79]}.items()
    ):
        values = per_seed if mode == "max" else [1 - v for v in per_seed]
        result = summarize([{"swap_acc": v} for v in values], [0, 1, 2], RANGES)
        rows.append({**trial(i, run_columns("", 0, 3), {}, result), "trial_id": name})
    return StudyRuns("s", parent("s", params, mode), pd.DataFrame(rows))


@pytest.mark.parametrize("mode", ["max", "min"])
def test_a_sweep_that_searched_the_bound_is_ranked_by_it(mode):
    study = sweep({"seeds": "3", "seed_aggregate": "bound"}, mode)
    bound = "swap_acc_lower" if mode == "max" else "swap_acc_upper"
    assert study.ranked_by == (bound, mode)
    assert list(ranked(study)["trial_id"]) == ["steady", "lucky"]
    assert ranking_note(study)[0].startswith(f"Ranked by {bound},")


def test_a_sweep_that_searched_the_mean_or_predates_replicas_is_ranked_by_the_mean():
    for params in ({"seeds": "3", "seed_aggregate": "mean"}, {}):
        study = sweep(params)
        assert study.ranked_by == ("swap_acc", "max")
        assert list(ranked(study)["trial_id"]) == ["lucky", "steady"]
        assert ranking_note(study) == []


# --- export ---------------------------------------------------------------------------------
def test_a_replicated_trial_exports_its_seeds_and_each_seeds_metrics(tmp_path):
    from study.spec import TrainSpec

    study = replicated_study()
    config = export_config(study, study.trials.iloc[0])
    assert (config["seed"], config["seeds"]) == (1000, 3)
    assert config["metrics"]["swap_acc"] == pytest.approx(0.85)
    assert config["metrics"]["swap_acc_lower"] <= 0.85 <= config["metrics"]["swap_acc_upper"]
    assert "swap_acc_std" in config["metrics"] and "epoch" not in config["metrics"]
    assert not [k for k in config["metrics"] if records.parse_seed_metric(k)]
    assert config["seed_metrics"] == {
        1000: {"swap_acc": 0.90, "degenerate": 0.0, "diverged": 0.0},
        1001: {"swap_acc": 0.80, "degenerate": 0.0, "diverged": 0.0},
        1002: {"swap_acc": 0.85, "degenerate": 1.0, "diverged": 0.0},
    }
    # `study train --config` reads it back as three replicas from seed 1000.
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    spec = TrainSpec.from_sources(None, str(path), {})
    assert (spec.seed, spec.seeds) == (1000, 3)


def test_a_solo_trial_exports_no_seed_keys():
    study = solo_study()
    config = export_config(study, study.trials.iloc[0])
    assert "seeds" not in config and "seed_metrics" not in config
    assert config["seed"] == 1000 and config["metrics"]["swap_acc"] == 0.90


def test_the_robust_best_of_replicas_exports_the_trial_with_all_its_seeds():
    config = robust_best_config(replicated_study())
    expected = seed_summary(solo_study(), "swap_acc", "max").iloc[0]
    assert config["robust"]["variant"] == expected["variant"] == "top1"
    assert config["robust"]["values"] == [0.90, 0.80, 0.85]
    assert (config["seed"], config["seeds"]) == (1000, 3)
    assert sorted(config["seed_metrics"]) == [1000, 1001, 1002]


# --- `study robustness` plans a trial per config --------------------------------------------
def test_robustness_plans_one_replicated_trial_per_config(monkeypatch):
    from study import robustness
    from study.spec import StudySpec

    source = StudySpec(family="mlvae", name="s", trials=6, epochs=1, seed=0)
    configs = {"top1": {"lr": 0.001}, "top2": {"lr": 0.002}}
    planned = []
    monkeypatch.setattr(robustness, "read_spec", lambda name, storage: source)
    monkeypatch.setattr(robustness, "best_configs", lambda spec, top, uri: dict(configs))
    monkeypatch.setattr(robustness, "execute", lambda plan, verbose: planned.append(plan))

    robustness.run_robustness("s", top=2, seeds=4)

    (plan,) = planned
    assert (plan.spec.trials, plan.spec.seeds, plan.num_samples) == (2, 4, 2)
    points = [records.TrialConfig.from_tune(p) for p in plan.search_alg._points_to_evaluate]
    assert [(p.run["variant"], p.run["seed"], p.run["seeds"]) for p in points] == [
        ("top1", robustness.FIRST_NEW_SEED, 4),
        ("top2", robustness.FIRST_NEW_SEED, 4),
    ]
    assert [p.params for p in points] == list(configs.values())


def test_single_seed_rankings_show_when_one_seed_would_pick_another_winner():
    from analysis.seeds import single_seed_rankings

    # Trial "steady" is best by the bound; seed 1 alone would crown "lucky".
    rows = [
        ("steady", {0: 0.90, 1: 0.91}, 0.89),
        ("lucky", {0: 0.70, 1: 0.99}, 0.70),
        ("poor", {0: 0.50, 1: 0.52}, 0.49),
    ]
    trials = pd.DataFrame(
        [
            {
                "trial_id": trial,
                "acc_lower": bound,
                **{records.seed_metric("acc", seed): value for seed, value in values.items()},
            }
            for trial, values, bound in rows
        ]
    )
    table = single_seed_rankings(trials, "acc", "max", "acc_lower").set_index("seed")
    assert list(table["winner"]) == ["steady", "lucky"]
    assert list(table["winner's rank by acc_lower"]) == [1, 2]
    assert table.loc[0, "kendall_tau"] == pytest.approx(1.0)
    assert table.loc[1, "kendall_tau"] == pytest.approx(1 / 3)
    # Minimising turns every order around.
    flipped = trials.assign(**{c: -trials[c] for c in trials.columns if c != "trial_id"})
    again = single_seed_rankings(flipped, "acc", "min", "acc_lower").set_index("seed")
    assert list(again["winner"]) == ["steady", "lucky"]
