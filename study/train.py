"""`study train`: one model, trained in this process, written to an output directory."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path

import yaml

from analysis.seeds import summarize
from study.provenance import PROVENANCE_FILE, provenance
from study.spec import TrainSpec
from trainables import Dataset, Experiment, load_dataset, pick_device
from trainables.config import dataset_label
from trainables.images import save_images
from trainables.io import atomic_directory

HISTORY_FILE = "history.json"


def default_out_dir(spec: TrainSpec) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    seeds = (
        f"seed{spec.seed}" if spec.seeds == 1 else f"seeds{spec.seed}-{spec.seed + spec.seeds - 1}"
    )
    return Path("runs") / "train" / f"{spec.family}-{dataset_label(spec.dataset)}-{seeds}-{stamp}"


def load_spec_dataset(
    spec: TrainSpec, data_dir: str | None, download: bool, device: str = "auto"
) -> Dataset:
    """The dataset `spec` trains on (with a folder's size and colour), on `device`."""
    return load_dataset(
        spec.dataset,
        data_dir,
        download,
        pick_device(device),
        image_size=spec.image_size,
        color=spec.color,
    )


def train_once(
    spec: TrainSpec,
    device: str = "auto",
    data_dir: str | None = None,
    download: bool = False,
    out_dir: str | Path | None = None,
    progress: bool = True,
    dataset: Dataset | None = None,
    evaluate_at: Collection[int] | None = None,
) -> tuple[dict[str, float], Path]:
    """Train `spec` (its `seeds` replicas at once), then write weights, the resolved config
    and the metrics to `out_dir`: one run's metrics, or the seeds' summary (means, std,
    bounds and each seed's value, analysis/seeds.py), and what the run was made with
    (`provenance.json`: commit, packages, device, wall seconds). With `evaluate_at`
    (epochs, maybe none), the run is also evaluated after each of them, and
    `history.json` holds those metrics and the final ones, each with its epoch. `dataset`, when given, is
    `spec.dataset` already loaded (a preset reuses it).

    The directory appears only when everything in it is written (a crash leaves nothing).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir) if out_dir else default_out_dir(spec)
    if out_dir.exists() and any(out_dir.iterdir()):
        from trainables.errors import ConfigError

        raise ConfigError(f"out: {out_dir} exists and is not empty; choose another --out")
    if dataset is None:
        dataset = load_spec_dataset(spec, data_dir, download, device)
    experiment = Experiment.create(
        spec.family, spec.params, dataset, spec.seed, precision=spec.precision, seeds=spec.seeds
    )

    ranges = experiment.family.metric_ranges
    history: list[dict] = []

    def evaluated() -> dict[str, float]:
        found = summarize(experiment.evaluate_replicas(), experiment.seeds, ranges)
        history.append({"epoch": experiment.epoch, "metrics": found})
        return found

    _train_epochs(experiment, spec, progress, set(evaluate_at or ()) - {spec.epochs}, evaluated)
    metrics = evaluated()
    metrics["train_seconds"] = experiment.train_seconds
    metrics["eval_seconds"] = experiment.eval_seconds

    with atomic_directory(out_dir) as staging:
        experiment.save(staging)
        (staging / "config.yaml").write_text(
            yaml.safe_dump({**spec.to_dict(), "metrics": metrics}, sort_keys=False)
        )
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if evaluate_at is not None:
            (staging / HISTORY_FILE).write_text(json.dumps(history, indent=2))
        save_images(experiment.image_grids(), staging / "images")
        made_with = {
            **provenance(str(dataset.device)),
            "wall_seconds": time.perf_counter() - started,
        }
        (staging / PROVENANCE_FILE).write_text(json.dumps(made_with, indent=2))
    return metrics, out_dir


def _train_epochs(
    experiment: Experiment,
    spec: TrainSpec,
    progress: bool,
    evaluate_at: Collection[int] = (),
    evaluate: Callable[[], object] = lambda: None,
) -> None:
    """Train to `spec.epochs` with a progress bar, stopping at a divergence, and call
    `evaluate` after each epoch in `evaluate_at` (evaluation moves no RNG stream, so the
    training is the same with or without it)."""
    from tqdm import tqdm

    bar = tqdm(
        range(spec.epochs),
        desc=f"{spec.family} on {spec.dataset}",
        unit="epoch",
        disable=not progress,
    )
    reported: list[int] = []
    for _ in bar:
        losses = experiment.train_replicas()
        mean_loss = sum(replica.get("train_loss", math.nan) for replica in losses) / len(losses)
        bar.set_postfix(loss=f"{mean_loss:.4g}")
        gone = zip(experiment.seeds, experiment.replica_diverged, strict=True)
        diverged = [seed for seed, diverged_ in gone if diverged_]
        if diverged and diverged != reported:
            # stderr: with --json, stdout must hold the JSON report alone.
            which = (
                "" if len(experiment.seeds) == 1 else f" (seeds {', '.join(map(str, diverged))})"
            )
            bar.write(
                f"diverged{which} at epoch {experiment.epoch}: a loss or weight became non-finite",
                file=sys.stderr,
            )
            reported = diverged
        if experiment.diverged:
            break
        if experiment.epoch in evaluate_at:
            evaluate()
