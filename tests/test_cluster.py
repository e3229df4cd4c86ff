"""`study run --address` against a real Ray cluster of three nodes started on this machine
with `ray start` (one CPU each, token authentication as Ray 2.60 sets up for local clusters,
the bucket's credentials in every node's environment):

- a trial no node can hold is refused in seconds, writing nothing;
- then (last: it takes a node away) a sweep with its results in an S3 bucket (moto) and its
  MLflow artifacts in the same bucket, the first worker node seen running a trial killed hard
  mid-trial: that trial is retried on a surviving node from its last checkpoint in the
  bucket, and the study ends with every trial, one finished run each.

The sweep evaluates only at its last epoch (--eval-every), so results between evaluations
carry the metrics of the first one (Ray requires the objective in every result).
"""

from __future__ import annotations

import json
import re
import time

import pytest
from reliability_support import finish, wait_for
from sweep_helpers import ray_cluster, run_study, study_record, trial_of

from analysis import records
from study.storage import SPEC_FILE
from trainables.experiment import STATE_FILE

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def three_nodes(shared_services):
    """Head and two workers, with the bucket's credentials in every node's environment.
    The lost-node test, last in this file, takes one of its nodes."""
    with ray_cluster(workers=2, **shared_services.env) as started:
        assert len(started.node_ids()) == 3, started.log
        yield started


