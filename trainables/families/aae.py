"""Adversarial autoencoder (Makhzani et al., 2015): a discriminator on the code pushes the
encoder's aggregate posterior q(z) toward a prior.

Each batch runs three phases: reconstruction (encoder + decoder), discriminator (prior
samples vs codes), generator (the encoder learns to fool the discriminator). Whether it
trains at all depends on the balance between the two players, so the balance knobs are
hyperparameters: discriminator lr ratio, discriminator steps per generator step,
adversarial weight and discriminator width.

Priors: a standard Gaussian of any dimension, or a mixture of 10 Gaussians on a circle in
2-D. With `label_conditioned`, the discriminator also sees the one-hot label and prior
samples for label k come from mode k (Makhzani et al. Fig. 4), so codes of class k should
land near mode k. With `conditional_decoder`, the decoder also sees the label (the
supervised AAE), so z should hold style only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from trainables import noise
from trainables.data import Dataset
from trainables.errors import ConfigError
from trainables.family import (
    Family,
    FamilyConfig,
    FamilyModel,
    Training,
    adam,
    decoder,
    encoder,
    gradient_step,
    mlp,
    one_hot,
)
from trainables.grids import LATENT_SCATTER, RECONSTRUCTIONS, Grid
from trainables.losses import bernoulli_recon, gaussian_kernel_mmd
from trainables.metrics import (
    CONTENT_ACC,
    LEAKAGE_METRICS,
    RECON_MSE,
    SWAP_METRICS,
    EvalContext,
    Metric,
    content_accuracy,
    derangement_targets,
    leakage_metrics,
    recon_mse,
    swap_metrics,
)

MIXTURE_MODES = 10
MIXTURE_RADIUS = 4.0
MIXTURE_STD = 0.5
MANIFOLD_STEPS = 15


@dataclass
class AAEConfig(FamilyConfig):
    z_dim: int = 2
    hidden: tuple[int, ...] = (256, 64)
    prior: Literal["gaussian", "mixture"] = "gaussian"
    encoder: Literal["deterministic", "gaussian"] = "deterministic"
    label_conditioned: bool = False
    conditional_decoder: bool = False
    disc_lr_ratio: float = 1.0
    disc_steps: int = 1
    adv_weight: float = 1.0
    disc_width: int = 128

    bounds: ClassVar = {
        "z_dim": (1, 4096),
        "hidden": (1, 65536),
        "disc_lr_ratio": (1e-4, 1e4),
        "disc_steps": (1, 100),
        "adv_weight": (0.0, None),
        "disc_width": (1, 65536),
    }

    def check(self) -> None:
        if self.prior == "mixture" and self.z_dim != 2:
            raise ConfigError(
                f"z_dim: the mixture prior lives in 2-D, got z_dim={self.z_dim}; set z_dim=2 or prior=gaussian"
            )


def mixture_means(device=None) -> torch.Tensor:
    # Built where it is used: no host-to-device copy in a training step (or a CUDA graph).
    angles = torch.arange(MIXTURE_MODES, dtype=torch.float32, device=device)
    angles = angles * (2 * math.pi / MIXTURE_MODES)
    return MIXTURE_RADIUS * torch.stack([angles.cos(), angles.sin()], dim=1)


def sample_prior(
    config: AAEConfig, labels: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Prior samples, one per label. Under the mixture, label k picks mode k when the
    discriminator is label-conditioned and a uniform random mode otherwise.

    Drawn from `generator` (a CPU generator, for evaluation) and moved, or, without one,
    from the training step's noise (trainables.noise), drawn per replica on the labels'
    device."""
    n, device = len(labels), labels.device
    if generator is None:
        gaussian = noise.normal((n, config.z_dim), device)
    else:
        gaussian = torch.randn(n, config.z_dim, generator=generator).to(device)
    if config.prior == "gaussian":
        return gaussian
    if config.label_conditioned:
        modes = labels % MIXTURE_MODES
    elif generator is None:
        modes = noise.randint(MIXTURE_MODES, (n,), device)
    else:
        modes = torch.randint(0, MIXTURE_MODES, (n,), generator=generator).to(device)
    return mixture_means(device)[modes] + MIXTURE_STD * gaussian


