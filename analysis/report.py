"""`study report`: how robust a study's result is, as an HTML page and the same in Markdown,
from what MLflow recorded (the study, and its `<study>-robust` re-runs when they exist).

The figures are computed by analysis.robustness (the notebook shows the same ones); this
module only lays them out. The report is written aside and renamed into place, then logged
to the study's parent run with its figures as metrics.
"""

from __future__ import annotations

import contextlib
import html
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import figures, records
from analysis.records import param_name
from analysis.robustness import StudyAnalysis, analyse, search_luck_metrics, search_luck_of
from analysis.runs import StudyRuns, has_value, load_study, ranked
from analysis.stats import RESAMPLES
from trainables.errors import UserError
from trainables.io import atomic_directory

GROUPED_NOTE = (
    "content_acc_grouped accumulates class evidence over test groups whose members share a "
    "label (ML-VAE's setting provides group ids), which makes it easy to overrate; compare "
    "content_acc_single."
)
REPORT_ARTIFACTS = "report"  # where the parent run keeps the latest report
BUDGET_KS = (1, 2, 5, 10, 20, 50)


@dataclass
class Section:
    """One part of the report, rendered to HTML and Markdown alike."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    table: pd.DataFrame | None = None
    images: list[str] = field(default_factory=list)  # paths relative to the report


def load_analysis(
    name: str,
    tracking_uri: str | None,
    experiment: str = records.DEFAULT_EXPERIMENT,
    robust_name: str | None = None,
) -> StudyAnalysis:
    """Study `name` and its seed re-runs (`<name>-robust` unless named), analysed."""
    study = load_study(name, tracking_uri, experiment)
    if study.trials.empty:
        raise UserError(f"name: study {name!r} has no trial runs yet; run or resume it first")
    try:
        robust = load_study(robust_name or f"{name}-robust", tracking_uri, experiment)
    except UserError:
        robust = None
    return analyse(study, robust)


def headline(found: StudyAnalysis) -> list[str]:
    """The robust-best and the config-vs-seed share, one line each (what `study robustness`
    prints when its re-runs finish)."""
    lines = []
    best = found.robust_best
    if best is not None:
        lines.append(
            f"robust-best: {best['variant']}  {found.metric} {best['mean']:.4f} "
            f"[{best['low']:.4f}, {best['high']:.4f}] over {int(best['n'])} seeds"
        )
    if found.luck is not None:
        share = found.luck
        lines.append(
            f"luck: {share.config_share:.0%} of {found.metric}'s variance is the config's "
            f"(95% interval {share.low:.0%} to {share.high:.0%}), {share.seed_share:.0%} the seed's"
        )
    return lines


def build_report(
    name: str,
    tracking_uri: str | None,
    experiment: str,
    out_dir: str | Path,
    notebook: bool = False,
) -> Path:
    """Write `out_dir/index.html` and `report.md` with their figures (and, with `notebook`,
    an executed copy of the robustness notebook), then log them and the figures' numbers
    to the study's parent run."""
    found = load_analysis(name, tracking_uri, experiment)
    with atomic_directory(out_dir) as staging:
        sections = report_sections(found, staging)
        (staging / "index.html").write_text(render_html(found, sections))
        (staging / "report.md").write_text(render_markdown(found, sections))
        if notebook:
            from analysis.notebook import execute_notebook

            execute_notebook(
                name, found.study.tracking_uri, experiment, staging / "robustness.ipynb"
            )
    record_analysis(found, Path(out_dir))
    return Path(out_dir) / "index.html"


def record_analysis(found: StudyAnalysis, report_dir: Path | None = None) -> None:
    """The analysis's figures as metrics of the study's parent run, and the report (when
    written) as its artifacts under `report/`."""
    from mlflow.entities import Metric

    client = records.open_client(found.study.tracking_uri)
    stamp = int(time.time() * 1000)
    metrics = [Metric(k, v, stamp, 0) for k, v in found.parent_metrics().items()]
    metrics += [Metric(k, v, stamp, step) for k, v, step in found.stepped_metrics()]
    if metrics:
        client.log_batch(found.study.parent.run_id, metrics=metrics)
    if report_dir is not None:
        client.log_artifacts(found.study.parent.run_id, str(report_dir), REPORT_ARTIFACTS)


