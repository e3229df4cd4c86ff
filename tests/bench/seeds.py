"""Section h: seed replicas, S seeds of one config trained as one batched model
(`Experiment.create(..., seeds=S)`) against S separate runs.

In process, per family and device: seed-epochs per second of one S-replica experiment
(`train_replicas`) against S solo experiments (seeds 0..S-1) trained one after another,
each timed epoch of the replicas interleaved with the solos' epochs of the same round so
a busy machine slows both alike; the best epoch of each counts. Two sizes: the digits
dataset at the family's defaults (tiny, overhead-bound: what CPU users sweep) and MNIST at
the family's `reference_config` (on the CPU trained on the first `cpu_mnist_samples`
training images, evaluated as on the whole of MNIST, so the section stays short and the
reference classifier is the cached one of sections c and d). Evaluation: `evaluate_replicas()`
of S replicas (their probe fits and classifier readings batched, trainables/batching.py)
against S solo `evaluate()` calls, timed once per S, both the quick evaluation of a
trial's middle epochs and the full one of its last; the target is the ratio of S = 4
replicas' evaluation to one replica's.

End to end on the CPU: one config (a search space of one point, the family's defaults)
swept through the CLI as `--trials S --seeds 1` (S trials of one core, `cores` at a time)
and as `--trials 1 --seeds S --cpus-per-trial cores` (one trial of S replicas on all
`cores`): the per-trial overhead (process, imports, data, reference classifier, MLflow
run) is paid S times against once.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from tests.bench import sweep
from tests.bench.common import REPO_ROOT, reference_configs, subset, timed
from trainables import Dataset, Experiment, get_family, load_dataset
from trainables.metrics import EvalContext
from trainables.reference import load_reference

# The targets: on a GPU an epoch of 8 replicas costs at most 1.5x an epoch of one;
# on the CPU, S replicas train at least as fast as S separate runs and a sweep of one
# S-replica trial is no slower than S one-seed trials on the same cores. Issue 27: on
# every device, evaluating 4 replicas costs at most 1.5x evaluating one.
TARGET_GPU_EPOCH_RATIO = 1.5
TARGET_EVAL_SEEDS = 4
TARGET_EVAL_RATIO = 1.5
TARGET_CPU_SPEEDUP = 1.0
TARGET_SWEEP_RATIO = 1.0
SWEEP_DATASET = "digits"


@dataclass
class Sizes:
    families: tuple[str, ...]
    seeds: tuple[int, ...]  # S values; the first must be 1 (the ratio's denominator)
    epochs: int  # timed epochs of each run, after one warm-up epoch
    cpu_mnist_samples: int  # MNIST training images on the CPU (the GPU trains on all)
    sweep_families: tuple[str, ...]
    sweep_seeds: int  # S of the end-to-end comparison
    sweep_epochs: int
    cores: int = 2  # what both sweeps get: trials at once x 1 CPU, or one trial's CPUs


FULL = Sizes(
    families=tuple(reference_configs()),
    seeds=(1, 4, 8),
    epochs=3,
    cpu_mnist_samples=1536,
    sweep_families=("mlvae", "icvae"),
    sweep_seeds=4,
    sweep_epochs=10,
)
QUICK = Sizes(
    families=("mlvae",),
    seeds=(1, 2),
    epochs=1,
    cpu_mnist_samples=512,
    sweep_families=("mlvae",),
    sweep_seeds=2,
    sweep_epochs=2,
)


# --- in process ------------------------------------------------------------------------
def experiment(family: str, config, data: Dataset, eval_data: Dataset, seed: int, seeds: int):
    made = Experiment.create(family, config, data, seed=seed, seeds=seeds)
    # Its own context, subsets drawn once, as in a trial; on all of `eval_data`, so an
    # MNIST subset is evaluated (and its swaps classified) as the whole of MNIST is.
    made.eval_context = EvalContext(eval_data, seed=0)
    return made


def bench_case(
    family: str, config, data: Dataset, eval_data: Dataset, device, sizes: Sizes
) -> list[dict[str, Any]]:
    """One family on one dataset and device: a row per S."""
    solos = [experiment(family, config, data, eval_data, k, 1) for k in range(max(sizes.seeds))]
    for solo in solos:
        solo.train_epoch()
    solos[0].evaluate(quick=True)  # first-call costs of evaluation (imports, kernels)
    rows = []
    for seeds in sizes.seeds:
        replicas = experiment(family, config, data, eval_data, 0, seeds)
        replicas.train_replicas()
        own, separate = [], [[] for _ in range(seeds)]
        for _ in range(sizes.epochs):
            own.append(timed(replicas.train_replicas, device)[0])
            for k in range(seeds):
                separate[k].append(timed(solos[k].train_epoch, device)[0])
        replica_epoch = min(own)
        solo_epochs = sum(min(times) for times in separate)
        evaluation = {}
        for kind, quick in (("quick", True), ("full", False)):
            replicas.evaluate_replicas(quick)  # first-call costs (a new quick context)
            evaluation[f"eval_{kind}_s"] = timed(
                partial(replicas.evaluate_replicas, quick), device
            )[0]
            evaluation[f"solo_eval_{kind}_s"] = sum(
                timed(partial(solo.evaluate, quick), device)[0] for solo in solos[:seeds]
            )
        rows.append(
            {
                "seeds": seeds,
                "epoch_s": replica_epoch,
                "solo_epochs_s": solo_epochs,
                "seed_epochs_per_s": seeds / replica_epoch,
                "solo_seed_epochs_per_s": seeds / solo_epochs,
                "speedup_vs_solos": solo_epochs / replica_epoch,
                "epoch_seconds_all": own,
                "solo_epoch_seconds_all": separate,
                **evaluation,
                "diverged": sum(replicas.replica_diverged),
            }
        )
        del replicas
    for row in rows:
        row["ratio_to_one"] = row["epoch_s"] / rows[0]["epoch_s"]
        for kind in ("quick", "full"):
            row[f"eval_{kind}_to_one"] = row[f"eval_{kind}_s"] / rows[0][f"eval_{kind}_s"]
    return rows


def datasets(mnist: Dataset, device: torch.device, sizes: Sizes):
    """(name, training data, evaluation data, config per family, what was timed)."""
    digits = load_dataset("digits", device=device)
    full = mnist.to(device)
    on_cpu = device.type == "cpu"
    train = subset(full, sizes.cpu_mnist_samples) if on_cpu else full
    mnist_note = (
        f"first {len(train.x_train):,} training images (evaluated on all of MNIST)"
        if on_cpu
        else f"all {len(train.x_train):,} training images"
    )
    defaults = {family: {} for family in sizes.families}
    return [
        ("digits", digits, digits, defaults, f"{len(digits.x_train):,} images, family defaults"),
        (mnist.name, train, full, reference_configs(), f"{mnist_note}, reference_config"),
    ]


def run_in_process(mnist: Dataset, device: torch.device, sizes: Sizes, log=print) -> dict:
    results: dict[str, Any] = {"datasets": {}, "rows": {}}
    for name, train, evaluation, configs, what in datasets(mnist, device, sizes):
        seconds = timed(lambda evaluation=evaluation: load_reference(evaluation), "cpu")[0]
        results["datasets"][name] = {"timed": what, "reference_classifier_s": seconds}
        if seconds > 1.0:
            log(f"  [{device}] {name}: reference classifier trained and cached in {seconds:.0f} s")
        for family in sizes.families:
            config = get_family(family).make_config(configs[family])
            batches = -(-len(train.x_train) // config.batch_size)
            log(
                f"  [{device}] {family} on {name}: about {batches} batches of {config.batch_size} "
                f"per epoch, S = {list(sizes.seeds)} ..."
            )
            rows = bench_case(family, config, train, evaluation, device, sizes)
            results["rows"].setdefault(name, {})[family] = rows
    return results


# --- end to end ------------------------------------------------------------------------
def one_point_space(family: str, path: Path) -> Path:
    """A search space of one point, every searched parameter a single choice at the
    family's default, so every trial trains the same config. (Holding them all with --set
    leaves Optuna no space at all, which Ray's OptunaSearch refuses.)"""
    from search_spaces.loader import load_space

    defaults = get_family(family).make_config({}).to_dict()
    names = load_space(family).distributions
    parameters = {name: {"type": "categorical", "choices": [defaults[name]]} for name in names}
    path.write_text(json.dumps({"family": family, "parameters": parameters}))  # JSON is YAML
    return path


