"""Reproduction presets, run: `study train --preset NAME` and `study reproduce`.

Each variant's seeds train as one run of seed replicas (`study train --seeds`), written as an
ordinary `study train` output directory `<out>/<variant>/seeds<A>-<B>` (or `seed<A>`), whole
or not at all, with the commit, packages and device it was made with. A rerun with the same
`--out` keeps every finished run and trains only the seeds that no run holds yet, so more
seeds can be added later, and an interrupted reproduction loses at most the run in progress.

The summary (`summary.json`, `summary.md`, the preset's figures) is written last,
atomically: per variant and metric, the mean over seeds and its 95% percentile-bootstrap
interval (analysis/stats.py, the same interval as every report of this tool).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from analysis import records, reproductions
from study.presets import Preset, Variant, matches
from study.provenance import PROVENANCE_FILE
from study.spec import TrainSpec
from study.train import HISTORY_FILE
from trainables.errors import ConfigError
from trainables.metrics import metric_declaration, metric_range

SUMMARY_FILE = "summary.json"
INTERVAL = "mean [95% percentile-bootstrap interval of the mean over seeds]"
# Run settings that must agree for a kept run to count towards a rerun's seeds.
SAME_SETTINGS = ("family", "dataset", "epochs", "precision", "params")
# Without a measured time, a seed-epoch is guessed at this; the guess is corrected by
# every run that finishes (TimeLeft).
GUESS_SECONDS_PER_SEED_EPOCH = 30.0


def default_out_dir(preset: Preset) -> Path:
    return Path("runs") / "presets" / f"{preset.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def seed_dirname(first: int, count: int) -> str:
    return f"seed{first}" if count == 1 else f"seeds{first}-{first + count - 1}"


@dataclass
class Job:
    """Seeds of one variant still to train, as one run of replicas."""

    variant: Variant
    spec: TrainSpec
    run_dir: Path
    estimate: float


@dataclass
class TimeLeft:
    """The estimated seconds left: what the remaining runs were guessed to take, scaled by
    how long the finished runs took against their own guesses (so a machine twice as fast
    as the guess's shows half the time after its first run)."""

    guessed_left: float
    guessed_done: float = 0.0
    measured_done: float = 0.0

    def finished(self, job: Job, seconds: float | None) -> None:
        self.guessed_left -= job.estimate
        if seconds is not None:  # a kept run says nothing of this machine's speed
            self.guessed_done += job.estimate
            self.measured_done += seconds

    @property
    def seconds(self) -> float:
        pace = self.measured_done / self.guessed_done if self.guessed_done else 1.0
        return max(self.guessed_left, 0.0) * pace

    def text(self) -> str:
        minutes = self.seconds / 60
        return f"about {minutes:.0f} min left" if minutes >= 1 else "under a minute left"


@dataclass
class PresetPlan:
    """A preset's runs: those kept from an earlier call and the jobs still to train."""

    preset: Preset
    specs: list[tuple[Variant, TrainSpec]]
    out_dir: Path
    seeds: list[int]
    kept: dict[str, list[Path]] = field(default_factory=dict)
    jobs: list[Job] = field(default_factory=list)


def plan_preset(
    preset: Preset, specs: list[tuple[Variant, TrainSpec]], out_dir: Path
) -> PresetPlan:
    """What is kept under `out_dir` and what is left to train, for one spec per variant
    (seed = the first seed, seeds = how many). A kept run made with other settings is
    refused: its seeds would be summarised beside runs of another experiment."""
    first, count = specs[0][1].seed, specs[0][1].seeds
    plan = PresetPlan(preset, specs, out_dir, list(range(first, first + count)))
    per_seed_epoch = _seconds_per_seed_epoch(preset)
    for variant, spec in specs:
        variant_dir = out_dir / variant.dirname
        held: set[int] = set()
        plan.kept[variant.name] = []
        for run_dir in sorted(variant_dir.glob("seed*")) if variant_dir.is_dir() else []:
            seeds = _kept_seeds(run_dir, spec)
            if seeds and set(seeds) & set(plan.seeds):
                plan.kept[variant.name].append(run_dir)
                held.update(seeds)
        for start, length in _ranges([s for s in plan.seeds if s not in held]):
            job_spec = TrainSpec(**{**spec.to_dict(), "seed": start, "seeds": length})
            plan.jobs.append(
                Job(
                    variant,
                    job_spec,
                    variant_dir / seed_dirname(start, length),
                    per_seed_epoch * spec.epochs * length,
                )
            )
    return plan


def _seconds_per_seed_epoch(preset: Preset) -> float:
    if not preset.cpu_minutes:
        return GUESS_SECONDS_PER_SEED_EPOCH
    return preset.cpu_minutes * 60 / (len(preset.variants) * preset.seeds * preset.epochs)


def _kept_seeds(run_dir: Path, spec: TrainSpec) -> list[int]:
    """The seeds a finished run under `run_dir` holds (none for an unfinished one)."""
    config_file = run_dir / "config.yaml"
    if not (run_dir / "metrics.json").is_file() or not config_file.is_file():
        return []
    config = yaml.safe_load(config_file.read_text()) or {}
    wanted = spec.to_dict()
    wanted["params"] = _without_new_defaults(spec, config.get("params") or {})
    for key in SAME_SETTINGS:
        if config.get(key) != wanted[key]:
            raise ConfigError(
                f"out: {run_dir} holds a run with another {key} ({_short(config.get(key))}, "
                f"not {_short(wanted[key])}); choose another --out or remove it"
            )
    first = int(config.get("seed", 0))
    return list(range(first, first + int(config.get("seeds", 1))))


def _without_new_defaults(spec: TrainSpec, kept: dict[str, Any]) -> dict[str, Any]:
    """`spec`'s parameters less those a kept run predates (a field added since, `arch`)
    that hold the field's default: the run trained what the default trains."""
    from trainables import get_family

    defaults = get_family(spec.family).make_config({})
    return {
        name: value
        for name, value in spec.params.items()
        if name in kept or not _is_default(defaults, name, value)
    }


def _is_default(defaults: Any, name: str, value: Any) -> bool:
    default = getattr(defaults, name, None)
    return value == default or (isinstance(default, tuple) and list(default) == value)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _ranges(seeds: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of `seeds` as (first, count)."""
    runs: list[tuple[int, int]] = []
    for seed in sorted(seeds):
        if runs and runs[-1][0] + runs[-1][1] == seed:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((seed, 1))
    return runs


def reproduce(
    preset: Preset,
    specs: list[tuple[Variant, TrainSpec]],
    out_dir: str | Path | None = None,
    device: str = "auto",
    data_dir: str | None = None,
    download: bool = False,
    echo: Callable[[str], None] = print,
) -> tuple[dict[str, Any], Path]:
    """Train what `specs` (one per variant) still lack under `out_dir`, then summarise."""
    plan = plan_preset(preset, specs, Path(out_dir) if out_dir else default_out_dir(preset))
    clock = TimeLeft(sum(job.estimate for job in plan.jobs))
    summary = run_plans([plan], clock, device, data_dir, download, echo)[0]
    return summary, plan.out_dir


def run_plans(
    plans: list[PresetPlan],
    clock: TimeLeft,
    device: str,
    data_dir: str | None,
    download: bool,
    echo: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Train every plan's jobs in turn, with a line per run and the time left, and write
    each preset's summary once its runs are done."""
    from study.train import load_spec_dataset, train_once

    total = sum(len(p.jobs) for p in plans)
    # Every dataset a run needs, loaded (or refused, in one line) before anything is said
    # or trained: the presets of one call share them.
    datasets = {}
    for plan in plans:
        spec = plan.specs[0][1]
        key = (spec.dataset, spec.image_size, spec.color, plan.preset.shapes)
        if plan.jobs and key not in datasets:
            where = data_dir
            if (
                plan.preset.shapes is not None
                and spec.dataset == "dsprites"
                and not holds_dsprites(data_dir)
            ):
                where = str(rendered_shapes(plan.preset.shapes, echo))
            datasets[key] = load_spec_dataset(spec, where, download, device)
    echo(
        f"{len(plans)} preset{'' if len(plans) == 1 else 's'}, {total} run"
        f"{'' if total == 1 else 's'} to train ({clock.text()} by the presets' sizes)"
    )
    done = 0
    summaries = []
    for plan in plans:
        preset, kept = plan.preset, sum(map(len, plan.kept.values()))
        epochs = plan.specs[0][1].epochs
        echo(
            f"{preset.name}: {len(plan.specs)} variants x {len(plan.seeds)} seeds x "
            f"{reproductions.epochs_text(epochs)}, {preset.family} on "
            f"{plan.specs[0][1].dataset}, into {plan.out_dir}"
            + (f" ({kept} runs kept)" if kept else "")
        )
        first = plan.specs[0][1]
        dataset = datasets.get((first.dataset, first.image_size, first.color, preset.shapes))
        for job in plan.jobs:
            started = time.perf_counter()
            metrics, _ = train_once(
                job.spec,
                out_dir=job.run_dir,
                progress=False,
                dataset=dataset,
                evaluate_at=(
                    [e for e in preset.eval_epochs if e < job.spec.epochs]
                    if preset.eval_epochs
                    else None
                ),
            )
            seconds = time.perf_counter() - started
            clock.finished(job, seconds)
            done += 1
            seeds = ", ".join(map(str, range(job.spec.seed, job.spec.seed + job.spec.seeds)))
            seeds = f"seed {seeds}" if job.spec.seeds == 1 else f"seeds {seeds}"
            echo(
                f"[{done}/{total}] {preset.name} {job.variant.name} {seeds}: "
                + ", ".join(
                    f"{m} {reproductions.metric_text(metrics.get(m))}" for m in preset.metrics
                )
                + f" ({seconds:.0f} s; {clock.text()})"
            )
            plan.kept[job.variant.name].append(job.run_dir)
        summary = summarise(plan)
        write_summary(summary, plan.out_dir)
        summaries.append(summary)
    return summaries


def holds_dsprites(data_dir: str | None) -> bool:
    """Whether `data_dir` holds a dSprites-format file, which a preset on rendered shapes
    then trains on (the official dSprites, or the user's own render)."""
    from trainables.shapes import FILE_PATTERN

    if not data_dir:
        return False
    root = Path(data_dir).expanduser()
    return any(any(d.glob(FILE_PATTERN)) for d in (root, root / "dsprites") if d.is_dir())


def rendered_shapes(grid, echo: Callable[[str], None]) -> Path:
    """The directory holding `grid`'s rendered shapes, rendered on first use into the
    cache: a reproduction on shapes needs no file of the user's, and renders the same
    bytes on every machine."""
    from trainables.data import cache_root
    from trainables.shapes import write_shapes

    directory = cache_root() / "shapes" / Path(grid.file_name).stem
    if not (directory / grid.file_name).is_file():
        started = time.perf_counter()
        write_shapes(directory, grid)
        echo(
            f"rendered {grid.count:,} shapes ({grid.file_name}) into {directory} in "
            f"{time.perf_counter() - started:.1f} s"
        )
    return directory


def published_settings() -> dict[str, dict[str, Any]]:
    """Each reproduction preset's `published` settings, by preset name."""
    from study.presets import all_presets

    return {p.name: p.published for p in all_presets() if p.kind == "reproduction"}


def publish(preset: Preset, summary: dict[str, Any], runs_dir: Path, docs_dir: Path) -> None:
    """Write the summary (json and md) and every figure of `preset` into `docs_dir`."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    for spec in summary["figures"]:
        name = reproductions.figure_file(spec)
        shutil.copyfile(runs_dir / name, docs_dir / f"{preset.name}-{name}")
    for panel in preset.published.get("panels", []):
        reproductions.draw_panel(
            summary, panel, runs_dir, docs_dir / f"{preset.name}-{panel['name']}.png"
        )
    write_atomically(docs_dir / f"{preset.name}.md", markdown(summary))
    write_atomically(
        docs_dir / f"{preset.name}.json", json.dumps(json_safe(summary), indent=2) + "\n"
    )


def publish_all(
    plans: list[PresetPlan],
    summaries: list[dict[str, Any]],
    docs_dir: Path,
    readme: Path | None,
) -> list[str]:
    """Publish every summary into `docs_dir` (with `changes.md`, the headline figures
    against the previous publication), then rewrite `readme`'s published blocks. Returns
    what was written, a line each."""
    for plan, summary in zip(plans, summaries, strict=True):
        publish(plan.preset, summary, plan.out_dir, docs_dir)
    write_atomically(
        docs_dir / f"{reproductions.CHANGES}.md",
        "# Headline figures against the previous publication\n\n"
        + reproductions.changes_block(docs_dir, published_settings())
        + "\n",
    )
    written = [f"published {len(summaries)} summaries with their figures into {docs_dir}"]
    if readme is not None:
        written.append(rewrite_readme_file(readme, docs_dir))
    return written


def check_readme(readme: Path) -> None:
    """Refuse, before any run, a README block that names nothing a preset publishes."""
    try:
        reproductions.check_blocks(readme.read_text(), published_settings())
    except KeyError as error:
        raise ConfigError(f"readme: {error.args[0]}") from None


def rewrite_readme_file(readme: Path, docs_dir: Path) -> str:
    """Render `readme`'s published blocks from the summaries in `docs_dir`, whole, then
    replace the file (a block that cannot be drawn leaves it as it was)."""
    text = readme.read_text()
    try:
        new = reproductions.rewrite_readme(text, docs_dir, readme.parent, published_settings())
    except (FileNotFoundError, KeyError) as error:
        raise ConfigError(f"readme: {error.args[0]}") from None
    if new != text:
        write_atomically(readme, new)
    blocks = len(reproductions.readme_blocks(text))
    return f"rewrote {blocks} published blocks of {readme}" + (
        "" if new != text else " (unchanged)"
    )


def run_seeds(run_dir: Path) -> list[int]:
    """The seeds a finished run holds, from its config."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    first = int(config.get("seed", 0))
    return list(range(first, first + int(config.get("seeds", 1))))


def seed_results(run_dir: Path, seeds: list[int]) -> dict[int, dict[str, float]]:
    """Each seed's metrics from one run (a solo run's, or a replica run's per-seed keys)."""
    return per_seed_metrics(json.loads((run_dir / "metrics.json").read_text()), seeds)


def seed_history(run_dir: Path, seeds: list[int]) -> dict[int, dict[int, dict[str, float]]]:
    """epoch -> seed -> metrics, from a run evaluated along the way (empty without)."""
    path = run_dir / HISTORY_FILE
    if not path.is_file():
        return {}
    return {
        entry["epoch"]: per_seed_metrics(entry["metrics"], seeds)
        for entry in json.loads(path.read_text())
    }


def per_seed_metrics(metrics: dict[str, float], seeds: list[int]) -> dict[int, dict[str, float]]:
    if len(seeds) == 1:
        return {seeds[0]: metrics}
    per_seed: dict[int, dict[str, float]] = {s: {} for s in seeds}
    for key, value in metrics.items():
        parsed = records.parse_seed_metric(key)
        if parsed:
            per_seed[parsed[0]][parsed[1]] = value
    return per_seed


def run_provenance(run_dir: Path) -> dict[str, Any]:
    path = run_dir / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def summarise(plan: PresetPlan) -> dict[str, Any]:
    preset = plan.preset
    variants = []
    made_with: list[dict[str, Any]] = []
    run_seconds = 0.0
    for variant, spec in plan.specs:
        per_seed: dict[int, dict[str, float]] = {}
        by_epoch: dict[int, dict[int, dict[str, float]]] = {}
        seconds = 0.0
        images = None  # the run whose first replica is the first seed drew its images
        for run_dir in plan.kept[variant.name]:
            seeds = run_seeds(run_dir)
            per_seed.update(seed_results(run_dir, seeds))
            for epoch, found in seed_history(run_dir, seeds).items():
                by_epoch.setdefault(epoch, {}).update(found)
            if seeds[0] == plan.seeds[0]:
                images = str(run_dir.relative_to(plan.out_dir) / "images")
            made = run_provenance(run_dir)
            seconds += made.get("wall_seconds", 0.0)
            made = {k: v for k, v in made.items() if k != "wall_seconds"}
            if made and made not in made_with:
                made_with.append(made)
        run_seconds += seconds
        metrics = seed_statistics(preset.metrics, [per_seed[s] for s in plan.seeds])
        history = [
            {
                "epoch": epoch,
                "metrics": seed_statistics(preset.metrics, [seeds[s] for s in plan.seeds]),
            }
            for epoch, seeds in sorted(by_epoch.items())
            if all(s in seeds for s in plan.seeds)
        ]
        reference = [
            entry["metrics"]
            for entry in preset.reference.get("figures", [])
            if matches(spec.params, entry["match"])
        ]
        variants.append(
            {
                "name": variant.name,
                "dirname": variant.dirname,
                "params": variant.params,
                "resolved": spec.params,
                "metrics": metrics,
                "reference": reference[0] if reference else {},
                "seconds_per_seed": seconds / len(plan.seeds),
                "images": images,
                "history": history,
            }
        )
    return {
        **between_runs(preset.metrics, variants),
        "preset": preset.name,
        "family": preset.family,
        "dataset": plan.specs[0][1].dataset,
        "epochs": plan.specs[0][1].epochs,
        "seeds": plan.seeds,
        "metrics": list(preset.metrics),
        "interval": INTERVAL,
        "reference_source": preset.reference.get("source", ""),
        "reference_epochs": preset.reference.get("epochs"),
        "figures": list(preset.figures),
        "run_seconds": run_seconds,
        "made_with": made_with,
        "variants": variants,
    }


def between_runs(metrics: tuple[str, ...], variants: list[dict[str, Any]]) -> dict[str, Any]:
    """What the runs say together, per metric: how its variance splits between the
    variant and the seed (`variance_share`, ICC(1) with its interval), how often a run of
    the worst variant beats a run of the best (`upset`), and how the metrics rank the
    runs alike (`rank_agreement`, Spearman's rho over every run): Locatello et al.'s
    questions, asked of any preset with two variants and two seeds."""
    from analysis.stats import rank_agreement, upset_rate, variance_share

    runs = []  # (variant, {metric: value}) per seed run
    for variant in variants:
        per_metric = {m: variant["metrics"][m]["values"] for m in metrics}
        for k in range(len(next(iter(per_metric.values()), []))):
            runs.append((variant["name"], {m: per_metric[m][k] for m in metrics}))
    groups = [name for name, _ in runs]
    shares, upsets = {}, {}
    for m in metrics:
        values = [row[m] for _, row in runs]
        share = variance_share(values, groups)
        if share is not None:
            shares[m] = {
                "config_share": share.config_share,
                "low": share.low,
                "high": share.high,
                "configs": share.configs,
                "runs": share.runs,
            }
        goal = metric_declaration(m).goal
        upset = upset_rate(values, groups, goal) if goal else None
        if upset is not None:
            upsets[m] = upset
    return {
        "variance_share": shares,
        "upset": upsets,
        "rank_agreement": rank_agreement([row for _, row in runs], metrics),
    }


def seed_statistics(
    metrics: tuple[str, ...] | list[str], results: list[dict[str, float]]
) -> dict[str, dict[str, Any]]:
    """Per metric: the mean over seeds, its bootstrap interval within the metric's range,
    the count of finite values and the values themselves."""
    from analysis.stats import bootstrap_interval

    found = {}
    for m in metrics:
        values = [r.get(m, math.nan) for r in results]
        stat = bootstrap_interval(values, metric_range(m))
        found[m] = {
            "mean": stat.mean,
            "low": stat.low,
            "high": stat.high,
            "n": stat.n,
            "values": values,
        }
    return found


def markdown(summary: dict[str, Any]) -> str:
    metrics = summary["metrics"]
    seeds = summary["seeds"]
    lines = [
        f"# {summary['preset']}: {summary['family']} on {summary['dataset']}, "
        f"{reproductions.epochs_text(summary['epochs'])}, "
        f"seeds {seeds[0]}-{seeds[-1]} (n = {len(seeds)})",
        "",
        f"Made with {reproductions.made_with_text(summary)}; the runs took "
        f"{summary['run_seconds'] / 60:.1f} min.",
        "",
        f"Each cell: {summary['interval']}; the reference's figure in parentheses where it "
        "has one.",
        "",
        "| variant | " + " | ".join(metrics) + " | s/seed |",
        "| --- | " + " | ".join("---" for _ in metrics) + " | --- |",
    ]
    for variant in summary["variants"]:
        cells = [reproductions.cell(variant, m) for m in metrics]
        lines.append(
            f"| {variant['name']} | "
            + " | ".join(cells)
            + f" | {variant['seconds_per_seed']:.0f} |"
        )
    lines += between_runs_markdown(summary)
    if summary["reference_source"]:
        lines += ["", f"Reference: {summary['reference_source']}"]
    return "\n".join(lines) + "\n"


def between_runs_markdown(summary: dict[str, Any]) -> list[str]:
    """The variance split, the upsets and the metrics' rank agreement, as Markdown
    (nothing for a preset with one variant or one seed)."""
    shares, upsets = summary.get("variance_share", {}), summary.get("upset", {})
    lines: list[str] = []
    if shares:
        lines += [
            "",
            "How much is the variant and how much the seed: the variant's share of each "
            "metric's variance over runs (ICC(1), 95% interval; the rest is the seed's), and "
            "how often a run of the worst variant beats a run of the best.",
            "",
            "| metric | variant's share | seed's share | worst beats best |",
            "| --- | --- | --- | --- |",
        ]
        for m, share in shares.items():
            upset = upsets.get(m)
            beats = f"{upset['rate']:.0%} ({upset['worst']} vs {upset['best']})" if upset else "-"
            lines.append(
                f"| {m} | {share['config_share']:.2f} [{share['low']:.2f}, {share['high']:.2f}]"
                f" | {1 - share['config_share']:.2f} | {beats} |"
            )
    agreement = summary.get("rank_agreement", {})
    metrics = [m for m in summary["metrics"] if m in agreement]
    runs = max((cell["n"] for row in agreement.values() for cell in row.values()), default=0)
    if len(metrics) >= 2 and runs >= 3:
        lines += [
            "",
            f"Do the metrics rank the runs alike: Spearman's rho over the {runs} runs.",
            "",
            "| | " + " | ".join(metrics) + " |",
            "| --- | " + " | ".join("---" for _ in metrics) + " |",
        ]
        for a in metrics:
            cells = [agreement[a][b]["rho"] for b in metrics]
            lines.append(
                f"| {a} | "
                + " | ".join(
                    "-" if c is None or not math.isfinite(c) else f"{c:+.2f}" for c in cells
                )
                + " |"
            )
    return lines


def write_summary(summary: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    reproductions.draw_figures(summary, out_dir)
    write_atomically(out_dir / "summary.md", markdown(summary))
    write_atomically(out_dir / SUMMARY_FILE, json.dumps(json_safe(summary), indent=2) + "\n")


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
