"""The sampler's own record: a searched study's Optuna study in the storage beside its
MLflow store, read back by `load_optuna_study` and served by `study dashboard`. On the
shared real study (`analysis_study`: `study run mlvae`, 6 trials, and its robustness
re-runs)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
import urllib.request

import optuna
import pytest
from reliability_support import listening_addresses
from sweep_helpers import STUDY, free_ports, kill_group, run_study

from analysis import records
from analysis.optuna_record import load_optuna_study

TRIALS = 6


@pytest.fixture(scope="module")
def storage(analysis_study) -> str:
    return f"sqlite:///{analysis_study.cwd / 'optuna.db'}"


@pytest.fixture(scope="module")
def sweep(analysis_study) -> records.StudyRecords:
    return records.read_study(analysis_study.name, analysis_study.tracking_uri)


def test_the_sweep_wrote_its_optuna_study_beside_the_mlflow_store(storage, sweep):
    assert sweep.parent.tags[records.TAG_OPTUNA_STORAGE] == storage
    study = optuna.load_study(study_name=sweep.parent.name, storage=storage)
    assert len(study.trials) == TRIALS
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE}
    # Each trial's values are the objectives its MLflow run recorded.
    objectives = sweep.parent.objectives
    assert [m for m, _ in objectives] == ["swap_acc", "content_acc_grouped"]  # mlvae's
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE] * 2
    told = sorted(tuple(t.values) for t in study.trials)
    recorded = sorted(tuple(r.metrics[m] for m, _ in objectives) for r in sweep.trials)
    assert len(recorded) == TRIALS
    assert told == [pytest.approx(v) for v in recorded]
    # ... and its parameters are the ones the run was given.
    searched = sorted(study.trials[0].params)
    assert searched
    proposed = sorted(tuple(str(t.params[k]) for k in searched) for t in study.trials)
    assert proposed == sorted(tuple(r.params[k] for k in searched) for r in sweep.trials)


def test_load_optuna_study_reads_it_and_writes_nothing(analysis_study, sweep, tmp_path):
    study = load_optuna_study(sweep.parent)
    assert study is not None and study.study_name == analysis_study.name
    assert len(study.trials) == TRIALS
    # None, with nothing created, where the storage or the study is missing...
    gone = tmp_path / "gone.db"
    for url in (f"sqlite:///{gone}", f"sqlite:///{tmp_path / 'no' / 'dir.db'}"):
        tags = {**sweep.parent.tags, records.TAG_OPTUNA_STORAGE: url}
        assert load_optuna_study(dataclasses.replace(sweep.parent, tags=tags)) is None
    assert list(tmp_path.iterdir()) == []
    other = dataclasses.replace(sweep.parent, name="not-this-one")
    assert load_optuna_study(other) is None
    # ... where the password was not recorded, and for a robustness study (no sampler).
    tags = {**sweep.parent.tags, records.TAG_OPTUNA_STORAGE: "postgresql://***@host/db"}
    assert load_optuna_study(dataclasses.replace(sweep.parent, tags=tags)) is None
    robust = records.read_study(analysis_study.robust, analysis_study.tracking_uri)
    assert records.TAG_OPTUNA_STORAGE not in robust.parent.tags
    assert load_optuna_study(robust.parent) is None


def test_dashboard_serves_the_study_on_localhost_only(analysis_study, tmp_path):
    (port,) = free_ports(1)
    out = tmp_path / "dashboard.out"
    with open(out, "w") as handle:
        process = subprocess.Popen(
            [*STUDY, "dashboard", analysis_study.name, "--port", str(port)],
            cwd=analysis_study.cwd,
            env=analysis_study.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline, names = time.monotonic() + 30, []
        while analysis_study.name not in names:
            assert process.poll() is None, out.read_text()
            assert time.monotonic() < deadline, f"no study on the dashboard\n{out.read_text()}"
            time.sleep(0.3)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    names = [s["study_name"] for s in json.load(r)["study_summaries"]]
            except OSError:
                continue
        assert listening_addresses(port) == {"127.0.0.1"}
        # It printed the study's own page, and that page is served.
        url = out.read_text().split()[2]
        assert url.startswith(f"http://127.0.0.1:{port}/dashboard/studies/"), out.read_text()
        with urllib.request.urlopen(url, timeout=5) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        kill_group(process, grace=5)


def test_dashboard_of_a_robustness_study_says_where_to_look(analysis_study):
    done = run_study(
        ["dashboard", analysis_study.robust], analysis_study.cwd, analysis_study.env, check=False
    )
    assert done.returncode == 2, done.describe()
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.describe()
    assert lines[0].startswith("error: optuna-storage:")
    assert f"study dashboard {analysis_study.name}" in lines[0]


def test_a_retried_trial_repeating_steps_reaches_optuna_once_per_step(tmp_path):
    """A trial retried from its checkpoint repeats the iterations after it. Each step
    reaches Optuna once, with its first value, and without Optuna's warning per repeat
    (dozens of lines in the driver's output after a lost node)."""
    import warnings

    from study.plan import FiniteOptunaSearch

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = FiniteOptunaSearch(
        {"x": optuna.distributions.FloatDistribution(0, 1)},
        metric="loss",
        mode="min",
        study_name="retried",
        storage_url=storage,
    )
    searcher.suggest("t1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step, loss in [(1, 0.9), (2, 0.8), (3, 0.7), (2, 0.5), (3, 0.4), (4, 0.3)]:
            searcher.on_trial_result("t1", {"loss": loss, "training_iteration": step})
    (trial,) = optuna.load_study(study_name="retried", storage=storage).trials
    assert trial.intermediate_values == {1: 0.9, 2: 0.8, 3: 0.7, 4: 0.3}


def test_a_restored_trial_the_searcher_never_saw_is_told_to_optuna_with_its_parameters(tmp_path):
    """After a killed driver, the searcher Ray restores can be a save behind the trials it
    restores. Such a trial's results and end reach Optuna as a trial with its parameters
    (a conditional one left out where its condition failed), not a KeyError that ends the
    resumed study."""
    from search_spaces.loader import DefineByRun
    from study.plan import FiniteOptunaSearch

    dist = optuna.distributions
    space = DefineByRun(
        {"a": dist.CategoricalDistribution(["p", "q"]), "b": dist.FloatDistribution(0, 1)},
        {"b": ({"a": "q"}, 0.5)},  # b is searched only where a == "q"
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = FiniteOptunaSearch(
        space, metric="loss", mode="min", study_name="restored", storage_url=storage
    )
    searcher.suggest("known")
    searcher.on_trial_complete("known", {"loss": 1.0, "config/a": "p", "config/b": 0.5})
    for trial_id, a, b, loss in [("lost-q", "q", 0.25, 0.3), ("lost-p", "p", 0.5, 0.7)]:
        flat = {"config/a": a, "config/b": b, "config/epochs": 3}
        searcher.on_trial_result(trial_id, {"loss": loss + 0.1, "training_iteration": 1, **flat})
        searcher.on_trial_complete(trial_id, {"loss": loss, "training_iteration": 2, **flat})
    searcher.on_trial_complete("errored-before-any-result", None, error=True)

    trials = optuna.load_study(study_name="restored", storage=storage).trials
    told = [(t.state.name, t.params, t.value) for t in trials]
    assert told[1:] == [("COMPLETE", {"a": "q", "b": 0.25}, 0.3), ("COMPLETE", {"a": "p"}, 0.7)]
    assert trials[1].intermediate_values == {1: pytest.approx(0.4)}


def test_a_multi_objective_searcher_saves_and_resumes_on_every_optuna(tmp_path):
    """Ray pickles the searcher with the Tuner and at every save. Optuna 5.1's NSGA-II
    sampler holds a lock pickle refuses; ours saves, restores into a new searcher that
    goes on with the same study, and stores the generation under Optuna's own key."""
    import pickle

    from study.plan import FiniteOptunaSearch
    from study.samplers import sampler_class

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"

    def searcher():
        return FiniteOptunaSearch(
            {"x": optuna.distributions.FloatDistribution(0, 1)},
            metric=["loss", "acc"],
            mode=["min", "max"],
            sampler=sampler_class(2)(seed=0),
            study_name="two-objectives",
            storage_url=storage,
        )

    first = searcher()
    pickle.loads(pickle.dumps(first))  # what tune.Tuner does before any trial
    for trial_id in ("t1", "t2"):
        x = first.suggest(trial_id)["x"]
        first.on_trial_complete(trial_id, {"loss": x, "acc": 1 - x})
    first.save(str(tmp_path / "searcher.pkl"))

    resumed = searcher()
    resumed.restore(str(tmp_path / "searcher.pkl"))
    x = resumed.suggest("t3")["x"]
    resumed.on_trial_complete("t3", {"loss": x, "acc": 1 - x})
    pickle.loads(pickle.dumps(resumed)).suggest("t4")  # the restored lock works too

    trials = optuna.load_study(study_name="two-objectives", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 + ["RUNNING"]
    generation_key = optuna.samplers.NSGAIISampler._get_generation_key()
    assert all(generation_key in t.system_attrs for t in trials)