def record_search_luck(
    name: str, tracking_uri: str | None, experiment: str = records.DEFAULT_EXPERIMENT
) -> pd.DataFrame:
    """The share across the search of study `name` (search_luck_of) as metrics of its
    parent run, step = epoch, without the rest of the analysis: what `study run` records
    when its trials have seed replicas. Returns the table (empty, and nothing logged, for a
    study without replicas)."""
    from mlflow.entities import Metric

    study = load_study(name, tracking_uri, experiment)
    table = search_luck_of(study)
    stamp = int(time.time() * 1000)
    metrics = [Metric(k, v, stamp, step) for k, v, step in search_luck_metrics(table)]
    if metrics:
        records.open_client(study.tracking_uri).log_batch(study.parent.run_id, metrics=metrics)
    return table


# --- the sections ---------------------------------------------------------------------------
def report_sections(found: StudyAnalysis, out: Path) -> list[Section]:
    """Every section the data can fill; figures are saved into `out`."""
    parts = [
        _overview(found.study),
        _best_trials(found.study),
        *_one_seed_or_all(found.study),
        *_search_luck(found, out),
        *_seeds(found, out),
        *_luck(found),
        _budget(found, out),
        _importance(found),
        *_slices(found, out),
        *_pareto(found.study, out),
        *_degeneracy(found, out),
        *_best_images(found.study, out),
    ]
    return [p for p in parts if p is not None]


def _save(figure, out: Path, name: str) -> str:
    figure.savefig(out / name, dpi=90)
    return name


def _overview(study: StudyRuns) -> Section:
    trials = study.trials
    counts = trials["status"].value_counts().to_dict()
    # Counted per seed: a replicated trial's own `diverged` is the share of its seeds.
    runs = study.per_seed().trials
    diverged = int(runs.get("diverged", pd.Series(dtype=float)).fillna(0).sum())
    degenerate = int(runs.get("degenerate", pd.Series(dtype=float)).fillna(0).sum())
    statuses = ", ".join(f"{k.lower()} {v}" for k, v in counts.items())
    objectives = ", ".join(f"{m} ({d})" for m, d in study.objectives)
    flagged = f"diverged {diverged}; degenerate {degenerate}"
    if study.seeds > 1:
        flagged = (
            f"each trained with {study.seeds} seed replicas; of their {len(runs)} seed runs "
            + flagged
        )
    text = [f"{len(trials)} trials ({statuses}); {flagged}. Objectives: {objectives}."]
    if "content_acc_grouped" in trials:
        text.append(GROUPED_NOTE)
    return Section("Overview", text)


def _best_trials(study: StudyRuns) -> Section:
    done = ranked(study)
    column, mode = study.ranked_by
    objectives = [m for m, _ in study.objectives]
    columns = [
        "trial_id",
        *objectives,
        *([column] if column not in objectives else []),
        *[c for c in ("degenerate", "diverged", "epoch") if c in done],
        *study.searched_params(),
    ]
    table = (
        done[columns].head(10).rename(columns=lambda c: param_name(c) or c).set_index("trial_id")
    )
    return Section("Best trials", ranking_note(study), table)


def ranking_note(study: StudyRuns) -> list[str]:
    """Which value the trials are ranked by, when it is not the first objective itself."""
    column, mode = study.ranked_by
    metric = study.objectives[0][0]
    if column == metric:
        return []
    end = "lower" if mode == "max" else "upper"
    return [
        f"Ranked by {column}, the {end} end of the 95% bootstrap interval of {metric}'s mean "
        f"over each trial's {study.seeds} seeds: what the search optimised "
        "(`--seed-aggregate bound`). The table's objectives are the seeds' means."
    ]


def _one_seed_or_all(study: StudyRuns) -> list[Section]:
    """For a study whose trials trained seed replicas: would scoring each config on one
    seed, as a search without replicas does, have picked the same winner?"""
    from analysis.seeds import single_seed_rankings

    if study.seeds < 2:
        return []
    metric, mode = study.objectives[0]
    column, _ = study.ranked_by
    table = single_seed_rankings(ranked(study), metric, mode, column)
    if table.empty:
        return []
    same = int((table[f"winner's rank by {column}"] == 1).sum())
    text = [
        f"Each row is the search this study would have been with one seed per trial: the "
        f"trial that seed alone ranks first by {metric}, where that trial stands by "
        f"{column}, and Kendall's tau between the two orders. {same} of {len(table)} seeds "
        "pick the same winner."
    ]
    return [Section("One seed or all of them", text, table.set_index("seed"))]


