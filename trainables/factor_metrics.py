"""Disentanglement metrics: how well codes line up with a dataset's ground-truth factors
(dSprites' shape, scale, orientation and position), as the field reports them.

Each metric follows google-research/disentanglement_lib's definition, with the defaults of
its unsupervised study (`config/unsupervised_study_v1/metric_configs/*.gin`, mean codes),
gathered in `FactorMetricSizes`. They score a POOL: `codes` (N, D), the mean codes of N
held-out images, and `factors`, those images' factors. disentanglement_lib encodes fresh
observations for every pair (BetaVAE score) and batch (FactorVAE score); here the pairs and
batches are drawn from the pool by index (`Factors.sample_fixing`), so a model encodes once
and both scores are index arithmetic on its codes. That is the one difference in sampling:
on dSprites' full grid the pool is a uniform sample of the images, and a draw from it is
disentanglement_lib's uniform draw. The other metrics take disentanglement_lib's training
and test codes from a shuffle of the pool (`pool_split`); where the pool holds fewer than
both, it is split between them in their 2:1 ratio.

Only the factors that vary in the pool are scored (dSprites' colour takes one value;
disentanglement_lib's "dsprites_full" leaves it out too); K below counts them, D counts
code units. With no varying factor, or codes that are not finite, every metric is NaN.

MIG, modularity and both sampled scores run in torch on the codes' device; SAP and DCI fit
scikit-learn estimators on the CPU (one-feature linear SVMs, gradient boosted trees), as
disentanglement_lib does. Every draw comes from a generator seeded with `seed`, per metric,
and the estimators get `seed` as their random_state (disentanglement_lib leaves the trees'
unseeded), so results are deterministic on a given machine and thread count.

DCI dominates the cost: its boosted trees grow 100 trees per factor value (11,300 for
dSprites' 3 + 6 + 40 + 32 + 32), about 28 ms of one CPU core per training code, so 4-5
minutes at disentanglement_lib's 10,000 and never under about 6 s however few; everything
else takes about 2 s at full size. Hence DCI's own sizes in `FactorMetricSizes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from trainables.factors import Factors
from trainables.metrics import Metric
from trainables.probes import logistic_regression_accuracy

# disentanglement_lib's DCI smooths every importance by this before taking entropies.
IMPORTANCE_SMOOTHING = 1e-11
# Sampled points are gathered this many at a time, so memory stays bounded at any size.
CHUNK_POINTS = 1024

FACTOR_METRICS = (
    Metric(
        "beta_vae_score",
        goal="max",
        note="BetaVAE score: eval accuracy naming the factor 64 pairs each share from "
        "their codes' mean absolute difference; chance is 1/K",
    ),
    Metric(
        "factor_vae_score",
        goal="max",
        note="FactorVAE score: eval accuracy naming a batch's fixed factor by majority vote "
        "of its least-varying unit; chance is about 1/K",
    ),
    Metric(
        "mig",
        goal="max",
        note="mutual information gap: top unit's minus runner-up's information about each "
        "factor, over the factor's entropy",
    ),
    Metric(
        "sap",
        goal="max",
        note="SAP: top unit's minus runner-up's accuracy (a 1-D linear SVM) per factor",
    ),
    Metric(
        "dci_disentanglement",
        goal="max",
        note="DCI: how few factors each unit matters to (boosted-tree importances)",
    ),
    Metric(
        "dci_completeness",
        goal="max",
        note="DCI: how few units each factor is read from (boosted-tree importances)",
    ),
    Metric(
        "dci_informativeness",
        goal="max",
        note="DCI: boosted trees' mean test accuracy reading the factors from the code",
    ),
    Metric(
        "modularity",
        goal="max",
        note="modularity: how much each unit's information is about one factor only; "
        "high for noise too, it ignores how much a unit knows",
    ),
)
FACTOR_METRIC_NAMES = tuple(metric.name for metric in FACTOR_METRICS)


@dataclass(frozen=True)
class FactorMetricSizes:
    """How many points each metric draws, and its other settings. The defaults are
    disentanglement_lib's unsupervised study's; `quick()` is for intermediate evaluations.

    `num_train` and `num_eval` are points for the BetaVAE and FactorVAE scores (each point
    a batch of `batch_size` pairs or images), and training and test codes for MIG and
    modularity (training codes only) and SAP. DCI has sizes of its own because its boosted
    trees cost far more than the rest (about 100 trees per factor value)."""

    batch_size: int = 64
    num_train: int = 10000
    num_eval: int = 5000
    # FactorVAE: images estimating each unit's variance, and the standard deviation below
    # which a unit counts as collapsed and is left out.
    num_variance_estimate: int = 10000
    prune_threshold: float = 0.05
    # MIG and modularity: equal-width bins per unit.
    num_bins: int = 20
    # SAP: the linear SVMs' inverse regularisation strength.
    sap_c: float = 0.01
    dci_train: int = 10000
    dci_test: int = 5000

    def __post_init__(self) -> None:
        for name in ("batch_size", "num_train", "num_eval", "num_variance_estimate", "num_bins"):
            if getattr(self, name) < 2:
                raise ValueError(f"FactorMetricSizes.{name} must be at least 2")
        if (self.dci_train == 0) != (self.dci_test == 0) or min(self.dci_train, self.dci_test) < 0:
            raise ValueError(
                "FactorMetricSizes.dci_train and dci_test must both be at least 1, or both 0 "
                "(no DCI)"
            )

    def quick(self) -> FactorMetricSizes:
        """Smaller sizes for intermediate evaluations: the same batches, a fifth of the
        points, a twentieth of DCI's codes."""
        return replace(
            self,
            num_train=min(self.num_train, 2000),
            num_eval=min(self.num_eval, 1000),
            num_variance_estimate=min(self.num_variance_estimate, 2000),
            dci_train=min(self.dci_train, 500),
            dci_test=min(self.dci_test, 250),
        )


