"""The MLflow schema both sides share (analysis/records.py): the trial-config envelope to
MLflow params and back, the reading side's independence from Ray, stores written before
the schema had a module of its own, the locked open of an SQLite store, and the tracking
callback writing runs that the reading side loads."""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from sweep_helpers import sqlite_store

from analysis import records
from analysis.records import PARAM_VALUE_LIMIT, TrialConfig
from trainables.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN = {
    "family": "mlvae",
    "dataset": "digits",
    "epochs": 3,
    "seed": 0,
    "data_dir": None,
    "eval_every": 1,
    "precision": "fp32",
    "study": "s1",
}


# --- the envelope ---------------------------------------------------------------------------
def test_tune_config_round_trips_through_mlflow_params():
    config = {
        records.RUN_KEY: {**RUN, "variant": "nbr:lr=0.005"},
        "lr": 1e-05,
        "hidden": [256, 64],
        "freeze_class_heads": False,
        "recon_loss": "bernoulli",
        "noise_std": float("nan"),
        "schedule": {"warmup": 2, "decay": {"every": 10, "factor": 0.5}},
    }
    params = TrialConfig.from_tune(config).to_mlflow_params()
    assert params["study.family"] == "mlvae"
    assert params["study.epochs"] == "3"
    assert params["study.data_dir"] == "None"
    assert params["lr"] == "1e-05"
    assert params["hidden"] == "[256, 64]"
    assert params["schedule.decay.factor"] == "0.5"
    assert all(isinstance(v, str) for v in params.values())

    back = TrialConfig.from_mlflow_params(params).to_tune()
    nan = back.pop("noise_std")
    assert nan != nan
    assert back == {k: v for k, v in config.items() if k != "noise_std"}


def test_names_among_the_run_settings_stay_text():
    config = TrialConfig({**RUN, "study": "2024", "variant": "top1"}, {"z_dim": 16})
    back = TrialConfig.from_mlflow_params(config.to_mlflow_params())
    assert back.run["study"] == "2024"
    assert back.run["epochs"] == 3
    assert back.params == {"z_dim": 16}


def test_params_hide_credentials_and_keep_to_the_value_limit():
    config = TrialConfig(
        {**RUN, "data_dir": "s3://user:secret@bucket/data"}, {"hidden": list(range(3000))}
    )
    params = config.to_mlflow_params()
    assert params["study.data_dir"] == "s3://***@bucket/data"
    assert len(params["hidden"]) == PARAM_VALUE_LIMIT
    # What was cut short reads back as the text that was stored, not as an error.
    assert TrialConfig.from_mlflow_params(params).params["hidden"] == params["hidden"]
    assert records.redact("http://u:p@host:5000 and https://h/x") == (
        "http://***@host:5000 and https://h/x"
    )
    # AWS secret keys may hold '/': the whole of it goes, not the part after the last '/'.
    secret = "s3://AKIAEXAMPLE:wJal/rXUt/nFEMI@bucket/dir?endpoint_override=h:9000"
    assert records.redact(secret) == "s3://***@bucket/dir?endpoint_override=h:9000"


def test_reader_columns_of_mlflow_params():
    assert records.column_of("study.seed") == "study.seed" == records.run_column("seed")
    assert records.column_of("lr") == "param.lr" == records.param_column("lr")
    assert records.param_name("param.lr") == "lr"
    assert records.param_name("study.seed") is None
    assert records.is_metric_column("recon_mse")
    assert not records.is_metric_column("trial_id")
    assert not records.is_metric_column("param.lr")


# --- stores ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    return sqlite_store(tmp_path_factory.mktemp("records-store"))


