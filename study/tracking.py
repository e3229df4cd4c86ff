"""Writing MLflow records: one parent run per study, one nested child run per trial.

The driver does every MLflow write (trials on other nodes never touch the store), so the
embedded SQLite store works on a cluster. Writes go through a FIFO queue: when the
tracking server is down, they wait and are replayed in order when it is back; whatever
is still unwritten at the end is reported, never silently dropped.

The names and conversions of the records themselves are `analysis.records`, shared with
the readers.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from ray.tune import Callback

from analysis.records import (
    RESULT_DATASET_DIGEST,
    RESULT_DATASET_SOURCE,
    RESULT_TAGS,
    TAG_PROGRESS_AT,
    TAG_RETRIES,
    TAG_TRIAL,
    TrialConfig,
    base_metric,
    best_metric,
    best_trial_tag,
    dataset_input,
    find_trial_run,
    finish_tags,
    open_client,
    parse_seed_metric,
    redact,
    trial_run_name,
    trial_runs,
    trial_tags,
)
from analysis.stats import finite_or_none

DRAIN_SECONDS = 60  # how long the end of a sweep waits for an unreachable tracking server
METRICS_EVERY_SECONDS = 5.0  # a trial's epoch metrics are written at most this often
PROGRESS_EVERY_SECONDS = 10.0  # the parent run's trial counts, at most this often
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


def code_version() -> str:
    """'<package version>+<commit>' ('.dirty' when tracked files differ from it), the tag
    a study's runs carry; the package version alone where there is no git checkout."""
    from study.provenance import git_commit, package_versions

    package = package_versions()["latent-studies"] or "unknown"
    source = git_commit()
    if not source["commit"]:
        return package
    return f"{package}+{source['commit'][:10]}" + (".dirty" if source["dirty"] else "")


def resolved_config(config: dict[str, Any]) -> TrialConfig:
    """A trial's config with every family default filled in, so its MLflow params are the
    whole config that ran (and an export does not depend on defaults staying the same)."""
    from trainables import UserError as InvalidConfig
    from trainables import get_family

    trial = TrialConfig.from_tune(config)
    # An invalid config: the trial itself will fail and say why; log what it was given.
    with contextlib.suppress(KeyError, InvalidConfig):
        trial.params = get_family(trial.run["family"]).make_config(trial.params).to_dict()
    return trial


def _trial_params(config: dict[str, Any]) -> list[Param]:
    return [Param(k, v) for k, v in resolved_config(config).to_mlflow_params().items()]


