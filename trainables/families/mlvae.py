"""ML-VAE (Bouchacourt et al., AAAI-18): group-level supervision splits the code into a
per-sample style and a per-group class code.

Each sample's encoder gives Gaussians for style and class. Within a group (same label),
class evidence is accumulated as the normalised product of the members' Gaussians; the
group's class code is reparameterised once per group with noise of std `noise_std`.

A public reimplementation accumulates evidence on `.data`, so its class mu/logvar heads
never train; here they receive gradient. `freeze_class_heads=true` reproduces that mistake
and `recon_loss=mse` its loss (squared error of sigmoid outputs, far weaker against the KL
terms than the Bernoulli log-likelihood), so the reproduction preset can show which of them
its finding about `noise_std` depends on (README, Reproductions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from trainables import noise
from trainables.data import Dataset, GroupBatcher, fixed_groups
from trainables.errors import ConfigError, DataError
from trainables.family import (
    Family,
    FamilyConfig,
    FamilyModel,
    Training,
    adam,
    decoder,
    encoder,
    encoder_width,
    gradient_step,
)
from trainables.grids import LATENT_SCATTER, RECONSTRUCTIONS, Grid
from trainables.losses import (
    bernoulli_recon,
    kl_to_standard_normal,
    product_of_gaussians,
    squared_error,
)
from trainables.metrics import (
    LEAKAGE_METRICS,
    RECON_MSE,
    SWAP_METRICS,
    EvalContext,
    Metric,
    content_accuracy,
    leakage_metrics,
    recon_mse,
    swap_metrics,
)


@dataclass
class MLVAEConfig(FamilyConfig):
    style_dim: int = 10
    class_dim: int = 10
    hidden: tuple[int, ...] = (500,)
    noise_std: float = 0.1
    group_size: int = 8
    kl_style_weight: float = 1.0
    kl_class_weight: float = 1.0
    # "bernoulli": summed per-pixel log-likelihood of the logits; "mse": summed squared
    # error of sigmoid outputs, the public reimplementation's loss.
    recon_loss: Literal["bernoulli", "mse"] = "bernoulli"
    # The reimplementation's bug, as an ablation: the class heads get no gradient (their
    # weights never change) and pass none to the trunk.
    freeze_class_heads: bool = False

    bounds: ClassVar = {
        "style_dim": (1, 4096),
        "class_dim": (1, 4096),
        "hidden": (1, 65536),
        "noise_std": (1e-6, 100.0),
        "group_size": (2, 4096),
        "kl_style_weight": (0.0, None),
        "kl_class_weight": (0.0, None),
    }

    def check(self) -> None:
        if self.batch_size < self.group_size:
            raise ConfigError(
                f"batch_size: {self.batch_size} holds no whole group of group_size {self.group_size}; "
                f"use batch_size >= group_size"
            )


class MLVAE(FamilyModel):
    def __init__(self, config: MLVAEConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        self.config = config
        arch, hidden = config.arch, config.hidden
        # The encoder without its output layer, shared by the style and class heads.
        self.trunk = encoder(image_shape, hidden, arch, out_dim=None)
        width = encoder_width(hidden, arch)
        self.style_head = nn.Linear(width, 2 * config.style_dim)
        self.class_head = nn.Linear(width, 2 * config.class_dim)
        self.decoder = decoder(config.style_dim + config.class_dim, hidden, arch, image_shape)

    def encode(self, x: torch.Tensor):
        h = self.trunk(x)
        style_mu, style_logvar = self.style_head(h).chunk(2, dim=1)
        class_params = self.class_head(h)
        if self.config.freeze_class_heads:
            class_params = class_params.detach()
        class_mu, class_logvar = class_params.chunk(2, dim=1)
        return style_mu, style_logvar, class_mu, class_logvar

    def decode(self, style: torch.Tensor, class_code: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([style, class_code], dim=1))  # logits

    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """From single-sample mean codes (no group accumulation)."""
        style_mu, _, class_mu, _ = self.encode(x)
        return torch.sigmoid(self.decode(style_mu, class_mu))

    def latent_codes(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        style_mu, _, class_mu, _ = self.encode(x)
        return {"style": style_mu, "class": class_mu}

    def group_codes(self, x: torch.Tensor, group_ids: torch.Tensor, n_groups: int):
        """Style Gaussians per sample and accumulated class Gaussians per group."""
        style_mu, style_logvar, class_mu, class_logvar = self.encode(x)
        group_mu, group_logvar = product_of_gaussians(class_mu, class_logvar, group_ids, n_groups)
        return style_mu, style_logvar, group_mu, group_logvar

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss of a batch laid out group-major (GroupBatcher): consecutive runs of
        `group_size` samples share a label."""
        cfg = self.config
        n_groups = len(x) // cfg.group_size
        group_ids = torch.arange(n_groups, device=x.device).repeat_interleave(cfg.group_size)
        style_mu, style_logvar, group_mu, group_logvar = self.group_codes(x, group_ids, n_groups)
        style = style_mu + noise.normal_like(style_mu) * torch.exp(0.5 * style_logvar)
        # One noise draw per group, shared by its members.
        group_eps = noise.normal_like(group_mu) * cfg.noise_std
        class_code = (group_mu + group_eps * torch.exp(0.5 * group_logvar))[group_ids]
        logits = self.decode(style, class_code)
        if cfg.recon_loss == "mse":
            recon = squared_error(torch.sigmoid(logits), x).sum()
        else:
            recon = bernoulli_recon(logits, x).sum()
        kl_style = kl_to_standard_normal(style_mu, style_logvar).sum()
        kl_class = kl_to_standard_normal(group_mu, group_logvar).sum()
        n = len(x)
        loss = (recon + cfg.kl_style_weight * kl_style + cfg.kl_class_weight * kl_class) / n
        return {
            "loss": loss,
            "recon": recon / n,
            "kl_style": kl_style / n,
            "kl_class": kl_class / n,
        }


