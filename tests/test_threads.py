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


IDLE = threads.Machine(threads=2, cores=2, others=0.0)


@pytest.mark.parametrize(
    ("command", "machine", "policy"),
    [
        ("train", IDLE, None),  # `study train` alone: libgomp's spin
        ("train", threads.Machine(2, 2, 0.4), None),  # a task runnable in under half the looks
        ("train", threads.Machine(2, 2, 0.5), "PASSIVE"),  # ... in half: it takes a core
        ("train", threads.Machine(2, 2, 1.0), "PASSIVE"),  # beside a busy process
        ("train", threads.Machine(1, 2, 1.0), None),  # one thread and the busy one fit
        ("train", threads.Machine(4, 8, 3.8), None),  # 4 threads and 4 busy cores fit 8
        ("train", threads.Machine(4, 8, 4.5), "PASSIVE"),
        ("train", threads.Machine(4, 2, 0.0), "PASSIVE"),  # more threads than cores
        ("train", threads.Machine(2, 2, None), "PASSIVE"),  # no /proc to read
        ("train", None, "PASSIVE"),
        ("run", IDLE, "PASSIVE"),  # trials share their cores with the driver and each other
        ("resume", None, "PASSIVE"),
        (None, None, "PASSIVE"),  # `study --help`
    ],
)
def test_policy_per_context(command, machine, policy):
    assert threads.wait_policy(command, machine) == policy


def stat(pid: int, state: str, cpu: int, name: str = "python") -> str:
    """A /proc/PID/task/TID/stat line: field 3 the state, field 39 the CPU."""
    middle = " ".join(["0"] * 35)
    return f"{pid} ({name}) {state} {middle} {cpu} 0 0 0 0\n"


def test_a_stat_line_gives_state_and_cpu():
    """The reader's own stat line has the shape the synthetic ones copy."""
    own = Path(f"/proc/self/task/{os.getpid()}/stat").read_text()
    assert threads.runnable_on([own], {int(own.rsplit(")", 1)[1].split()[36])}) == 1
    assert threads.runnable_on([stat(7, "R", 1)], {1}) == 1


def test_runnable_tasks_counted_on_our_cores():
    stats = [
        stat(10, "R", 0),
        stat(11, "R", 1),
        stat(12, "R", 3),  # on a core this process may not use
        stat(13, "S", 0),  # sleeping
        stat(14, "D", 1),  # waiting for I/O
        stat(15, "R", 1, name="a ) S (name"),  # the name may hold ') S ('
        "16 (cut short) R 1",  # a line that ended while it was read
    ]
    assert threads.runnable_on(stats, {0, 1}) == 3


def fake_proc(root: Path, tasks: dict[int, list[str]]) -> Path:
    """A /proc with these processes' tasks (pid -> their stat lines), a non-process
    entry, and a process that ended between listing and reading."""
    for pid, lines in tasks.items():
        for number, line in enumerate(lines):
            task = root / str(pid) / "task" / str(pid + number)
            task.mkdir(parents=True)
            (task / "stat").write_text(line)
    (root / "loadavg").write_text("9.00 9.00 9.00 5/100 12345\n")
    (root / "99999").mkdir()  # no task directory: gone
    return root


def test_the_machine_read_from_proc(tmp_path, monkeypatch):
    me = os.getpid()
    proc = fake_proc(
        tmp_path,
        {
            me: [stat(me, "R", 0), stat(me, "R", 1)],  # our own threads never count
            1000: [stat(1000, "R", 0), stat(1001, "S", 1)],  # a thread of it is runnable
            2000: [stat(2000, "S", 0)],
            3000: [stat(3000, "R", 5)],  # another core's
        },
    )
    monkeypatch.setattr(threads, "available_cores", lambda: {0, 1})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    machine = threads.read_machine(proc=proc, looks=3, interval=0)
    assert machine == threads.Machine(threads=2, cores=2, others=1.0)
    assert threads.wait_policy("train", machine) == "PASSIVE"
    assert threads.read_machine(proc=tmp_path / "absent", looks=3, interval=0).others is None


def test_runnable_others_is_the_mean_over_the_looks(monkeypatch):
    looks = iter([[stat(1, "R", 0)], [], [stat(1, "R", 0), stat(2, "R", 1)], []])
    monkeypatch.setattr(threads, "task_stats", lambda proc, exclude: next(looks))
    assert threads.runnable_others({0, 1}, looks=4, interval=0) == 0.75


def test_the_real_proc_is_readable():
    """Whatever runs here now: a count, on this process's cores."""
    machine = threads.read_machine(looks=2, interval=0)
    assert machine.cores == len(threads.available_cores())
    assert machine.others is not None and machine.others >= 0


@pytest.mark.parametrize(
    ("environ", "planned"),
    [
        ({}, 8),  # torch's default: one per core
        ({"OMP_NUM_THREADS": "2"}, 2),
        ({"OMP_NUM_THREADS": "3,2"}, 3),  # nested levels: the outer one
        ({"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "4"}, 4),  # torch reads MKL's last
        ({"OMP_NUM_THREADS": "many"}, 8),
        ({"OMP_NUM_THREADS": "0"}, 8),
    ],
)
def test_the_threads_torch_will_run(environ, planned):
    assert threads.planned_threads(environ, 8) == planned


def test_a_policy_the_user_exported_wins(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setattr(threads, "read_machine", lambda: IDLE)
    for command in ("train", "run", None):
        threads.configure(command)
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_train_spins_only_where_its_threads_fit(monkeypatch):
    for machine, policy in ((IDLE, None), (threads.Machine(2, 2, 1.0), "PASSIVE")):
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        monkeypatch.setattr(threads, "read_machine", lambda machine=machine: machine)
        threads.configure("train")
        assert os.environ.get("OMP_WAIT_POLICY") == policy


def test_every_command_but_train_gets_passive_without_reading_the_machine(monkeypatch):
    def unread():
        raise AssertionError("only `study train` reads the machine")

    monkeypatch.setattr(threads, "read_machine", unread)
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


def machine_reads(machine: threads.Machine) -> str:
    """Code that makes `study train` read `machine` instead of this one's /proc."""
    return f"from study import threads\nthreads.read_machine = lambda: threads.{machine!r}\n"


def test_the_study_command_sets_the_policy_before_torch_loads():
    unset = {"OMP_WAIT_POLICY": None}
    assert policy_libgomp_loaded(command("run", "--help"), unset) == "PASSIVE"
    assert (
        policy_libgomp_loaded(command("run", "--help"), {"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
    )
    train = command("train", "--help")
    assert policy_libgomp_loaded(machine_reads(IDLE) + train, unset) == "spin"
    busy = threads.Machine(2, 2, 1.0)
    assert policy_libgomp_loaded(machine_reads(busy) + train, unset) == "PASSIVE"
