"""Hyperparameter importance, and whether a study has enough trials for it to mean anything.

Two of Optuna's evaluators, side by side, per objective:

- fANOVA (`fanova:<metric>`): the share of the objective's variance each parameter explains
  on its own, from a random forest fitted to the trials. It is computed on the scale the
  search samples: log-scaled parameters as their logarithm (Optuna's evaluator integrates
  over the raw range, where the lowest decade of a learning rate is a sliver). The
  direction of the objective does not matter to it.
- PED-ANOVA (`ped_anova:<metric>`): how much each parameter's distribution among the best
  PED_TARGET_QUANTILE of the trials differs from its distribution among all of them. It
  depends on the direction: Optuna's evaluator takes lower as better, so a metric to
  maximise is negated. With several objectives each gets its own `target=` (without one,
  PED-ANOVA would rank trials by Pareto front instead).

Below MIN_TRIALS_FOR_IMPORTANCE finished trials `importance` prints no numbers, only a note
saying so: the floor is measured by `python -m tests.bench.importance_floor`.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import optuna
import optuna.distributions as od
import pandas as pd

from analysis.records import param_column
from analysis.runs import ranked
from analysis.stats import finite_or_none

if TYPE_CHECKING:
    from collections.abc import Callable

    from analysis.runs import StudyRuns

# The floor, measured by `python -m tests.bench.importance_floor` (72 s on 2 cores): 100
# studies per trial count, 6 parameters shaped like search_spaces/mlvae.yaml (4 log, one
# linear, one categorical) sampled at random; a [0, 1] rate with one dominant parameter
# (77% of the variance), two comparable ones (8% each), an interacting pair (3% each) and an
# inert one; seed noise std 0.05. Share of studies where each evaluator, as run here, ranks
# the dominant parameter first, and their mean Spearman rho with the true ranking:
#
#     trials      5     8    10    15    20    25    30    50
#     fANOVA    .44   .71   .83   .93   .98  1.00   .98  1.00
#      (rho)    .22   .28   .32   .33   .41   .42   .47   .56
#     PED-ANOVA .45   .38   .56   .81   .76   .93   .93  1.00
#      (rho)    .08   .07   .19   .29   .26   .41   .37   .45
#
# Criterion: the smallest count from which on (it and every larger one measured) both reach
# 90%: 25. A second run (other seeds, noise 0.03 and 0.05) gave PED-ANOVA 0.87/0.84 at 20 and
# 0.93/0.93 at 25, fANOVA >= 0.97 from 20. PED-ANOVA is the one that needs the trials;
# Spearman stays below 0.6 even at 50: the order of the minor parameters stays unsettled, so
# the report should read the top of the table, not its tail.
MIN_TRIALS_FOR_IMPORTANCE = 25
FLOOR_MEASURED = (
    "with 20 random trials PED-ANOVA put a known dominant parameter first in 76% of "
    "synthetic studies and fANOVA in 98%, with 25 in 93% and 100%"
)

# PED-ANOVA's target quantile: importance for reaching the best quarter. Optuna's default,
# 0.1, leaves 2-5 trials in the target set of a 20-50 trial study; measured by the same
# benchmark it put the dominant parameter first in only 50-74% of studies of 20-50 trials
# (0.25: 76-100%). 0.5 does so more often below 25 trials (0.89 at 20) and needs the same
# floor, but orders the other parameters worse in larger studies (an exploratory run at
# noise 0.03: rho 0.39 at 50 trials and 0.46 at 100, against 0.50-0.53 and 0.58-0.63 for
# quantiles 0.2-0.3).
PED_TARGET_QUANTILE = 0.25
# fANOVA on the searched scale rather than Optuna's raw one: measured at 20/30/50 trials,
# top-1 0.98/0.98/1.00 against 0.94/0.92/0.96, Spearman 0.41/0.47/0.56 against 0.33/0.35/0.44.
FANOVA_SEED = 0  # the forest's seed: the same trials give the same figures
# fANOVA's cost grows faster than its trials (Optuna's evaluator walks every leaf pair of
# 64 fully grown trees: 3 s for 400 trials of 3 parameters, 8 s for 800, about 2 minutes
# for 5,000 by extrapolation). Above this many it reads a seeded random sample of them;
# PED-ANOVA (milliseconds) reads every trial. FANOVA_SAMPLE_MEASURED says what that costs
# in accuracy (`python -m tests.bench.fanova_sample`).
FANOVA_MAX_TRIALS = 300
FANOVA_SAMPLE_MEASURED = (
    "measured on 5 synthetic studies of 1,000 trials and 6 parameters: a random 300 put the "
    "dominant parameter first in all 5, as every trial did, with shares off the true ones by "
    "0.027 on average against 0.020, in 2.8 s against 21.9 s"
)
FANOVA = "fanova"
PED_ANOVA = "ped_anova"
EVALUATORS = (FANOVA, PED_ANOVA)
LABELS = {FANOVA: "fANOVA", PED_ANOVA: "PED-ANOVA"}


@dataclass(frozen=True, eq=False)  # eq would compare DataFrames
class Importance:
    """Importance per parameter, or the reason there is none.

    `table`: one row per parameter (index "parameter"), columns `fanova:<metric>` and
    `ped_anova:<metric>` per objective, each normalised to sum 1; sorted by the first
    objective's fANOVA. Empty unless `reliable`. A column an evaluator could not compute
    (say, every value equal) is absent; NaN marks a parameter an evaluator did not assess
    (fANOVA skips conditional parameters, PED-ANOVA does not).
    `n_trials`: the finished trials used (complete, every objective finite).
    `min_trials`: the floor below which importance is not reported.
    `note`: one sentence for the report."""

    table: pd.DataFrame = field(repr=False)
    n_trials: int
    min_trials: int
    reliable: bool
    note: str


def rebuild_study(study: StudyRuns, distributions) -> optuna.Study | None:
    """The study's finished, non-diverged trials with finite objectives, rebuilt from the
    MLflow trial rows as an in-memory Optuna study (for studies whose sampler left no Optuna
    storage). A parameter missing from, or outside its distribution in, any of those trials
    (a conditional one) is left out. None when there is no trial or no search space."""
    objectives = study.objectives
    if not distributions or not objectives:
        return None
    done = ranked(study)
    rows: list[tuple[list[float], dict[str, object]]] = []
    for _, row in done.iterrows():
        values = [finite_or_none(row.get(metric)) for metric, _ in objectives]
        if any(v is None for v in values):
            continue
        params = {}
        for name, dist in distributions.items():
            value = _external(dist, row.get(param_column(name)))
            if value is not None:
                params[name] = value
        rows.append((values, params))
    if not rows:
        return None
    # Only the parameters every trial has: fANOVA and PED-ANOVA then assess the same ones.
    common = [name for name in distributions if all(name in params for _, params in rows)]
    space = {name: distributions[name] for name in common}
    directions = ["maximize" if mode == "max" else "minimize" for _, mode in objectives]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ostudy = optuna.create_study(directions=directions)
    ostudy.add_trials(
        [
            optuna.trial.create_trial(
                params={name: params[name] for name in common},
                distributions=space,
                values=values,
            )
            for values, params in rows
        ]
    )
    return ostudy


def _external(dist: od.BaseDistribution, value) -> object | None:
    """`value` as `dist` hands it out (4.0 -> 4 for an int), or None when it is missing or
    outside `dist`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(dist, od.CategoricalDistribution):
        # Choices read back from MLflow may differ in type from the space's (4 vs "4").
        for choice in dist.choices:
            if choice == value or str(choice) == str(value):
                return choice
        return None
    try:
        internal = dist.to_internal_repr(value)
    except (ValueError, TypeError):
        return None
    return dist.to_external_repr(internal) if dist._contains(internal) else None


