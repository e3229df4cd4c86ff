"""The MLflow UI as a researcher meets it, in a real browser: `study ui NAME` serves the
study store and prints a link, and headless Chromium (tests/browser_support.py), loading
that link, renders the study's runs by name, in model-training mode (not the GenAI
overview MLflow 3 opens an experiment on), with their numbers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from browser_support import (
    CHROMIUM,
    CHROMIUM_NAMES,
    render,
    ui_metric_text,
    wait_until_answering,
)
from sweep_helpers import STUDY, free_ports, kill_group

from analysis import records

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason=f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}); "
        f"`make test` installs Debian's chromium where apt-get works, or `apt-get install chromium`",
    ),
]

UI_START_S = 90  # `study ui` until it answers, on a busy two-core machine
# What only MLflow's GenAI mode shows for an experiment (its side navigation).
GENAI_ONLY = ("Evaluation runs", "Observability")


@pytest.fixture(scope="module")
def ui(analysis_study, tmp_path_factory):
    """`study ui an` on a free port in the study's directory (its default store), as a
    user starts it; yields the UI's address and the link it printed; stopped at the end,
    with nothing of it left running."""
    (port,) = free_ports(1)
    log = tmp_path_factory.mktemp("ui") / "ui.log"
    # Without MLflow's job runners (eight more processes) it starts sooner; the UI is the same.
    env = {**analysis_study.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [*STUDY, "ui", analysis_study.name, "--port", str(port)],
            cwd=analysis_study.cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        address = f"http://127.0.0.1:{port}"
        try:
            wait_until_answering(address, process, UI_START_S)
        except RuntimeError as error:
            pytest.fail(f"`study ui`: {error}:\n{log.read_text()[-3000:]}")
        links = re.findall(rf"^study {analysis_study.name}: (\S+)$", log.read_text(), re.M)
        assert len(links) == 1, log.read_text()
        yield address, links[0]
    finally:
        kill_group(process)
        assert not group_members(process.pid), f"`study ui` left {group_members(process.pid)}"


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid`."""
    members = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def assert_model_training_runs_page(dom: str) -> None:
    assert re.search(r"<title>Runs - Experiment \d+ - MLflow</title>", dom), dom[:2000]
    for genai in GENAI_ONLY:
        assert genai not in dom, f"the page is in GenAI mode ({genai!r} shown)"


def test_the_study_link_shows_its_runs_in_model_training_mode(analysis_study, ui, tmp_path):
    address, link = ui
    client = records.open_client(analysis_study.tracking_uri)
    experiment = client.get_experiment_by_name(records.DEFAULT_EXPERIMENT)
    assert experiment.tags[records.TAG_EXPERIMENT_KIND] == records.EXPERIMENT_KIND
    assert link == records.study_runs_link(address, experiment.experiment_id, analysis_study.name)

    found = records.read_study(analysis_study.name, analysis_study.tracking_uri)
    names = [trial.run_name for trial in found.trials]
    assert len(names) == 6 and all(name.startswith(f"{analysis_study.name}-") for name in names)
    dom = render(link, tmp_path / "profile")
    assert_model_training_runs_page(dom)
    missing = [name for name in names if f">{name}<" not in dom]
    assert not missing, f"run names not on the page: {missing}"
    # Only this study's trials: neither its parent run nor its re-runs' trials.
    assert f">{analysis_study.robust}<" not in dom and ">top1-seeds1000-1001<" not in dom
    # The view opens on the numbers: every trial's objectives, as the UI formats them,
    # and the searched parameters' and objectives' column headers.
    for metric, _ in found.parent.objectives:
        values = [ui_metric_text(trial.metrics[metric]) for trial in found.trials]
        missing = [v for v in values if f">{v}<" not in dom]
        assert not missing, f"{metric} values not on the page: {missing}"
        assert f">{metric}<" in dom
    for name in json.loads(found.parent.space):
        assert f">{name}<" in dom, f"no column for the searched parameter {name}"
    # The data each trial trained on, as the Dataset column shows it: name (digest).
    (dataset,) = {
        (i.dataset.name, i.dataset.digest)
        for trial in found.trials
        for i in records.open_client(analysis_study.tracking_uri)
        .get_run(trial.run_id)
        .inputs.dataset_inputs
    }
    assert dataset[0] == "digits" and f"{dataset[0]} ({dataset[1]})" in dom


def test_rerun_study_runs_are_named_by_variant_and_seed(analysis_study, ui, tmp_path):
    address, link = ui
    experiment = re.search(r"/#/experiments/(\w+)/runs", link).group(1)
    found = records.read_study(analysis_study.robust, analysis_study.tracking_uri)
    for trial in found.trials:
        assert trial.run_name == records.trial_run_name(
            analysis_study.robust, trial.trial_id, trial.config.run
        )
        assert trial.tags[records.TAG_SOURCE_STUDY] == analysis_study.name
    names = [trial.run_name for trial in found.trials]
    # A trial per config, its seeds (1000, 1001) trained as replicas.
    assert {"top1-seeds1000-1001", "top2-seeds1000-1001"} <= set(names)

    page = records.study_runs_link(address, experiment, analysis_study.robust)
    dom = render(page, tmp_path / "profile")
    assert_model_training_runs_page(dom)
    missing = [name for name in names if f">{name}<" not in dom]
    assert not missing, f"run names not on the page: {missing}"
