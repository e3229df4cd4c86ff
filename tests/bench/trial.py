"""Sections d and e: evaluation cost as a share of a trial, and a trial's peak memory.

Each family's trial runs in its own process (`python -m tests.bench.trial ...`), the way
the trainable runs it: `Experiment.train_epoch` then `evaluate()` every epoch (quick
between epochs, full after the last)
(eval_every=1), on MNIST at the reference sizes. The parent reads the child's peak RSS
from `wait4` (ru_maxrss) and the child reports VmHWM and, on CUDA, the peak allocated GPU
memory. Evaluation time is split into the probes (torch, on the trial's device), the reference classifier
on decoded swaps, and the rest (encoding, decoding, reconstruction, MMD).

The reference classifier is trained once per dataset and cached on disk; the parent fills
the cache before the trials (so they only load it) and reports that one-time cost apart.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from tests.bench.common import REPO_ROOT, load_bench_dataset, reference_configs, subset

TARGET_EVAL_SHARE = 0.10
TIMEOUT_S = 1800


@dataclass
class Sizes:
    epochs: int
    train_samples: int | None  # None: the whole training split
    measure_reference: bool  # retrain the reference classifier to time it even when cached


FULL = Sizes(epochs=10, train_samples=None, measure_reference=True)
QUICK = Sizes(epochs=1, train_samples=6000, measure_reference=False)


# --- the child: one trial --------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _time_components(family: str, totals: dict[str, float]) -> None:
    """Wrap the metric helpers the family's evaluate() calls, adding their seconds up."""
    import importlib

    module = importlib.import_module(f"trainables.families.{family}")
    groups = {
        "leakage_metrics": "probes",
        "content_accuracy": "probes",
        "swap_metrics": "swap_classifier",
    }
    for name, group in groups.items():
        original = getattr(module, name, None)
        if original is None:
            continue

        def wrapper(*args, _original=original, _group=group, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[_group] = totals.get(_group, 0.0) + time.perf_counter() - start

        setattr(module, name, wrapper)


def child_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one benchmark trial (used by tests.bench.run)")
    parser.add_argument("--family", required=True, choices=list(reference_configs()))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--train-samples", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import torch

    from trainables import Experiment

    if args.threads:
        torch.set_num_threads(args.threads)
    rss_after_imports = _status_kib("VmRSS")
    device = torch.device(args.device)
    dataset, source = load_bench_dataset(args.data_dir, args.synthetic, device)
    if args.train_samples:
        dataset = subset(dataset, args.train_samples)
    components: dict[str, float] = {}
    _time_components(args.family, components)
    config = reference_configs()[args.family]
    experiment = Experiment.create(args.family, config, dataset, seed=0)
    train, evaluation = [], []
    for epoch in range(args.epochs):
        before = experiment.train_seconds
        experiment.train_epoch()
        train.append(experiment.train_seconds - before)
        before = experiment.eval_seconds
        # As the trainable does: quick evaluations between epochs, the full one at the end.
        metrics = experiment.evaluate(quick=epoch < args.epochs - 1)
        evaluation.append(experiment.eval_seconds - before)
    result: dict[str, Any] = {
        "family": args.family,
        "device": str(device),
        "data": source,
        "train_samples": len(dataset.x_train),
        "epochs": args.epochs,
        "threads": torch.get_num_threads(),
        "train_seconds": train,
        "eval_seconds": evaluation,
        "eval_components_seconds": components,
        "diverged": experiment.diverged,
        "last_metrics": metrics,
        "rss_after_imports_mib": (rss_after_imports or 0) / 1024,
        "vm_hwm_mib": (_status_kib("VmHWM") or 0) / 1024,
        "self_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device.type == "cuda":
        result["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["cuda_max_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    Path(args.out).write_text(json.dumps(result))


# --- the parent ------------------------------------------------------------------------
def run_child(
    family: str, device: str, sizes: Sizes, data_dir, synthetic: bool, threads: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="latent-bench-trial-") as tmp:
        out, log_path = Path(tmp) / "result.json", Path(tmp) / "log.txt"
        command = [
            sys.executable,
            "-m",
            "tests.bench.trial",
            "--family",
            family,
            "--device",
            device,
            "--epochs",
            str(sizes.epochs),
            "--threads",
            str(threads),
            "--out",
            str(out),
        ]
        if sizes.train_samples:
            command += ["--train-samples", str(sizes.train_samples)]
        if synthetic:
            command.append("--synthetic")
        elif data_dir:
            command += ["--data-dir", str(data_dir)]
        env = dict(os.environ)  # with the wait policy of `study train` (common.py)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        with open(log_path, "w") as log:
            start = time.perf_counter()
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env
            )
            killer = threading.Timer(TIMEOUT_S, process.kill)
            killer.start()
            try:
                # wait4 reaps this child alone and returns its own resource usage.
                _, status, usage = os.wait4(process.pid, 0)
            finally:
                killer.cancel()
            process.returncode = os.waitstatus_to_exitcode(status)
            wall = time.perf_counter() - start
        if process.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"trial {family} on {device} failed ({process.returncode}):\n{log_path.read_text()[-3000:]}"
            )
        result = json.loads(out.read_text())
    result["process_wall_seconds"] = wall
    # Linux reports KiB, and carries the forked parent's peak across exec into this figure:
    # VmHWM (the child's own peak) is the one to read; this is kept as a cross-check.
    result["wait4_maxrss_mib"] = usage.ru_maxrss / 1024
    train, evaluation = sum(result["train_seconds"]), sum(result["eval_seconds"])
    result["train_total_s"], result["eval_total_s"] = train, evaluation
    result["eval_share_of_train"] = evaluation / train
    result["eval_share_of_trial"] = evaluation / (train + evaluation)
    return result


def reference_cost(dataset, measure: bool) -> dict[str, Any]:
    """The one-time cost of the reference classifier for `dataset` (and fill the cache)."""
    from tests.bench.common import timed
    from trainables import reference

    path = reference.cache_dir() / f"{dataset.name}-{reference._fingerprint(dataset)}.pt"
    if not path.exists():
        seconds, classifier = timed(partial(reference.load_reference, dataset), dataset.device)
        return {
            "seconds": seconds,
            "how": "trained and cached (the cache was cold)",
            "test_accuracy": classifier.test_accuracy,
            "samples": len(dataset.x_train),
        }
    if not measure:
        return {
            "seconds": None,
            "how": f"already cached in {path.parent}; not re-measured in --quick",
        }
    seconds, (_, accuracy) = timed(partial(reference._train, dataset), dataset.device)
    return {
        "seconds": seconds,
        "how": "retrained to time it (cache warm; cache file left as is)",
        "test_accuracy": accuracy,
        "samples": len(dataset.x_train),
    }


def run(
    devices: list[str],
    sizes: Sizes,
    data_dir,
    synthetic: bool,
    threads: int,
    dataset=None,
    log=print,
) -> dict[str, Any]:
    """`dataset`: the one `load_bench_dataset(data_dir, synthetic)` gives, if already loaded."""
    import torch

    if dataset is None:
        dataset, _ = load_bench_dataset(data_dir, synthetic)
    if sizes.train_samples:
        dataset = subset(dataset, sizes.train_samples)
    results: dict[str, Any] = {"dataset": dataset.name, "reference": {}, "trials": {}}
    for device in devices:
        log(f"  [{device}] reference classifier ({len(dataset.x_train)} training samples) ...")
        results["reference"][device] = reference_cost(dataset.to(device), sizes.measure_reference)
        if device == "cuda":
            torch.cuda.empty_cache()
        results["trials"][device] = {}
        for family in reference_configs():
            log(
                f"  [{device}] {family}: {sizes.epochs} epoch(s) + evaluate() each, in a subprocess ..."
            )
            results["trials"][device][family] = run_child(
                family, device, sizes, data_dir, synthetic, threads
            )
    return results


if __name__ == "__main__":
    child_main()
