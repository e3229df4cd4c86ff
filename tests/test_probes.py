"""The torch probes against the scikit-learn pipelines they replace, on fixed codes that span
easy to hard: digits projected to a few dimensions, overlapping Gaussian clusters, a
constant column.

The logistic regression is convex, so each fit is compared with scikit-learn's. The MLP is
not: on these codes scikit-learn's own accuracy moves by about 0.01 (one standard
deviation) from one seed to the next, and by up to 0.02 between two L-BFGS runs from the
same start, so no single seed can agree to 0.01. Its tests compare means over seeds: per
case within 0.02 (about four standard errors at eight seeds), and over all cases within
0.01, which catches a bias of that size. Over 40 seeds the per-case means agree to 0.003.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from trainables import probes
from trainables.metrics import content_accuracy, probe_accuracies

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TOLERANCE = 0.01
MLP_SEEDS = range(8)
MLP_CASE_TOLERANCE = 0.02
Codes = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@functools.cache
def digits_codes(dim: int, constant_column: bool = False) -> Codes:
    """sklearn's digits through a fixed random projection: 1197 train codes, 600 test."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    z = x @ rng.standard_normal((64, dim))
    if constant_column:
        z[:, 0] = 0.5
    order = rng.permutation(len(x))
    return _split(z, y, order[:1197], order[1197:])


@functools.cache
def cluster_codes(separation: float, dim: int = 8) -> Codes:
    """Ten overlapping unit Gaussians with centres `separation` standard deviations apart
    along each axis on average: 2000 train codes, 1000 test."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((10, dim)) * separation
    y = rng.integers(0, 10, 3000)
    z = centres[y] + rng.standard_normal((len(y), dim))
    return _split(z, y, np.arange(2000), np.arange(2000, 3000))


def _split(z: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> Codes:
    codes = torch.from_numpy(z.astype(np.float32))
    labels = torch.from_numpy(y.astype(np.int64))
    return codes[train], labels[train], codes[test], labels[test]


CASES = {
    "digits-2d": lambda: digits_codes(2),
    "digits-10d": lambda: digits_codes(10),
    "digits-20d": lambda: digits_codes(20),
    "digits-10d-constant-column": lambda: digits_codes(10, constant_column=True),
    "clusters-0.5": lambda: cluster_codes(0.5),
    "clusters-1.0": lambda: cluster_codes(1.0),
    "clusters-1.5": lambda: cluster_codes(1.5),
}


def sklearn_accuracy(codes: Codes, probe: str, seed: int = 0) -> float:
    """The pipeline metrics.py fitted before the torch probes, on one BLAS thread as it
    was."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train, x_test, y_test = (t.numpy() for t in codes)
    estimator = {
        "logreg": lambda: LogisticRegression(max_iter=300),
        "mlp": lambda: MLPClassifier(
            hidden_layer_sizes=(64,), solver="lbfgs", max_iter=200, random_state=seed
        ),
    }[probe]()
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore")  # capped iterations are part of the configuration
        model = make_pipeline(StandardScaler(), estimator).fit(x_train, y_train)
        return float(model.score(x_test, y_test))


@pytest.mark.parametrize("case", CASES)
def test_logistic_regression_matches_sklearn(case):
    codes = CASES[case]()
    expected = sklearn_accuracy(codes, "logreg")
    assert 0.15 < expected < 0.98, "a case should be neither hopeless nor trivial"
    assert probes.logistic_regression_accuracy(*codes) == pytest.approx(expected, abs=TOLERANCE)


@functools.cache
def mlp_mean_gap(case: str) -> float:
    """The torch MLP's mean accuracy over MLP_SEEDS less scikit-learn's."""
    codes = CASES[case]()
    expected = np.mean([sklearn_accuracy(codes, "mlp", seed) for seed in MLP_SEEDS])
    return float(np.mean([probes.mlp_accuracy(*codes, seed=seed) for seed in MLP_SEEDS]) - expected)


@pytest.mark.parametrize("case", CASES)
def test_mlp_matches_sklearn_over_seeds(case):
    assert abs(mlp_mean_gap(case)) <= MLP_CASE_TOLERANCE


