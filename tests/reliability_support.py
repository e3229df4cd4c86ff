"""Process helpers every integration test shares: the `study` command and a clean
environment for it, sessions found and killed by id (a command's local Ray cluster lives in
its session), free ports, a real `mlflow server` that can be stopped and started again,
snapshots of a directory, and the CLI forked from a preloaded process. Sweep-specific
helpers (running `study`, MLflow records, a Ray cluster of several nodes) are in sweep_helpers.

Every process a test starts goes through `Processes` (or sweep_helpers.run_study), which
kills each started session (the driver, its Ray daemons and workers share the session id)
even when the test failed half-way.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The installed console script when there is one (what a user runs), else the module.
STUDY = [str(BIN / "study")] if (BIN / "study").exists() else [sys.executable, "-m", "study.cli"]
MLFLOW = str(BIN / "mlflow") if (BIN / "mlflow").exists() else shutil.which("mlflow") or "mlflow"
# `study` with a piece of its sweep broken on purpose (see broken_study.py): BROKEN_STUDY +
# [WHERE, *args]; SMALL_SWEEP: one objective (a TPE sampler) and one short trial.
BROKEN_STUDY = [sys.executable, str(Path(__file__).with_name("broken_study.py"))]
SMALL_SWEEP = ["run", "mlvae", "--trials", "1", "--epochs", "1", "--objective", "swap_acc:max"]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without settings that would point a command elsewhere."""
    env = dict(os.environ)
    for key in (
        "MLFLOW_TRACKING_URI",
        "RAY_ADDRESS",
        "LATENT_STUDIES_DATA_DIR",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
    ):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                if width == 8:
                    found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
                else:
                    found.add(address)
    return found


