"""Presets: named studies shipped with the package as YAML data (`study/presets/*.yaml`).

A *reproduction* preset is a reference experiment: a family, a dataset, base parameters and
variants (a grid or a list), each trained at several seeds by `study train --preset NAME`,
with the reference's figures to set ours beside. A *sweep* preset holds `study run` settings
sized for a GPU budget, run by `study run --preset NAME`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from analysis.reproductions import param_text as _text
from study.spec import StudySpec, TrainSpec, check_positive_int, setting_type
from trainables import get_family
from trainables.config import check_dataset_name, may_have_factors
from trainables.errors import ConfigError
from trainables.io import read_yaml

KINDS = ("reproduction", "sweep")
FIGURE_KINDS = {
    "heatmap": ("x", "y", "metric"),
    "pareto": ("x", "y", "label"),
    "curve": ("metric",),  # a metric against the epoch, one line per variant (eval_epochs)
}
# `study run` settings (StudySpec fields) a sweep preset may hold; where the study is
# stored, recorded and run stays the user's choice.
SWEEP_SETTINGS = (
    "trials",
    "epochs",
    "concurrency",
    "cpus_per_trial",
    "gpus_per_trial",
    "eval_every",
    "grace_period",
    "objectives",
    "scheduler",
    "precision",
    "space_file",
    "image_size",
    "color",
    "family_module",
)
COMMON_KEYS = {"kind", "description", "family", "dataset", "params"}
REPRODUCTION_KEYS = COMMON_KEYS | {
    "epochs",
    "seeds",
    "grid",
    "variants",
    "metrics",
    "reference",
    "figures",
    "cpu_minutes",
    "published",
    "eval_epochs",
    "shapes",
}
SWEEP_KEYS = COMMON_KEYS | set(SWEEP_SETTINGS) | {"gpu_hours"}


@dataclass(frozen=True)
class Variant:
    """One configuration of a reproduction: its name and the parameters it sets."""

    name: str
    params: dict[str, Any]

    @property
    def dirname(self) -> str:
        return "".join(
            c if c.isalnum() or c in "=._-" else "_" for c in self.name.replace(",", "-")
        )


@dataclass(frozen=True)
class Preset:
    name: str
    kind: str
    description: str
    family: str
    dataset: str
    params: dict[str, Any]
    path: Path
    epochs: int = 10
    seeds: int = 3
    variants: tuple[Variant, ...] = ()
    metrics: tuple[str, ...] = ()
    reference: dict[str, Any] = field(default_factory=dict)
    figures: tuple[dict[str, str], ...] = ()
    cpu_minutes: float | None = None
    # What the README quotes from this reproduction: tables, image panels and the headline
    # metrics set against their previous figures (analysis/reproductions.py renders them).
    published: dict[str, Any] = field(default_factory=dict)
    # Epochs after which each run is also evaluated (the final epoch always is): a
    # metric against training length, in the summary's `history`.
    eval_epochs: tuple[int, ...] = ()
    sweep: dict[str, Any] = field(default_factory=dict)
    gpu_hours: float | None = None
    # A reproduction on rendered shapes (`study data shapes`) rather than a file the user
    # names: the grid, rendered into the cache on first use (trainables.shapes).
    shapes: Any = None

    def train_specs(
        self, seeds: int | None = None, first_seed: int = 0, **settings: Any
    ) -> list[tuple[Variant, TrainSpec]]:
        """One spec per variant, its seeds (first_seed onwards) trained as replicas.
        `settings` override dataset (with image_size and color), epochs, precision, the
        family's module and (as `params`) parameters of every variant."""
        overrides = settings.pop("params", {}) or {}
        return [
            (
                variant,
                TrainSpec(
                    family=self.family,
                    dataset=settings.get("dataset") or self.dataset,
                    epochs=settings.get("epochs") or self.epochs,
                    seed=first_seed,
                    seeds=seeds or self.seeds,
                    precision=settings.get("precision") or "fp32",
                    image_size=settings.get("image_size"),
                    color=settings.get("color"),
                    family_module=settings.get("family_module"),
                    params={**self.params, **variant.params, **overrides},
                ),
            )
            for variant in self.variants
        ]


def presets_dir() -> Path:
    return Path(str(resources.files("study") / "presets"))


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def all_presets() -> list[Preset]:
    return [load_preset(name) for name in preset_names()]


def load_preset(name: str) -> Preset:
    """The preset NAME, validated: every parameter of every variant passes the family's
    config validation, so a bad preset fails here, before any training."""
    known = preset_names()
    if name not in known:
        raise ConfigError(
            f"preset: unknown preset {name!r}; choose one of {', '.join(known)} (see `study presets`)"
        )
    path = presets_dir() / f"{name}.yaml"
    return parse_preset(name, read_yaml(path, what=f"preset {name}"), path)


