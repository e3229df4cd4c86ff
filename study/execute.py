"""The execute step of a study: claim its name, record it in MLflow, run the plan's trials
on Ray Tune, and return what happened. `resume` continues an interrupted one.

Everything that can be checked without a write was checked by the plan (plan.py); this
step is where the study's directory and MLflow runs come into being. A study is whole or
absent: whatever fails after its parent run exists and before its first trial starts
removes what this command made (nothing is left that `status` or `resume` would take for
a study, and the name is free again); a failure after that marks the parent run failed
and keeps the results for `study resume`.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback

from analysis import optuna_record, records
from analysis.records import TrialConfig
from analysis.stats import finite_or_none
from study import cluster, tracking
from study.errors import StudyFailed, UserError
from study.plan import StudyPlan, check_cluster, check_inputs, family_runtime_env
from study.spec import StudySpec
from study.storage import read_spec, remove_study, study_exists, write_spec


@dataclass(frozen=True)
class StudyOutcome:
    spec: StudySpec
    rows: list[dict[str, Any]]  # one per trial: its last result, params and status
    summary: dict[str, float]  # what _fit adds to the parent run: the sweep's wall seconds
    parent_run_id: str
    lost_writes: int  # MLflow writes that could not be made (the server stayed away)


def execute(plan: StudyPlan, verbose: bool = False) -> StudyOutcome:
    """Claim the study's name, create its MLflow parent run and run the plan's trials."""
    spec = plan.spec
    # Announced only once the plan holds: a bad input prints just its error.
    print(
        f"study {spec.name}: {plan.num_samples} trials of {spec.family} on {spec.dataset}, "
        f"objectives {', '.join(spec.objectives)}",
        flush=True,
    )
    queue, parent = _start(spec, plan.tags, verbose)
    parent_id = parent.info.run_id
    first = TrialsStarted()
    try:
        queue.client.log_batch(parent_id, params=records.params_of(spec.public_dict()))
        records.write_study_view(
            queue.client, records.StudyRecord.from_run(queue.client.get_run(parent_id))
        )
        write_spec(spec)
        return _fit(_tuner(plan, parent_id, verbose, first), plan, queue, parent_id)
    except BaseException as error:
        kept = _trials_started(first, queue, parent)
        ended = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        left = () if kept else _unmake(plan, queue, parent_id, ended)
        # Bad input and Ctrl-C keep their own handling; anything else is unexpected.
        if isinstance(error, Exception) and not isinstance(error, UserError):
            raise StudyFailed(spec.name, kept, left) from error
        raise


def _start(spec: StudySpec, tags: dict[str, str], verbose: bool):
    """Claim the study name, join Ray and create the MLflow parent run. Returns the
    tracking queue and the parent run."""
    if study_exists(spec):
        raise UserError(
            f"name: study {spec.name!r} already exists in {records.redact(spec.storage)}; "
            f"choose another --name or continue it with `study resume {spec.name}`"
        )
    cluster.quiet_logs(verbose)
    cluster.ray_loggers_off()
    queue = tracking.TrackingQueue(spec.tracking_uri)
    # Ray's start (4-5 s, mostly waiting on its processes) overlaps opening the store (a
    # new SQLite store runs MLflow's migrations: 2-3 s of Python). If Ray then fails, the
    # store is complete (the pool waits for it), if empty.
    with ThreadPoolExecutor(max_workers=1) as pool:
        opened = pool.submit(lambda: queue.client)
        cluster.connect(spec.address, verbose, family_runtime_env(spec))
        opened.result()
    experiment = records.experiment_id(queue.client, spec.experiment)
    from trainables import get_family

    family = get_family(spec.family)
    study_tags = records.study_tags(
        spec.name,
        spec.family,
        spec.dataset,
        spec.objectives,
        tracking.code_version(),
        family.metric_ranges,
    )
    parent = queue.client.create_run(experiment, run_name=spec.name, tags={**study_tags, **tags})
    return queue, parent


class TrialsStarted(Callback):
    """Whether a trial of this driver's sweep has started: the line between a study that
    could not start (removed) and one that failed (kept for `study resume`). Module level:
    Tune pickles it with the Tuner, and `resume` unpickles it."""

    started = False

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started = True


class DriverMemory(Callback):
    """What a long study costs its driver's memory, kept down (bench section i; RSS growth
    per finished one-epoch trial over 1,000: 140 KB before, 96 KB with the first, 70 KB
    with both; over 5,000: 44 KB, where a bare Tuner reporting two numbers grows 58 KB):

    - when a trial ends, the running statistics Ray keeps of every number in its results
      (min, max, mean, the last 5 and 10 values and their means) go: with a family's ~35
      numbers they were half of what a finished trial held (tracemalloc), and were written
      into every experiment snapshot. Nothing reads them here: a study's results are each
      trial's last result, which stays;
    - every TRIM_EVERY_SECONDS the C heap's free pages go back to the system (glibc's
      malloc_trim): each experiment snapshot builds every trial's state as JSON, some
      8 KB a trial, then frees it, and glibc kept the freed pages.

    Module level, for the same reason as TrialsStarted."""

    trimmed: float | None = None  # monotonic time of the last trim

    def on_trial_complete(self, iteration, trials, trial, **info):
        _forget_metrics(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        _forget_metrics(trial)

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if self.trimmed is None or now - self.trimmed >= TRIM_EVERY_SECONDS:
            self.trimmed = now
            _release_free_heap()


TRIM_EVERY_SECONDS = 10.0
_LIBC = None  # the C library, once loaded; False where there is none to trim


def _release_free_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim; nothing
    where the C library has none)."""
    import ctypes
    import ctypes.util

    global _LIBC
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        try:
            _LIBC = ctypes.CDLL(name) if name else False
        except OSError:
            _LIBC = False
    if _LIBC and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def _forget_metrics(trial) -> None:
    metadata = getattr(trial, "run_metadata", None)
    if metadata is not None and hasattr(metadata, "metric_n_steps"):
        # Assignments: the metadata's __setattr__ drops its cached JSON with them.
        metadata.metric_analysis = {}
        metadata.metric_n_steps = {}