def finished_trials(ostudy: optuna.Study, n_objectives: int | None = None) -> list:
    """Complete trials whose objective values (the first `n_objectives`) are all finite."""
    out = []
    for trial in ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        values = (trial.values or [])[: n_objectives or None]
        if values and all(v is not None and math.isfinite(v) for v in values):
            out.append(trial)
    return out


def importance(ostudy: optuna.Study | None, objectives: list[tuple[str, str]]) -> Importance:
    """fANOVA and PED-ANOVA importance per objective, or, below MIN_TRIALS_FOR_IMPORTANCE
    finished trials, an empty table and a note saying importance is not yet reliable."""
    floor = MIN_TRIALS_FOR_IMPORTANCE
    if ostudy is None:
        return Importance(
            pd.DataFrame(),
            0,
            floor,
            False,
            f"importance is not yet reliable: no finished trials to compute it from "
            f"(it needs at least {floor})",
        )
    n_objectives = min(len(objectives), len(ostudy.directions))
    n = len(finished_trials(ostudy, n_objectives))
    if n < floor:
        return Importance(
            pd.DataFrame(),
            n,
            floor,
            False,
            f"importance is not yet reliable: {n} finished trials, fewer than {floor} "
            f"(measured: {FLOOR_MEASURED})",
        )
    table = importance_table(ostudy, objectives)
    if table.empty:
        return Importance(
            table,
            n,
            floor,
            False,
            f"importance could not be computed from {n} finished trials: neither fANOVA "
            f"nor PED-ANOVA could rank the parameters (does the objective vary?)",
        )
    expected = [f"{key}:{metric}" for metric, _ in objectives[:n_objectives] for key in EVALUATORS]
    missing = [c for c in expected if c not in table.columns]
    note = (
        f"importance from {n} finished trials (at least {floor} needed): fANOVA on the "
        f"searched scale, PED-ANOVA for reaching the best {PED_TARGET_QUANTILE:.0%}"
    )
    if n > FANOVA_MAX_TRIALS:
        note += (
            f"; fANOVA on a seeded random {FANOVA_MAX_TRIALS} of them ({FANOVA_SAMPLE_MEASURED})"
        )
    if missing:
        note += f"; not computable: {', '.join(missing)}"
    return Importance(table, n, floor, True, note)


