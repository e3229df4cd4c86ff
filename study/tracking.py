"""MLflow records: one parent run per study, one nested child run per trial.

The driver does every MLflow write (trials on other nodes never touch the store), so the
embedded SQLite store works on a cluster. Writes go through a FIFO queue: when the
tracking server is down, they wait and are replayed in order when it is back; whatever
is still unwritten at the end is reported, never silently dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import re
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from ray.tune import Callback

from study.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "latent-studies"
TAG_STUDY = "latent_studies.study"
TAG_KIND = "latent_studies.kind"  # "study" (parent) or "trial" (child)
TAG_TRIAL = "latent_studies.trial_id"
TAG_NODE = "latent_studies.node_id"  # Ray node the trial last reported from
TAG_DEVICE = "latent_studies.device"  # "cpu" or "cuda", as the trial last reported
# String values of a trial's results, recorded as tags (MLflow metrics are numbers).
RESULT_TAGS = {"node_id": TAG_NODE, "device": TAG_DEVICE}
TAG_PARENT = "mlflow.parentRunId"
PARAM_VALUE_LIMIT = 6000
DRAIN_SECONDS = 60  # how long the end of a sweep waits for an unreachable tracking server
METRICS_EVERY_SECONDS = 5.0  # a trial's epoch metrics are written at most this often
MAX_BATCH_METRICS = 1000  # MLflow's limit per log_batch
RAY_BOOKKEEPING = {
    "training_iteration",
    "iterations_since_restore",
    "time_this_iter_s",
    "time_total_s",
    "time_since_restore",
    "timestamp",
    "pid",
    "done",
}


def redact(text: str) -> str:
    """Hide credentials in URIs (scheme://user:password@host -> scheme://***@host)."""
    return re.sub(r"(\w+://)[^/@\s]+@", r"\1***@", text)


def resolve_tracking_uri(uri: str | None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Pin a relative SQLite path to the working directory now, so Ray's workers and
        # later commands agree on the file.
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def check_tracking_uri(uri: str) -> None:
    """Fail fast, with one line, when the store cannot be reached or created."""
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as error:
            reason = type(error).__name__
            raise UserError(
                f"tracking-uri: cannot reach the MLflow server at {redact(uri)} ({reason}); "
                f"start it (mlflow server --host 127.0.0.1) or pass another --tracking-uri"
            ) from None
    elif uri.startswith("sqlite:///"):
        parent = Path(uri.removeprefix("sqlite:///")).parent
        if not parent.is_dir():
            raise UserError(
                f"tracking-uri: directory {parent} does not exist; create it or pass another --tracking-uri"
            )
    elif uri.startswith("file:") or "://" not in uri:
        raise UserError(
            f"tracking-uri: {redact(uri)} is a file store, which MLflow 3 refuses; "
            f"use sqlite:///mlflow.db or an http:// server"
        )


def store_exists(uri: str) -> bool:
    """False for an SQLite store whose file is missing: opening it would create it, so
    read-only commands check this first and write nothing."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).is_file()
    return True


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("latent-studies")
    except PackageNotFoundError:
        package = "unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{package}+{sha}" if sha else package


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def params_of(values: dict[str, Any]) -> list[Param]:
    return [Param(k, redact(str(v))[:PARAM_VALUE_LIMIT]) for k, v in flatten(values).items()]


# MLflow's HTTP client retries a failed request 7 times with exponential backoff (about 4
# minutes) and waits up to 120 s for an answer; meanwhile the driver's loop, which makes
# every write, would stall. TrackingQueue keeps a failed write and retries it itself, so
# one quick retry is enough. It also prints "View run ... at <tracking URI>" for every
# run it ends, credentials included. Settings the user made in the environment win.
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def configure_http_client() -> None:
    for key, value in HTTP_SETTINGS.items():
        os.environ.setdefault(key, value)


def open_client(uri: str) -> MlflowClient:
    """An MlflowClient for `uri`. Opening a new SQLite store creates its tables; two
    processes doing that at once (two studies started together in one directory) break
    each other's schema migration, leaving a store no one can open. So SQLite stores are
    opened under an exclusive lock on their directory (no lock file is left behind)."""
    configure_http_client()
    if not uri.startswith("sqlite:///"):
        return MlflowClient(uri)
    directory = os.open(Path(uri.removeprefix("sqlite:///")).parent, os.O_RDONLY)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
        return MlflowClient(uri)
    finally:
        os.close(directory)  # releases the lock


def resolved_config(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config with every family default filled in, so its MLflow params are the
    whole config that ran (and an export does not depend on defaults staying the same)."""
    from study.trainable import RUN_KEY
    from trainables import UserError as InvalidConfig
    from trainables import get_family

    run = config.get(RUN_KEY, {})
    params = {k: v for k, v in config.items() if k != RUN_KEY}
    # An invalid config: the trial itself will fail and say why; log what it was given.
    with contextlib.suppress(KeyError, InvalidConfig):
        params = get_family(run["family"]).make_config(params).to_dict()
    return {**params, RUN_KEY: run}


class TrackingQueue:
    """MLflow writes in order; a failed write stays queued and is retried later."""

    def __init__(self, uri: str):
        self.uri = uri
        self._client: MlflowClient | None = None
        self.pending: deque[tuple[str, Callable[[], None]]] = deque()
        self.failures = 0
        self._warned = False
        self._next_retry = 0.0

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = open_client(self.uri)
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles callbacks with the Tuner; the client and unsent writes stay behind.
        return {"uri": self.uri}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["uri"])

    def submit(self, what: str, operation: Callable[[], None]) -> None:
        self.pending.append((what, operation))
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Run queued writes in order; stop at the first failure. True when all are done."""
        if not force and self.pending and time.monotonic() < self._next_retry:
            return False
        while self.pending:
            what, operation = self.pending[0]
            try:
                operation()
            except Exception as error:  # noqa: BLE001 - any store error means "try later"
                self.failures += 1
                self._next_retry = time.monotonic() + 5.0
                if not self._warned:
                    self._warned = True
                    print(
                        f"warning: MLflow at {redact(self.uri)} failed ({type(error).__name__}: "
                        f"{redact(str(error))[:200]}); queueing writes and retrying",
                        flush=True,
                    )
                return False
            self.pending.popleft()
        if self._warned:
            self._warned = False
            print(f"MLflow at {redact(self.uri)} is back; queued writes were replayed", flush=True)
        return True

    def drain(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.flush(force=True):
            if time.monotonic() > deadline:
                return False
            time.sleep(2.0)
        return True


def experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # noqa: BLE001 - another study created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def find_study_run(client: MlflowClient, experiment: str, study: str):
    runs = client.search_runs(
        [experiment],
        filter_string=f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_KIND}` = 'study'",
        max_results=1,
    )
    return runs[0] if runs else None


def trial_runs(client: MlflowClient, experiment: str, parent_run_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment],
            filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}' and tags.`{TAG_KIND}` = 'trial'",
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


class MlflowTrialLogger(Callback):
    """Ray Tune callback that mirrors every trial into a nested MLflow run."""

    def __init__(
        self,
        queue: TrackingQueue,
        experiment: str,
        parent_run_id: str,
        study: str,
        metric_names: set[str],
        image_dir: str = "images",
    ):
        self.queue = queue
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.study = study
        self.metric_names = metric_names
        self.image_dir = image_dir
        self.run_ids: dict[str, str] = {}
        self.last_step: dict[str, int] = {}
        self.result_tags: dict[str, dict[str, str]] = {}  # trial id -> tags last logged
        # Epoch metrics wait here and go out in one write per trial every
        # METRICS_EVERY_SECONDS (and when the trial ends): one SQLite transaction per
        # epoch per trial cost the driver ~20 s of CPU in a 3-minute sweep, taken from the
        # trials on a small machine, and as many HTTP calls on a server.
        self.unsent: dict[str, tuple[list[Metric], list[RunTag]]] = {}
        self.last_sent: dict[str, float] = {}
        self.finished: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into the Tuner's state for `study resume`: a resumed driver finds its
        # trials' runs again by tag, so per-session bookkeeping is not kept.
        state = self.__dict__.copy()
        state.update(
            run_ids={}, last_step={}, result_tags={}, unsent={}, last_sent={}, finished=set()
        )
        return state

    # -- helpers ------------------------------------------------------------------------
    def _run_id(self, trial_id: str) -> str:
        if trial_id not in self.run_ids:
            raise RuntimeError(f"run for trial {trial_id} not created yet")
        return self.run_ids[trial_id]

    def _ensure_run(self, trial) -> None:
        trial_id = trial.trial_id
        if trial_id in self.run_ids:
            return

        def create() -> None:
            if trial_id in self.run_ids:
                return
            client = self.queue.client
            existing = client.search_runs(
                [self.experiment],
                filter_string=f"tags.`{TAG_PARENT}` = '{self.parent_run_id}' and tags.`{TAG_TRIAL}` = '{trial_id}'",
                max_results=1,
            )
            if existing:  # a resumed or retried trial continues its run
                run_id = existing[0].info.run_id
                if not existing[0].data.params:  # created, but the server went before params
                    client.log_batch(run_id, params=params_of(resolved_config(trial.config)))
                steps = client.get_metric_history(run_id, "epoch")
                self.last_step[trial_id] = max((int(m.step) for m in steps), default=0)
                if existing[0].info.status != "RUNNING":
                    client.update_run(run_id, status="RUNNING")
            else:
                run = client.create_run(
                    self.experiment,
                    run_name=f"{self.study}-{trial_id}",
                    tags={
                        TAG_PARENT: self.parent_run_id,
                        TAG_STUDY: self.study,
                        TAG_KIND: "trial",
                        TAG_TRIAL: trial_id,
                    },
                )
                run_id = run.info.run_id
                client.log_batch(run_id, params=params_of(resolved_config(trial.config)))
            self.run_ids[trial_id] = run_id

        self.queue.submit(f"create run for {trial_id}", create)

    def _metrics(self, result: dict[str, Any], step: int) -> list[Metric]:
        stamp = int(time.time() * 1000)
        metrics = []
        for key, value in result.items():
            if (
                key in RAY_BOOKKEEPING
                or not isinstance(value, int | float)
                or isinstance(value, bool)
            ):
                continue
            if (
                key in self.metric_names
                or key.startswith("train_")
                or key in ("epoch", "eval_seconds")
            ):
                metrics.append(Metric(key, float(value), stamp, step))
        return metrics

    # -- Ray Tune hooks -----------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self._ensure_run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._ensure_run(trial)
        trial_id = trial.trial_id
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        if step <= self.last_step.get(trial_id, 0):
            return  # a retried trial repeating epochs already logged
        self.last_step[trial_id] = step
        metrics = self._metrics(result, step)
        # Only changes: a retried trial may move to another node or device.
        logged = self.result_tags.setdefault(trial_id, {})
        tags = []
        for key, tag in RESULT_TAGS.items():
            value = result.get(key)
            if isinstance(value, str) and value != logged.get(tag):
                logged[tag] = value
                tags.append(RunTag(tag, value))
        pending_metrics, pending_tags = self.unsent.setdefault(trial_id, ([], []))
        pending_metrics += metrics
        pending_tags += tags
        if time.monotonic() - self.last_sent.get(trial_id, 0.0) >= METRICS_EVERY_SECONDS:
            self._send_metrics(trial_id)

    def _send_metrics(self, trial_id: str) -> None:
        metrics, tags = self.unsent.pop(trial_id, ([], []))
        self.last_sent[trial_id] = time.monotonic()
        tags = list({tag.key: tag for tag in tags}.values())  # the latest value of each
        if not (metrics or tags):
            return
        # MLflow takes at most 1000 metrics (and 100 tags) per batch.
        for start in range(0, max(len(metrics), 1), MAX_BATCH_METRICS):
            chunk = metrics[start : start + MAX_BATCH_METRICS]
            chunk_tags = tags if start == 0 else []
            last_step = int(chunk[-1].step) if chunk else 0
            self.queue.submit(
                f"metrics of {trial_id} to epoch {last_step}",
                lambda chunk=chunk, chunk_tags=chunk_tags: self.queue.client.log_batch(
                    self._run_id(trial_id), metrics=chunk, tags=chunk_tags
                ),
            )

    def _send_due_metrics(self, everything: bool = False) -> None:
        now = time.monotonic()
        for trial_id in list(self.unsent):
            if everything or now - self.last_sent.get(trial_id, 0.0) >= METRICS_EVERY_SECONDS:
                self._send_metrics(trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, RunStatus.to_string(RunStatus.FINISHED))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, RunStatus.to_string(RunStatus.FAILED))

    def on_step_end(self, iteration, trials, **info):
        self._send_due_metrics()
        self.queue.flush()

    def on_experiment_end(self, trials, **info):
        self._send_due_metrics(everything=True)
        # Trials Ray restored as already finished get no hooks: settle their runs here.
        for trial in trials:
            if trial.trial_id not in self.finished and trial.status in ("TERMINATED", "ERROR"):
                status = "FINISHED" if trial.status == "TERMINATED" else "FAILED"
                self._finish(trial, status)
        # A driver killed between starting a trial and saving its experiment state loses
        # that trial: the resumed study proposes another in its place. The lost trial's run
        # would be an extra, half-done copy left RUNNING, so delete it (MLflow keeps it in
        # its deleted runs).
        known = {trial.trial_id for trial in trials}
        self.queue.submit("delete runs of lost trials", lambda: self._delete_lost_runs(known))
        # This queue is the logger's own (Ray pickles its callbacks): nothing else drains
        # it, so writes still waiting for the server are made now, or reported.
        if not self.queue.drain(timeout=DRAIN_SECONDS):
            print(
                f"warning: {len(self.queue.pending)} MLflow writes of trials could not be made "
                f"to {redact(self.queue.uri)} (first: {self.queue.pending[0][0]}); "
                f"the trials' results are intact in Ray's result files",
                flush=True,
            )

    def _delete_lost_runs(self, known: set[str]) -> None:
        client = self.queue.client
        for run in trial_runs(client, self.experiment, self.parent_run_id):
            if run.data.tags.get(TAG_TRIAL) not in known:
                client.set_terminated(run.info.run_id, "KILLED")
                client.delete_run(run.info.run_id)

    def _finish(self, trial, status: str) -> None:
        self._ensure_run(trial)
        trial_id = trial.trial_id
        self._send_metrics(trial_id)  # before the run is marked finished
        self.finished.add(trial_id)
        result = trial.last_result or {}
        checkpoint = trial.checkpoint
        image_dir = self.image_dir
        # Ray calls the completion hooks before it changes trial.status (still RUNNING here).
        trial_status = {"FINISHED": "TERMINATED", "FAILED": "ERROR"}.get(status, trial.status)

        def finish() -> None:
            client = self.queue.client
            run_id = self._run_id(trial_id)
            tags = [RunTag("latent_studies.trial_status", trial_status)]
            if result.get("diverged"):
                tags.append(RunTag("latent_studies.diverged", "true"))
            if "time_total_s" in result:
                tags.append(RunTag("latent_studies.time_total_s", f"{result['time_total_s']:.2f}"))
            client.log_batch(run_id, tags=tags)
            if checkpoint is not None:
                with tempfile.TemporaryDirectory() as local:
                    checkpoint.to_directory(local)
                    images = Path(local) / image_dir
                    if images.is_dir() and any(images.iterdir()):
                        client.log_artifacts(run_id, str(images), artifact_path="images")
            client.set_terminated(run_id, status=status)

        self.queue.submit(f"finish run of {trial_id}", finish)


def finite_or_none(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
