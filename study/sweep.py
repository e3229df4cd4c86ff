"""`study run` and `study resume`: a Ray Tune sweep driven by Optuna, recorded in MLflow.

Order matters for "nothing written on bad input": the spec, search space, tracking store,
data and Ray address are all checked before the study directory or any MLflow run exists.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray.tune.search.optuna import OptunaSearch

from search_spaces.loader import SearchSpace, load_space
from study import tracking
from study.errors import ConfigError, UserError
from study.spec import check_dataset, check_positive_int, check_study_name
from study.trainable import RUN_KEY
from trainables import get_family
from trainables.experiment import check_precision

SPEC_FILE = "latent_study.yaml"
SCHEDULERS = ("asha", "none")
DEFAULT_STORAGE = "ray_results"


def parse_objective(text: str, family: str) -> tuple[str, str]:
    metric, _, mode = text.partition(":")
    names = get_family(family).metric_names
    if metric not in names:
        raise ConfigError(
            f"objective: {family} has no metric {metric!r}; choose from {', '.join(names)}"
        )
    if mode not in ("max", "min"):
        raise ConfigError(f"objective: write METRIC:max or METRIC:min, got {text!r}")
    return metric, mode


@dataclass
class StudySpec:
    """Everything a sweep needs; saved beside Ray's results so `resume` can rebuild it."""

    family: str
    name: str = ""
    dataset: str = "digits"
    trials: int = 8
    epochs: int = 10
    objectives: list[str] = field(default_factory=list)
    scheduler: str = "asha"
    grace_period: int = 2
    concurrency: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    address: str | None = None
    storage: str = DEFAULT_STORAGE
    tracking_uri: str = ""
    experiment: str = tracking.DEFAULT_EXPERIMENT
    space_file: str | None = None
    fixed: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    data_dir: str | None = None
    eval_every: int = 1
    max_failures: int = 2
    precision: str = "fp32"

    def __post_init__(self) -> None:
        family = get_family(self.family)
        check_dataset(self.dataset)
        self.name = check_study_name(
            self.name or f"{self.family}-{self.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        check_positive_int("trials", self.trials)
        check_positive_int("epochs", self.epochs)
        check_positive_int("eval-every", self.eval_every)
        check_positive_int("grace-period", self.grace_period)
        check_positive_int("seed", self.seed, minimum=0)
        check_positive_int("max-failures", self.max_failures, minimum=0)
        check_precision(self.precision)
        if self.concurrency is not None:
            check_positive_int("concurrency", self.concurrency)
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(
                f"scheduler: {self.scheduler!r} is not one of {', '.join(SCHEDULERS)}"
            )
        if not self.cpus_per_trial > 0:
            raise ConfigError(f"cpus-per-trial: must be > 0, got {self.cpus_per_trial}")
        if not self.gpus_per_trial >= 0:
            raise ConfigError(f"gpus-per-trial: must be >= 0, got {self.gpus_per_trial}")
        self.objectives = list(self.objectives or family.default_objectives)
        for text in self.objectives:
            parse_objective(text, self.family)
        if "://" not in self.storage:
            self.storage = str(Path(self.storage).expanduser().resolve())
        self.tracking_uri = tracking.resolve_tracking_uri(self.tracking_uri or None)

    @property
    def parsed_objectives(self) -> list[tuple[str, str]]:
        return [parse_objective(text, self.family) for text in self.objectives]

    @property
    def path(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    def space(self) -> SearchSpace:
        return load_space(self.family, self.space_file, self.fixed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def public_dict(self) -> dict[str, Any]:
        """The spec for logs and MLflow params, with credentials removed."""
        values = self.to_dict()
        for key in ("address", "storage", "tracking_uri"):
            if values[key]:
                values[key] = tracking.redact(values[key])
        return values


# --- storage of the spec ------------------------------------------------------------------
def _filesystem(path: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path if "://" in path else Path(path).resolve().as_uri())


def study_exists(spec: StudySpec) -> bool:
    import pyarrow.fs

    fs, path = _filesystem(spec.path)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def write_spec(spec: StudySpec) -> None:
    fs, path = _filesystem(spec.path)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{SPEC_FILE}") as handle:
        handle.write(yaml.safe_dump(spec.to_dict(), sort_keys=False).encode())


def read_spec(name: str, storage: str = DEFAULT_STORAGE) -> StudySpec:
    check_study_name(name)
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    fs, path = _filesystem(f"{storage.rstrip('/')}/{name}")
    try:
        with fs.open_input_stream(f"{path}/{SPEC_FILE}") as handle:
            data = yaml.safe_load(handle.read().decode())
    except (FileNotFoundError, OSError):
        raise UserError(
            f"name: no study {name!r} in {tracking.redact(storage)}; check the name (`study status`) or pass --storage"
        ) from None
    return StudySpec(**data)


def list_studies(storage: str = DEFAULT_STORAGE) -> list[StudySpec]:
    root = Path(storage).expanduser()
    if "://" in storage or not root.is_dir():
        return []
    found = []
    for spec_file in sorted(root.glob(f"*/{SPEC_FILE}")):
        try:
            found.append(StudySpec(**yaml.safe_load(spec_file.read_text())))
        except (UserError, TypeError, yaml.YAMLError):
            continue
    return found


# --- Ray ---------------------------------------------------------------------------------
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
    fix = "start the cluster (ray start --head) or fix --address"
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in target:
        raise UserError(
            f"address: {tracking.redact(address)!r} is not 'auto', host:port or ray://host:port; {fix}"
        )
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UserError(
            f"address: cannot connect to Ray at {tracking.redact(address)} ({reason}); {fix}"
        ) from None


def connect_ray(address: str | None, verbose: bool) -> None:
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "log_to_driver": verbose,
        "include_dashboard": False,
        "configure_logging": True,
    }
    if address:
        probe_address(address)
        kwargs["address"] = address
    # Workers import this project: make sure they find it from the driver's directory.
    repo = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = tracking.redact(address or "local")
        raise UserError(
            f"address: cannot connect to Ray at {where} ({str(error).splitlines()[0][:160]}); "
            f"start the cluster (ray start --head) or fix --address"
        ) from None


def quiet_ray_logs(verbose: bool) -> None:
    if verbose:
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    for name in ("ray", "ray.tune", "ray.train", "ray.air", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def trial_name(trial) -> str:
    return trial.trial_id


def sampler_name(spec: StudySpec) -> str:
    """TPE for one objective; NSGA-II when there are several."""
    return "TPESampler" if len(spec.objectives) == 1 else "NSGAIISampler"


class FiniteOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a trial whose objective is not finite (a diverged
    one) as PRUNED.

    Ray tells it as COMPLETE with NaN, which Optuna refuses; Ray only logs that, and the
    Optuna trial stays RUNNING for good, so the sampler never learns the region is bad.
    TPE counts PRUNED trials, ranked below every completed one.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if result and any(tracking.finite_or_none(result.get(m)) is None for m in metrics):
            result = None  # no value: Ray tells PRUNED (FAIL when the trial errored)
        super().on_trial_complete(trial_id, result, error)


def _searcher(spec: StudySpec, space: SearchSpace):
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    objectives = spec.parsed_objectives
    sampler = getattr(optuna.samplers, sampler_name(spec))(seed=spec.seed)
    if len(objectives) == 1:
        metric, mode = objectives[0]
    else:
        metric, mode = [m for m, _ in objectives], [d for _, d in objectives]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = FiniteOptunaSearch(space.search_space(), metric=metric, mode=mode, sampler=sampler)
    if spec.concurrency:
        return ConcurrencyLimiter(searcher, max_concurrent=spec.concurrency)
    return searcher


def _scheduler(spec: StudySpec):
    if spec.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    metric, mode = spec.parsed_objectives[0]
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=metric,
        mode=mode,
        max_t=spec.epochs,
        grace_period=min(spec.grace_period, spec.epochs),
        reduction_factor=3,
    )


def _trainable(spec: StudySpec):
    from ray import tune

    from study.trainable import train_trial

    return tune.with_resources(
        train_trial, {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial}
    )


def run_settings(spec: StudySpec) -> dict[str, Any]:
    """What a trial needs besides the family parameters (config[RUN_KEY])."""
    return _param_space(spec)[RUN_KEY]


def _param_space(spec: StudySpec) -> dict[str, Any]:
    run = {
        "family": spec.family,
        "dataset": spec.dataset,
        "epochs": spec.epochs,
        "seed": spec.seed,
        "data_dir": str(Path(spec.data_dir).resolve()) if spec.data_dir else None,
        "eval_every": spec.eval_every,
        "precision": spec.precision,
        "study": spec.name,
    }
    return {RUN_KEY: run, **spec.fixed}


def _callbacks(spec: StudySpec, parent_run_id: str, space: SearchSpace):
    from study.progress import TrialPrinter

    family = get_family(spec.family)
    queue = tracking.TrackingQueue(spec.tracking_uri)
    logger = tracking.MlflowTrialLogger(
        queue,
        tracking.experiment_id(queue.client, spec.experiment),
        parent_run_id,
        spec.name,
        {*family.metric_names, "diverged", "train_seconds"},
    )
    return [logger, TrialPrinter(spec.trials, spec.parsed_objectives, list(space.distributions))]


def preflight(spec: StudySpec, check_data: bool = True) -> SearchSpace:
    """Every check that needs no write: space, tracking store, data."""
    space = spec.space()
    tracking.check_tracking_uri(spec.tracking_uri)
    if check_data:
        from trainables import load_dataset

        load_dataset(spec.dataset, spec.data_dir)
    return space


def run_study(spec: StudySpec, verbose: bool = False) -> dict[str, Any]:
    """Validate, start or join Ray, create the MLflow parent run, and run the sweep."""
    space = preflight(spec)
    # Announced only once the spec and space are valid: a bad input prints just its error.
    print(
        f"study {spec.name}: {spec.trials} trials of {spec.family} on {spec.dataset}, "
        f"objectives {', '.join(spec.objectives)}",
        flush=True,
    )
    tags = {
        "latent_studies.space": space.to_json(),
        "latent_studies.sampler": sampler_name(spec),
    }
    queue, parent_id = start_study(spec, tags, verbose)
    tuner = make_tuner(
        spec, space, parent_id, _searcher(spec, space), _scheduler(spec), spec.trials, verbose
    )
    return _fit(tuner, spec, space, queue, parent_id)


def start_study(
    spec: StudySpec, tags: dict[str, str], verbose: bool
) -> tuple[tracking.TrackingQueue, str]:
    """After preflight: claim the study name, join Ray, create the MLflow parent run and
    save the spec. Returns the tracking queue and the parent run id."""
    if study_exists(spec):
        raise UserError(
            f"name: study {spec.name!r} already exists in {tracking.redact(spec.storage)}; "
            f"choose another --name or continue it with `study resume {spec.name}`"
        )
    quiet_ray_logs(verbose)
    if spec.address:
        probe_address(spec.address)  # before anything is written
    queue = tracking.TrackingQueue(spec.tracking_uri)
    # Ray's start (4-5 s, mostly waiting on its processes) overlaps opening the store (a
    # new SQLite store runs MLflow's migrations: 2-3 s of Python). If Ray then fails, the
    # store is complete (the pool waits for it), if empty.
    with ThreadPoolExecutor(max_workers=1) as pool:
        opened = pool.submit(lambda: queue.client)
        connect_ray(spec.address, verbose)
        opened.result()
    experiment = tracking.experiment_id(queue.client, spec.experiment)
    parent = queue.client.create_run(
        experiment,
        run_name=spec.name,
        tags={
            tracking.TAG_STUDY: spec.name,
            tracking.TAG_KIND: "study",
            "latent_studies.family": spec.family,
            "latent_studies.dataset": spec.dataset,
            "latent_studies.code_version": tracking.code_version(),
            "latent_studies.objectives": ",".join(spec.objectives),
            **tags,
        },
    )
    parent_id = parent.info.run_id
    try:
        queue.client.log_batch(parent_id, params=tracking.params_of(spec.public_dict()))
        write_spec(spec)
    except BaseException:
        # Nothing half-made: no orphan parent run when the study cannot even start.
        queue.client.delete_run(parent_id)
        raise
    return queue, parent_id


def make_tuner(
    spec: StudySpec,
    space: SearchSpace,
    parent_id: str,
    search_alg,
    scheduler,
    num_samples: int,
    verbose: bool = False,
    param_space: dict[str, Any] | None = None,
):
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig

    return tune.Tuner(
        _trainable(spec),
        param_space=param_space or _param_space(spec),
        tune_config=TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=num_samples,
            reuse_actors=True,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=RunConfig(
            name=spec.name,
            storage_path=spec.storage,
            callbacks=_callbacks(spec, parent_id, space),
            failure_config=FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            verbose=2 if verbose else 0,
        ),
    )


def resume_study(
    name: str, storage: str = DEFAULT_STORAGE, address: str | None = None, verbose: bool = False
):
    """Continue an interrupted study to its requested trial count (Tuner.restore keeps the
    searcher's state, so Optuna picks up where it stopped)."""
    from ray import tune

    spec = read_spec(name, storage)
    if address is not None:
        spec.address = address
    space = preflight(spec)
    # Look the parent run up without creating anything (no store file, no experiment):
    # a study whose run is missing must fail before a write, like every other check.
    queue = tracking.TrackingQueue(spec.tracking_uri)
    found = (
        queue.client.get_experiment_by_name(spec.experiment)
        if tracking.store_exists(spec.tracking_uri)
        else None
    )
    parent = (
        tracking.find_study_run(queue.client, found.experiment_id, spec.name) if found else None
    )
    if parent is None:
        raise UserError(
            f"name: study {name!r} has no MLflow run in {tracking.redact(spec.tracking_uri)} "
            f"(experiment {spec.experiment!r}); restore that store or start a new study"
        )
    print(f"resuming study {spec.name}: {spec.trials} trials of {spec.family}", flush=True)
    quiet_ray_logs(verbose)
    connect_ray(spec.address, verbose)
    parent_id = parent.info.run_id
    queue.client.update_run(parent_id, status="RUNNING")
    tuner = tune.Tuner.restore(
        spec.path, trainable=_trainable(spec), resume_unfinished=True, resume_errored=True
    )
    return _fit(tuner, spec, space, queue, parent_id)


def _fit(
    tuner, spec: StudySpec, space: SearchSpace, queue: tracking.TrackingQueue, parent_id: str
) -> dict[str, Any]:
    from study.progress import summary_table, trial_status

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
    rows = []
    for result in results:
        metrics = dict(result.metrics or {})
        config = metrics.get("config", {})
        rows.append(
            {
                **{k: v for k, v in metrics.items() if k != "config"},
                **{k: v for k, v in config.items() if k != RUN_KEY},
                "trial_id": metrics.get("trial_id", "?"),
                "status": trial_status(result.error, metrics, spec.epochs),
            }
        )
    summary = _study_metrics(rows, spec.parsed_objectives)
    summary["wall_seconds"] = time.time() - started
    queue.submit(
        "log study summary",
        lambda: queue.client.log_batch(
            parent_id,
            metrics=[
                tracking.Metric(k, float(v), int(time.time() * 1000), 0)
                for k, v in summary.items()
                if tracking.finite_or_none(v) is not None
            ],
        ),
    )
    queue.submit("end study run", lambda: queue.client.set_terminated(parent_id, "FINISHED"))
    complete = queue.drain(timeout=60)
    print(summary_table(rows, spec.parsed_objectives, list(space.distributions)))
    if not complete:
        print(
            f"warning: {len(queue.pending)} MLflow writes could not be made to {tracking.redact(spec.tracking_uri)}; "
            f"the trials' results are intact in {spec.path} (Ray's result files)"
        )
    return {
        "spec": spec,
        "rows": rows,
        "summary": summary,
        "parent_run_id": parent_id,
        "lost_writes": len(queue.pending),
    }


def _study_metrics(
    rows: list[dict[str, Any]], objectives: list[tuple[str, str]]
) -> dict[str, float]:
    summary: dict[str, float] = {
        "trials_total": len(rows),
        "trials_error": sum(r["status"] == "error" for r in rows),
        "trials_diverged": sum(r["status"] == "diverged" for r in rows),
    }
    for metric, mode in objectives:
        values = [tracking.finite_or_none(r.get(metric)) for r in rows]
        values = [v for v in values if v is not None]
        if values:
            summary[f"best_{metric}"] = max(values) if mode == "max" else min(values)
    return summary