def wait_for(predicate: Callable[[], object], timeout: float, what: str, every: float = 0.5):
    """Poll `predicate` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def snapshot(directory: Path) -> dict[str, str]:
    """Every file and directory under `directory`, with a content hash for files."""
    found = {}
    for path in sorted(directory.rglob("*")):
        key = str(path.relative_to(directory))
        if path.is_file():
            found[key] = hashlib.sha1(path.read_bytes()).hexdigest()
        else:
            found[key] = "dir"
    return found


# --- processes ---------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp session ..."; comm may hold spaces and parentheses.
    return text[text.rindex(")") + 2 :].split()


def session_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[3]) if fields else None


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def pids_in_session(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            pid = int(entry.name)
            fields = _stat_fields(pid)
            # Zombies (state Z) are dead already; their parent reaps them.
            if fields and int(fields[3]) == sid and fields[0] != "Z":
                pids.append(pid)
    return pids


def kill_session(sid: int, sig: int = signal.SIGKILL) -> None:
    for pid in pids_in_session(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


class Processes:
    """Starts commands in new sessions and kills every one of those sessions on close()."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []
        self.files = []

    def start(self, args: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None):
        handle = open(log, "wb")  # noqa: SIM115 - closed in close()
        self.files.append(handle)
        process = subprocess.Popen(
            args,
            cwd=cwd,
            env=env or clean_env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.started.append(process)
        return process

    def study(self, *args: str, cwd: Path, log: Path, env: dict[str, str] | None = None):
        return self.start([*STUDY, *args], cwd, log, env)

    def stop(self, process: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 20):
        """Signal the whole session of `process`, wait, then SIGKILL what is left."""
        kill_session(process.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and pids_in_session(process.pid):
            time.sleep(0.2)
            process.poll()  # reap the leader, or it stays a zombie
        kill_session(process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)

    def close(self) -> None:
        for process in self.started:
            kill_session(process.pid)
        for process in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            # Daemons whose parent died are re-parented, not reaped by us: wait them out.
            with contextlib.suppress(AssertionError):
                wait_for(lambda p=process: not pids_in_session(p.pid), 10, "session exit")
        for handle in self.files:
            handle.close()


# --- waiting for a started command ------------------------------------------------------
SWEEP_TIMEOUT = 420  # seconds a sweep may take on a loaded 2-core machine


def finish(process: subprocess.Popen, log: Path, timeout: float = SWEEP_TIMEOUT) -> str:
    """Wait for a `study` process started by Processes; fail with its output when it fails
    or hangs (Processes.close kills it then). Returns its output."""
    import pytest

    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{' '.join(process.args)}` ran past {timeout}s:\n{tail(log)}")
    output = log.read_text()
    assert process.returncode == 0, f"`{' '.join(process.args)}` failed:\n{output[-4000:]}"
    return output


def tail(path: Path, size: int = 4000) -> str:
    try:
        return path.read_text()[-size:]
    except OSError:
        return ""


# --- the CLI forked from a preloaded process ---------------------------------------------
_FORKSERVER = None
_STATUS_LOCK = threading.Lock()
PRELOAD = [
    "study.cli",
    "study.execute",
    "study.plan",
    "study.train",
    "analysis.export",
    "analysis.report",
]


def _cli_child(args: list[str], cwd: str, out: str, err: str, env: dict[str, str]) -> None:
    """Body of a forked CLI process: its own session, directory, environment and output
    files, then the console script's entry point; its exit status is the CLI's."""
    os.setsid()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for path, fd in ((out, 1), (err, 2)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    sys.argv = ["study", *args]
    from study.cli import main

    main()


def run_forked_cli(
    args: list[str], cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
):
    """Run `study ARGS` as its own process, forked from a server that has imported the CLI
    once (multiprocessing's forkserver): a real process with a real exit status and real
    file effects, without paying the CLI's seconds of imports per run. `env` replaces the
    clean environment."""
    import multiprocessing.connection

    global _FORKSERVER
    if _FORKSERVER is None:
        _FORKSERVER = multiprocessing.get_context("forkserver")
        _FORKSERVER.set_forkserver_preload(PRELOAD)
    out, err = cwd.parent / f".{cwd.name}.out", cwd.parent / f".{cwd.name}.err"
    process = _FORKSERVER.Process(
        target=_cli_child,
        args=(list(args), str(cwd), str(out), str(err), env if env is not None else clean_env()),
    )
    # A forkserver child's exit status arrives as bytes on a pipe, and whoever polls first
    # reads them: `start()` polls every finished child of this process, so a start in one
    # thread racing a join in another left the loser reading EOF, which multiprocessing
    # reports as exit status 255. Starting and reading statuses under one lock, and
    # waiting on the sentinel (which reads nothing) outside it, keeps the rows parallel.
    with _STATUS_LOCK:
        process.start()
    if not multiprocessing.connection.wait([process.sentinel], timeout):
        kill_session(process.pid)
        multiprocessing.connection.wait([process.sentinel], 10)
    kill_session(process.pid)
    with _STATUS_LOCK:
        process.join(10)
        code = process.exitcode
    if code is None or code < 0:
        code = -9 if code is None else code
    return subprocess.CompletedProcess(args, code, out.read_text(), err.read_text())


# --- MLflow server -----------------------------------------------------------------------
class MlflowServer:
    """A real `mlflow server` on 127.0.0.1:port with a SQLite store (or `backend`); stop()
    and start() again keep the port and the store, as a restarted tracking server would."""

    def __init__(
        self,
        processes: Processes,
        root: Path,
        port: int | None = None,
        artifacts: str | None = None,
        env: dict[str, str] | None = None,
        backend: str | None = None,
    ):
        """`artifacts`: the artifact destination (default a directory under `root`), e.g.
        s3://bucket/prefix with the endpoint and credentials in `env`; `backend`: the
        backend store's URI (default an SQLite file under `root`), e.g. postgresql://..."""
        self.processes = processes
        self.root = root
        self.port = port or free_port()
        self.artifacts = artifacts or str(root / "artifacts")
        self.env = env or {}
        self.backend = backend or f"sqlite:///{root / 'mlflow.db'}"
        self.process: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        args = [
            MLFLOW,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            self.backend,
            "--artifacts-destination",
            self.artifacts,
            "--serve-artifacts",
        ]
        # MLflow's job runners (eight processes) are not needed for tracking.
        env = clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **self.env)
        self.process = self.processes.start(args, self.root, self.root / "server.log", env)
        wait_for(self.healthy, timeout, f"mlflow server on port {self.port} ({self.log_tail()})")

    def healthy(self) -> bool:
        import requests

        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"mlflow server exited: {self.log_tail()}")
        try:
            return requests.get(f"{self.uri}/health", timeout=2).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        """SIGTERM to the server's whole session (gunicorn or uvicorn workers included),
        then make sure the port is free again."""
        if self.process is not None:
            self.processes.stop(self.process, signal.SIGTERM)
            self.process = None

        def port_free() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", self.port)) != 0

        wait_for(port_free, 30, f"port {self.port} to close")

    def log_tail(self) -> str:
        try:
            return (self.root / "server.log").read_text()[-1500:]
        except OSError:
            return ""
