"""Helpers for the sweep integration tests (test_sweep, test_cluster, test_shared_storage,
test_gpu).

They run the real `study` CLI in a scratch directory and start real Ray clusters on
127.0.0.1 (the `study` command, the clean environment and MLflow servers come from
reliability_support). Everything a test starts is found again by a marker it owns (a private
temporary directory in the processes' command lines, or a process group) and killed by pid,
so tests running beside these on the same machine keep their own Ray processes.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from reliability_support import BIN, STUDY, clean_env, kill_session

from analysis import records

STUDY_TIMEOUT_S = 300


# --- ports ----------------------------------------------------------------------------
def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 right now (held open together while
    chosen, so they never repeat)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def free_port_range(size: int, avoid: set[int] = frozenset()) -> tuple[int, int]:
    """A window of `size` ports, all free now, below the kernel's ephemeral range, for
    Ray's --min-worker-port/--max-worker-port (its default 10002-19999 is shared by every
    Ray instance on the machine)."""
    rng = random.Random()
    for _ in range(200):
        low = rng.randrange(20000, 30000 - size)
        ports = range(low, low + size)
        if not avoid.intersection(ports) and all(_port_free(p) for p in ports):
            return low, low + size - 1
    raise RuntimeError(f"no window of {size} free ports in 20000-30000")


# --- processes ------------------------------------------------------------------------
def _proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, command line), read from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(entry)] = (int(fields[1]), fields[0], cmdline)
    return table


def processes_with(marker: str) -> set[int]:
    """Live processes whose command line mentions `marker`, and all their descendants
    (Ray workers rename themselves `ray::...` but stay children of their raylet)."""
    table = _proc_table()
    own = {os.getpid(), os.getppid()}
    chosen = {pid for pid, (_, state, cmd) in table.items() if marker in cmd and state != "Z"}
    chosen -= own
    while True:
        children = {
            pid
            for pid, (ppid, state, _) in table.items()
            if ppid in chosen and pid not in chosen and state != "Z"
        }
        if not children:
            return chosen - own
        chosen |= children


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_pids(pids: set[int], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL whatever still runs after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        pids = {p for p in pids if _alive(p)}
        if not pids:
            return


def kill_processes_with(marker: str, grace: float = 3.0) -> None:
    kill_pids(processes_with(marker), grace)


def kill_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a process started with start_new_session=True and everything in its group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; its group may still hold children for a moment.
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(process.pid):
            time.sleep(0.1)
        if not _group_alive(process.pid):
            return


def _group_alive(pgid: int) -> bool:
    for pid in _proc_table():
        try:
            if os.getpgid(pid) == pgid and _alive(pid):
                return True
        except (ProcessLookupError, PermissionError):
            continue
    return False


@contextlib.contextmanager
def ray_tmpdir() -> Iterator[Path]:
    """A short private directory for RAY_TMPDIR (Ray's unix sockets live under it, and
    their paths must stay short); every process mentioning it is killed on exit."""
    path = Path(tempfile.mkdtemp(prefix="lsr", dir="/tmp"))
    try:
        yield path
    finally:
        kill_processes_with(str(path))
        shutil.rmtree(path, ignore_errors=True)


# --- the CLI --------------------------------------------------------------------------
def base_env(ray_tmp: Path | None = None, **extra: str) -> dict[str, str]:
    """clean_env, unbuffered, with Ray's sockets under `ray_tmp` (see ray_tmpdir)."""
    if ray_tmp is not None:
        extra = {"RAY_TMPDIR": str(ray_tmp), **extra}
    return clean_env(PYTHONUNBUFFERED="1", **extra)


@dataclass
class Completed:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def describe(self) -> str:
        return (
            f"`study {' '.join(self.args)}` exited {self.returncode} after {self.seconds:.0f}s\n"
            f"--- stdout (tail) ---\n{self.stdout[-4000:]}\n--- stderr (tail) ---\n{self.stderr[-4000:]}"
        )