def write_old_study(client, experiment: str, name: str) -> dict[str, str]:
    """A study as the writers before analysis/records.py recorded it, every name spelled
    out. Returns trial id -> run id."""
    parent = client.create_run(
        experiment,
        run_name=name,
        tags={
            "latent_studies.study": name,
            "latent_studies.kind": "study",
            "latent_studies.family": "mlvae",
            "latent_studies.dataset": "digits",
            "latent_studies.objectives": "swap_acc:max,recon_mse:min",
            "latent_studies.space": json.dumps({}),
        },
    )
    parent_id = parent.info.run_id
    runs = {}
    for i, (lr, swap) in enumerate([(0.001, 0.9), (1e-05, 0.7), (0.01, 0.8)]):
        trial_id = f"abc{i}_0000{i}"
        run = client.create_run(
            experiment,
            run_name=f"{name}-{trial_id}",
            tags={
                "mlflow.parentRunId": parent_id,
                "latent_studies.study": name,
                "latent_studies.kind": "trial",
                "latent_studies.trial_id": trial_id,
            },
        )
        run_id = run.info.run_id
        client.log_param(run_id, "study.family", "mlvae")
        client.log_param(run_id, "study.dataset", "digits")
        client.log_param(run_id, "study.epochs", "2")
        client.log_param(run_id, "study.seed", "0")
        client.log_param(run_id, "study.data_dir", "None")
        client.log_param(run_id, "lr", str(lr))
        client.log_param(run_id, "hidden", "[64]")
        for step in (1, 2):
            client.log_metric(run_id, "epoch", float(step), step=step)
            client.log_metric(run_id, "swap_acc", swap, step=step)
            client.log_metric(run_id, "recon_mse", 0.1 * (i + 1), step=step)
        client.set_tag(run_id, "latent_studies.trial_status", "TERMINATED")
        client.set_terminated(run_id, "FINISHED")
        runs[trial_id] = run_id
    client.set_terminated(parent_id, "FINISHED")
    return runs


def test_a_store_written_with_the_old_literal_names_reads_back(store, tmp_path):
    from analysis.export import export_study
    from analysis.runs import load_study, ranked

    runs = write_old_study(store.client, store.experiment, "old")
    found = records.read_study("old", store.uri)
    assert found.parent.family == "mlvae"
    assert found.parent.objectives == [("swap_acc", "max"), ("recon_mse", "min")]
    assert {t.trial_id: t.run_id for t in found.trials} == runs
    slow = next(t for t in found.trials if t.trial_id == "abc1_00001")
    assert slow.trial_status == "TERMINATED"
    assert slow.config.run["family"] == "mlvae"
    assert slow.config.params == {"lr": 1e-05, "hidden": [64]}

    study = load_study("old", store.uri)
    best = ranked(study)
    assert list(best["trial_id"]) == ["abc0_00000", "abc2_00002", "abc1_00001"]
    assert list(best["param.lr"]) == [0.001, 0.01, 1e-05]
    assert study.searched_params() == ["param.lr"]

    written = export_study(study, tmp_path / "exports")
    assert [p.name for p in written] == ["best.yaml", "rank-01.yaml"]
    exported = yaml.safe_load(written[0].read_text())
    assert exported["params"] == {"lr": 0.001, "hidden": [64]}
    assert exported["family"] == "mlvae" and exported["epochs"] == 2
    assert exported["metrics"] == {"swap_acc": 0.9, "recon_mse": pytest.approx(0.1)}
    assert exported["source"]["mlflow_run_id"] == runs["abc0_00000"]


def test_a_report_of_an_old_store(store, tmp_path):
    from analysis.report import build_report

    if records.find_study_run(store.client, store.experiment, "old") is None:
        write_old_study(store.client, store.experiment, "old")
    page = build_report("old", store.uri, records.DEFAULT_EXPERIMENT, tmp_path / "report")
    text = page.read_text()
    assert "<h1>old: mlvae</h1>" in text
    assert "3 trials (finished 3)" in text
    assert "<h2>Best trials</h2>" in text and "<h2>Pareto front</h2>" in text
    assert (tmp_path / "report" / "pareto.png").stat().st_size > 1000
    parent = records.find_study_run(store.client, store.experiment, "old")
    assert parent.info.run_id in text


