"""Invariant conditional VAE (Moyer et al., NeurIPS 2018): the decoder sees the label c,
so the code z need not carry it, and a penalty on I(z; c) makes sure it does not.

loss = (1 + lambda) recon + beta KL[q(z|x) || N(0, I)] + lambda KL[q(z|x) || q(z)],
with the last term bounded by the mean pairwise Gaussian KL over the batch
(`losses.marginal_kl_bound`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

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
    one_hot,
)
from trainables.grids import LATENT_SCATTER, RECONSTRUCTIONS, Grid
from trainables.losses import (
    bernoulli_recon,
    kl_to_standard_normal,
    marginal_kl_bound,
    squared_error,
)
from trainables.metrics import (
    LEAKAGE_METRICS,
    RECON_MSE,
    SWAP_METRICS,
    EvalContext,
    derangement_targets,
    leakage_metrics,
    recon_mse,
    swap_metrics,
)


@dataclass
class ICVAEConfig(FamilyConfig):
    z_dim: int = 16
    hidden: tuple[int, ...] = (512, 512)
    beta: float = 1.0
    lam: float = 1.0  # "lambda" in the paper; `lambda` is a Python keyword
    # "bernoulli": summed per-pixel log-likelihood of the logits; "mse": summed squared
    # error of sigmoid outputs, the tutorial's loss (its outputs are linear, ours squashed).
    recon_loss: Literal["bernoulli", "mse"] = "bernoulli"

    bounds: ClassVar = {
        "z_dim": (1, 4096),
        "hidden": (1, 65536),
        "beta": (0.0, None),
        "lam": (0.0, None),
    }


class ICVAE(FamilyModel):
    def __init__(self, config: ICVAEConfig, image_shape: tuple[int, int, int], n_classes: int):
        super().__init__()
        self.config = config
        self.n_classes = n_classes
        arch, hidden = config.arch, config.hidden
        self.encoder = encoder(image_shape, hidden, arch, 2 * config.z_dim)
        # The decoder reads z and the one-hot label concatenated.
        self.decoder = decoder(config.z_dim + n_classes, hidden, arch, image_shape)

    def encode(self, x: torch.Tensor):
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z, one_hot(labels, self.n_classes)], dim=1))  # logits

    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decode(self.encode(x)[0], labels))

    def latent_codes(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"z": self.encode(x)[0]}

    def loss(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        mu, logvar = self.encode(x)
        z = mu + noise.normal_like(mu) * torch.exp(0.5 * logvar)
        logits = self.decode(z, labels)
        if cfg.recon_loss == "mse":
            recon = squared_error(torch.sigmoid(logits), x).mean()
        else:
            recon = bernoulli_recon(logits, x).mean()
        kl_prior = kl_to_standard_normal(mu, logvar).mean()
        kl_marginal = marginal_kl_bound(mu, logvar).mean()
        loss = (1.0 + cfg.lam) * recon + cfg.beta * kl_prior + cfg.lam * kl_marginal
        return {"loss": loss, "recon": recon, "kl_prior": kl_prior, "kl_marginal": kl_marginal}


@torch.no_grad()
def swap_grid(
    model: ICVAE, dataset: Dataset, config: ICVAEConfig, ctx: EvalContext
) -> torch.Tensor:
    """Rows: test images' codes; columns: the label fed to the decoder (0..9)."""
    model.eval()
    z, _ = model.encode(ctx.x_test[:10])
    n = dataset.n_classes
    labels = torch.arange(n, device=z.device).repeat(len(z))
    decoded = torch.sigmoid(model.decode(z.repeat_interleave(n, 0), labels))
    return decoded.view(len(z), n, *dataset.image_shape)


class ICVAEFamily(Family[ICVAEConfig, ICVAE]):
    name = "icvae"
    summary = "Invariant conditional VAE: decoder p(x|z,c), pairwise-KL penalty on I(z;c)"
    config_cls = ICVAEConfig
    metrics = (RECON_MSE, *LEAKAGE_METRICS, *SWAP_METRICS)
    objectives = ("recon_mse", "leakage")
    grids = (RECONSTRUCTIONS, Grid("swaps", swap_grid), LATENT_SCATTER)
    test_variants = ({"recon_loss": "mse"},)
    # 784-512-512-16 / (16+10)-512-512-784.
    reference_config = {"hidden": [512, 512], "z_dim": 16, "batch_size": 256}

    def make_model(self, config: ICVAEConfig, dataset: Dataset) -> ICVAE:
        return ICVAE(config, dataset.image_shape, dataset.n_classes)

    def step(self, training: Training[ICVAEConfig, ICVAE], index: torch.Tensor) -> dict:
        data = training.dataset
        terms = training.each(ICVAE.loss, data.x_train[index], data.y_train[index])
        gradient_step(training.optimizers["model"], terms["loss"])
        return terms

    @torch.no_grad()
    def evaluate(
        self, model: ICVAE, dataset: Dataset, config: ICVAEConfig, ctx: EvalContext
    ) -> dict[str, float]:
        model.eval()
        z_train, _ = model.encode(ctx.x_train)
        z_test, _ = model.encode(ctx.x_test)
        metrics = {
            "recon_mse": recon_mse(ctx.x_test, model.reconstruct(ctx.x_test, ctx.y_test)),
            **leakage_metrics(z_train, ctx.y_train, z_test, ctx.y_test, ctx.seed, ctx.probes),
        }
        generator = torch.Generator().manual_seed(ctx.seed + 1)
        target = derangement_targets(ctx.y_test, dataset.n_classes, generator)
        swapped = torch.sigmoid(model.decode(z_test, target))
        metrics.update(swap_metrics(swapped, target, ctx.y_test, ctx))
        return metrics


FAMILY = ICVAEFamily()
