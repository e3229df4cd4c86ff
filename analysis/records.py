"""The MLflow schema of a study, for both sides: `study/tracking.py` writes runs with these
names and conversions, and `analysis/` reads them back with the same ones, so every tag and
prefix is spelled here only.

A study is one parent run (kind "study") and one nested run per trial (kind "trial").
A trial's Tune config is an envelope: the run settings under RUN_KEY, every other key a
family parameter. Its MLflow params are that config flattened: `study.<setting>` and the
family parameters by their bare names (nested values as `name.key`). Readers' columns keep
`study.<setting>` and prefix family parameters with `param.`.

Standard library and MLflow only, and MLflow is imported when a function needs it: Ray
workers import the envelope, and a notebook reading a study never needs Ray.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainables.errors import UserError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Param, Run

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "latent-studies"

# --- tags ---------------------------------------------------------------------------------
# Stores written by earlier versions carry exactly these names: renaming one loses them.
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own: its UI nests a trial under its study
# An experiment's, MLflow's own: which UI the experiment is for. Every experiment a study is
# written into says "model training", else MLflow 3's UI may open it as a GenAI app.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
TAG_STUDY = "latent_studies.study"
TAG_KIND = "latent_studies.kind"  # KIND_STUDY (parent) or KIND_TRIAL (child)
# The parent run's.
TAG_FAMILY = "latent_studies.family"
TAG_DATASET = "latent_studies.dataset"
TAG_CODE_VERSION = "latent_studies.code_version"
TAG_OBJECTIVES = "latent_studies.objectives"  # "metric:mode,metric:mode"
TAG_SPACE = "latent_studies.space"  # the search space as Optuna distributions, JSON
TAG_SAMPLER = "latent_studies.sampler"
# A searched study's Optuna storage (an RDB URL, password hidden); the Optuna study there
# has the study's name.
TAG_OPTUNA_STORAGE = "latent_studies.optuna_storage"
TAG_METRIC_RANGES = "latent_studies.metric_ranges"  # {"metric": [low, high|null]}, JSON
TAG_SOURCE_STUDY = "latent_studies.source_study"  # a robustness study's (parent and trials)
TAG_MODE = "latent_studies.mode"  # MODE_ROBUSTNESS for a robustness study
# When the driver last wrote PROGRESS_METRICS (ISO 8601, UTC).
TAG_PROGRESS_AT = "latent_studies.progress_at"
# + a metric: the id of the trial whose value the parent run's best_metric(metric) is.
TAG_BEST_TRIAL_PREFIX = "latent_studies.best_trial."
# A trial run's.
TAG_TRIAL = "latent_studies.trial_id"
TAG_NODE = "latent_studies.node_id"  # Ray node the trial last reported from
TAG_DEVICE = "latent_studies.device"  # "cpu" or "cuda", as the trial last reported
TAG_TRIAL_STATUS = "latent_studies.trial_status"  # Ray's: TERMINATED or ERROR
TAG_DIVERGED = "latent_studies.diverged"  # "true", only on a diverged trial
TAG_TIME_TOTAL = "latent_studies.time_total_s"
# How often Ray restarted the trial from its last checkpoint (a crashed worker, a lost node).
TAG_RETRIES = "latent_studies.retries"

# The parent run's count of the study's trials by Ray's status, kept up to date by the
# driver while the study runs: `study status` reads these instead of every trial run.
PROGRESS_METRICS = (
    "trials_total",
    "trials_pending",
    "trials_running",
    "trials_terminated",
    "trials_error",
    "trials_diverged",
)

KIND_STUDY = "study"
KIND_TRIAL = "trial"
MODE_ROBUSTNESS = "robustness"
# String values of a trial's results, recorded as tags (MLflow metrics are numbers).
RESULT_TAGS = {"node_id": TAG_NODE, "device": TAG_DEVICE}
# A trial's results also say which data it trained on (trainables.Dataset's source and
# digest); its run records that once, as an MLflow dataset input of context "train".
RESULT_DATASET_SOURCE = "dataset_source"
RESULT_DATASET_DIGEST = "dataset_digest"
DATASET_CONTEXT = "train"

# --- the trial-config envelope ------------------------------------------------------------
RUN_KEY = "study"  # trial config key holding the run settings; the rest are family params
RUN_PREFIX = RUN_KEY + "."  # MLflow param (and reader column) prefix of a run setting
# Run settings a trial carries only when its study set them (so the records of studies
# without them stay as they were): how the dataset is read, and where the family is.
OPTIONAL_RUN_SETTINGS = ("image_size", "color", "family_module")
PARAM_PREFIX = "param."  # reader column prefix of a family parameter
# Run settings that are names: read back as text even when they look like numbers.
TEXT_SETTINGS = frozenset({"family", "dataset", "study", "variant", "precision"})
PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a param value's length
# Reader columns that describe the run rather than a param or a metric.
INFO_COLUMNS = ("run_id", "run_name", "status", "trial_id", "trial_status", "start_time")


def redact(text: str) -> str:
    """Hide credentials in URIs (scheme://user:password@host -> scheme://***@host). A
    secret may hold '/' (AWS secret keys often do), so everything up to the URI's last '@'
    before its query goes: hiding too much beats showing a secret."""
    return re.sub(r"(\w+://)[^@\s?#]*@", r"\1***@", text)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `flatten`."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


def param_text(value: Any) -> str:
    """How a value is stored as an MLflow param: its str(), credentials hidden, cut to
    MLflow's limit."""
    return redact(str(value))[:PARAM_VALUE_LIMIT]


def parse_value(text: str) -> Any:
    """A param value back as the Python value whose str() it is ("[64]" -> [64],
    "1e-05" -> 1e-05, "None" -> None); text that is no Python literal stays text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    if text in ("nan", "inf", "-inf"):
        return float(text)
    return text


def parse_param(key: str, text: str) -> Any:
    """A param of a trial run as its value (names among the run settings stay text)."""
    if key.startswith(RUN_PREFIX) and key.removeprefix(RUN_PREFIX) in TEXT_SETTINGS:
        return text
    return parse_value(text)


def mlflow_params(values: Mapping[str, Any]) -> dict[str, str]:
    """`values` flattened into MLflow params."""
    return {key: param_text(value) for key, value in flatten(values).items()}


def params_of(values: Mapping[str, Any]) -> list[Param]:
    """`values` as MLflow Param entities, ready for `log_batch`."""
    from mlflow.entities import Param

    return [Param(key, text) for key, text in mlflow_params(values).items()]


@dataclass
class TrialConfig:
    """One trial's config: the run settings (family, dataset, epochs, seed, data_dir,
    eval_every, precision, study and, in a robustness study, variant) and the family
    parameters."""

    run: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_tune(cls, config: Mapping[str, Any]) -> TrialConfig:
        run = dict(config.get(RUN_KEY) or {})
        return cls(run, {k: v for k, v in config.items() if k != RUN_KEY})

    def to_tune(self) -> dict[str, Any]:
        return {RUN_KEY: dict(self.run), **self.params}

    def to_mlflow_params(self) -> dict[str, str]:
        return mlflow_params(self.to_tune())

    @classmethod
    def from_mlflow_params(cls, params: Mapping[str, str]) -> TrialConfig:
        values = {key: parse_param(key, text) for key, text in params.items()}
        return cls.from_tune(unflatten(values))


# --- reader columns -----------------------------------------------------------------------
def column_of(key: str) -> str:
    """The reader column of a trial's MLflow param."""
    return key if key.startswith(RUN_PREFIX) else PARAM_PREFIX + key


