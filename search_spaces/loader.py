"""Search spaces: YAML files of typed ranges, validated against a family's config and
turned into Optuna distributions.

    family: mlvae
    parameters:
      noise_std:  {type: float, low: 0.01, high: 1.0, log: true}
      group_size: {type: categorical, choices: [2, 4, 8, 16]}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna.distributions as od

from trainables import get_family
from trainables.errors import ConfigError
from trainables.io import read_yaml

SPACES_DIR = Path(__file__).parent
KINDS = ("int", "float", "categorical")


@dataclass(frozen=True)
class SearchSpace:
    family: str
    distributions: dict[str, od.BaseDistribution]
    source: str
    # name -> (values of earlier parameters under which it is searched, constant otherwise)
    conditions: dict[str, tuple[dict[str, Any], Any]] = field(default_factory=dict)

    def search_space(self):
        """What OptunaSearch takes: the distributions, or a define-by-run function when
        some parameters are searched only under conditions."""
        return (
            DefineByRun(self.distributions, self.conditions)
            if self.conditions
            else dict(self.distributions)
        )

    def to_json(self) -> str:
        """The distributions as JSON (Optuna's own encoding), for the study's MLflow run."""
        import json

        return json.dumps(
            {name: od.distribution_to_json(d) for name, d in self.distributions.items()}
        )

    def describe(self) -> list[str]:
        lines = []
        for name, dist in self.distributions.items():
            if isinstance(dist, od.CategoricalDistribution):
                lines.append(f"{name:<14} categorical {list(dist.choices)}")
            else:
                kind = "int" if isinstance(dist, od.IntDistribution) else "float"
                scale = " log" if dist.log else ""
                lines.append(f"{name:<14} {kind:<11} [{dist.low}, {dist.high}]{scale}")
            if name in self.conditions:
                when, otherwise = self.conditions[name]
                lines[-1] += f"  when {when}, else {otherwise!r}"
        return lines


@dataclass(frozen=True)
class DefineByRun:
    """Optuna define-by-run space: suggests in file order; a conditional parameter whose
    condition fails is returned as its constant (it only suggests and returns constants)."""

    distributions: dict[str, od.BaseDistribution]
    conditions: dict[str, tuple[dict[str, Any], Any]]

    def __call__(self, trial) -> dict[str, Any]:
        values: dict[str, Any] = {}
        constants: dict[str, Any] = {}
        for name, dist in self.distributions.items():
            when, otherwise = self.conditions.get(name, ({}, None))
            if any(values.get(k, constants.get(k)) != v for k, v in when.items()):
                constants[name] = otherwise
                continue
            values[name] = _suggest(trial, name, dist)
        return constants


def _suggest(trial, name: str, dist: od.BaseDistribution) -> Any:
    if isinstance(dist, od.CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, od.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def default_space_path(family: str) -> Path:
    """A built-in family's space here; a plugin family's beside its module."""
    from trainables.registry import registered_family

    entry = registered_family(family)
    if entry.builtin:
        return SPACES_DIR / f"{family}.yaml"
    path = entry.space_beside_module
    if path is None or not path.exists():
        where = f"put one in {path}" if path else f"put {family}.yaml beside {entry.module}"
        raise ConfigError(
            f"space: family {family} ({entry.origin}) ships no search space; {where} or "
            f"pass --space FILE"
        )
    return path


def load_space(
    family: str, path: str | Path | None = None, fixed: dict[str, Any] | None = None
) -> SearchSpace:
    """Load and validate the space for `family` (its shipped file unless `path` is given).
    Parameters in `fixed` are removed from the space: the study holds them constant."""
    get_family(family)
    path = Path(path) if path else default_space_path(family)
    what = f"space {path}"
    data = read_yaml(path, "space", fix="check the --space path")
    if not isinstance(data, dict) or not isinstance(data.get("parameters"), dict):
        raise ConfigError(
            f"space: {path} needs a 'parameters:' mapping of name -> {{type, low, high}}"
        )
    if data.get("family", family) != family:
        raise ConfigError(
            f"space: {path} is for family {data['family']!r}, not {family!r}; pass the right --space"
        )
    fixed = fixed or {}
    distributions, conditions = {}, {}
    for name, spec in data["parameters"].items():
        if name in fixed:
            continue
        if isinstance(spec, dict) and "when" in spec:
            spec = dict(spec)
            conditions[name] = _condition(
                name, spec.pop("when"), spec.pop("otherwise", None), distributions, what
            )
        distributions[name] = _distribution(name, spec, what)
    _check_against_config(family, distributions, fixed, what)
    for name, (_when, otherwise) in conditions.items():
        get_family(family).config_cls(**{**fixed, name: otherwise})
    return SearchSpace(family, distributions, str(path), conditions)


def _condition(name: str, when: Any, otherwise: Any, earlier: dict, what: str) -> tuple[dict, Any]:
    if not isinstance(when, dict) or not when:
        raise ConfigError(f"{name}: 'when' must map earlier parameters to values in {what}")
    for key in when:
        if key not in earlier:
            raise ConfigError(
                f"{name}: 'when' names {key!r}, which must be a parameter listed above it in {what}"
            )
    if otherwise is None:
        raise ConfigError(f"{name}: a parameter with 'when' needs 'otherwise: VALUE' in {what}")
    return dict(when), otherwise


def _distribution(name: str, spec: Any, what: str) -> od.BaseDistribution:
    if not isinstance(spec, dict) or spec.get("type") not in KINDS:
        raise ConfigError(
            f"{name}: in {what}, give type: one of {', '.join(KINDS)} (with low/high or choices)"
        )
    kind = spec["type"]
    allowed = (
        {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log", "step"}
    )
    extra = sorted(set(spec) - allowed)
    if extra:
        raise ConfigError(
            f"{name}: unknown key {extra[0]!r} in {what}; allowed: {', '.join(sorted(allowed))}"
        )
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{name}: categorical needs a non-empty list of choices in {what}")
        return od.CategoricalDistribution(choices)
    low, high, log = spec.get("low"), spec.get("high"), spec.get("log", False)
    number = int if kind == "int" else (int, float)
    for key, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, number):
            raise ConfigError(
                f"{name}: {key} must be a{'n int' if kind == 'int' else ' number'} in {what}, got {value!r}"
            )
    if low > high:
        raise ConfigError(f"{name}: low {low} > high {high} in {what}; swap them")
    if log and low <= 0:
        raise ConfigError(f"{name}: a log range needs low > 0 in {what}, got {low}")
    if not isinstance(log, bool):
        raise ConfigError(f"{name}: log must be true or false in {what}")
    if kind == "int":
        return od.IntDistribution(low, high, log=log, step=spec.get("step", 1))
    return od.FloatDistribution(float(low), float(high), log=log, step=spec.get("step"))


def _check_against_config(family: str, distributions, fixed, what: str) -> None:
    """Every parameter must exist in the family's config, and every end of every range
    (and every choice) must be a value the config accepts."""
    config_cls = get_family(family).config_cls
    valid = config_cls.field_names()
    for name in [*distributions, *fixed]:
        if name not in valid:
            raise ConfigError(
                f"{name}: unknown parameter for {family} ({what}); valid parameters: {', '.join(valid)}"
            )
    config_cls(**fixed)
    for name, dist in distributions.items():
        probes = (
            dist.choices if isinstance(dist, od.CategoricalDistribution) else (dist.low, dist.high)
        )
        for value in probes:
            config_cls(**{**fixed, name: value})
