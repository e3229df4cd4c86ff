"""The metrics every family reports, computed on held-out data.

Probes (trainables.probes) are fitted in torch on train-split codes, on the device the
codes are on, and scored on test-split codes. Codes are computed on fixed, capped subsets
so evaluation cost does not grow with the dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from trainables.batching import batched
from trainables.data import Dataset
from trainables.factors import Factors
from trainables.probes import logistic_regression_accuracy, mlp_accuracy
from trainables.reference import ReferenceClassifier, load_reference

MAX_TRAIN_CODES = 5000
MAX_TEST_CODES = 2000
# Intermediate evaluations (every epoch of a trial but the last) run on smaller subsets
# with the linear probe only: a tenth of the cost, still a fair signal for ASHA.
QUICK_TRAIN_CODES = 1500
QUICK_TEST_CODES = 1000
# The held-out images whose codes the factor metrics (trainables.factor_metrics) score,
# where the dataset has ground-truth factors: disentanglement_lib's 10,000 training points,
# drawn once rather than per metric, so a model encodes them once per evaluation.
MAX_FACTOR_CODES = 10000
QUICK_FACTOR_CODES = 2000
ALL_PROBES = ("logreg", "mlp")
# Values within this of a declared bound still count as inside it: float32 estimates that
# are non-negative in exact arithmetic (the biased MMD's three means) can round a few ulps
# below zero.
RANGE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Metric:
    """One metric a family declares: the values it can take and which way is better.

    `Experiment` checks every evaluation against these declarations, intervals over seeds
    stay inside [low, high], and a sweep's default objectives take their direction from
    `goal`.
    """

    name: str
    low: float = 0.0
    high: float | None = 1.0  # None: no upper bound
    goal: Literal["max", "min"] | None = None  # None: neither direction is better
    note: str = ""

    def __post_init__(self) -> None:
        if self.goal not in ("max", "min", None):
            raise ValueError(f"{self.name}: goal must be 'max', 'min' or None, not {self.goal!r}")
        if self.high is not None and self.high <= self.low:
            raise ValueError(f"{self.name}: high {self.high} must exceed low {self.low}")

    @property
    def range(self) -> tuple[float, float | None]:
        return (self.low, self.high)

    def admits(self, value: float) -> bool:
        """Whether `value` lies in the declared range. NaN always does: it is how a metric
        says "undefined" (a diverged run, codes that are not finite)."""
        if math.isnan(value):
            return True
        if value < self.low - RANGE_TOLERANCE:
            return False
        return self.high is None or value <= self.high + RANGE_TOLERANCE


RECON_MSE = Metric(
    "recon_mse", goal="min", note="mean per-pixel squared error of test reconstructions"
)
CONTENT_ACC = Metric(
    "content_acc", goal="max", note="linear probe's accuracy reading the label from the code"
)
# What leakage_metrics returns; a family that reports leakage declares these.
LEAKAGE_METRICS = (
    Metric("leakage_acc", goal="min", note="best probe's accuracy reading the label from z"),
    Metric("leakage", goal="min", note="leakage_acc rescaled: 0 is chance, 1 is perfect"),
    *(
        Metric(f"leakage_acc_{probe}", goal="min", note=f"the {probe} probe's accuracy")
        for probe in ALL_PROBES
    ),
)
# What swap_metrics returns.
SWAP_METRICS = (
    Metric("swap_acc", goal="max", note="decoded swaps read as the swapped-in class"),
    Metric("swap_style_acc", goal="min", note="decoded swaps read as the style source's class"),
    Metric("degenerate", goal="min", note="1 when the family's degenerate solution is found"),
)
# What Experiment adds to every family's metrics.
RUN_METRICS = (
    Metric("diverged", goal="min", note="1 once a loss or a weight is not finite"),
    Metric("train_seconds", high=None, note="training time so far"),
    Metric("eval_seconds", high=None, note="evaluation time so far"),
)


def metric_declaration(name: str) -> Metric:
    """How a metric is declared (its range and goal), by the families that report it or,
    for the run and factor metrics, by the experiment."""
    from trainables.factor_metrics import FACTOR_METRICS
    from trainables.registry import all_families

    for metric in (*RUN_METRICS, *FACTOR_METRICS):
        if metric.name == name:
            return metric
    for family in all_families().values():
        if name in family.metric_names:
            return family.metric(name)
    raise KeyError(f"{name}: no registered family declares this metric")


def metric_range(name: str) -> tuple[float, float | None]:
    """The values a metric can take, so an interval over seeds never leaves them."""
    return metric_declaration(name).range


# swap_acc at or below this (chance is 0.1) means the decoder ignores the swapped code.
DEGENERATE_SWAP_ACC = 0.25


@dataclass
class EvalContext:
    """What evaluation needs beyond the model: fixed subsets and the reference classifier."""

    dataset: Dataset
    seed: int = 0
    max_train_codes: int = MAX_TRAIN_CODES
    max_test_codes: int = MAX_TEST_CODES
    use_reference: bool = True
    probes: tuple[str, ...] = ALL_PROBES
    _reference: ReferenceClassifier | None = field(default=None, repr=False)
    max_factor_codes: int = MAX_FACTOR_CODES
    quick_factors: bool = False  # the factor metrics at their quick sizes

    def __post_init__(self) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        pick = lambda n, cap: torch.randperm(n, generator=generator)[:cap].sort().values  # noqa: E731
        device = self.dataset.device
        self.train_index = pick(len(self.dataset.x_train), self.max_train_codes).to(device)
        self.test_index = pick(len(self.dataset.x_test), self.max_test_codes).to(device)
        # Drawn after the others, so a dataset without factors keeps the subsets it had.
        self.factor_index = (
            pick(len(self.dataset.x_test), self.max_factor_codes).to(device)
            if self.dataset.has_factors
            else None
        )
        # Built once: a Factors indexes its values per factor on first use, which every
        # replica's and every later evaluation then reuses.
        self._pool_factors = (
            self.dataset.factors_test.subset(self.factor_index)
            if self.factor_index is not None
            else None
        )

    @property
    def x_train(self) -> torch.Tensor:
        return self.dataset.x_train[self.train_index]

    @property
    def y_train(self) -> torch.Tensor:
        return self.dataset.y_train[self.train_index]

    @property
    def x_test(self) -> torch.Tensor:
        return self.dataset.x_test[self.test_index]

    @property
    def y_test(self) -> torch.Tensor:
        return self.dataset.y_test[self.test_index]

    @property
    def factor_pool(self) -> tuple[torch.Tensor, torch.Tensor, Factors] | None:
        """The held-out images the factor metrics score, their labels and their factors;
        None where the dataset has no ground-truth factors."""
        if self.factor_index is None:
            return None
        index = self.factor_index
        return (
            self.dataset.x_test[index],
            self.dataset.y_test[index],
            self._pool_factors,
        )

    @property
    def reference(self) -> ReferenceClassifier | None:
        if self._reference is None and self.use_reference:
            self._reference = load_reference(self.dataset)
        return self._reference

    def quick(self) -> EvalContext:
        """The context of intermediate evaluations: smaller subsets, linear probe only."""
        return EvalContext(
            self.dataset,
            self.seed,
            min(self.max_train_codes, QUICK_TRAIN_CODES),
            min(self.max_test_codes, QUICK_TEST_CODES),
            self.use_reference,
            ("logreg",),
            self._reference,
            min(self.max_factor_codes, QUICK_FACTOR_CODES),
            quick_factors=True,
        )


def recon_mse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float(((x - x_hat) ** 2).mean())


def chance_rate(labels: torch.Tensor) -> float:
    """Accuracy of always guessing the most frequent label."""
    return float(torch.bincount(labels).max()) / len(labels)


PROBES = {"logreg": logistic_regression_accuracy, "mlp": mlp_accuracy}


def probe_accuracies(
    train_codes: torch.Tensor,
    train_labels: torch.Tensor,
    test_codes: torch.Tensor,
    test_labels: torch.Tensor,
    seed: int = 0,
    probes: tuple[str, ...] = ALL_PROBES,
) -> dict[str, float]:
    """Test accuracy of a logistic regression and a small MLP predicting the label; NaN for
    each when the codes are not finite."""
    if not _finite(train_codes, test_codes):
        return {name: float("nan") for name in probes}
    return {
        name: PROBES[name](train_codes, train_labels, test_codes, test_labels, seed)
        for name in probes
    }


def content_accuracy(train_codes, train_labels, test_codes, test_labels, seed: int = 0) -> float:
    """How well the label can be read from a code: the linear probe's accuracy, NaN when the
    codes are not finite."""
    if not _finite(train_codes, test_codes):
        return float("nan")
    return logistic_regression_accuracy(train_codes, train_labels, test_codes, test_labels)


def leakage_metrics(
    train_codes,
    train_labels,
    test_codes,
    test_labels,
    seed: int = 0,
    probes: tuple[str, ...] = ALL_PROBES,
) -> dict[str, float]:
    """`leakage_acc`: the best probe's accuracy predicting the label from a code that should
    not carry it; `leakage`: the same rescaled so 0 is chance and 1 is perfect;
    `leakage_acc_<probe>`: each probe's own accuracy (Moyer et al. report the linear and
    the MLP adversary apart)."""
    scores = probe_accuracies(train_codes, train_labels, test_codes, test_labels, seed, probes)
    best = max(scores.values())
    chance = chance_rate(test_labels)
    return {
        "leakage_acc": best,
        "leakage": float(np.clip((best - chance) / (1.0 - chance), 0.0, 1.0)),
        **{f"leakage_acc_{name}": score for name, score in scores.items()},
    }


def swap_metrics(
    decoded: torch.Tensor,
    class_labels: torch.Tensor,
    style_labels: torch.Tensor,
    ctx: EvalContext,
) -> dict[str, float]:
    """What the reference classifier reads in decoded swaps: `swap_acc`, the share read as
    the class whose code (or label) was swapped in; `swap_style_acc`, the share read as the
    class of the image that gave the style (or z), which is where a degenerate decoder's
    swaps go; `degenerate`, swap_acc at or below DEGENERATE_SWAP_ACC."""
    if ctx.reference is None or not torch.isfinite(decoded).all():
        swap_acc = style_acc = float("nan")
    else:
        predicted = classify(ctx.reference, decoded)
        swap_acc = float((predicted == class_labels).float().mean())
        style_acc = float((predicted == style_labels).float().mean())
    return {
        "swap_acc": swap_acc,
        "swap_style_acc": style_acc,
        "degenerate": float(swap_acc <= DEGENERATE_SWAP_ACC),
    }


def classify(reference: ReferenceClassifier, images: torch.Tensor) -> torch.Tensor:
    """The reference classifier's reading of `images`: under `run_replicas`, every
    replica's images through the classifier as one batch."""
    key = ("reference", id(reference), tuple(images.shape[1:]), images.dtype, str(images.device))

    def read_all(batches: list[torch.Tensor]) -> list[torch.Tensor]:
        predicted = reference.predict(torch.cat(batches))
        return list(predicted.split([len(b) for b in batches]))

    return batched(key, read_all, images)


def derangement_targets(
    labels: torch.Tensor, n_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """For each label, a different label drawn uniformly (the class to swap in)."""
    shift = torch.randint(1, n_classes, labels.shape, generator=generator).to(labels.device)
    return (labels + shift) % n_classes


def _finite(*codes: torch.Tensor) -> bool:
    return bool(torch.stack([torch.isfinite(c).all() for c in codes]).all())