def run_column(setting: str) -> str:
    """The column of a run setting ("epochs" -> "study.epochs")."""
    return RUN_PREFIX + setting


def param_column(name: str) -> str:
    """The column of a family parameter ("lr" -> "param.lr")."""
    return PARAM_PREFIX + name


def param_name(column: str) -> str | None:
    """The family parameter a column holds, or None for any other column."""
    return column.removeprefix(PARAM_PREFIX) if column.startswith(PARAM_PREFIX) else None


def is_metric_column(column: str) -> bool:
    return column not in INFO_COLUMNS and not column.startswith((PARAM_PREFIX, RUN_PREFIX))


# --- the scheduler's rungs ------------------------------------------------------------------
# study/plan.py builds ASHA with this factor; the analysis reads the rungs it implies.
ASHA_REDUCTION_FACTOR = 3


def asha_milestones(
    max_t: int, grace_period: int, reduction_factor: int = ASHA_REDUCTION_FACTOR
) -> list[int]:
    """The epochs at which Ray's ASHAScheduler (AsyncHyperBandScheduler, one bracket)
    compares trials, ascending: grace_period * reduction_factor**k for k < MAX_RUNGS, with
    MAX_RUNGS computed as Ray does, in floating point (so for max_t / grace_period = 3**5
    it counts one rung fewer than exact arithmetic would: that rung is max_t itself)."""
    rungs = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return [grace_period * reduction_factor**k for k in range(rungs)]


