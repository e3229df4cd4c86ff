"""Validated specifications: what the CLI and YAML files say, checked once, flowing one way
into the code. A bad value fails here with one line naming the field and the fix.

`StudySpec` is a sweep's whole definition and `TrainSpec` one training run's. Their fields
carry their command-line help, so the `study run` and `study train` options are generated
from them (cli.py) and each default is written once, here.
"""

from __future__ import annotations

import dataclasses
import re
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from analysis import records
from trainables.config import (
    COLORS,
    PRECISIONS,
    check_dataset_name,
    check_image_options,
    check_precision,
    check_seeds,
    dataset_label,
    may_have_factors,
)
from trainables.errors import ConfigError
from trainables.io import read_yaml

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def get_family(name: str, module: str | None = None):
    """The registered family `name`, after loading `module` (--family-module) when given.
    The registry (and with it torch) loads on first use, so the command line starts
    without torch."""
    from trainables.registry import add_family_module
    from trainables.registry import get_family as registered

    if module:
        defined = add_family_module(module).family.name
        if defined != name:
            raise ConfigError(
                f"family: {module} defines family {defined!r}, not {name!r}; "
                f"name {defined} or pass its module"
            )
    return registered(name)


def parse_overrides(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """`key=value` pairs; values are read as YAML scalars or lists ("0.1", "true", "[256, 64]")."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set: {pair!r} is not key=value; write e.g. --set noise_std=0.1")
        try:
            values[key] = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            raise ConfigError(
                f"--set: cannot read the value of {key!r} ({raw!r}); quote or fix it"
            ) from None
    return values


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}: expected a whole number >= {minimum}, got {value!r}")
    return value


def check_study_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name:
        raise ConfigError(
            f"name: {name!r} is not a valid study name; use letters, digits, '_', '-' and '.' "
            f"(no path separators or '..'), at most 100 characters"
        )
    return name


def setting(default: Any, help: str, **cli: Any) -> Any:
    """A spec field with its command-line help. `cli` may hold `flag` (when not
    --field-name), `choices`, `metavar`, `envvar`; `flag=None` keeps it off the CLI."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(), metadata={"help": help, **cli})
    return field(default=default, metadata={"help": help, **cli})


def setting_type(spec_cls: type, name: str) -> type:
    """The type a spec's setting takes: int, float, str, or list (`objectives`) and dict
    (`fixed`, `params`); `int | None` is int."""
    annotation = typing.get_type_hints(spec_cls)[name]
    for kind in (int, float, list, dict):
        if annotation is kind or typing.get_origin(annotation) is kind:
            return kind
        if kind in typing.get_args(annotation):
            return kind
    return str


def settings_of(spec_cls: type) -> dict[str, dataclasses.Field]:
    """A spec's fields by name: what the CLI (and, for a study, a sweep preset) may set."""
    return {f.name: f for f in dataclasses.fields(spec_cls)}


DATASET_HELP = (
    "Dataset: digits, mnist, fashion-mnist, or your own files as npz:PATH (arrays x_train, "
    "y_train, x_test, y_test) or folder:PATH (a subfolder of images per class)."
)
IMAGE_SIZE_HELP = "folder: datasets: resize every image to PIXELS x PIXELS."
COLOR_HELP = "folder: datasets: read images as gray or rgb (default: rgb if any has colour)."
FAMILY_MODULE_HELP = (
    "Load the family from this module (pkg.module, defining FAMILY) when no installed "
    "package provides it; Ray ships it to the workers."
)


@dataclass
class TrainSpec:
    """One training run: what `study train` runs and what `study export` writes."""

    family: str = field(metadata={"help": "Model family to train.", "flag": None})
    dataset: str = setting("digits", DATASET_HELP, metavar="NAME")
    image_size: int | None = setting(None, IMAGE_SIZE_HELP, metavar="PIXELS")
    color: str | None = setting(None, COLOR_HELP, choices=COLORS)
    family_module: str | None = setting(None, FAMILY_MODULE_HELP, metavar="MODULE")
    epochs: int = setting(20, "Training epochs.")
    seed: int = setting(0, "Seed for weights, batches and noise.")
    seeds: int = setting(
        1,
        "Seed replicas trained at once (seeds SEED..SEED+S-1), reported with their mean, "
        "std and bootstrap bounds; with --preset, the preset's seed count.",
    )
    precision: str = setting(
        "fp32", "Training arithmetic; bf16 = bfloat16 autocast, for GPUs.", choices=PRECISIONS
    )
    params: dict[str, Any] = setting(
        {}, "Set a family parameter; repeatable.", flag="--set", metavar="KEY=VALUE"
    )

    # Keys an export file may carry besides the spec; they are informational.
    INFO_KEYS = ("metrics", "seed_metrics", "source", "objectives", "robust")

    def __post_init__(self) -> None:
        family = get_family(self.family, self.family_module)
        self.dataset = check_dataset_name(self.dataset)
        check_image_options(self.dataset, self.image_size, self.color)
        check_positive_int("epochs", self.epochs)
        check_positive_int("seed", self.seed, minimum=0)
        check_seeds(self.seeds)
        check_precision(self.precision)
        if not isinstance(self.params, dict):
            raise ConfigError("params: expected a mapping of parameter names to values")
        # Validate now and keep the resolved values (defaults filled in).
        self.params = family.make_config(self.params).to_dict()

    @classmethod
    def from_sources(
        cls,
        family: str | None,
        config_file: str | None,
        overrides: dict[str, Any],
        **settings: Any,
    ) -> TrainSpec:
        """Merge, in rising priority: the YAML file, the CLI's settings, `--set` overrides."""
        data: dict[str, Any] = {}
        if config_file:
            data = read_yaml(config_file)
            allowed = {f.name for f in dataclasses.fields(cls)} | set(cls.INFO_KEYS)
            unknown = sorted(set(data) - allowed)
            if unknown:
                raise ConfigError(
                    f"{unknown[0]}: unknown key in {config_file}; valid keys: "
                    f"{', '.join(sorted(allowed))}"
                )
            data = {k: v for k, v in data.items() if k not in cls.INFO_KEYS}
        if family:
            if data.get("family") not in (None, family):
                raise ConfigError(
                    f"family: {config_file} is for {data['family']!r} but the command names {family!r}; drop one"
                )
            data["family"] = family
        if "family" not in data:
            raise ConfigError(
                "family: no family given; name one (e.g. `study train mlvae`) or use --config FILE"
            )
        data.update({k: v for k, v in settings.items() if v is not None})
        data["params"] = {**(data.get("params") or {}), **overrides}
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_objective(text: str, family: str, dataset: str = "digits") -> tuple[str, str]:
    """ "METRIC:max|min", checked against the metrics `family` declares, and the factor
    metrics where `dataset` may carry ground-truth factors (the planner checks that an
    npz: file does, once it is loaded)."""
    from trainables.factor_metrics import FACTOR_METRIC_NAMES

    metric, _, mode = text.partition(":")
    names = get_family(family).metric_names
    if may_have_factors(dataset):
        names = (*names, *FACTOR_METRIC_NAMES)
    elif metric in FACTOR_METRIC_NAMES:
        raise ConfigError(
            f"objective: {metric} needs ground-truth factors, which {dataset} has none of; "
            "fix: use --dataset dsprites (or an npz: file with factors_train and factors_test)"
        )
    if metric not in names:
        raise ConfigError(
            f"objective: {family} has no metric {metric!r}; choose from {', '.join(names)}"
        )
    if mode not in ("max", "min"):
        raise ConfigError(f"objective: write METRIC:max or METRIC:min, got {text!r}")
    return metric, mode


SCHEDULERS = ("asha", "none")
DEFAULT_STORAGE = "ray_results"


@dataclass
class StudySpec:
    """Everything a sweep needs; saved beside Ray's results so `resume` can rebuild it."""

    family: str = field(metadata={"help": "Model family to sweep.", "flag": None})
    name: str = setting("", "Study name (default <family>-<dataset>-<time>).")
    dataset: str = setting("digits", DATASET_HELP, metavar="NAME")
    image_size: int | None = setting(None, IMAGE_SIZE_HELP, metavar="PIXELS")
    color: str | None = setting(None, COLOR_HELP, choices=COLORS)
    family_module: str | None = setting(None, FAMILY_MODULE_HELP, metavar="MODULE")
    trials: int = setting(8, "Number of trials Optuna proposes.")
    epochs: int = setting(10, "Epochs per trial (ASHA may stop a trial sooner).")
    objectives: list[str] = setting(
        [], "Repeatable; default: the family's.", flag="--objective", metavar="METRIC:max|min"
    )
    scheduler: str = setting("asha", "Early stopping of poor trials.", choices=SCHEDULERS)
    grace_period: int = setting(2, "ASHA: epochs before a trial may be stopped.")
    concurrency: int | None = setting(None, "Trials running at once (default: as resources allow).")
    cpus_per_trial: float = setting(1.0, "CPUs each trial needs on one node.")
    gpus_per_trial: float = setting(0.0, "GPUs each trial needs; fractions share a GPU (0.25).")
    address: str | None = setting(
        None, "Ray cluster: 'auto', host:port or ray://host:port (default: start Ray locally)."
    )
    storage: str = setting(DEFAULT_STORAGE, "Ray results: a path or URI such as s3://bucket/dir.")
    tracking_uri: str = setting(
        "", "MLflow store (default sqlite:///mlflow.db or $MLFLOW_TRACKING_URI)."
    )
    experiment: str = setting(records.DEFAULT_EXPERIMENT, "MLflow experiment.")
    optuna_storage: str = setting(
        "",
        "The sampler's Optuna storage, an RDB URL; the study there has the study's name "
        "(default sqlite:///<directory of an SQLite MLflow store, else .>/optuna.db).",
        metavar="URL",
    )
    space_file: str | None = setting(
        None, "Search-space YAML (default search_spaces/<family>.yaml).", flag="--space"
    )
    fixed: dict[str, Any] = setting(
        {}, "Hold a parameter fixed; repeatable.", flag="--set", metavar="KEY=VALUE"
    )
    seed: int = setting(0, "Seed of the sampler and of every trial (its first replica's).")
    seeds: int = setting(
        1,
        "Seed replicas per trial, trained at once (seeds SEED..SEED+S-1); a trial reports "
        "their mean, std and bootstrap bounds.",
    )
    seed_aggregate: str = setting(
        "mean",
        "With --seeds: what Optuna and ASHA rank trials by, the seeds' mean or its "
        "pessimistic bootstrap bound (lower when maximising).",
        choices=records.SEED_AGGREGATES,
    )
    data_dir: str | None = setting(
        None,
        "Directory holding the idx .gz files (or $LATENT_STUDIES_DATA_DIR).",
        envvar="LATENT_STUDIES_DATA_DIR",
    )
    eval_every: int = setting(1, "Epochs between full evaluations.")
    max_failures: int = setting(2, "Retries of a crashed trial from its checkpoint.")
    precision: str = setting(
        "fp32", "Training arithmetic; bf16 = bfloat16 autocast, for GPU trials.", choices=PRECISIONS
    )

    def __post_init__(self) -> None:
        family = get_family(self.family, self.family_module)
        self.dataset = check_dataset_name(self.dataset)
        check_image_options(self.dataset, self.image_size, self.color)
        self.name = check_study_name(
            self.name
            or f"{self.family}-{dataset_label(self.dataset)}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        self._check_counts()
        check_seeds(self.seeds)
        if self.seed_aggregate not in records.SEED_AGGREGATES:
            raise ConfigError(
                f"seed-aggregate: {self.seed_aggregate!r} is not one of "
                f"{', '.join(records.SEED_AGGREGATES)}"
            )
        check_precision(self.precision)
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(
                f"scheduler: {self.scheduler!r} is not one of {', '.join(SCHEDULERS)}"
            )
        if not self.cpus_per_trial > 0:
            raise ConfigError(f"cpus-per-trial: must be > 0, got {self.cpus_per_trial}")
        if not self.gpus_per_trial >= 0:
            raise ConfigError(f"gpus-per-trial: must be >= 0, got {self.gpus_per_trial}")
        from trainables.factor_metrics import DCI_METRICS

        self.objectives = list(self.objectives or family.default_objectives)
        for text in self.objectives:
            metric, _ = parse_objective(text, self.family, self.dataset)
            if metric in DCI_METRICS and self.scheduler == "asha":
                raise ConfigError(
                    f"objective: {metric} is computed at a trial's last evaluation only (its "
                    "boosted trees take about 30 s), so ASHA cannot rank trials by it midway; "
                    "fix: add --scheduler none, or choose another objective (mig:max)"
                )
        if "://" not in self.storage:
            self.storage = str(Path(self.storage).expanduser().resolve())
        elif not self.optuna_storage:
            # The default is a file on this machine: a driver elsewhere, which the shared
            # storage lets resume the study, would find no sampler.
            raise ConfigError(
                f"optuna-storage: a study whose results go to shared storage "
                f"({records.redact(self.storage)}) needs an Optuna storage every driver "
                f"reaches; pass --optuna-storage postgresql://USER@HOST/DB (pip install "
                f"'latent-studies[postgres]'), or sqlite:////PATH on a disk every driver mounts"
            )
        self.tracking_uri = records.resolve_tracking_uri(self.tracking_uri or None)
        self.optuna_storage = records.resolve_optuna_storage(self.optuna_storage, self.tracking_uri)

    def _check_counts(self) -> None:
        for name, minimum in (
            ("trials", 1),
            ("epochs", 1),
            ("eval_every", 1),
            ("grace_period", 1),
            ("seed", 0),
            ("max_failures", 0),
        ):
            check_positive_int(name.replace("_", "-"), getattr(self, name), minimum)
        if self.concurrency is not None:
            check_positive_int("concurrency", self.concurrency)

    @property
    def parsed_objectives(self) -> list[tuple[str, str]]:
        return [parse_objective(text, self.family, self.dataset) for text in self.objectives]

    @property
    def searched_objectives(self) -> list[tuple[str, str]]:
        """(result key, mode) the searcher and the scheduler read for each objective: the
        metric itself, or with --seeds and --seed-aggregate bound its pessimistic bound."""
        return [
            (records.searched_metric(metric, mode, self.seed_aggregate, self.seeds), mode)
            for metric, mode in self.parsed_objectives
        ]

    @property
    def path(self) -> str:
        from study.storage import join

        return join(self.storage, self.name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def public_dict(self) -> dict[str, Any]:
        """The spec for logs and MLflow params, with credentials removed."""
        values = self.to_dict()
        for key in ("address", "storage", "tracking_uri", "optuna_storage"):
            if values[key]:
                values[key] = records.redact(values[key])
        return values