@torch.no_grad()
def _codes(model: MLVAE, x: torch.Tensor, labels: torch.Tensor, group_size: int, seed: int):
    """Style means, single-sample class means, and class means accumulated over fixed
    same-label groups (group ids are known in ML-VAE's setting)."""
    group_ids = fixed_groups(labels, group_size, seed)
    n_groups = int(group_ids.max()) + 1
    style_mu, _, class_mu, class_logvar = model.encode(x)
    group_mu, _ = product_of_gaussians(class_mu, class_logvar, group_ids, n_groups)
    return style_mu, class_mu, group_mu[group_ids], group_ids


def _swap(
    model: MLVAE, style: torch.Tensor, class_code: torch.Tensor, labels: torch.Tensor, seed: int
):
    """Decode each sample's style with the class code of a sample of another label; return
    the decoded images, the class sources' labels and the style sources' labels."""
    generator = torch.Generator().manual_seed(seed + 1)
    order = torch.randperm(len(labels), generator=generator).to(labels.device)
    donor = order[labels[order] != labels]  # donors whose label differs, in random order
    receivers = torch.nonzero(labels[order] != labels).squeeze(1)
    decoded = torch.sigmoid(model.decode(style[receivers], class_code[donor]))
    return decoded, labels[donor], labels[receivers]


@torch.no_grad()
def swap_grid(
    model: MLVAE, dataset: Dataset, config: MLVAEConfig, ctx: EvalContext
) -> torch.Tensor:
    """Rows: style sources; columns: class sources (one per class); cell: the decoded mix."""
    model.eval()
    x, y = ctx.x_test, ctx.y_test
    firsts = torch.stack([torch.nonzero(y == c)[0, 0] for c in range(dataset.n_classes)])
    style, _, _, _ = model.encode(x[firsts])
    _, _, group_code, _ = _codes(model, x, y, config.group_size, ctx.seed)
    n = len(firsts)
    decoded = torch.sigmoid(
        model.decode(style.repeat_interleave(n, 0), group_code[firsts].repeat(n, 1))
    )
    return decoded.view(n, n, *dataset.image_shape)


