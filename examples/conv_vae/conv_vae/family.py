"""A convolutional beta-VAE: the beta-VAE objective (Higgins et al., ICLR 2017) with a small
convolutional encoder and decoder in place of the MLPs, written as a family that lives
outside Latent Studies' own package (an example of a plugin).

    loss = E_q(z|x)[-log p(x|z)] + beta KL[q(z|x) || N(0, I)], the mean over the batch,

with a Gaussian encoder q(z|x) and a Bernoulli decoder p(x|z). It takes images of any size
and channel count: the encoder pools its feature map to a small fixed grid, and the
decoder grows a map of a quarter of the image's sides and crops it to the image. No
normalisation layer: batch statistics would make an image's code depend on the other
images of its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from trainables import noise
from trainables.data import Dataset
from trainables.family import Family, FamilyConfig, FamilyModel, Training, gradient_step
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

# The encoder averages its last feature map down to at most this many cells a side: a
# fixed size for the linear layer whatever the image size. A smaller map (8x8 digits give
# 2x2) is kept as it is: pooling it up would only repeat its cells.
POOLED_SIDE = 4
# Evaluation encodes up to 5,000 images; in chunks, so a large image's feature maps stay
# a bounded size in memory.
EVAL_CHUNK = 1024
TRAVERSAL_ROWS = 10
TRAVERSAL_STEPS = 9
TRAVERSAL_REACH = 3.0  # prior standard deviations either side of the image's code


@dataclass
class ConvVAEConfig(FamilyConfig):
    # Twice the base's default. After one epoch of digits at 1e-3 the reconstructions
    # hardly depend on their inputs yet: a test image's squared error to another image's
    # reconstruction exceeds its error to its own by 0.3-0.8% (seeds 0, 3, 5, 7); at 2e-3
    # by 0.7-3.7%, and after 20 epochs recon_mse is 0.032 against 0.037 (seed 7).
    lr: float = 2e-3
    z_dim: int = 10
    # Width of the first convolution; the two strided ones have twice as many channels.
    # At 16 an epoch of 8x8 digits takes 0.14 s on one CPU core (batch 64).
    channels: int = 16
    beta: float = 1.0

    bounds: ClassVar = {
        "z_dim": (1, 4096),
        "channels": (1, 1024),
        "beta": (0.0, None),
    }


class ConvVAE(FamilyModel):
    def __init__(self, config: ConvVAEConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        self.beta = config.beta
        self.image_shape = image_shape
        colours, height, width = image_shape
        width_1, width_2 = config.channels, 2 * config.channels
        # Two stride-2 convolutions (kernel 3, padding 1) take a side n to ceil(n / 4);
        # the decoder starts from a map that size and doubles it twice.
        coarse = (width_2, math.ceil(height / 4), math.ceil(width / 4))
        pooled = (min(POOLED_SIDE, coarse[1]), min(POOLED_SIDE, coarse[2]))
        self.encoder = nn.Sequential(
            nn.Unflatten(1, image_shape),
            nn.Conv2d(colours, width_1, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width_1, width_2, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(width_2, width_2, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(pooled),
            nn.Flatten(),
            nn.Linear(width_2 * pooled[0] * pooled[1], 2 * config.z_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(config.z_dim, math.prod(coarse)),
            nn.Unflatten(1, coarse),
            nn.SiLU(),
            nn.ConvTranspose2d(width_2, width_1, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.ConvTranspose2d(width_1, width_1, 4, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(width_1, colours, 3, padding=1),
        )
        # The decoded map is up to 3 pixels larger than the image a side; the crop is
        # centred, so the margin the decoder learns to ignore is split between the edges.
        self.crop = ((4 * coarse[1] - height) // 2, (4 * coarse[2] - width) // 2)
        he_initialise(self)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of the flattened image, channels first like the dataset's rows."""
        _, height, width = self.image_shape
        top, left = self.crop
        return self.decoder(z)[..., top : top + height, left : left + width].flatten(1)

    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decode(self.encode(x)[0]))

    def latent_codes(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"z": self.encode(x)[0]}

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, logvar = self.encode(x)
        # The reparameterisation: the sample stays differentiable in mu and logvar.
        z = mu + torch.exp(0.5 * logvar) * noise.normal_like(mu)
        recon = bernoulli_recon(self.decode(z), x).mean()
        kl = kl_to_standard_normal(mu, logvar).mean()
        return {"loss": recon + self.beta * kl, "recon": recon, "kl": kl}


