"""`study train`: one model, trained in this process, written to an output directory."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from study.spec import TrainSpec
from trainables import Dataset, Experiment, load_dataset, pick_device
from trainables.images import save_images


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
    metrics = experiment.evaluate()
    metrics["train_seconds"] = experiment.train_seconds
    metrics["eval_seconds"] = experiment.eval_seconds

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        experiment.save(staging)
        (staging / "config.yaml").write_text(
            yaml.safe_dump({**spec.to_dict(), "metrics": metrics}, sort_keys=False)
        )
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
        save_images(experiment.image_grids(), staging / "images")
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return metrics, out_dir
