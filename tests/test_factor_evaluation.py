"""The factor metrics inside an experiment: every family scores its codes on a dataset with
ground-truth factors (at the final evaluation with DCI, at intermediate ones without), on
none elsewhere; and what a reproduction says across its runs (the variance split between
variant and seed, upsets, the metrics' rank agreement) on constructed runs."""

from __future__ import annotations

import math

import pytest

from analysis.stats import rank_agreement, upset_rate
from study.reproduce import between_runs
from trainables import load_dataset
from trainables.experiment import Experiment
from trainables.factor_metrics import DCI_METRICS, FACTOR_METRIC_NAMES
from trainables.shapes import ShapesGrid, write_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    directory = tmp_path_factory.mktemp("shapes")
    write_shapes(directory, ShapesGrid(shape=3, scale=2, orientation=2, x=6, y=6, size=16))
    return load_dataset("dsprites", data_dir=directory)


@pytest.mark.parametrize("family", ["aae", "betavae", "icvae", "mlvae"])
def test_every_family_reports_the_factor_metrics_where_the_data_has_factors(shapes, family):
    params = {"hidden": [32], "batch_size": 64}
    if family == "mlvae":
        params["group_size"] = 4
    experiment = Experiment.create(family, params, shapes, use_reference=False)
    experiment.train_epoch()
    # Intermediate evaluations leave DCI's boosted trees out, and only them.
    quick = experiment.evaluate(quick=True)
    assert set(FACTOR_METRIC_NAMES) <= set(quick)
    assert all(math.isnan(quick[name]) for name in DCI_METRICS)
    assert all(0.0 <= quick[n] <= 1.0 for n in FACTOR_METRIC_NAMES if n not in DCI_METRICS)


def test_the_final_evaluation_adds_dci(shapes):
    experiment = Experiment.create("betavae", {"hidden": [32]}, shapes, use_reference=False)
    experiment.train_epoch()
    final = experiment.evaluate()
    for name in FACTOR_METRIC_NAMES:
        assert 0.0 <= final[name] <= 1.0, (name, final[name])


def test_no_factor_metrics_without_factors():
    digits = load_dataset("digits")
    experiment = Experiment.create("betavae", {"hidden": [16]}, digits, use_reference=False)
    assert not set(FACTOR_METRIC_NAMES) & set(experiment.evaluate(quick=True))


def test_a_diverged_replica_reports_nan_for_the_factor_metrics_too(shapes):
    experiment = Experiment.create("betavae", {"hidden": [16]}, shapes, use_reference=False)
    experiment.replica_diverged[0] = True
    found = experiment.evaluate(quick=True)
    assert all(math.isnan(found[name]) for name in FACTOR_METRIC_NAMES)


def test_upset_rate_counts_the_worst_variant_beating_the_best():
    groups = ["a"] * 3 + ["b"] * 3
    # a's runs 1, 2, 3 and b's 2.5, 3.5, 4.5: b is best by its mean; of a x b's 9 pairs,
    # a beats b in one (3 > 2.5).
    upset = upset_rate([1, 2, 3, 2.5, 3.5, 4.5], groups, "max")
    assert (upset["best"], upset["worst"], upset["pairs"]) == ("b", "a", 9)
    assert upset["rate"] == pytest.approx(1 / 9)
    assert upset_rate([1, 2, 3, 2.5, 3.5, 4.5], groups, "min")["best"] == "a"
    assert upset_rate([1.0, 2.0], ["a", "a"], "max") is None


def test_rank_agreement_is_spearman_over_the_runs_where_both_are_finite():
    rows = [{"x": i, "y": i * i, "z": -i, "w": 1.0} for i in range(5)] + [{"x": 9, "y": None}]
    found = rank_agreement(rows, ["x", "y", "z", "w"])
    assert found["x"]["y"] == {"rho": pytest.approx(1.0), "n": 5}
    assert found["x"]["z"]["rho"] == pytest.approx(-1.0)
    assert math.isnan(found["x"]["w"]["rho"])  # a constant metric ranks nothing


def test_between_runs_splits_variance_between_variant_and_seed():
    def variant(name, values):
        return {"name": name, "metrics": {"mig": {"values": values}}}

    # The variants differ by 1 and the seeds by +-0.01 around them: the variant explains
    # nearly all of the variance; with the roles swapped, the seed does.
    by_variant = between_runs(
        ("mig",), [variant("b1", [0.10, 0.11, 0.12]), variant("b2", [0.60, 0.61, 0.62])]
    )
    by_seed = between_runs(
        ("mig",), [variant("b1", [0.1, 0.5, 0.9]), variant("b2", [0.11, 0.49, 0.91])]
    )
    assert by_variant["variance_share"]["mig"]["config_share"] > 0.99
    assert by_seed["variance_share"]["mig"]["config_share"] < 0.05
    assert by_variant["upset"]["mig"]["rate"] == 0.0
    assert by_variant["rank_agreement"]["mig"]["mig"]["n"] == 6