# What an experiment's evaluations use. DCI's trees at disentanglement_lib's 10,000 codes
# would add 5 minutes of CPU to every evaluation; 1,000 take about 28 s of one core (the
# same estimator, a noisier importance estimate). Intermediate evaluations, which only
# steer ASHA, leave DCI out (NaN).
EVALUATION_SIZES = FactorMetricSizes(dci_train=1000, dci_test=500)
QUICK_SIZES = replace(EVALUATION_SIZES.quick(), dci_train=0, dci_test=0)
DCI_METRICS = ("dci_disentanglement", "dci_completeness", "dci_informativeness")


def factor_metrics(
    codes: torch.Tensor,
    factors: Factors,
    sizes: FactorMetricSizes = FactorMetricSizes(),  # noqa: B008 (frozen, so shareable)
    seed: int = 0,
) -> dict[str, float]:
    """Every metric of FACTOR_METRICS on a pool of codes and their factors, as Python
    floats; all NaN when the codes are not finite or no factor varies."""
    pool = _scored(codes, factors)
    if pool is None:
        return dict.fromkeys(FACTOR_METRIC_NAMES, math.nan)
    codes, factors = pool
    information, entropy = _information(codes, factors, sizes, seed)
    if sizes.dci_train:
        disentanglement, completeness, informativeness = _dci(codes, factors, sizes, seed)
    else:
        disentanglement = completeness = informativeness = math.nan
    return {
        "beta_vae_score": _beta_vae_score(codes, factors, sizes, seed),
        "factor_vae_score": _factor_vae_score(codes, factors, sizes, seed),
        "mig": _gap(information / entropy),
        "sap": _sap(codes, factors, sizes, seed),
        "dci_disentanglement": disentanglement,
        "dci_completeness": completeness,
        "dci_informativeness": informativeness,
        "modularity": _modularity(information),
    }


