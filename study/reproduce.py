"""`study train --preset NAME`: a reproduction preset's variants trained at several seeds,
summarised as mean and 95% interval per variant beside the reference's figures.

Each run is an ordinary `study train` output directory under `<out>/<variant>/seed<S>`,
written whole or not at all; a rerun with the same `--out` keeps the finished runs and
trains only the missing ones. The summary (`summary.json`, `summary.md`, figures) is
written last, atomically.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from study.presets import Preset, Variant, matches
from study.spec import TrainSpec
from study.train import train_once
from trainables.metrics import metric_range

SUMMARY_FILE = "summary.json"


def default_out_dir(preset: Preset) -> Path:
    return Path("runs") / "presets" / f"{preset.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def reproduce(
    preset: Preset,
    runs: list[tuple[Variant, TrainSpec]],
    out_dir: str | Path | None = None,
    device: str = "auto",
    data_dir: str | None = None,
    download: bool = False,
    echo=print,
) -> tuple[dict[str, Any], Path]:
    from trainables import load_dataset, pick_device

    out_dir = Path(out_dir) if out_dir else default_out_dir(preset)
    start = time.perf_counter()
    # Every run of a preset trains on one dataset: load it once (and fail before any run).
    dataset = load_dataset(runs[0][1].dataset, data_dir, download, pick_device(device))
    seeds = len(runs) // len(preset.variants)
    echo(
        f"{preset.name}: {len(preset.variants)} variants x {seeds} seeds, {runs[0][1].epochs} "
        f"epochs each, {preset.family} on {dataset.name}, into {out_dir}"
    )
    results: dict[str, list[dict[str, float]]] = {v.name: [] for v, _ in runs}
    for i, (variant, spec) in enumerate(runs, 1):
        run_dir = out_dir / variant.dirname / f"seed{spec.seed}"
        done = run_dir / "metrics.json"
        if done.exists():
            metrics = json.loads(done.read_text())
            echo(f"[{i}/{len(runs)}] {variant.name} seed {spec.seed}: kept from {run_dir}")
        else:
            metrics, _ = train_once(spec, out_dir=run_dir, progress=False, dataset=dataset)
            echo(
                f"[{i}/{len(runs)}] {variant.name} seed {spec.seed}: "
                + ", ".join(f"{m} {_fmt(metrics.get(m))}" for m in preset.metrics)
                + f" ({metrics['train_seconds']:.0f} s)"
            )
        results[variant.name].append(metrics)
    summary = summarise(preset, runs, results, time.perf_counter() - start)
    write_summary(summary, out_dir)
    return summary, out_dir


def summarise(
    preset: Preset,
    runs: list[tuple[Variant, TrainSpec]],
    results: dict[str, list[dict[str, float]]],
    wall_seconds: float,
) -> dict[str, Any]:
    first = {v.name: (v, spec) for v, spec in reversed(runs)}
    variants = []
    for name, per_seed in results.items():
        variant, spec = first[name]
        metrics = {
            m: interval([r.get(m, math.nan) for r in per_seed], metric_range(m))
            for m in preset.metrics
        }
        reference = [
            entry["metrics"]
            for entry in preset.reference.get("figures", [])
            if matches(spec.params, entry["match"])
        ]
        variants.append(
            {
                "name": name,
                "params": variant.params,
                "resolved": spec.params,
                "metrics": metrics,
                "reference": reference[0] if reference else {},
                "train_seconds": sum(r.get("train_seconds", 0.0) for r in per_seed) / len(per_seed),
            }
        )
    return {
        "preset": preset.name,
        "family": preset.family,
        "dataset": runs[0][1].dataset,
        "epochs": runs[0][1].epochs,
        "seeds": sorted({spec.seed for _, spec in runs}),
        "metrics": list(preset.metrics),
        "reference_source": preset.reference.get("source", ""),
        "figures": list(preset.figures),
        "wall_seconds": wall_seconds,
        "variants": variants,
    }


def interval(values: list[float], bounds: tuple[float, float | None]) -> dict[str, Any]:
    """Mean and 95% t-interval over seeds within the metric's range, with the values."""
    from analysis.stats import mean_interval

    return {**mean_interval(values, bounds), "values": values}


def markdown(summary: dict[str, Any]) -> str:
    metrics = summary["metrics"]
    lines = [
        f"# {summary['preset']}: {summary['family']} on {summary['dataset']}, "
        f"{summary['epochs']} epochs, seeds {summary['seeds'][0]}-{summary['seeds'][-1]} "
        f"(n = {len(summary['seeds'])}), {summary['wall_seconds'] / 60:.1f} min",
        "",
        "Mean [95% t-interval over seeds]; the reference's figure in parentheses where it has one.",
        "",
        "| variant | " + " | ".join(metrics) + " | s/run |",
        "| --- | " + " | ".join("---" for _ in metrics) + " | --- |",
    ]
    for variant in summary["variants"]:
        cells = []
        for m in metrics:
            stat = variant["metrics"][m]
            cell = f"{_fmt(stat['mean'])} [{_fmt(stat['low'])}, {_fmt(stat['high'])}]"
            if m in variant["reference"]:
                cell += f" ({_fmt(variant['reference'][m])})"
            cells.append(cell)
        lines.append(
            f"| {variant['name']} | " + " | ".join(cells) + f" | {variant['train_seconds']:.0f} |"
        )
    if summary["reference_source"]:
        lines += ["", f"Reference: {summary['reference_source']}"]
    return "\n".join(lines) + "\n"


def write_summary(summary: dict[str, Any], out_dir: Path) -> None:
    from analysis.reproductions import draw_figures

    out_dir.mkdir(parents=True, exist_ok=True)
    draw_figures(summary, out_dir)
    _write_atomically(out_dir / "summary.md", markdown(summary))
    _write_atomically(out_dir / SUMMARY_FILE, json.dumps(json_safe(summary), indent=2))


def _write_atomically(path: Path, text: str) -> None:
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


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.3f}"