def _search_luck(found: StudyAnalysis, out: Path) -> list[Section]:
    """The config-against-seed share across the search, from the trials' own replicas."""
    table, study = found.search_luck, found.study
    if table.empty:
        return []
    epochs = sorted(table["epoch"].unique())
    text = [
        "The share of one run's variance that is the config's rather than the seed's, "
        f"across the search: each trial's {study.seeds} seed replicas at the same epoch are "
        "runs of its config. ICC(1) (a one-way random-effects decomposition) with its 95% F "
        "interval (`low`, `high`), one epoch at a time: epochs are never pooled, since a "
        "trial's epochs differ by training, not by seed. `trials`: those that reached the "
        "epoch; `runs`: their finite seed values. The parent run records "
        "`M_search_config_share` (`_low`, `_high`, `_config_variance`, `_seed_variance`) at "
        "MLflow step = epoch."
    ]
    if len(epochs) > 1:
        text.append(
            f"Epochs {', '.join(str(e) for e in epochs)} are those at which the study compared "
            "its trials: ASHA's rungs, then the last epoch. A rung's trials are those that "
            "reached it; ASHA promotes the better ones, so a later rung's share is among "
            "fewer, better configs, nearer the optimum's. Values before the last epoch come "
            "from the quick evaluation (smaller subsets), the ones ASHA compared."
        )
    last = table[(table["metric"] == found.metric) & (table["epoch"] == epochs[-1])]
    if not last.empty and math.isfinite(last.iloc[0]["config_share"]):
        row = last.iloc[0]
        text.append(
            f"**At epoch {int(row['epoch'])}, {row['config_share']:.0%} of {found.metric}'s "
            f"variance is the config's** (95% interval {row['low']:.0%} to {row['high']:.0%}, "
            f"{int(row['trials'])} trials), {1 - row['config_share']:.0%} the seed's."
        )
    image = _save(figures.search_luck_figure(table), out, "search_luck.png")
    return [
        Section(
            "How much is luck across the search",
            text,
            table.set_index(["metric", "epoch"]),
            [image],
        )
    ]


def _seeds(found: StudyAnalysis, out: Path) -> list[Section]:
    seeds, metric, mode = found.seeds, found.metric, found.mode
    if seeds.empty:
        rerun = (
            f"`study robustness {found.study.name}` re-runs the best configs with new seeds, "
            "and this report then ranks them by a robust score."
        )
        if not found.search_luck.empty:
            text = (
                f"The trials' own {found.study.seeds} seed replicas are analysed in “How much "
                "is luck across the search”. No config has been re-run with new seeds yet: " + rerun
            )
        else:
            text = f"No seed re-runs yet: {rerun}"
        return [Section("Seed robustness", [text])]
    bound = "lower" if mode == "max" else "upper"
    n_seeds = int(seeds["n"].max())
    best = seeds.iloc[0]
    text = [
        f"Each config re-run with new seeds ({found.robust.name}). Intervals: 95% percentile "
        f"bootstrap of the mean over seeds ({RESAMPLES} resamples), inside {metric}'s range. "
        f"Robust score = the interval's {bound} end, so a config whose mean rests on one lucky "
        f"seed ranks below a steadier one. With {n_seeds} seeds an interval shows the spread "
        "the seeds had (about 0.4 of a t-interval's width at 3 seeds), not a guarantee.",
        f"**Robust-best: {best['variant']}**: {metric} {best['mean']:.4f} "
        f"[{best['low']:.4f}, {best['high']:.4f}] over {int(best['n'])} seeds "
        f"(`study export {found.study.name}` writes it as robust-best.yaml).",
    ]
    tied = seeds[(seeds["robust_score"] == best["robust_score"]) & (seeds["mean"] == best["mean"])]
    if len(tied) > 1:
        ceiling = found.robust.parent.metric_range(metric)[1 if mode == "max" else 0]
        at_ceiling = ceiling is not None and best["mean"] == ceiling
        text.append(
            f"{len(tied)} configs tie at the top ({', '.join(tied['variant'])})"
            + (
                f": {metric} is at its ceiling, so it no longer tells them apart."
                if at_ceiling
                else "."
            )
        )
    if "in_search" in seeds:
        top = seeds[seeds["variant"] == "top1"]
        if not top.empty and math.isfinite(top.iloc[0]["in_search"]):
            row = top.iloc[0]
            text.append(
                f"The search's best (top1) scored {row['in_search']:.4f} in the search; "
                f"re-run with new seeds it averages {row['mean']:.4f}: the difference is "
                "what the search's pick owed to its seed."
            )
    columns = [c for c in ("variant", "n", "mean", "low", "high", "std", "in_search") if c in seeds]
    table = seeds[columns].set_index("variant")
    image = _save(figures.seed_figure(seeds, metric, mode), out, "seeds.png")
    return [Section("Seed robustness", text, table, [image])]


