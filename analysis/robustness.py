"""How much to trust a study's best result: the figures of the robustness protocol
(DESIGN.md) computed from what MLflow recorded, as data. The report renders them, the
notebook shows them and the parent run records them; each is a function a test can feed.

- `seed_summary`: each re-run config's seeds, mean and bootstrap interval, ranked by its
  robust score (the lower confidence bound of a metric to maximise, the upper one of a
  metric to minimise);
- `luck`: the share of the objective's variance due to the config rather than the seed,
  over the re-runs (near the optimum);
- `search_luck`: the same share across the search, from the seed replicas of its trials
  (`--seeds S`), at each epoch at which the study compared them (its ASHA rungs);
- `budget`: best-so-far against trials, and the expected best of k random configs;
- `degeneracy_map`: the share of degenerate runs over two parameters, seed re-runs counted.

A seed is a seed whether it ran as a trial of its own (`study robustness` before seed
replicas) or as one replica of a trial (`--seeds`): the figures that count seeds read
`StudyRuns.per_seed()`, one row per seed either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis.records import MODE_ROBUSTNESS, TAG_MODE, param_name, run_column
from analysis.runs import StudyRuns, has_value, rung_values
from analysis.stats import (
    BudgetBand,
    VarianceShare,
    bootstrap_interval,
    budget_band,
    expected_best_of_k,
    variance_share,
)

if TYPE_CHECKING:
    from analysis.importance import Importance  # optuna: loaded where importance is computed

VARIANT = run_column("variant")


def finished(study: StudyRuns, metric: str) -> pd.DataFrame:
    """Finished trials with a finite `metric` (diverged ones included: a seed that
    diverged is part of how robust a config is, and its metrics are NaN anyway)."""
    trials = study.trials
    if trials.empty or metric not in trials:
        return trials.iloc[0:0]
    return trials[(trials["status"] == "FINISHED") & has_value(trials[metric])]


def seed_summary(robust: StudyRuns, metric: str, mode: str) -> pd.DataFrame:
    """One row per re-run config (variant): n, the seeds' values, mean, std, the 95%
    bootstrap interval inside the metric's declared range, and the robust score. Best
    robust score first; ties go to the better mean.

    Ranking by the lower bound (upper when minimising) rather than the mean is what makes
    a config whose one lucky seed lifted its mean lose to a steadier one."""
    trials = finished(robust.per_seed(), metric)
    if trials.empty or VARIANT not in trials:
        return pd.DataFrame()
    bounds = robust.parent.metric_range(metric)
    rows = []
    for variant, group in trials.groupby(VARIANT, sort=False):
        values = [float(v) for v in group[metric]]
        interval = bootstrap_interval(values, bounds)
        score = interval.low if mode == "max" else interval.high
        rows.append(
            {
                "variant": variant,
                "n": interval.n,
                "mean": interval.mean,
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
                "low": interval.low,
                "high": interval.high,
                # One seed has no interval: it ranks below every config that has one.
                "robust_score": score if math.isfinite(score) else -math.inf * _sign(mode),
                "values": values,
                "example_run": group.iloc[0]["run_id"],
            }
        )
    table = pd.DataFrame(rows)
    ascending = mode == "min"
    return table.sort_values(
        ["robust_score", "mean"], ascending=[ascending, ascending], kind="stable"
    ).reset_index(drop=True)


def variant_params(robust: StudyRuns) -> pd.DataFrame:
    """Each re-run config's parameter values, indexed by variant."""
    trials = robust.trials
    if trials.empty or VARIANT not in trials:
        return pd.DataFrame()
    return trials.groupby(VARIANT, sort=False)[robust.param_columns].first()


def luck(robust: StudyRuns, metric: str) -> VarianceShare | None:
    """The share of `metric`'s variance over the re-runs explained by the config rather
    than the seed (None with fewer than two configs or no config with two seeds).

    The configs are the re-run ones (the best few and their neighbours), not a random draw
    from the search space, so the config share is that of the neighbourhood of the best:
    across the whole space it is larger."""
    trials = finished(robust.per_seed(), metric)
    if trials.empty or VARIANT not in trials:
        return None
    return variance_share(list(trials[metric].astype(float)), list(trials[VARIANT]))


