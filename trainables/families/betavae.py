"""beta-VAE (Higgins et al., ICLR 2017): a VAE whose KL term is weighted by beta. Above 1,
beta presses the posterior toward the factorised prior N(0, I), which the paper reads as
disentangling; Locatello et al. (ICML 2019) made it the baseline of their study of how much
such results owe to hyperparameters and seeds.

    loss = E_q(z|x)[-log p(x|z)] + beta KL[q(z|x) || N(0, I)], the mean over the batch,

with a Gaussian encoder q(z|x) and a Bernoulli decoder p(x|z). Training never sees a
label: labels enter only the metrics (content_acc, a probe reading the label from z).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from trainables import noise
from trainables.data import Dataset
from trainables.family import (
    Family,
    FamilyConfig,
    FamilyModel,
    Training,
    decoder,
    encoder,
    gradient_step,
)
from trainables.grids import LATENT_SCATTER, RECONSTRUCTIONS, Grid
from trainables.losses import bernoulli_recon, kl_to_standard_normal
from trainables.metrics import (
    CONTENT_ACC,
    RECON_MSE,
    EvalContext,
    Metric,
    content_accuracy,
    recon_mse,
)

# A unit is active when its posterior mean moves with the input: Cov_x(E[z_u|x]) above
# this (Burda et al. 2016); the prior's variance is 1.
ACTIVE_UNIT_VARIANCE = 0.01
TRAVERSAL_STEPS = 9
TRAVERSAL_REACH = 3.0  # prior standard deviations either side of the image's code
TRAVERSAL_ROWS = 10


@dataclass
class BetaVAEConfig(FamilyConfig):
    z_dim: int = 10
    hidden: tuple[int, ...] = (512, 512)
    # 1 is the plain VAE. On 8x8 digits beta 4 switches every unit off within 10 epochs
    # (measured), so the default leaves that to a sweep.
    beta: float = 1.0

    bounds: ClassVar = {
        "z_dim": (1, 4096),
        "hidden": (1, 65536),
        "beta": (0.0, None),
    }


class BetaVAE(FamilyModel):
    def __init__(self, config: BetaVAEConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        self.config = config
        arch, hidden = config.arch, config.hidden
        self.encoder = encoder(image_shape, hidden, arch, 2 * config.z_dim)
        self.decoder = decoder(config.z_dim, hidden, arch, image_shape)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)  # logits

    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decode(self.encode(x)[0]))

    def latent_codes(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"z": self.encode(x)[0]}

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + noise.normal_like(mu) * torch.exp(0.5 * logvar)
        recon = bernoulli_recon(self.decode(z), x).mean()
        kl = kl_to_standard_normal(mu, logvar).mean()
        return {"loss": recon + self.config.beta * kl, "recon": recon, "kl": kl}


def active_units(mu: torch.Tensor) -> torch.Tensor:
    """Which latent units are active over the codes' posterior means `mu`."""
    return mu.var(dim=0) > ACTIVE_UNIT_VARIANCE


@torch.no_grad()
def traversal_grid(
    model: BetaVAE, dataset: Dataset, config: BetaVAEConfig, ctx: EvalContext
) -> torch.Tensor:
    """One test image's code with one unit swept over [-3, 3] per row, the others held:
    rows are the units with the largest KL to the prior on test images (the ones in use)
    first. The picture the beta-VAE paper reads disentanglement from."""
    model.eval()
    mu, logvar = model.encode(ctx.x_test)
    per_unit_kl = 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).mean(dim=0)
    units = per_unit_kl.argsort(descending=True)[:TRAVERSAL_ROWS]
    values = torch.linspace(-TRAVERSAL_REACH, TRAVERSAL_REACH, TRAVERSAL_STEPS, device=mu.device)
    codes = mu[:1].repeat(len(units) * TRAVERSAL_STEPS, 1).view(len(units), TRAVERSAL_STEPS, -1)
    codes[torch.arange(len(units)), :, units] = values
    decoded = torch.sigmoid(model.decode(codes.view(-1, config.z_dim)))
    return decoded.view(len(units), TRAVERSAL_STEPS, *dataset.image_shape)


class BetaVAEFamily(Family[BetaVAEConfig, BetaVAE]):
    name = "betavae"
    summary = "beta-VAE: a VAE whose KL to N(0, I) is weighted by beta (unsupervised baseline)"
    config_cls = BetaVAEConfig
    metrics = (
        RECON_MSE,
        Metric("kl", high=None, note="mean KL[q(z|x) || N(0, I)] of test images, in nats"),
        CONTENT_ACC,
        Metric(
            "active_units",
            note="share of latent units whose posterior mean varies over test images "
            f"(variance > {ACTIVE_UNIT_VARIANCE}, Burda et al. 2016)",
        ),
    )
    objectives = ("recon_mse", "content_acc")
    grids = (RECONSTRUCTIONS, LATENT_SCATTER, Grid("traversal", traversal_grid))
    # Higgins et al.'s fully connected network (their 2D shapes): 1200-1200 ReLU, 10
    # latents; our decoder mirrors the encoder.
    reference_config = {"hidden": [1200, 1200], "z_dim": 10, "batch_size": 256}

    def make_model(self, config: BetaVAEConfig, dataset: Dataset) -> BetaVAE:
        return BetaVAE(config, dataset.image_shape)

    def step(self, training: Training[BetaVAEConfig, BetaVAE], index: torch.Tensor) -> dict:
        terms = training.each(BetaVAE.loss, training.dataset.x_train[index])
        gradient_step(training.optimizers["model"], terms["loss"])
        return terms

    @torch.no_grad()
    def evaluate(
        self, model: BetaVAE, dataset: Dataset, config: BetaVAEConfig, ctx: EvalContext
    ) -> dict[str, float]:
        model.eval()
        z_train, _ = model.encode(ctx.x_train)
        z_test, logvar = model.encode(ctx.x_test)
        return {
            "recon_mse": recon_mse(ctx.x_test, torch.sigmoid(model.decode(z_test))),
            "kl": float(kl_to_standard_normal(z_test, logvar).mean()),
            "content_acc": content_accuracy(z_train, ctx.y_train, z_test, ctx.y_test),
            "active_units": float(active_units(z_test).float().mean()),
        }


FAMILY = BetaVAEFamily()
