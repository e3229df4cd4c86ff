"""`study export`: the best trials as YAML files that `study train --config` accepts."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from analysis.runs import StudyRuns, params_of_row, ranked
from study.errors import UserError


def export_config(study: StudyRuns, row) -> dict[str, Any]:
    epochs_trained = int(row.get("epoch", row.get("study.epochs", 1)))
    metrics = {
        k: float(row[k])
        for k in row.index
        if not k.startswith(("param.", "study.", "train_"))
        and isinstance(row[k], int | float)
        and k != "epoch"
        and not (isinstance(row[k], float) and math.isnan(row[k]))
    }
    return {
        "family": row["study.family"],
        "dataset": row["study.dataset"],
        # The epochs the trial actually trained (ASHA may have stopped it early), so that
        # `study train --config` reproduces its metrics.
        "epochs": epochs_trained,
        "seed": int(row["study.seed"]),
        # Studies recorded before the setting existed trained in float32.
        "precision": row.get("study.precision", "fp32") or "fp32",
        "params": params_of_row(row),
        "metrics": metrics,
        "source": {
            "study": study.name,
            "trial_id": row["trial_id"],
            "mlflow_run_id": row["run_id"],
            "study_epochs": int(row["study.epochs"]),
        },
        "objectives": [f"{m}:{d}" for m, d in study.objectives],
    }


def robust_best_config(robust: StudyRuns) -> dict[str, Any] | None:
    """The config with the best robust score (mean - std over seeds), as one of its runs."""
    from analysis.robustness import robust_summary

    metric, mode = robust.objectives[0]
    summary = robust_summary(robust, metric, mode)
    if summary.empty:
        return None
    best = summary.iloc[0]
    row = robust.trials[robust.trials["run_id"] == best["example_run"]].iloc[0]
    config = export_config(robust, row)
    config["robust"] = {
        "metric": metric,
        "variant": best["variant"],
        "seeds": int(best["n"]),
        "mean": float(best["mean"]),
        "std": float(best["std"]),
        "robust_score": float(best["robust_score"]),
    }
    return config


def export_study(
    study: StudyRuns, out_dir: str | Path, top: int = 1, robust: StudyRuns | None = None
) -> list[Path]:
    """Write best.yaml and rank-01.yaml ... rank-KK.yaml (and robust-best.yaml when a
    robustness study exists) atomically: the directory is built aside and renamed into
    place, so a failure leaves the old export intact."""
    if top < 1:
        raise UserError(f"top: expected a whole number >= 1, got {top}")
    best = ranked(study)
    if best.empty:
        raise UserError(
            f"name: study {study.name!r} has no finished trial with a finite objective to export"
        )
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        names = []
        for rank, (_, row) in enumerate(best.head(top).iterrows(), start=1):
            text = yaml.safe_dump(export_config(study, row), sort_keys=False)
            if rank == 1:
                (staging / "best.yaml").write_text(text)
                names.append("best.yaml")
            (staging / f"rank-{rank:02d}.yaml").write_text(text)
            names.append(f"rank-{rank:02d}.yaml")
        robust_config = robust_best_config(robust) if robust is not None else None
        if robust_config:
            (staging / "robust-best.yaml").write_text(
                yaml.safe_dump(robust_config, sort_keys=False)
            )
            names.append("robust-best.yaml")
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
        staging.rename(out_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [out_dir / name for name in names]
