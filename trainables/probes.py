"""Probes that read a label from codes, fitted in torch on the device the codes are on, one
problem or a batch of them at once.

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
tolerance (1e-4) and iteration caps, in float32, and a strong-Wolfe line search. The
logistic regression is convex and lands within a test sample or two of scikit-learn's; the
MLP draws its start from torch's generator rather than numpy's, so a given seed gives
another network than scikit-learn's, from the same distribution (tests/test_probes.py
compares the two over seeds).

S problems of the same shapes (the S seed replicas of a trial, each reading the label from
its own codes) are fitted as one: `lbfgs` keeps every problem's iterate, curvature pairs,
line search and stopping test apart, with all S advanced by the same batched operations.
Per-operation overheads are much of a fit's cost on these small problems, which S of
them share. A problem's arithmetic is its own, so it is fitted alone as in a batch up to
rounding: a batched kernel may sum in another order, which the convex logistic
regression does not feel and the MLP's fit can fork on (a test sample or two of 600 on
digits; tests/test_probes.py holds both to the bounds they are held to against
scikit-learn). The `*_accuracy` functions fit one problem, or, inside
`trainables.batching.run_replicas`, their replica's share of one batched fit.

For the same reason (overheads) gradients are written out by hand rather than taken by
autograd, samples run along the columns (a softmax across a long axis is 20x faster than
along a short one), and the objectives write their (hidden, n) and (classes, n)
intermediates into buffers allocated once per fit (glibc hands large freed blocks back to
the OS, so fresh ones cost page faults on every evaluation, a quarter of its time).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch

from trainables.batching import batched

# scikit-learn's L-BFGS settings: `tol`, scipy's `maxcor` and scikit-learn's `max_fun`.
GRADIENT_TOLERANCE = 1e-4
HISTORY = 10
MAX_EVALUATIONS = 15000
# torch.optim.LBFGS's: a step or a loss change below this ends a fit.
CHANGE_TOLERANCE = 1e-9
# The strong Wolfe conditions' constants and the most evaluations one line search makes.
ARMIJO = 1e-4
CURVATURE = 0.9
MAX_LINE_SEARCH = 25
LOGREG_C = 1.0
LOGREG_MAX_ITER = 300
MLP_HIDDEN = 64
MLP_ALPHA = 1e-4
# L-BFGS on a few thousand codes: stronger than Adam's 150 epochs (0.82 vs 0.79 on ICVAE
# MNIST codes) in half the time.
MLP_MAX_ITER = 200

# The losses (S,) at S flat parameter vectors (S, P), and their gradients there.
Objective = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# One probe problem: train codes (n, d), train labels (n,), test codes, test labels.
Problem = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`StandardScaler` fitted on `train` (samples in rows, any leading batch dimensions)
    and applied to both. Moments are taken in float64, as scikit-learn does, and a column
    whose variance is within rounding of zero is left unscaled (scikit-learn's
    `_is_constant_feature` bound)."""
    wide = train.double()
    n = wide.shape[-2]
    mean = wide.mean(-2, keepdim=True)
    var = wide.var(-2, correction=0, keepdim=True)
    eps = torch.finfo(torch.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    scale = torch.where(constant, torch.ones_like(var), var.sqrt())
    return ((wide - mean) / scale).to(train.dtype), ((test.double() - mean) / scale).to(test.dtype)


# --- one problem, or this replica's share of a batch -----------------------------------------
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
    problem = (train_codes, train_labels, test_codes, test_labels)
    key = ("logreg", c, max_iter, *_shape_key(problem))
    return batched(key, partial(logistic_regression_accuracies, c=c, max_iter=max_iter), problem)


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
    problem = (train_codes, train_labels, test_codes, test_labels)
    key = ("mlp", hidden, alpha, max_iter, *_shape_key(problem))

    def fit(seeded: list[tuple[Problem, int]]) -> list[float]:
        problems, seeds = zip(*seeded, strict=True)
        return mlp_accuracies(problems, seeds, hidden=hidden, alpha=alpha, max_iter=max_iter)

    return batched(key, fit, (problem, seed))


def _shape_key(problem: Problem) -> tuple:
    """What problems fitted as one batch must share: their shapes, dtype, device and number
    of classes."""
    train_codes, train_labels, test_codes, _ = problem
    classes = int(train_labels.unique().numel())
    return (
        tuple(train_codes.shape),
        tuple(test_codes.shape),
        train_codes.dtype,
        str(train_codes.device),
        classes,
    )


# --- S problems at once ----------------------------------------------------------------------
def logistic_regression_accuracies(
    problems: Sequence[Problem], *, c: float = LOGREG_C, max_iter: int = LOGREG_MAX_ITER
) -> list[float]:
    """`logistic_regression_accuracy` of each problem, fitted as one batch (the problems
    share shapes and their number of classes)."""
    train, test, classes, labels = _prepare(problems)
    train, test = _with_ones(train), _with_ones(test)
    s, k = classes.shape
    objective = _logistic_objective(train, labels, k, c)
    theta = lbfgs(objective, train.new_zeros(s, k * train.shape[1]), max_iter)
    return _accuracies(classes, torch.bmm(theta.view(s, k, -1), test), problems)


def mlp_accuracies(
    problems: Sequence[Problem],
    seeds: Sequence[int],
    *,
    hidden: int = MLP_HIDDEN,
    alpha: float = MLP_ALPHA,
    max_iter: int = MLP_MAX_ITER,
) -> list[float]:
    """`mlp_accuracy` of each problem from its seed, fitted as one batch."""
    train, test, classes, labels = _prepare(problems)
    shapes = _mlp_shapes(train.shape[1], hidden, classes.shape[1])
    objective = _mlp_objective(train, labels, shapes, alpha)
    start = torch.stack([_glorot_uniform(shapes, seed) for seed in seeds])
    params = _unpack(lbfgs(objective, start.to(train.device, train.dtype), max_iter), shapes)
    return _accuracies(classes, _mlp_logits(params, test), problems)


def _prepare(
    problems: Sequence[Problem],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardised float32 codes as (problem, feature, sample) batches, each problem's
    classes seen in training (problem, class), and its training labels as indices into
    them (problem, sample)."""
    train = torch.stack([p[0] for p in problems]).float()
    test = torch.stack([p[2].to(train.device) for p in problems]).float()
    train, test = standardize(train, test)
    found = [p[1].to(train.device).unique(return_inverse=True) for p in problems]
    classes = torch.stack([c for c, _ in found])
    labels = torch.stack([i for _, i in found])
    return train.mT.contiguous(), test.mT.contiguous(), classes, labels


def _accuracies(
    classes: torch.Tensor, logits: torch.Tensor, problems: Sequence[Problem]
) -> list[float]:
    predicted = classes.gather(1, logits.argmax(1))
    return [
        int((guess == p[3].to(guess.device)).sum()) / len(p[3])
        for guess, p in zip(predicted, problems, strict=True)
    ]


def _logistic_objective(train: torch.Tensor, labels: torch.Tensor, k: int, c: float) -> Objective:
    """Mean log-loss plus ||W||^2 / (2 C n) at theta, each problem's (k, d + 1) weights whose
    last column is the intercept; `train` is (S, d + 1, n) with a last row of ones."""
    s, d, n = train.shape
    penalised = train.new_ones(1, 1, d)  # the intercept is not penalised
    penalised[..., -1] = 0.0
    strength = 1.0 / (c * n)
    logits, log_p = train.new_empty(s, k, n), train.new_empty(s, k, n)

    def objective(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        theta = flat.view(s, k, d)
        loss, dz = _softmax_loss(torch.bmm(theta, train, out=logits), labels, log_p)
        weights = theta * penalised
        loss = loss + 0.5 * strength * weights.square().sum((1, 2))
        return loss, torch.baddbmm(weights, dz, train.mT, beta=strength).view(s, -1)

    return objective


def _mlp_shapes(d: int, hidden: int, k: int) -> list[tuple[int, int]]:
    """Shapes of W1^T, W2, b1, b2 in a problem's flat parameter vector, in that order. W1 is
    kept transposed because its gradient, x dh^T, is then a (d, n) by (n, hidden) product,
    twice as fast on a CPU as the (hidden, n) by (n, d) one."""
    return [(d, hidden), (k, hidden), (hidden, 1), (k, 1)]


def _mlp_objective(
    train: torch.Tensor, labels: torch.Tensor, shapes: list[tuple[int, int]], alpha: float
) -> Objective:
    """Mean log-loss plus alpha (||W1||^2 + ||W2||^2) / (2 n), with `train` (S, d, n)."""
    s, _, n = train.shape
    (_, hidden), (k, _), *_ = shapes
    strength = alpha / n
    h, dh = train.new_empty(s, hidden, n), train.new_empty(s, hidden, n)
    logits, log_p = train.new_empty(s, k, n), train.new_empty(s, k, n)

    def objective(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = _unpack(flat, shapes)
        w1t, w2 = params[:2]
        loss, dz = _softmax_loss(_mlp_logits(params, train, h, logits), labels, log_p)
        loss = loss + 0.5 * strength * (w1t.square().sum((1, 2)) + w2.square().sum((1, 2)))
        grad_w2 = torch.baddbmm(w2, dz, h.mT, beta=strength)
        # h is the ReLU's output, so its sign is the ReLU's derivative.
        torch.bmm(w2.mT, dz, out=dh).mul_(h.sign_())
        grad_w1t = torch.baddbmm(w1t, train, dh.mT, beta=strength)
        parts = (grad_w1t, grad_w2, dh.sum(2), dz.sum(2))
        return loss, torch.cat([part.reshape(s, -1) for part in parts], dim=1)

    return objective


def _mlp_logits(
    params: list[torch.Tensor],
    x: torch.Tensor,
    h: torch.Tensor | None = None,
    logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """The (S, k, n) logits for (S, d, n) inputs, written into `logits` and, for the hidden
    layer's output, `h` where given."""
    w1t, w2, b1, b2 = params
    return torch.baddbmm(b2, w2, torch.baddbmm(b1, w1t.mT, x, out=h).relu_(), out=logits)


def _unpack(flat: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Views of each problem's W1^T, W2, b1 and b2 in the (S, P) parameters."""
    parts = flat.split([math.prod(shape) for shape in shapes], dim=1)
    return [part.view(len(flat), *shape) for part, shape in zip(parts, shapes, strict=True)]


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
    """Each problem's mean cross-entropy of its (class, sample) `logits` against its
    `labels` (S, n), and the gradient in the logits, written into `out`."""
    log_p = torch.log_softmax(logits, 1, out=out)
    index = labels[:, None, :]
    picked = log_p.gather(1, index)
    dz = log_p.exp_()
    dz.scatter_add_(1, index, torch.full_like(picked, -1.0))
    return -picked.mean((1, 2)), dz.div_(labels.shape[1])


def _with_ones(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_ones(x.shape[0], 1, x.shape[2])], dim=1)


# --- L-BFGS over S problems ------------------------------------------------------------------
def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of (S, P) tensors: (S,)."""
    return torch.linalg.vecdot(a, b)


def lbfgs(objective: Objective, start: torch.Tensor, max_iter: int) -> torch.Tensor:
    """Minimise S independent problems from `start` (S, P) by full-batch L-BFGS with a
    strong-Wolfe line search; returns the (S, P) minimisers.

    Per problem it is torch.optim.LBFGS's algorithm and stopping rules (gradient tolerance,
    step and loss changes below CHANGE_TOLERANCE, `max_iter` iterations), with its first
    step min(1, 1 / ||g||_1) and later steps 1. (Its cap on evaluations, MAX_EVALUATIONS,
    cannot bind: `max_iter` line searches of MAX_LINE_SEARCH evaluations stay under it.)
    Each problem has its own curvature pairs, step and line search; one that has stopped
    keeps its point while the others go on. The pairs of the last HISTORY iterations sit
    in a ring that every problem writes at the same slot; a pair whose curvature s'y is
    not above 1e-10 gets a zero weight (rho) there, which leaves the two-loop recursion's
    vectors as they are (torch keeps an older pair in its place; on these problems the
    strong Wolfe conditions make s'y positive, so it is rare)."""
    if max_iter * MAX_LINE_SEARCH >= MAX_EVALUATIONS:
        raise ValueError(f"max_iter: at most {MAX_EVALUATIONS // MAX_LINE_SEARCH - 1}")
    x = start.clone()
    s, p = x.shape
    loss, grad = objective(x)
    active = grad.abs().amax(1) > GRADIENT_TOLERANCE
    # Per slot, views made once: a view costs as much as a small operation.
    steps, changes = x.new_zeros(HISTORY, s, p).unbind(), x.new_zeros(HISTORY, s, p).unbind()
    rho, scale = x.new_zeros(HISTORY, s, 1).unbind(), x.new_ones(s, 1)
    direction = t = previous_grad = None
    for iteration in range(max_iter):
        if not bool(active.any()):
            break
        if iteration == 0:
            direction = -grad
            t = torch.clamp(1.0 / grad.abs().sum(1), max=1.0)
        else:
            slot = (iteration - 1) % HISTORY
            step, change = steps[slot], changes[slot]
            torch.mul(direction, t[:, None], out=step)
            torch.sub(grad, previous_grad, out=change)
            ys = _dot(change, step)[:, None]
            kept = active[:, None] & (ys > 1e-10)
            rho[slot].copy_(torch.where(kept, ys.reciprocal(), 0.0))
            scale = torch.where(kept, ys / _dot(change, change)[:, None], scale)
            # Newest first, over the slots written so far.
            order = [(slot - i) % HISTORY for i in range(min(iteration, HISTORY))]
            direction = _two_loop(grad.neg(), steps, changes, rho, scale, order)
            t = torch.ones_like(t)
        previous_grad, previous_loss = grad, loss
        slope = _dot(grad, direction)
        active &= slope <= -CHANGE_TOLERANCE
        t = torch.where(active, t, 0.0)
        t, loss, grad = _strong_wolfe(objective, x, t, direction, loss, grad, slope, active)
        moved = direction * t[:, None]
        x += moved
        active &= grad.abs().amax(1) > GRADIENT_TOLERANCE
        active &= moved.abs().amax(1) > CHANGE_TOLERANCE
        active &= (loss - previous_loss).abs() >= CHANGE_TOLERANCE
    return x


def _two_loop(
    q: torch.Tensor,
    steps: Sequence[torch.Tensor],
    changes: Sequence[torch.Tensor],
    rho: Sequence[torch.Tensor],
    scale: torch.Tensor,
    order: list[int],
) -> torch.Tensor:
    """The L-BFGS direction H q, by the two-loop recursion over each problem's pairs in
    `order` (newest first), updating `q` in place; an empty slot has rho 0. Per slot: s
    and y (S, P), rho (S, 1); `scale` (S, 1)."""
    alphas = []
    for i in order:
        alpha = _dot(steps[i], q).unsqueeze_(1).mul_(rho[i])
        q.addcmul_(changes[i], alpha, value=-1.0)
        alphas.append(alpha)
    r = q.mul_(scale)
    for i, alpha in zip(reversed(order), reversed(alphas), strict=True):
        beta = _dot(changes[i], r).unsqueeze_(1).mul_(rho[i])
        r.addcmul_(steps[i], alpha.sub_(beta))
    return r


def _cubic_minimum(
    x1: torch.Tensor,
    f1: torch.Tensor,
    g1: torch.Tensor,
    x2: torch.Tensor,
    f2: torch.Tensor,
    g2: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
) -> torch.Tensor:
    """The minimiser of the cubic through two points' values and slopes, inside [low, high];
    their middle where the cubic has none or the numbers break down."""
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2 = (d1.square() - g1 * g2).sqrt() * torch.sign(x2 - x1)
    found = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    middle = (low + high) / 2
    return torch.where(
        torch.isfinite(found), torch.minimum(torch.maximum(found, low), high), middle
    )


def _strong_wolfe(
    objective: Objective,
    x: torch.Tensor,
    t: torch.Tensor,
    direction: torch.Tensor,
    loss: torch.Tensor,
    grad: torch.Tensor,
    slope: torch.Tensor,
    searching: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A step along `direction` from `x` meeting the strong Wolfe conditions, for each
    problem where `searching` (the others stay put): the step, and the loss and gradient
    there.

    Nocedal & Wright's algorithms 3.5 and 3.6 as one loop, from the trial step `t`: while
    no step is bracketed, extrapolate by the cubic through the last two points, 1.01x to
    10x past the last; once bracketed, take the cubic's minimum kept a tenth of the
    bracket's width inside it, so the bracket shrinks by at least a tenth per evaluation.
    The bracket's low end is the best step so far that decreased the loss enough; it is
    the result, also when MAX_LINE_SEARCH evaluations pass or the bracket falls below
    CHANGE_TOLERANCE."""
    zero = torch.zeros_like(t)
    low_t, low_f, low_slope, low_grad = zero, loss, slope, grad
    high_t, high_f, high_slope = torch.full_like(t, math.inf), loss, slope
    done = ~searching
    length = direction.abs().amax(1)
    for tries in range(MAX_LINE_SEARCH):
        trial_f, trial_grad = objective(torch.addcmul(x, t[:, None], direction))
        trial_slope = _dot(trial_grad, direction)
        if tries == 0:
            # Most steps of L-BFGS take the first trial. A problem not searching has t = 0
            # and so gets its own loss and gradient back.
            decreases = trial_f <= loss + ARMIJO * t * slope
            if bool((done | decreases & (trial_slope.abs() <= -CURVATURE * slope)).all()):
                return t, trial_f, trial_grad
        fails = (
            ~torch.isfinite(trial_f) | (trial_f > loss + ARMIJO * t * slope) | (trial_f >= low_f)
        )
        fails &= ~done
        moves = ~fails & ~done
        wolfe = moves & (trial_slope.abs() <= -CURVATURE * slope)
        # Past the minimum: the bracket's low end becomes its high end.
        flips = moves & ~wolfe & (trial_slope * (high_t - low_t) >= 0)
        past_t, past_f, past_slope = low_t, low_f, low_slope
        high_t = torch.where(fails, t, torch.where(flips, low_t, high_t))
        high_f = torch.where(fails, trial_f, torch.where(flips, low_f, high_f))
        high_slope = torch.where(fails, trial_slope, torch.where(flips, low_slope, high_slope))
        low_t = torch.where(moves, t, low_t)
        low_f = torch.where(moves, trial_f, low_f)
        low_slope = torch.where(moves, trial_slope, low_slope)
        low_grad = torch.where(moves[:, None], trial_grad, low_grad)
        done = done | wolfe | ((high_t - low_t).abs() * length < CHANGE_TOLERANCE)
        if bool(done.all()):
            break
        near, far = torch.minimum(low_t, high_t), torch.maximum(low_t, high_t)
        margin = 0.1 * (far - near)
        inside = _cubic_minimum(
            low_t, low_f, low_slope, high_t, high_f, high_slope, near + margin, far - margin
        )
        outside = _cubic_minimum(
            past_t, past_f, past_slope, low_t, low_f, low_slope,
            low_t + 0.01 * (low_t - past_t), 10 * low_t,
        )  # fmt: skip
        t = torch.where(done, low_t, torch.where(torch.isfinite(high_t), inside, outside))
    return low_t, low_f, low_grad