def run_study(
    args: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = STUDY_TIMEOUT_S,
    check: bool = True,
    study: list[str] = STUDY,
) -> Completed:
    """Run `study ARGS` in `cwd` in its own session; on timeout the whole group (the
    driver and any local Ray it started) is stopped, and at the end whatever is left of
    its session is killed, so nothing it started outlives it. `study`: the command, when
    not the installed one."""
    start = time.monotonic()
    process = subprocess.Popen(
        [*study, *args],
        cwd=cwd,
        env=env if env is not None else base_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process, grace=5)
        stdout, stderr = process.communicate()
        stderr += f"\n[killed after {timeout}s]"
    finally:
        if process.poll() is None:
            kill_group(process, grace=5)
        kill_session(process.pid)
    done = Completed(args, process.returncode, stdout, stderr, time.monotonic() - start)
    if check and done.returncode != 0:
        raise AssertionError(done.describe())
    return done


# --- MLflow ---------------------------------------------------------------------------
def trial_of(run) -> str:
    """The Ray trial id of a trial's MLflow run."""
    return run.data.tags[records.TAG_TRIAL]


@dataclass
class StudyRecord:
    """What MLflow holds for one study: the parent run and its trial runs."""

    client: MlflowClient
    parent: object
    children: list = field(default_factory=list)
    experiment_id: str = ""


