"""How many trials hyperparameter importance needs before it can be trusted: the measurement
behind analysis.importance.MIN_TRIALS_FOR_IMPORTANCE (and PED_TARGET_QUANTILE).

    python -m tests.bench.importance_floor            # 800 studies, 1-2 minutes on 2 cores
    python -m tests.bench.importance_floor --quick    # a few seconds: checks the machinery
    python -m tests.bench.importance_floor --noise 0.03,0.05 --raw-fanova   # more columns

For each trial count n and each seed-noise level, REPEATS synthetic studies: n trials drawn
at random (uniform, log-uniform for log parameters, as the random sampler does) from a
space shaped like search_spaces/mlvae.yaml, scored by a [0, 1] rate whose parameter
importance is known by construction, plus Gaussian seed noise:

    rate = 0.45 + 0.25 sigmoid(8 (u(kl_style_weight) - 1/2))      dominant
                - 0.10 u(kl_class_weight)                          } comparable
                + 0.10/sqrt(3) [recon_loss == bernoulli]           } (equal variance)
                + 0.12 u(lr) (1 - u(dropout))                      interaction
                + 0 * style_dim                                    inert
                + N(0, noise)

with u(x) in [0, 1] the parameter's position on its sampled (log or linear) scale. Each
study goes through analysis.importance.importance_table, i.e. the evaluators exactly as the
report runs them; beside them, for reference, PED-ANOVA at Optuna's default target quantile
0.1 and at 0.5, and with --raw-fanova fANOVA on the raw scale (Optuna's default: a log
parameter integrated over its raw range). Per evaluator: how often it ranks
kl_style_weight strictly first ("top-1"), and the mean Spearman correlation of its
importances with the true first-order variance shares (ties in the truth kept as ties).

Floor criterion: the smallest n from which on (that n and every larger one measured) both
evaluators, as run by the report, rank the dominant parameter first in >= 90% of repeats
at every noise level.

No Ray, no torch: only Optuna (with scikit-learn for fANOVA), numpy and scipy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

TOP1_TARGET = 0.9
DOMINANT = "kl_style_weight"


@dataclass(frozen=True)
class Sizes:
    trials: tuple[int, ...]
    noises: tuple[float, ...]
    repeats: int


# Seed noise 0.05, the upper end of the realistic range, by default (--noise 0.03,0.05 for
# both: twice the time). 100 repeats put a 90% rate within about +-6% (95%).
FULL = Sizes((5, 8, 10, 15, 20, 25, 30, 50), (0.05,), 100)
QUICK = Sizes((5, 20), (0.05,), 3)

# name -> (kind, low, high, log) or ("categorical", choices)
SPACE: dict[str, tuple] = {
    "kl_style_weight": ("float", 0.25, 64.0, True),
    "kl_class_weight": ("float", 0.25, 64.0, True),
    "recon_loss": ("categorical", ("bernoulli", "mse")),
    "lr": ("float", 1e-4, 1e-2, True),
    "style_dim": ("int", 2, 32, True),
    "dropout": ("float", 0.0, 0.5, False),
}
DOMINANT_SIZE = 0.25
COMPARABLE_SIZE = 0.10
INTERACTION_SIZE = 0.12


def distributions() -> dict[str, Any]:
    import optuna.distributions as od

    out: dict[str, Any] = {}
    for name, spec in SPACE.items():
        if spec[0] == "categorical":
            out[name] = od.CategoricalDistribution(spec[1])
        elif spec[0] == "int":
            out[name] = od.IntDistribution(spec[1], spec[2], log=spec[3])
        else:
            out[name] = od.FloatDistribution(spec[1], spec[2], log=spec[3])
    return out


def position(name: str, value: Any) -> float:
    """u(value): where `value` lies on its parameter's sampled scale, in [0, 1]."""
    spec = SPACE[name]
    if spec[0] == "categorical":
        return float(spec[1].index(value))
    _, low, high, log = spec
    if log:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


def sigmoid_step(u: float | np.ndarray) -> float | np.ndarray:
    return 1.0 / (1.0 + np.exp(-8.0 * (np.asarray(u) - 0.5)))


def rate(params: dict[str, Any]) -> float:
    """The noise-free objective."""
    u = {name: position(name, value) for name, value in params.items() if name != "recon_loss"}
    return float(
        0.45
        + DOMINANT_SIZE * sigmoid_step(u["kl_style_weight"])
        - COMPARABLE_SIZE * u["kl_class_weight"]
        + COMPARABLE_SIZE / math.sqrt(3) * (params["recon_loss"] == "bernoulli")
        + INTERACTION_SIZE * u["lr"] * (1.0 - u["dropout"])
    )