SEARCH_LUCK_COLUMNS = (
    "metric",
    "epoch",
    "trials",
    "runs",
    "config_share",
    "low",
    "high",
    "config_variance",
    "seed_variance",
    "seeds_per_config",
)


def search_luck(values: pd.DataFrame, metrics: list[str], epochs: list[int]) -> pd.DataFrame:
    """The config-against-seed share of each of `metrics` across the search, one row per
    (metric, epoch) (SEARCH_LUCK_COLUMNS), from `values` (runs.rung_values: each trial's
    seeds' values at each epoch).

    Each row is `variance_share` over one epoch's values grouped by trial: every trial
    that reached that epoch (`trials`; with ASHA, the later a rung the fewer and better
    its trials), its S replicas the seeds. Values from different epochs are never pooled:
    a trial's later epochs differ from its earlier ones by training, not by seed. `runs`
    counts finite seed values; the figures are NaN where fewer than two trials, or no
    trial with two finite seeds, reached the epoch."""
    rows = []
    for metric in metrics:
        for epoch in epochs:
            at = values[(values["metric"] == metric) & (values["epoch"] == epoch)]
            share = variance_share(list(at["value"].astype(float)), list(at["trial_id"]))
            rows.append(
                {
                    "metric": metric,
                    "epoch": int(epoch),
                    "trials": int(at["trial_id"].nunique()),
                    "runs": int(has_value(at["value"]).sum()) if len(at) else 0,
                    **_share_columns(share),
                }
            )
    return pd.DataFrame(rows, columns=list(SEARCH_LUCK_COLUMNS))


def _share_columns(share: VarianceShare | None) -> dict[str, float]:
    if share is None:
        return dict.fromkeys(SEARCH_LUCK_COLUMNS[4:], math.nan)
    return {
        "config_share": share.config_share,
        "low": share.low,
        "high": share.high,
        "config_variance": share.config_variance,
        "seed_variance": share.seed_variance,
        "seeds_per_config": share.seeds_per_config,
    }


def search_luck_of(study: StudyRuns) -> pd.DataFrame:
    """`search_luck` of each objective at each of the study's rungs, read from MLflow; empty
    for a study without seed replicas (nothing is read) and for a robustness study (its
    trials are re-runs near the optimum: `luck`)."""
    if study.seeds < 2 or study.parent.tags.get(TAG_MODE) == MODE_ROBUSTNESS:
        return pd.DataFrame(columns=list(SEARCH_LUCK_COLUMNS))
    metrics, epochs = [m for m, _ in study.objectives], study.parent.rungs
    return search_luck(rung_values(study, metrics, epochs), metrics, epochs)


def search_luck_metrics(table: pd.DataFrame) -> list[tuple[str, float, int]]:
    """`search_luck` as metrics of the study's parent run, (key, value, step): per metric
    M, the figures of `VarianceShare.as_metrics` under the prefix "M_search" (such as
    M_search_config_share), with MLflow step = the epoch, so MLflow plots the share against
    epoch and shows the last rung's as the run's value. NaN figures are left out."""
    metrics = []
    for row in table.itertuples(index=False):
        share = VarianceShare(
            row.config_share,
            row.low,
            row.high,
            row.config_variance,
            row.seed_variance,
            row.trials,
            row.runs,
            row.seeds_per_config,
        )
        metrics += [
            (key, float(value), int(row.epoch))
            for key, value in share.as_metrics(f"{row.metric}_search").items()
            if math.isfinite(value)
        ]
    return metrics


@dataclass(frozen=True)
class Budget:
    metric: str
    mode: str
    band: BudgetBand
    expected_best: np.ndarray  # E[best of k random configs], k = 1..n

    def at(self, k: int) -> float:
        return float(self.expected_best[k - 1]) if 0 < k <= len(self.expected_best) else math.nan


def budget(study: StudyRuns, metric: str, mode: str) -> Budget:
    """Best-so-far in the order the study started its trials, its band over orderings,
    and the expected best of k."""
    trials = finished(study, metric)
    if "start_time" in trials:
        trials = trials.sort_values(["start_time", "trial_id"], kind="stable")
    values = list(trials[metric].astype(float))
    return Budget(metric, mode, budget_band(values, mode), expected_best_of_k(values, mode))


