"""Section g: which OpenMP wait policy and thread counts each execution context should get.

A CPU step is a few hundred small ops; with two or more intra-op threads every op is a
parallel region, and what the pool's threads do between regions sets the pace:
- spin (libgomp's default: each idle thread spins ~300,000 iterations before it sleeps)
  wakes instantly, but a spinning thread holds a core that another process may need;
- PASSIVE sleeps at once, and every region pays a futex wake-up (tens of microseconds);
- a short spin (GOMP_SPINCOUNT) is the compromise in between.
With one thread there is no pool and no policy. The wait policy is read once, when torch
loads libgomp, so each variant runs in its own process.

Contexts, each the way it runs in this project on a machine of C cores:
  solo         one `study train`: one process, C threads, nothing else running
  solo-1-thread the same on one thread (is a pool worth having at all?)
  sweep        a sweep at concurrency C: C trials at once, 1 thread each (Ray's CPU count)
  oversub      an oversubscribed sweep: C trials at once, C threads each
  busy-driver  C threads beside a process that keeps one core busy: a trial beside its
               driver, or a `study train` on a machine one other process keeps busy (the
               case that motivated PASSIVE: a spinning pool sharing its cores with another
               process made a digits AAE 50x slower)
  sweep+driver C trials at 1 thread beside the busy driver

    python -m tests.bench.threads [--quick] [--json PATH]

Each figure is the median training-step time of the trials in that context (ms), the
fastest of three rounds (one with --quick); the table gives each variant's time relative
to the best in its row, and "ours": the policy study/threads.py picks there, asked in a
fresh process with the context's other processes already running (for `study train` it
reads the machine), against the target TARGET_POLICY_RATIO.

The busy minute: C processes keep every core busy for a minute (BUSY_SECONDS; 30 s with
--quick, enough to lift the one-minute average above 0.5), which
lifts the load average; the moment they end, a lone `study train` starts (a worker that
sets its policy the way the CLI does, before torch loads); then, once the one-minute load
average has fallen below 0.5 (the old rule's idle mark: at least IDLE_WAIT_MIN, at most
IDLE_WAIT_MAX seconds later), the same launch again. Our policy looks only at what runs
now, so both launches get the same policy and the same time (TARGET_BUSY_MINUTE_RATIO).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from study import threads as study_threads

REPO_ROOT = Path(__file__).resolve().parents[2]
# Our policy's step time against the best variant's, in every context (our target).
TARGET_POLICY_RATIO = 1.2
# A lone `study train` right after a busy minute against the same after the load decayed.
TARGET_BUSY_MINUTE_RATIO = 1.1
# The busy minute, and how long the idle launch waits for the load average to fall below
# IDLE_LOAD (quick runs: a shorter busy spell, enough to lift the average above it).
BUSY_SECONDS = {"full": 60.0, "quick": 30.0}
IDLE_WAIT_MIN = {"full": 120.0, "quick": 0.0}
IDLE_WAIT_MAX = {"full": 300.0, "quick": 60.0}
IDLE_LOAD = 0.5
# The policy names study/threads.py gives, as the variants here name them.
VARIANT_OF_POLICY = {None: "spin", "PASSIVE": "passive"}


# The variants: what a process's environment says before torch loads, and its inter-op
# threads (None: torch's default, one per core).
@dataclass(frozen=True)
class Variant:
    env: dict[str, str | None]
    interop: int | None = None


VARIANTS = {
    "spin": Variant({"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}),
    "passive": Variant({"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None}),
    "spin-10k": Variant({"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000"}),
    "passive-interop1": Variant({"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None}, 1),
}
# Not a fixed variant: the worker sets the policy itself, the way `study train` does.
OURS = Variant({"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None})
# The workloads: a small model where per-op overhead is everything (digits AAE, the 50x
# case), and a reference-sized MNIST-shaped step.
WORKLOADS = {
    "aae-digits": ("aae", "digits", {"hidden": [64, 32], "z_dim": 2, "batch_size": 64}),
    "mlvae-mnist": ("mlvae", "mnist-shaped", {"hidden": [500], "batch_size": 256}),
}


@dataclass(frozen=True)
class Context:
    name: str
    trials: int  # processes training at once
    threads: int  # torch intra-op threads each
    busy_driver: bool
    command: str  # the `study` command whose processes these are


def contexts(cores: int) -> list[Context]:
    return [
        Context("solo", 1, cores, False, "train"),
        Context("solo-1-thread", 1, 1, False, "train"),
        Context("sweep", cores, 1, False, "run"),
        Context("oversub", cores, cores, False, "run"),
        Context("busy-driver", 1, cores, True, "train"),
        Context("sweep+driver", cores, 1, True, "run"),
    ]


# --- the worker: one process, one workload, step times to stdout ------------------------
def worker(workload: str, threads: int, seconds: float, interop: int | None, ours: bool) -> None:
    policy = None
    if ours:  # as the CLI does, before torch loads
        study_threads.configure("train")
        policy = VARIANT_OF_POLICY[os.environ.get("OMP_WAIT_POLICY")]
    import torch

    torch.set_num_threads(threads)
    if interop:
        torch.set_num_interop_threads(interop)
    from trainables import Experiment, load_dataset
    from trainables.data import Dataset

    family, dataset_name, config = WORKLOADS[workload]
    if dataset_name == "digits":
        dataset = load_dataset("digits")
    else:  # speed does not depend on pixel values: random images of MNIST's shape
        generator = torch.Generator().manual_seed(0)
        n = 16 * config["batch_size"]
        x = torch.rand(n, 784, generator=generator)
        y = torch.arange(n) % 10
        dataset = Dataset("mnist-shaped", x, y, x[:512], y[:512], (1, 28, 28), 10)
    experiment = Experiment.create(family, config, dataset, seed=0, use_reference=False)
    steps_per_epoch = len(dataset.x_train) // config["batch_size"]
    experiment.train_epoch()  # warm-up
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        experiment.train_epoch()
        times.append((time.perf_counter() - start) / max(steps_per_epoch, 1) * 1e3)
    times.sort()
    figures = {"step_ms": times[len(times) // 2], "epochs": len(times), "policy": policy}
    print(json.dumps(figures), flush=True)


def choose(command: str) -> None:
    """What study/threads.py picks for `command` here and now, and what it read."""
    policy, machine = study_threads.decide(command)
    reading = machine._asdict() if machine else None
    print(json.dumps({"policy": VARIANT_OF_POLICY[policy], "machine": reading}), flush=True)


def busy_driver() -> None:
    """A driver's work: pure-Python computation on one core, until killed."""
    x = 0
    while True:
        for i in range(100_000):
            x = (x + i * i) % 1_000_003