def true_shares() -> dict[str, float]:
    """Each parameter's first-order share of the noise-free rate's variance (what fANOVA
    estimates), from the terms above: c u has variance c^2/12, a fair coin times c has
    c^2/4, and c u v splits into main effects c^2/48 each plus an interaction c^2/144."""
    grid = (np.arange(200_000) + 0.5) / 200_000
    parts = {
        "kl_style_weight": float(np.var(DOMINANT_SIZE * sigmoid_step(grid))),
        "kl_class_weight": COMPARABLE_SIZE**2 / 12,
        "recon_loss": (COMPARABLE_SIZE / math.sqrt(3)) ** 2 / 4,
        "lr": INTERACTION_SIZE**2 / 48,
        "dropout": INTERACTION_SIZE**2 / 48,
        "style_dim": 0.0,
    }
    total = sum(parts.values()) + INTERACTION_SIZE**2 / 144
    return {name: round(v / total, 6) for name, v in parts.items()}


def sample(rng: np.random.Generator) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, spec in SPACE.items():
        if spec[0] == "categorical":
            params[name] = spec[1][int(rng.integers(len(spec[1])))]
            continue
        _, low, high, log = spec
        if log:
            value = math.exp(rng.uniform(math.log(low), math.log(high)))
        else:
            value = rng.uniform(low, high)
        params[name] = min(high, max(low, round(value))) if spec[0] == "int" else value
    return params


