"""What a reproduction publishes, drawn from its summary (`summary.json` of `study train
--preset` or `study reproduce`), never typed:

- the preset's own figures: a heatmap of one metric's mean over two parameters, a Pareto
  plot of two metrics' means with their seed intervals;
- image panels: the first seed's image grids of a few variants side by side;
- tables, as the preset's `published.tables` lays them out;
- README blocks: every table and figure the README quotes sits between
  `<!-- published: PRESET KIND -->` and `<!-- /published -->`, and `rewrite_readme` renders
  each block again from the summaries in the docs directory;
- what moved: each headline figure against its previous publication.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

BLOCK = re.compile(
    r"(?P<open><!-- published: (?P<preset>[\w.-]+) (?P<kind>[\w.-]+) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<close><!-- /published -->)",
    re.DOTALL,
)
CHANGES = "changes"  # the block (and file) of headline figures against the previous ones
PREVIOUS_DIR = "previous"  # docs/reproductions/previous/<preset>.md: the last publication


def param_text(value: Any) -> str:
    """A parameter value as presets name it: booleans lower-case, lists joined by x."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "x".join(map(str, value))
    return str(value)


# --- the preset's figures -----------------------------------------------------------------
def draw_figures(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    draw = {"heatmap": heatmap, "pareto": pareto, "curve": curve}
    return [draw[f["kind"]](summary, f, out_dir) for f in summary["figures"]]


def figure_file(spec: dict[str, str]) -> str:
    if spec["kind"] in ("heatmap", "curve"):
        return f"{spec['kind']}-{spec['metric']}.png"
    return f"pareto-{spec['x']}-{spec['y']}.png"


def heatmap(summary: dict[str, Any], spec: dict[str, str], out_dir: Path) -> Path:
    """One metric's mean over seeds across two parameters (the report's degeneracy map is
    drawn by the same `figures.heatmap`)."""
    from analysis import figures

    x, y, metric = spec["x"], spec["y"], spec["metric"]
    cells = {
        (v["resolved"][x], v["resolved"][y]): _number(v["metrics"][metric]["mean"])
        for v in summary["variants"]
    }
    xs, ys = sorted({k[0] for k in cells}), sorted({k[1] for k in cells})
    grid = [[cells.get((a, b), math.nan) for a in xs] for b in ys]
    n = len(summary["seeds"])
    title = f"{metric}, mean of {n} seeds, {summary['epochs']} epochs"
    figure = figures.heatmap(grid, xs, ys, x, y, title)
    path = out_dir / figure_file(spec)
    figure.savefig(path)
    return path


def pareto(summary: dict[str, Any], spec: dict[str, str], out_dir: Path) -> Path:
    """Means with seed intervals; the front (both metrics minimised) joined by a line."""
    import numpy as np

    from analysis import figures
    from analysis.stats import pareto_mask

    x, y, label = spec["x"], spec["y"], spec["label"]
    points = []
    for v in summary["variants"]:
        sx, sy = v["metrics"][x], v["metrics"][y]
        points.append((sx, sy, v["resolved"].get(label)))
    figure = figures.new_figure(5.0, 3.6)
    axes = figure.add_subplot()
    for sx, sy, tag in points:
        axes.errorbar(
            _number(sx["mean"]),
            _number(sy["mean"]),
            xerr=_half_widths(sx),
            yerr=_half_widths(sy),
            fmt="o",
            capsize=3,
        )
        axes.annotate(
            f"{label}={tag}",
            (_number(sx["mean"]), _number(sy["mean"])),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    means = np.array([(_number(p[0]["mean"]), _number(p[1]["mean"])) for p in points])
    finite = means[np.isfinite(means).all(axis=1)]
    if len(finite):
        front = sorted(map(tuple, finite[pareto_mask(finite, ["min", "min"])]))
        axes.plot(*zip(*front, strict=True), "k--", lw=0.8, label="Pareto front")
        axes.legend(fontsize=8)
    axes.set_xlabel(f"{x} (lower is better)")
    axes.set_ylabel(f"{y} (lower is better)")
    return _save_with_seed_title(figure, axes, summary, spec, out_dir)


def curve(summary: dict[str, Any], spec: dict[str, str], out_dir: Path) -> Path:
    """A metric's mean over seeds against the epoch, one line per variant, its bootstrap
    interval shaded."""
    from analysis import figures

    metric = spec["metric"]
    figure = figures.new_figure(7.0 if len(summary["variants"]) > 1 else 5.0, 3.4)
    axes = figure.add_subplot()
    for variant in summary["variants"]:
        points = [(h["epoch"], h["metrics"][metric]) for h in variant.get("history", [])]
        points = [(e, s) for e, s in points if s["n"]]
        if not points:
            continue
        epochs = [e for e, _ in points]
        axes.plot(
            epochs, [_number(s["mean"]) for _, s in points], "o-", ms=3, label=variant["name"]
        )
        axes.fill_between(
            epochs,
            [_number(s["low"]) for _, s in points],
            [_number(s["high"]) for _, s in points],
            alpha=0.2,
        )
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    if len(axes.get_lines()) > 1:
        # Beside the axes, where no line runs under it (a grid preset has nine lines).
        axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return _save_with_seed_title(figure, axes, summary, spec, out_dir)


def _save_with_seed_title(figure, axes, summary: dict[str, Any], spec, out_dir: Path) -> Path:
    axes.set_title(
        f"mean and 95% bootstrap interval over {len(summary['seeds'])} seeds", fontsize=9
    )
    figure.tight_layout()
    path = out_dir / figure_file(spec)
    figure.savefig(path)
    return path


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _half_widths(stat: dict[str, Any]) -> list[list[float]] | None:
    low, high, mean = (_number(stat[k]) for k in ("low", "high", "mean"))
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return [[mean - low], [high - mean]]


# --- image panels -------------------------------------------------------------------------
def draw_panel(summary: dict[str, Any], panel: dict[str, Any], runs_dir: Path, path: Path) -> Path:
    """The first seed's `panel["image"]` grid of each listed variant, side by side, titled
    with the variant's title and its mean of `panel["metric"]`."""
    import matplotlib.image as mpimg

    from analysis import figures

    by_name = {v["name"]: v for v in summary["variants"]}
    titles = panel["variants"]
    figure = figures.new_figure(3.0 * len(titles), 3.4)
    for i, (name, title) in enumerate(titles.items(), 1):
        variant = by_name[name]
        axes = figure.add_subplot(1, len(titles), i)
        if not variant.get("images"):
            raise FileNotFoundError(
                f"{variant['name']}: no run starts at seed {summary['seeds'][0]}, whose images "
                "a panel shows"
            )
        image = runs_dir / variant["images"] / f"{panel['image']}.png"
        axes.imshow(mpimg.imread(image), cmap="gray")
        mean = variant["metrics"][panel["metric"]]["mean"]
        metric = f"{panel['metric']} {metric_text(mean)} (mean of {len(summary['seeds'])} seeds)"
        axes.set_title(f"{title}\n{metric}", fontsize=9)
        axes.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=80, bbox_inches="tight")
    return path


# --- tables -------------------------------------------------------------------------------
def table(summary: dict[str, Any], spec: dict[str, Any]) -> str:
    """A markdown table laid out by a preset's `published.tables` entry: one row per
    distinct value of `rows` (in the order the variants first show them), one column per
    row parameter, then one per metric column (a column's `where` picks the variant)."""
    # "epoch", in the rows or in a column's `where`, reads each variant's history: its
    # entries stand in for the variant, one per evaluated epoch.
    evaluated = [
        {**v, "params": {**v["params"], "epoch": h["epoch"]}, "metrics": h["metrics"]}
        for v in summary["variants"]
        for h in v.get("history", [])
    ]
    variants = evaluated if "epoch" in spec["rows"] else summary["variants"]
    rows_by, titles = spec["rows"], spec.get("titles", {})
    labels = {
        param: {param_text(k): v for k, v in mapping.items()}
        for param, mapping in spec.get("labels", {}).items()
    }
    columns = [c if isinstance(c, dict) else {"metric": c} for c in spec.get("columns", [])]
    order: dict[str, list[str]] = {p: [] for p in rows_by}
    for v in variants:
        for p in rows_by:
            if _value(v, p) not in order[p]:
                order[p].append(_value(v, p))
    keys = sorted(
        {tuple(_value(v, p) for p in rows_by) for v in variants},
        key=lambda key: [order[p].index(k) for p, k in zip(rows_by, key, strict=True)],
    )
    head = [titles.get(p, p) for p in rows_by] + [c.get("title", c["metric"]) for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for key in keys:
        cells = [labels.get(p, {}).get(k, k) for p, k in zip(rows_by, key, strict=True)]
        for column in columns:
            where = {p: k for p, k in zip(rows_by, key, strict=True)}
            where.update({p: param_text(v) for p, v in column.get("where", {}).items()})
            pool = evaluated if "epoch" in where else variants
            hits = [v for v in pool if all(_value(v, p) == k for p, k in where.items())]
            if not hits:
                cells.append("–")
            elif column.get("show") == "seeds":
                values = hits[0]["metrics"][column["metric"]]["values"]
                cells.append(", ".join(metric_text(v) for v in values))
            else:
                cells.append(cell(hits[0], column["metric"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _value(variant: dict[str, Any], param: str) -> str:
    return variant["name"] if param == "variant" else param_text(variant["params"].get(param))


def cell(variant: dict[str, Any], metric: str) -> str:
    """'mean [low, high]', with the reference's figure in parentheses where it has one."""
    stat = variant["metrics"][metric]
    if stat["n"] == 0:
        return "–"
    text = interval_text(stat["mean"], stat["low"], stat["high"])
    if metric in variant["reference"]:
        text += f" ({metric_text(variant['reference'][metric])})"
    return text


def interval_text(mean: Any, low: Any, high: Any) -> str:
    """'mean [low, high]', as every published cell prints an interval."""
    return f"{metric_text(mean)} [{metric_text(low)}, {metric_text(high)}]"


def metric_text(value: Any) -> str:
    """A metric as the tables print it: three decimals, a dash for none."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.3f}"


def caption(summary: dict[str, Any]) -> str:
    """What a published table is: data, length (against the reference's), seeds, interval,
    and what made it."""
    seeds = summary["seeds"]
    epochs = summary["epochs"]
    reference = summary.get("reference_epochs")
    length = epochs_text(epochs)
    if reference is not None:
        length += (
            ", the reference's length" if epochs >= reference else f" (the reference: {reference})"
        )
    return (
        f"*{summary['family']} on {summary['dataset']}, {length}; n = {len(seeds)} seeds "
        f"({seeds[0]}-{seeds[-1]}). Each cell: {summary['interval']}"
        + ("; the reference's figure in parentheses" if _has_reference(summary) else "")
        + f". Made with {made_with_text(summary)}; the runs took "
        f"{summary['run_seconds'] / 60:.1f} min.*"
    )


def made_with_text(summary: dict[str, Any]) -> str:
    """'commit 1a2b3c4d5e (torch 2.14.1) on cpu: ...': one clause per distinct provenance."""
    clauses = []
    for made in summary["made_with"]:
        commit = made.get("commit")
        code = f"commit {commit[:10]}" if commit else "an unknown commit"
        if made.get("dirty"):
            code += " with uncommitted changes"
        torch = (made.get("packages") or {}).get("torch")
        clauses.append(f"{code} (torch {torch}) on {made.get('device', 'an unknown device')}")
    return "; ".join(clauses) or "unrecorded code and device"


def epochs_text(epochs: int) -> str:
    return f"{epochs} epoch" + ("" if epochs == 1 else "s")


def _has_reference(summary: dict[str, Any]) -> bool:
    return any(v["reference"] for v in summary["variants"])


# --- README blocks --------------------------------------------------------------------
# `published` below maps each reproduction preset's name to its `published` settings
# (tables, panels, headline), as the preset files declare them.
def published_figures(summary: dict[str, Any], published: dict[str, Any]) -> list[tuple[str, str]]:
    """(file name in the docs directory, alt text) of every figure a preset publishes."""
    name = summary["preset"]
    files = [
        (f"{name}-{figure_file(f)}", f"{name}: {figure_file(f)[:-4]}") for f in summary["figures"]
    ]
    files += [
        (f"{name}-{p['name']}.png", f"{name}: {p['name']}") for p in published.get("panels", [])
    ]
    return files


def check_blocks(text: str, published: dict[str, dict[str, Any]]) -> None:
    """Every block of `text` names something a preset publishes (KeyError otherwise):
    checked before any run, so a typo in the README costs no training."""
    for preset, kind in readme_blocks(text):
        if (preset, kind) == ("all", CHANGES):
            continue
        if preset not in published:
            raise KeyError(
                f"README block {preset} {kind}: no reproduction preset {preset}; "
                f"choose one of {', '.join(sorted(published))}"
            )
        tables = [t.get("name", "table") for t in published[preset].get("tables", [])]
        if kind != "figures" and kind not in tables:
            raise KeyError(
                f"README block {preset} {kind}: preset {preset} publishes no such "
                f"table; choose figures or one of {', '.join(tables) or 'none'}"
            )


def render_block(
    preset: str, kind: str, docs_dir: Path, readme_dir: Path, published: dict[str, dict[str, Any]]
) -> str:
    """The body of README block (preset, kind): 'figures', a table's name, or ('all',
    'changes')."""
    if (preset, kind) == ("all", CHANGES):
        return changes_block(docs_dir, published)
    path = docs_dir / f"{preset}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no summary; run `study reproduce {preset}`")
    summary = json.loads(path.read_text())
    if kind == "figures":
        return "\n".join(
            f"![{alt}]({os.path.relpath(docs_dir / file, readme_dir)})"
            for file, alt in published_figures(summary, published[preset])
        )
    tables = {t.get("name", "table"): t for t in published[preset].get("tables", [])}
    return caption(summary) + "\n\n" + table(summary, tables[kind])


def rewrite_readme(
    text: str, docs_dir: Path, readme_dir: Path, published: dict[str, dict[str, Any]]
) -> str:
    """`text` with every published block rendered again from the summaries."""
    check_blocks(text, published)

    def render(match: re.Match) -> str:
        body = render_block(match["preset"], match["kind"], docs_dir, readme_dir, published)
        return f"{match['open']}{body}\n{match['close']}"

    return BLOCK.sub(render, text)


def readme_blocks(text: str) -> list[tuple[str, str]]:
    return [(m["preset"], m["kind"]) for m in BLOCK.finditer(text)]


def read_summaries(docs_dir: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(docs_dir.glob("*.json"))}


# --- what moved since the previous publication -------------------------------------------
PREVIOUS_TITLE = re.compile(r"^# [\w.-]+: \w+ on (?P<dataset>[\w-]+), (?P<epochs>\d+) epochs?,")
PREVIOUS_ROW = re.compile(r"^\| (?P<variant>[^|]+?) \| (?P<cells>.*) \|$")
PREVIOUS_CELL = re.compile(r"(?P<mean>[-\d.]+|–) \[(?P<low>[-\d.]+|–), (?P<high>[-\d.]+|–)\]")


def previous_setting(path: Path) -> tuple[str, int] | None:
    """(dataset, epochs) of a previous summary.md, from its title."""
    title = PREVIOUS_TITLE.match(path.read_text())
    return (title["dataset"], int(title["epochs"])) if title else None


def previous_figures(path: Path) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(variant, metric) -> (mean, low, high) from a previous summary.md's table."""
    lines = path.read_text().splitlines()
    header = next(line for line in lines if line.startswith("| variant |"))
    metrics = [c.strip() for c in header.strip("|").split("|")][1:]
    found = {}
    for line in lines[lines.index(header) + 2 :]:
        row = PREVIOUS_ROW.match(line)
        if not row:
            break
        for metric, text in zip(metrics, row["cells"].split(" | "), strict=False):
            stat = PREVIOUS_CELL.match(text.strip())
            if stat and stat["mean"] != "–":
                found[(row["variant"], metric)] = tuple(
                    math.nan if stat[k] == "–" else float(stat[k]) for k in ("mean", "low", "high")
                )
    return found


def changes(docs_dir: Path, published: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each headline figure of each preset with a previous publication of the same dataset
    and length: before and now. `moved`: the new mean lies outside the previous interval."""
    rows = []
    for name, summary in read_summaries(docs_dir).items():
        previous_file = docs_dir / PREVIOUS_DIR / f"{name}.md"
        if not previous_file.is_file():
            continue
        if previous_setting(previous_file) != (summary["dataset"], summary["epochs"]):
            continue
        before = previous_figures(previous_file)
        for variant in summary["variants"]:
            for metric in published.get(name, {}).get("headline", []):
                if (variant["name"], metric) not in before:
                    continue
                stat = variant["metrics"][metric]
                old = before[(variant["name"], metric)]
                now = _number(stat["mean"])
                rows.append(
                    {
                        "preset": name,
                        "variant": variant["name"],
                        "metric": metric,
                        "before": old,
                        "now": (now, _number(stat["low"]), _number(stat["high"])),
                        "moved": not (old[1] <= now <= old[2]),
                    }
                )
    return rows


def changes_block(docs_dir: Path, published: dict[str, dict[str, Any]]) -> str:
    rows = changes(docs_dir, published)
    if not rows:
        return "*No previous publication of the same dataset and length to compare with.*"
    moved = sum(r["moved"] for r in rows)
    lines = [
        f"*{moved} of {len(rows)} headline figures moved outside their previous interval. "
        "Before: the previous publication's mean [95% t-interval over seeds]; now: the "
        "mean [95% percentile-bootstrap interval].*",
        "",
        "| preset | variant | metric | before | now | |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        before, now = interval_text(*r["before"]), interval_text(*r["now"])
        flag = "**moved**" if r["moved"] else ""
        lines.append(
            f"| {r['preset']} | {r['variant']} | {r['metric']} | {before} | {now} | {flag} |"
        )
    return "\n".join(lines)