def test_status_of_a_study_without_trial_counts_counts_its_trial_runs(store, tmp_path):
    """A study whose driver kept no counts on its parent run (an earlier version's):
    `study status` counts its trial runs, and finds its best by the store's ordering."""
    from click.testing import CliRunner

    from study.cli import cli
    from study.spec import StudySpec
    from study.storage import write_spec

    if records.find_study_run(store.client, store.experiment, "old") is None:
        write_old_study(store.client, store.experiment, "old")
    spec = StudySpec(
        family="mlvae", name="old", trials=4, storage=str(tmp_path), tracking_uri=store.uri
    )
    write_spec(spec)
    shown = CliRunner().invoke(cli, ["status", "old", "--storage", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0] == "study old: mlvae on digits, 3/4 trials"
    assert lines[1] == "  finished 3"
    assert lines[2] == "  best swap_acc (max): 0.9000  trial abc0_00000"
    assert lines[3] == "  best recon_mse (min): 0.1000  trial abc0_00000"


def test_reading_a_missing_study_writes_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(UserError, match="no study 'nothing'"):
        records.read_study("nothing", uri)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("sqlite:////no/such/directory/mlflow.db", "does not exist"),
        ("file:///tmp/mlruns", "file store"),
        ("mlruns", "file store"),
    ],
)
def test_unusable_tracking_uris_fail_in_one_line(uri, message):
    with pytest.raises(UserError, match=message):
        records.check_tracking_uri(uri)


def test_sqlite_store_opens_under_the_directory_lock(tmp_path):
    import mlflow  # noqa: F401 - imported already, so only the lock can keep the opener waiting

    db = tmp_path / "mlflow.db"
    opened = []
    directory = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
        opener = threading.Thread(
            target=lambda: opened.append(records.open_client(f"sqlite:///{db}")), daemon=True
        )
        opener.start()
        opener.join(timeout=3.0)
        assert opener.is_alive() and not db.exists(), "opened the store without the lock"
    finally:
        os.close(directory)  # releases the lock
    opener.join(timeout=120)
    assert opened and db.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["mlflow.db"]  # no lock file left


# --- the writing side -----------------------------------------------------------------------
class FakeCheckpoint:
    """A trial's last checkpoint as the logger sees it: a directory on a pyarrow
    filesystem, holding weights beside the image grids."""

    def __init__(self, directory: Path, images: dict[str, bytes]):
        import pyarrow.fs

        (directory / "images").mkdir(parents=True)
        for name, data in images.items():
            (directory / "images" / name).write_bytes(data)
        (directory / "state.pt").write_bytes(b"weights")
        self.path, self.filesystem = str(directory), pyarrow.fs.LocalFileSystem()


def fake_trial(trial_id: str, lr: float) -> SimpleNamespace:
    config = TrialConfig({**RUN, "study": "w"}, {"lr": lr}).to_tune()
    return SimpleNamespace(
        trial_id=trial_id, config=config, last_result=None, checkpoint=None, status="RUNNING"
    )


def result(epoch: int, **values) -> dict:
    return {
        "epoch": epoch,
        "swap_acc": 0.5 + epoch / 10,
        "node_id": "n1",
        "device": "cpu",
        **values,
    }