@dataclass(frozen=True)
class DegeneracyMap:
    """The share of degenerate runs per cell of two parameters, and the runs per cell."""

    x: str
    y: str
    share: pd.DataFrame  # index: y cells, columns: x cells
    runs: pd.DataFrame

    def figure(self, title: str):
        from analysis import figures

        return figures.heatmap(
            self.share.to_numpy(float),
            list(self.share.columns),
            list(self.share.index),
            self.x,
            self.y,
            title,
            counts=self.runs.to_numpy(float),
        )


def degeneracy_map(
    studies: list[StudyRuns], params: list[str], bins: int = 3
) -> DegeneracyMap | None:
    """The share of finished runs flagged degenerate over the first two of `params`
    (parameter names, most important first), pooling the search trials with their seed
    re-runs: a config run with three seeds counts three times, as three runs, whether they
    were three trials or one trial's three replicas.

    A parameter with at most `bins` + 1 distinct values is binned by value, a wider one by
    quantiles into `bins` cells. None when fewer than two of `params` vary."""
    seeded = [s.per_seed().trials for s in studies if not s.trials.empty]
    frames = [f[f["status"] == "FINISHED"] for f in seeded]
    frames = [f for f in frames if "degenerate" in f]
    if not frames:
        return None
    runs = pd.concat(frames, ignore_index=True)
    runs = runs[has_value(runs["degenerate"])]
    columns = [
        f"param.{p}"
        for p in params
        if f"param.{p}" in runs and runs[f"param.{p}"].astype(str).nunique() > 1
    ]
    if len(columns) < 2 or runs.empty:
        return None
    x, y = columns[:2]
    cells = pd.DataFrame(
        {
            "x": _cells(runs[x], bins),
            "y": _cells(runs[y], bins),
            "degenerate": runs["degenerate"].astype(float),
        }
    )
    grouped = cells.groupby(["y", "x"], observed=True)["degenerate"]
    share = grouped.mean().unstack("x")
    count = grouped.size().unstack("x").reindex_like(share).fillna(0)
    for table in (share, count):
        table.index.name, table.columns.name = param_name(y), param_name(x)
    return DegeneracyMap(param_name(x), param_name(y), share, count)


def _cells(values: pd.Series, bins: int) -> pd.Categorical:
    """Ordered cells: the values themselves when few, else quantile ranges."""
    if values.astype(str).nunique() <= bins + 1 or not pd.api.types.is_numeric_dtype(values):
        order = sorted(values.unique(), key=lambda v: (not isinstance(v, int | float), v))
        return pd.Categorical(values, categories=order, ordered=True).rename_categories(_label)
    edges = pd.qcut(values.astype(float), bins, duplicates="drop")
    return edges.cat.rename_categories(lambda cell: f"{_label(cell.left)}–{_label(cell.right)}")


