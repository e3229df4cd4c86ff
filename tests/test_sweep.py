"""A real 4-trial sweep through the CLI (`study run` on a local Ray, OptunaSearch, ASHA,
an SQLite MLflow store), then what MLflow, Ray's searcher state, `study status`,
`study export` and `study train` make of it. No mocks: one sweep, shared by the module.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from sweep_helpers import (
    base_env,
    load_searcher_state,
    run_local_sweep,
    run_study,
)

from analysis import records
from search_spaces.loader import load_space
from trainables import get_family

NAME = "s1"
TRIALS = 4
EPOCHS = 3
OBJECTIVE = ("content_acc_grouped", "max")
# `study train` with the exported config must give the trial's numbers. Measured: equal
# to the last bit (the trainable forks the RNG around evaluation, so training sees the
# same random stream as `study train`; with one torch thread on both sides the arithmetic
# is the same). 1e-5 leaves room for float noise only.
REPRODUCE_ABS = 1e-5


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory):
    cwd = tmp_path_factory.mktemp("sweep")
    return run_local_sweep(
        [
            "run",
            "mlvae",
            "--trials",
            str(TRIALS),
            "--epochs",
            str(EPOCHS),
            "--objective",
            ":".join(OBJECTIVE),
            "--name",
            NAME,
        ],
        NAME,
        cwd,
    )


@pytest.fixture(scope="module")
def searcher_state(sweep) -> dict:
    return load_searcher_state(sweep.cwd / "ray_results", NAME)


def test_one_parent_run_with_one_child_per_trial(sweep):
    record = sweep.record
    parent = record.parent
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == NAME
    tags = parent.data.tags
    assert tags[records.TAG_KIND] == "study"
    assert tags[records.TAG_FAMILY] == "mlvae"
    assert tags[records.TAG_OBJECTIVES] == ":".join(OBJECTIVE)
    assert parent.data.params["name"] == NAME
    assert parent.data.params["trials"] == str(TRIALS)
    assert parent.data.metrics["trials_total"] == TRIALS
    assert parent.data.metrics["trials_error"] == 0

    children = record.children
    assert len(children) == TRIALS
    for child in children:
        assert child.data.tags[records.TAG_PARENT] == parent.info.run_id
        assert child.data.tags[records.TAG_KIND] == "trial"
        assert child.data.tags[records.TAG_STUDY] == NAME
        assert child.info.status == "FINISHED"
        assert child.data.tags[records.TAG_TRIAL_STATUS] == "TERMINATED"
    trial_ids = {c.data.tags[records.TAG_TRIAL] for c in children}
    assert len(trial_ids) == TRIALS
    # Every trial printed one line, and the driver said where things went.
    for trial_id in trial_ids:
        assert trial_id in sweep.output
    assert parent.info.run_id in sweep.output


def test_children_hold_family_and_study_params(sweep):
    searched = set(load_space("mlvae").distributions)
    for child in sweep.record.children:
        params = child.data.params
        assert searched <= set(params), sorted(params)
        assert params[records.run_column("family")] == "mlvae"
        assert params[records.run_column("dataset")] == "digits"
        assert params[records.run_column("epochs")] == str(EPOCHS)
        assert params[records.run_column("seed")] == "0"
        assert params[records.run_column("study")] == NAME
        # Each value is one the family's config accepts.
        get_family("mlvae").config_cls(**{k: yaml.safe_load(params[k]) for k in searched})


def test_per_epoch_metrics_are_logged_with_their_step(sweep):
    client = sweep.record.client
    metric_names = set(get_family("mlvae").metric_names)
    full_length = 0
    for child in sweep.record.children:
        run_id = child.info.run_id
        final = child.data.metrics
        epochs = int(final["epoch"])
        assert 1 <= epochs <= EPOCHS  # ASHA may stop a trial at its grace period
        # A trial's last epoch gets the full evaluation; one ASHA stopped ended on a quick
        # one (linear probe only), which has everything but the MLP probe's figure.
        expected = metric_names if epochs == EPOCHS else metric_names - {"leakage_acc_mlp"}
        assert expected <= set(final), sorted(final)
        for key in ("epoch", "train_loss", OBJECTIVE[0], "recon_mse"):
            history = client.get_metric_history(run_id, key)
            assert sorted(m.step for m in history) == list(range(1, epochs + 1)), key
            # The run's final value is the last epoch's.
            assert max(history, key=lambda m: m.step).value == final[key]
        assert [m.value for m in client.get_metric_history(run_id, "epoch")] == [
            float(s) for s in range(1, epochs + 1)
        ]
        full_length += epochs == EPOCHS
    assert full_length >= 1, "no trial ran all epochs"


def test_children_record_images_and_node(sweep):
    client = sweep.record.client
    for child in sweep.record.children:
        run_id = child.info.run_id
        images = {a.path: a for a in client.list_artifacts(run_id, "images")}
        assert set(images) == {
            "images/reconstructions.png",
            "images/swaps.png",
            "images/latent_scatter.png",
        }
        assert all(a.file_size and a.file_size > 100 for a in images.values())
        # Runs here on the local single-node Ray: one node id, Ray's 56 hex digits.
        assert len(child.data.tags[records.TAG_NODE]) == 56
    local = sweep.record.children[0].info.run_id
    path = Path(client.download_artifacts(local, "images/swaps.png", str(sweep.cwd)))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len({c.data.tags[records.TAG_NODE] for c in sweep.record.children}) == 1


def test_optuna_drives_the_trials(sweep, searcher_state):
    parent = sweep.record.parent
    assert parent.data.tags[records.TAG_SAMPLER] == "TPESampler"
    searched = sorted(load_space("mlvae").distributions)
    proposed = {tuple(child.data.params[k] for k in searched) for child in sweep.record.children}
    assert len(proposed) == TRIALS, "trials got repeated parameters"

    # Ray's saved searcher state holds the Optuna study that proposed exactly these.
    study = searcher_state["_ot_study"]
    assert isinstance(study, optuna.Study)
    assert type(study.sampler) is optuna.samplers.TPESampler
    assert searcher_state["_sampler"] is study.sampler
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE]
    assert searcher_state["_metric"] == OBJECTIVE[0]
    trials = study.trials
    assert len(trials) == TRIALS
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    told = {tuple(str(t.params[k]) for k in searched) for t in trials}
    assert told == proposed
    # Optuna was told each trial's final objective, as MLflow recorded it.
    values = sorted(t.value for t in trials)
    recorded = sorted(c.data.metrics[OBJECTIVE[0]] for c in sweep.record.children)
    assert values == pytest.approx(recorded)


def test_status_reports_the_study(sweep):
    done = run_study(["status", NAME], cwd=sweep.cwd)
    assert f"{TRIALS}/{TRIALS} trials" in done.stdout
    assert f"finished {TRIALS}" in done.stdout
    # The best trial by the store's ordering is the one the recorded values make best.
    value = max(c.data.metrics[OBJECTIVE[0]] for c in sweep.record.children)
    best = {
        c.data.tags[records.TAG_TRIAL]
        for c in sweep.record.children
        if c.data.metrics[OBJECTIVE[0]] == value
    }
    (line,) = [x for x in done.stdout.splitlines() if f"best {OBJECTIVE[0]} (max)" in x]
    assert f": {value:.4f}  trial " in line and line.rsplit(" ", 1)[-1] in best


def test_export_then_train_reproduces_the_metrics(sweep):
    done = run_study(["export", NAME, "--top", "2"], cwd=sweep.cwd)
    out = sweep.cwd / "exports" / NAME
    assert {p.name for p in out.iterdir()} == {"best.yaml", "rank-01.yaml", "rank-02.yaml"}
    assert "wrote exports" in done.stdout
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best == yaml.safe_load((out / "rank-01.yaml").read_text())

    # best.yaml is the best finished trial by the objective, as MLflow recorded it.
    children = {c.info.run_id: c for c in sweep.record.children}
    top = max(children.values(), key=lambda c: c.data.metrics[OBJECTIVE[0]])
    assert best["metrics"][OBJECTIVE[0]] == top.data.metrics[OBJECTIVE[0]]
    source = children[best["source"]["mlflow_run_id"]]
    assert best["source"]["trial_id"] == source.data.tags[records.TAG_TRIAL]
    assert best["epochs"] == int(source.data.metrics["epoch"])
    assert best["seed"] == 0
    for key, value in best["params"].items():
        assert str(value) == source.data.params[key]

    # One torch thread, as the trial had (--cpus-per-trial 1).
    env = base_env(OMP_NUM_THREADS="1")
    trained = run_study(
        ["train", "--config", f"exports/{NAME}/best.yaml", "--json", "--out", "retrained"],
        cwd=sweep.cwd,
        env=env,
    )
    metrics = json.loads(trained.stdout.strip().splitlines()[-1])["metrics"]
    exported = best["metrics"]
    compared = [m for m in get_family("mlvae").metric_names if m in exported]
    assert len(compared) == len(get_family("mlvae").metric_names)
    for metric in compared:
        assert metrics[metric] == pytest.approx(exported[metric], abs=REPRODUCE_ABS), metric


def test_report_shows_the_best_trials_images_with_the_latent_scatter(sweep):
    done = run_study(["report", NAME], cwd=sweep.cwd)
    out = sweep.cwd / "reports" / NAME
    assert f"wrote reports/{NAME}/index.html" in done.stdout
    page = (out / "index.html").read_text()
    for name in ("latent_scatter", "reconstructions", "swaps"):
        assert f"<img src='images/{name}.png'>" in page, name
        assert (out / "images" / f"{name}.png").stat().st_size > 1000, name


def test_the_driver_forgets_a_finished_trials_running_statistics(monkeypatch):
    """Ray keeps min/max/mean and the last values of every number a trial reported; a
    study's driver drops them when the trial ends (its last result stays), so they leave
    its memory and its snapshots, and it trims the C heap at most every few seconds."""
    from types import SimpleNamespace

    from ray.tune.trainable.metadata import _TrainingRunMetadata

    from study import execute

    metadata = _TrainingRunMetadata()
    metadata.last_result = {"recon_mse": 0.25}
    for step, value in enumerate([0.5, 0.25], start=1):
        metadata.update_metric("recon_mse", value, step=step)
    before = metadata.get_json_state()
    assert "last-10-avg" in before
    trial = SimpleNamespace(run_metadata=metadata)
    execute.DriverMemory().on_trial_complete(0, [trial], trial)
    assert metadata.metric_analysis == {} and metadata.metric_n_steps == {}
    after = metadata.get_json_state()  # the cached JSON went with them
    assert "last-10-avg" not in after and len(after) < len(before)
    assert metadata.last_result == {"recon_mse": 0.25}

    trims, clock = [], [100.0]
    monkeypatch.setattr(execute, "_release_free_heap", lambda: trims.append(clock[0]))
    monkeypatch.setattr(execute.time, "monotonic", lambda: clock[0])
    memory = execute.DriverMemory()
    for _ in range(3):
        memory.on_step_end(0, [])
        clock[0] += execute.TRIM_EVERY_SECONDS / 2
    assert trims == [100.0, 100.0 + execute.TRIM_EVERY_SECONDS]