def _luck(found: StudyAnalysis) -> list[Section]:
    share = found.luck
    if share is None:
        return []
    text = [
        f"Of the variance of {found.metric} over the re-runs ({share.configs} configs, "
        f"{share.runs} runs), **{share.config_share:.0%} is the config's** "
        f"(95% interval {share.low:.0%} to {share.high:.0%}) and "
        f"{share.seed_share:.0%} the seed's: a one-way random-effects decomposition, the "
        "intraclass correlation ICC(1) with its F interval.",
        "The configs are the best few and their neighbours, not a random draw from the "
        "space, so this is the seed's weight near the optimum; across the whole space the "
        "config's share is larger"
        + (
            " (“How much is luck across the search” measures it from the trials' replicas)"
            if not found.search_luck.empty
            else ""
        )
        + ". A wide interval says more seeds or configs are needed.",
    ]
    table = pd.DataFrame(
        {
            "value": [
                share.config_share,
                share.low,
                share.high,
                share.config_variance,
                share.seed_variance,
                share.seeds_per_config,
            ]
        },
        index=[
            "config share (ICC)",
            "interval low",
            "interval high",
            "config variance",
            "seed variance",
            "seeds per config",
        ],
    ).rename_axis("figure")
    return [Section("How much is luck near the optimum", text, table)]


def _budget(found: StudyAnalysis, out: Path) -> Section:
    budget, metric = found.budget, found.metric
    n = len(budget.expected_best)
    if n == 0:
        return Section("Budget", ["No finished trial with a value yet."])
    ks = [k for k in BUDGET_KS if k <= n] + ([n] if n not in BUDGET_KS else [])
    table = pd.DataFrame(
        {
            "expected best of k": [budget.at(k) for k in ks],
            "best so far (as run)": [float(budget.band.observed[k - 1]) for k in ks],
            "orderings: 2.5%": [float(budget.band.low[k - 1]) for k in ks],
            "orderings: 97.5%": [float(budget.band.high[k - 1]) for k in ks],
        },
        index=pd.Index(ks, name="k"),
    )
    text = [
        f"Best {metric} so far against the number of trials, as the study ran them and over "
        f"random orderings of its {n} finished trials (median, 95% band); dashed: the "
        "expected best of k configurations picked at random from them (Dodge et al., 2019). "
        "Where the curve is still rising at the last trial, more trials would pay; the "
        "sampler's later trials depend on its earlier ones, which the orderings ignore.",
    ]
    image = _save(
        figures.budget_figure(budget.band, budget.expected_best, metric, found.mode),
        out,
        "budget.png",
    )
    return Section("Budget", text, table, [image])


def _importance(found: StudyAnalysis) -> Section:
    found_importance = found.importance
    text = [
        "Optuna's fANOVA and PED-ANOVA evaluators side by side, on the sampler's own study "
        "when it was recorded. " + found_importance.note
    ]
    seeds = found.study.seeds
    if seeds > 1:
        text.append(
            f"They see each trial's value as the searcher did: the mean of its {seeds} seeds, "
            "or with `--seed-aggregate bound` the pessimistic end of its interval (a study "
            "rebuilt from MLflow, without the sampler's own, reads the mean). The seed noise "
            f"is averaged over {seeds} seeds, not removed"
            + (
                ": “How much is luck across the search” says how much of one run's variance "
                "is the seed's."
                if not found.search_luck.empty
                else "."
            )
        )
    table = found_importance.table if found_importance.reliable else None
    return Section("Hyperparameter importance", text, table)