# --- seed replicas -------------------------------------------------------------------------
# A trial with S > 1 seed replicas (`--seeds S`) reports, for every metric M, the mean over
# its seeds as M itself, their spread as M_std, a 95% percentile-bootstrap interval of the
# mean as M_lower / M_upper, and each seed's own value as seed_<seed>/M (MLflow's UI
# groups the slash). A solo trial reports M alone. analysis/seeds.py writes and reads these.
SEED_AGGREGATES = ("mean", "bound")
SEED_STATS = ("std", "lower", "upper")
SEED_PREFIX = "seed_"


def best_metric(metric: str) -> str:
    """The parent run's metric holding the best value of `metric` among its trials."""
    return f"best_{metric}"


def best_trial_tag(metric: str) -> str:
    return TAG_BEST_TRIAL_PREFIX + metric


def seed_metric(metric: str, seed: int) -> str:
    return f"{SEED_PREFIX}{seed}/{metric}"


def stat_metric(metric: str, stat: str) -> str:
    return f"{metric}_{stat}"


def parse_seed_metric(key: str) -> tuple[int, str] | None:
    """(seed, metric) of a per-seed key, or None for any other key."""
    head, slash, metric = key.partition("/")
    if not (slash and head.startswith(SEED_PREFIX) and head[len(SEED_PREFIX) :].isdigit()):
        return None
    return int(head[len(SEED_PREFIX) :]), metric


def base_metric(key: str, metrics: Iterable[str]) -> str | None:
    """The metric among `metrics` that `key` reports (itself, a seed's value of it or one of
    its statistics), or None."""
    metrics = set(metrics)
    if key in metrics:
        return key
    seeded = parse_seed_metric(key)
    if seeded is not None:
        return seeded[1] if seeded[1] in metrics else None
    for stat in SEED_STATS:
        base = key.removesuffix(f"_{stat}")
        if base != key and base in metrics:
            return base
    return None


def searched_metric(metric: str, mode: str, aggregate: str, seeds: int) -> str:
    """What the searcher and the scheduler read for objective `metric`: the seeds' mean, or
    with aggregate "bound" the pessimistic end of its interval (the lower when
    maximising). One seed has no interval: its value is both."""
    if seeds <= 1 or aggregate == "mean":
        return metric
    return stat_metric(metric, "lower" if mode == "max" else "upper")


# --- tags as the writers set them -----------------------------------------------------------
def objectives_text(objectives: Iterable[str]) -> str:
    return ",".join(objectives)


def parse_objectives(text: str) -> list[tuple[str, str]]:
    return [tuple(item.split(":")) for item in text.split(",") if item]


def study_tags(
    name: str,
    family: str,
    dataset: str,
    objectives: Iterable[str],
    code_version: str,
    metric_ranges: Mapping[str, tuple[float, float | None]] | None = None,
) -> dict[str, str]:
    """The tags of a study's parent run. `metric_ranges` are the family's declared ranges,
    so the analysis (which imports no family) keeps intervals inside them."""
    tags = {
        TAG_STUDY: name,
        TAG_KIND: KIND_STUDY,
        TAG_FAMILY: family,
        TAG_DATASET: dataset,
        TAG_CODE_VERSION: code_version,
        TAG_OBJECTIVES: objectives_text(objectives),
    }
    if metric_ranges:
        tags[TAG_METRIC_RANGES] = json.dumps({k: list(v) for k, v in metric_ranges.items()})
    return tags


def search_tags(space_json: str, sampler: str, optuna_storage: str) -> dict[str, str]:
    """The parent run's tags of a searched study."""
    return {TAG_SPACE: space_json, TAG_SAMPLER: sampler, TAG_OPTUNA_STORAGE: redact(optuna_storage)}