def parse_preset(name: str, data: dict[str, Any], path: Path) -> Preset:
    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"preset {name}: {key}: {problem}")

    kind = data.get("kind")
    if kind not in KINDS:
        raise fail("kind", f"{kind!r} is not one of {', '.join(KINDS)}")
    allowed = REPRODUCTION_KEYS if kind == "reproduction" else SWEEP_KEYS
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise fail(
            unknown[0], f"unknown key for a {kind} preset; valid keys: {', '.join(sorted(allowed))}"
        )
    for key in ("description", "family", "dataset"):
        if not isinstance(data.get(key), str):
            raise fail(key, "required, a string")
    family = get_family(data["family"])
    data["dataset"] = check_dataset_name(data["dataset"])
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise fail("params", "expected a mapping of parameter names to values")
    common = dict(
        name=name,
        kind=kind,
        description=data["description"].strip(),
        family=family.name,
        dataset=data["dataset"],
        params=params,
        path=path,
    )
    try:
        if kind == "sweep":
            family.make_config(params)
            return Preset(**common, **_sweep_fields(data, fail))
        return Preset(**common, **_reproduction_fields(data, params, family, fail))
    except ConfigError as error:
        if str(error).startswith(f"preset {name}:"):
            raise
        raise fail("params", str(error)) from None


def _sweep_fields(data: dict[str, Any], fail) -> dict[str, Any]:
    sweep = {}
    for key in SWEEP_SETTINGS:
        if key not in data:
            continue
        kind, value = setting_type(StudySpec, key), data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise fail(key, f"expected {kind.__name__}, got {value!r}")
        sweep[key] = value
    return {"sweep": sweep, "gpu_hours": data.get("gpu_hours")}


def _reproduction_fields(data: dict[str, Any], params: dict, family, fail) -> dict[str, Any]:
    variants = _variants(data, fail)
    for variant in variants:
        family.make_config({**params, **variant.params})
    metrics = tuple(data.get("metrics") or ())
    known = set(family.metric_names) | {"diverged"}
    if may_have_factors(data["dataset"]):
        from trainables.factor_metrics import FACTOR_METRIC_NAMES

        known |= set(FACTOR_METRIC_NAMES)
    for metric in metrics:
        if metric not in known:
            raise fail(
                "metrics",
                f"{metric!r} is not a metric of {family.name}; choose from {', '.join(sorted(known))}",
            )
    figures = tuple(data.get("figures") or ())
    for figure in figures:
        wanted = FIGURE_KINDS.get(figure.get("kind")) if isinstance(figure, dict) else None
        if wanted is None or set(figure) != {"kind", *wanted}:
            raise fail(
                "figures",
                f"{figure!r}: use {{kind: heatmap, x, y, metric}}, {{kind: pareto, x, y, "
                "label}} or {kind: curve, metric}",
            )
        # A heatmap spans two parameters and colours a metric; a Pareto plot sets two
        # metrics against each other and labels its points with a parameter.
        axes = ("x", "y") if figure["kind"] == "heatmap" else ("label",)
        for key in wanted:
            if key in axes:
                pool, what = set(family.config_cls.field_names()), "parameter"
            else:
                pool, what = set(metrics), "metric in `metrics`"
            if figure[key] not in pool:
                raise fail(
                    "figures",
                    f"{key}: {figure[key]!r} is not a {what}; choose from {', '.join(sorted(pool))}",
                )
    reference = data.get("reference") or {}
    if "epochs" in reference:
        check_positive_int("reference: epochs", reference["epochs"])
    for entry in reference.get("figures", []):
        if not isinstance(entry.get("match"), dict) or not isinstance(entry.get("metrics"), dict):
            raise fail(
                "reference", "each figure needs `match` (parameters) and `metrics` (name: value)"
            )
    eval_epochs = tuple(data.get("eval_epochs") or ())
    for epoch in eval_epochs:
        check_positive_int("eval_epochs", epoch)
    if any(f["kind"] == "curve" for f in figures) and not eval_epochs:
        raise fail("figures", "a curve needs `eval_epochs`, the epochs to evaluate after")
    epochs = check_positive_int("epochs", data.get("epochs", 10))
    history = (*eval_epochs, epochs) if eval_epochs else ()
    published = _published(data.get("published") or {}, variants, metrics, family, fail, history)
    return {
        "shapes": _shapes(data, fail),
        "eval_epochs": eval_epochs,
        "published": published,
        "epochs": epochs,
        "seeds": check_positive_int("seeds", data.get("seeds", 3)),
        "variants": variants,
        "metrics": metrics,
        "reference": reference,
        "figures": figures,
        "cpu_minutes": data.get("cpu_minutes"),
    }


def _shapes(data: dict[str, Any], fail):
    """`shapes: {grid: "shape=3,scale=6,...", size: 64}`, checked, as a ShapesGrid."""
    shapes = data.get("shapes")
    if shapes is None:
        return None
    from trainables.shapes import parse_grid

    if data.get("dataset") != "dsprites":
        raise fail("shapes", "rendered shapes are a dsprites dataset; set `dataset: dsprites`")
    if not isinstance(shapes, dict) or set(shapes) - {"grid", "size"}:
        raise fail("shapes", "expected {grid: FACTOR=COUNT,..., size: PIXELS}")
    try:
        return parse_grid(shapes.get("grid"), shapes.get("size", 64))
    except ConfigError as error:
        raise fail("shapes", str(error)) from None