def test_the_tracking_callback_writes_what_the_reading_side_loads(store, monkeypatch):
    from study import tracking

    parent = store.client.create_run(
        store.experiment,
        run_name="w",
        tags=records.study_tags("w", "mlvae", "digits", ["swap_acc:max"], "test"),
    )
    parent_id = parent.info.run_id
    queue = tracking.TrackingQueue(store.uri)
    logger = tracking.MlflowTrialLogger(
        queue, store.experiment, parent_id, "w", {"swap_acc"}, objectives=[("swap_acc", "max")]
    )
    trial = fake_trial("wt_00000", 0.003)

    # The first result of a trial goes out at once, later ones wait for the throttle.
    monkeypatch.setattr(tracking, "METRICS_EVERY_SECONDS", 3600.0)
    logger.on_trial_start(0, [trial], trial)
    source = {records.RESULT_DATASET_SOURCE: "/data/mnist", records.RESULT_DATASET_DIGEST: "d1"}
    logger.on_trial_result(0, [trial], trial, result(1, **source))
    logger.on_trial_result(0, [trial], trial, result(2, device="cuda"))
    logger.on_step_end(0, [trial])
    run_id = logger.runs.run_id(trial.trial_id)
    assert epochs_of(store.client, run_id) == [1]
    logger.buffer.send_due(everything=True)
    assert epochs_of(store.client, run_id) == [1, 2]

    # A resumed driver unpickles the callback: it finds the run again by its tags and
    # skips the epochs that run logged.
    resumed = pickle.loads(pickle.dumps(logger))
    assert resumed.runs.ids == {} and resumed.buffer.unsent == {}
    resumed.on_trial_result(0, [trial], trial, result(2, device="cuda"))
    resumed.on_trial_result(0, [trial], trial, result(3, device="cuda"))
    assert resumed.runs.run_id(trial.trial_id) == run_id

    lost = store.client.create_run(
        store.experiment, tags=records.trial_tags(parent_id, "w", "lost0000")
    ).info.run_id
    trial.last_result = {**result(3), "time_total_s": 12.5}
    trial.checkpoint = FakeCheckpoint(store.directory / "checkpoint", {"swaps.png": b"png"})
    resumed.on_trial_complete(0, [trial], trial)
    resumed.on_experiment_end([trial])

    assert store.client.get_run(lost).info.lifecycle_stage == "deleted"
    found = records.read_study("w", store.uri)
    (written,) = found.trials
    assert written.run_id == run_id and written.status == "FINISHED"
    assert written.trial_status == "TERMINATED"
    assert written.tags[records.TAG_DEVICE] == "cuda"
    assert written.tags[records.TAG_TIME_TOTAL] == "12.50"
    assert records.TAG_DIVERGED not in written.tags
    assert written.config.run == {**RUN, "study": "w"}
    # Every family default is recorded beside the searched value.
    assert written.config.params["lr"] == 0.003
    assert written.config.params["hidden"] == [500]
    assert epochs_of(store.client, run_id) == [1, 2, 3]
    # The image grids of its last checkpoint, not its weights.
    artifacts = [a.path for a in store.client.list_artifacts(run_id)]
    images = [a.path for a in store.client.list_artifacts(run_id, "images")]
    assert artifacts == ["images"] and images == ["images/swaps.png"]
    # The data it trained on, once, as MLflow's dataset input for training.
    (logged,) = store.client.get_run(run_id).inputs.dataset_inputs
    assert (logged.dataset.name, logged.dataset.digest) == ("digits", "d1")
    assert json.loads(logged.dataset.source) == {"uri": "/data/mnist"}
    assert [(t.key, t.value) for t in logged.tags] == [("mlflow.data.context", "train")]
    # The parent run's trial counts, as the driver saw the trials at the end.
    trial.status = "TERMINATED"
    resumed.on_experiment_end([trial])
    parent_record = records.StudyRecord.from_run(store.client.get_run(parent_id))
    assert parent_record.progress == {
        "trials_total": 1,
        "trials_pending": 0,
        "trials_running": 0,
        "trials_terminated": 1,
        "trials_error": 0,
        "trials_diverged": 0,
    }
    assert parent_record.tags[records.TAG_PROGRESS_AT].endswith("Z")
    assert parent_record.best("swap_acc") == (pytest.approx(0.8), trial.trial_id)


