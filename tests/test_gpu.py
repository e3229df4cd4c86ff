"""Trials on a GPU: four trials of a quarter GPU each share one card, all at once, each
training on CUDA (in bf16, the GPU setting), and MLflow records them as usual. Skipped
without CUDA: CI has none; `tests/bench/device_check.sh` runs it on a lent GPU machine."""

from __future__ import annotations

import pytest
import torch
from sweep_helpers import base_env, ray_tmpdir, run_study, study_record

from analysis import records

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TRIALS = 4
EPOCHS = 30


def test_four_quarter_gpu_trials_share_one_card(tmp_path):
    with ray_tmpdir() as ray_tmp:
        done = run_study(
            [
                "run",
                "icvae",
                "--trials",
                str(TRIALS),
                "--concurrency",
                str(TRIALS),
                "--gpus-per-trial",
                "0.25",
                "--cpus-per-trial",
                "1",
                "--scheduler",
                "none",
                "--epochs",
                str(EPOCHS),
                "--precision",
                "bf16",
                "--set",
                "lr=0.001",  # the sharing is under test, not the search space's range
                "--name",
                "quarters",
            ],
            cwd=tmp_path,
            env=base_env(ray_tmp),
        )
    record = study_record(f"sqlite:///{tmp_path / 'mlflow.db'}", "quarters")
    runs = record.children
    assert len(runs) == TRIALS, done.describe()
    assert {r.info.status for r in runs} == {"FINISHED"}, done.describe()
    assert {r.data.tags.get(records.TAG_DEVICE) for r in runs} == {"cuda"}
    assert {r.data.params.get(records.run_column("precision")) for r in runs} == {"bf16"}
    # All four ran at the same time: each started before any finished (one card, so one
    # quarter each; a whole-GPU request would have run them one by one).
    assert max(r.info.start_time for r in runs) < min(r.info.end_time for r in runs)
    for run in runs:
        history = record.client.get_metric_history(run.info.run_id, "epoch")
        assert max(m.value for m in history) == EPOCHS
        assert run.data.metrics["diverged"] == 0.0
