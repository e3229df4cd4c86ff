"""What every benchmark section shares: the reference model sizes, the data, timing with
device synchronisation, the machine description and the tables."""

from __future__ import annotations

import os

from study import threads  # noqa: E402

# The benchmarks time what one `study train` does, so they get its OpenMP wait policy
# (study/threads.py), set before torch loads; subprocesses inherit it.
threads.configure("train")

import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from study.provenance import cpu_model  # noqa: E402
from trainables import Dataset, all_families, load_dataset  # noqa: E402
from trainables.data import DATA_DIR_ENV, IDX_FILES  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
# The shared data directory beside a clone, then where it lives on the development machine.
MNIST_CANDIDATES = (REPO_ROOT.parent / "shared" / "data" / "mnist", Path("/work/shared/data/mnist"))
SYNTHETIC_SEED = 1234


def reference_configs() -> dict[str, dict[str, Any]]:
    """Each family's `reference_config`: its paper's reference layer sizes at batch 256."""
    return {name: dict(family.reference_config) for name, family in all_families().items()}


# --- data ------------------------------------------------------------------------------
def find_mnist_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    from_env = os.environ.get(DATA_DIR_ENV)
    if data_dir:
        candidates = [Path(data_dir)]
    else:
        candidates = ([Path(from_env)] if from_env else []) + list(MNIST_CANDIDATES)
    for directory in candidates:
        if all((directory / name).is_file() for name in IDX_FILES.values()):
            return directory
    return None


def synthetic_mnist(n_train: int = 60_000, n_test: int = 10_000) -> Dataset:
    """Random uint8 images of MNIST's shape with 10 balanced labels (used when the real
    MNIST files are absent; speed does not depend on pixel values)."""
    rng = np.random.default_rng(SYNTHETIC_SEED)

    def images(n: int) -> torch.Tensor:
        return torch.from_numpy(rng.integers(0, 256, (n, 784), dtype=np.uint8)).float() / 255

    def labels(n: int) -> torch.Tensor:
        return torch.from_numpy(rng.permutation(np.arange(n) % 10).astype(np.int64))

    return Dataset(
        "synthetic-mnist",
        images(n_train),
        labels(n_train),
        images(n_test),
        labels(n_test),
        (1, 28, 28),
        10,
    )


def load_bench_dataset(
    data_dir: str | None = None, synthetic: bool = False, device: str | torch.device = "cpu"
) -> tuple[Dataset, str]:
    """MNIST (or its synthetic stand-in) on `device`, and a line saying which it is."""
    directory = None if synthetic else find_mnist_dir(data_dir)
    if directory is None:
        why = "--synthetic given" if synthetic else "MNIST idx files not found"
        return synthetic_mnist().to(
            device
        ), f"SYNTHETIC random data of MNIST's shape, 10 labels ({why})"
    return load_dataset("mnist", data_dir=directory, device=device), f"MNIST from {directory}"


def subset(dataset: Dataset, n_train: int) -> Dataset:
    """The first `n_train` training samples (the test split is kept whole)."""
    n = min(n_train, len(dataset.x_train))
    return Dataset(
        dataset.name,
        dataset.x_train[:n],
        dataset.y_train[:n],
        dataset.x_test,
        dataset.y_test,
        dataset.image_shape,
        dataset.n_classes,
    )


def uint8_images(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The training split back as (N, H, W) uint8 images and int64 labels, the form the
    reference implementations read their (greyscale) data in (exact: pixels were stored
    as k/255)."""
    assert dataset.channels == 1, "the reference implementations read greyscale images"
    pixels = (dataset.x_train.cpu() * 255).round().to(torch.uint8)
    return pixels.view(-1, *dataset.image_shape[1:]).numpy(), dataset.y_train.cpu().numpy()


# --- timing ----------------------------------------------------------------------------
def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device | str) -> tuple[float, Any]:
    """Seconds `fn()` takes, the device's queued work included, and what it returned."""
    sync(device)
    start = time.perf_counter()
    value = fn()
    sync(device)
    return time.perf_counter() - start, value


def spread(values: list[float]) -> float:
    """(max - min) / median of repeated timings: how noisy the machine was."""
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0


def cuda_available() -> bool:
    return torch.cuda.is_available()


NO_CUDA = "no CUDA GPU present: CUDA figures not measured"


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_1_5_15": load_average(),
        "cuda": None,
    }
    if cuda_available():
        props = torch.cuda.get_device_properties(0)
        info["cuda"] = {
            "device": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(),
            "cuda_version": torch.version.cuda,
        }
    return info


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


# --- reporting -------------------------------------------------------------------------
def verdict(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "PASS" if ok else "MISS"


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and abs(value) < 10 ** (-digits):
            return f"{value:.2e}"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    line = lambda values: "  ".join(  # noqa: E731
        v.ljust(w) if i == 0 else v.rjust(w)
        for i, (v, w) in enumerate(zip(values, widths, strict=True))
    )
    rule = "-" * len(line(headers))
    return "\n".join([title, rule, line(headers), rule, *(line(r) for r in cells), rule])
