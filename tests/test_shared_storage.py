"""Studies whose results live on shared storage: a real S3-compatible server (moto, with
signatures checked against an IAM key) and a real `mlflow server` over HTTP whose artifacts
go to the same bucket (the lost-node sweep on a three-node cluster is in test_cluster.py).

- a killed driver, then `study resume` from another directory given only the storage URI:
  exactly the requested trials and runs, everything recorded on the server (its backend
  store on PostgreSQL), the sampler's study in PostgreSQL and the rest in the bucket,
  nothing local; `study robustness` then re-runs the best from the bucket;
- two studies at once against the same databases;
- storage the server refuses (a missing bucket, missing or wrong credentials): exit 2 in
  seconds with one line, and nothing written anywhere.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import ray.cloudpickle
from reliability_support import (
    BROKEN_STUDY,
    SMALL_SWEEP,
    clean_env,
    finish,
    pids_in_session,
    run_forked_cli,
    wait_for,
)
from s3_support import S3Server
from sweep_helpers import base_env, ray_tmpdir, run_study, study_record, trial_of

from analysis import records
from study import samplers
from study.storage import SPEC_FILE
from trainables import get_family
from trainables.experiment import STATE_FILE

pytestmark = pytest.mark.cluster


# --- a killed driver, resumed from another directory --------------------------------------
@pytest.mark.slow
def test_resume_on_another_driver_needs_only_the_storage_uri(
    shared_services, cluster_databases, procs, tmp_path
):
    """ML-VAE's two default objectives, so Optuna runs NSGA-II; its state too must come
    back from the bucket. The databases are a cluster's: the tracking server's backend
    store and the Optuna storage on PostgreSQL, so the second driver needs the storage URI
    alone (the spec in the bucket names the other two)."""
    name, trials, epochs = "moved", 4, 15
    s3, tracking = shared_services.s3, cluster_databases.tracking
    optuna_url = cluster_databases.optuna_url
    storage = s3.uri("sweeps")
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    with ray_tmpdir() as ray_tmp:
        env = base_env(ray_tmp, **shared_services.env)
        log = first / "run.log"
        driver = procs.study(
            *["run", "mlvae", "--name", name, "--trials", str(trials), "--epochs", str(epochs)],
            *["--eval-every", str(epochs), "--scheduler", "none"],
            *["--storage", storage, "--tracking-uri", tracking.uri],
            *["--optuna-storage", optuna_url],
            cwd=first,
            log=log,
            env=env,
        )

        def one_finished():
            if driver.poll() is not None:
                pytest.fail(f"the sweep ended before its driver was killed:\n{log.read_text()}")
            return "[1/" in log.read_text()

        wait_for(one_finished, 240, "a finished trial", every=0.3)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        procs.stop(driver, signal.SIGKILL)  # its local Ray too, as if its machine was gone
        assert not pids_in_session(driver.pid)
        assert study_record(tracking.uri, name).parent.info.status == "RUNNING"

        # Another driver: a new directory, the storage URI and the credentials; the spec
        # in the bucket says where MLflow and the Optuna study are.
        resume_log = second / "resume.log"
        started = time.monotonic()
        resumed = procs.study(
            "resume", name, "--storage", storage, cwd=second, log=resume_log, env=env
        )
        output = finish(resumed, resume_log)
        print(f"resumed on PostgreSQL in {time.monotonic() - started:.1f} s:\n{output}")
    assert sorted(p.name for p in second.iterdir()) == ["resume.log"], "resume wrote local files"
    # The first driver kept only its log: no results, no MLflow store, no Optuna storage.
    assert sorted(p.name for p in first.iterdir()) == ["run.log"]
    # The sampler's study, in PostgreSQL: every trial told, none left running.
    import optuna

    told = optuna.load_study(study_name=name, storage=optuna_url).get_trials(deepcopy=False)
    assert len(told) >= trials
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in told) == trials
    assert not [t for t in told if t.state == optuna.trial.TrialState.RUNNING]

    record = study_record(tracking.uri, name)
    parent = record.parent
    assert parent.info.status == "FINISHED"
    assert parent.data.params["tracking_uri"] == tracking.uri
    assert parent.data.params["storage"] == storage
    assert parent.data.params["optuna_storage"] == records.redact(optuna_url)
    assert parent.data.metrics["trials_total"] == trials
    objectives = get_family("mlvae").default_objectives
    assert parent.data.tags[records.TAG_OBJECTIVES] == ",".join(objectives)
    assert len(objectives) == 2 and parent.data.tags[records.TAG_SAMPLER] == "NSGAIISampler"
    assert len(record.children) == trials, output
    assert len({trial_of(r) for r in record.children}) == trials
    assert {r.info.status for r in record.children} == {"FINISHED"}, output

    stored = s3.keys(f"sweeps/{name}/")
    assert f"sweeps/{name}/{SPEC_FILE}" in stored
    metric_names = set(get_family("mlvae").metric_names)
    for run in record.children:
        run_id, trial = run.info.run_id, trial_of(run)
        assert run.data.tags[records.TAG_PARENT] == parent.info.run_id
        assert metric_names <= set(run.data.metrics)
        assert run.data.metrics["epoch"] == epochs
        # No epoch logged twice, though the killed driver's trials ran again from their
        # checkpoints (a driver killed with -9 may leave a few epochs unlogged, see README).
        steps = sorted(m.step for m in record.client.get_metric_history(run_id, "recon_mse"))
        assert len(steps) == len(set(steps)) and steps[-1] == epochs, steps
        assert any(
            k.startswith(f"sweeps/{name}/trial_{trial}/checkpoint_") and k.endswith(STATE_FILE)
            for k in stored
        )
        # Artifacts go through the server's proxy into its destination, the bucket.
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
        listed = {a.path: a.file_size for a in record.client.list_artifacts(run_id, "images")}
        assert set(listed) == {
            "images/reconstructions.png",
            "images/swaps.png",
            "images/latent_scatter.png",
        }
        where = f"{cluster_databases.artifacts_prefix}/{record.experiment_id}/{run_id}/artifacts/images/"
        sizes = {k.rpartition("/")[2]: len(s3.read(k)) for k in s3.keys(where)}
        assert sizes == {k.removeprefix("images/"): v for k, v in listed.items()}

    # The sampler's state came back from the bucket: multi-objective NSGA-II, every trial.
    # (One state per driver, named by its start time: the resumed driver's is the last.)
    state_key = max(k for k in stored if k.rpartition("/")[2].startswith("searcher-state-"))
    study = ray.cloudpickle.loads(s3.read(state_key))["_ot_study"]
    assert type(study.sampler) is samplers.NSGAIISampler  # Optuna's, picklable
    assert len(study.directions) == 2
    assert len(study.trials) >= trials

    # `study status` lists the bucket's studies.
    listed = run_forked_cli(["status", "--storage", storage], second, env=env)
    assert listed.returncode == 0 and name in listed.stdout.split(), listed

    # The best config re-run from the bucket, again with nothing local; this time the
    # endpoint comes from AWS_ENDPOINT_URL (which pyarrow reads, in the driver and in Ray's
    # workers), not from the URI.
    plain = f"s3://{s3.bucket}/sweeps"
    robust = run_study(
        ["robustness", name, "--top", "1", "--seeds", "2", "--storage", plain],
        cwd=second,
        env=base_env(None, **shared_services.env, AWS_ENDPOINT_URL=s3.endpoint),
    )
    assert "robust-best: top1" in robust.stdout, robust.describe()
    assert sorted(p.name for p in second.iterdir()) == ["resume.log"]
    robust_record = study_record(tracking.uri, f"{name}-robust")
    assert robust_record.parent.data.params["storage"] == plain
    assert [r.info.status for r in robust_record.children] == ["FINISHED"]
    robust_keys = s3.keys(f"sweeps/{name}-robust/")
    assert f"sweeps/{name}-robust/{SPEC_FILE}" in robust_keys
    assert any(k.endswith(STATE_FILE) for k in robust_keys), robust_keys


@pytest.mark.slow
def test_two_studies_at_once_share_the_databases(
    shared_services, cluster_databases, procs, tmp_path
):
    """Two drivers (each with Ray of its own) write to one tracking server on PostgreSQL
    and one Optuna database at the same time: each study gets its own trials, runs and
    Optuna study, and neither sees the other's."""
    names, trials = ("twin-a", "twin-b"), 3
    tracking, optuna_url = cluster_databases.tracking, cluster_databases.optuna_url
    storage = shared_services.s3.uri("twins")
    drivers = []
    with ray_tmpdir() as ray_tmp:
        env = base_env(ray_tmp, **shared_services.env)
        started = time.monotonic()
        for name in names:
            cwd = tmp_path / name
            cwd.mkdir()
            driver = procs.study(
                *["run", "betavae", "--name", name, "--trials", str(trials), "--epochs", "2"],
                *["--scheduler", "none", "--concurrency", "1", "--storage", storage],
                *["--tracking-uri", tracking.uri, "--optuna-storage", optuna_url],
                cwd=cwd,
                log=cwd / "run.log",
                env=env,
            )
            drivers.append((driver, cwd / "run.log"))
        for driver, log in drivers:
            finish(driver, log)
        print(f"two studies at once on PostgreSQL: {time.monotonic() - started:.1f} s")
    import optuna

    stored = optuna.get_all_study_names(storage=optuna_url)
    for name in names:
        record = study_record(tracking.uri, name)
        assert record.parent.info.status == "FINISHED"
        assert record.parent.data.metrics["trials_terminated"] == trials
        assert [r.info.status for r in record.children] == ["FINISHED"] * trials
        assert {r.data.tags[records.TAG_STUDY] for r in record.children} == {name}
        assert name in stored
        told = optuna.load_study(study_name=name, storage=optuna_url).trials
        assert [t.state for t in told] == [optuna.trial.TrialState.COMPLETE] * trials


