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

So a process that shares its cores sleeps, and a process alone spins (spin and the short
spin count trade places between runs there; the default is the simpler choice). One
thread has no pool, hence no policy. One inter-op thread instead of torch's default (one
per core) moved PASSIVE's step time by 0.83-1.18x, no consistent way, so the inter-op
pool is left as torch sets it.

libgomp reads the policy once, when torch loads it: these run before anything imports
torch, and a policy the user exported always wins.
"""

from __future__ import annotations

import os

WAIT_POLICY = "OMP_WAIT_POLICY"
# `study train` spins only when the machine is idle as it starts: a 1-minute load average
# below this. The average lags (it takes a minute or two to fall after other work ends),
# which errs on the side of PASSIVE, the choice that never cost more than 4x.
IDLE_LOAD = 0.5
# The commands that train in this process alone. Every other command either trains
# nothing or runs trials on Ray workers, which share their cores with the driver and
# with each other and inherit this process's environment when Ray starts here.
ONE_PROCESS_COMMANDS = frozenset({"train"})


def wait_policy(alone: bool, load_average: float) -> str | None:
    """The policy for a process training alone or sharing its cores; None means
    libgomp's default (spin)."""
    if alone and load_average < IDLE_LOAD:
        return None
    return "PASSIVE"


def configure(command: str | None) -> None:
    """Set the wait policy for `command` (a `study` subcommand) unless the user did."""
    if WAIT_POLICY in os.environ:
        return
    policy = wait_policy(command in ONE_PROCESS_COMMANDS, _load_average())
    if policy is not None:
        os.environ[WAIT_POLICY] = policy


def configure_shared() -> None:
    """A Ray trial's worker: a worker that a cluster's `ray start` started did not inherit
    a driver's environment, so the trainable module sets the policy itself before it
    imports torch."""
    os.environ.setdefault(WAIT_POLICY, "PASSIVE")


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available: assume busy
        return float("inf")