class TrackingQueue:
    """MLflow writes in order; a failed write stays queued and is retried later."""

    def __init__(self, uri: str, client: MlflowClient | None = None):
        self.uri = uri
        self._client = client  # opened on first use when not given
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
                self._failed(error)
                return False
            self.pending.popleft()
        if self._warned:
            self._warned = False
            print(f"MLflow at {redact(self.uri)} is back; queued writes were replayed", flush=True)
        return True

    def _failed(self, error: Exception) -> None:
        self.failures += 1
        self._next_retry = time.monotonic() + 5.0
        if not self._warned:
            self._warned = True
            print(
                f"warning: MLflow at {redact(self.uri)} failed ({type(error).__name__}: "
                f"{redact(str(error))[:200]}); queueing writes and retrying",
                flush=True,
            )

    def drain(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.flush(force=True):
            if time.monotonic() > deadline:
                return False
            time.sleep(2.0)
        return True


class TrialRuns:
    """Trial id -> MLflow run id. A trial's run is created on its first event, or found
    again by its tags when a resumed or retried trial already has one; it then continues
    after the last epoch that run logged. Runs are named by `records.trial_run_name` (a
    re-run by its variant and seed); a robustness study's (`source_study` given) are also
    tagged with the study they re-run."""

    def __init__(
        self,
        queue: TrackingQueue,
        experiment: str,
        parent_run_id: str,
        study: str,
        source_study: str | None = None,
    ):
        self.queue = queue
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.study = study
        self.source_study = source_study
        self.ids: dict[str, str] = {}
        self.last_step: dict[str, int] = {}

    def ensure(self, trial) -> None:
        """Queue the creation of the trial's run unless it exists already."""
        if trial.trial_id not in self.ids:
            self.queue.submit(f"create run for {trial.trial_id}", lambda: self._open(trial))

    def run_id(self, trial_id: str) -> str:
        if trial_id not in self.ids:
            raise RuntimeError(f"run for trial {trial_id} not created yet")
        return self.ids[trial_id]

    def new_step(self, trial_id: str, step: int) -> bool:
        """Whether `step` is past what the trial's run logged; if so it is the new last."""
        if step <= self.last_step.get(trial_id, 0):
            return False
        self.last_step[trial_id] = step
        return True

    def _open(self, trial) -> None:
        # Several creations may be queued while the store is down; the first one wins.
        if trial.trial_id in self.ids:
            return
        client = self.queue.client
        existing = find_trial_run(client, self.experiment, self.parent_run_id, trial.trial_id)
        if existing:
            self.ids[trial.trial_id] = self._continue(client, existing, trial)
        else:
            self.ids[trial.trial_id] = self._create(client, trial)

    def _continue(self, client: MlflowClient, run, trial) -> str:
        run_id = run.info.run_id
        if not run.data.params:  # created, but the server went before its params
            client.log_batch(run_id, params=_trial_params(trial.config))
        steps = client.get_metric_history(run_id, "epoch")
        self.last_step[trial.trial_id] = max((int(m.step) for m in steps), default=0)
        if run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        return run_id

    def _create(self, client: MlflowClient, trial) -> str:
        settings = TrialConfig.from_tune(trial.config).run
        run = client.create_run(
            self.experiment,
            run_name=trial_run_name(self.study, trial.trial_id, settings),
            tags=trial_tags(self.parent_run_id, self.study, trial.trial_id, self.source_study),
        )
        client.log_batch(run.info.run_id, params=_trial_params(trial.config))
        return run.info.run_id

    def delete_lost(self, known: set[str]) -> None:
        """Delete the runs of trials the experiment does not know (MLflow keeps them among
        its deleted runs)."""
        client = self.queue.client
        for run in trial_runs(client, self.experiment, self.parent_run_id):
            if run.data.tags.get(TAG_TRIAL) not in known:
                client.set_terminated(run.info.run_id, "KILLED")
                client.delete_run(run.info.run_id)


def result_metrics(result: dict[str, Any], names: set[str], step: int) -> list[Metric]:
    """The metrics of one result worth recording: the family's (with their per-seed values
    and seed statistics when the trial has seed replicas), training's, the epoch."""
    stamp = int(time.time() * 1000)
    metrics = []
    for key, value in result.items():
        if key in RAY_BOOKKEEPING or not isinstance(value, int | float) or isinstance(value, bool):
            continue
        seeded = parse_seed_metric(key)
        training = (seeded[1] if seeded else key).startswith("train_")
        if base_metric(key, names) or training or key in ("epoch", "eval_seconds"):
            metrics.append(Metric(key, float(value), stamp, step))
    return metrics


class ResultTags:
    """The string values of results (RESULT_TAGS) as tags, each only when it changed: a
    retried trial may move to another node or device."""

    def __init__(self) -> None:
        self.logged: dict[str, dict[str, str]] = {}  # trial id -> tags last logged

    def changed(self, trial_id: str, result: dict[str, Any]) -> list[RunTag]:
        logged = self.logged.setdefault(trial_id, {})
        tags = []
        for key, tag in RESULT_TAGS.items():
            value = result.get(key)
            if isinstance(value, str) and value != logged.get(tag):
                logged[tag] = value
                tags.append(RunTag(tag, value))
        return tags


class MetricBuffer:
    """Epoch metrics and tags wait here and go out in one write per trial every
    METRICS_EVERY_SECONDS (and when the trial ends): one SQLite transaction per epoch per
    trial cost the driver ~20 s of CPU in a 3-minute sweep, taken from the trials on a
    small machine, and as many HTTP calls on a server."""

    def __init__(self, queue: TrackingQueue, runs: TrialRuns):
        self.queue = queue
        self.runs = runs
        self.unsent: dict[str, tuple[list[Metric], list[RunTag]]] = {}
        self.last_sent: dict[str, float] = {}

    def add(self, trial_id: str, metrics: list[Metric], tags: list[RunTag]) -> None:
        pending_metrics, pending_tags = self.unsent.setdefault(trial_id, ([], []))
        pending_metrics += metrics
        pending_tags += tags
        if self._due(trial_id, time.monotonic()):
            self.send(trial_id)

    def send_due(self, everything: bool = False) -> None:
        now = time.monotonic()
        for trial_id in list(self.unsent):
            if everything or self._due(trial_id, now):
                self.send(trial_id)

    def send(self, trial_id: str) -> None:
        """Queue the trial's waiting metrics and tags (the latest value of each tag)."""
        metrics, tags = self.unsent.pop(trial_id, ([], []))
        self.last_sent[trial_id] = time.monotonic()
        tags = list({tag.key: tag for tag in tags}.values())
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
                    self.runs.run_id(trial_id), metrics=chunk, tags=chunk_tags
                ),
            )

    def _due(self, trial_id: str, now: float) -> bool:
        # A trial never sent is due at once: monotonic time starts at an arbitrary point (the
        # boot, on Linux), so no timestamp stands for "never".
        last = self.last_sent.get(trial_id)
        return last is None or now - last >= METRICS_EVERY_SECONDS