@pytest.mark.parametrize("uptime", [1.0, 1e6])  # seconds since the monotonic clock's zero
def test_a_trial_first_result_goes_out_at_once_whatever_the_clock_reads(monkeypatch, uptime):
    """Linux's monotonic clock starts at the boot: a machine up for less than the throttle
    once held back every trial's first result."""
    from study import tracking

    class Sent(list):
        def submit(self, what, operation):
            self.append(what)

    clock = [uptime]
    monkeypatch.setattr(tracking.time, "monotonic", lambda: clock[0])
    sent = Sent()
    buffer = tracking.MetricBuffer(sent, runs=None)
    metric = lambda step: tracking.Metric("epoch", step, 0, step)  # noqa: E731
    buffer.add("t1", [metric(1)], [])
    buffer.add("t1", [metric(2)], [])
    clock[0] += tracking.METRICS_EVERY_SECONDS
    buffer.add("t1", [metric(3)], [])
    buffer.add("t2", [metric(1)], [])
    assert sent == [
        "metrics of t1 to epoch 1",
        "metrics of t1 to epoch 3",
        "metrics of t2 to epoch 1",
    ]


def test_the_parent_run_counts_the_trials_when_they_change_at_most_every_period(monkeypatch):
    from study import tracking

    class Sent(list):
        def submit(self, what, operation):
            self.append(what)

    clock = [5.0]
    monkeypatch.setattr(tracking.time, "monotonic", lambda: clock[0])
    trials = [
        SimpleNamespace(trial_id=f"t{i}", status=status, last_result=last)
        for i, (status, last) in enumerate(
            [
                ("TERMINATED", {"diverged": 0.0, "acc": 0.5, "loss": 2.0}),
                ("TERMINATED", {"diverged": 1.0, "acc": 0.9, "loss": 0.1}),
                ("ERROR", {"diverged": 1.0}),  # an error is counted as an error only
                ("RUNNING", {"acc": 0.95, "loss": 0.05}),  # not finished: not a best
                ("PENDING", None),
                ("TERMINATED", {"diverged": 0.0, "acc": 0.7, "loss": float("nan")}),
            ]
        )
    ]
    assert tracking.trial_counts(trials) == {
        "trials_total": 6,
        "trials_pending": 1,
        "trials_running": 1,
        "trials_terminated": 3,
        "trials_error": 1,
        "trials_diverged": 1,
    }
    assert tuple(tracking.trial_counts(trials)) == records.PROGRESS_METRICS
    # The best finished trial, neither diverged nor without a finite value.
    objectives = [("acc", "max"), ("loss", "min")]
    assert tracking.best_trials(trials, objectives) == {"acc": (0.7, "t5"), "loss": (2.0, "t0")}
    sent = Sent()
    progress = tracking.StudyProgress(sent, "parent", objectives)
    progress.update(trials)
    progress.update(trials)  # within the period
    clock[0] += tracking.PROGRESS_EVERY_SECONDS
    progress.update(trials)  # due, but nothing changed
    trials[3].status = "TERMINATED"
    progress.update(trials)  # changed, but within the period of the last count
    clock[0] += tracking.PROGRESS_EVERY_SECONDS
    progress.update(trials)
    progress.update(trials, final=True)  # the end is always written
    assert sent == ["study progress"] * 3


def epochs_of(client, run_id: str) -> list[int]:
    return sorted(int(m.step) for m in client.get_metric_history(run_id, "epoch"))


def test_failed_writes_wait_in_order_and_are_replayed(monkeypatch, capsys):
    from study import tracking

    queue = tracking.TrackingQueue("http://user:secret@127.0.0.1:1")
    done, down = [], [True]

    def write(n: int):
        def operation():
            if down[0]:
                raise ConnectionError("server down at http://user:secret@127.0.0.1:1")
            done.append(n)

        return operation

    queue.submit("first", write(1))
    queue.submit("second", write(2))
    assert done == [] and [what for what, _ in queue.pending] == ["first", "second"]
    down[0] = False
    monkeypatch.setattr(tracking.time, "sleep", lambda seconds: None)
    assert queue.drain(timeout=5)
    assert done == [1, 2] and not queue.pending
    printed = capsys.readouterr().out
    assert "queueing writes and retrying" in printed and "queued writes were replayed" in printed
    assert "secret" not in printed
    # Pickled with Ray's callbacks: only where to write goes along.
    queue.submit("third", lambda: 1 / 0)
    restored = pickle.loads(pickle.dumps(queue))
    assert restored.uri == queue.uri and not restored.pending


