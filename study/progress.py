"""What a person sees during a sweep: one line per finished trial and a table at the end,
instead of Ray's log flood (`-v` brings that back)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ray.tune import Callback

from analysis.records import TrialConfig


def short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list | tuple):
        return "x".join(map(str, value))
    return str(value)


def fmt_metric(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "nan" if not math.isfinite(value) else f"{value:.4f}"
    return "-"


class TrialPrinter(Callback):
    def __init__(self, total: int, objectives: list[tuple[str, str]], searched: list[str]):
        self.total = total
        self.objectives = objectives
        self.searched = searched
        self.done = 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trial, error=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, error=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        saved = trial.latest_checkpoint_result
        epoch = saved.metrics.get("epoch") if saved is not None else None
        restart = f"its checkpoint at epoch {epoch}" if epoch else "the start (no checkpoint yet)"
        print(
            f"[retry] {trial.trial_id} failed ({failure_reason(trial)}); "
            f"failure {trial.num_failures}, restarting from {restart}",
            flush=True,
        )

    def _line(self, trial, error: bool) -> None:
        self.done += 1
        result = trial.last_result or {}
        status = trial_status(
            error, result, TrialConfig.from_tune(trial.config).run.get("epochs", 0)
        )
        scores = "  ".join(f"{m}={fmt_metric(result.get(m))}" for m, _ in self.objectives)
        params = " ".join(f"{k}={short(trial.config.get(k))}" for k in self.searched)
        seconds = result.get("time_total_s", 0.0)
        print(
            f"[{self.done}/{self.total}] {trial.trial_id} {status:<11} {scores}  {params}  ({seconds:.1f}s)",
            flush=True,
        )


def failure_reason(trial, limit: int = 160) -> str:
    """The first line of the trial's latest failure, from the error file Ray has just
    written beside the driver ("Failure # N (occurred at ...)" then the exception)."""
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    latest = text.rpartition("Failure # ")[2].splitlines()[1:]
    reasons = [line.strip() for line in latest if line.strip()]
    return reasons[0][:limit] if reasons else "no error recorded"


def trial_status(error, metrics: dict[str, Any], epochs: int) -> str:
    """error, diverged, done, or stopped@N for a trial ASHA ended before `epochs`."""
    if error:
        return "error"
    if metrics.get("diverged"):
        return "diverged"
    return "done" if metrics.get("epoch", 0) >= epochs else f"stopped@{metrics.get('epoch', 0)}"


def summary_table(
    rows: list[dict[str, Any]],
    objectives: list[tuple[str, str]],
    searched: list[str],
    top: int = 10,
) -> str:
    """Best trials first, by the first objective."""
    if not rows:
        return "no trials finished"
    metric, mode = objectives[0]

    def key(row):
        value = row.get(metric)
        if not isinstance(value, int | float) or not math.isfinite(value):
            return math.inf
        return -value if mode == "max" else value

    rows = sorted(rows, key=key)[:top]
    header = ["trial", "status", "epochs", *[m for m, _ in objectives], *searched]
    table = [
        [
            row["trial_id"],
            row["status"],
            str(row.get("epoch", 0)),
            *[fmt_metric(row.get(m)) for m, _ in objectives],
            *[short(row.get(k)) for k in searched],
        ]
        for row in rows
    ]
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, table)])
