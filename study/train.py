"""`study train`: one model, trained in this process, written to an output directory."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

from study.spec import TrainSpec
from trainables import Dataset, Experiment, load_dataset, pick_device
from trainables.images import save_images
from trainables.io import atomic_directory


def default_out_dir(spec: TrainSpec) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / "train" / f"{spec.family}-{spec.dataset}-seed{spec.seed}-{stamp}"


def train_once(
    spec: TrainSpec,
    device: str = "auto",
    data_dir: str | None = None,
    download: bool = False,
    out_dir: str | Path | None = None,
    progress: bool = True,
    dataset: Dataset | None = None,
) -> tuple[dict[str, float], Path]:
    """Train `spec`, then write weights, the resolved config and the metrics to `out_dir`.
    `dataset`, when given, is `spec.dataset` already loaded (a preset reuses it).

    The directory appears only when everything in it is written (a crash leaves nothing).
    """
    out_dir = Path(out_dir) if out_dir else default_out_dir(spec)
    if out_dir.exists() and any(out_dir.iterdir()):
        from trainables.errors import ConfigError

        raise ConfigError(f"out: {out_dir} exists and is not empty; choose another --out")
    if dataset is None:
        dataset = load_dataset(spec.dataset, data_dir, download, pick_device(device))
    experiment = Experiment.create(
        spec.family, spec.params, dataset, spec.seed, precision=spec.precision
    )

    _train_epochs(experiment, spec, progress)
    metrics = experiment.evaluate()
    metrics["train_seconds"] = experiment.train_seconds
    metrics["eval_seconds"] = experiment.eval_seconds

    with atomic_directory(out_dir) as staging:
        experiment.save(staging)
        (staging / "config.yaml").write_text(
            yaml.safe_dump({**spec.to_dict(), "metrics": metrics}, sort_keys=False)
        )
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
        save_images(experiment.image_grids(), staging / "images")
    return metrics, out_dir


def _train_epochs(experiment: Experiment, spec: TrainSpec, progress: bool) -> None:
    """Train to `spec.epochs` with a progress bar, stopping at a divergence."""
    from tqdm import tqdm

    bar = tqdm(
        range(spec.epochs),
        desc=f"{spec.family} on {spec.dataset}",
        unit="epoch",
        disable=not progress,
    )
    for _ in bar:
        losses = experiment.train_epoch()
        bar.set_postfix(loss=f"{losses.get('train_loss', float('nan')):.4g}")
        if experiment.diverged:
            # stderr: with --json, stdout must hold the JSON report alone.
            bar.write(
                f"diverged at epoch {experiment.epoch}: a loss or weight became non-finite",
                file=sys.stderr,
            )
            break