def _trials_started(first: TrialsStarted, queue: tracking.TrackingQueue, parent) -> bool:
    """Whether any trial of the study started: seen by this driver's callback or, where
    Tune's loop ran elsewhere (Ray Client runs it on the cluster), by a trial run in
    MLflow. When MLflow cannot say, one did: a study kept by mistake is removed by hand,
    a study removed by mistake is lost."""
    if first.started:
        return True
    try:
        return bool(records.trial_runs(queue.client, parent.info.experiment_id, parent.info.run_id))
    except Exception:  # noqa: BLE001 - any store error means "cannot say"
        return True


def _unmake(
    plan: StudyPlan, queue: tracking.TrackingQueue, parent_id: str, status: str
) -> tuple[str, ...]:
    """Remove what this command made of a study that could not start: its directory
    (the spec, Tune's tuner.pkl and state), the Optuna study its searcher created, its
    parent run (ended with `status`, then deleted). Each is tried whatever became of the
    others; returns what could not be removed, each with how to remove it."""
    spec = plan.spec
    left = []
    try:
        # `_start` refused a name whose directory exists: this one is this command's.
        remove_study(spec)
    except Exception as error:  # noqa: BLE001 - reported, and the rest still removed
        left.append(f"{records.redact(spec.path)} ({_reason(error)}): remove it")
    if records.TAG_OPTUNA_STORAGE in plan.tags:
        try:
            # The plan checked the storage held no study of this name.
            _delete_optuna_study(spec.optuna_storage, spec.name)
        except Exception as error:  # noqa: BLE001
            left.append(
                f"Optuna study {spec.name} in {records.redact(spec.optuna_storage)} "
                f"({_reason(error)}): optuna delete-study --study-name {spec.name}"
            )
    queue.submit("end study run", lambda: queue.client.set_terminated(parent_id, status))
    queue.submit("delete study run", lambda: queue.client.delete_run(parent_id))
    queue.submit("delete study view", lambda: _delete_view(queue.client, parent_id, spec.name))
    if not queue.drain(timeout=10):
        left.append(
            f"MLflow run {parent_id} in {records.redact(spec.tracking_uri)} "
            f"(unreachable): mlflow runs delete --run-id {parent_id}"
        )
    return tuple(left)