def _label(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _sign(mode: str) -> float:
    return 1.0 if mode == "max" else -1.0


# --- everything above for one study, as the report and the notebook read it ---------------
@dataclass(frozen=True)
class StudyAnalysis:
    """A study's robustness figures. `robust` holds its seed re-runs (`study robustness`),
    or is None; a robustness study analysed on its own is its own re-runs."""

    study: StudyRuns
    robust: StudyRuns | None
    metric: str  # the first objective, which the figures are about
    mode: str
    distributions: dict
    importance: Importance
    seeds: pd.DataFrame  # seed_summary, with `in_search`: the search's value of that config
    seed_params: pd.DataFrame  # variant_params
    luck: VarianceShare | None
    budget: Budget
    degeneracy: DegeneracyMap | None
    # search_luck_of: the share across the search, per objective and rung (empty for a
    # study without seed replicas).
    search_luck: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def robust_best(self) -> pd.Series | None:
        return None if self.seeds.empty else self.seeds.iloc[0]

    def parent_metrics(self) -> dict[str, float]:
        """The figures a study's parent run records (its MLflow metrics), at step 0; the
        across-the-search share is recorded per epoch (`stepped_metrics`)."""
        metrics: dict[str, float] = {}
        if self.luck is not None:
            metrics.update(self.luck.as_metrics(self.metric))
        best = self.robust_best
        if best is not None and math.isfinite(best["low"]):
            metrics[f"robust_best_{self.metric}_mean"] = float(best["mean"])
            metrics[f"robust_best_{self.metric}_low"] = float(best["low"])
            metrics[f"robust_best_{self.metric}_high"] = float(best["high"])
        for k in (1, 5, 10, 20):
            value = self.budget.at(k)
            if math.isfinite(value):
                metrics[f"expected_best_{self.metric}_of_{k}"] = value
        return metrics

    def stepped_metrics(self) -> list[tuple[str, float, int]]:
        """The figures a study's parent run records per epoch, (key, value, step):
        `search_luck_metrics`."""
        return search_luck_metrics(self.search_luck)

    def importance_order(self) -> list[str]:
        return importance_order(self.study, self.importance, self.distributions)

    def slice_figure(self):
        """Each objective against each searched parameter, most important first, with each
        replicated trial's seed interval and the re-run configs' (None without finished
        trials or parameters)."""
        from analysis import figures
        from analysis.records import param_column
        from analysis.runs import ranked

        study = self.study
        columns = [param_column(p) for p in self.importance_order()]
        columns = [c for c in columns if c in study.trials]
        done = ranked(study)
        if done.empty or not columns:
            return None
        log_scaled = {
            param_column(n) for n, d in self.distributions.items() if getattr(d, "log", False)
        }
        seeds = None if self.seeds.empty else self.seeds
        return figures.slice_figure(
            done,
            columns,
            study.objectives,
            log_scaled,
            seeds,
            self.seed_params,
            seed_bands=study.seeds > 1,
        )


def importance_order(study: StudyRuns, found: Importance, distributions: dict) -> list[str]:
    """Searched parameter names, most important first when importance is reliable (else in
    the order of the search space)."""
    names = [param_name(c) for c in study.searched_params()]
    first = [p for p in found.table.index if p in names] if found.reliable else []
    first = first or [p for p in distributions if p in names]
    return first + [p for p in names if p not in first]


def analyse(study: StudyRuns, robust: StudyRuns | None = None) -> StudyAnalysis:
    from analysis.importance import importance

    metric, mode = study.objectives[0]
    if robust is None and VARIANT in study.trials:
        robust = study  # a robustness study: its trials are the re-runs
    distributions = distributions_of(study)
    found_importance = importance(optuna_study_of(study, distributions), study.objectives)
    seeds = seed_summary(robust, metric, mode) if robust is not None else pd.DataFrame()
    seed_params = variant_params(robust) if robust is not None else pd.DataFrame()
    if not seeds.empty and robust is not study:
        searched = finished(study, metric)
        seeds["in_search"] = [
            _search_value(searched, seed_params.loc[v], metric) for v in seeds["variant"]
        ]
    pooled = [study] if robust is None or robust is study else [study, robust]
    order = importance_order(study, found_importance, distributions)
    return StudyAnalysis(
        study,
        robust,
        metric,
        mode,
        distributions,
        found_importance,
        seeds,
        seed_params,
        luck(robust, metric) if robust is not None else None,
        budget(study, metric, mode),
        degeneracy_map(pooled, order),
        search_luck_of(study),
    )


def optuna_study_of(study: StudyRuns, distributions: dict):
    """The sampler's own Optuna study when the study recorded one (`study run` does), else
    one rebuilt from the MLflow trial runs (older studies)."""
    from analysis.importance import rebuild_study
    from analysis.optuna_record import load_optuna_study

    real = load_optuna_study(study.parent)
    return real if real is not None else rebuild_study(study, distributions)


def distributions_of(study: StudyRuns) -> dict:
    """The searched parameters' Optuna distributions, from the parent run's tag."""
    import json

    import optuna.distributions as od

    text = study.parent.space
    if not text:
        return {}
    try:
        return {k: od.json_to_distribution(v) for k, v in json.loads(text).items()}
    except (ValueError, TypeError):
        return {}


def _search_value(trials: pd.DataFrame, params: pd.Series, metric: str) -> float:
    """The objective the search's finished `trials` recorded for exactly these parameters
    (NaN for a config the search never ran, such as a neighbour): beside the re-runs'
    mean, how much the search's pick owed to its seed."""
    if trials.empty:
        return math.nan
    match = pd.Series(True, index=trials.index)
    for column, value in params.items():
        if column not in trials:
            return math.nan
        match &= trials[column].astype(str) == str(value)
    values = trials.loc[match, metric]
    return float(values.iloc[0]) if len(values) else math.nan