def _slices(found: StudyAnalysis, out: Path) -> list[Section]:
    figure = found.slice_figure()
    if figure is None:
        return []
    seeds = found.study.seeds
    trials = (
        f"each trial's mean over its {seeds} seeds with their 95% bootstrap interval as a "
        "bar (seed bands)"
        if seeds > 1
        else "trials"
    )
    text = (
        "Each objective against each searched parameter, most important first (blue: "
        f"{trials}; red: each re-run config's mean and 95% interval over seeds)."
    )
    return [Section("Slices", [text], None, [_save(figure, out, "slices.png")])]


def _pareto(study: StudyRuns, out: Path) -> list[Section]:
    objectives = study.objectives
    if len(objectives) != 2:
        return []
    done = ranked(study)
    done = done[has_value(done[objectives[1][0]])]
    if done.empty:
        return []
    values = done[[m for m, _ in objectives]].to_numpy(float)
    image = _save(figures.pareto_figure(values, objectives), out, "pareto.png")
    return [Section("Pareto front", [], None, [image])]


def _degeneracy(found: StudyAnalysis, out: Path) -> list[Section]:
    found_map = found.degeneracy
    if found_map is None:
        return []
    pooled = "search trials and seed re-runs" if found.robust is not None else "search trials"
    title = f"share of degenerate runs ({pooled})"
    image = _save(found_map.figure(title), out, "degeneracy.png")
    seeds = found.study.seeds
    counted = (
        f"each seed a run: a trial with {seeds} replicas counts as {seeds} runs; n = seed runs "
        "per cell"
        if seeds > 1
        else "each seed a run; n = runs per cell"
    )
    text = [
        f"Share of finished runs flagged degenerate by cells of {found_map.x} and "
        f"{found_map.y} ({pooled}, {counted}). The two parameters "
        "are the most important ones when importance is reliable, else the space's first two."
    ]
    return [Section("Degeneracy by region", text, found_map.share, [image])]


def _best_images(study: StudyRuns, out: Path) -> list[Section]:
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
    pictures = sorted(f"images/{p.name}" for p in images.glob("*.png"))
    if not pictures:
        return []
    return [Section(f"Best trial {best['trial_id']}", [], None, pictures)]


# --- rendering ------------------------------------------------------------------------------
def _number(value) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _html_text(text: str) -> str:
    """Escaped, with **bold** and `code` spans."""
    import re

    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def render_html(found: StudyAnalysis, sections: list[Section]) -> str:
    study = found.study
    body = []
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        body.extend(f"<p>{_html_text(p)}</p>" for p in section.paragraphs)
        if section.table is not None and not section.table.empty:
            body.append(
                section.table.to_html(
                    float_format=_number, border=0, classes="t", na_rep="–", escape=True
                )
            )
        if section.images:
            body.append(
                "<div class=row>"
                + "".join(
                    f"<figure><img src='{html.escape(i)}'><figcaption>"
                    f"{html.escape(Path(i).stem)}</figcaption></figure>"
                    for i in section.images
                )
                + "</div>"
            )
    return f"""<!doctype html><html><head><meta charset=utf-8><title>{html.escape(study.name)} – Latent Studies report</title>
<style>body{{font:14px system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}}table.t{{border-collapse:collapse}}
table.t td,table.t th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}}code{{background:#f4f4f4}}
img{{max-width:100%}}.row{{display:flex;gap:1em;flex-wrap:wrap}}figure{{margin:0}}</style></head><body>
<h1>{html.escape(study.name)}: {html.escape(study.family)}</h1>{"".join(body)}
<p><small>Generated by latent-studies from MLflow run {html.escape(study.parent.run_id)}.</small></p></body></html>"""


def markdown_table(table: pd.DataFrame) -> str:
    frame = table.reset_index()
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(_number(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([header, rule, *rows])


def render_markdown(found: StudyAnalysis, sections: list[Section]) -> str:
    study = found.study
    lines = [f"# {study.name}: {study.family}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        if section.table is not None and not section.table.empty:
            lines += [markdown_table(section.table), ""]
        lines += [f"![{Path(i).stem}]({i})" for i in section.images]
        if section.images:
            lines.append("")
    lines.append(f"Generated by latent-studies from MLflow run {study.parent.run_id}.")
    return "\n".join(lines) + "\n"