def result_lines(s3, prefix: str, trial: str) -> list[dict]:
    """The results Ray recorded for `trial`, read back from the bucket."""
    text = s3.read(f"{prefix}/trial_{trial}/result.json").decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def running_on(tracking_uri: str, nodes: set[str]):
    """A RUNNING trial run whose latest result came from one of `nodes`, or None."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(records.DEFAULT_EXPERIMENT)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], filter_string="attributes.status = 'RUNNING'")
    return next((r for r in runs if r.data.tags.get(records.TAG_NODE) in nodes), None)


def test_a_trial_no_node_can_hold_is_refused_in_seconds(three_nodes, tmp_path):
    """Each node has one CPU: two CPUs per trial would leave Ray waiting forever. The plan
    must refuse it after joining, naming the flag and what the nodes have, and write
    nothing (no store, results directory or run)."""
    done = run_study(
        [
            "run",
            "mlvae",
            "--trials",
            "2",
            "--cpus-per-trial",
            "2",
            "--address",
            three_nodes.address,
        ],
        cwd=tmp_path,
        env=three_nodes.env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.describe()
    error = done.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: cpus-per-trial: "), done.describe()
    assert "3 nodes, the largest with 1 CPU and 0 GPUs" in error[0], done.describe()
    assert "--cpus-per-trial 1 or less" in error[0], done.describe()
    assert list(tmp_path.iterdir()) == [], "a refused study wrote files"
    assert done.seconds < 30, done.describe()


@pytest.mark.slow
def test_a_lost_node_trial_is_retried_from_its_checkpoint_in_the_bucket(
    shared_services, three_nodes, procs, tmp_path
):
    # Trials long enough (~11 s on two cores) to outlast the seconds the driver takes to
    # start each one (2-5 s apart here). With 60-epoch trials (~5 s) a CI sweep once ended
    # before the test saw any trial on the second worker, then the fixed victim.
    name, trials, epochs, prefix = "lost", 3, 150, "sweeps"
    s3, tracking = shared_services.s3, shared_services.tracking
    assert len(three_nodes.node_ids()) == 3, three_nodes.log
    workers = set(three_nodes.worker_node_ids())
    log = tmp_path / "run.log"
    driver = procs.study(
        *["run", "mlvae", "--name", name, "--trials", str(trials), "--epochs", str(epochs)],
        *["--eval-every", str(epochs), "--scheduler", "none", "--objective", "swap_acc:max"],
        *["--storage", s3.uri(prefix), "--address", three_nodes.address],
        *["--tracking-uri", tracking.uri, "--optuna-storage", f"sqlite:///{tmp_path}/optuna.db"],
        cwd=tmp_path,
        log=log,
        env=three_nodes.env,
    )

    def trial_on_a_worker():
        if driver.poll() is not None:
            pytest.fail(f"the sweep ended before a node was lost:\n{log.read_text()}")
        return running_on(tracking.uri, workers)

    # Its first result (epoch 1) is logged once its checkpoint is in the bucket. The victim
    # is a worker node (the head holds the cluster) running a trial, whichever Ray chose.
    running = wait_for(trial_on_a_worker, 240, "a trial on a worker node", every=0.3)
    lost_trial, victim = trial_of(running), running.data.tags[records.TAG_NODE]
    time.sleep(2.0)  # some epochs past that checkpoint: work the loss throws away
    killed_at = time.monotonic()
    three_nodes.kill_node(victim)
    output = finish(driver, log)
    finished_after = time.monotonic() - killed_at

    record = study_record(tracking.uri, name)
    assert record.parent.info.status == "FINISHED"
    assert record.parent.data.params["address"] == three_nodes.address
    assert len(record.children) == trials, output
    assert {r.info.status for r in record.children} == {"FINISHED"}, output
    (retried,) = [r for r in record.children if trial_of(r) == lost_trial]
    assert int(retried.data.tags[records.TAG_RETRIES]) >= 1
    assert f"[retry] {lost_trial} failed" in output, output
    assert "already reported" not in output, output  # Optuna's warning per repeated step

    stored = s3.keys(f"{prefix}/{name}/")
    assert f"{prefix}/{name}/{SPEC_FILE}" in stored
    for run in record.children:
        trial = trial_of(run)
        assert run.data.metrics["epoch"] == epochs
        assert any(
            k.startswith(f"{prefix}/{name}/trial_{trial}/checkpoint_") and k.endswith(STATE_FILE)
            for k in stored
        )
        listed = {a.path for a in record.client.list_artifacts(run.info.run_id, "images")}
        assert "images/swaps.png" in listed
        # The tracking server put the images in the bucket, beside the checkpoints.
        images = s3.keys(f"mlartifacts/{record.experiment_id}/{run.info.run_id}/artifacts/images/")
        assert any(k.endswith("/swaps.png") for k in images), images
        lines = result_lines(s3, f"{prefix}/{name}", trial)
        if trial == lost_trial:
            # Restarted from its checkpoint in the bucket, not from scratch: the survivors
            # reported the epochs after the checkpoint's, and the epochs up to it were
            # trained once. (Ray rewrites result.json when it restarts a trial, so the
            # lost node's lines may be gone from it; those after the checkpoint, there
            # when they are, are the work the loss threw away.)
            found = re.search(rf"\[retry\] {trial} failed .*checkpoint at epoch (\d+)", output)
            assert found, output
            saved = int(found.group(1))
            before = [line["epoch"] for line in lines if line["node_id"] == victim]
            after = [line["epoch"] for line in lines if line["node_id"] != victim]
            assert saved >= 1 and after == list(range(saved + 1, epochs + 1)), (saved, after)
            if before:  # kept: epochs 1 to at least the checkpoint's, each once
                assert before == list(range(1, len(before) + 1)) and len(before) >= saved
            assert run.data.tags[records.TAG_NODE] != victim
            history = record.client.get_metric_history(run.info.run_id, "epoch")
            assert sorted(m.step for m in history) == list(range(1, epochs + 1))
        else:
            # Evaluated after epoch 1 (every result must carry the objective) and at the
            # end; the epochs between repeat epoch 1's value.
            history = record.client.get_metric_history(run.info.run_id, "swap_acc")
            values = {m.step: m.value for m in history}
            assert sorted(values) == list(range(1, epochs + 1))
            assert values[2] == values[1]
    retries = [line for line in output.splitlines() if line.startswith("[retry]")]
    print(f"lost node: the study finished {finished_after:.0f}s after the kill; {retries}")