class AAE(FamilyModel):
    def __init__(self, config: AAEConfig, image_shape: tuple[int, int, int], n_classes: int):
        super().__init__()
        self.config = config
        self.n_classes = n_classes
        arch, hidden = config.arch, config.hidden
        out = 2 * config.z_dim if config.encoder == "gaussian" else config.z_dim
        self.encoder = encoder(image_shape, hidden, arch, out)
        decoder_in = config.z_dim + (n_classes if config.conditional_decoder else 0)
        self.decoder = decoder(decoder_in, hidden, arch, image_shape)
        # On codes, whatever the architecture: an MLP.
        disc_in = config.z_dim + (n_classes if config.label_conditioned else 0)
        self.discriminator = mlp([disc_in, config.disc_width, config.disc_width, 1])

    def encode(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        return self.code(self.encoder(x), sample)

    def code(self, encoded: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """The code from the encoder's output: itself when deterministic; else its mean, or
        a sample drawn with fresh noise."""
        if self.config.encoder == "deterministic":
            return encoded
        mu, logvar = encoded.chunk(2, dim=1)
        return mu + noise.normal_like(mu) * torch.exp(0.5 * logvar) if sample else mu

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.config.conditional_decoder:
            z = torch.cat([z, one_hot(labels, self.n_classes)], dim=1)
        return self.decoder(z)  # logits

    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decode(self.encode(x), labels))

    def latent_codes(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"z": self.encode(x)}

    def discriminate(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.config.label_conditioned:
            z = torch.cat([z, one_hot(labels, self.n_classes)], dim=1)
        return self.discriminator(z).squeeze(1)  # logit of "from the prior"


@torch.no_grad()
def prior_samples_grid(
    model: AAE, dataset: Dataset, config: AAEConfig, ctx: EvalContext
) -> torch.Tensor:
    """Decoded prior samples: row k uses label k (mode k when label-conditioned)."""
    model.eval()
    n = dataset.n_classes
    labels = torch.arange(n, device=ctx.x_test.device).repeat_interleave(n)
    z = sample_prior(config, labels, torch.Generator().manual_seed(ctx.seed))
    return torch.sigmoid(model.decode(z, labels)).view(n, n, *dataset.image_shape)


@torch.no_grad()
def manifold_grid(
    model: AAE, dataset: Dataset, config: AAEConfig, ctx: EvalContext
) -> torch.Tensor | None:
    """The learned manifold of a 2-D code (Makhzani et al. Fig. 2): images decoded from an
    even grid over the prior's support. None when the code is wider or the decoder also
    needs a label."""
    if config.z_dim != 2 or config.conditional_decoder:
        return None
    model.eval()
    reach = 3.0 if config.prior == "gaussian" else MIXTURE_RADIUS + 3 * MIXTURE_STD
    steps = torch.linspace(-reach, reach, MANIFOLD_STEPS, device=ctx.x_test.device)
    # Rows run from high to low z2, so the picture has the plot's orientation.
    z2, z1 = torch.meshgrid(steps.flip(0), steps, indexing="ij")
    z = torch.stack([z1.flatten(), z2.flatten()], dim=1)
    labels = torch.zeros(len(z), dtype=torch.long, device=z.device)
    decoded = torch.sigmoid(model.decode(z, labels))
    return decoded.view(MANIFOLD_STEPS, MANIFOLD_STEPS, *dataset.image_shape)


class AAEFamily(Family[AAEConfig, AAE]):
    name = "aae"
    summary = "Adversarial autoencoder: discriminator matches q(z) to a Gaussian or 10-mode prior"
    config_cls = AAEConfig
    metrics = (
        RECON_MSE,
        Metric(
            "prior_mmd", high=None, goal="min", note="MMD^2 between test codes and prior samples"
        ),
        # Neither direction is better: 0.5 means the discriminator is fooled.
        Metric("disc_acc", note="discriminator accuracy, held-out codes vs prior samples"),
        CONTENT_ACC,
        *LEAKAGE_METRICS,
        *SWAP_METRICS,
        Metric("mode_acc", goal="max", note="test codes nearest the mode of their label"),
    )
    objectives = ("recon_mse", "prior_mmd")
    grids = (
        RECONSTRUCTIONS,
        Grid("samples", prior_samples_grid),
        LATENT_SCATTER,
        Grid("manifold", manifold_grid, optional=True),
    )
    test_variants = (
        {"prior": "mixture", "label_conditioned": True},
        {"conditional_decoder": True},
    )
    # 784-256-64-2 / 2-64-256-784 with a 2-128-128-1 discriminator.
    reference_config = {"hidden": [256, 64], "z_dim": 2, "disc_width": 128, "batch_size": 256}

    def make_model(self, config: AAEConfig, dataset: Dataset) -> AAE:
        return AAE(config, dataset.image_shape, dataset.n_classes)

    def make_optimizers(self, model: AAE, config: AAEConfig) -> dict[str, torch.optim.Optimizer]:
        autoencoder = [*model.encoder.parameters(), *model.decoder.parameters()]
        return {
            "autoencoder": adam(autoencoder, lr=config.lr),
            "discriminator": adam(
                model.discriminator.parameters(),
                lr=config.lr * config.disc_lr_ratio,
                betas=(0.5, 0.999),
            ),
            "generator": adam(model.encoder.parameters(), lr=config.lr, betas=(0.5, 0.999)),
        }

    def step(self, training: Training[AAEConfig, AAE], index: torch.Tensor) -> dict:
        """The three phases on one batch: reconstruction, discriminator, generator.

        Two encoder forwards, where phase by phase it would take 2 + disc_steps. The
        reconstruction's must be its own: it sees the encoder before the autoencoder's
        update. The discriminator's and the generator's phases both see the encoder after
        that update, and neither changes it (the discriminator's steps move only the
        discriminator), so one forward serves both: detached for the discriminator, with
        its graph for the generator. Sampled codes still draw fresh noise per phase, in
        the order the phases would draw it, so the updates are the phase-by-phase ones
        (tests/test_families.py checks them equal). The discriminator's forwards are all
        fresh: its weights move between them."""
        optimizers, config = training.optimizers, training.config
        x, y = training.dataset.x_train[index], training.dataset.y_train[index]
        recon = training.each(_reconstruction_loss, x, y)
        gradient_step(optimizers["autoencoder"], recon)
        encoded = training.each(_encoder_output, x)
        for _ in range(config.disc_steps):
            disc_loss = training.each(_discriminator_loss, encoded.detach(), y)
            gradient_step(optimizers["discriminator"], disc_loss)
        gen_loss = training.each(_generator_loss, encoded, y)
        gradient_step(optimizers["generator"], config.adv_weight * gen_loss)
        return {
            "loss": recon + config.adv_weight * gen_loss,
            "recon": recon,
            "disc": disc_loss,
            "gen": gen_loss,
        }

    def reported_metrics(self, config: AAEConfig) -> tuple[str, ...]:
        names = ["recon_mse", "prior_mmd", "disc_acc"]
        if config.conditional_decoder:
            names += [m.name for m in (*LEAKAGE_METRICS, *SWAP_METRICS)]
        else:
            names += ["content_acc", "degenerate"]
        if config.prior == "mixture" and config.label_conditioned:
            names.append("mode_acc")
        return tuple(names)

    @torch.no_grad()
    def evaluate(
        self, model: AAE, dataset: Dataset, config: AAEConfig, ctx: EvalContext
    ) -> dict[str, float]:
        model.eval()
        z_train, z_test = model.encode(ctx.x_train), model.encode(ctx.x_test)
        y_test = ctx.y_test
        generator = torch.Generator().manual_seed(ctx.seed + 2)
        prior = sample_prior(config, y_test, generator)
        real_logits = model.discriminate(prior, y_test)
        fake_logits = model.discriminate(z_test, y_test)
        metrics = {
            "recon_mse": recon_mse(ctx.x_test, model.reconstruct(ctx.x_test, y_test)),
            "prior_mmd": float(gaussian_kernel_mmd(z_test, prior)),
            "disc_acc": float(
                ((real_logits > 0).float().mean() + (fake_logits <= 0).float().mean()) / 2
            ),
        }
        if config.conditional_decoder:
            metrics.update(
                leakage_metrics(z_train, ctx.y_train, z_test, y_test, ctx.seed, ctx.probes)
            )
            target = derangement_targets(y_test, dataset.n_classes, generator)
            swapped = torch.sigmoid(model.decode(z_test, target))
            metrics.update(swap_metrics(swapped, target, y_test, ctx))
        else:
            metrics["content_acc"] = content_accuracy(z_train, ctx.y_train, z_test, y_test)
            # Collapse: codes far tighter than the prior carry nothing to decode.
            spread = z_test.std(dim=0).mean() < 0.05 * prior.std(dim=0).mean()
            metrics["degenerate"] = float(spread)
        if config.prior == "mixture" and config.label_conditioned:
            nearest = torch.cdist(z_test, mixture_means(z_test.device).to(z_test.dtype)).argmin(
                dim=1
            )
            metrics["mode_acc"] = float((nearest == y_test % MIXTURE_MODES).float().mean())
        return metrics


# The step's phases, each a function of one model (Training.each runs it per replica).
def _reconstruction_loss(model: AAE, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return bernoulli_recon(model.decode(model.encode(x, sample=True), y), x).mean()


def _encoder_output(model: AAE, x: torch.Tensor) -> torch.Tensor:
    return model.encoder(x)


def _discriminator_loss(model: AAE, encoded: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Prior samples are "real", the encoder's (detached) codes "fake"."""
    fake = model.code(encoded, sample=True)
    # Prior samples and targets in the codes' dtype and device, not float32: a float64
    # model (the contract suite's rounding check) computes its loss in float64 throughout.
    real = sample_prior(model.config, y).to(fake.dtype)
    real_logits, fake_logits = model.discriminate(real, y), model.discriminate(fake, y)
    logits = torch.cat([real_logits, fake_logits])
    targets = torch.cat([torch.ones_like(real_logits), torch.zeros_like(fake_logits)])
    return F.binary_cross_entropy_with_logits(logits, targets)


def _generator_loss(model: AAE, encoded: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The encoder tries to make its codes pass for prior samples."""
    fooled = model.discriminate(model.code(encoded, sample=True), y)
    return F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))


FAMILY = AAEFamily()