def test_mlp_matches_sklearn_across_cases():
    assert abs(np.mean([mlp_mean_gap(case) for case in CASES])) <= TOLERANCE


def test_standardize_is_standard_scaler():
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(2)
    train, test = rng.normal(3.0, 2.0, (50, 4)), rng.normal(3.0, 2.0, (20, 4))
    train[:, 1] = test[:, 1] = 7.0  # constant: divided by 1, not by its zero std
    scaler = StandardScaler().fit(train)
    got = probes.standardize(torch.from_numpy(train), torch.from_numpy(test))
    np.testing.assert_allclose(got[0].numpy(), scaler.transform(train), atol=1e-12)
    np.testing.assert_allclose(got[1].numpy(), scaler.transform(test), atol=1e-12)


def _finite_difference_check(objective: probes.Objective, point: torch.Tensor) -> None:
    """Each problem's gradient in a batch (S, P) against central differences of its own
    loss: a problem's loss must not move with another's parameters."""
    _, grad = objective(point)
    step = 1e-6
    for k in range(len(point)):
        numeric = []
        for e in torch.eye(point.shape[1], dtype=point.dtype):
            ahead, behind = point.clone(), point.clone()
            ahead[k] += step * e
            behind[k] -= step * e
            difference = (objective(ahead)[0] - objective(behind)[0]) / (2 * step)
            others = torch.arange(len(point)) != k
            assert torch.all(difference[others] == 0)
            numeric.append(difference[k])
        torch.testing.assert_close(grad[k], torch.stack(numeric), rtol=1e-5, atol=1e-7)


def test_hand_written_gradients_match_the_losses():
    generator = torch.Generator().manual_seed(3)
    s, d, n, k = 2, 3, 40, 4
    x = torch.randn(s, d, n, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, k, (s, n), generator=generator)
    with_ones = torch.cat([x, torch.ones(s, 1, n, dtype=torch.float64)], dim=1)
    # A large penalty, so its term in the gradient is not lost under the loss's.
    logistic = probes._logistic_objective(with_ones, labels, k, c=0.05)
    _finite_difference_check(logistic, torch.randn(s, k * (d + 1), generator=generator).double())
    shapes = probes._mlp_shapes(d, 5, k)
    mlp = probes._mlp_objective(x, labels, shapes, alpha=2.0)
    start = torch.stack([probes._glorot_uniform(shapes, seed) for seed in range(s)])
    _finite_difference_check(mlp, start)


def test_codes_that_are_not_finite_give_nan():
    train, y_train, test, y_test = digits_codes(10)
    broken = train.clone()
    broken[5, 1] = float("nan")
    scores = probe_accuracies(broken, y_train, test, y_test)
    assert set(scores) == {"logreg", "mlp"}
    assert all(math.isnan(v) for v in scores.values())
    test = test.clone()
    test[0, 0] = float("inf")
    assert math.isnan(content_accuracy(train, y_train, test, y_test))


def test_probes_are_deterministic_for_a_seed():
    codes = digits_codes(10)
    assert probes.mlp_accuracy(*codes, seed=4) == probes.mlp_accuracy(*codes, seed=4)
    assert probe_accuracies(*codes, seed=4) == probe_accuracies(*codes, seed=4)


@needs_cuda
def test_probes_run_on_cuda_codes():
    codes = digits_codes(20)
    on_cuda = tuple(t.cuda() for t in codes)
    assert probes.logistic_regression_accuracy(*on_cuda) == pytest.approx(
        probes.logistic_regression_accuracy(*codes), abs=TOLERANCE
    )
    seeds = range(4)
    cuda_mlp = [probes.mlp_accuracy(*on_cuda, seed=seed) for seed in seeds]
    cpu_mlp = [probes.mlp_accuracy(*codes, seed=seed) for seed in seeds]
    assert np.mean(cuda_mlp) == pytest.approx(np.mean(cpu_mlp), abs=MLP_CASE_TOLERANCE)
    assert cuda_mlp == [probes.mlp_accuracy(*on_cuda, seed=seed) for seed in seeds]


