"""What reading a sample of a large study costs fANOVA in accuracy (analysis.importance's
FANOVA_MAX_TRIALS).

    python -m tests.bench.fanova_sample [--trials 1000] [--repeats 5]

On the synthetic studies of tests.bench.importance_floor (6 parameters shaped like the
ML-VAE's space, known first-order shares), fANOVA as the report runs it reads every
trial, then a seeded random FANOVA_MAX_TRIALS of them. Printed per way: the share of
studies whose dominant parameter comes first, the mean absolute error of the shares
against the true ones, and seconds per evaluation.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import optuna

from analysis.importance import FANOVA_MAX_TRIALS, FANOVA_SEED, searched_scale
from tests.bench.importance_floor import DOMINANT, make_study, true_shares


def shares(study: optuna.Study, max_trials: int | None) -> tuple[dict[str, float], float]:
    started = time.perf_counter()
    scores = optuna.importance.FanovaImportanceEvaluator(seed=FANOVA_SEED).evaluate(
        searched_scale(study, max_trials)
    )
    total = sum(scores.values())
    return {k: v / total for k, v in scores.items()}, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.fanova_sample")
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--noise", type=float, default=0.05)
    args = parser.parse_args(argv)
    truth = true_shares()
    rows: dict[str, list[tuple[bool, float, float]]] = {"all": [], "sample": []}
    for repeat in range(args.repeats):
        study = make_study(args.trials, args.noise, (7, repeat))
        for way, cap in (("all", None), ("sample", FANOVA_MAX_TRIALS)):
            found, seconds = shares(study, cap)
            top = max(found, key=found.get) == DOMINANT
            error = float(np.mean([abs(found.get(p, 0.0) - truth[p]) for p in truth]))
            rows[way].append((top, error, seconds))
    print(
        f"fANOVA on {args.trials} synthetic trials (noise {args.noise}, {args.repeats} studies): "
        f"every trial vs a seeded random {FANOVA_MAX_TRIALS}"
    )
    for way, results in rows.items():
        print(
            f"  {way:>6}: dominant first {statistics.fmean(r[0] for r in results):.2f}, "
            f"mean |share - true| {statistics.fmean(r[1] for r in results):.3f} "
            f"(max {max(r[1] for r in results):.3f}), "
            f"{statistics.fmean(r[2] for r in results):.1f} s each"
        )


if __name__ == "__main__":
    main()
