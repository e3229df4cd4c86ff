"""`study report`: an HTML page with plots that says how robust a study's family is to its
hyperparameters. Reads only what MLflow recorded (the study, and `<study>-robust` when a
robustness run exists)."""

from __future__ import annotations

import contextlib
import html
import json
import os
from pathlib import Path

import numpy as np
import optuna
import optuna.distributions as od
import pandas as pd

from analysis import records
from analysis.records import param_column, param_name, run_column
from analysis.robustness import robust_summary
from analysis.runs import StudyRuns, has_value, load_study, ranked
from analysis.stats import finite_or_none, pareto_mask
from trainables.errors import UserError
from trainables.io import atomic_directory

GROUPED_NOTE = (
    "content_acc_grouped accumulates class evidence over test groups whose members share a "
    "label (ML-VAE's setting provides group ids), which makes it easy to overrate; compare "
    "content_acc_single."
)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def distributions_of(study: StudyRuns) -> dict[str, od.BaseDistribution]:
    text = study.parent.space
    if not text:
        return {}
    try:
        return {k: od.json_to_distribution(v) for k, v in json.loads(text).items()}
    except (ValueError, TypeError):
        return {}


def optuna_study(study: StudyRuns, distributions) -> optuna.Study | None:
    """The finished trials as an in-memory Optuna study, for Optuna's importance evaluators."""
    objectives = study.objectives
    done = ranked(study)
    if len(done) < 3 or not distributions:
        return None
    directions = ["maximize" if mode == "max" else "minimize" for _, mode in objectives]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ostudy = optuna.create_study(directions=directions)
    for _, row in done.iterrows():
        values = [row.get(metric) for metric, _ in objectives]
        if any(finite_or_none(v) is None for v in values):
            continue
        params = {}
        for name, dist in distributions.items():
            value = row.get(param_column(name))
            if value is not None and dist._contains(dist.to_internal_repr(value)):
                params[name] = value
        if len(params) != len(distributions):
            continue  # conditional parameters not suggested in this trial
        ostudy.add_trial(
            optuna.trial.create_trial(params=params, distributions=distributions, values=values)
        )
    return ostudy if len(ostudy.trials) >= 3 else None


def importances(ostudy: optuna.Study | None, objectives) -> pd.DataFrame:
    if ostudy is None:
        return pd.DataFrame()
    columns = {}
    for i, (metric, _) in enumerate(objectives):
        try:
            # fANOVA decomposes variance, so the direction of the objective does not matter.
            columns[metric] = optuna.importance.get_param_importances(
                ostudy,
                evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                target=lambda t, i=i: t.values[i],
            )
        except (RuntimeError, ValueError):
            continue
    return pd.DataFrame(columns).fillna(0.0)