def beta_vae_score(
    codes: torch.Tensor, factors: Factors, sizes: FactorMetricSizes, seed: int = 0
) -> float:
    """BetaVAE score (Higgins et al., "beta-VAE: Learning Basic Visual Concepts with a
    Constrained Variational Framework", ICLR 2017; disentanglement_lib
    evaluation/metrics/beta_vae.py).

    A point draws a factor k uniformly and L = batch_size pairs of images (x_l, x'_l), the
    two of a pair sharing their value of factor k (each pair its own value), and has the
    feature

        z_diff = (1/L) sum_l |z(x_l) - z(x'_l)|   (one entry per unit).

    A linear classifier p(k | z_diff) is fitted on num_train points; the score is its
    accuracy on num_eval other points (disentanglement_lib's eval_accuracy). Chance is 1/K.

    The classifier is `trainables.probes.logistic_regression_accuracy`, in torch on the
    codes' device: multinomial logistic regression with C = 1, the objective of
    scikit-learn's `LogisticRegression()`, but on standardised features where
    disentanglement_lib feeds them raw. With 10,000 points the penalty is weak either way:
    on rotated copies of factors at unit scale the two agree within 0.004 (within 0.012 of
    the liblinear one-vs-rest fit that scikit-learn's default was in disentanglement_lib's
    day). Standardising makes the score independent of the codes' scale; scaled by 0.05,
    the same codes lose up to 0.08 in the raw fits.
    """
    pool = _scored(codes, factors)
    return math.nan if pool is None else _beta_vae_score(*pool, sizes, seed)


def factor_vae_score(
    codes: torch.Tensor, factors: Factors, sizes: FactorMetricSizes, seed: int = 0
) -> float:
    """FactorVAE score (Kim & Mnih, "Disentangling by Factorising", ICML 2018;
    disentanglement_lib evaluation/metrics/factor_vae.py).

    Each unit's variance s_d^2 is estimated (ddof 1) on num_variance_estimate images, and
    units with s_d < prune_threshold (0.05: collapsed to a constant mean) are left out:
    A = {d : s_d >= 0.05}. A point draws a factor k uniformly and a batch of L = batch_size
    images sharing one value of it, and votes for the unit of least normalised variance,

        d* = argmin_{d in A} Var_batch[z_d] / s_d^2,     V[k, d*] += 1.

    A majority-vote classifier c(d) = argmax_k V_train[k, d] is read off num_train points;
    the score is its accuracy on num_eval other points (disentanglement_lib's
    eval_accuracy), sum_d V_eval[c(d), d] / sum V_eval, and 0 when every unit is pruned.
    The threshold is absolute, so codes scaled far below unit variance score 0.
    """
    pool = _scored(codes, factors)
    return math.nan if pool is None else _factor_vae_score(*pool, sizes, seed)


def mig(codes: torch.Tensor, factors: Factors, sizes: FactorMetricSizes, seed: int = 0) -> float:
    """Mutual information gap (Chen et al., "Isolating Sources of Disentanglement in
    Variational Autoencoders", NeurIPS 2018; disentanglement_lib evaluation/metrics/mig.py,
    its discretisation and estimates in utils.py).

        MIG = (1/K) sum_k [I(z_(1); v_k) - I(z_(2); v_k)] / H(v_k),

    z_(1) and z_(2) the units with the largest and second largest mutual information with
    factor v_k. Each unit is discretised into num_bins (20) equal-width bins between its
    minimum and maximum (`histogram_bins`); I and H are plug-in estimates in nats on
    num_train codes of the pool. A one-unit code has no runner-up: its gap is I(z_1; v_k).
    """
    pool = _scored(codes, factors)
    if pool is None:
        return math.nan
    information, entropy = _information(*pool, sizes, seed)
    return _gap(information / entropy)


