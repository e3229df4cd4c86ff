"""Every registered family through the whole tool, as a user drives it: `study demo` (a
small sweep of each family on real Ray and MLflow), then per family `study export`,
`study train --config` of the exported best config, and `study report`. The contract suite (trainables.contract) checks the
families one by one; this checks that nothing outside `trainables/` needs to know them."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from reliability_support import run_forked_cli
from sweep_helpers import base_env, ray_tmpdir, run_study, study_record

from trainables import all_families, get_family

TRIALS = 2
EPOCHS = 2
# `study train` must reproduce the trial's numbers; test_sweep measured them equal to the
# last bit, so this leaves room for float noise only.
REPRODUCE_ABS = 1e-5


def cli(args: list[str], cwd) -> None:
    """A quick command, forked from a process that has imported the CLI already."""
    done = run_forked_cli(args, cwd)
    assert done.returncode == 0, f"study {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`study demo` at a tiny size: one sweep of every family in one process, one Ray."""
    cwd = tmp_path_factory.mktemp("demo")
    with ray_tmpdir() as ray_tmp:
        done = run_study(
            ["demo", "--trials", str(TRIALS), "--epochs", str(EPOCHS)],
            cwd=cwd,
            env=base_env(ray_tmp),
        )
    names = re.findall(r"^study (demo-\S+): ", done.stdout, flags=re.MULTILINE)
    return cwd, {name.split("-")[1]: name for name in names}


@pytest.mark.parametrize("name", sorted(all_families()))
def test_sweep_export_retrain_and_report(name, demo):
    cwd, studies = demo
    family = get_family(name)
    study = studies[name]
    record = study_record(f"sqlite:///{cwd / 'mlflow.db'}", study)
    assert record.parent.info.status == "FINISHED"
    assert len(record.children) == TRIALS
    assert all(c.info.status == "FINISHED" for c in record.children)

    cli(["export", study], cwd)
    best = yaml.safe_load((cwd / "exports" / study / "best.yaml").read_text())
    assert best["family"] == name
    reported = family.reported_metrics(family.make_config(best["params"]))
    assert set(reported) <= set(best["metrics"]), sorted(best["metrics"])

    trained = run_study(
        ["train", "--config", f"exports/{study}/best.yaml", "--json", "--out", f"re-{name}"],
        cwd=cwd,
        env=base_env(OMP_NUM_THREADS="1"),
    )
    metrics = json.loads(trained.stdout.strip().splitlines()[-1])["metrics"]
    for metric in reported:
        assert metrics[metric] == pytest.approx(best["metrics"][metric], abs=REPRODUCE_ABS), metric

    cli(["report", study], cwd)
    page = (cwd / "reports" / study / "index.html").read_text()
    assert name in page
    for grid in family.grids:
        if not grid.optional:
            assert f"<img src='images/{grid.name}.png'>" in page, grid.name
