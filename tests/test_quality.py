"""Does each family learn what its paper says it learns? Short trainings on digits.

Thresholds sit well inside the values measured on this code (noted beside each, seed 0,
CPU); a second seed was checked by hand to make sure a setting is not luck. Each test takes
seconds to tens of seconds on one or two CPU cores.
"""

from __future__ import annotations

import pytest

from trainables import Experiment

pytestmark = pytest.mark.slow


def train(digits, family: str, params: dict, epochs: int, seed: int = 0) -> Experiment:
    experiment = Experiment.create(family, params, digits, seed=seed)
    for _ in range(epochs):
        experiment.train_epoch()
    assert not experiment.diverged
    return experiment


def test_mlvae_class_code_carries_the_class_and_the_decoder_uses_it(digits):
    metrics = train(digits, "mlvae", {"noise_std": 0.1, "batch_size": 64}, epochs=30).evaluate()
    # Measured 1.000 (seed 1: 1.000).
    assert metrics["content_acc_grouped"] >= 0.9
    # Measured 0.958 (seed 1: 0.942).
    assert metrics["content_acc_single"] >= 0.8
    # Chance is 0.1; measured 1.000 (seed 1: 1.000). A decoder that ignores the class code
    # (the degenerate solution) scores near chance.
    assert metrics["swap_acc"] >= 0.7
    assert metrics["degenerate"] == 0.0


def test_icvae_invariance_penalty_lowers_leakage(digits):
    # With beta 0 nothing but the penalty keeps the label out of z: without it (lam 0) z
    # carries the label and the decoder learns to ignore c; with lam 1 leakage drops and
    # the decoder uses c. Settings with beta 0.1 or 1 gave gaps from -0.22 to +0.16 across
    # seeds (z_dim 4 or 8, batch 64 or 128): the penalty's effect there is within the probe's
    # noise, so they are not tested.
    params = {"batch_size": 128, "z_dim": 8, "beta": 0.0}
    without = train(digits, "icvae", {**params, "lam": 0.0}, epochs=40).evaluate()
    with_penalty = train(digits, "icvae", {**params, "lam": 1.0}, epochs=40).evaluate()
    # leakage_acc measured 0.867 vs 0.753 (seeds 1, 2, 3: 0.886 vs 0.681, 0.900 vs 0.706,
    # 0.944 vs 0.742): gaps 0.11 to 0.21.
    assert with_penalty["leakage_acc"] <= without["leakage_acc"] - 0.05
    assert with_penalty["leakage"] < without["leakage"]
    # swap_acc measured 0.27 vs 1.00 (seeds 1, 2, 3: 0.31, 0.27, 0.18 vs 1.00).
    assert with_penalty["swap_acc"] >= without["swap_acc"] + 0.4
    # Invariance is not bought by dropping the image: recon_mse measured 0.036 (0.012
    # without the penalty).
    assert with_penalty["recon_mse"] < 0.06


def test_aae_codes_move_toward_the_gaussian_prior(digits):
    # Four seeds at once (replicas): the adversarial game's outcome at 20 epochs varies
    # from seed to seed more than a one-seed threshold can hold.
    experiment = Experiment.create("aae", {}, digits, seed=0, seeds=4)
    before = experiment.evaluate_replicas()
    for _ in range(20):
        experiment.train_replicas()
    after = experiment.evaluate_replicas()
    # prior_mmd measured 1.59-1.63 at initialisation and 0.172, 0.076, 0.035, 0.021 after
    # 20 epochs (seeds 0-3; solo runs of seeds 0 and 1: 0.391 and 0.089).
    mmd = sorted(a["prior_mmd"] for a in after)
    assert all(a["prior_mmd"] < 0.25 * b["prior_mmd"] for a, b in zip(after, before, strict=True))
    assert mmd[1] < 0.1 and mmd[2] < 0.15, mmd  # the middle two seeds
    # Reconstructions improve too: measured 0.046-0.052 after training.
    assert all(a["recon_mse"] < b["recon_mse"] for a, b in zip(after, before, strict=True))
    assert all(a["degenerate"] == 0.0 for a in after)


def test_supervised_aae_puts_each_class_on_its_mode(digits):
    params = {"prior": "mixture", "label_conditioned": True, "batch_size": 64}
    metrics = train(digits, "aae", params, epochs=60).evaluate()
    # Chance is 0.1; mode_acc measured 0.883 (seed 1: 0.844).
    assert metrics["mode_acc"] >= 0.7
