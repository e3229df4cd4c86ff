"""Read a study back from MLflow: the parent run and one row per trial, as pandas."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
import yaml

from study import tracking
from study.errors import UserError

PARAM_PREFIX = "param."
RUN_PREFIX = "study."


@dataclass
class StudyRuns:
    name: str
    parent: Any  # mlflow Run
    trials: pd.DataFrame  # one row per trial run: run_id, status, param.*, metrics
    tracking_uri: str = ""

    @property
    def objectives(self) -> list[tuple[str, str]]:
        text = self.parent.data.tags.get("latent_studies.objectives", "")
        return [tuple(item.split(":")) for item in text.split(",") if item]

    @property
    def family(self) -> str:
        return self.parent.data.tags["latent_studies.family"]

    @property
    def param_columns(self) -> list[str]:
        return [c for c in self.trials.columns if c.startswith(PARAM_PREFIX)]

    def searched_params(self) -> list[str]:
        """Parameters that vary across trials (the searched ones)."""
        return [c for c in self.param_columns if self.trials[c].astype(str).nunique() > 1]


def _value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_study(
    name: str, tracking_uri: str | None = None, experiment: str = tracking.DEFAULT_EXPERIMENT
) -> StudyRuns:
    uri = tracking.resolve_tracking_uri(tracking_uri)
    tracking.check_tracking_uri(uri)
    # A missing SQLite file holds no study; opening it (even making the client) would
    # create it, so don't.
    client = tracking.open_client(uri) if tracking.store_exists(uri) else None
    found = client.get_experiment_by_name(experiment) if client else None
    parent = tracking.find_study_run(client, found.experiment_id, name) if found else None
    if parent is None:
        raise UserError(
            f"name: no study {name!r} in {tracking.redact(uri)} (experiment {experiment!r}); "
            f"check the name with `study status` or pass --tracking-uri"
        )
    rows = []
    for run in tracking.trial_runs(client, found.experiment_id, parent.info.run_id):
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "status": run.info.status,
            "trial_id": run.data.tags.get(tracking.TAG_TRIAL),
            "trial_status": run.data.tags.get("latent_studies.trial_status"),
        }
        for key, value in run.data.params.items():
            row[key if key.startswith(RUN_PREFIX) else PARAM_PREFIX + key] = _value(value)
        row.update(run.data.metrics)
        rows.append(row)
    trials = pd.DataFrame(rows)
    return StudyRuns(name, parent, trials, uri)


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def ranked(study: StudyRuns, metric: str | None = None, mode: str | None = None) -> pd.DataFrame:
    """Finished, non-diverged trials with a finite objective, best first."""
    if metric is None:
        metric, mode = study.objectives[0]
    trials = study.trials
    if trials.empty or metric not in trials.columns:
        return trials.iloc[0:0]
    ok = trials[(trials["status"] == "FINISHED") & trials[metric].map(finite)]
    if "diverged" in ok.columns:
        ok = ok[ok["diverged"].fillna(0) == 0]
    return ok.sort_values(metric, ascending=(mode == "min"), kind="stable")


def params_of_row(row: pd.Series) -> dict[str, Any]:
    return {
        key.removeprefix(PARAM_PREFIX): _plain(value)
        for key, value in row.items()
        if key.startswith(PARAM_PREFIX) and not (isinstance(value, float) and math.isnan(value))
    }


def _plain(value: Any) -> Any:
    """numpy scalars -> Python, so YAML stays plain."""
    return value.item() if hasattr(value, "item") else value