def he_initialise(model: nn.Module) -> None:
    """Weights drawn with variance 2 / fan-in (He et al. 2015), biases zero. PyTorch's
    default draws a third of that, so each layer shrank the signal: at initialisation the
    codes of different digits differed by a standard deviation of 0.003 (0.09 with this),
    drowned in the sampling noise of 1, and an epoch passed before the decoder read them."""
    for layer in model.modules():
        if isinstance(layer, nn.ConvTranspose2d):
            # Each output pixel sums in_channels x (kernel / stride)^2 inputs; its weight's
            # fan-in as PyTorch computes it counts the whole kernel and the output channels.
            kernel, stride = layer.kernel_size, layer.stride
            fan_in = layer.in_channels * (kernel[0] // stride[0]) * (kernel[1] // stride[1])
        elif isinstance(layer, nn.Conv2d | nn.Linear):
            fan_in = layer.weight[0].numel()
        else:
            continue
        nn.init.normal_(layer.weight, std=math.sqrt(2.0 / fan_in))
        nn.init.zeros_(layer.bias)


def encode_in_chunks(model: ConvVAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [model.encode(chunk) for chunk in x.split(EVAL_CHUNK)]
    return torch.cat([mu for mu, _ in parts]), torch.cat([logvar for _, logvar in parts])


@torch.no_grad()
def traversal_grid(
    model: ConvVAE, dataset: Dataset, config: ConvVAEConfig, ctx: EvalContext
) -> torch.Tensor:
    """The first test image's code with one unit swept across the prior per row, the
    other units held: rows are the units that carry the most KL on test images (the ones
    the model uses), so the grid shows what each of them draws."""
    model.eval()
    mu, logvar = encode_in_chunks(model, ctx.x_test)
    kl_per_unit = (0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar)).mean(dim=0)
    units = kl_per_unit.topk(min(TRAVERSAL_ROWS, config.z_dim)).indices
    values = torch.linspace(-TRAVERSAL_REACH, TRAVERSAL_REACH, TRAVERSAL_STEPS, device=mu.device)
    swept = torch.nn.functional.one_hot(units, config.z_dim).bool().unsqueeze(1)
    codes = torch.where(swept, values.view(1, -1, 1), mu[0])  # (rows, steps, z_dim)
    images = torch.sigmoid(model.decode(codes.flatten(0, 1)))
    return images.view(len(units), TRAVERSAL_STEPS, *dataset.image_shape)


class ConvVAEFamily(Family[ConvVAEConfig, ConvVAE]):
    name = "conv_vae"
    summary = "convolutional beta-VAE for images of any size and channel count (a plugin)"
    config_cls = ConvVAEConfig
    metrics = (
        RECON_MSE,
        Metric("kl", high=None, note="mean KL[q(z|x) || N(0, I)] of test images, in nats"),
        CONTENT_ACC,
    )
    objectives = ("recon_mse", "content_acc")
    grids = (RECONSTRUCTIONS, LATENT_SCATTER, Grid("traversal", traversal_grid))
    # Burgess et al. (2018)'s convolutional beta-VAE for 64x64 images has 32-channel
    # convolutions and 10 latents; these are the nearest sizes of this architecture.
    reference_config = {"channels": 32, "z_dim": 10, "batch_size": 256}

    def make_model(self, config: ConvVAEConfig, dataset: Dataset) -> ConvVAE:
        return ConvVAE(config, dataset.image_shape)

    def step(self, training: Training[ConvVAEConfig, ConvVAE], index: torch.Tensor) -> dict:
        terms = training.each(ConvVAE.loss, training.dataset.x_train[index])
        gradient_step(training.optimizers["model"], terms["loss"])
        return terms

    @torch.no_grad()
    def evaluate(
        self, model: ConvVAE, dataset: Dataset, config: ConvVAEConfig, ctx: EvalContext
    ) -> dict[str, float]:
        model.eval()
        mu_train, _ = encode_in_chunks(model, ctx.x_train)
        mu_test, logvar_test = encode_in_chunks(model, ctx.x_test)
        x_hat = torch.cat([torch.sigmoid(model.decode(mu)) for mu in mu_test.split(EVAL_CHUNK)])
        return {
            "recon_mse": recon_mse(ctx.x_test, x_hat),
            "kl": float(kl_to_standard_normal(mu_test, logvar_test).mean()),
            "content_acc": content_accuracy(mu_train, ctx.y_train, mu_test, ctx.y_test),
        }


FAMILY = ConvVAEFamily()
