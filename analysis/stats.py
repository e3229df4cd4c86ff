"""The statistics of a study, shared by the report, the notebook, the robustness summary
and reproductions: numpy and scipy only (no MLflow, Ray or torch), each a plain function of
plain values so a test can construct its input.

- seed intervals: `bootstrap_interval`, a percentile bootstrap of the mean over seeds, which
  cannot leave the range the values (and so the metric) lie in;
- how much is luck: `variance_share`, the one-way random-effects split of an objective's
  variance into configuration and seed (the intraclass correlation ICC(1)), with its
  F-distribution interval;
- budget: `budget_band` (best-so-far against trials over random orderings of the trials)
  and `expected_best_of_k` (Dodge et al., 2019, "Show your work");
- do metrics agree: `rank_agreement`, Spearman's rank correlation between metrics over
  runs (Locatello et al. 2019, Figure 2), and `upset_rate`, how often a run of the worst
  configuration beats a run of the best.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CONFIDENCE = 0.95
# Percentile ends settle to about 0.001 of a rate at this many resamples; a study has at
# most a few dozen configs, so it costs milliseconds.
RESAMPLES = 4000


def finite_or_none(value: Any) -> float | None:
    """`value` as a float when it is a finite number (bools are not), else None: what
    every reader of results and metrics means by "has a value"."""
    if isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def pareto_mask(values: np.ndarray, modes: list[str]) -> np.ndarray:
    """Non-dominated rows of `values` (one column per objective)."""
    signed = np.column_stack(
        [values[:, i] * (-1 if m == "max" else 1) for i, m in enumerate(modes)]
    )
    keep = np.ones(len(signed), dtype=bool)
    for i, row in enumerate(signed):
        dominated = np.all(signed <= row, axis=1) & np.any(signed < row, axis=1)
        keep[i] = not dominated.any()
    return keep


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its 95% bootstrap interval (NaN ends below two values)."""

    mean: float
    low: float
    high: float
    n: int


