"""The OpenMP wait policy each execution context gets, chosen from bench section g
(`python -m tests.bench.threads`, or `make bench`; figures of two runs in
docs/bench/cpu-2core-threads-2026-11-26.json and cpu-2core-speed-2026-11-26.txt).

With two or more intra-op threads every op of a CPU step is a parallel region, and what
the pool's idle threads do between regions sets the pace. libgomp's default spins (each
idle thread busy-waits ~300,000 iterations before it sleeps); PASSIVE sleeps at once and
pays a futex wake-up per region. Measured on 2 cores, median step time against the best
variant of its row, over a small digits AAE and a reference-sized ML-VAE and two runs:

  context                                spin (default)  PASSIVE   GOMP_SPINCOUNT=10000
  one process alone, 2 threads           1.0-1.35x       1.1-4.0x  1.0-1.15x
  2 trials at once, 1 thread each        equal           equal     -
  2 trials at once, 2 threads each       2.3-18x         best      1.9-13x
  a 2-thread trial beside a busy driver  1.9-3.5x        best      2.5-9.4x

So a process whose threads have the cores to themselves spins, and one that shares them
sleeps. `study train` looks, as it starts, at what will share its cores: the threads
torch will run (T) and the other tasks runnable on the cores it may use (C) now; it spins
when T plus the cores those tasks take fit in C. Not the load average: that is the last
minutes' past (a `study train` started just after any other command would sleep on an
idle machine, 1.5-1.8x slower), and "now" is what a start-time choice can know. A task
that starts later and shares the cores makes a spinning run slower (the busy-driver row);
export OMP_WAIT_POLICY=PASSIVE when you will run more beside it. Every other command
trains nothing or runs trials, which share their cores with the driver and each other:
PASSIVE. One thread has no pool, hence no policy. One inter-op thread instead of torch's
default (one per core) moved PASSIVE's step time by 0.83-1.18x, no consistent way, so
the inter-op pool is left as torch sets it.

libgomp reads the policy once, when torch loads it: these run before anything imports
torch, and a policy the user exported always wins.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

WAIT_POLICY = "OMP_WAIT_POLICY"
# The commands that train in this process alone. Every other command either trains
# nothing or runs trials on Ray workers, which share their cores with the driver and
# with each other and inherit this process's environment when Ray starts here.
ONE_PROCESS_COMMANDS = frozenset({"train", "reproduce", "check-family"})
# How `study train` looks at the machine as it starts: the other tasks runnable on its
# cores, counted this many times this far apart (about 0.1 s in all). A core counts as
# taken when some other task was runnable on it in at least half the looks.
LOOKS = 10
LOOK_INTERVAL_S = 0.01


class Machine(NamedTuple):
    """What a process starting to train would share its cores with."""

    threads: int  # the intra-op threads torch will run
    cores: int  # the cores this process may run on
    others: float | None  # other tasks runnable on those cores now (mean over the looks)


def wait_policy(command: str | None, machine: Machine | None) -> str | None:
    """The policy for `command` on `machine` (None: not looked at, or nothing to see);
    None means libgomp's default, spin. `study train` spins when its threads and the
    cores other tasks take fit its cores; everything else, and anything unknown, sleeps."""
    if command not in ONE_PROCESS_COMMANDS or machine is None or machine.others is None:
        return "PASSIVE"
    taken = math.floor(machine.others + 0.5)
    return None if machine.threads + taken <= machine.cores else "PASSIVE"


def decide(command: str | None) -> tuple[str | None, Machine | None]:
    """The policy for `command` and the machine it was read from (only `study train`
    looks: every other command sleeps whatever the machine holds)."""
    machine = read_machine() if command in ONE_PROCESS_COMMANDS else None
    return wait_policy(command, machine), machine


def configure(command: str | None) -> None:
    """Set the wait policy for `command` (a `study` subcommand) unless the user did."""
    if WAIT_POLICY in os.environ:
        return
    policy, _ = decide(command)
    if policy is not None:
        os.environ[WAIT_POLICY] = policy


def configure_shared() -> None:
    """A Ray trial's worker: a worker that a cluster's `ray start` started did not inherit
    a driver's environment, so the trainable module sets the policy itself before it
    imports torch."""
    os.environ.setdefault(WAIT_POLICY, "PASSIVE")


# --- reading the machine ----------------------------------------------------------------
def read_machine(
    environ: Mapping[str, str] = os.environ,
    proc: Path = Path("/proc"),
    looks: int = LOOKS,
    interval: float = LOOK_INTERVAL_S,
) -> Machine:
    cores = available_cores()
    others = runnable_others(cores, proc, looks, interval)
    return Machine(planned_threads(environ, len(cores)), len(cores), others)


def available_cores() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def planned_threads(environ: Mapping[str, str], cores: int) -> int:
    """torch's intra-op threads before anything sets them: MKL_NUM_THREADS, else
    OMP_NUM_THREADS, else one per core (with MKL, one per physical core: on a machine with
    hyperthreads this overcounts, which errs towards PASSIVE)."""
    for name in ("MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        value = environ.get(name, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return cores


def runnable_others(
    cores: set[int],
    proc: Path = Path("/proc"),
    looks: int = LOOKS,
    interval: float = LOOK_INTERVAL_S,
) -> float | None:
    """The mean count, over `looks`, of other processes' tasks (threads) runnable on
    `cores`; None without a /proc to read. The load average is no use here: it is the
    last minutes' past, not what will share the cores now."""
    counts = []
    for look in range(looks):
        if look:
            time.sleep(interval)
        stats = task_stats(proc, exclude=os.getpid())
        if stats is None:
            return None
        counts.append(runnable_on(stats, cores))
    return sum(counts) / len(counts)


def task_stats(proc: Path, exclude: int) -> list[str] | None:
    """The `stat` text of every task of every process but `exclude`; None when `proc`
    cannot be listed. Tasks that end while being read are skipped."""
    try:
        pids = [name for name in os.listdir(proc) if name.isdigit() and int(name) != exclude]
    except OSError:
        return None
    stats = []
    for pid in pids:
        try:
            tasks = os.listdir(proc / pid / "task")
        except OSError:
            continue
        for task in tasks:
            try:
                stats.append((proc / pid / "task" / task / "stat").read_text())
            except OSError:
                continue
    return stats


def runnable_on(stats: Iterable[str], cores: set[int]) -> int:
    """How many of these `/proc/PID/task/TID/stat` texts are of a task runnable (state R)
    on one of `cores` (the CPU whose queue it is on, field 39). The command name, field 2,
    may hold spaces and parentheses: the fields after it start after its last ')'."""
    count = 0
    for text in stats:
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) > 36 and fields[0] == "R" and int(fields[36]) in cores:
            count += 1
    return count