def finish_run(
    client: MlflowClient,
    run_id: str,
    status: str,
    trial_status: str,
    result: dict[str, Any],
    checkpoint,
    image_dir: str,
) -> None:
    """End a trial's run: its final tags, the image grids of its last checkpoint, its
    status."""
    tags = [RunTag(key, value) for key, value in finish_tags(trial_status, result).items()]
    client.log_batch(run_id, tags=tags)
    if checkpoint is not None:
        with tempfile.TemporaryDirectory() as local:
            if _copy_images(checkpoint, image_dir, local):
                client.log_artifacts(run_id, local, artifact_path="images")
    client.set_terminated(run_id, status=status)


def _copy_images(checkpoint, image_dir: str, local: str) -> bool:
    """Copy the checkpoint's `image_dir` (and nothing else: its weights and optimiser
    states are 7 MB for a digits model) into `local`; whether it held any image."""
    import pyarrow.fs

    source = f"{checkpoint.path.rstrip('/')}/{image_dir}"
    found = checkpoint.filesystem.get_file_info(
        pyarrow.fs.FileSelector(source, allow_not_found=True)
    )
    if not any(info.type == pyarrow.fs.FileType.File for info in found):
        return False
    pyarrow.fs.copy_files(source, local, source_filesystem=checkpoint.filesystem)
    return True


def trial_counts(trials) -> dict[str, int]:
    """The study's trials by Ray's status (PROGRESS_METRICS), as the parent run records
    them; a diverged trial is one that ended without error with `diverged` set."""
    statuses = Counter(trial.status for trial in trials)
    diverged = sum(
        1 for t in trials if t.status != "ERROR" and (t.last_result or {}).get("diverged")
    )
    return {
        "trials_total": len(trials),
        "trials_pending": statuses["PENDING"],
        "trials_running": statuses["RUNNING"] + statuses["PAUSED"],
        "trials_terminated": statuses["TERMINATED"],
        "trials_error": statuses["ERROR"],
        "trials_diverged": diverged,
    }


def best_trials(trials, objectives) -> dict[str, tuple[float, str]]:
    """Per objective (metric, mode): the best finite value among the trials that ended
    without error and did not diverge, and that trial's id (analysis.runs.ranked's rule)."""
    best: dict[str, tuple[float, str]] = {}
    for trial in trials:
        result = trial.last_result or {}
        if trial.status != "TERMINATED" or result.get("diverged"):
            continue
        for metric, mode in objectives:
            value = finite_or_none(result.get(metric))
            held = best.get(metric)
            if value is not None and (
                held is None or (value > held[0] if mode == "max" else value < held[0])
            ):
                best[metric] = (value, trial.trial_id)
    return best


