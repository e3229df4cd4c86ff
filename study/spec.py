"""Validated specifications: what the CLI and YAML files say, checked once, flowing one way
into the code. A bad value fails here with one line naming the field and the fix."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from trainables import DATASETS, get_family
from trainables.errors import ConfigError
from trainables.experiment import check_precision
from trainables.io import read_yaml

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


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


def check_dataset(name: str) -> str:
    if name not in DATASETS:
        raise ConfigError(f"dataset: unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return name


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


@dataclass
class TrainSpec:
    """One training run: what `study train` runs and what `study export` writes."""

    family: str
    dataset: str = "digits"
    epochs: int = 20
    seed: int = 0
    precision: str = "fp32"
    params: dict[str, Any] = field(default_factory=dict)

    # Keys an export file may carry besides the spec; they are informational.
    INFO_KEYS = ("metrics", "source", "objectives", "robust")

    def __post_init__(self) -> None:
        family = get_family(self.family)
        check_dataset(self.dataset)
        check_positive_int("epochs", self.epochs)
        check_positive_int("seed", self.seed, minimum=0)
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
