"""The MLflow UI as a researcher meets it, in a real browser: `study ui NAME` serves the
study store and prints a link, and headless Chromium, loading that link, renders the
study's runs by name, in model-training mode (not the GenAI overview MLflow 3 opens an
experiment on).

Chromium runs with `--dump-dom` and a virtual time budget: virtual time stands still while
the page's requests to the server are open, so the React app has its answers and has
rendered them when the budget runs out and the DOM is printed. A fresh profile per page
means no mode is remembered from an earlier visit: the link alone must set it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from sweep_helpers import STUDY, free_ports, kill_group

from analysis import records

# The names `make test` looks for too (Makefile, CHROMIUM_NAMES).
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM = next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason=f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}); "
        f"`make test` installs Debian's chromium where apt-get works, or `apt-get install chromium`",
    ),
]

UI_START_S = 90  # `study ui` until it answers, on a busy two-core machine
VIRTUAL_TIME_MS = 15000
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
        wait_until_answering(address, process, log)
        links = re.findall(rf"^study {analysis_study.name}: (\S+)$", log.read_text(), re.M)
        assert len(links) == 1, log.read_text()
        yield address, links[0]
    finally:
        kill_group(process)
        assert not group_members(process.pid), f"`study ui` left {group_members(process.pid)}"


def wait_until_answering(address: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + UI_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"`study ui` exited {process.returncode}:\n{log.read_text()[-3000:]}")
        health = f"{address}/health"
        with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"`study ui` did not answer within {UI_START_S}s:\n{log.read_text()[-3000:]}")


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid`."""
    members = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def render(url: str, profile: Path) -> str:
    """The DOM of `url` once headless Chromium has rendered it."""
    process = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # as root in a container
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--window-size=1600,1200",  # every row of the table in view (it renders only those)
            f"--virtual-time-budget={VIRTUAL_TIME_MS}",
            "--dump-dom",
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        dom, errors = process.communicate(timeout=90)
    finally:
        kill_group(process, grace=5)
    assert process.returncode == 0 and dom, (
        f"chromium exited {process.returncode}:\n{errors[-3000:]}"
    )
    return dom


def run_names(analysis_study, study: str) -> list[str]:
    return [
        trial.run_name for trial in records.read_study(study, analysis_study.tracking_uri).trials
    ]


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

    names = run_names(analysis_study, analysis_study.name)
    assert len(names) == 6 and all(name.startswith(f"{analysis_study.name}-") for name in names)
    dom = render(link, tmp_path / "profile")
    assert_model_training_runs_page(dom)
    missing = [name for name in names if f">{name}<" not in dom]
    assert not missing, f"run names not on the page: {missing}"
    # Only this study's trials: neither its parent run nor its re-runs' trials.
    assert f">{analysis_study.robust}<" not in dom and ">top1-seeds1000-1001<" not in dom


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