def slice_plot(
    study: StudyRuns, distributions, robust_runs: StudyRuns | None, path: Path
) -> Path | None:
    plt = _plt()
    from matplotlib.ticker import NullFormatter

    params = [
        p for p in study.searched_params() if param_name(p) in distributions
    ] or study.searched_params()
    objectives = study.objectives
    done = ranked(study)
    if done.empty or not params:
        return None
    fig, axes = plt.subplots(
        len(objectives),
        len(params),
        figsize=(3.2 * len(params), 2.8 * len(objectives)),
        squeeze=False,
    )
    for r, (metric, mode) in enumerate(objectives):
        for c, column in enumerate(params):
            ax = axes[r][c]
            name = param_name(column)
            x = done[column]
            numeric = pd.api.types.is_numeric_dtype(x)
            xs = x if numeric else x.astype(str)
            ax.scatter(xs, done[metric], s=14, alpha=0.7, color="tab:blue", label="trials")
            if robust_runs is not None:
                # Seed bands: mean +- std of each re-run config, at its parameter value.
                for _, variant in robust_summary(robust_runs, metric, mode).iterrows():
                    runs = robust_runs.trials[
                        robust_runs.trials[run_column("variant")] == variant["variant"]
                    ]
                    value = runs.iloc[0][column]
                    ax.errorbar(
                        [value if numeric else str(value)],
                        [variant["mean"]],
                        yerr=[variant["std"]],
                        fmt="o",
                        color="tab:red",
                        ms=4,
                        capsize=3,
                    )
            dist = distributions.get(name)
            if numeric and getattr(dist, "log", False):
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(name)
            if c == 0:
                ax.set_ylabel(f"{metric} ({mode})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def degeneracy_table(study: StudyRuns, importance: pd.DataFrame) -> pd.DataFrame:
    """Share of degenerate trials over the two most important numeric parameters, each cut
    into (at most) three quantile bins."""
    done = study.trials[study.trials["status"] == "FINISHED"]
    if done.empty or "degenerate" not in done:
        return pd.DataFrame()
    numeric = [c for c in study.searched_params() if pd.api.types.is_numeric_dtype(done[c])]
    if len(numeric) < 2:
        return pd.DataFrame()
    if not importance.empty:
        order = importance.iloc[:, 0].sort_values(ascending=False).index
        numeric = sorted(
            numeric,
            key=lambda c: list(order).index(param_name(c)) if param_name(c) in order else 99,
        )
    a, b = numeric[:2]
    frame = pd.DataFrame(
        {
            param_name(a): pd.qcut(done[a].astype(float), 3, duplicates="drop"),
            param_name(b): pd.qcut(done[b].astype(float), 3, duplicates="drop"),
            "degenerate": done["degenerate"].astype(float),
        }
    )
    return frame.pivot_table(
        index=frame.columns[0],
        columns=frame.columns[1],
        values="degenerate",
        aggfunc="mean",
        observed=True,
    )


def pareto_plot(study: StudyRuns, path: Path) -> Path | None:
    objectives = study.objectives
    if len(objectives) != 2:
        return None
    done = ranked(study)
    (m1, d1), (m2, d2) = objectives
    done = done[has_value(done[m2])]
    if done.empty:
        return None
    plt = _plt()
    values = done[[m1, m2]].to_numpy(float)
    front = pareto_mask(values, [d1, d2])
    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    ax.scatter(values[~front, 0], values[~front, 1], s=14, color="tab:gray", label="dominated")
    order = np.argsort(values[front, 0])
    ax.plot(
        values[front, 0][order],
        values[front, 1][order],
        "o-",
        color="tab:red",
        ms=5,
        label="Pareto front",
    )
    ax.set_xlabel(f"{m1} ({d1})")
    ax.set_ylabel(f"{m2} ({d2})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _table(frame: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    if frame is None or frame.empty:
        return "<p><em>not enough data</em></p>"
    return frame.to_html(
        float_format=lambda v: floatfmt.format(v), border=0, classes="t", na_rep="–"
    )


def build_report(name: str, tracking_uri: str | None, experiment: str, out_dir: str | Path) -> Path:
    """Write `out_dir/index.html` with its plots; built aside and renamed into place."""
    study = load_study(name, tracking_uri, experiment)
    if study.trials.empty:
        raise UserError(f"name: study {name!r} has no trial runs yet; run or resume it first")
    try:
        robust_runs = load_study(f"{name}-robust", tracking_uri, experiment)
    except UserError:
        robust_runs = None
    with atomic_directory(out_dir) as staging:
        _write_report(study, robust_runs, staging)
    return Path(out_dir) / "index.html"


def _write_report(study: StudyRuns, robust_runs: StudyRuns | None, out: Path) -> None:
    metric, mode = study.objectives[0]
    distributions = distributions_of(study)
    importance = importances(optuna_study(study, distributions), study.objectives)
    robust = robust_summary(robust_runs, metric, mode) if robust_runs is not None else None
    sections = [
        *_overview(study),
        _best_trials(study),
        *_robustness(robust_runs, robust, metric, mode),
        *_figures(study, distributions, importance, robust_runs, out),
        *_best_images(study, out),
    ]
    (out / "index.html").write_text(_page(study, sections))


def _overview(study: StudyRuns) -> list[str]:
    trials = study.trials
    counts = trials["status"].value_counts().to_dict()
    diverged = int(trials.get("diverged", pd.Series(dtype=float)).fillna(0).sum())
    degenerate = trials.get("degenerate", pd.Series(dtype=float))
    sections = [
        f"<p>{len(trials)} trials ({', '.join(f'{k.lower()} {v}' for k, v in counts.items())}); "
        f"diverged {diverged}; degenerate {int(degenerate.fillna(0).sum())}. "
        f"Objectives: {', '.join(f'{m} ({d})' for m, d in study.objectives)}.</p>"
    ]
    if "content_acc_grouped" in trials:
        sections.append(f"<p class=note>{html.escape(GROUPED_NOTE)}</p>")
    return sections


def _best_trials(study: StudyRuns) -> str:
    done = ranked(study)
    columns = [
        "trial_id",
        *[m for m, _ in study.objectives],
        *[c for c in ("degenerate", "diverged", "epoch") if c in done],
        *study.searched_params(),
    ]
    table = (
        done[columns].head(10).rename(columns=lambda c: param_name(c) or c).set_index("trial_id")
    )
    return "<h2>Best trials</h2>" + _table(table)


def _robustness(
    robust_runs: StudyRuns | None, robust: pd.DataFrame | None, metric: str, mode: str
) -> list[str]:
    if robust_runs is None or robust is None:
        return []
    sections = [
        f"<h2>Seed robustness ({html.escape(robust_runs.name)})</h2><p>Each config re-run with new seeds; "
        f"robust score = mean {'−' if mode == 'max' else '+'} std of {metric}; 95% t-interval.</p>"
        + _table(robust.drop(columns=["example_run"]))
    ]
    if not robust.empty:
        best = robust.iloc[0]
        sections.append(
            f"<p><b>robust-best:</b> {html.escape(str(best['variant']))} (score {best['robust_score']:.4f})</p>"
        )
    return sections


def _figures(
    study: StudyRuns,
    distributions: dict[str, od.BaseDistribution],
    importance: pd.DataFrame,
    robust_runs: StudyRuns | None,
    out: Path,
) -> list[str]:
    """Importance, slices, the Pareto front and degeneracy; a figure the data cannot fill
    is left out."""
    sections = [
        "<h2>Hyperparameter importance</h2><p>Optuna's fANOVA evaluator on the finished trials.</p>"
        + _table(importance)
    ]
    if slice_plot(study, distributions, robust_runs, out / "slices.png"):
        sections.append(
            "<h2>Slices</h2><p>Objective against each searched parameter (blue: trials; red: mean ± std over seeds of re-run configs).</p><img src='slices.png'>"
        )
    if pareto_plot(study, out / "pareto.png"):
        sections.append("<h2>Pareto front</h2><img src='pareto.png'>")
    degeneracy = degeneracy_table(study, importance)
    if not degeneracy.empty:
        sections.append(
            "<h2>Degeneracy rate by region</h2><p>Share of trials flagged degenerate, by quantile bins of the two most important parameters.</p>"
            + _table(degeneracy, "{:.2f}")
        )
    return sections


def _best_images(study: StudyRuns, out: Path) -> list[str]:
    """The best trial's image grids, downloaded from its run's artifacts."""
    done = ranked(study)
    if done.empty:
        return []
    best = done.iloc[0]
    images = out / "images"
    images.mkdir()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = records.open_client(study.tracking_uri)
    # A report without pictures is still a report.
    with contextlib.suppress(Exception):
        client.download_artifacts(best["run_id"], "images", str(out))
    pictures = sorted(p.name for p in images.glob("*.png"))
    if not pictures:
        return []
    figures = "".join(
        f"<figure><img src='images/{p}'><figcaption>{p[:-4]}</figcaption></figure>"
        for p in pictures
    )
    return [
        f"<h2>Best trial {html.escape(str(best['trial_id']))}</h2><div class=row>{figures}</div>"
    ]


def _page(study: StudyRuns, sections: list[str]) -> str:
    return f"""<!doctype html><html><head><meta charset=utf-8><title>{html.escape(study.name)} – Latent Studies report</title>
<style>body{{font:14px system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}}table.t{{border-collapse:collapse}}
table.t td,table.t th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}}.note{{color:#865}}
img{{max-width:100%}}.row{{display:flex;gap:1em;flex-wrap:wrap}}figure{{margin:0}}</style></head><body>
<h1>{html.escape(study.name)}: {html.escape(study.family)}</h1>{"".join(sections)}
<p><small>Generated by latent-studies from MLflow run {html.escape(study.parent.run_id)}.</small></p></body></html>"""