def study_record(tracking_uri: str, name: str, experiment: str = records.DEFAULT_EXPERIMENT):
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {tracking_uri}"
    parents = client.search_runs(
        [found.experiment_id], filter_string=f"tags.`{records.TAG_STUDY}` = '{name}'"
    )
    parents = [r for r in parents if r.data.tags.get(records.TAG_KIND) == records.KIND_STUDY]
    assert len(parents) == 1, f"expected one parent run for {name}, found {len(parents)}"
    parent = parents[0]
    children = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{records.TAG_PARENT}` = '{parent.info.run_id}'",
    )
    return StudyRecord(client, parent, children, found.experiment_id)


@dataclass
class LocalSweep:
    """A finished sweep: its directory, SQLite store, output and MLflow record."""

    cwd: Path
    uri: str
    output: str
    record: StudyRecord


def run_local_sweep(args: list[str], name: str, cwd: Path) -> LocalSweep:
    """`study ARGS` (a sweep named `name`) in `cwd` on a private local Ray, which must
    succeed; what MLflow holds of it then."""
    with ray_tmpdir() as ray_tmp:
        done = run_study(args, cwd=cwd, env=base_env(ray_tmp))
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    return LocalSweep(cwd, uri, done.stdout, study_record(uri, name))


def load_searcher_state(storage: Path, name: str) -> dict:
    """OptunaSearch's pickled state (`OptunaSearch.save` pickles its __dict__; a
    ConcurrencyLimiter delegates to it), as Ray wrote it beside the study's results."""
    import ray.cloudpickle

    files = sorted((storage / name).glob("searcher-state-*.pkl"))
    assert files, f"no searcher-state-*.pkl in {storage / name}"
    with open(files[-1], "rb") as handle:
        state = ray.cloudpickle.load(handle)
    assert isinstance(state, dict) and "_ot_study" in state, sorted(state)
    return state


# --- a Ray cluster of several nodes ------------------------------------------------------
@dataclass
class RayCluster:
    """`ray start --head` plus `workers` worker nodes (`ray start --address`), each with one
    CPU, on 127.0.0.1, with token authentication and private ports and temp dir. `extra`
    goes into every Ray process's environment (the driver's too): credentials, settings."""

    root: Path
    workers: int = 1
    extra: dict[str, str] = field(default_factory=dict)
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    port: int = 0
    log: list[str] = field(default_factory=list)
    node_manager_ports: list[int] = field(default_factory=list)  # head first

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """For every Ray process of this cluster, the driver included."""
        return base_env(
            self.root,
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            RAY_USAGE_STATS_ENABLED="0",
            **self.extra,
        )

    def _ray_start(self, args: list[str]) -> None:
        done = subprocess.run(
            [str(BIN / "ray"), "start", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            start_new_session=True,
        )
        self.log.append(done.stdout[-2000:] + done.stderr[-2000:])
        if done.returncode != 0:
            raise RuntimeError(f"ray start {' '.join(args)} failed:\n{self.log[-1]}")

    def start(self) -> None:
        ports = free_ports(2 + 6 * (1 + self.workers))
        self.port = ports[0]
        used = set(ports)
        common = [
            "--num-cpus",
            "1",
            "--node-ip-address",
            "127.0.0.1",
            "--temp-dir",
            str(self.root / "ray"),
            "--disable-usage-stats",
        ]

        def node_ports(first: int) -> list[str]:
            low, high = free_port_range(64, used)
            used.update(range(low, high + 1))
            names = [
                "--node-manager-port",
                "--object-manager-port",
                "--metrics-export-port",
                "--dashboard-agent-listen-port",
                "--dashboard-agent-grpc-port",
                "--runtime-env-agent-port",
            ]
            self.node_manager_ports.append(ports[first])
            flags = [f"{n}={p}" for n, p in zip(names, ports[first : first + 6], strict=True)]
            return [*flags, f"--min-worker-port={low}", f"--max-worker-port={high}"]

        self._ray_start(
            [
                "--head",
                f"--port={self.port}",
                "--include-dashboard=false",
                f"--dashboard-port={ports[1]}",
                *common,
                *node_ports(2),
            ]
        )
        for worker in range(self.workers):
            self._ray_start([f"--address={self.address}", *common, *node_ports(8 + 6 * worker)])

    def _raylets(self) -> dict[str, tuple[int, int]]:
        """node id -> (raylet pid, node manager port), from the raylets' command lines."""
        found = {}
        for pid in processes_with(str(self.root)):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    args = handle.read().decode(errors="replace").split("\0")
            except OSError:
                continue
            if not args or not args[0].endswith("/raylet"):
                continue
            flags = dict(a.removeprefix("--").split("=", 1) for a in args[1:] if "=" in a)
            if "node_id" in flags and "node_manager_port" in flags:
                found[flags["node_id"]] = (pid, int(flags["node_manager_port"]))
        return found

    def node_ids(self) -> set[str]:
        """The node ids of this cluster's live raylets."""
        return set(self._raylets())

    def worker_node_ids(self) -> list[str]:
        """The worker nodes' ids, in the order they were started."""
        by_port = {port: node for node, (_, port) in self._raylets().items()}
        return [by_port[p] for p in self.node_manager_ports[1:] if p in by_port]

    def kill_node(self, node_id: str) -> None:
        """The node's machine gone at once: SIGKILL to its raylet and everything under it
        (its trials' workers, its agents), no shutdown of any kind."""
        raylet, _ = self._raylets()[node_id]
        table = _proc_table()
        doomed, frontier = {raylet}, {raylet}
        while frontier:
            frontier = {pid for pid, (ppid, _, _) in table.items() if ppid in frontier} - doomed
            doomed |= frontier
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """Kill this cluster's processes by pid (not `ray stop`, which would take every
        Ray instance on the machine with it)."""
        kill_processes_with(str(self.root))


@contextlib.contextmanager
def ray_cluster(workers: int = 1, **extra: str) -> Iterator[RayCluster]:
    with ray_tmpdir() as root:
        cluster = RayCluster(root, workers, extra)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


def sqlite_store(directory: Path):
    """A new MLflow SQLite store in `directory` with the default experiment: its uri,
    client, experiment id and directory (tests that write studies as the writers do)."""
    from types import SimpleNamespace

    uri = f"sqlite:///{directory / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment(
        records.DEFAULT_EXPERIMENT, artifact_location=str(directory / "artifacts")
    )
    return SimpleNamespace(uri=uri, client=client, experiment=experiment, directory=directory)
