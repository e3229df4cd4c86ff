"""The headline study as one command, timed: the ML-VAE on MNIST, 64 configurations x 3
seed replicas, 20 epochs, ASHA, then `study report`; its wall time and what it is made of
(the trials' training seconds, their evaluation seconds, and the rest of the slot time:
per-trial overhead and idle slots), and the config-vs-seed share of the objectives at each
ASHA rung (issue 27).

    python -m tests.bench.headline [--configs 64] [--gpus-per-trial 0.25] [--out FILE]

Targets: at most 10 minutes on one H200 with --gpus-per-trial 0.25 (issue 24: 4 trials
at once, each with its share of the cores); at most 2 hours on 2 CPU cores (issue 27),
where --configs 16 (a quarter) takes about half an hour and the note extrapolates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.common import REPO_ROOT, find_mnist_dir, machine_info

NAME = "headline"
EXPERIMENT = "bench"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.headline", description=__doc__)
    parser.add_argument("--configs", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--gpus-per-trial", type=float, default=0.0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="headline-results.json")
    args = parser.parse_args(argv)
    data = find_mnist_dir(args.data_dir)
    if data is None:
        parser.error("--data-dir: no MNIST idx files found; name the directory that holds them")
    cores = os.cpu_count() or 1
    concurrency = round(1 / args.gpus_per_trial) if args.gpus_per_trial else cores
    cpus = max(1, cores // concurrency)
    workdir = Path(tempfile.mkdtemp(prefix="latent-headline-"))
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    where = ["--tracking-uri", uri, "--experiment", EXPERIMENT]
    run = [
        "run", "mlvae", "--dataset", "mnist", "--data-dir", str(data), "--name", NAME,
        "--trials", str(args.configs), "--seeds", str(args.seeds), "--epochs", str(args.epochs),
        "--concurrency", str(concurrency), "--cpus-per-trial", str(cpus),
        "--gpus-per-trial", str(args.gpus_per_trial), "--storage", str(workdir / "ray_results"),
        *where,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    figures = {"command": "study " + " ".join(run), "machine": machine_info()}
    for step, command in (("run", run), ("report", ["report", NAME, "--out", str(workdir / "report"), *where])):  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "study.cli", *command], cwd=workdir, env=env)
        figures[f"{step}_s"] = time.perf_counter() - started
        if done.returncode != 0:
            print(f"study {step} failed ({done.returncode}); kept {workdir}", file=sys.stderr)
            return 1
    from analysis.records import read_study

    study = read_study(NAME, uri, EXPERIMENT)
    fit = float(study.parent.metrics["wall_seconds"])
    train = sum(t.metrics.get("train_seconds", 0.0) for t in study.trials)
    evaluation = sum(t.metrics.get("eval_seconds", 0.0) for t in study.trials)
    epochs = sorted(int(t.metrics.get("epoch", 0)) for t in study.trials)
    figures.update(
        fit_s=fit,
        concurrency=concurrency,
        sweep_share=(train + evaluation) / (fit * concurrency),
        train_eval_s=train + evaluation,
        train_s=train,
        eval_s=evaluation,
        # Slot time neither training nor evaluating: each trial's start (process, data,
        # model, MLflow run), checkpoints, reports, and slots left idle.
        other_slot_s=fit * concurrency - train - evaluation,
        trials=len(study.trials),
        epochs_reached={str(e): epochs.count(e) for e in sorted(set(epochs))},
        total_s=figures["run_s"] + figures["report_s"],
        search_luck=_search_luck(uri),
        workdir=str(workdir),
    )
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    return 0


def _search_luck(uri: str) -> list[dict]:
    """The config-vs-seed share of each objective at each rung (analysis.robustness)."""
    from analysis.robustness import search_luck_of
    from analysis.runs import load_study

    table = search_luck_of(load_study(NAME, uri, EXPERIMENT))
    return table.to_dict("records")


if __name__ == "__main__":
    sys.exit(main())
