"""The Ray Tune trainable: one trial = one `trainables.Experiment`, trained epoch by epoch.

Each epoch it reports the metrics and a checkpoint (weights, optimisers, epoch, RNG state
and the latest image grids), so ASHA can stop it, Ray can retry it after a crash and a
study can resume. It uses exactly the CPUs and GPU Ray gave it.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from functools import lru_cache
from typing import Any

from study import threads

# Before torch loads: a worker that a cluster's `ray start` started has no driver's
# environment to inherit the policy from (see study/threads.py).
threads.configure_shared()

import ray  # noqa: E402
import torch  # noqa: E402
from ray import tune  # noqa: E402

from analysis.records import (  # noqa: E402
    RESULT_DATASET_DIGEST,
    RESULT_DATASET_SOURCE,
    TrialConfig,
)
from analysis.seeds import summarize  # noqa: E402
from trainables import Experiment, load_dataset  # noqa: E402
from trainables.images import save_images  # noqa: E402
from trainables.registry import add_family_module  # noqa: E402

IMAGES_DIR = "images"
CHECKPOINT_SECONDS = 10.0


@lru_cache(maxsize=2)
def _cached_dataset(
    name: str, data_dir: str | None, device: str, image_size: int | None, color: str | None
):
    # Reused actors keep the dataset between trials: loading MNIST costs about a second.
    return load_dataset(
        name, data_dir, download=False, device=device, image_size=image_size, color=color
    )


def _allocated_device_and_threads() -> tuple[str, int]:
    resources = tune.get_context().get_trial_resources().required_resources
    cpus = max(1, int(math.floor(resources.get("CPU", 1))))
    gpus = resources.get("GPU", 0)
    device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
    return device, cpus


def train_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable. `config` is a trial-config envelope (records.TrialConfig):
    run settings (family, dataset, epochs, seed, seeds, data_dir, eval_every, precision)
    and the family parameters. With seeds = S > 1 the trial trains S replicas at once
    and reports their summary (analysis/seeds.py): means as the metrics themselves."""
    trial = TrialConfig.from_tune(config)
    run, params = trial.run, trial.params
    device, threads = _allocated_device_and_threads()
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)

    if run.get("family_module"):  # a family from outside the package (--family-module)
        add_family_module(run["family_module"])
    dataset = _cached_dataset(
        run["dataset"], run.get("data_dir"), device, run.get("image_size"), run.get("color")
    )
    experiment = Experiment.create(
        run["family"],
        params,
        dataset,
        seed=run["seed"],
        seeds=int(run.get("seeds", 1)),
        precision=run.get("precision", "fp32"),
    )
    ranges = experiment.family.metric_ranges
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            experiment.restore(directory)

    eval_every = max(1, int(run.get("eval_every", 1)))
    epochs = int(run["epochs"])
    # Strings, so the MLflow logger records node and device as tags (metrics are numbers).
    node_id = ray.get_runtime_context().get_node_id()
    last_checkpoint = None  # this session's: a restored trial checkpoints its first epoch
    while experiment.epoch < epochs and not experiment.diverged:
        losses = experiment.train_replicas()
        last = experiment.epoch >= epochs or experiment.diverged
        # Also the first epoch: every result must carry the objectives (Ray rejects a
        # result without the searcher's metric), and between evaluations they repeat.
        due = last or experiment.epoch % eval_every == 0 or not experiment.last_replica_metrics
        # Every epoch but the last gets the quick evaluation (smaller subsets, linear
        # probe): a tenth of the cost, and ASHA only needs a fair ranking.
        metrics = (
            experiment.evaluate_replicas(quick=not last) if due else experiment.last_replica_metrics
        )
        per_seed = [{**loss, **metric} for loss, metric in zip(losses, metrics, strict=True)]
        result = {
            **summarize(per_seed, experiment.seeds, ranges),
            "epoch": experiment.epoch,
            "train_seconds": experiment.train_seconds,
            "eval_seconds": experiment.eval_seconds,
            "node_id": node_id,
            "device": device,
            RESULT_DATASET_SOURCE: dataset.source,
            RESULT_DATASET_DIGEST: dataset.digest,
        }
        # Checkpoint the first and last epochs and otherwise at most every
        # CHECKPOINT_SECONDS: a checkpoint per 0.2-s digits epoch cost a sweep 10% of its
        # time, and a retried trial loses at most that much work.
        now = time.monotonic()
        if not (last or last_checkpoint is None or now - last_checkpoint >= CHECKPOINT_SECONDS):
            tune.report(result)
            continue
        last_checkpoint = now
        with tempfile.TemporaryDirectory() as directory:
            experiment.save(directory)
            save_images(experiment.image_grids(), os.path.join(directory, IMAGES_DIR))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(directory))