# --- how the MLflow UI shows a study ----------------------------------------------------------
def test_trial_run_names():
    # A searched trial keeps its study-and-trial name; a re-run is named for what it re-runs.
    assert records.trial_run_name("s1", "ab12_00003", RUN) == "s1-ab12_00003"
    assert records.trial_run_name("s1-robust", "x_00000", {**RUN, "variant": ""}) == (
        "s1-robust-x_00000"
    )
    rerun = {**RUN, "variant": "top1", "seed": 1000}
    assert records.trial_run_name("s1-robust", "x_00000", rerun) == "top1-seed1000"
    replicated = {**rerun, "seeds": 3}
    assert records.trial_run_name("s1-robust", "x_00000", replicated) == "top1-seeds1000-1002"
    neighbour = {**RUN, "variant": "nbr:kl_style_weight=2", "seed": 1001}
    assert records.trial_run_name("s1-robust", "x_00001", neighbour) == (
        "nbr:kl_style_weight=2-seed1001"
    )
    # A re-run's trials name the study they re-run; a search's trials have no source.
    assert records.TAG_SOURCE_STUDY not in records.trial_tags("p", "s1", "t")
    tags = records.trial_tags("p", "s1-robust", "t", source_study="s1")
    assert tags[records.TAG_SOURCE_STUDY] == "s1" and tags[records.TAG_KIND] == records.KIND_TRIAL


