"""Shared fixtures: an isolated cache for the whole session, the digits dataset, MNIST, the
shared storage and tracking servers of the cluster tests."""

from __future__ import annotations

import os

# On a pytest-xdist worker (`make test` runs two): one torch thread each, and libgomp's
# threads sleep when idle. Two workers of two spinning threads on two cores made the suite
# three times slower (measured). Set before torch is first imported here, and inherited
# by every subprocess a test starts.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import trainables  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
# The shared data directory: where it lives on the development machine, and beside a fresh
# clone in CI (shared/ next to the repository).
MNIST_CANDIDATES = (
    Path("/work/shared/data/mnist"),
    REPO_ROOT.parent / "shared" / "data" / "mnist",
)


# `make test` runs on two pytest-xdist workers (--dist loadgroup). Every test module is a
# group, so a module's fixtures are built once; modules that share a session fixture built
# at great cost (a finished study, the S3 and PostgreSQL services) form one group, so it is
# built once too, on one worker.
SHARED_GROUPS = {
    "test_analysis": "analysis-study",
    "test_browser": "analysis-study",
    "test_optuna_record": "analysis-study",
    "test_cluster": "shared-services",
    "test_shared_storage": "shared-services",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rpartition(".")[2] if item.module else item.nodeid
        item.add_marker(pytest.mark.xdist_group(SHARED_GROUPS.get(module, module)))


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


@pytest.fixture
def procs():
    """Processes started by a test, each in its own session, all killed when it ends."""
    from reliability_support import Processes

    processes = Processes()
    yield processes
    processes.close()


@pytest.fixture(scope="session")
def cluster_databases(shared_services, tmp_path_factory: pytest.TempPathFactory):
    """PostgreSQL (Debian's `postgresql`, started here on 127.0.0.1 in a temporary data
    directory) holding a tracking server's backend store and an Optuna database, as a
    cluster's drivers share them; skipped, with the reason, where it cannot start."""
    from postgres_support import Unavailable
    from reliability_support import Processes
    from s3_support import ClusterDatabases

    processes = Processes()
    databases = None
    try:
        try:
            databases = ClusterDatabases(
                processes, tmp_path_factory.mktemp("cluster-databases"), shared_services
            )
        except Unavailable as why:
            pytest.skip(f"PostgreSQL cannot start here: {why}")
        yield databases
    finally:
        processes.close()
        if databases is not None:
            databases.stop()


@pytest.fixture(scope="session")
def shared_services(tmp_path_factory: pytest.TempPathFactory):
    """An S3-compatible server (moto) with a bucket and a key, and an `mlflow server` that
    stores artifacts in that bucket: started once for the cluster and storage tests."""
    from reliability_support import Processes
    from s3_support import SharedServices

    processes = Processes()
    try:
        yield SharedServices(processes, tmp_path_factory.mktemp("shared-services"))
    finally:
        processes.close()


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


# Two searched parameters keep the neighbour re-runs few (2 each) while the study still
# has an importance ranking, a degeneracy map and configs that differ.
ANALYSIS_FIXED = {
    "recon_loss": "bernoulli",
    "noise_std": 0.1,
    "style_dim": 8,
    "class_dim": 8,
    "group_size": 8,
    "lr": 0.003,
}


@dataclass(frozen=True)
class AnalysisStudy:
    """A real small study on digits with its seed re-runs: what the analysis reads."""

    cwd: Path
    name: str  # the sweep
    robust: str  # `study robustness NAME --top 2 --seeds 2 --neighbours` (NAME-robust)
    plain: str  # `study robustness NAME --top 2 --seeds 2 --name NAME-plain`
    env: dict

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.cwd / 'mlflow.db'}"


@pytest.fixture(scope="session")
def analysis_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnalysisStudy]:
    """`study run mlvae` (6 trials x 2 epochs, two searched parameters) then
    `study robustness` with and without neighbours, each as a user runs it (real Ray and
    MLflow, one CLI process per command). About a minute on two cores."""
    from sweep_helpers import base_env, ray_tmpdir, run_study

    cwd = tmp_path_factory.mktemp("analysis")
    fixed = [arg for k, v in ANALYSIS_FIXED.items() for arg in ("--set", f"{k}={v}")]
    with ray_tmpdir() as ray_tmp:
        env = base_env(ray_tmp)
        run_study(
            ["run", "mlvae", "--name", "an", "--trials", "6", "--epochs", "2", *fixed], cwd, env
        )
        run_study(["robustness", "an", "--top", "2", "--seeds", "2", "--neighbours"], cwd, env)
        run_study(
            ["robustness", "an", "--top", "2", "--seeds", "2", "--name", "an-plain"], cwd, env
        )
        yield AnalysisStudy(cwd, "an", "an-robust", "an-plain", env)
