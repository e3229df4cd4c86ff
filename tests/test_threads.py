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
    reports it read. Its OMP_WAIT_POLICY line says PASSIVE for an unset policy too, so the
    spin count tells them apart: 0 when PASSIVE, 300,000 for the default spin."""
    env = {**os.environ, "OMP_DISPLAY_ENV": "VERBOSE"}
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
    lines = [line for line in done.stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    assert lines, f"libgomp printed no environment: {done.stderr[-500:]}"
    spin_count = int(lines[0].split("=", 1)[1].strip(" '"))
    return {0: "PASSIVE", 300000: "spin", 30000000000: "ACTIVE"}[spin_count]


def test_the_display_tells_the_policies_apart():
    """The check the tests below rely on: an unset policy is not read as PASSIVE."""
    assert policy_libgomp_loaded("", {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}) == "spin"
    assert policy_libgomp_loaded("", {"OMP_WAIT_POLICY": "PASSIVE"}) == "PASSIVE"


def test_a_ray_trial_loads_torch_passive_without_a_driver_environment():
    """A worker started by a cluster's `ray start` inherits nothing from the driver: the
    trainable module sets the policy before torch loads."""
    assert policy_libgomp_loaded("import study.trainable", {"OMP_WAIT_POLICY": None}) == "PASSIVE"


def command(*words: str) -> str:
    """Code that runs `study WORDS` in-process without exiting."""
    return (
        "from study.cli import cli\n"
        f"import sys\nsys.argv = ['study', {', '.join(map(repr, words))}]\n"
        "try:\n    cli(prog_name='study')\nexcept SystemExit:\n    pass"
    )


def test_the_study_command_sets_the_policy_before_torch_loads():
    unset = {"OMP_WAIT_POLICY": None}
    assert policy_libgomp_loaded(command("run", "--help"), unset) == "PASSIVE"
    assert (
        policy_libgomp_loaded(command("run", "--help"), {"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
    )
    # `study train` spins or sleeps by the machine's load as it starts: whichever it is,
    # libgomp must load with the policy the function gives for that load.
    load = os.getloadavg()[0]
    train = policy_libgomp_loaded(command("train", "--help"), unset)
    if abs(load - threads.IDLE_LOAD) > 0.2:  # not at the threshold, where it may flip
        expected = threads.wait_policy(True, load) or "spin"
        assert train == expected, (load, train)
