"""`study export`: the best trials as YAML files that `study train --config` accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from analysis.records import OPTIONAL_RUN_SETTINGS, parse_seed_metric, run_column
from analysis.runs import StudyRuns, params_of_row, ranked
from analysis.stats import finite_or_none
from trainables.errors import UserError
from trainables.io import atomic_directory


def export_config(study: StudyRuns, row: pd.Series) -> dict[str, Any]:
    """One trial `row` as a config `study train --config` reproduces. A trial with seed
    replicas exports `seeds` and, besides its metrics (the seeds' means and their
    statistics), each seed's own as `seed_metrics`; a solo trial's export has neither."""
    epochs_trained = int(row.get("epoch", row.get(run_column("epochs"), 1)))
    metrics, seed_metrics = {}, {}
    for key in study.metric_columns:
        value = finite_or_none(row[key])
        seeded = parse_seed_metric(key)
        name = seeded[1] if seeded else key
        # Training's running losses and the epoch are no result to reproduce.
        if value is None or name.startswith("train_") or name == "epoch":
            continue
        if seeded:
            seed_metrics.setdefault(seeded[0], {})[name] = value
        else:
            metrics[key] = value
    # Trials recorded before replicas existed have no `seeds` setting: one seed each.
    seeds = int(finite_or_none(row.get(run_column("seeds"))) or 1)
    return {
        "family": row[run_column("family")],
        "dataset": row[run_column("dataset")],
        # What reads the dataset and finds the family, when the study set them.
        **{
            key: value for key in OPTIONAL_RUN_SETTINGS if (value := _setting(row, key)) is not None
        },
        # The epochs the trial actually trained (ASHA may have stopped it early), so that
        # `study train --config` reproduces its metrics.
        "epochs": epochs_trained,
        "seed": int(row[run_column("seed")]),
        **({"seeds": seeds} if seeds > 1 else {}),
        # Studies recorded before the setting existed trained in float32.
        "precision": row.get(run_column("precision"), "fp32") or "fp32",
        "params": params_of_row(row),
        "metrics": metrics,
        **({"seed_metrics": dict(sorted(seed_metrics.items()))} if seeds > 1 else {}),
        "source": {
            "study": study.name,
            "trial_id": row["trial_id"],
            "mlflow_run_id": row["run_id"],
            "study_epochs": int(row[run_column("epochs")]),
        },
        "objectives": [f"{m}:{d}" for m, d in study.objectives],
    }


def _setting(row, key: str):
    """A run setting a study may not have recorded (absent, or NaN in a mixed table)."""
    value = row.get(run_column(key))
    if value is None or (isinstance(value, float) and value != value):
        return None
    return int(value) if key == "image_size" else value


def robust_best_config(robust: StudyRuns) -> dict[str, Any] | None:
    """The re-run config with the best robust score (the lower end of its seed interval
    when maximising, the upper when minimising), as one of its runs: the trial that ran
    all its seeds as replicas, or (re-runs recorded before replicas) one seed's run."""
    from analysis.robustness import seed_summary

    metric, mode = robust.objectives[0]
    summary = seed_summary(robust, metric, mode)
    if summary.empty:
        return None
    best = summary.iloc[0]
    row = robust.trials[robust.trials["run_id"] == best["example_run"]].iloc[0]
    config = export_config(robust, row)
    config["robust"] = {
        "metric": metric,
        "mode": mode,
        "variant": best["variant"],
        "seeds": int(best["n"]),
        "values": [float(v) for v in best["values"]],
        "mean": float(best["mean"]),
        "low": float(best["low"]),
        "high": float(best["high"]),
        "interval": "95% percentile bootstrap of the mean over seeds",
        "robust_score": float(best["robust_score"]),
    }
    return config


def export_study(
    study: StudyRuns,
    out_dir: str | Path,
    top: int = 1,
    robust: StudyRuns | None = None,
    require_robust: bool = False,
) -> list[Path]:
    """Write best.yaml and rank-01.yaml ... rank-KK.yaml (and robust-best.yaml when a
    robustness study exists) atomically: a failure leaves the old export intact.
    `require_robust` refuses, writing nothing, when the re-runs have no finished config."""
    if top < 1:
        raise UserError(f"top: expected a whole number >= 1, got {top}")
    best = ranked(study)
    if best.empty:
        raise UserError(
            f"name: study {study.name!r} has no finished trial with a finite objective to export"
        )
    robust_config = robust_best_config(robust) if robust is not None else None
    if require_robust and robust_config is None:
        raise UserError(
            f"--robust: the re-runs of study {study.name!r} have no finished trial with a "
            f"finite objective; resume them (`study resume {study.name}-robust`) first"
        )
    with atomic_directory(out_dir) as staging:
        names = _write_exports(staging, study, best.head(top), robust_config)
    return [Path(out_dir) / name for name in names]


def _write_exports(
    directory: Path, study: StudyRuns, best: pd.DataFrame, robust_config: dict[str, Any] | None
) -> list[str]:
    names = []
    for rank, (_, row) in enumerate(best.iterrows(), start=1):
        text = yaml.safe_dump(export_config(study, row), sort_keys=False)
        if rank == 1:
            (directory / "best.yaml").write_text(text)
            names.append("best.yaml")
        (directory / f"rank-{rank:02d}.yaml").write_text(text)
        names.append(f"rank-{rank:02d}.yaml")
    if robust_config:
        (directory / "robust-best.yaml").write_text(yaml.safe_dump(robust_config, sort_keys=False))
        names.append("robust-best.yaml")
    return names