PUBLISHED_KEYS = {"headline", "tables", "panels"}
TABLE_KEYS = {"name", "rows", "columns", "titles", "labels"}
PANEL_KEYS = {"name", "image", "metric", "variants"}


def _published(
    published: dict[str, Any],
    variants: tuple[Variant, ...],
    metrics: tuple,
    family,
    fail,
    history: tuple[int, ...] = (),
) -> dict[str, Any]:
    """`published`, checked: every name it uses is a parameter, metric, variant or image
    grid of the preset (or, where the preset evaluates along the way, an evaluated epoch),
    and every table cell singles out at most one variant."""
    if not isinstance(published, dict) or set(published) - PUBLISHED_KEYS:
        raise fail("published", f"expected a mapping with keys {', '.join(sorted(PUBLISHED_KEYS))}")
    params = set(family.config_cls.field_names()) | {"variant"}
    # "epoch" (a row, or a column's `where`) picks an entry of each variant's history,
    # never a variant.
    row_params = params | ({"epoch"} if history else set())
    names = {v.name for v in variants}

    def need(where: str, value: Any, pool: set, what: str) -> None:
        if value not in pool:
            raise fail(
                "published",
                f"{where}: {value!r} is not {what}; choose from {', '.join(sorted(map(str, pool)))}",
            )

    for metric in published.get("headline", []):
        need("headline", metric, set(metrics), "a metric in `metrics`")
    tables = published.get("tables", [])
    for i, table in enumerate(tables):
        where = f"tables[{i}]"
        if not isinstance(table, dict) or set(table) - TABLE_KEYS or "rows" not in table:
            raise fail("published", f"{where}: expected {{rows, columns, titles?, labels?, name?}}")
        for param in table["rows"]:
            need(f"{where}: rows", param, row_params, "a parameter")
        for column in table.get("columns", []):
            column = column if isinstance(column, dict) else {"metric": column}
            need(f"{where}: columns", column.get("metric"), set(metrics), "a metric in `metrics`")
            picks = dict(column.get("where", {}))
            for param in picks:
                need(f"{where}: where", param, row_params, "a parameter")
            if "epoch" in picks:
                need(
                    f"{where}: where: epoch", picks.pop("epoch"), set(history), "an evaluated epoch"
                )
            cells: dict[tuple, str] = {}
            for variant in variants:
                if not variant_matches(variant, picks):
                    continue
                key = tuple(_text(variant_value(variant, p)) for p in table["rows"] if p != "epoch")
                if key in cells:
                    raise fail(
                        "published",
                        f"{where}: rows {table['rows']} do not single out one variant "
                        f"({cells[key]} and {variant.name}); add the parameter that differs "
                        "to rows or to the column's `where`",
                    )
                cells[key] = variant.name
    if len({t.get("name", "table") for t in tables}) != len(tables):
        raise fail("published", "tables: give each table its own `name`")
    grids = set(family.image_grids)
    for i, panel in enumerate(published.get("panels", [])):
        where = f"panels[{i}]"
        if not isinstance(panel, dict) or set(panel) != PANEL_KEYS:
            raise fail("published", f"{where}: expected {{name, image, metric, variants}}")
        need(f"{where}: image", panel["image"], grids, "an image grid of the family")
        need(f"{where}: metric", panel["metric"], set(metrics), "a metric in `metrics`")
        for name in panel["variants"]:
            need(f"{where}: variants", name, names, "a variant")
    return published


def variant_value(variant: Variant, param: str) -> Any:
    """A variant's value of `param` ("variant": its name); None when it does not set it."""
    return variant.name if param == "variant" else variant.params.get(param)


def variant_matches(variant: Variant, where: dict[str, Any]) -> bool:
    return all(_text(variant_value(variant, k)) == _text(v) for k, v in where.items())


def _variants(data: dict[str, Any], fail) -> tuple[Variant, ...]:
    """`grid` (every combination of the listed values) or `variants` (a list of parameter
    mappings, each with an optional `name`); neither is one variant, the base params."""
    grid, listed = data.get("grid"), data.get("variants")
    if grid and listed:
        raise fail("grid", "give either `grid` or `variants`, not both")
    if grid:
        if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
            raise fail("grid", "expected a mapping of parameter names to non-empty lists")
        combos = [
            dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())
        ]
        return tuple(Variant(_name(c), c) for c in combos)
    if listed:
        if not isinstance(listed, list) or not all(isinstance(v, dict) for v in listed):
            raise fail("variants", "expected a list of parameter mappings")
        variants = []
        for entry in listed:
            entry = dict(entry)
            label = entry.pop("name", None) or _name(entry)
            variants.append(Variant(str(label), entry))
        return tuple(variants)
    return (Variant("base", {}),)


def _name(params: dict[str, Any]) -> str:
    return ",".join(f"{k}={_text(v)}" for k, v in params.items()) or "base"


def matches(params: dict[str, Any], match: dict[str, Any]) -> bool:
    """Whether resolved parameters hold every value of `match` (a reference figure's)."""
    return all(_text(params.get(k)) == _text(v) for k, v in match.items())