# --- the parent -------------------------------------------------------------------------
def environment(variant: str, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in (OURS if variant == "ours" else VARIANTS[variant]).env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def spawn(args: list[str], variant: str, threads: int, output: bool) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.bench.threads", *args],
        cwd=REPO_ROOT,
        env=environment(variant, threads),
        stdout=subprocess.PIPE if output else None,
        text=True,
    )


def answer(process: subprocess.Popen, what: str) -> dict:
    """The last line a worker or a probe printed."""
    out, _ = process.communicate(timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"{what}: exit status {process.returncode}")
    return json.loads(out.strip().splitlines()[-1])


class BusyDrivers:
    """`count` processes that keep a core busy each, for the length of a `with`."""

    def __init__(self, count: int):
        self.count = count
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> BusyDrivers:
        self.processes = [spawn(["--busy-driver"], "passive", 1, False) for _ in range(self.count)]
        return self

    def __exit__(self, *_) -> None:
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait()


def train(workload: str, threads: int, seconds: float, variant: str, count: int = 1) -> list[dict]:
    """`count` workers training `workload` at once; what each reports."""
    args = ["--worker", workload, "--threads", str(threads), "--seconds", str(seconds)]
    if variant == "ours":
        args.append("--ours")
    elif VARIANTS[variant].interop:
        args += ["--interop", str(VARIANTS[variant].interop)]
    workers = [spawn(args, variant, threads, True) for _ in range(count)]
    return [answer(w, f"{workload} {variant} worker") for w in workers]


