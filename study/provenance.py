"""What a published figure was made with: the commit, the packages, the machine.

A reproduction run writes this beside its metrics, so that a figure in the README can be
traced to the code and the device that produced it, and a rerun on other code or another
machine can be told apart from a drift in the code.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PROVENANCE_FILE = "provenance.json"
# The packages whose versions can move a trained model's figures.
PACKAGES = ("latent-studies", "torch", "numpy", "scipy", "scikit-learn")
SOURCE_ROOT = Path(__file__).resolve().parent.parent


def git_commit(root: Path = SOURCE_ROOT) -> dict[str, Any]:
    """The source tree's commit and whether tracked files differ from it; an installed
    copy without git has neither (None)."""
    try:
        sha = _git(root, "rev-parse", "HEAD")
        changed = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": sha or None, "dirty": bool(changed) if sha else None}


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def package_versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: str) -> str:
    """'cpu: <model>, N cores, T torch threads' or 'cuda: <GPU name>'."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(torch.device(device))}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"cpu: {cpu_model()}, {cores} cores, {torch.get_num_threads()} torch threads"


def provenance(device: str) -> dict[str, Any]:
    return {
        **git_commit(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "device": device_description(device),
    }