# --- a study that cannot start -------------------------------------------------------------
def test_a_study_that_cannot_start_leaves_nothing_in_the_bucket(shared_services, tmp_path):
    """As tests/test_reliability.py's study that cannot start, its results on S3 and its
    runs on a tracking server: the study's prefix (its spec, Tune's tuner.pkl) is gone
    from the bucket, and its parent run ended as failed and was deleted."""
    s3, tracking = shared_services.s3, shared_services.tracking
    name, storage = "unmade-s3", s3.uri("unmade")
    args = [*SMALL_SWEEP, "--name", name, "--storage", storage, "--tracking-uri", tracking.uri]
    args += ["--optuna-storage", f"sqlite:///{tmp_path / 'optuna.db'}"]
    with ray_tmpdir() as ray_tmp:
        env = base_env(ray_tmp, **shared_services.env)
        done = run_study(["pickle", *args], tmp_path, env, check=False, study=BROKEN_STUDY)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.describe()
    assert lines[0].startswith(
        f"error: study {name} could not start: TypeError: cannot pickle '_thread.lock' object; "
        "nothing was kept; traceback in "
    ), done.describe()
    # The storage's own directory stays (an empty marker, as ray_results/ stays locally).
    assert s3.keys("unmade/") == ["unmade/"]
    runs = [r for r in all_runs(tracking.uri) if r.data.tags.get(records.TAG_STUDY) == name]
    assert [(r.info.status, r.info.lifecycle_stage) for r in runs] == [("FAILED", "deleted")]
    env = {**clean_env(), **shared_services.env}
    listed = run_forked_cli(["status", "--storage", storage], tmp_path, env=env)
    assert listed.returncode == 0 and name not in listed.stdout, listed