def bootstrap_interval(
    values: Sequence[float | None],
    bounds: tuple[float | None, float | None] = (None, None),
    seed: int = 0,
) -> Interval:
    """The mean of the finite `values` and its 95% percentile-bootstrap interval.

    Percentile ends are means of resamples, so they lie between the smallest and largest
    value: a rate's interval stays in [0, 1] where a t-interval can leave it (0.958 to
    1.036 was seen). `bounds` (the metric's declared range) clip as well, for values
    logged outside it by older code. With few seeds the interval is narrower than a
    t-interval (about 0.4 of its width at 3 seeds): it shows the spread the seeds had, not
    a coverage guarantee, which the report says."""
    finite = np.array([v for v in map(finite_or_none, values) if v is not None], dtype=float)
    n = len(finite)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(finite.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    (low,), (high,) = bootstrap_bounds(finite[None, :], seed)
    lowest, highest = bounds
    if lowest is not None:
        low, mean = max(low, lowest), max(mean, lowest)
    if highest is not None:
        high, mean = min(high, highest), min(mean, highest)
    return Interval(mean, float(low), float(high), n)


def bootstrap_bounds(values: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The 95% percentile-bootstrap interval of the mean of each row of `values` (rows:
    metrics; columns: two seeds or more; every value finite), all rows from the same
    resamples of the columns: one vectorised pass, a millisecond for a trial's metrics,
    so a trial can report intervals every epoch."""
    n = values.shape[1]
    picks = np.random.default_rng(seed).integers(0, n, size=(RESAMPLES, n))
    means = values[:, picks].mean(axis=2)  # (rows, resamples)
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(means, [tail, 100 - tail], axis=1)
    # Rows whose values are all equal: every resample's mean is that value, to the bit.
    constant = np.ptp(values, axis=1) == 0
    low[constant] = high[constant] = values[constant, 0]
    return low, high


@dataclass(frozen=True)
class VarianceShare:
    """How an objective's variance splits between configuration and seed.

    `config_share` is the intraclass correlation ICC(1): the between-config variance
    component over the total. 1 means the seed does not matter (re-running a config gives
    the same number), 0 means the configs do not differ beyond seed noise."""

    config_share: float
    low: float
    high: float
    config_variance: float
    seed_variance: float
    configs: int
    runs: int
    seeds_per_config: float  # n0, the effective group size of an unbalanced design

    @property
    def seed_share(self) -> float:
        return 1.0 - self.config_share

    def as_metrics(self, prefix: str) -> dict[str, float]:
        """The figures as metrics of a study's parent run (`prefix` names the objective)."""
        return {
            f"{prefix}_config_share": self.config_share,
            f"{prefix}_config_share_low": self.low,
            f"{prefix}_config_share_high": self.high,
            f"{prefix}_config_variance": self.config_variance,
            f"{prefix}_seed_variance": self.seed_variance,
        }


def variance_share(values: Sequence[float], groups: Sequence[Any]) -> VarianceShare | None:
    """One-way random-effects decomposition of `values` grouped by config (`groups`).

    The variance components come from the ANOVA mean squares (between MSB, within MSW):
    seed variance = MSW, config variance = max(0, (MSB - MSW) / n0). The interval is the
    exact one for a balanced design (Searle 1971; Shrout & Fleiss 1979's ICC(1)), from
    F = MSB / MSW and the F(k-1, N-k) quantiles, and a close approximation with n0 for an
    unbalanced one. None without two configs and a config with two finite values."""
    from scipy import stats

    by_group: dict[Any, list[float]] = {}
    for value, group in zip(values, groups, strict=True):
        value = finite_or_none(value)
        if value is not None:
            by_group.setdefault(group, []).append(value)
    samples = [np.array(v) for v in by_group.values()]
    k, total = len(samples), sum(len(s) for s in samples)
    if k < 2 or total - k < 1:
        return None
    sizes = np.array([len(s) for s in samples], dtype=float)
    grand = np.concatenate(samples).mean()
    msb = float(sum(n * (s.mean() - grand) ** 2 for n, s in zip(sizes, samples, strict=True)))
    msb /= k - 1
    msw = float(sum(((s - s.mean()) ** 2).sum() for s in samples)) / (total - k)
    n0 = float((total - (sizes**2).sum() / total) / (k - 1))
    config_variance = max(0.0, (msb - msw) / n0)
    if msw == 0.0:
        # Every seed of a config gave the same value: all variance is the config's.
        share = low = high = 1.0 if msb > 0 else math.nan
        return VarianceShare(share, low, high, config_variance, 0.0, k, total, n0)
    f_observed = msb / msw
    f_low = f_observed / stats.f.ppf(0.5 + CONFIDENCE / 2, k - 1, total - k)
    f_high = f_observed * stats.f.ppf(0.5 + CONFIDENCE / 2, total - k, k - 1)
    share = config_variance / (config_variance + msw)
    low = float(min(max((f_low - 1) / (f_low + n0 - 1), 0.0), 1.0))
    high = float(min(max((f_high - 1) / (f_high + n0 - 1), 0.0), 1.0))
    return VarianceShare(share, low, high, config_variance, msw, k, total, n0)


def best_so_far(values: Sequence[float], mode: str) -> np.ndarray:
    """The best value among the first 1, 2, ... trials (NaN until a finite one)."""
    signed = np.array([_signed(v, mode) for v in values], dtype=float)
    running = np.fmax.accumulate(signed) if len(signed) else signed
    return running * (1 if mode == "max" else -1)


@dataclass(frozen=True)
class BudgetBand:
    """Best-so-far against the number of trials: as the study ran them, and the median
    and 95% band over random orderings of the same trials."""

    trials: np.ndarray  # 1..n
    observed: np.ndarray
    median: np.ndarray
    low: np.ndarray
    high: np.ndarray


def budget_band(
    values: Sequence[float], mode: str, orderings: int = 2000, seed: int = 0
) -> BudgetBand:
    """How fast the best result came, and how much of that was the order of the trials.

    The orderings reshuffle the finished trials, so the band answers "had these trials come
    in another order"; it is not a new search (a sampler's later trials depend on its
    earlier ones, which a shuffle ignores)."""
    finite = np.array([v for v in map(finite_or_none, values) if v is not None], dtype=float)
    n = len(finite)
    trials = np.arange(1, n + 1)
    if n == 0:
        empty = np.array([], dtype=float)
        return BudgetBand(trials, empty, empty, empty, empty)
    sign = 1.0 if mode == "max" else -1.0
    rng = np.random.default_rng(seed)
    shuffled = np.array([rng.permutation(finite) for _ in range(orderings)]) * sign
    curves = np.maximum.accumulate(shuffled, axis=1) * sign
    tail = (1 - CONFIDENCE) / 2
    return BudgetBand(
        trials,
        best_so_far(finite, mode),
        np.median(curves, axis=0),
        np.quantile(curves, tail, axis=0),
        np.quantile(curves, 1 - tail, axis=0),
    )


def expected_best_of_k(values: Sequence[float], mode: str) -> np.ndarray:
    """E[best of k configurations drawn at random from these trials], for k = 1..n.

    Dodge et al. (2019), "Show your work": with the n finite values sorted worst to best,
    v(1) .. v(n), drawing k with replacement gives P(best = v(i)) = (i/n)^k - ((i-1)/n)^k.
    It treats the trials as draws from one distribution, which a random search gives and
    an adaptive sampler (TPE) only approximates: read it as "what a random pick of k of
    these configs would have reached"."""
    finite = np.array([v for v in map(finite_or_none, values) if v is not None], dtype=float)
    n = len(finite)
    if n == 0:
        return np.array([], dtype=float)
    ordered = np.sort(finite) if mode == "max" else np.sort(finite)[::-1]
    ranks = np.arange(1, n + 1) / n
    expected = []
    for k in range(1, n + 1):
        weights = ranks**k - np.concatenate(([0.0], ranks[:-1])) ** k
        expected.append(float(weights @ ordered))
    return np.array(expected)


def _signed(value: Any, mode: str) -> float:
    value = finite_or_none(value)
    if value is None:
        return math.nan
    return value if mode == "max" else -value


def rank_agreement(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, dict]:
    """Spearman's rank correlation between each pair of `metrics` over `rows` (one per
    run, metric name -> value), from the runs where both are finite: metric -> metric ->
    {"rho", "n"}. rho is NaN with fewer than 3 such runs or a metric constant over them."""
    from scipy import stats

    found: dict[str, dict] = {}
    for a in metrics:
        found[a] = {}
        for b in metrics:
            pairs = [(finite_or_none(row.get(a)), finite_or_none(row.get(b))) for row in rows]
            pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
            rho = math.nan
            if len(pairs) >= 3:
                xs, ys = np.array(pairs).T
                if np.ptp(xs) > 0 and np.ptp(ys) > 0:
                    rho = float(stats.spearmanr(xs, ys).statistic)
            found[a][b] = {"rho": rho, "n": len(pairs)}
    return found


def upset_rate(values: Sequence[float], groups: Sequence[Any], mode: str) -> dict | None:
    """Locatello et al.'s "a good run with bad hyperparameters can beat a bad run with
    good ones", as a number: the configs with the best and the worst mean (by `mode`),
    and the share of (best-config run, worst-config run) pairs in which the worst
    config's run is the better one (ties count half). None without two configs with
    finite values."""
    by_group: dict[Any, list[float]] = {}
    for value, group in zip(values, groups, strict=True):
        value = finite_or_none(value)
        if value is not None:
            by_group.setdefault(group, []).append(value)
    if len(by_group) < 2:
        return None
    sign = 1.0 if mode == "max" else -1.0
    ranked = sorted(by_group, key=lambda g: sign * float(np.mean(by_group[g])))
    worst, best = ranked[0], ranked[-1]
    good = sign * np.array(by_group[best])[:, None]
    bad = sign * np.array(by_group[worst])[None, :]
    rate = float(((bad > good).sum() + 0.5 * (bad == good).sum()) / (good.size * bad.size))
    return {"best": best, "worst": worst, "rate": rate, "pairs": int(good.size * bad.size)}
