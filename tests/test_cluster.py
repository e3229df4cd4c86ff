"""`study run --address` against a real two-node Ray cluster started on this machine
(head + one worker node, one CPU each, token authentication as Ray 2.60 sets up for local
clusters): the trials must run on both nodes, and MLflow must say which ran where.

The sweep also evaluates only every EPOCHS epochs (--eval-every), so results between
evaluations carry the metrics of the last one (which Ray requires of every result)."""

from __future__ import annotations

import pytest
from sweep_helpers import ray_cluster, run_study, study_record

from analysis import records

pytestmark = pytest.mark.cluster

NAME = "c1"
TRIALS = 2
# Each trial must outlast the other node's actor start (several seconds), or Ray reuses the
# first node's freed actor for the second trial: about 0.1 s an epoch on digits.
EPOCHS = 150


@pytest.fixture(scope="module")
def cluster():
    with ray_cluster() as started:
        assert len(started.node_ids()) == 2, started.log
        yield started


def test_trials_run_on_both_nodes(cluster, tmp_path):
    done = run_study(
        [
            "run",
            "mlvae",
            "--trials",
            str(TRIALS),
            "--epochs",
            str(EPOCHS),
            "--eval-every",
            str(EPOCHS),
            "--scheduler",
            "none",
            "--objective",
            "swap_acc:max",
            "--name",
            NAME,
            "--address",
            cluster.address,
        ],
        cwd=tmp_path,
        env=cluster.env,
    )
    record = study_record(f"sqlite:///{tmp_path / 'mlflow.db'}", NAME)
    assert record.parent.info.status == "FINISHED"
    assert record.parent.data.params["address"] == cluster.address
    children = record.children
    assert len(children) == TRIALS, done.describe()
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.metrics["epoch"] == EPOCHS
        # Evaluated after epoch 1 (so every result has the objective) and at the end;
        # epoch 2 repeats epoch 1's numbers.
        history = record.client.get_metric_history(child.info.run_id, "swap_acc")
        values = {m.step: m.value for m in history}
        assert sorted(values) == list(range(1, EPOCHS + 1))
        assert values[2] == values[1]
        names = {a.path for a in record.client.list_artifacts(child.info.run_id, "images")}
        assert "images/swaps.png" in names
    # One CPU per node and one per trial: the two trials ran at once, one on each node.
    nodes = {c.data.tags[records.TAG_NODE] for c in children}
    assert nodes == cluster.node_ids()


def test_a_trial_no_node_can_hold_is_refused_in_seconds(cluster, tmp_path):
    """Each node has one CPU: two CPUs per trial would leave Ray waiting forever. The plan
    must refuse it after joining, naming the flag and what the nodes have, and write
    nothing (no store, results directory or run)."""
    done = run_study(
        ["run", "mlvae", "--trials", "2", "--cpus-per-trial", "2", "--address", cluster.address],
        cwd=tmp_path,
        env=cluster.env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.describe()
    error = done.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: cpus-per-trial: "), done.describe()
    assert "2 nodes, the largest with 1 CPU and 0 GPUs" in error[0], done.describe()
    assert "--cpus-per-trial 1 or less" in error[0], done.describe()
    assert list(tmp_path.iterdir()) == [], "a refused study wrote files"
    assert done.seconds < 30, done.describe()