def robustness_tags(source_study: str) -> dict[str, str]:
    """The parent run's tags of a robustness study."""
    return {TAG_SOURCE_STUDY: source_study, TAG_MODE: MODE_ROBUSTNESS}


def trial_tags(
    parent_run_id: str, study: str, trial_id: str, source_study: str | None = None
) -> dict[str, str]:
    """The tags a trial run is created with; a robustness study's trials also name the
    study they re-run (`source_study`)."""
    tags = {TAG_PARENT: parent_run_id, TAG_STUDY: study, TAG_KIND: KIND_TRIAL, TAG_TRIAL: trial_id}
    if source_study:
        tags[TAG_SOURCE_STUDY] = source_study
    return tags


def trial_run_name(study: str, trial_id: str, run: Mapping[str, Any]) -> str:
    """A trial run's name, from its study, trial id and run settings (TrialConfig.run): a
    re-run of a variant (a robustness study's trial) is `<variant>-seed<seed>`
    ("top1-seed1000"), or with seed replicas `<variant>-seeds<first>-<last>`
    ("top1-seeds1000-1002"); a searched trial `<study>-<trial id>`."""
    variant = run.get("variant")
    if not variant:
        return f"{study}-{trial_id}"
    seed, seeds = run.get("seed"), int(run.get("seeds") or 1)
    if seeds > 1:
        return f"{variant}-seeds{seed}-{int(seed) + seeds - 1}"
    return f"{variant}-seed{seed}"


def finish_tags(trial_status: str, result: Mapping[str, Any]) -> dict[str, str]:
    """The tags a trial run ends with, from Ray's status and the trial's last result."""
    tags = {TAG_TRIAL_STATUS: trial_status}
    if result.get("diverged"):
        tags[TAG_DIVERGED] = "true"
    if "time_total_s" in result:
        tags[TAG_TIME_TOTAL] = f"{result['time_total_s']:.2f}"
    return tags