# --- S problems as one batch --------------------------------------------------------------
def batch_of_problems() -> list[Codes]:
    """Four problems of one shape that differ: digits through four projections."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    problems = []
    for k in range(4):
        z = x @ np.random.default_rng(10 + k).standard_normal((64, 10))
        problems.append(_split(z, y, order[:1197], order[1197:]))
    return problems


def test_a_batch_of_logistic_regressions_fits_each_as_alone():
    problems = batch_of_problems()
    together = probes.logistic_regression_accuracies(problems)
    alone = [probes.logistic_regression_accuracy(*problem) for problem in problems]
    assert len(set(alone)) > 1, "the problems should differ"
    # Convex, so both land at the optimum; each problem's arithmetic is its own, and
    # they agree to the sample (TOLERANCE is the bound against scikit-learn's).
    assert together == pytest.approx(alone, abs=TOLERANCE)
    for problem, accuracy in zip(problems, together, strict=True):
        assert accuracy == pytest.approx(sklearn_accuracy(problem, "logreg"), abs=TOLERANCE)


def test_a_batch_of_mlps_fits_each_as_alone_from_its_own_seed():
    problems = batch_of_problems()
    seeds = [3, 4, 5, 6]
    together = probes.mlp_accuracies(problems, seeds)
    alone = [probes.mlp_accuracy(*p, seed=s) for p, s in zip(problems, seeds, strict=True)]
    # Each problem's iterate, pairs and line search are its own; a rounding-level
    # difference between a batched and a single kernel could fork a non-convex fit, so
    # the bound is the one the MLP is held to against scikit-learn's.
    assert np.mean(together) == pytest.approx(np.mean(alone), abs=MLP_CASE_TOLERANCE)
    assert all(abs(a - b) <= 2 * MLP_CASE_TOLERANCE for a, b in zip(together, alone, strict=True))
    # The same problem from another seed is another fit: the seeds reach their problems.
    assert probes.mlp_accuracies(problems[:1] * 2, [0, 1]) != [together[0]] * 2


def test_a_problem_that_stops_early_waits_for_the_others_unchanged():
    """A trivial problem (its codes are the label, so the fit converges in a few steps)
    batched with a hard one: it keeps its point while the other goes on."""
    hard = digits_codes(10)
    train, y_train, test, y_test = hard
    easy = (
        torch.nn.functional.one_hot(y_train, 10).float(),
        y_train,
        torch.nn.functional.one_hot(y_test, 10).float(),
        y_test,
    )
    together = probes.logistic_regression_accuracies([easy, hard])
    assert together[0] == 1.0
    assert together == pytest.approx(
        [probes.logistic_regression_accuracy(*easy), probes.logistic_regression_accuracy(*hard)],
        abs=TOLERANCE,
    )


def test_lbfgs_minimises_quadratics_of_different_conditioning_at_once():
    """Against the closed form: S quadratics 0.5 x'Ax - b'x, one per condition number."""
    generator = torch.Generator().manual_seed(0)
    s, p = 3, 12
    eigen = torch.stack([torch.logspace(0, k, p, dtype=torch.float64) for k in (0, 2, 4)])
    basis = torch.linalg.qr(torch.randn(s, p, p, generator=generator, dtype=torch.float64))[0]
    a = basis @ torch.diag_embed(eigen) @ basis.mT
    b = torch.randn(s, p, generator=generator, dtype=torch.float64)

    def objective(x):
        ax = (a @ x[:, :, None]).squeeze(2)
        return 0.5 * (x * ax).sum(1) - (b * x).sum(1), ax - b

    found = probes.lbfgs(objective, torch.zeros(s, p, dtype=torch.float64), max_iter=200)
    exact = torch.linalg.solve(a, b)
    # Stopped by the gradient tolerance: |x - x*| <= |g| / lambda_min, lambda_min = 1.
    assert (found - exact).abs().max() <= probes.GRADIENT_TOLERANCE * p
