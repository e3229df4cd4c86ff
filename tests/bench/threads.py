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
  busy-driver  a trial with C threads beside a driver that keeps one core busy (the case
               that motivated PASSIVE: a spinning pool sharing its cores with another
               process made a digits AAE 50x slower)
  sweep+driver C trials at 1 thread beside the busy driver

    python -m tests.bench.threads [--quick] [--json PATH]

Each figure is the median training-step time of the trials in that context (ms); the
table gives each variant's time relative to the best in its row.
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

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def contexts(cores: int) -> list[Context]:
    return [
        Context("solo", 1, cores, False),
        Context("solo-1-thread", 1, 1, False),
        Context("sweep", cores, 1, False),
        Context("oversub", cores, cores, False),
        Context("busy-driver", 1, cores, True),
        Context("sweep+driver", cores, 1, True),
    ]


# --- the worker: one process, one workload, step times to stdout ------------------------
def worker(workload: str, threads: int, seconds: float, interop: int | None) -> None:
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
        dataset = Dataset("mnist-shaped", x, y, x[:512], y[:512], (28, 28), 10)
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
    print(json.dumps({"step_ms": times[len(times) // 2], "epochs": len(times)}), flush=True)


def busy_driver() -> None:
    """A driver's work: pure-Python computation on one core, until killed."""
    x = 0
    while True:
        for i in range(100_000):
            x = (x + i * i) % 1_000_003


# --- the parent -------------------------------------------------------------------------
def environment(variant: str, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in VARIANTS[variant].env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def measure(context: Context, workload: str, variant: str, seconds: float) -> float:
    """The median of the trials' median step times (ms) with `context` running."""
    driver = None
    if context.busy_driver:
        driver = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.threads", "--busy-driver"],
            cwd=REPO_ROOT,
            env=environment("passive", 1),
        )
    try:
        command = [sys.executable, "-m", "tests.bench.threads", "--worker", workload]
        command += ["--threads", str(context.threads), "--seconds", str(seconds)]
        if VARIANTS[variant].interop:
            command += ["--interop", str(VARIANTS[variant].interop)]
        trials = [
            subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=environment(variant, context.threads),
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(context.trials)
        ]
        results = []
        for trial in trials:
            out, _ = trial.communicate(timeout=600)
            if trial.returncode != 0:
                raise RuntimeError(f"{workload} {variant} {context.name}: worker failed")
            results.append(json.loads(out.strip().splitlines()[-1])["step_ms"])
    finally:
        if driver is not None:
            driver.kill()
            driver.wait()
    results.sort()
    return results[len(results) // 2]


def variants_for(context: Context) -> list[str]:
    """One thread has no pool to wait in: spin and passive there only show that they are
    equal. Inter-op threads matter, if anywhere, to one process alone."""
    if context.threads == 1:
        return ["spin", "passive"]
    if context.name == "solo":
        return list(VARIANTS)
    return ["spin", "passive", "spin-10k"]


def run(quick: bool = False, log=print) -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    seconds = 1.0 if quick else 2.5
    figures: dict = {"cores": cores, "seconds_per_measurement": seconds, "rows": []}
    for workload in WORKLOADS:
        for context in contexts(cores or 1):
            row = {"workload": workload, "context": context.name, "ms": {}}
            for variant in variants_for(context):
                row["ms"][variant] = measure(context, workload, variant, seconds)
            best = min(row["ms"].values())
            row["relative"] = {v: ms / best for v, ms in row["ms"].items()}
            log(
                f"  {workload:12s} {context.name:13s} "
                + "  ".join(
                    f"{v} {ms:7.2f} ms ({row['relative'][v]:.2f}x)" for v, ms in row["ms"].items()
                )
            )
            figures["rows"].append(row)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.threads", description=__doc__)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--interop", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=4.0, help=argparse.SUPPRESS)
    parser.add_argument("--busy-driver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="1 s per measurement")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if args.busy_driver:
        busy_driver()
    elif args.worker:
        worker(args.worker, args.threads, args.seconds, args.interop)
    else:
        figures = run(args.quick)
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
