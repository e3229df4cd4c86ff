"""`study robustness`: re-run the best configs of a finished study with new seeds, and
(optionally) their one-step neighbours, as a study of its own named `<study>-robust`.

The trials are a fixed list (Ray Tune's BasicVariantGenerator with preset points), not a
search; they carry `study.variant` ("top1", "top2", ..., "nbr:noise_std=0.05") so the
analysis can group seeds of the same config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna.distributions as od

from analysis.runs import load_study, params_of_row, ranked
from study.errors import UserError
from study.spec import check_positive_int
from study.sweep import (
    DEFAULT_STORAGE,
    RUN_KEY,
    StudySpec,
    _fit,
    make_tuner,
    preflight,
    read_spec,
    run_settings,
    start_study,
)

FIRST_NEW_SEED = 1000  # far from the sweep's seeds, so "new seeds" are really new


def neighbours(
    best: dict[str, Any], distributions: dict[str, od.BaseDistribution]
) -> dict[str, dict[str, Any]]:
    """One step each way per searched parameter, kept inside its range: x2 and /2 on a
    log scale, +-10% of the range on a linear one, the adjacent choices of a categorical."""
    found: dict[str, dict[str, Any]] = {}
    for name, dist in distributions.items():
        if name not in best:
            continue
        value = best[name]
        if isinstance(dist, od.CategoricalDistribution):
            choices = list(dist.choices)
            if value not in choices:
                continue
            i = choices.index(value)
            steps = [choices[j] for j in (i - 1, i + 1) if 0 <= j < len(choices)]
        elif dist.log:
            steps = [value / 2, value * 2]
        else:
            span = 0.1 * (dist.high - dist.low)
            steps = [value - span, value + span]
        for step in steps:
            if isinstance(dist, od.IntDistribution):
                step = int(round(step))
            if not isinstance(dist, od.CategoricalDistribution):
                step = min(max(step, dist.low), dist.high)
            if step != value:
                label = f"{step:.3g}" if isinstance(step, float) else str(step)
                found[f"nbr:{name}={label}"] = {**best, name: step}
    return found


def run_robustness(
    source: str,
    top: int = 3,
    seeds: int = 3,
    with_neighbours: bool = False,
    storage: str = DEFAULT_STORAGE,
    tracking_uri: str | None = None,
    address: str | None = None,
    name: str | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    check_positive_int("top", top)
    check_positive_int("seeds", seeds)
    source_spec = read_spec(source, storage)
    study = load_study(source, tracking_uri or source_spec.tracking_uri, source_spec.experiment)
    best_rows = ranked(study).head(top)
    if best_rows.empty:
        raise UserError(
            f"name: study {source!r} has no finished trial with a finite objective to re-run"
        )
    variants = {
        f"top{i}": params_of_row(row) for i, (_, row) in enumerate(best_rows.iterrows(), start=1)
    }
    space = source_spec.space()
    if with_neighbours:
        variants.update(neighbours(variants["top1"], space.distributions))
    spec = StudySpec(
        **{
            **dataclasses.asdict(source_spec),
            "name": name or f"{source}-robust",
            "trials": len(variants) * seeds,
            "scheduler": "none",
            "address": address if address is not None else source_spec.address,
            "tracking_uri": tracking_uri or source_spec.tracking_uri,
        }
    )
    preflight(spec)
    run = run_settings(spec)
    points = [
        {**params, RUN_KEY: {**run, "seed": FIRST_NEW_SEED + s, "variant": variant}}
        for variant, params in variants.items()
        for s in range(seeds)
    ]
    # Preset points may only set keys the param space has: give every key a placeholder.
    keys = {k for p in points for k in p if k != RUN_KEY}
    param_space = {**{k: points[0].get(k) for k in keys}, RUN_KEY: {**run, "variant": ""}}
    queue, parent_id = start_study(
        spec, {"latent_studies.source_study": source, "latent_studies.mode": "robustness"}, verbose
    )
    from ray.tune.search.basic_variant import BasicVariantGenerator

    tuner = make_tuner(
        spec,
        space,
        parent_id,
        BasicVariantGenerator(points_to_evaluate=points),
        None,
        len(points),
        verbose,
        param_space=param_space,
    )
    return _fit(tuner, spec, space, queue, parent_id)
