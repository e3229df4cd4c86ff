"""Every Ray connection the commands make: probing an address, starting or joining Ray,
what its nodes offer, and leaving it. Ray's API moves between releases; it is called here
(and in the Tune pieces of plan.py and trainable.py) and nowhere else."""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.records import redact
from study.errors import UserError

CONNECT_FIX = "start the cluster (ray start --head) or fix --address"
# A worker's start, with a runtime_env to set up, takes seconds; a node that has not run
# the import check in this long will not run trials either.
IMPORT_CHECK_SECONDS = 120.0


def probe_address(address: str) -> None:
    """Fail in seconds when a host:port (or ray://host:port) address is not listening.

    ray.init does not fail on an unreachable GCS: it logs and retries for minutes. A TCP
    connect says the same thing at once. 'auto' is left to Ray, which resolves it itself.
    """
    if address in ("auto", "local"):
        return
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    host = host.rpartition("@")[2].strip("[]")  # drop credentials; unbracket IPv6
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in target:
        raise UserError(
            f"address: {redact(address)!r} is not 'auto', host:port or ray://host:port; {CONNECT_FIX}"
        )
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UserError(
            f"address: cannot connect to Ray at {redact(address)} ({reason}); {CONNECT_FIX}"
        ) from None


def connect(address: str | None, verbose: bool, runtime_env: dict[str, Any] | None = None) -> None:
    """Join the cluster at `address`, or start Ray on this machine when None; the job's
    workers get `runtime_env` (a --family-module's code)."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "log_to_driver": verbose,
        "include_dashboard": False,
        "configure_logging": True,
    }
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    if address:
        probe_address(address)
        kwargs["address"] = address
    # Workers import this project: make sure they find it from the driver's directory.
    repo = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    # Ray 2.60's default: a trial that asks for no GPU keeps the visible devices as they
    # are (the trainable picks its device from what Ray allocated). Older Rays hide them,
    # and warn on stderr of every driver that this default will change.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise UserError(
            f"address: cannot connect to Ray at {redact(address or 'local')} "
            f"({str(error).splitlines()[0][:160]}); {CONNECT_FIX}"
        ) from None


def check_workers_import(module: str, fix: str) -> None:
    """Import `module` in a worker on every alive node (a zero-CPU task pinned to each),
    and refuse, naming the node, if one cannot: each of its trials would fail there."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0, max_retries=0)
    def try_import(name: str) -> str | None:
        import importlib

        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - whatever the import raises is the answer
            return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        return None

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    pending = {
        try_import.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(module): node
        for node in nodes
    }
    # One deadline for all: a node that cannot start a worker must not hang the driver.
    answered, silent = ray.wait(
        list(pending), num_returns=len(pending), timeout=IMPORT_CHECK_SECONDS
    )
    for ref in silent:
        ray.cancel(ref, force=True)
    for ref in [*answered, *silent]:
        node = pending[ref]
        if ref in silent:
            error = f"no answer within {IMPORT_CHECK_SECONDS:g} s"
        else:
            try:
                error = ray.get(ref)
            except ray.exceptions.RayError as failed:  # its worker did not start
                error = f"{type(failed).__name__}: {str(failed).strip().splitlines()[-1][:200]}"
        if error:
            where = f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})"
            raise UserError(
                f"family: a Ray worker on node {where} cannot import {module} ({error}); fix: {fix}"
            )


def quiet_logs(verbose: bool) -> None:
    if verbose:
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    for name in ("ray", "ray.tune", "ray.train", "ray.air", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)


def ray_loggers_off() -> None:
    """No CSV, TensorBoard or JSON logger of Ray's own choosing: MLflow records every
    result, and a study adds the JSON one itself (result.json, the record that survives
    an unreachable tracking server). The three files per trial cost a bare Tuner of
    1,000 one-result trials 9 s of its 28 s here (the bench's section i, measured with
    and without), and the CSV logger keeps every trial it saw (ray#64231)."""
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"


@dataclass(frozen=True)
class Node:
    cpus: float
    gpus: float


def local_nodes() -> list[Node]:
    """This machine as the one node a local `ray.init()` would start, read without
    starting it (Ray counts the CPUs this process may use and the CUDA devices it sees)."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [Node(float(cpus or 1), float(torch.cuda.device_count()))]


def cluster_nodes() -> list[Node]:
    """The alive nodes of the cluster this process has joined."""
    import ray

    return [
        Node(node["Resources"].get("CPU", 0.0), node["Resources"].get("GPU", 0.0))
        for node in ray.nodes()
        if node.get("Alive")
    ]


def check_trial_fits(cpus: float, gpus: float, nodes: list[Node], where: str) -> None:
    """Ray waits forever for a trial whose resources no node has: refuse it instead,
    naming the flag, what the nodes have and the fix."""
    if any(n.cpus >= cpus and n.gpus >= gpus for n in nodes):
        return
    most_cpus = max((n.cpus for n in nodes), default=0)
    most_gpus = max((n.gpus for n in nodes), default=0)
    largest = f"{_count(most_cpus, 'CPU')} and {_count(most_gpus, 'GPU')}"
    has = (
        f"{where} has {largest}"
        if len(nodes) == 1
        else f"{where} has {len(nodes)} nodes, the largest with {largest}"
    )
    if gpus > most_gpus:
        fix = (
            "use --gpus-per-trial 0 (CPU trials)"
            if most_gpus == 0
            else (f"use --gpus-per-trial {most_gpus:g} or less")
        )
        raise UserError(
            f"gpus-per-trial: a trial needs {_count(gpus, 'GPU')} on one node, but {has}; "
            f"{fix}, or join a cluster with GPUs (--address)"
        )
    if cpus > most_cpus:
        raise UserError(
            f"cpus-per-trial: a trial needs {_count(cpus, 'CPU')} on one node, but {has}; "
            f"use --cpus-per-trial {most_cpus:g} or less"
        )
    raise UserError(
        f"cpus-per-trial: no node has both {cpus:g} CPUs and {gpus:g} GPUs ({has}); "
        f"lower --cpus-per-trial or --gpus-per-trial"
    )


def _count(n: float, unit: str) -> str:
    return f"{n:g} {unit}" + ("" if n == 1 else "s")


def exit_after_ray(code: int | str | None) -> None:
    """After a command that started or joined Ray: stop Ray, flush, and end the process
    without the interpreter's teardown (Ray's core worker, torch, hundreds of modules),
    which took 2 s of every sweep's exit. By now every write is made: MLflow's calls are
    synchronous, and Tuner.fit returns after saving and syncing its experiment state."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    ray.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