def _delete_view(client, parent_id: str, name: str) -> None:
    experiment = client.get_run(parent_id).info.experiment_id
    if records.study_view_tag(name) in client.get_experiment(experiment).tags:
        client.delete_experiment_tag(experiment, records.study_view_tag(name))


def _delete_optuna_study(url: str, name: str) -> None:
    import optuna

    if name in optuna_record.study_names(url):  # read-only: no storage file is created
        optuna.delete_study(
            study_name=name, storage=optuna.storages.RDBStorage(url, skip_table_creation=True)
        )


def _reason(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return records.redact(f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__)


def _trainable(spec: StudySpec):
    from ray import tune

    from study.trainable import train_trial

    return tune.with_resources(
        train_trial, {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial}
    )


def _tuner(plan: StudyPlan, parent_id: str, verbose: bool, first: TrialsStarted):
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig
    from ray.tune.logger import JsonLoggerCallback

    spec = plan.spec
    return tune.Tuner(
        _trainable(spec),
        param_space=plan.param_space,
        tune_config=TuneConfig(
            search_alg=plan.search_alg,
            scheduler=plan.scheduler,
            num_samples=plan.num_samples,
            reuse_actors=True,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=RunConfig(
            name=spec.name,
            storage_path=spec.storage,
            # Ray's result.json, the record that survives an unreachable tracking server;
            # its CSV and TensorBoard loggers are off (cluster.ray_loggers_off).
            callbacks=[
                first,
                JsonLoggerCallback(),
                *_callbacks(plan, parent_id),
                DriverMemory(),
            ],
            failure_config=FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            verbose=2 if verbose else 0,
        ),
    )


# Module-level, not lambdas: Tune pickles them with the experiment state `resume` restores.
def trial_name(trial) -> str:
    return trial.trial_id


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _callbacks(plan: StudyPlan, parent_id: str):
    from study.progress import TrialPrinter
    from trainables import get_family
    from trainables.factor_metrics import FACTOR_METRIC_NAMES

    spec = plan.spec
    queue = tracking.TrackingQueue(spec.tracking_uri)
    logger = tracking.MlflowTrialLogger(
        queue,
        records.experiment_id(queue.client, spec.experiment),
        parent_id,
        spec.name,
        {
            *get_family(spec.family).metric_names,
            *FACTOR_METRIC_NAMES,
            "diverged",
            "train_seconds",
        },
        source_study=plan.tags.get(records.TAG_SOURCE_STUDY),
        # What status shows: each objective as searched (a seed bound) and as a mean.
        objectives=list(dict.fromkeys(spec.searched_objectives + spec.parsed_objectives)),
    )
    searched = list(plan.space.distributions)
    return [logger, TrialPrinter(plan.num_samples, spec.searched_objectives, searched)]


def resume(
    name: str, storage: str, address: str | None = None, verbose: bool = False
) -> StudyOutcome:
    """Continue an interrupted study to its requested trial count (Tuner.restore keeps the
    searcher's state, so Optuna picks up where it stopped, in the same Optuna study)."""
    from ray import tune

    spec = read_spec(name, storage)
    if address is not None:
        spec.address = address
    space = check_inputs(spec)
    client, parent_id = _existing_parent(spec)
    check_cluster(spec, verbose)
    print(f"resuming study {spec.name}: {spec.trials} trials of {spec.family}", flush=True)
    cluster.quiet_logs(verbose)
    cluster.ray_loggers_off()
    cluster.connect(spec.address, verbose, family_runtime_env(spec))
    queue = tracking.TrackingQueue(spec.tracking_uri, client)
    records.experiment_id(queue.client, spec.experiment)  # a store from before the kind tag
    tuner = tune.Tuner.restore(
        spec.path, trainable=_trainable(spec), resume_unfinished=True, resume_errored=True
    )
    plan = StudyPlan(spec, space, None, None, spec.trials, {})
    # RUNNING only from here: `_fit` ends the run whatever happens to the trials.
    queue.client.update_run(parent_id, status="RUNNING")
    try:
        return _fit(tuner, plan, queue, parent_id)
    except UserError:
        raise
    except Exception as error:
        raise StudyFailed(spec.name, kept=True) from error


def _existing_parent(spec: StudySpec):
    """The client and parent run id of a study to resume, looked up without creating
    anything (no store file, no experiment): a study whose run is missing fails before
    any write."""
    found = records.find_study(spec.tracking_uri, spec.name, spec.experiment)
    if found is None:
        raise UserError(
            f"name: study {spec.name!r} has no MLflow run in {records.redact(spec.tracking_uri)} "
            f"(experiment {spec.experiment!r}); restore that store or start a new study"
        )
    client, _, parent = found
    if records.TAG_OPTUNA_STORAGE in parent.data.tags:
        # The restored searcher goes on writing to its Optuna study: it must be there.
        optuna_record.check_existing_study(
            spec.optuna_storage, spec.name, "restore that storage or start a new study"
        )
    return client, parent.info.run_id


def _fit(tuner, plan: StudyPlan, queue: tracking.TrackingQueue, parent_id: str) -> StudyOutcome:
    """Run the trials; record the study's summary and end its parent run either way."""
    from study.progress import summary_table

    spec = plan.spec
    started = time.time()
    status = "FAILED"
    try:
        rows = [_row(result, spec) for result in tuner.fit()]
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if status != "FINISHED":
            queue.submit("end study run", lambda: queue.client.set_terminated(parent_id, status))
            queue.drain(timeout=10)
    # The trial counts and best trials are the MLflow logger's (tracking.StudyProgress).
    summary = {"wall_seconds": time.time() - started}
    queue.submit("log study summary", lambda: _log_summary(queue, parent_id, summary))
    queue.submit("end study run", lambda: queue.client.set_terminated(parent_id, "FINISHED"))
    complete = queue.drain(timeout=60)
    if complete and spec.seeds > 1:
        _record_search_luck(spec)
    print(summary_table(rows, spec.searched_objectives, list(plan.space.distributions)))
    if not complete:
        print(
            f"warning: {len(queue.pending)} MLflow writes could not be made to "
            f"{records.redact(spec.tracking_uri)}; the trials' results are intact in "
            f"{spec.path} (Ray's result files)"
        )
    return StudyOutcome(spec, rows, summary, parent_id, len(queue.pending))


def _record_search_luck(spec: StudySpec) -> None:
    """The config-against-seed share across the search, per objective and rung, on the
    parent run (analysis.report.record_search_luck): a metric-history read per trial,
    seed and objective (480 took 0.35 s on SQLite, tests/test_search_luck.py). The study
    is done either way: a store that fails now loses only this, which `study report`
    records."""
    from analysis.report import record_search_luck

    try:
        record_search_luck(spec.name, spec.tracking_uri, spec.experiment)
    except Exception as error:  # noqa: BLE001 - reported; the study's results are intact
        print(
            f"warning: the variance share across the search was not recorded "
            f"({_reason(error)}); `study report {spec.name}` records it"
        )


def _row(result, spec: StudySpec) -> dict[str, Any]:
    from study.progress import trial_status

    metrics = dict(result.metrics or {})
    config = metrics.get("config", {})
    return {
        **{k: v for k, v in metrics.items() if k != "config"},
        **TrialConfig.from_tune(config).params,
        "trial_id": metrics.get("trial_id", "?"),
        "status": trial_status(result.error, metrics, spec.epochs),
    }


def _log_summary(queue: tracking.TrackingQueue, parent_id: str, summary: dict[str, float]):
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    metrics = [
        Metric(key, value, stamp, 0)
        for key, value in ((k, finite_or_none(v)) for k, v in summary.items())
        if value is not None
    ]
    queue.client.log_batch(parent_id, metrics=metrics)
