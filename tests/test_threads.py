"""The OpenMP wait policy each execution context gets (study/threads.py): which one, that
a user's own setting wins, and that libgomp really reads it, checked in fresh interpreters
with OMP_DISPLAY_ENV, where libgomp prints the policy it loaded with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from study import threads

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("alone", "load", "policy"),
    [
        (True, 0.1, None),  # `study train` on an idle machine: libgomp's spin
        (True, 0.6, "PASSIVE"),  # ... on a busy one
        (False, 0.0, "PASSIVE"),  # trials share their cores with the driver and each other
        (False, 5.0, "PASSIVE"),
    ],
)
def test_policy_per_context(alone, load, policy):
    assert threads.wait_policy(alone, load) == policy


def test_a_policy_the_user_exported_wins(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    for command in ("train", "run", None):
        threads.configure(command)
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_every_command_but_train_gets_passive(monkeypatch):
    for command in ("run", "resume", "robustness", "demo", None):
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        threads.configure(command)
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE", command


def policy_libgomp_loaded(code: str, env_changes: dict[str, str | None]) -> str:
    """Run `code` and then load torch in a fresh interpreter; the wait policy libgomp
    reports it read."""
    env = {**os.environ, "OMP_DISPLAY_ENV": "TRUE"}
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport torch\ntorch.ones(1)"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = [line for line in done.stderr.splitlines() if "OMP_WAIT_POLICY" in line]
    assert lines, f"libgomp printed no environment: {done.stderr[-500:]}"
    return lines[0].split("=", 1)[1].strip(" '")


def test_a_ray_trial_loads_torch_passive_without_a_driver_environment():
    """A worker started by a cluster's `ray start` inherits nothing from the driver: the
    trainable module sets the policy before torch loads."""
    assert policy_libgomp_loaded("import study.trainable", {"OMP_WAIT_POLICY": None}) == "PASSIVE"


def test_the_study_command_sets_the_policy_before_torch_loads():
    code = (
        "from study.cli import cli\n"
        "import sys\n"
        "sys.argv = ['study', 'run', '--help']\n"
        "try:\n    cli(prog_name='study')\nexcept SystemExit:\n    pass"
    )
    assert policy_libgomp_loaded(code, {"OMP_WAIT_POLICY": None}) == "PASSIVE"
    assert policy_libgomp_loaded(code, {"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
