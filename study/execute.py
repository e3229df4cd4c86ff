"""The execute step of a study: claim its name, record it in MLflow, run the plan's trials
on Ray Tune, and return what happened. `resume` continues an interrupted one.

Everything that can be checked without a write was checked by the plan (plan.py); this
step is where the study's directory and MLflow runs come into being.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from analysis import optuna_record, records
from analysis.records import TrialConfig
from analysis.stats import finite_or_none
from study import cluster, tracking
from study.errors import UserError
from study.plan import StudyPlan, check_cluster, check_inputs
from study.spec import StudySpec
from study.storage import read_spec, study_exists, write_spec


@dataclass(frozen=True)
class StudyOutcome:
    spec: StudySpec
    rows: list[dict[str, Any]]  # one per trial: its last result, params and status
    summary: dict[str, float]  # what the parent run records: trial counts, best objectives
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
    queue, parent_id = _start(spec, plan.tags, verbose)
    return _fit(_tuner(plan, parent_id, verbose), plan, queue, parent_id)


def _start(spec: StudySpec, tags: dict[str, str], verbose: bool):
    """Claim the study name, join Ray, create the MLflow parent run and save the spec.
    Returns the tracking queue and the parent run id."""
    if study_exists(spec):
        raise UserError(
            f"name: study {spec.name!r} already exists in {records.redact(spec.storage)}; "
            f"choose another --name or continue it with `study resume {spec.name}`"
        )
    cluster.quiet_logs(verbose)
    queue = tracking.TrackingQueue(spec.tracking_uri)
    # Ray's start (4-5 s, mostly waiting on its processes) overlaps opening the store (a
    # new SQLite store runs MLflow's migrations: 2-3 s of Python). If Ray then fails, the
    # store is complete (the pool waits for it), if empty.
    with ThreadPoolExecutor(max_workers=1) as pool:
        opened = pool.submit(lambda: queue.client)
        cluster.connect(spec.address, verbose)
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
    parent_id = parent.info.run_id
    try:
        queue.client.log_batch(parent_id, params=records.params_of(spec.public_dict()))
        write_spec(spec)
    except BaseException:
        # Nothing half-made: no orphan parent run when the study cannot even start.
        queue.client.delete_run(parent_id)
        raise
    return queue, parent_id


def _trainable(spec: StudySpec):
    from ray import tune

    from study.trainable import train_trial

    return tune.with_resources(
        train_trial, {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial}
    )


def _tuner(plan: StudyPlan, parent_id: str, verbose: bool):
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig

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
            callbacks=_callbacks(plan, parent_id),
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

    spec = plan.spec
    queue = tracking.TrackingQueue(spec.tracking_uri)
    logger = tracking.MlflowTrialLogger(
        queue,
        records.experiment_id(queue.client, spec.experiment),
        parent_id,
        spec.name,
        {*get_family(spec.family).metric_names, "diverged", "train_seconds"},
        source_study=plan.tags.get(records.TAG_SOURCE_STUDY),
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
    cluster.connect(spec.address, verbose)
    queue = tracking.TrackingQueue(spec.tracking_uri, client)
    queue.client.update_run(parent_id, status="RUNNING")
    records.experiment_id(queue.client, spec.experiment)  # a store from before the kind tag
    tuner = tune.Tuner.restore(
        spec.path, trainable=_trainable(spec), resume_unfinished=True, resume_errored=True
    )
    plan = StudyPlan(spec, space, None, None, spec.trials, {})
    return _fit(tuner, plan, queue, parent_id)


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
        results = tuner.fit()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if status != "FINISHED":
            queue.submit("end study run", lambda: queue.client.set_terminated(parent_id, status))
            queue.drain(timeout=10)
    rows = [_row(result, spec) for result in results]
    summary = study_summary(rows, spec.searched_objectives)
    summary["wall_seconds"] = time.time() - started
    queue.submit("log study summary", lambda: _log_summary(queue, parent_id, summary))
    queue.submit("end study run", lambda: queue.client.set_terminated(parent_id, "FINISHED"))
    complete = queue.drain(timeout=60)
    print(summary_table(rows, spec.searched_objectives, list(plan.space.distributions)))
    if not complete:
        print(
            f"warning: {len(queue.pending)} MLflow writes could not be made to "
            f"{records.redact(spec.tracking_uri)}; the trials' results are intact in "
            f"{spec.path} (Ray's result files)"
        )
    return StudyOutcome(spec, rows, summary, parent_id, len(queue.pending))


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


def study_summary(
    rows: list[dict[str, Any]], objectives: list[tuple[str, str]]
) -> dict[str, float]:
    summary: dict[str, float] = {
        "trials_total": len(rows),
        "trials_error": sum(r["status"] == "error" for r in rows),
        "trials_diverged": sum(r["status"] == "diverged" for r in rows),
    }
    for metric, mode in objectives:
        values = [v for v in (finite_or_none(r.get(metric)) for r in rows) if v is not None]
        if values:
            summary[f"best_{metric}"] = max(values) if mode == "max" else min(values)
    return summary
