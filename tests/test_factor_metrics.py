"""The disentanglement metrics on codes built so that the answer is known.

The pool is a full factor grid, 1 x 2 x 3 x 4 x 5 values repeated 20 times (2400 images):
a constant factor like dSprites' colour, which is not scored, then K = 4 that vary, each
value equally often and every pair of factors independent. On a full grid the plug-in
mutual information between a function of one factor and another factor is exactly 0, so
MIG and modularity on codes built from the factors are exact (MIG and modularity use all
2400 codes here). Sampled quantities get bounds from their sampling error:

- an accuracy over n points that cannot beat chance (noise codes) is within 6 sigma of
  chance, sigma = sqrt(p (1 - p) / n): 4 sigma of a quantity that moves with both the
  predictions and the test labels' frequencies, each at most binomial;
- a plug-in mutual information between independent variables is chi-squared: 2 n I has
  df = (bins - 1)(values - 1) degrees of freedom, so I < (df + 4 sqrt(2 df)) / (2 n).

The boosted trees' importances (DCI) have no closed form on noise; their bounds are stated
with the spread measured over 15 seeds, and sit many standard deviations beyond it.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from trainables.factor_metrics import (
    FACTOR_METRICS,
    FactorMetricSizes,
    beta_vae_score,
    discrete_mutual_information,
    factor_metrics,
    factor_vae_score,
    histogram_bins,
    mig,
    pool_split,
    sap,
)
from trainables.factors import Factors

GRID = (1, 2, 3, 4, 5)
VARYING = GRID[1:]
K = len(VARYING)
REPEATS = 20
POOL = math.prod(GRID) * REPEATS
NUM_EVAL = 1000
SIZES = FactorMetricSizes(
    num_train=POOL, num_eval=NUM_EVAL, num_variance_estimate=POOL, dci_train=150, dci_test=75
)
# SAP's codes: the pool is smaller than num_train + num_eval, so it is split 2400:1000.
SAP_TEST = POOL - round(POOL * POOL / (POOL + NUM_EVAL))
EXACT = 1e-9
# sklearn's importances plus DCI's 1e-11 smoothing: an exact 1 reads about 1 - 1e-9.
SMOOTHED = 1e-6
MISSING = 3  # the factor with 5 values, left out of the "missing" code


def sigma(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


# Chance for the sampled scores is 1/K (the fixed factor is drawn uniformly).
SAMPLED_CHANCE_BOUND = 6 * sigma(1 / K, NUM_EVAL)
# A gap between two units' accuracies when neither knows the factor: 4 sigma on average.
SAP_NOISE_BOUND = 4 * np.mean([sigma(1 / s, SAP_TEST) for s in VARYING])


@functools.cache
def factors() -> Factors:
    grid = torch.cartesian_prod(*(torch.arange(s) for s in GRID)).repeat(REPEATS, 1)
    return Factors(("colour", "a", "b", "c", "d"), GRID, grid)


def copy_codes() -> torch.Tensor:
    """One unit per varying factor: its value index scaled to [0, 1]."""
    values = factors().values[:, 1:].float()
    return values / torch.tensor([s - 1 for s in VARYING], dtype=torch.float32)


# A rotation that mixes every factor into every unit with equal weight (a Hadamard
# matrix): the metrics' worst case, where no unit is closer to one factor than another.
HADAMARD = (
    torch.tensor(
        [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float32
    )
    / 2
)


def random_rotation(seed: int) -> torch.Tensor:
    """A uniformly random rotation, from numpy's frozen legacy stream, signs fixed so the
    QR factorisation is unique on any LAPACK."""
    gaussian = np.random.RandomState(seed).standard_normal((K, K))
    q, r = np.linalg.qr(gaussian)
    return torch.from_numpy(q * np.sign(np.diag(r))).float()


def case_codes(case: str) -> torch.Tensor:
    copy = copy_codes()
    if case == "copy":
        return copy
    if case == "hadamard":
        return (copy - 0.5) @ HADAMARD
    if case == "missing":  # the unit of factor d is dead: a constant
        return torch.cat([copy[:, :MISSING], torch.full((POOL, 1), 0.5)], 1)
    if case == "noise":
        return torch.randn(POOL, K, generator=torch.Generator().manual_seed(1))
    if case == "duplicate":  # units a, a, b, b, ...
        return copy.repeat_interleave(2, 1)
    if case == "equal":
        return torch.full((POOL, K), 0.3)
    raise KeyError(case)


@functools.cache
def scores(case: str) -> dict[str, float]:
    return factor_metrics(case_codes(case), factors(), SIZES, seed=0)


def noise_mi_bound(values: int, n: int = POOL, bins: int = SIZES.num_bins) -> float:
    """Largest plug-in mutual information (nats) an independent unit shows, 4 sigma up."""
    df = (bins - 1) * (values - 1)
    return (df + 4 * math.sqrt(2 * df)) / (2 * n)


def test_declarations_match_what_is_computed():
    assert tuple(scores("copy")) == tuple(metric.name for metric in FACTOR_METRICS)
    for case in ("copy", "hadamard", "missing", "noise", "duplicate", "equal"):
        for metric in FACTOR_METRICS:
            value = scores(case)[metric.name]
            assert type(value) is float
            assert metric.admits(value) and not math.isnan(value), (case, metric.name, value)


def test_a_copy_of_the_factors_scores_one_wherever_the_metric_can():
    s = scores("copy")
    # Each unit's 20 bins hold one value each (at most 20 values), so I(z_k; v_k) = H(v_k);
    # the other units are independent of v_k on the grid: MIG and modularity are exactly 1.
    assert s["mig"] == pytest.approx(1.0, abs=EXACT)
    assert s["modularity"] == pytest.approx(1.0, abs=EXACT)
    # Fixing factor k zeroes unit k's differences and variance and no other unit's (unless
    # all 64 draws of another factor agree, p < 2^-63): BetaVAE's classes are separable with
    # a wide margin, and FactorVAE's argmin is always unit k.
    assert s["beta_vae_score"] >= 0.99
    assert s["factor_vae_score"] == 1.0
    # Each factor's trees split only on its own unit, which determines it.
    assert s["dci_disentanglement"] >= 1 - SMOOTHED
    assert s["dci_completeness"] >= 1 - SMOOTHED
    assert s["dci_informativeness"] == 1.0
    # SAP is far from 1 even here: one-feature one-vs-rest SVMs with C = 0.01 give the middle
    # values of a factor no interval. It is at least the binary factor's gap over K: its
    # classes at 0 and 1 are separated (objective 2.5 with w = 2, b = -1, against > 8 for
    # losing a class), while another unit reads it at chance plus sampling error.
    assert s["sap"] >= (1 - (0.5 + 6 * sigma(0.5, SAP_TEST))) / K


def test_a_full_rotation_hides_which_unit_holds_which_factor():
    s, copy = scores("hadamard"), scores("copy")
    # Reflecting a factor (v -> size - 1 - v) maps the grid to itself and turns any unit's
    # sign pattern into any other's: every unit holds the same information about every
    # factor, so the top two tie. (Exact up to float32 rounding at bin edges.)
    assert s["mig"] <= 0.01
    assert s["sap"] <= SAP_NOISE_BOUND
    # By the same symmetry the trees spread importance evenly: measured 0.022 +- 0.010.
    assert s["dci_disentanglement"] <= 0.15
    assert s["dci_completeness"] <= 0.15
    # A rotation loses nothing: the trees still read the factors (0.88 +- 0.04 from 150
    # codes, against chance 0.32), though less well than from axis-aligned units.
    assert 0.7 <= s["dci_informativeness"] < copy["dci_informativeness"]
    # Every unit knows most about the factor with the most variance, and something about
    # all four: modularity falls, though no lower than noise's (below).
    assert s["modularity"] < 0.8
    # FactorVAE: whichever factor is fixed, every unit's variance ratio has the same
    # distribution, so the argmin is blind to it: chance.
    assert s["factor_vae_score"] == pytest.approx(1 / K, abs=SAMPLED_CHANCE_BOUND)
    # BetaVAE: the fixed factor shows only in how much every unit's differences shrink, and
    # fixing c (4 values) or d (5) shrinks them almost equally: well below 1 (0.50 here),
    # above chance.
    assert 1 / K + SAMPLED_CHANCE_BOUND < s["beta_vae_score"] <= 0.75


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_random_rotation_keeps_the_sampled_scores_high_and_mig_low(seed):
    # Over 30 random rotations: BetaVAE 0.96 +- 0.05 (min 0.82), FactorVAE 0.89 +- 0.10
    # (min 0.70), MIG 0.26 +- 0.12 (max 0.56). The bounds add 4 sigma of sampling error.
    codes = (copy_codes() - 0.5) @ random_rotation(seed)
    slack = 4 * sigma(0.5, NUM_EVAL)
    assert beta_vae_score(codes, factors(), SIZES) >= 0.82 - slack
    assert factor_vae_score(codes, factors(), SIZES) >= 0.70 - slack
    assert mig(codes, factors(), SIZES) <= 0.6


def test_a_missing_factor_costs_its_share_of_each_average():
    s, copy = scores("missing"), scores("copy")
    # Factor d's unit is dead. d's gap is 0 and the other three are 1; the dead unit
    # scores 0 in modularity (disentanglement_lib's rule), the live ones 1.
    assert s["mig"] == pytest.approx((K - 1) / K, abs=EXACT)
    assert s["modularity"] == pytest.approx((K - 1) / K, abs=EXACT)
    # Batches fixing d have no zero-variance unit and every live unit votes for its own
    # factor, so exactly those batches are missed: binomial around 1/K of them.
    assert s["factor_vae_score"] == pytest.approx(1 - 1 / K, abs=4 * sigma(1 / K, NUM_EVAL))
    # BetaVAE still tells d apart: it is the class with no zero difference.
    assert s["beta_vae_score"] >= 0.99
    # d is read at chance (1/5), the others perfectly.
    chance = 1 / VARYING[MISSING]
    assert s["dci_informativeness"] == pytest.approx(
        (K - 1 + chance) / K, abs=6 * sigma(chance, SIZES.dci_test) / K
    )
    # Each factor's importances sum to 1, d's spread over the three live units: its
    # completeness is at least 1 - ln 3 / ln 4 (all spread evenly), near that as on noise.
    floor = (K - 1 + 1 - math.log(K - 1) / math.log(K)) / K
    assert floor - SMOOTHED <= s["dci_completeness"] <= floor + 0.05
    # d's importance also lands on the live units' rows, so disentanglement falls although
    # each live unit serves one factor: from about 0.59 (d spread evenly, the minimum,
    # since the score is convex in the spread) to 0.75 (all on one unit). Measured 0.599 +-
    # 0.004 over 15 seeds.
    assert missing_factor_disentanglement(K) - SMOOTHED <= s["dci_disentanglement"] <= 0.65
    # SAP is the mean of per-factor gaps: d's gap drops to noise, the others keep theirs
    # (the same SVMs; only the runner-ups, at chance, are redrawn).
    d_only = factors_only(MISSING + 1)
    expected = copy["sap"] - sap(copy_codes(), d_only, SIZES) / K
    assert s["sap"] == pytest.approx(expected, abs=SAP_NOISE_BOUND)


def missing_factor_disentanglement(k: int) -> float:
    """DCI disentanglement when k - 1 units each serve one factor and the k-th factor's
    importance is spread evenly over them: each row is (1, 1 / (k - 1)), normalised."""
    p = np.array([1.0, 1.0 / (k - 1)])
    p = p / p.sum()
    return float(1 + (p * np.log(p)).sum() / math.log(k))


def factors_only(column: int) -> Factors:
    f = factors()
    return Factors((f.names[column],), (f.sizes[column],), f.values[:, column : column + 1])


def test_noise_scores_chance():
    s = scores("noise")
    assert s["mig"] <= np.mean([noise_mi_bound(v) / math.log(v) for v in VARYING])
    assert s["sap"] <= SAP_NOISE_BOUND
    # Chance for the sampled scores is 1/K; for the trees, 1/size of each factor.
    assert s["beta_vae_score"] == pytest.approx(1 / K, abs=SAMPLED_CHANCE_BOUND)
    assert s["factor_vae_score"] == pytest.approx(1 / K, abs=SAMPLED_CHANCE_BOUND)
    spread = math.sqrt(sum(sigma(1 / v, SIZES.dci_test) ** 2 for v in VARYING)) / K
    assert s["dci_informativeness"] == pytest.approx(
        np.mean([1 / v for v in VARYING]), abs=6 * spread
    )
    # Measured over 15 seeds: disentanglement 0.009 +- 0.004, completeness 0.011 +- 0.004.
    assert s["dci_disentanglement"] <= 0.1
    assert s["dci_completeness"] <= 0.1
    # Modularity is not low on noise: an independent unit's information about a factor is
    # the estimate's bias, about df / (2n), which grows with the factor's values, so it
    # concentrates on d. With df in the ratio 1:2:3:4, modularity ~ 1 - (1 + 4 + 9) / (16 * 3)
    # = 0.71; measured 0.69 +- 0.05 over 12 noise draws.
    assert 0.45 <= s["modularity"] <= 0.95


def test_duplicated_units_tie():
    s = scores("duplicate")
    # Twins hold the same information and fit the same SVMs: the top two tie exactly.
    assert s["mig"] == 0.0
    assert s["sap"] == 0.0
    assert s["modularity"] == pytest.approx(1.0, abs=EXACT)
    assert s["dci_disentanglement"] >= 1 - SMOOTHED
    assert s["dci_informativeness"] == 1.0
    # Each factor's importance splits between its twins, p and 1 - p, over 2K units:
    # completeness 1 - H(p) / ln(2K), at least 1 - ln 2 / ln 8 = 2/3. The trees break each
    # tie by a random feature order, so p stays near 1/2: measured 0.676 +- 0.008 (max
    # 0.692) over 15 seeds; 0.72 allows shares out to 0.27.
    floor = 1 - math.log(2) / math.log(2 * K)
    assert floor - SMOOTHED <= s["dci_completeness"] <= 0.72
    # Both twins' variance is 0 when their factor is fixed; argmin takes the first.
    assert s["factor_vae_score"] == 1.0
    assert s["beta_vae_score"] >= 0.99


def test_codes_that_are_all_equal():
    s = scores("equal")
    for name in ("mig", "sap", "modularity", "factor_vae_score"):
        assert s[name] == 0.0, name  # every unit is dead (FactorVAE prunes them all)
    assert s["dci_disentanglement"] == pytest.approx(0.0, abs=EXACT)
    assert s["dci_completeness"] == pytest.approx(0.0, abs=EXACT)
    # Intercept-only classifiers: the most frequent training class, at chance.
    assert s["beta_vae_score"] == pytest.approx(1 / K, abs=SAMPLED_CHANCE_BOUND)
    spread = math.sqrt(sum(sigma(1 / v, SIZES.dci_test) ** 2 for v in VARYING)) / K
    assert s["dci_informativeness"] == pytest.approx(
        np.mean([1 / v for v in VARYING]), abs=6 * spread
    )


def test_a_one_unit_code_has_no_runner_up():
    unit = copy_codes()[:, 1:2]  # factor b alone
    assert mig(unit, factors(), SIZES) == pytest.approx(1 / K, abs=EXACT)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_codes_that_are_not_finite_give_nan(bad):
    codes = copy_codes().clone()
    codes[7, 2] = bad
    assert all(math.isnan(v) for v in factor_metrics(codes, factors(), SIZES).values())


def test_no_varying_factor_gives_nan():
    constant = Factors(("colour",), (1,), torch.zeros(POOL, 1, dtype=torch.int64))
    result = factor_metrics(copy_codes(), constant, SIZES)
    assert set(result) == {m.name for m in FACTOR_METRICS}
    assert all(math.isnan(v) for v in result.values())


def test_deterministic_in_the_seed():
    codes = case_codes("noise")
    assert factor_metrics(codes, factors(), SIZES, seed=0) == scores("noise")
    assert beta_vae_score(codes, factors(), SIZES, seed=1) != scores("noise")["beta_vae_score"]
    assert factor_vae_score(codes, factors(), SIZES, seed=1) != scores("noise")["factor_vae_score"]


def test_histogram_bins_are_disentanglement_libs():
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((500, 4))
    codes[:, 1] = 0.25  # constant: numpy widens its range by 0.5
    codes[:, 2] = rng.integers(0, 6, 500) / 5  # values on bin edges
    codes[:, 3] = np.round(codes[:, 3], 1)
    # disentanglement_lib's _histogram_discretize, counted from 0
    expected = np.stack([np.digitize(c, np.histogram(c, 20)[1][:-1]) - 1 for c in codes.T])
    got = histogram_bins(torch.from_numpy(codes), 20).numpy()
    assert (got == expected).all()
    assert got.min() == 0 and got.max() == 19 and len(np.unique(got[1])) == 1


def test_mutual_information_is_scikit_learns():
    from sklearn.metrics import mutual_info_score

    rng = np.random.default_rng(1)
    values = rng.integers(0, 6, 800)
    bins = np.stack([rng.integers(0, 20, 800), (values * 3 + rng.integers(0, 3, 800)) % 20])
    bins = np.concatenate([bins, np.full((1, 800), 7)])  # one occupied bin: 0
    got = discrete_mutual_information(torch.from_numpy(bins), 20, torch.from_numpy(values), 6)
    expected = [mutual_info_score(values, row) for row in bins]
    assert got.numpy() == pytest.approx(expected, abs=1e-12)
    assert got[2] == 0.0


def test_a_pool_smaller_than_both_sets_is_split_in_their_ratio():
    generator = torch.Generator().manual_seed(0)
    train, test = pool_split(300, 10000, 5000, generator)
    assert (len(train), len(test)) == (200, 100)
    assert len(torch.cat([train, test]).unique()) == 300
    train, test = pool_split(20000, 10000, 5000, generator)
    assert (len(train), len(test)) == (10000, 5000)
    assert len(torch.cat([train, test]).unique()) == 15000
    train, test = pool_split(2, 10000, 5000, generator)
    assert (len(train), len(test)) == (1, 1)


def test_sizes_default_to_disentanglement_libs_and_shrink_for_quick_use():
    full = FactorMetricSizes()
    assert (full.batch_size, full.num_train, full.num_eval) == (64, 10000, 5000)
    assert (full.num_variance_estimate, full.prune_threshold, full.num_bins) == (10000, 0.05, 20)
    assert (full.sap_c, full.dci_train, full.dci_test) == (0.01, 10000, 5000)
    quick = full.quick()
    assert quick.batch_size == 64 and quick.num_train < full.num_train
    assert quick.dci_train < full.dci_train
    with pytest.raises(ValueError):
        FactorMetricSizes(num_bins=1)