def sweep_command(
    family: str, trials: int, seeds: int, cpus: int, sizes: Sizes, workdir: Path
) -> list[str]:
    command = [sys.executable, "-m", "study.cli", "run", family, "--dataset", SWEEP_DATASET]
    command += ["--trials", str(trials), "--seeds", str(seeds), "--cpus-per-trial", str(cpus)]
    command += ["--concurrency", str(max(1, sizes.cores // cpus)), "--scheduler", "none"]
    command += ["--epochs", str(sizes.sweep_epochs), "--name", sweep.STUDY_NAME]
    command += ["--space", str(one_point_space(family, workdir / "space.yaml"))]
    command += ["--storage", str(workdir / "ray_results"), "--experiment", sweep.EXPERIMENT]
    command += ["--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}"]
    return command


def one_sweep(family: str, trials: int, seeds: int, cpus: int, sizes: Sizes, env) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="latent-bench-seeds-"))
    try:
        command = sweep_command(family, trials, seeds, cpus, sizes, workdir)
        wall, _started, output = sweep.run_command(command, workdir, env, expected=120.0)
        finals = [r[-1] for r in sweep.trial_results(workdir / "ray_results" / sweep.STUDY_NAME)]
        fit = sweep.fit_seconds(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if len(finals) != trials:
        raise RuntimeError(f"{family}: expected {trials} trials' results, found {len(finals)}")
    busy = sum(r["train_seconds"] + r["eval_seconds"] for r in finals)
    concurrency = max(1, sizes.cores // cpus)
    return {
        "trials": trials,
        "seeds": seeds,
        "cpus_per_trial": cpus,
        "concurrency": concurrency,
        "wall_s": wall,
        "fit_s": fit,
        "train_s": sum(r["train_seconds"] for r in finals),
        "eval_s": sum(r["eval_seconds"] for r in finals),
        "trainable_s": sum(r.get("time_total_s", float("nan")) for r in finals),
        # Wall time beyond the trials' own work spread over the slots.
        "overhead_s": wall - busy / min(concurrency, trials),
        "command": " ".join(command[2:]),
        "cli_output_tail": [line for _, line in output[-10:]],
    }


def run_sweeps(sizes: Sizes, log=print) -> dict[str, Any]:
    load_reference(load_dataset(SWEEP_DATASET))  # cached once: every trial only loads it
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.pop("OMP_WAIT_POLICY", None)  # the CLI's own choice for a sweep (study/threads.py)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    s, results = sizes.sweep_seeds, {}
    for family in sizes.sweep_families:
        log(f"  [cpu] {family}: {s} trials of 1 seed, then 1 trial of {s} seeds ...")
        separate = one_sweep(family, s, 1, 1, sizes, env)
        replicas = one_sweep(family, 1, s, sizes.cores, sizes, env)
        results[family] = {
            "separate": separate,
            "replicas": replicas,
            "wall_ratio": replicas["wall_s"] / separate["wall_s"],
        }
    return results