def importance_table(ostudy: optuna.Study, objectives: list[tuple[str, str]]) -> pd.DataFrame:
    """The importance table whatever the number of trials (see `Importance.table`); the
    benchmark measures this. An evaluator that fails yields no column."""
    n_objectives = min(len(objectives), len(ostudy.directions))
    if not finished_trials(ostudy, n_objectives):
        return pd.DataFrame()
    sampled = None  # the study on the searched scale, for fANOVA; built once
    columns: dict[str, dict[str, float]] = {}
    for i, (metric, _) in enumerate(objectives[:n_objectives]):
        maximise = ostudy.directions[i] == optuna.study.StudyDirection.MAXIMIZE
        if sampled is None:
            sampled = searched_scale(ostudy, FANOVA_MAX_TRIALS)
        fanova = normalised_importances(
            optuna.importance.FanovaImportanceEvaluator(seed=FANOVA_SEED),
            sampled,
            lambda t, i=i: t.values[i],
        )
        ped = normalised_importances(
            optuna.importance.PedAnovaImportanceEvaluator(target_quantile=PED_TARGET_QUANTILE),
            ostudy,
            # PED-ANOVA takes lower as better.
            (lambda t, i=i: -t.values[i]) if maximise else (lambda t, i=i: t.values[i]),
        )
        for key, scores in ((FANOVA, fanova), (PED_ANOVA, ped)):
            if scores is not None:
                columns[f"{key}:{metric}"] = scores
    if not columns:
        return pd.DataFrame()
    table = pd.DataFrame(columns)
    table = table.sort_index()  # evaluators return ties in no fixed order
    table.index.name = "parameter"
    first = f"{FANOVA}:{objectives[0][0]}"
    key = first if first in table else table.columns[0]
    return table.sort_values(key, ascending=False, kind="stable", na_position="last")


def normalised_importances(
    evaluator: optuna.importance.BaseImportanceEvaluator,
    ostudy: optuna.Study,
    target: Callable[[optuna.trial.FrozenTrial], float],
) -> dict[str, float] | None:
    """Importances normalised to sum 1, or None when the evaluator cannot rank the
    parameters: it raises (fANOVA on constant values), or every importance is 0 (PED-ANOVA
    when the best quantile is every trial, as when all values are equal)."""
    try:
        with warnings.catch_warnings():
            # PED-ANOVA warns about its `target` direction (handled) and small regimes.
            warnings.simplefilter("ignore")
            scores = evaluator.evaluate(ostudy, target=target)
    except (RuntimeError, ValueError, ZeroDivisionError, FloatingPointError):
        return None
    total = float(sum(scores.values()))
    if not scores or not math.isfinite(total) or total <= 0.0:
        return None
    return {name: float(value) / total for name, value in scores.items()}


def searched_scale(ostudy: optuna.Study, max_trials: int | None = None) -> optuna.Study:
    """A copy of `ostudy`'s complete trials (a seeded random `max_trials` of them when it
    has more) with every log-scaled parameter replaced by its logarithm (a uniform float
    over [log low, log high]): the scale the sampler draws on."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    copy = optuna.create_study(directions=ostudy.directions)
    complete = ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if max_trials is not None and len(complete) > max_trials:
        kept = sorted(random.Random(FANOVA_SEED).sample(range(len(complete)), max_trials))
        complete = [complete[i] for i in kept]
    trials = []
    for trial in complete:
        params, space = {}, {}
        for name, dist in trial.distributions.items():
            value = trial.params[name]
            if isinstance(dist, od.FloatDistribution | od.IntDistribution) and dist.log:
                params[name] = math.log(value)  # as math.log(dist.high): never past it
                space[name] = od.FloatDistribution(math.log(dist.low), math.log(dist.high))
            else:
                params[name], space[name] = value, dist
        trials.append(
            optuna.trial.create_trial(params=params, distributions=space, values=trial.values)
        )
    copy.add_trials(trials)
    return copy
