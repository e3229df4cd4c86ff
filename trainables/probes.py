"""Probes that read a label from codes, fitted in torch on the device the codes are on.

Each probe minimises the objective of a scikit-learn estimator, from the same kind of start
and with the same solver settings:

- inputs standardised like `StandardScaler` (train mean, population std, near-constant
  columns divided by 1);
- `logistic_regression_accuracy`: `LogisticRegression()`, multinomial, minimising
  mean(log-loss) + ||W||^2 / (2 C n) with the intercept unpenalised;
- `mlp_accuracy`: `MLPClassifier(hidden_layer_sizes=(64,), solver="lbfgs")`, one ReLU
  layer and a softmax output, minimising mean(log-loss) + alpha (||W1||^2 + ||W2||^2) / (2 n)
  with the biases unpenalised, from scikit-learn's Glorot-uniform initialisation.

Both are solved by full-batch L-BFGS with scikit-learn's memory (10 pairs), gradient
tolerance (1e-4) and iteration caps, in float32. The logistic regression is convex and
lands within a test sample or two of scikit-learn's; the MLP draws its start from torch's
generator rather than numpy's, so a given seed gives another network than scikit-learn's,
from the same distribution (tests/test_probes.py compares the two over seeds).

On a CPU these problems are small enough for overheads to dominate, which shapes the code:
gradients are written out by hand rather than taken by autograd, samples run along the
columns (a softmax across a long axis is 20x faster than along a short one), and the
objectives write their (hidden, n) and (classes, n) intermediates into buffers allocated
once per fit (glibc hands large freed blocks back to the OS, so fresh ones cost page faults
on every evaluation, a quarter of its time).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# scikit-learn's L-BFGS settings: `tol`, scipy's `maxcor` and scikit-learn's `max_fun`.
GRADIENT_TOLERANCE = 1e-4
HISTORY = 10
MAX_EVALUATIONS = 15000
LOGREG_C = 1.0
LOGREG_MAX_ITER = 300
MLP_HIDDEN = 64
MLP_ALPHA = 1e-4
# L-BFGS on a few thousand codes: stronger than Adam's 150 epochs (0.82 vs 0.79 on ICVAE
# MNIST codes) in half the time.
MLP_MAX_ITER = 200

# The loss at a flat parameter vector, and its gradient there.
Objective = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`StandardScaler` fitted on `train` (samples in rows) and applied to both. Moments are
    taken in float64, as scikit-learn does, and a column whose variance is within rounding
    of zero is left unscaled (scikit-learn's `_is_constant_feature` bound)."""
    wide = train.double()
    n = len(wide)
    mean = wide.mean(0)
    var = wide.var(0, correction=0)
    eps = torch.finfo(torch.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    scale = torch.where(constant, torch.ones_like(var), var.sqrt())
    return ((wide - mean) / scale).to(train.dtype), ((test.double() - mean) / scale).to(test.dtype)


def logistic_regression_accuracy(
    train_codes: torch.Tensor,
    train_labels: torch.Tensor,
    test_codes: torch.Tensor,
    test_labels: torch.Tensor,
    seed: int = 0,
    *,
    c: float = LOGREG_C,
    max_iter: int = LOGREG_MAX_ITER,
) -> float:
    """Test accuracy of a multinomial logistic regression on standardised codes. It starts
    from zero, so `seed` is accepted for a uniform signature and unused."""
    train, test, classes, labels = _prepare(train_codes, train_labels, test_codes)
    train, test = _with_ones(train), _with_ones(test)
    objective = _logistic_objective(train, labels, len(classes), c)
    start = train.new_zeros(len(classes) * len(train))
    theta = _minimise(objective, start, max_iter).view(len(classes), -1)
    return _accuracy(classes[(theta @ test).argmax(0)], test_labels)


def mlp_accuracy(
    train_codes: torch.Tensor,
    train_labels: torch.Tensor,
    test_codes: torch.Tensor,
    test_labels: torch.Tensor,
    seed: int = 0,
    *,
    hidden: int = MLP_HIDDEN,
    alpha: float = MLP_ALPHA,
    max_iter: int = MLP_MAX_ITER,
) -> float:
    """Test accuracy of a one-hidden-layer ReLU network on standardised codes, initialised
    from `seed`. Unlike scikit-learn, two classes get a two-way softmax rather than one
    logistic unit."""
    train, test, classes, labels = _prepare(train_codes, train_labels, test_codes)
    shapes = _mlp_shapes(len(train), hidden, len(classes))
    objective = _mlp_objective(train, labels, shapes, alpha)
    start = _glorot_uniform(shapes, seed).to(train.device, train.dtype)
    params = _unpack(_minimise(objective, start, max_iter), shapes)
    return _accuracy(classes[_mlp_logits(params, test).argmax(0)], test_labels)


def _prepare(
    train_codes: torch.Tensor, train_labels: torch.Tensor, test_codes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardised float32 codes as (feature, sample) matrices, the classes seen in
    training, and the training labels as indices into them."""
    train, test = standardize(train_codes.float(), test_codes.float())
    classes, labels = train_labels.to(train.device).unique(return_inverse=True)
    return train.T.contiguous(), test.T.contiguous(), classes, labels


def _logistic_objective(train: torch.Tensor, labels: torch.Tensor, k: int, c: float) -> Objective:
    """Mean log-loss plus ||W||^2 / (2 C n) at theta, the (k, d + 1) weights whose last
    column is the intercept; `train` is (d + 1, n) with a last row of ones."""
    d, n = train.shape
    penalised = train.new_ones(1, d)  # the intercept is not penalised
    penalised[0, -1] = 0.0
    strength = 1.0 / (c * n)
    logits, log_p = train.new_empty(k, n), train.new_empty(k, n)

    def objective(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        theta = flat.view(k, d)
        loss, dz = _softmax_loss(torch.mm(theta, train, out=logits), labels, log_p)
        weights = theta * penalised
        loss = loss + 0.5 * strength * weights.square().sum()
        return loss, torch.addmm(weights, dz, train.T, beta=strength).view(-1)

    return objective


def _mlp_shapes(d: int, hidden: int, k: int) -> list[tuple[int, int]]:
    """Shapes of W1^T, W2, b1, b2 in the flat parameter vector, in that order. W1 is kept
    transposed because its gradient, x dh^T, is then a (d, n) by (n, hidden) product,
    twice as fast on a CPU as the (hidden, n) by (n, d) one."""
    return [(d, hidden), (k, hidden), (hidden, 1), (k, 1)]


def _mlp_objective(
    train: torch.Tensor, labels: torch.Tensor, shapes: list[tuple[int, int]], alpha: float
) -> Objective:
    """Mean log-loss plus alpha (||W1||^2 + ||W2||^2) / (2 n), with `train` (d, n)."""
    n = train.shape[1]
    (_, hidden), (k, _), *_ = shapes
    strength = alpha / n
    h, dh = train.new_empty(hidden, n), train.new_empty(hidden, n)
    logits, log_p = train.new_empty(k, n), train.new_empty(k, n)

    def objective(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = _unpack(flat, shapes)
        w1t, w2 = params[:2]
        loss, dz = _softmax_loss(_mlp_logits(params, train, h, logits), labels, log_p)
        loss = loss + 0.5 * strength * (w1t.square().sum() + w2.square().sum())
        grad_w2 = torch.addmm(w2, dz, h.T, beta=strength)
        # h is the ReLU's output, so its sign is the ReLU's derivative.
        torch.mm(w2.T, dz, out=dh).mul_(h.sign_())
        grad_w1t = torch.addmm(w1t, train, dh.T, beta=strength)
        return loss, torch.cat([grad_w1t.view(-1), grad_w2.view(-1), dh.sum(1), dz.sum(1)])

    return objective


def _mlp_logits(
    params: list[torch.Tensor],
    x: torch.Tensor,
    h: torch.Tensor | None = None,
    logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """The (k, n) logits for (d, n) inputs, written into `logits` and, for the hidden
    layer's output, `h` where given."""
    w1t, w2, b1, b2 = params
    return torch.addmm(b2, w2, torch.addmm(b1, w1t.T, x, out=h).relu_(), out=logits)


def _unpack(flat: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    parts = flat.split([math.prod(shape) for shape in shapes])
    return [part.view(shape) for part, shape in zip(parts, shapes, strict=True)]


def _glorot_uniform(shapes: list[tuple[int, int]], seed: int) -> torch.Tensor:
    """scikit-learn's start for a ReLU layer and a softmax output: the weights and biases of
    each layer uniform in +-sqrt(6 / (fan_in + fan_out)). Drawn on the CPU from a local
    generator, so a seed gives the same start on every device."""
    (d, hidden), (k, _), *_ = shapes
    first, second = math.sqrt(6.0 / (d + hidden)), math.sqrt(6.0 / (hidden + k))
    bounds = [first, second, first, second]
    generator = torch.Generator().manual_seed(seed)
    draws = [
        torch.rand(math.prod(shape), generator=generator, dtype=torch.float64) * 2 * bound - bound
        for shape, bound in zip(shapes, bounds, strict=True)
    ]
    return torch.cat(draws)


def _softmax_loss(
    logits: torch.Tensor, labels: torch.Tensor, out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of (class, sample) `logits` against `labels`, and its gradient in
    the logits, written into `out`."""
    log_p = torch.log_softmax(logits, 0, out=out)
    picked = log_p.gather(0, labels[None])
    dz = log_p.exp_()
    dz.scatter_add_(0, labels[None], torch.full_like(picked, -1.0))
    return -picked.mean(), dz.div_(len(labels))


def _minimise(objective: Objective, start: torch.Tensor, max_iter: int) -> torch.Tensor:
    """Full-batch L-BFGS with a strong-Wolfe line search from `start`; returns the point."""
    flat = start.clone()
    optimizer = torch.optim.LBFGS(
        [flat],
        max_iter=max_iter,
        max_eval=MAX_EVALUATIONS,
        tolerance_grad=GRADIENT_TOLERANCE,
        history_size=HISTORY,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        loss, flat.grad = objective(flat)
        return loss

    optimizer.step(closure)
    return flat


def _with_ones(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_ones(1, x.shape[1])])


def _accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return int((predicted == labels.to(predicted.device)).sum()) / len(labels)
