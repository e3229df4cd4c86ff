"""Shared fixtures: an isolated cache for the whole session, the digits dataset, MNIST."""

from __future__ import annotations

from pathlib import Path

import pytest

import trainables

REPO_ROOT = Path(__file__).resolve().parents[1]
# The shared data directory: where it lives on the development machine, and beside a fresh
# clone in CI (shared/ next to the repository).
MNIST_CANDIDATES = (
    Path("/work/shared/data/mnist"),
    REPO_ROOT.parent / "shared" / "data" / "mnist",
)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point the reference-classifier cache at one directory per session, so tests never
    read or write ~/.cache, yet the digits classifier trains only once (subprocesses
    inherit the variable, so the CLI tests reuse it too)."""
    cache = tmp_path_factory.mktemp("latent-studies-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LATENT_STUDIES_CACHE", str(cache))
        # A data directory from the developer's shell must not change what the tests see.
        patch.delenv("LATENT_STUDIES_DATA_DIR", raising=False)
        yield cache


@pytest.fixture(scope="session")
def digits() -> trainables.Dataset:
    return trainables.load_dataset("digits")


def find_mnist_dir() -> Path | None:
    """The first candidate directory holding all four MNIST idx .gz files, or None."""
    from trainables.data import IDX_FILES

    for directory in MNIST_CANDIDATES:
        if all((directory / name).is_file() for name in IDX_FILES.values()):
            return directory
    return None


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The MNIST idx directory; skips the test when it is not on this machine."""
    directory = find_mnist_dir()
    if directory is None:
        pytest.skip(
            "MNIST idx .gz files not found in "
            + " or ".join(str(p) for p in MNIST_CANDIDATES)
            + "; put the four files there to run this test"
        )
    return directory