# --- the store ----------------------------------------------------------------------------
def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def resolve_tracking_uri(uri: str | None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # Pin a relative SQLite path to the working directory now, so Ray's workers and
        # later commands agree on the file.
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


OPTUNA_FILE = "optuna.db"


def resolve_optuna_storage(url: str | None, tracking_uri: str) -> str:
    """The Optuna storage's URL: `url`, or by default an `optuna.db` beside an SQLite MLflow
    store (else in the working directory); a relative SQLite path is pinned to the working
    directory, as the tracking URI's is."""
    if not url:
        store = _sqlite_path(tracking_uri)
        directory = store.parent if store is not None else Path()
        return "sqlite:///" + str((directory / OPTUNA_FILE).resolve())
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path = url.removeprefix("sqlite:///")
        if path and not path.startswith((":memory:", "file:")):
            return "sqlite:///" + str(Path(path).expanduser().resolve())
    return url


def check_tracking_uri(uri: str) -> None:
    """Fail fast, with one line, when the store cannot be reached or created."""
    path = _sqlite_path(uri)
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    elif path is not None:
        if not path.parent.is_dir():
            raise UserError(
                f"tracking-uri: directory {path.parent} does not exist; create it or pass another --tracking-uri"
            )
    elif uri.startswith("file:") or "://" not in uri:
        raise UserError(
            f"tracking-uri: {redact(uri)} is a file store, which MLflow 3 refuses; "
            f"use sqlite:///mlflow.db or an http:// server"
        )


def _check_server(uri: str) -> None:
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
    except requests.RequestException as error:
        reason = type(error).__name__
        raise UserError(
            f"tracking-uri: cannot reach the MLflow server at {redact(uri)} ({reason}); "
            f"start it (mlflow server --host 127.0.0.1) or pass another --tracking-uri"
        ) from None


def store_exists(uri: str) -> bool:
    """False for an SQLite store whose file is missing: opening it would create it, so
    read-only commands check this first and write nothing."""
    path = _sqlite_path(uri)
    return path.is_file() if path is not None else True


# MLflow's HTTP client retries a failed request 7 times with exponential backoff (about 4
# minutes) and waits up to 120 s for an answer; meanwhile the driver's loop, which makes
# every write, would stall. The writers' queue keeps a failed write and retries it itself,
# so one quick retry is enough. MLflow also prints "View run ... at <tracking URI>" for
# every run it ends, credentials included. Settings the user made in the environment win.
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
    from mlflow import MlflowClient

    configure_http_client()
    with sqlite_creation_lock(uri):
        return MlflowClient(uri)


@contextlib.contextmanager
def sqlite_creation_lock(url: str) -> Iterator[None]:
    """An exclusive lock on the directory of the SQLite file `url` names (no lock for any
    other URL, and no lock file left behind): held while a store's tables may be created,
    which two processes must not do at once (MLflow's migrations break each other's;
    Optuna's `create_all` fails with "table ... already exists")."""
    path = _sqlite_path(url)
    if path is None:
        yield
        return
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
        yield
    finally:
        os.close(directory)  # releases the lock


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created when missing. Either way it ends up tagged as
    a model-training experiment (TAG_EXPERIMENT_KIND), unless it already names a kind."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
        except Exception:  # noqa: BLE001 - another study created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if TAG_EXPERIMENT_KIND not in experiment.tags:  # made by MLflow or an earlier version
        client.set_experiment_tag(experiment.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
    return experiment.experiment_id


def find_study_run(client: MlflowClient, experiment: str, study: str) -> Run | None:
    runs = client.search_runs(
        [experiment],
        filter_string=f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_KIND}` = '{KIND_STUDY}'",
        max_results=1,
    )
    return runs[0] if runs else None


def find_trial_run(
    client: MlflowClient, experiment: str, parent_run_id: str, trial_id: str
) -> Run | None:
    """The run a trial already has (a resumed or retried trial), if any."""
    runs = client.search_runs(
        [experiment],
        filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}' and tags.`{TAG_TRIAL}` = '{trial_id}'",
        max_results=1,
    )
    return runs[0] if runs else None


def trial_runs(client: MlflowClient, experiment: str, parent_run_id: str) -> list[Run]:
    """Every active trial run of a study, all pages of them."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment],
            filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}' and tags.`{TAG_KIND}` = '{KIND_TRIAL}'",
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def best_trial_runs(
    client: MlflowClient, experiment: str, parent_run_id: str, metric: str, mode: str, n: int
) -> list[Run]:
    """The `n` finished trial runs of a study with the best `metric`, best first, ordered
    by the store: a study's best without reading all of its trials. Runs whose value is
    missing or not finite may be among them (stores order NaN apart); the caller skips
    those."""
    return client.search_runs(
        [experiment],
        filter_string=(
            f"tags.`{TAG_PARENT}` = '{parent_run_id}' and tags.`{TAG_KIND}` = '{KIND_TRIAL}' "
            "and attributes.status = 'FINISHED'"
        ),
        order_by=[f"metrics.`{metric}` {'DESC' if mode == 'max' else 'ASC'}"],
        max_results=n,
    )


def dataset_input(name: str, source: str, digest: str):
    """The MLflow dataset input of a trial that trained on dataset `name`, loaded from
    `source` (a directory, or the code that made it) with arrays hashing to `digest`."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    kind = "local" if os.path.isabs(source) else "code"
    dataset = Dataset(name, digest, kind, json.dumps({"uri": source}))
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, DATASET_CONTEXT)])


# --- the study's view in MLflow's UI -------------------------------------------------------
# MLflow's own (its UI, 3.x; useSharedExperimentViewState.ts, savedViewEnvelope.ts): a saved
# view of an experiment's runs table is an experiment tag VIEW_TAG_PREFIX + id, whose value is
# {"name", "createdAt", "updatedAt", "state"}, the state the table's filter, sort and visible
# columns as JSON, zlib-deflated and base64-encoded after "deflate;". A link with
# ?viewStateShareKey=<id> opens it; the UI's "Views" menu lists it.
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_TAG_LIMIT = 20_000  # MLflow's limit on an experiment tag's value
# Columns are `kind.\`key\``; without the backticks the UI matches none.
VIEW_DATASET_COLUMN = "attributes.`Dataset`"


def study_view_tag(study: str) -> str:
    return f"{VIEW_TAG_PREFIX}study-{study}"


def study_view(parent: StudyRecord, searched: Iterable[str]) -> str:
    """The saved view of study `parent`'s trial runs (the tag value): only them, best
    first by what the study ranks by, showing the dataset, each objective (with its seed
    mean's std and interval bounds when trials have seed replicas) and the searched
    parameters. MLflow 3.17 shows none of a run's metrics or params unless a view names
    them."""
    import base64
    import time
    import zlib

    columns = [VIEW_DATASET_COLUMN]
    for metric, _ in parent.objectives:
        columns.append(f"metrics.`{metric}`")
        if parent.seeds > 1:
            columns += [f"metrics.`{stat_metric(metric, stat)}`" for stat in SEED_STATS]
    columns += [f"params.`{name}`" for name in searched]
    metric, mode = parent.ranked_by
    state = {
        "searchFilter": trial_filter(parent.name),
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": mode == "min",
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": list(dict.fromkeys(columns)),
    }
    packed = zlib.compress(json.dumps(state, separators=(",", ":")).encode())
    now = int(time.time() * 1000)
    envelope = {
        "name": f"study {parent.name}",
        "createdAt": now,
        "updatedAt": now,
        "state": "deflate;" + base64.b64encode(packed).decode(),
    }
    return json.dumps(envelope)


def write_study_view(client: MlflowClient, parent: StudyRecord) -> None:
    """Save (or refresh) the study's view on its experiment; its searched parameters are
    those of the study's search space (none for a robustness study, which has none)."""
    searched = list(json.loads(parent.space)) if parent.space else []
    client.set_experiment_tag(
        parent.experiment_id, study_view_tag(parent.name), study_view(parent, searched)
    )


def trial_filter(study: str) -> str:
    """MLflow's search filter for the trial runs of `study`."""
    return f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_KIND}` = '{KIND_TRIAL}'"


def study_runs_link(ui_address: str, experiment: str, study: str) -> str:
    """The MLflow UI's (3.x) page of a study's trial runs: its saved view (study_view) of
    the experiment's runs table, in model-training mode.

    `workflowType=machine_learning`: MLflow 3.17's UI picks its mode from this parameter
    (else from the browser's last choice, GenAI at first), not from TAG_EXPERIMENT_KIND.
    No filter or sort in the link: the UI applies a saved view only to a link without."""
    from urllib.parse import quote, urlencode

    query = {
        "viewStateShareKey": study_view_tag(study).removeprefix(VIEW_TAG_PREFIX),
        "compareRunsMode": "TABLE",
        "workflowType": "machine_learning",
    }
    return f"{ui_address.rstrip('/')}/#/experiments/{experiment}/runs?{urlencode(query, quote_via=quote)}"


# --- runs as plain records ----------------------------------------------------------------
@dataclass(frozen=True)
class StudyRecord:
    """A study's parent run."""

    run_id: str
    name: str
    experiment_id: str
    status: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]

    @classmethod
    def from_run(cls, run: Run) -> StudyRecord:
        info, data = run.info, run.data
        name = data.tags.get(TAG_STUDY, info.run_name)
        return cls(
            info.run_id,
            name,
            info.experiment_id,
            info.status,
            dict(data.tags),
            dict(data.params),
            dict(data.metrics),
        )

    @property
    def family(self) -> str:
        return self.tags[TAG_FAMILY]

    @property
    def objectives(self) -> list[tuple[str, str]]:
        return parse_objectives(self.tags.get(TAG_OBJECTIVES, ""))

    @property
    def space(self) -> str:
        """The search space's JSON ("" for a study without one, such as a robustness one)."""
        return self.tags.get(TAG_SPACE, "")

    @property
    def seeds(self) -> int:
        """Seed replicas per trial (1 for a study recorded before replicas existed)."""
        return int(self.params.get("seeds", 1))

    @property
    def rungs(self) -> list[int]:
        """The epochs at which the study compared its trials, ascending: with ASHA its
        milestones below `epochs`, then `epochs` (where every surviving trial ends); with no
        scheduler just `epochs`; [] when the parent run does not say how many epochs."""
        epochs = parse_value(self.params.get("epochs", ""))
        if not isinstance(epochs, int) or epochs < 1:
            return []
        grace = parse_value(self.params.get("grace_period", ""))
        if self.params.get("scheduler") != "asha" or not isinstance(grace, int) or grace < 1:
            return [epochs]
        # study/plan.py's ASHA: max_t = epochs, grace_period = min(grace_period, epochs).
        milestones = asha_milestones(epochs, min(grace, epochs))
        return [m for m in milestones if m < epochs] + [epochs]

    @property
    def seed_aggregate(self) -> str:
        """What the searcher read of a replicated trial: "mean" or "bound"."""
        return self.params.get("seed_aggregate", "mean")

    @property
    def ranked_by(self) -> tuple[str, str]:
        """(metric, mode) the study's trials rank by: its first objective as the searcher
        read it (the seeds' mean, or their pessimistic bound: searched_metric)."""
        metric, mode = self.objectives[0]
        return searched_metric(metric, mode, self.seed_aggregate, self.seeds), mode

    @property
    def progress(self) -> dict[str, int] | None:
        """The trial counts the driver keeps on the parent run (PROGRESS_METRICS), or None
        for a study recorded before it did."""
        if not all(key in self.metrics for key in PROGRESS_METRICS):
            return None
        return {key: int(self.metrics[key]) for key in PROGRESS_METRICS}

    def best(self, metric: str) -> tuple[float, str] | None:
        """(value, trial id) of the best trial by `metric` as the driver recorded it
        (study/tracking.py's StudyProgress), or None when it recorded none."""
        value, trial_id = (
            self.metrics.get(best_metric(metric)),
            self.tags.get(best_trial_tag(metric)),
        )
        return None if value is None or trial_id is None else (value, trial_id)

    def metric_range(self, metric: str) -> tuple[float | None, float | None]:
        """The declared range of `metric` ((None, None) when the study did not record it:
        studies from before the tag existed)."""
        try:
            low, high = json.loads(self.tags.get(TAG_METRIC_RANGES, "{}"))[metric]
        except (KeyError, ValueError, TypeError):
            return (None, None)
        return (low, high)


@dataclass(frozen=True)
class TrialRecord:
    """A trial's run: its params as MLflow stores them (text) and its latest metrics."""

    run_id: str
    run_name: str
    status: str
    trial_id: str | None
    trial_status: str | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    start_time: int = 0  # ms since the epoch: the order the study ran its trials in

    @classmethod
    def from_run(cls, run: Run) -> TrialRecord:
        info, data = run.info, run.data
        tags = dict(data.tags)
        return cls(
            info.run_id,
            info.run_name,
            info.status,
            tags.get(TAG_TRIAL),
            tags.get(TAG_TRIAL_STATUS),
            dict(data.params),
            dict(data.metrics),
            tags,
            info.start_time or 0,
        )

    @property
    def config(self) -> TrialConfig:
        return TrialConfig.from_mlflow_params(self.params)

    def row(self) -> dict[str, Any]:
        """One flat row: INFO_COLUMNS, `study.*` and `param.*` values, then the metrics."""
        row: dict[str, Any] = {
            "run_id": self.run_id,
            "run_name": self.run_name,
            "status": self.status,
            "trial_id": self.trial_id,
            "trial_status": self.trial_status,
            "start_time": self.start_time,
        }
        for key, text in self.params.items():
            row[column_of(key)] = parse_param(key, text)
        row.update(self.metrics)
        return row


@dataclass(frozen=True)
class StudyRecords:
    """What a store holds of one study."""

    tracking_uri: str
    parent: StudyRecord
    trials: list[TrialRecord]


def find_study(uri: str, name: str, experiment: str) -> tuple[MlflowClient, str, Run] | None:
    """The client, experiment id and parent run of study `name` in the store at `uri`, or
    None when it holds no such study. Writes nothing, not even a new store: a missing
    SQLite file holds no study, and opening it (even making the client) would create it."""
    if not store_exists(uri):
        return None
    client = open_client(uri)
    found = client.get_experiment_by_name(experiment)
    parent = find_study_run(client, found.experiment_id, name) if found else None
    return (client, found.experiment_id, parent) if parent else None


def read_study(
    name: str, tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT
) -> StudyRecords:
    """The study's parent run and its trial runs. Writes nothing, not even a new store."""
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    found = find_study(uri, name, experiment)
    if found is None:
        raise UserError(
            f"name: no study {name!r} in {redact(uri)} (experiment {experiment!r}); "
            f"check the name with `study status` or pass --tracking-uri"
        )
    client, experiment_id, parent = found
    runs = trial_runs(client, experiment_id, parent.info.run_id)
    trials = [TrialRecord.from_run(run) for run in runs]
    return StudyRecords(uri, StudyRecord.from_run(parent), trials)
