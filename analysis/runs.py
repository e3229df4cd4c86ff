"""Read a study back from MLflow: the parent run and one row per trial, as pandas."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from analysis import records
from analysis.records import StudyRecord, is_metric_column, param_name
from analysis.stats import finite_or_none


@dataclass
class StudyRuns:
    name: str
    parent: StudyRecord
    trials: pd.DataFrame  # one row per trial run: records.TrialRecord.row()
    tracking_uri: str = ""

    @property
    def objectives(self) -> list[tuple[str, str]]:
        return self.parent.objectives

    @property
    def family(self) -> str:
        return self.parent.family

    @property
    def param_columns(self) -> list[str]:
        return [c for c in self.trials.columns if param_name(c) is not None]

    @property
    def metric_columns(self) -> list[str]:
        return [c for c in self.trials.columns if is_metric_column(c)]

    def searched_params(self) -> list[str]:
        """Parameters that vary across trials (the searched ones)."""
        return [c for c in self.param_columns if self.trials[c].astype(str).nunique() > 1]

    @property
    def seeds(self) -> int:
        return self.parent.seeds

    @property
    def seed_aggregate(self) -> str:
        return self.parent.seed_aggregate

    @property
    def ranked_by(self) -> tuple[str, str]:
        """(column, mode) the trials rank by: the first objective as the searcher read it,
        so a study that searched the pessimistic bound of its seeds is ranked by that bound
        rather than by a mean one lucky seed can lift."""
        return self.parent.ranked_by

    def per_seed(self) -> StudyRuns:
        """The study with one trial row per seed (analysis.seeds.seed_rows): a replicated
        trial's row once per replica, shaped like the rows of a study that ran each seed as
        a trial of its own. Analyses that count seeds (intervals over seeds, the
        config-vs-seed share, degenerate runs) read this, so replicas and older seed
        re-runs give the same figures. Without replicated trials, the study itself."""
        from analysis.seeds import seed_rows

        if not any(records.parse_seed_metric(str(c)) for c in self.trials.columns):
            return self
        return dataclasses.replace(self, trials=seed_rows(self.trials))


def load_study(
    name: str, tracking_uri: str | None = None, experiment: str = records.DEFAULT_EXPERIMENT
) -> StudyRuns:
    found = records.read_study(name, tracking_uri, experiment)
    trials = pd.DataFrame([trial.row() for trial in found.trials])
    return StudyRuns(name, found.parent, trials, found.tracking_uri)


RUNG_COLUMNS = ("trial_id", "seed", "epoch", "metric", "value")


def rung_values(
    study: StudyRuns, metrics: list[str] | None = None, epochs: list[int] | None = None
) -> pd.DataFrame:
    """Each seed's value of each of `metrics` (default: the objectives) at each of
    `epochs` (default: the study's rungs, `StudyRecord.rungs`), one row per value
    (RUNG_COLUMNS), read from the trial runs' per-seed metric histories; a trial has rows
    only for the epochs it reached, and NaN where a seed diverged. Empty for a study whose
    trials have no seed replicas: its trials are not read, so a large solo study costs
    nothing here. One history read per (trial, seed, metric)."""
    metrics = [m for m, _ in study.objectives] if metrics is None else metrics
    wanted = set(study.parent.rungs if epochs is None else epochs)
    if study.seeds < 2 or study.trials.empty or not wanted or not metrics:
        return pd.DataFrame(columns=list(RUNG_COLUMNS))
    from analysis.seeds import seeds_of

    client = records.open_client(study.tracking_uri)
    # Every seed some trial reports, for trials whose row does not name its seeds.
    known = seeds_of({column: None for column in study.trials.columns})
    rows = []
    for trial in study.trials.to_dict("records"):
        trial_id = trial.get("trial_id")
        trial_id = trial_id if isinstance(trial_id, str) else trial["run_id"]
        for seed in _replica_seeds(trial) or known:
            for metric in metrics:
                key = records.seed_metric(metric, seed)
                history = client.get_metric_history(trial["run_id"], key)
                # A step logged twice keeps its latest value.
                at = {
                    m.step: m.value
                    for m in sorted(history, key=lambda m: (m.step, m.timestamp))
                    if m.step in wanted
                }
                rows += [(trial_id, seed, step, metric, value) for step, value in at.items()]
    return pd.DataFrame(rows, columns=list(RUNG_COLUMNS))


def _replica_seeds(trial: dict[str, Any]) -> list[int]:
    """The seeds of a trial's replicas as its run settings name them (seed, seed + 1, ...,
    seed + seeds - 1; trainables.Experiment), or [] when they do not."""
    first = finite_or_none(trial.get(records.run_column("seed")))
    count = finite_or_none(trial.get(records.run_column("seeds")))
    if first is None or count is None or count < 2:
        return []
    return list(range(int(first), int(first) + int(count)))


def has_value(values: pd.Series) -> pd.Series:
    """Which entries are finite numbers."""
    return values.map(lambda v: finite_or_none(v) is not None).astype(bool)


def ranked(study: StudyRuns, metric: str | None = None, mode: str | None = None) -> pd.DataFrame:
    """Finished, non-diverged trials with a finite `metric`, best first; by default by
    what the study searched (`StudyRuns.ranked_by`)."""
    if metric is None:
        metric, mode = study.ranked_by
    trials = study.trials
    if trials.empty or metric not in trials.columns:
        return trials.iloc[0:0]
    ok = trials[(trials["status"] == "FINISHED") & has_value(trials[metric])]
    if "diverged" in ok.columns:
        ok = ok[ok["diverged"].fillna(0) == 0]
    return ok.sort_values(metric, ascending=(mode == "min"), kind="stable")


def params_of_row(row: pd.Series) -> dict[str, Any]:
    """The family parameters of one trial row (those it has a value for)."""
    return {
        param_name(key): _plain(value)
        for key, value in row.items()
        if param_name(key) is not None and not (isinstance(value, float) and math.isnan(value))
    }


def _plain(value: Any) -> Any:
    """numpy scalars -> Python, so YAML stays plain."""
    return value.item() if hasattr(value, "item") else value