# --- storage that cannot be used ----------------------------------------------------------
# The refusals only a real server gives; those made before any request (an endpoint that
# does not answer, credentials in the URI, an unknown scheme or option) are rows of
# test_bad_input.py.
CASES = ["missing bucket", "no credentials", "wrong credentials"]


def bad_storage(s3: S3Server, case: str) -> tuple[str, dict[str, str], str]:
    """(--storage, AWS environment, what the error line must say) for `case`."""
    good = s3.env
    if case == "missing bucket":
        storage = s3.uri("x").replace(f"s3://{s3.bucket}/", "s3://no-such-bucket/")
        return storage, good, "bucket 'no-such-bucket' does not exist"
    if case == "no credentials":
        nowhere = {
            "AWS_DEFAULT_REGION": good["AWS_DEFAULT_REGION"],
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
            "AWS_CONFIG_FILE": "/nonexistent/config",
        }
        return s3.uri("x"), nowhere, "no AWS credentials in the environment"
    wrong = {**good, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    return s3.uri("x"), wrong, "refused the credentials"


@pytest.mark.parametrize("case", CASES)
def test_unusable_storage_fails_in_seconds_writing_nothing(shared_services, tmp_path, case):
    s3, tracking = shared_services.s3, shared_services.tracking
    storage, aws, expected = bad_storage(s3, case)
    objects_before, runs_before = s3.keys(), len(all_runs(tracking.uri))
    env = {k: v for k, v in clean_env().items() if not k.startswith("AWS_")}
    started = time.monotonic()
    done = run_forked_cli(
        ["run", "mlvae", "--trials", "2", "--storage", storage, "--tracking-uri", tracking.uri]
        + ["--optuna-storage", f"sqlite:///{tmp_path}-optuna.db"],
        tmp_path,
        env={**env, **aws},
    )
    seconds = time.monotonic() - started
    shown = f"exit {done.returncode} after {seconds:.0f}s\n{done.stdout}\n{done.stderr}"
    assert done.returncode == 2, shown
    error = done.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: storage: "), shown
    assert expected in error[0], shown
    assert s3.env["AWS_SECRET_ACCESS_KEY"] not in done.stdout + done.stderr
    assert seconds < 30, shown
    assert list(tmp_path.iterdir()) == [], "a refused study wrote files"
    assert s3.keys() == objects_before
    assert len(all_runs(tracking.uri)) == runs_before


def all_runs(uri: str) -> list:
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(records.DEFAULT_EXPERIMENT)
    return (
        []
        if found is None
        else client.search_runs([found.experiment_id], run_view_type=ViewType.ALL)
    )