def sap(codes: torch.Tensor, factors: Factors, sizes: FactorMetricSizes, seed: int = 0) -> float:
    """SAP score (Kumar et al., "Variational Inference of Disentangled Latent Concepts from
    Unlabeled Observations", ICLR 2018, section 3; disentanglement_lib
    evaluation/metrics/sap_score.py, with its study's continuous_factors=False).

        S[d, k] = test accuracy of a linear SVM predicting v_k from z_d alone,
        SAP = (1/K) sum_k (S_(1)k - S_(2)k),

    the top and second-best entries of column k. The SVMs are scikit-learn's
    `LinearSVC(C=sap_c, class_weight="balanced")` on raw (unstandardised) codes, one-vs-rest;
    fitted on num_train codes of the pool, scored on num_eval others. A one-feature linear
    one-vs-rest classifier can give each class at most one interval, and a strongly
    regularised one rarely gives the middle values any, so even a perfect copy of a
    many-valued factor scores well below 1.
    """
    pool = _scored(codes, factors)
    return math.nan if pool is None else _sap(*pool, sizes, seed)


def dci(
    codes: torch.Tensor, factors: Factors, sizes: FactorMetricSizes, seed: int = 0
) -> tuple[float, float, float]:
    """DCI disentanglement, completeness and informativeness (Eastwood & Williams, "A
    Framework for the Quantitative Evaluation of Disentangled Representations", ICLR 2018;
    disentanglement_lib evaluation/metrics/dci.py).

    R[d, k] is unit d's importance to a gradient boosted tree classifier predicting v_k
    (scikit-learn's `GradientBoostingClassifier()` with default settings and its
    `feature_importances_`, which sum to 1 per factor), fitted on dci_train codes of the
    pool. With H_b the entropy in base b of a row or column normalised to sum 1, after
    adding 1e-11 to every R[d, k]:

        disentanglement = sum_d rho_d (1 - H_K(R[d, :])),  rho_d = sum_k R[d, k] / sum R,
        completeness = sum_k rho_k (1 - H_D(R[:, k])),     rho_k = sum_d R[d, k] / sum R,
        informativeness = (1/K) sum_k test accuracy (on dci_test codes).

    disentanglement_lib reports informativeness as "informativeness_test"; despite the
    name ("err") it is an accuracy. A factor no unit predicts still spreads its trees'
    importance over the units (each model's importances sum to 1), which lowers
    disentanglement as well as completeness. With one factor (K = 1) or one unit (D = 1)
    the corresponding entropy has nothing to spread over and scores 1, where
    disentanglement_lib's base-1 logarithm would give NaN.
    """
    pool = _scored(codes, factors)
    return (math.nan,) * 3 if pool is None else _dci(*pool, sizes, seed)


def modularity(
    codes: torch.Tensor, factors: Factors, sizes: FactorMetricSizes, seed: int = 0
) -> float:
    """Modularity (Ridgeway & Mozer, "Learning Deep Disentangled Embeddings with the
    F-Statistic Loss", NeurIPS 2018; disentanglement_lib
    evaluation/metrics/modularity_explicitness.py).

    With m[d, k] = I(z_d; v_k), MIG's estimate, and theta_d = max_k m[d, k]:

        delta_d = sum_{k != argmax} m[d, k]^2 / (theta_d^2 (K - 1)),
        modularity = (1/D) sum_d (1 - delta_d),

    where a unit with theta_d = 0 (a dead unit) scores 0, as in disentanglement_lib. It
    asks whether what a unit knows concerns one factor, not how much it knows: pure noise
    scores well above 0, since the estimate's bias grows with a factor's number of values
    and so concentrates on the largest factor. With K = 1 every live unit scores 1.
    """
    pool = _scored(codes, factors)
    if pool is None:
        return math.nan
    return _modularity(_information(*pool, sizes, seed)[0])


