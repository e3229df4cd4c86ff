"""Tracking to a real `mlflow server` over HTTP: a 2-trial sweep run with
--tracking-uri http://127.0.0.1:PORT leaves the parent and child runs, their metrics and
their images on the server (artifacts uploaded through the server's proxy), and nothing
in a local store. The sweep uses ML-VAE's two default objectives, so Optuna runs NSGA-II."""

from __future__ import annotations

import optuna
import pytest
from reliability_support import MlflowServer, Processes
from sweep_helpers import base_env, load_searcher_state, ray_tmpdir, run_study, study_record

from analysis import records
from trainables import get_family

pytestmark = pytest.mark.cluster

NAME = "r1"
TRIALS = 2
EPOCHS = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("mlflow-server")
    processes = Processes()
    try:
        server = MlflowServer(processes, root)
        server.start()
        yield server.uri, root
    finally:
        processes.close()


def test_sweep_records_to_a_tracking_server(server, tmp_path):
    uri, server_root = server
    with ray_tmpdir() as ray_tmp:
        done = run_study(
            [
                "run",
                "mlvae",
                "--trials",
                str(TRIALS),
                "--epochs",
                str(EPOCHS),
                "--scheduler",
                "none",
                "--name",
                NAME,
                "--tracking-uri",
                uri,
            ],
            cwd=tmp_path,
            env=base_env(ray_tmp),
        )
    assert f"mlflow:  {uri}" in done.stdout
    assert not (tmp_path / "mlflow.db").exists(), "wrote a local store besides the server"

    record = study_record(uri, NAME)
    client, parent = record.client, record.parent
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[records.TAG_KIND] == records.KIND_STUDY
    assert parent.data.params["tracking_uri"] == uri
    assert parent.data.metrics["trials_total"] == TRIALS
    objectives = get_family("mlvae").default_objectives
    assert parent.data.tags[records.TAG_OBJECTIVES] == ",".join(objectives)
    assert len(objectives) == 2
    assert parent.data.tags[records.TAG_SAMPLER] == "NSGAIISampler"

    assert len(record.children) == TRIALS
    metric_names = set(get_family("mlvae").metric_names)
    for child in record.children:
        run_id = child.info.run_id
        assert child.info.status == "FINISHED"
        assert child.data.tags[records.TAG_PARENT] == parent.info.run_id
        assert metric_names <= set(child.data.metrics)
        assert child.data.metrics["epoch"] == EPOCHS
        steps = [m.step for m in client.get_metric_history(run_id, "recon_mse")]
        assert sorted(steps) == list(range(1, EPOCHS + 1))
        assert child.info.artifact_uri.startswith("mlflow-artifacts:"), child.info.artifact_uri
        listed = {a.path: a.file_size for a in client.list_artifacts(run_id, "images")}
        assert set(listed) == {
            "images/reconstructions.png",
            "images/swaps.png",
            "images/latent_scatter.png",
        }
        # The server stored the uploads in its own artifact destination.
        stored = list((server_root / "artifacts").rglob(f"{run_id}/artifacts/images/*.png"))
        assert {p.name: p.stat().st_size for p in stored} == {
            k.removeprefix("images/"): v for k, v in listed.items()
        }

    # Two objectives: the Optuna study behind the trials is multi-objective NSGA-II.
    state = load_searcher_state(tmp_path / "ray_results", NAME)
    study = state["_ot_study"]
    assert type(study.sampler) is optuna.samplers.NSGAIISampler
    assert len(study.directions) == 2
    assert len(study.trials) == TRIALS
