"""Section c: sweep efficiency, the share of a sweep's wall time x concurrency spent in the
trials' training and evaluation.

It runs the real command (`study run icvae --dataset digits --scheduler none ...`) in a
temporary directory with its own sqlite MLflow store and Ray storage, reads each trial's
final `train_seconds` and `eval_seconds` from Ray's result files, and compares their sum
with the command's wall time x concurrency. The epochs are calibrated first so one trial
trains for about `trial_seconds` on one thread.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tests.bench.common import REPO_ROOT
from trainables import Experiment, load_dataset
from trainables.reference import load_reference

TARGET_SHARE = 0.9
FAMILY = "icvae"
DATASET = "digits"
STUDY_NAME = "bench-sweep"
EXPERIMENT = "bench"


@dataclass
class Sizes:
    trials: int
    trial_seconds: float
    concurrency: int = 2
    calibration_epochs: int = 3
    gpus_per_trial: float = 0.0  # > 0: trials train on CUDA, sharing the card
    # True: the sweep joins a Ray cluster started beforehand (`ray start --head`, as on a
    # real cluster) instead of starting a local one.
    on_cluster: bool = False

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_trial > 0 else "cpu"


FULL = Sizes(trials=8, trial_seconds=30.0)
QUICK = Sizes(trials=4, trial_seconds=3.0, calibration_epochs=2)


def seconds_per_epoch(epochs: int, device: str = "cpu") -> float:
    """Train + evaluate seconds of one epoch of the family's default config on one thread,
    after a warm-up epoch, evaluated as a trial's epochs but its last are (quick)."""
    dataset = load_dataset(DATASET, device=torch.device(device))
    load_reference(dataset)  # trained once and cached: the trials then only load it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        experiment = Experiment.create(FAMILY, {}, dataset, seed=0)
        experiment.train_epoch()
        experiment.evaluate(quick=True)
        before = experiment.train_seconds + experiment.eval_seconds
        for _ in range(epochs):
            experiment.train_epoch()
            experiment.evaluate(quick=True)
        return (experiment.train_seconds + experiment.eval_seconds - before) / epochs
    finally:
        torch.set_num_threads(threads)


def study_command(sizes: Sizes, epochs: int, workdir: Path, address: str | None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "study.cli",
        "run",
        FAMILY,
        "--dataset",
        DATASET,
        "--trials",
        str(sizes.trials),
        "--concurrency",
        str(sizes.concurrency),
        "--cpus-per-trial",
        "1",
        "--gpus-per-trial",
        str(sizes.gpus_per_trial),
        "--scheduler",
        "none",
        "--epochs",
        str(epochs),
        "--name",
        STUDY_NAME,
        "--storage",
        str(workdir / "ray_results"),
        "--tracking-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--experiment",
        EXPERIMENT,
        *(["--address", address] if address else []),
    ]


@contextlib.contextmanager
def running_cluster(sizes: Sizes, workdir: Path, env: dict[str, str]):
    """`ray start --head` on 127.0.0.1 with the sweep's CPUs and GPU; yields its address
    and stops it afterwards. Token auth, as Ray 2.60 wants for local clusters."""
    ray = str(Path(sys.executable).parent / "ray")
    port = 6390 + os.getpid() % 500
    gpus = math.ceil(sizes.gpus_per_trial * sizes.concurrency)
    command = [ray, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1"]
    command += [f"--num-cpus={sizes.concurrency}", f"--num-gpus={gpus}"]
    command += ["--include-dashboard=false", "--disable-usage-stats"]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)


def trial_results(study_dir: Path) -> list[list[dict[str, Any]]]:
    """Every trial's reported results in order, from Ray's result.json files."""
    trials = []
    for path in sorted(study_dir.glob("trial_*/result.json")):
        results = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if results:
            trials.append(sorted(results, key=lambda r: r.get("training_iteration", 0)))
    return trials


def trainable_overheads(trials: list[list[dict[str, Any]]]) -> dict[str, float]:
    """Seconds each report took beyond its epoch's train + eval: the first includes the
    trial's setup (imports, data, model, reference classifier), the later ones the
    per-epoch checkpoint, image grids and report."""
    first, later = [], []
    for results in trials:
        done = 0.0
        for i, r in enumerate(results):
            busy = r["train_seconds"] + r["eval_seconds"]
            overhead = r.get("time_this_iter_s", math.nan) - (busy - done)
            done = busy
            (first if i == 0 else later).append(overhead)
    return {
        "first_report_overhead_s": sum(first) / len(first) if first else math.nan,
        "first_report_overhead_s_each": first,  # a reused actor's trials skip the imports
        "per_epoch_overhead_s": sum(later) / len(later) if later else math.nan,
    }


def tail_seconds(trials: list[list[dict[str, Any]]]) -> float:
    """Slot-seconds idle at the end: each worker process (a slot, as actors are reused)
    waits from its last trial's last result until the sweep's last result, because a
    fixed number of trials of unequal length rarely ends on every slot at once."""
    last_by_slot: dict[Any, float] = {}
    for results in trials:
        slot = results[-1].get("pid")
        last_by_slot[slot] = max(last_by_slot.get(slot, 0.0), results[-1]["timestamp"])
    end = max(last_by_slot.values())
    return sum(end - last for last in last_by_slot.values())