def pool_split(
    n: int, num_train: int, num_test: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint training and test indices into a pool of n: num_train and num_test of a
    shuffle of it, or, where it holds fewer than both, all of it split in their ratio
    (the training part rounded, at least one image in each)."""
    order = torch.randperm(n, generator=generator)
    if n < num_train + num_test:
        num_train = min(max(round(n * num_train / (num_train + num_test)), 1), n - 1)
        num_test = n - num_train
    return order[:num_train], order[num_train : num_train + num_test]


def histogram_bins(codes: torch.Tensor, bins: int) -> torch.Tensor:
    """Each unit's bin, 0..bins-1, among `bins` equal-width bins between its minimum and
    maximum: (N, D) codes to (D, N) int64. It is disentanglement_lib's
    `np.digitize(z, np.histogram(z, bins)[1][:-1])` less one, edges computed as numpy does
    for float64 codes (start + i * width), so the maximum lands in the last bin and a constant
    unit in one bin."""
    wide = codes.double().T
    low, high = wide.min(1).values, wide.max(1).values
    flat = low == high  # numpy's histogram widens an empty range by 0.5 each side
    low, high = torch.where(flat, low - 0.5, low), torch.where(flat, high + 0.5, high)
    steps = torch.arange(bins, dtype=torch.float64, device=wide.device)
    lower_edges = low[:, None] + steps * ((high - low) / bins)[:, None]
    return torch.searchsorted(lower_edges, wide.contiguous(), right=True) - 1


def discrete_mutual_information(
    bins: torch.Tensor, num_bins: int, values: torch.Tensor, size: int
) -> torch.Tensor:
    """Plug-in mutual information in nats between each row of `bins` (D, N), in
    0..num_bins-1, and `values` (N,), in 0..size-1: scikit-learn's `mutual_info_score`
    for each unit, 0 for a unit in one bin."""
    units, n = bins.shape
    cells = num_bins * size
    offsets = torch.arange(units, device=bins.device)[:, None] * cells
    counts = torch.bincount(
        (offsets + bins * size + values[None]).view(-1), minlength=units * cells
    )
    joint = counts.view(units, num_bins, size).double() / n
    p_bin, p_value = joint.sum(2, keepdim=True), joint.sum(1, keepdim=True)
    ratio = joint / (p_bin * p_value)
    terms = torch.where(joint > 0, joint * ratio.log(), joint.new_zeros(()))
    information = terms.sum((1, 2)).clamp(min=0.0)
    one_bin = (p_bin.squeeze(2) > 0).sum(1) == 1
    return torch.where(one_bin, information.new_zeros(()), information)


def _scored(codes: torch.Tensor, factors: Factors) -> tuple[torch.Tensor, Factors] | None:
    """The codes and the factors that vary among them, on the codes' device; None where
    the metrics are undefined (codes not finite, no factor varies)."""
    if codes.dim() != 2 or len(codes) != len(factors):
        raise ValueError(
            f"factor metrics: codes of shape {tuple(codes.shape)} for {len(factors)} images; "
            "expected (N, D) with one row per image"
        )
    if not bool(torch.isfinite(codes).all()):
        return None
    varying = factors.varying()
    if not varying:
        return None
    keep = torch.tensor(varying, device=factors.device)
    scored = Factors(
        tuple(factors.names[k] for k in varying),
        tuple(factors.sizes[k] for k in varying),
        factors.values.index_select(1, keep).to(codes.device),
    )
    return codes.detach(), scored


def _beta_vae_score(
    codes: torch.Tensor, factors: Factors, sizes: FactorMetricSizes, seed: int
) -> float:
    generator = torch.Generator().manual_seed(seed)
    train = _beta_vae_points(codes, factors, sizes.num_train, sizes.batch_size, generator)
    test = _beta_vae_points(codes, factors, sizes.num_eval, sizes.batch_size, generator)
    return logistic_regression_accuracy(*train, *test, seed)


def _beta_vae_points(
    codes: torch.Tensor, factors: Factors, points: int, batch: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`points` features (mean |z - z'| over `batch` pairs sharing one factor's value) and
    the factors they were drawn for."""
    labels = torch.randint(len(factors.names), (points,), generator=generator)
    features = codes.new_empty(points, codes.shape[1])
    for factor in range(len(factors.names)):
        rows = torch.nonzero(labels == factor).squeeze(1)
        for chunk in rows.split(CHUNK_POINTS):
            pairs = factors.sample_fixing(factor, len(chunk) * batch, 2, generator)
            difference = (codes[pairs[:, 0]] - codes[pairs[:, 1]]).abs()
            features[chunk.to(codes.device)] = difference.view(len(chunk), batch, -1).mean(1)
    return features, labels.to(codes.device)


def _factor_vae_score(
    codes: torch.Tensor, factors: Factors, sizes: FactorMetricSizes, seed: int
) -> float:
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randperm(len(codes), generator=generator)[: sizes.num_variance_estimate]
    variance = codes[sample.to(codes.device)].double().var(0)
    active = variance.sqrt() >= sizes.prune_threshold
    if not bool(active.any()):
        return 0.0
    train = _factor_vae_votes(codes, factors, variance, active, sizes.num_train, sizes, generator)
    test = _factor_vae_votes(codes, factors, variance, active, sizes.num_eval, sizes, generator)
    classifier = train.argmax(0)  # each unit's majority factor, the first on a tie
    return float(test.gather(0, classifier[None]).sum()) / float(test.sum())


def _factor_vae_votes(
    codes: torch.Tensor,
    factors: Factors,
    variance: torch.Tensor,
    active: torch.Tensor,
    points: int,
    sizes: FactorMetricSizes,
    generator: torch.Generator,
) -> torch.Tensor:
    """(K, D) votes of `points` batches: V[k, d] counts the batches that fixed factor k
    and whose least-varying active unit (relative to `variance`) was d."""
    units = codes.shape[1]
    labels = torch.randint(len(factors.names), (points,), generator=generator)
    votes = torch.zeros(len(factors.names), units, dtype=torch.int64, device=codes.device)
    for factor in range(len(factors.names)):
        count = int((labels == factor).sum())
        for start in range(0, count, CHUNK_POINTS):
            groups = min(CHUNK_POINTS, count - start)
            batches = factors.sample_fixing(factor, groups, sizes.batch_size, generator)
            local = codes[batches].double().var(1)  # (groups, D), ddof 1 as in dlib
            # Pruned units never win.
            winners = (local / variance).masked_fill(~active, math.inf).argmin(1)
            votes[factor] += torch.bincount(winners, minlength=units)
    return votes


def _information(
    codes: torch.Tensor, factors: Factors, sizes: FactorMetricSizes, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(D, K) mutual information between discretised units and factors, and (K,) the
    factors' entropies, on num_train codes of the pool (disentanglement_lib's MIG and
    modularity use training codes only). A factor that takes one value among them (a
    pool much larger than num_train, a rare value) is left out, like one constant in the
    pool."""
    generator = torch.Generator().manual_seed(seed)
    train = torch.randperm(len(codes), generator=generator)[: sizes.num_train].to(codes.device)
    bins = histogram_bins(codes[train], sizes.num_bins)
    values = factors.values[train]
    columns, entropies = [], []
    for factor, size in enumerate(factors.sizes):
        column = values[:, factor]
        columns.append(discrete_mutual_information(bins, sizes.num_bins, column, size))
        p = torch.bincount(column, minlength=size).double() / len(column)
        entropies.append(-(p[p > 0] * p[p > 0].log()).sum())
    information, entropy = torch.stack(columns, 1), torch.stack(entropies)
    return information[:, entropy > 0], entropy[entropy > 0]


def _gap(scores: torch.Tensor) -> float:
    """Mean over factors (columns) of the best unit's score minus the runner-up's."""
    if scores.shape[1] == 0:
        return math.nan
    if scores.shape[0] == 1:
        return float(scores[0].mean())
    top = scores.topk(2, dim=0).values
    return float((top[0] - top[1]).mean())


def _modularity(information: torch.Tensor) -> float:
    if information.shape[1] == 0:
        return math.nan
    squared = information.square()
    top = squared.max(1).values
    k = squared.shape[1]
    rest = squared.sum(1) - top
    delta = rest / (top * (k - 1)) if k > 1 else torch.zeros_like(top)
    per_unit = torch.where(top > 0, 1.0 - delta, torch.zeros_like(top))
    return float(per_unit.mean())


def _cpu_split(
    codes: torch.Tensor, factors: Factors, num_train: int, num_test: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training and test codes (float64) and factor values as numpy arrays."""
    train, test = pool_split(len(codes), num_train, num_test, torch.Generator().manual_seed(seed))
    x = codes.detach().double().cpu().numpy()
    y = factors.values.cpu().numpy()
    return x[train], y[train], x[test], y[test]


def _sap(codes: torch.Tensor, factors: Factors, sizes: FactorMetricSizes, seed: int) -> float:
    from sklearn.svm import LinearSVC

    x_train, y_train, x_test, y_test = _cpu_split(
        codes, factors, sizes.num_train, sizes.num_eval, seed
    )
    units, k = codes.shape[1], len(factors.names)
    accuracy = np.zeros((units, k))
    for factor in range(k):
        labels = y_train[:, factor]
        if len(np.unique(labels)) == 1:  # every unit predicts the one class seen
            accuracy[:, factor] = np.mean(y_test[:, factor] == labels[0])
            continue
        for unit in range(units):
            svm = LinearSVC(C=sizes.sap_c, class_weight="balanced", random_state=seed)
            svm.fit(x_train[:, unit : unit + 1], labels)
            predicted = svm.predict(x_test[:, unit : unit + 1])
            accuracy[unit, factor] = np.mean(predicted == y_test[:, factor])
    return _gap(torch.from_numpy(accuracy))


def _dci(
    codes: torch.Tensor, factors: Factors, sizes: FactorMetricSizes, seed: int
) -> tuple[float, float, float]:
    from sklearn.ensemble import GradientBoostingClassifier

    x_train, y_train, x_test, y_test = _cpu_split(
        codes, factors, sizes.dci_train, sizes.dci_test, seed
    )
    k = len(factors.names)
    importance = np.zeros((codes.shape[1], k))
    accuracy = np.zeros(k)
    for factor in range(k):
        labels = y_train[:, factor]
        if len(np.unique(labels)) == 1:  # no tree to grow: no unit matters
            accuracy[factor] = np.mean(y_test[:, factor] == labels[0])
            continue
        trees = GradientBoostingClassifier(random_state=seed).fit(x_train, labels)
        importance[:, factor] = np.abs(trees.feature_importances_)
        accuracy[factor] = np.mean(trees.predict(x_test) == y_test[:, factor])
    matrix = torch.from_numpy(importance)
    return _specificity(matrix), _specificity(matrix.T), float(accuracy.mean())


def _specificity(importance: torch.Tensor) -> float:
    """sum_r rho_r (1 - H(row r)), entropies in base (number of columns) of the smoothed,
    normalised rows, rho_r each row's share of the total (uniform when all are 0)."""
    columns = importance.shape[1]
    if columns == 1:
        per_row = torch.ones(importance.shape[0], dtype=importance.dtype)
    else:
        smoothed = importance + IMPORTANCE_SMOOTHING
        p = smoothed / smoothed.sum(1, keepdim=True)
        per_row = 1.0 + (p * p.log()).sum(1) / math.log(columns)
    total = importance.sum()
    weights = importance.sum(1) / total if total > 0 else torch.full_like(per_row, 1 / len(per_row))
    return float((per_row * weights).sum())