class MLVAEFamily(Family[MLVAEConfig, MLVAE]):
    name = "mlvae"
    summary = "ML-VAE: grouped class code (product of Gaussians) + per-sample style"
    config_cls = MLVAEConfig
    metrics = (
        RECON_MSE,
        Metric(
            "content_acc_grouped",
            goal="max",
            note="linear probe on class codes accumulated over same-label test groups "
            "(group ids are known in ML-VAE's setting)",
        ),
        Metric("content_acc_single", goal="max", note="the same probe on single-sample codes"),
        *LEAKAGE_METRICS,
        *SWAP_METRICS,
    )
    objectives = ("swap_acc", "content_acc_grouped")
    grids = (RECONSTRUCTIONS, Grid("swaps", swap_grid), LATENT_SCATTER)
    test_variants = ({"recon_loss": "mse"},)
    # 784-500-(10+10)/20-500-784.
    reference_config = {"hidden": [500], "style_dim": 10, "class_dim": 10, "batch_size": 256}

    def make_model(self, config: MLVAEConfig, dataset: Dataset) -> MLVAE:
        return MLVAE(config, dataset.image_shape)

    def check_data(self, config: MLVAEConfig, dataset: Dataset) -> None:
        label, count = dataset.smallest_class()
        if count < config.group_size:
            named = dataset.class_names[label] if dataset.class_names else label
            raise DataError(
                f"dataset: class {named!r} of {dataset.name} has {count} training samples, fewer "
                f"than group_size {config.group_size}; fix: keep group_size <= {count} "
                f"(--set group_size=N, or a --space whose values stop there) or add samples"
            )

    def make_optimizers(
        self, model: MLVAE, config: MLVAEConfig
    ) -> dict[str, torch.optim.Optimizer]:
        # Frozen heads stay out of the optimiser, so nothing (not even a fused kernel's
        # zero-gradient update) can move them.
        frozen = set(model.class_head.parameters()) if config.freeze_class_heads else set()
        return {"model": adam([p for p in model.parameters() if p not in frozen], lr=config.lr)}

    def batches(self, dataset: Dataset, config: MLVAEConfig, generator: torch.Generator):
        groups_per_batch = max(1, config.batch_size // config.group_size)
        batcher = GroupBatcher(
            dataset.y_train, dataset.n_classes, config.group_size, groups_per_batch
        )
        return batcher.epoch(generator)

    def step(self, training: Training[MLVAEConfig, MLVAE], index: torch.Tensor) -> dict:
        terms = training.each(MLVAE.loss, training.dataset.x_train[index])
        gradient_step(training.optimizers["model"], terms["loss"])
        return terms

    @torch.no_grad()
    def evaluate(
        self, model: MLVAE, dataset: Dataset, config: MLVAEConfig, ctx: EvalContext
    ) -> dict[str, float]:
        model.eval()
        k = config.group_size
        tr_style, tr_single, tr_grouped, _ = _codes(model, ctx.x_train, ctx.y_train, k, ctx.seed)
        te_style, te_single, te_grouped, _ = _codes(model, ctx.x_test, ctx.y_test, k, ctx.seed)
        x_hat = torch.sigmoid(model.decode(te_style, te_grouped))
        metrics = {
            "recon_mse": recon_mse(ctx.x_test, x_hat),
            "content_acc_grouped": content_accuracy(
                tr_grouped, ctx.y_train, te_grouped, ctx.y_test
            ),
            "content_acc_single": content_accuracy(tr_single, ctx.y_train, te_single, ctx.y_test),
            **leakage_metrics(tr_style, ctx.y_train, te_style, ctx.y_test, ctx.seed, ctx.probes),
        }
        swaps = _swap(model, te_style, te_grouped, ctx.y_test, ctx.seed)
        metrics.update(swap_metrics(*swaps, ctx))
        return metrics


FAMILY = MLVAEFamily()