def test_experiments_are_tagged_for_model_training(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = records.open_client(uri)
    kind = {records.TAG_EXPERIMENT_KIND: records.EXPERIMENT_KIND}
    assert records.EXPERIMENT_KIND == "custom_model_development"

    def tags_of(name: str) -> dict[str, str]:
        return MlflowClient(uri).get_experiment_by_name(name).tags

    # Created by a study: tagged at creation.
    new = records.experiment_id(client, "new")
    assert tags_of("new") == kind
    assert records.experiment_id(client, "new") == new
    # Made before (by MLflow, or a version without the tag): tagged on the next study start.
    old = client.create_experiment("old")
    assert records.TAG_EXPERIMENT_KIND not in tags_of("old")
    assert records.experiment_id(client, "old") == old
    assert tags_of("old") == kind
    # A kind someone chose in the UI stays.
    client.create_experiment("genai", tags={records.TAG_EXPERIMENT_KIND: "genai_development"})
    records.experiment_id(client, "genai")
    assert tags_of("genai")[records.TAG_EXPERIMENT_KIND] == "genai_development"


def test_a_rerun_trial_run_is_named_by_variant_and_seed(tmp_path):
    from study import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = records.open_client(uri)
    experiment = records.experiment_id(client, records.DEFAULT_EXPERIMENT)
    tags = records.study_tags("s1-robust", "mlvae", "digits", ["swap_acc:max"], "test")
    tags.update(records.robustness_tags("s1"))
    parent_id = client.create_run(experiment, run_name="s1-robust", tags=tags).info.run_id
    queue = tracking.TrackingQueue(uri, client)
    logger = tracking.MlflowTrialLogger(
        queue, experiment, parent_id, "s1-robust", {"swap_acc"}, source_study="s1"
    )
    trial = fake_trial("rr_00000", 0.003)
    trial.config[records.RUN_KEY].update(study="s1-robust", variant="top1", seed=1000)
    logger.on_trial_start(0, [trial], trial)
    # The source survives the pickling Ray does for `study resume`.
    resumed = pickle.loads(pickle.dumps(logger))
    assert resumed.runs.source_study == "s1"

    (written,) = records.read_study("s1-robust", uri).trials
    assert written.run_name == "top1-seed1000"
    assert written.run_name == records.trial_run_name("s1-robust", "rr_00000", written.config.run)
    assert written.tags[records.TAG_SOURCE_STUDY] == "s1"


def saved_view(client, experiment: str, study: str) -> dict:
    """The state of study's saved view, decoded as MLflow's UI decodes it."""
    import base64
    import zlib

    envelope = json.loads(client.get_experiment(experiment).tags[records.study_view_tag(study)])
    assert set(envelope) == {"name", "createdAt", "updatedAt", "state"}
    assert envelope["name"] == f"study {study}" and isinstance(envelope["createdAt"], int)
    packed = envelope["state"].removeprefix("deflate;")
    assert packed != envelope["state"]
    return json.loads(zlib.decompress(base64.b64decode(packed)))


@pytest.mark.parametrize("seeds", [1, 3])
def test_the_study_link_opens_a_view_of_its_trials_and_their_numbers(tmp_path, seeds):
    from urllib.parse import parse_qs, urlsplit

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = records.open_client(uri)
    experiment = records.experiment_id(client, records.DEFAULT_EXPERIMENT)
    space = {"lr": {}, "z_dim": {}}  # the names are what the view reads
    for study in ("s1", "s1-robust"):
        tags = records.study_tags(study, "betavae", "digits", ["recon_mse:min", "kl:max"], "t")
        parent = client.create_run(
            experiment, tags={**tags, records.TAG_SPACE: json.dumps(space)}
        ).info.run_id
        client.log_batch(
            parent, params=records.params_of({"seeds": seeds, "seed_aggregate": "bound"})
        )
        for i in range(2):
            client.create_run(
                experiment,
                run_name=f"{study}-t{i}",
                tags=records.trial_tags(parent, study, f"t{i}"),
            )
    _, _, run = records.find_study(uri, "s1", records.DEFAULT_EXPERIMENT)
    records.write_study_view(client, records.StudyRecord.from_run(run))

    link = records.study_runs_link("http://127.0.0.1:5000/", experiment, "s1")
    assert link.startswith(f"http://127.0.0.1:5000/#/experiments/{experiment}/runs?")
    query = {k: v for k, (v,) in parse_qs(urlsplit(link).fragment.split("?", 1)[1]).items()}
    # The UI applies a saved view only to a link with no filter or sort of its own.
    assert query == {
        "viewStateShareKey": "study-s1",
        "compareRunsMode": "TABLE",
        "workflowType": "machine_learning",
    }
    assert records.VIEW_TAG_PREFIX + query["viewStateShareKey"] == records.study_view_tag("s1")
    envelope = client.get_experiment(experiment).tags[records.study_view_tag("s1")]
    assert len(envelope) <= records.VIEW_TAG_LIMIT
    state = saved_view(client, experiment, "s1")
    # The filter is MLflow search syntax that selects exactly the study's trial runs.
    runs = client.search_runs([experiment], filter_string=state["searchFilter"])
    assert sorted(run.info.run_name for run in runs) == ["s1-t0", "s1-t1"]
    # Best first by what the study ranks by: with seeds, the bound of the first objective.
    ranked = "recon_mse_upper" if seeds > 1 else "recon_mse"
    assert (state["orderByKey"], state["orderByAsc"]) == (f"metrics.`{ranked}`", True)
    seed_columns = [
        f"metrics.`{metric}_{stat}`"
        for metric in ("recon_mse", "kl")
        for stat in records.SEED_STATS
    ]
    expected = {
        records.VIEW_DATASET_COLUMN,
        "metrics.`recon_mse`",
        "metrics.`kl`",
        "params.`lr`",
        "params.`z_dim`",
        *(seed_columns if seeds > 1 else []),
    }
    assert set(state["selectedColumns"]) == expected