def make_study(n: int, noise: float, seed: Sequence[int]):
    """n random trials of the synthetic rate (maximised) plus seed noise."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = np.random.default_rng(list(seed))
    space = distributions()
    study = optuna.create_study(direction="maximize")
    trials = []
    for _ in range(n):
        params = sample(rng)
        value = rate(params) + rng.normal(0.0, noise)
        trials.append(optuna.trial.create_trial(params=params, distributions=space, values=[value]))
    study.add_trials(trials)
    return study


# --- one repeat --------------------------------------------------------------------------
TOOL = ("fanova", "ped_anova")  # as analysis.importance runs them
REFERENCES = ("ped_anova_q0.1", "ped_anova_q0.5", "fanova_raw")  # for comparison


def score(importances: dict[str, float] | None, truth: dict[str, float]) -> dict[str, Any]:
    """top-1 (dominant strictly first) and Spearman against the truth; a failed evaluator
    (no importances, or all equal) counts as not top-1 and rho 0."""
    from scipy.stats import spearmanr

    if not importances:
        return {"top1": False, "rho": 0.0, "failed": True}
    names = list(truth)
    estimate = np.array(
        [
            0.0 if not math.isfinite(importances.get(p, 0.0)) else importances.get(p, 0.0)
            for p in names
        ]
    )
    if np.ptp(estimate) == 0:
        return {"top1": False, "rho": 0.0, "failed": True}
    best = np.sort(estimate)[-2:]
    top1 = bool(estimate[names.index(DOMINANT)] == best[-1] and best[-1] > best[-2])
    rho = float(spearmanr(estimate, [truth[p] for p in names]).statistic)
    return {"top1": top1, "rho": rho if math.isfinite(rho) else 0.0, "failed": False}


def one(task: tuple[int, float, int, bool]) -> dict[str, Any]:
    n, noise, repeat, raw_fanova = task
    import optuna

    from analysis import importance as imp

    truth = true_shares()
    # Seeded by (n, repeat) alone: each noise level sees the same configs and the same
    # standard-normal draws, scaled (common random numbers).
    study = make_study(n, noise, (n, repeat))
    started = time.perf_counter()
    table = imp.importance_table(study, [("rate", "max")])
    tool_seconds = time.perf_counter() - started
    out: dict[str, Any] = {"n": n, "noise": noise, "tool_seconds": tool_seconds}
    for key in TOOL:
        column = f"{key}:rate"
        found = table[column].to_dict() if column in table else None
        out[key] = score(found, truth)
    for quantile in (0.1, 0.5):
        out[f"ped_anova_q{quantile}"] = score(
            imp.normalised_importances(
                optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile),
                study,
                lambda t: -t.values[0],
            ),
            truth,
        )
    if raw_fanova:
        out["fanova_raw"] = score(
            imp.normalised_importances(
                optuna.importance.FanovaImportanceEvaluator(seed=imp.FANOVA_SEED),
                study,
                lambda t: t.values[0],
            ),
            truth,
        )
    return out


# --- the whole measurement ---------------------------------------------------------------
def run(sizes: Sizes, jobs: int = 1, raw_fanova: bool = False) -> dict[str, Any]:
    tasks = [
        (n, noise, r, raw_fanova)
        for noise in sizes.noises
        for n in sizes.trials
        for r in range(sizes.repeats)
    ]
    started = time.perf_counter()
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(one, tasks, chunksize=4))
    else:
        results = [one(t) for t in tasks]
    seconds = time.perf_counter() - started
    evaluators = TOOL + (REFERENCES if raw_fanova else REFERENCES[:2])
    rows = []
    for noise in sizes.noises:
        for n in sizes.trials:
            mine = [r for r in results if r["n"] == n and r["noise"] == noise]
            row: dict[str, Any] = {
                "noise": noise,
                "n": n,
                "repeats": len(mine),
                "tool_seconds_mean": float(np.mean([r["tool_seconds"] for r in mine])),
            }
            for key in evaluators:
                row[f"{key}_top1"] = float(np.mean([r[key]["top1"] for r in mine]))
                row[f"{key}_rho"] = float(np.mean([r[key]["rho"] for r in mine]))
                row[f"{key}_failed"] = int(sum(r[key]["failed"] for r in mine))
            rows.append(row)
    return {
        "sizes": {"trials": sizes.trials, "noises": sizes.noises, "repeats": sizes.repeats},
        "jobs": jobs,
        "evaluators": evaluators,
        "truth": true_shares(),
        "rows": rows,
        "seconds": seconds,
        "floor": floor(rows, sizes),
    }


def floor(rows: list[dict[str, Any]], sizes: Sizes) -> int | None:
    """The smallest n from which on both evaluators of the report reach TOP1_TARGET at
    every noise level; None when even the largest n measured does not."""
    ok = {
        n: all(row[f"{key}_top1"] >= TOP1_TARGET for row in rows if row["n"] == n for key in TOOL)
        for n in sizes.trials
    }
    found = None
    for n in sorted(sizes.trials, reverse=True):
        if not ok[n]:
            break
        found = n
    return found


# --- printing ----------------------------------------------------------------------------
def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The same layout as tests.bench.common.table (which imports torch)."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda values: "  ".join(  # noqa: E731
        v.ljust(w) if i == 0 else v.rjust(w)
        for i, (v, w) in enumerate(zip(values, widths, strict=True))
    )
    rule = "-" * len(line(headers))
    return "\n".join([title, rule, line(headers), rule, *(line(r) for r in cells), rule])


NAMES = {
    "fanova": "fANOVA",
    "ped_anova": "PED-ANOVA",
    "ped_anova_q0.1": "PED q=0.1",
    "ped_anova_q0.5": "PED q=0.5",
    "fanova_raw": "fANOVA raw",
}


def report(result: dict[str, Any], log=print) -> None:
    from analysis import importance as imp

    evaluators = result["evaluators"]
    headers = ["noise", "n"]
    for key in evaluators:
        headers += [f"{NAMES[key]} top-1", f"{NAMES[key]} rho"]
    headers += ["failed", "tool s/study"]
    rows = []
    for row in result["rows"]:
        cells = [row["noise"], row["n"]]
        for key in evaluators:
            cells += [row[f"{key}_top1"], row[f"{key}_rho"]]
        failed = "/".join(str(row[f"{key}_failed"]) for key in evaluators)
        rows.append([*cells, failed, f"{row['tool_seconds_mean']:.3f}"])
    log(
        table(
            f"importance vs trial count: share of {result['sizes']['repeats']} random studies "
            f"ranking {DOMINANT} first (top-1), mean Spearman rho with the true shares",
            headers,
            rows,
        )
    )
    truth = ", ".join(f"{k} {v:.2f}" for k, v in result["truth"].items())
    log(f"  true first-order shares: {truth} (interaction {1 - sum(result['truth'].values()):.2f})")
    log(
        f"  fANOVA: on the searched (log) scale, 64 trees, seed {imp.FANOVA_SEED}; PED-ANOVA: "
        f"target quantile {imp.PED_TARGET_QUANTILE}; the other columns for comparison; "
        "failed: repeats where an evaluator gave no ranking "
        f"({' / '.join(NAMES[k] for k in evaluators)})"
    )
    found = result["floor"]
    shown = found if found is not None else f"> {max(result['sizes']['trials'])}"
    floor_set = imp.MIN_TRIALS_FOR_IMPORTANCE
    if found == floor_set:
        verdict = "matches"
    elif found is not None and found < floor_set:
        verdict = "is above it (cautious: the report waits longer than this run needs)"
    else:
        verdict = "is BELOW it (the report trusts too few trials)"
    log(
        f"floor (smallest n from which on fANOVA and PED-ANOVA both reach top-1 >= "
        f"{TOP1_TARGET:.0%} at every noise level): {shown}; MIN_TRIALS_FOR_IMPORTANCE = "
        f"{floor_set} {verdict}"
    )
    studies = len(result["rows"]) * result["sizes"]["repeats"]
    log(f"{studies} studies in {result['seconds']:.0f} s, {result['jobs']} process(es)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.importance_floor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the machinery")
    parser.add_argument("--repeats", type=int, default=None, help="studies per (noise, n)")
    parser.add_argument("--trials", default=None, help="trial counts, e.g. 5,10,20")
    parser.add_argument("--noise", default=None, help="seed-noise std levels, e.g. 0.03,0.05")
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes (default %(default)s)",
    )
    parser.add_argument(
        "--raw-fanova",
        action="store_true",
        help="also measure fANOVA on the raw scale (Optuna's default; doubles the time)",
    )
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    try:
        args.sizes = Sizes(
            tuple(int(x) for x in args.trials.split(",")) if args.trials else base.trials,
            tuple(float(x) for x in args.noise.split(",")) if args.noise else base.noises,
            args.repeats or base.repeats,
        )
    except ValueError:
        parser.error("--trials and --noise take comma-separated numbers")
    if min(args.sizes.trials) < 2 or args.sizes.repeats < 1 or args.jobs < 1:
        parser.error("--trials >= 2 each, --repeats >= 1, --jobs >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args.sizes, args.jobs, args.raw_fanova)
    report(result)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