class StudyProgress:
    """Keeps the parent run's record of the study's progress current: its trial counts
    (trial_counts) and each objective's best trial so far (best_trials), written when they
    changed, at most every PROGRESS_EVERY_SECONDS and once more at the end, so `study
    status` reads one run however many trials the study has. Counting walks every trial,
    so it is done only when a write is due."""

    def __init__(self, queue: TrackingQueue, parent_run_id: str, objectives=()):
        self.queue = queue
        self.parent_run_id = parent_run_id
        self.objectives = list(objectives)
        self.written: tuple | None = None
        self.checked: float | None = None  # monotonic time of the last count
        self.step = 0

    def update(self, trials, final: bool = False) -> None:
        now = time.monotonic()
        if not final and self.checked is not None and now - self.checked < PROGRESS_EVERY_SECONDS:
            return
        self.checked = now
        counts, best = trial_counts(trials), best_trials(trials, self.objectives)
        if (counts, best) == self.written and not final:
            return
        self.written, self.step = (counts, best), self.step + 1
        stamp = int(time.time() * 1000)
        values = {**counts, **{best_metric(m): value for m, (value, _) in best.items()}}
        metrics = [Metric(key, float(value), stamp, self.step) for key, value in values.items()]
        tags = [RunTag(best_trial_tag(m), trial_id) for m, (_, trial_id) in best.items()]
        tags.append(RunTag(TAG_PROGRESS_AT, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
        self.queue.submit(
            "study progress",
            lambda: self.queue.client.log_batch(self.parent_run_id, metrics=metrics, tags=tags),
        )


class MlflowTrialLogger(Callback):
    """Ray Tune callback that mirrors every trial into a nested MLflow run."""

    # Per-session bookkeeping, rebuilt on unpickling: a resumed driver finds its trials'
    # runs again by tag.
    SESSION = ("runs", "buffer", "result_tags", "finished", "progress", "datasets_logged")

    def __init__(
        self,
        queue: TrackingQueue,
        experiment: str,
        parent_run_id: str,
        study: str,
        metric_names: set[str],
        image_dir: str = "images",
        source_study: str | None = None,
        objectives: list[tuple[str, str]] = (),
    ):
        """`objectives`: (metric, mode) pairs whose best trial the parent run records."""
        self.queue = queue
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.study = study
        self.metric_names = metric_names
        self.image_dir = image_dir
        self.source_study = source_study
        self.objectives = list(objectives)
        self._new_session()

    def _new_session(self) -> None:
        # getattr: a logger pickled by an earlier version (a study resumed) has no source.
        source = getattr(self, "source_study", None)
        self.runs = TrialRuns(self.queue, self.experiment, self.parent_run_id, self.study, source)
        self.buffer = MetricBuffer(self.queue, self.runs)
        self.result_tags = ResultTags()
        self.finished: set[str] = set()
        # getattr: a logger pickled by an earlier version (a study resumed) has none.
        objectives = getattr(self, "objectives", [])
        self.progress = StudyProgress(self.queue, self.parent_run_id, objectives)
        self.datasets_logged: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into the Tuner's state for `study resume`.
        return {k: v for k, v in self.__dict__.items() if k not in self.SESSION}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._new_session()

    # -- Ray Tune hooks -----------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self.runs.ensure(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.runs.ensure(trial)
        trial_id = trial.trial_id
        if trial_id not in self.datasets_logged and RESULT_DATASET_DIGEST in result:
            self.datasets_logged.add(trial_id)
            dataset = dataset_input(
                TrialConfig.from_tune(trial.config).run.get("dataset", "?"),
                str(result.get(RESULT_DATASET_SOURCE, "")),
                str(result[RESULT_DATASET_DIGEST]),
            )
            self.queue.submit(
                f"dataset of {trial_id}",
                lambda: self.queue.client.log_inputs(self.runs.run_id(trial_id), [dataset]),
            )
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        if not self.runs.new_step(trial_id, step):
            return  # a retried trial repeating epochs already logged
        metrics = result_metrics(result, self.metric_names, step)
        self.buffer.add(trial_id, metrics, self.result_tags.changed(trial_id, result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, RunStatus.to_string(RunStatus.FINISHED))

    def on_trial_recover(self, iteration, trials, trial, **info):
        # The run stays RUNNING: the retried trial goes on logging to it.
        self.runs.ensure(trial)
        self.buffer.add(trial.trial_id, [], [RunTag(TAG_RETRIES, str(trial.num_failures))])

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, RunStatus.to_string(RunStatus.FAILED))

    def on_step_end(self, iteration, trials, **info):
        self.buffer.send_due()
        self.progress.update(trials)
        self.queue.flush()

    def on_experiment_end(self, trials, **info):
        self.buffer.send_due(everything=True)
        # Trials Ray restored as already finished get no hooks: settle their runs here.
        for trial in trials:
            if trial.trial_id not in self.finished and trial.status in ("TERMINATED", "ERROR"):
                self._finish(trial, "FINISHED" if trial.status == "TERMINATED" else "FAILED")
        # A driver killed between starting a trial and saving its experiment state loses
        # that trial: the resumed study proposes another in its place. The lost trial's run
        # would be an extra, half-done copy left RUNNING, so delete it.
        known = {trial.trial_id for trial in trials}
        self.queue.submit("delete runs of lost trials", lambda: self.runs.delete_lost(known))
        self.progress.update(trials, final=True)
        # This queue is the logger's own (Ray pickles its callbacks): nothing else drains
        # it, so writes still waiting for the server are made now, or reported.
        if not self.queue.drain(timeout=DRAIN_SECONDS):
            print(
                f"warning: {len(self.queue.pending)} MLflow writes of trials could not be made "
                f"to {redact(self.queue.uri)} (first: {self.queue.pending[0][0]}); "
                f"the trials' results are intact in Ray's result files",
                flush=True,
            )

    def _finish(self, trial, status: str) -> None:
        self.runs.ensure(trial)
        trial_id = trial.trial_id
        self.buffer.send(trial_id)  # before the run is marked finished
        self.finished.add(trial_id)
        result = trial.last_result or {}
        checkpoint = trial.checkpoint
        image_dir = self.image_dir
        # Ray calls the completion hooks before it changes trial.status (still RUNNING here).
        trial_status = {"FINISHED": "TERMINATED", "FAILED": "ERROR"}.get(status, trial.status)
        self.queue.submit(
            f"finish run of {trial_id}",
            lambda: finish_run(
                self.queue.client,
                self.runs.run_id(trial_id),
                status,
                trial_status,
                result,
                checkpoint,
                image_dir,
            ),
        )
