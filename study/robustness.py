"""`study robustness`: re-run the best configs of a finished study with new seeds, and
(optionally) their one-step neighbours, as a study of its own named `<study>-robust`.

The trials are a fixed list (Ray Tune's BasicVariantGenerator with preset points), not a
search: one per config, training its new seeds as replicas of one batched model (`--seeds`,
trainables/replicas.py) rather than as a trial each. They carry `study.variant` ("top1",
"top2", ..., "nbr:noise_std=0.05"); the analysis reads each replica as a seed of that
config, as it reads the one-trial-per-seed re-runs that older versions recorded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna.distributions as od

from analysis import records
from analysis.runs import load_study, params_of_row, ranked
from search_spaces.loader import load_space
from study.errors import UserError
from study.execute import StudyOutcome, execute
from study.plan import plan_rerun
from study.spec import DEFAULT_STORAGE, StudySpec, check_positive_int
from study.storage import read_spec

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
    storage: str | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
    name: str | None = None,
    verbose: bool = False,
) -> StudyOutcome:
    check_positive_int("top", top)
    check_positive_int("seeds", seeds)
    source_spec = read_spec(source, storage or DEFAULT_STORAGE)
    variants = best_configs(source_spec, top, tracking_uri)
    if with_neighbours:
        space = load_space(source_spec.family, source_spec.space_file, source_spec.fixed)
        variants.update(neighbours(variants["top1"], space.distributions))
    spec = StudySpec(
        **{
            **dataclasses.asdict(source_spec),
            "name": name or f"{source}-robust",
            "trials": len(variants),
            "seed": FIRST_NEW_SEED,
            "seeds": seeds,
            "scheduler": "none",
            "address": address if address is not None else source_spec.address,
            # Beside the source, as the user reached it (an endpoint in the URI or in
            # the environment).
            "storage": storage or source_spec.storage,
            "tracking_uri": tracking_uri or source_spec.tracking_uri,
        }
    )
    return execute(plan_rerun(spec, variants, records.robustness_tags(source)), verbose)


def best_configs(source: StudySpec, top: int, tracking_uri: str | None) -> dict[str, dict]:
    """The `top` best finished trials' parameters, as variants "top1", "top2", ..."""
    study = load_study(source.name, tracking_uri or source.tracking_uri, source.experiment)
    best_rows = ranked(study).head(top)
    if best_rows.empty:
        raise UserError(
            f"name: study {source.name!r} has no finished trial with a finite objective to re-run"
        )
    return {
        f"top{i}": params_of_row(row) for i, (_, row) in enumerate(best_rows.iterrows(), start=1)
    }
