"""A deliberately broken family, `broken_conv_vae`: the example conv_vae family
(examples/conv_vae) with three faults, for checking that the contract suite
(trainables/contract.py) catches a plugin's bugs. Load it with

    LATENT_STUDIES_FAMILY_MODULES=broken_conv_vae PYTHONPATH=examples/conv_vae:tests/plugins

Each fault is marked FAULT below, and trips these contract tests:

(a) The step reads its loss to the host with `.item()`, which a CUDA graph cannot
    capture: test_training_step_is_cuda_graph_safe.
(b) The family declares a metric, `sharpness`, that evaluate() never returns, so a sweep
    could optimise a number that never comes:
    test_evaluate_changes_nothing_and_returns_the_declared_metrics.
(c) The model counts its steps in a plain Python attribute that weights the KL term (a
    warm-up) but is not in its state_dict(), so a restored run starts the warm-up again:
    test_replicas_resume_exactly and test_save_and_restore_resume_exactly.

Everything else is the working family's, so no other contract test fails.
"""

from __future__ import annotations

import torch
from conv_vae.family import ConvVAE, ConvVAEConfig, ConvVAEFamily

from trainables.data import Dataset
from trainables.family import Training, gradient_step
from trainables.metrics import Metric

KL_WARMUP_STEPS = 1000


class BrokenConvVAE(ConvVAE):
    def __init__(self, config: ConvVAEConfig, image_shape: tuple[int, int, int]):
        super().__init__(config, image_shape)
        # FAULT (c): training state kept as a plain attribute, not a registered buffer:
        # state_dict() leaves it out, so save and restore lose it.
        self.steps_taken = 0

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = super().loss(x)
        # FAULT (c), continued: the lost counter changes the loss, so a restored run
        # trains differently from the one it was saved from.
        self.steps_taken += 1
        warmup = min(1.0, self.steps_taken / KL_WARMUP_STEPS)
        terms["loss"] = terms["recon"] + warmup * self.beta * terms["kl"]
        return terms


class BrokenConvVAEFamily(ConvVAEFamily):
    name = "broken_conv_vae"
    summary = "conv_vae with three deliberate faults, for testing the contract suite"

    def make_model(self, config: ConvVAEConfig, dataset: Dataset) -> ConvVAE:
        return BrokenConvVAE(config, dataset.image_shape)

    def step(self, training: Training[ConvVAEConfig, ConvVAE], index: torch.Tensor) -> dict:
        terms = training.each(BrokenConvVAE.loss, training.dataset.x_train[index])
        gradient_step(training.optimizers["model"], terms["loss"])
        # FAULT (a): waits for the device to read the loss (to log it); a CUDA graph
        # cannot record a host synchronisation.
        self.last_loss = terms["loss"].detach().mean().item()
        return terms

    # FAULT (b): declared, and so offered to sweeps and reports, but evaluate() (the
    # working family's) never returns it.
    metrics = (
        *ConvVAEFamily.metrics,
        Metric("sharpness", goal="max", note="declared, never computed"),
    )


FAMILY = BrokenConvVAEFamily()