def measure(context: Context, workload: str, variant: str, seconds: float) -> float:
    """The median of the trials' median step times (ms) with `context` running."""
    with BusyDrivers(1 if context.busy_driver else 0):
        reports = train(workload, context.threads, seconds, variant, context.trials)
    results = sorted(r["step_ms"] for r in reports)
    return results[len(results) // 2]


def our_policy(context: Context) -> dict:
    """The variant study/threads.py picks for the context's command, asked by a fresh
    process once the context's busy driver (if any) is running, and what it read."""
    with BusyDrivers(1 if context.busy_driver else 0):
        if context.busy_driver:
            time.sleep(0.5)  # the driver's interpreter is up and computing
        probe = spawn(["--choose", context.command], "ours", context.threads, True)
        return answer(probe, f"{context.name} probe")


def variants_for(context: Context) -> list[str]:
    """One thread has no pool to wait in: spin and passive there only show that they are
    equal. Inter-op threads matter, if anywhere, to one process alone."""
    if context.threads == 1:
        return ["spin", "passive"]
    if context.name == "solo":
        return list(VARIANTS)
    return ["spin", "passive", "spin-10k"]


def verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "FAIL"


def policy_table(cores: int, seconds: float, rounds: int, log) -> list[dict]:
    """Each context's variants, `rounds` times in alternating order; a variant's figure is
    its fastest round (other work on the machine only ever slows a round down), ours the
    policy picked in most rounds."""
    rows = []
    for workload in WORKLOADS:
        for context in contexts(cores):
            variants, picks, machines = variants_for(context), [], []
            times: dict[str, list[float]] = {v: [] for v in variants}
            for round_ in range(rounds):
                chosen = our_policy(context)
                picks.append(chosen["policy"])
                machines.append(chosen["machine"])
                for v in variants if round_ % 2 == 0 else reversed(variants):
                    times[v].append(measure(context, workload, v, seconds))
            row = {"workload": workload, "context": context.name, "command": context.command}
            row["ms"] = {v: min(ms) for v, ms in times.items()}
            row["ms_rounds"] = times
            best = min(row["ms"].values())
            row["relative"] = {v: ms / best for v, ms in row["ms"].items()}
            row["ours"] = max(sorted(set(picks)), key=picks.count)
            row["picks"], row["machine"], row["machines"] = picks, machines[0], machines
            row["ours_over_best"] = row["relative"][row["ours"]]
            row["result"] = verdict(row["ours_over_best"], TARGET_POLICY_RATIO)
            log(
                f"  {workload:12s} {context.name:13s} "
                + "  ".join(
                    f"{v} {ms:7.2f} ms ({row['relative'][v]:.2f}x)" for v, ms in row["ms"].items()
                )
                + f"  | ours {row['ours']} ({'/'.join(picks)}) {row['ours_over_best']:.2f}x "
                f"of best: {row['result']}"
            )
            rows.append(row)
    return rows


def readings(cores: int, log) -> list[dict]:
    """What study/threads.py reads as other runnable tasks with 0..C busy processes, and
    /proc/loadavg's running-tasks field (less the reader) for comparison."""
    rows = []
    for busy in range(cores + 1):
        with BusyDrivers(busy):
            time.sleep(0.5)
            ours = study_threads.runnable_others(study_threads.available_cores(), looks=50)
            field = []
            for _ in range(50):
                running = Path("/proc/loadavg").read_text().split()[3].split("/")[0]
                field.append(int(running) - 1)
                time.sleep(study_threads.LOOK_INTERVAL_S)
        rows.append({"busy": busy, "ours": ours, "loadavg_field": sum(field) / len(field)})
        log(
            f"  {busy} busy: runnable others read {ours:.2f} (the loadavg field "
            f"{rows[-1]['loadavg_field']:.2f})"
        )
    return rows


def lone_train(workload: str, cores: int, seconds: float) -> dict:
    """A lone `study train` as it starts now: the policy it picks, its step time, and
    what the old rule (the one-minute load average below IDLE_LOAD) would have picked."""
    load = os.getloadavg()[0]
    report = train(workload, cores, seconds, "ours")[0]
    old = "spin" if load < IDLE_LOAD else "passive"
    return {
        "step_ms": report["step_ms"],
        "policy": report["policy"],
        "load_1min": load,
        "old_rule": old,
    }


def wait_for_idle(mode: str) -> float:
    """Seconds waited for the one-minute load average to fall below IDLE_LOAD."""
    started = time.monotonic()
    while True:
        waited = time.monotonic() - started
        if waited >= IDLE_WAIT_MAX[mode]:
            return waited
        if waited >= IDLE_WAIT_MIN[mode] and os.getloadavg()[0] < IDLE_LOAD:
            return waited
        time.sleep(1.0)


def busy_minute(cores: int, mode: str, seconds: float, log) -> dict:
    """Lone launches right after every core was busy for BUSY_SECONDS, then again once the
    load has decayed (see the module's docstring)."""
    log(f"  busy minute: {cores} busy processes for {BUSY_SECONDS[mode]:.0f} s")
    with BusyDrivers(cores):
        time.sleep(BUSY_SECONDS[mode])
    after_busy = {w: lone_train(w, cores, seconds) for w in WORKLOADS}
    waited = wait_for_idle(mode)
    after_idle = {w: lone_train(w, cores, seconds) for w in WORKLOADS}
    rows = []
    for workload in WORKLOADS:
        busy, idle = after_busy[workload], after_idle[workload]
        ratio = busy["step_ms"] / idle["step_ms"]
        row = {"workload": workload, "after_busy": busy, "after_idle": idle, "ratio": ratio}
        row["result"] = verdict(ratio, TARGET_BUSY_MINUTE_RATIO)
        log(
            f"  {workload:12s} after the busy minute {busy['step_ms']:7.2f} ms ({busy['policy']}; "
            f"load {busy['load_1min']:.2f}, the old rule: {busy['old_rule']}), "
            f"{waited:.0f} s later {idle['step_ms']:7.2f} ms ({idle['policy']}; load "
            f"{idle['load_1min']:.2f}, the old rule: {idle['old_rule']}): {ratio:.2f}x, {row['result']}"
        )
        rows.append(row)
    return {"busy_seconds": BUSY_SECONDS[mode], "idle_wait_seconds": waited, "rows": rows}


def run(quick: bool = False, log=print) -> dict:
    cores = len(study_threads.available_cores())
    mode = "quick" if quick else "full"
    seconds, rounds = (1.0, 1) if quick else (2.5, 3)
    lone_seconds = 3.0 if quick else 5.0
    figures: dict = {"cores": cores, "seconds_per_measurement": seconds, "rounds": rounds}
    figures["readings"] = readings(cores, log)
    figures["rows"] = policy_table(cores, seconds, rounds, log)
    figures["busy_minute"] = busy_minute(cores, mode, lone_seconds, log)
    figures["busy_minute"]["seconds_per_measurement"] = lone_seconds
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.threads", description=__doc__)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--interop", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=4.0, help=argparse.SUPPRESS)
    parser.add_argument("--ours", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--choose", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--busy-driver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--quick", action="store_true", help="1 s per measurement, one round, a 30-s busy spell"
    )
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if args.busy_driver:
        busy_driver()
    elif args.choose:
        choose(args.choose)
    elif args.worker:
        worker(args.worker, args.threads, args.seconds, args.interop, args.ours)
    else:
        figures = run(args.quick)
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