def fit_seconds(workdir: Path) -> float | None:
    """The study's own wall time of tuner.fit (logged on the MLflow parent run)."""
    try:
        from analysis.records import read_study

        study = read_study(STUDY_NAME, f"sqlite:///{workdir / 'mlflow.db'}", EXPERIMENT)
        return float(study.parent.metrics["wall_seconds"])
    except Exception:  # noqa: BLE001 - a diagnostic only; the headline needs no MLflow
        return None


def run_command(command: list[str], cwd: Path, env: dict[str, str], expected: float):
    """Run `command`, timestamping its output lines; returns (wall seconds, start epoch
    time, [(seconds since start, line)])."""
    started, start = time.time(), time.perf_counter()
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    killer = threading.Timer(max(300.0, 6 * expected), process.kill)
    killer.start()
    output = []
    try:
        for line in process.stdout:
            output.append((time.perf_counter() - start, line.rstrip()))
        process.wait()
    finally:
        killer.cancel()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        text = "\n".join(line for _, line in output[-60:])
        raise RuntimeError(f"study run failed ({process.returncode}):\n{text}")
    return wall, started, output


def timeline(trials: list[list[dict[str, Any]]], started: float, output, wall: float) -> dict:
    """When, from the command's start, the CLI was ready, the first trial started and the
    last result came (Ray timestamps have 1 s resolution)."""
    ready = next((t for t, line in output if line.startswith("study ")), math.nan)
    first = min(r[0]["timestamp"] - r[0].get("time_this_iter_s", 0.0) for r in trials) - started
    last = max(r[-1]["timestamp"] for r in trials) - started
    return {
        "cli_ready_s": ready,
        "first_trial_start_s": first,
        "last_result_s": last,
        "after_last_result_s": wall - last,
    }


def run(sizes: Sizes, log=print, keep: bool = False) -> dict[str, Any]:
    per_epoch = seconds_per_epoch(sizes.calibration_epochs, sizes.device)
    # At least two epochs, so the per-epoch report overhead is seen apart from the setup.
    epochs = max(2, round(sizes.trial_seconds / per_epoch))
    log(
        f"  calibration: {per_epoch:.2f} s per epoch (train + quick eval, 1 thread, {sizes.device}) "
        f"-> {epochs} epochs per trial; running {sizes.trials} trials, concurrency "
        f"{sizes.concurrency}, {sizes.gpus_per_trial} GPU each ..."
    )
    workdir = Path(tempfile.mkdtemp(prefix="latent-bench-sweep-"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.pop("OMP_WAIT_POLICY", None)  # the CLI's own choice for a sweep (study/threads.py)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    expected = sizes.trials * sizes.trial_seconds / sizes.concurrency
    if sizes.on_cluster:
        env.update(RAY_AUTH_MODE="token", RAY_TMPDIR=str(workdir / "r"))
    try:
        with (
            running_cluster(sizes, workdir, env)
            if sizes.on_cluster
            else contextlib.nullcontext(None)
        ) as address:
            wall, started, output = run_command(
                study_command(sizes, epochs, workdir, address), workdir, env, expected
            )
        trials = trial_results(workdir / "ray_results" / STUDY_NAME)
        finals = [results[-1] for results in trials]
        fit = fit_seconds(workdir)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if len(finals) != sizes.trials:
        raise RuntimeError(f"expected {sizes.trials} trials' results, found {len(finals)}")
    train = sum(r["train_seconds"] for r in finals)
    evaluation = sum(r["eval_seconds"] for r in finals)
    busy = train + evaluation
    capacity = wall * sizes.concurrency
    result = {
        "family": FAMILY,
        "dataset": DATASET,
        "trials": sizes.trials,
        "concurrency": sizes.concurrency,
        "cpus_per_trial": 1,
        "gpus_per_trial": sizes.gpus_per_trial,
        "on_running_cluster": sizes.on_cluster,
        "device": sizes.device,
        "epochs": epochs,
        "calibrated_seconds_per_epoch": per_epoch,
        "trial_seconds_mean": busy / sizes.trials,
        "wall_seconds": wall,
        "fit_seconds": fit,
        "train_seconds": train,
        "eval_seconds": evaluation,
        "share": busy / capacity,
        "overhead_per_trial_s": (capacity - busy) / sizes.trials,
        "epochs_done": [r.get("epoch") for r in finals],
        # Ray's time_total_s: the trial's wall time inside the trainable, so this splits the
        # overhead into the trainable's own (imports, data, checkpoints) and the rest.
        "trainable_seconds": sum(r.get("time_total_s", math.nan) for r in finals),
        "source": "Ray result.json files (final result of each trial)",
    }
    if fit is not None:
        # Where the overhead sits: before/after tuner.fit (Ray start, MLflow, imports) and
        # inside it (actor start, data load, per-epoch checkpoints and reports).
        result["outside_fit_seconds"] = wall - fit
        result["share_of_fit"] = busy / (fit * sizes.concurrency)
        result["overhead_in_fit_per_trial_s"] = (fit * sizes.concurrency - busy) / sizes.trials
    result["overhead_in_trainable_per_trial_s"] = (
        result["trainable_seconds"] - busy
    ) / sizes.trials
    result.update(trainable_overheads(trials))
    result["tail_slot_seconds"] = tail_seconds(trials)
    result["share_without_tail"] = busy / (capacity - result["tail_slot_seconds"])
    result["timeline"] = timeline(trials, started, output, wall)
    result["cli_output_tail"] = [line for _, line in output[-25:]]
    if not math.isfinite(result["share"]):
        raise RuntimeError("sweep share is not finite")
    return result
