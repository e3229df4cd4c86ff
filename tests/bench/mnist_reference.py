"""Seconds per epoch and final metrics of each family on MNIST with the reference layer
sizes at batch 256 (the figures the foundation issue asks for).

    python -m tests.bench.mnist_reference [--epochs 10] [--data-dir DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from study import threads  # noqa: E402

threads.configure("train")  # before torch loads: what `study train` gets

import torch  # noqa: E402

from trainables import (  # noqa: E402
    Experiment,
    all_families,
    get_family,
    load_dataset,
    pick_device,
)

REPO = Path(__file__).resolve().parents[2]


def mnist_dir(given: str | None) -> str:
    for candidate in (
        given,
        os.environ.get("LATENT_STUDIES_DATA_DIR"),
        REPO.parent / "shared/data/mnist",
        "/work/shared/data/mnist",
    ):
        if candidate and Path(candidate, "train-images-idx3-ubyte.gz").exists():
            return str(candidate)
    raise SystemExit("MNIST idx files not found: pass --data-dir DIR (see README, Data)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--data-dir")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--families", default=",".join(all_families()))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = pick_device(args.device)
    dataset = load_dataset("mnist", mnist_dir(args.data_dir), device=device)
    print(
        f"MNIST on {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.epochs} epochs"
    )
    figures = {}
    for family in args.families.split(","):
        config = dict(get_family(family).reference_config)
        experiment = Experiment.create(family, config, dataset, seed=0)
        experiment.evaluate()  # warm the cached reference classifier outside the timings
        epoch_seconds = []
        for _ in range(args.epochs):
            start = time.perf_counter()
            experiment.train_epoch()
            if device.type == "cuda":
                torch.cuda.synchronize()
            epoch_seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        metrics = experiment.evaluate()
        eval_seconds = time.perf_counter() - start
        steady = sorted(epoch_seconds[1:] or epoch_seconds)
        figures[family] = {
            "seconds_per_epoch_median": steady[len(steady) // 2],
            "seconds_first_epoch": epoch_seconds[0],
            "eval_seconds": eval_seconds,
            "metrics": metrics,
        }
        shown = "  ".join(f"{k}={v:.3f}" for k, v in metrics.items())
        print(
            f"{family:<6} {steady[len(steady) // 2]:6.2f} s/epoch (first {epoch_seconds[0]:.2f}), eval {eval_seconds:.2f} s | {shown}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
