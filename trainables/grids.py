"""Image grids a family declares, and the two every family shows.

A grid is either a block of images, a (rows, cols, C, H, W) tensor in [0, 1] with the
dataset's `image_shape` (C, H, W) (saved as one tiled PNG, greyscale for C = 1, RGB for
C = 3), or a picture, an (H, W, 3) uint8 RGB tensor (the latent scatter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from trainables.config import FamilyConfig
    from trainables.data import Dataset
    from trainables.metrics import EvalContext

# (model, dataset, config, ctx) -> the grid, or None when there is nothing to show
MakeGrid = Callable[
    [torch.nn.Module, "Dataset", "FamilyConfig", "EvalContext"], torch.Tensor | None
]

SCATTER_POINTS = 1000


@dataclass(frozen=True)
class Grid:
    name: str
    make: MakeGrid
    kind: Literal["images", "picture"] = "images"
    # Whether `make` may return None: some configs have nothing to show (the AAE's manifold
    # of a code wider than 2-D).
    optional: bool = False


@torch.no_grad()
def reconstruction_grid(model, dataset: Dataset, config: FamilyConfig, ctx) -> torch.Tensor:
    """Ten test images (top row) over their reconstructions from mean codes (bottom row):
    a (2, 10, C, H, W) grid."""
    model.eval()
    x, y = ctx.x_test[:10], ctx.y_test[:10]
    return torch.stack([x, model.reconstruct(x, y)]).view(2, len(x), *dataset.image_shape)


@torch.no_grad()
def latent_scatter(model, dataset: Dataset, config: FamilyConfig, ctx) -> torch.Tensor:
    """Test codes coloured by label, one panel per code the model names in
    `latent_codes(x, labels)`, projected on their first two principal axes when wider than
    two: an RGB picture (H, W, 3) of uint8."""
    from trainables.images import scatter_picture

    model.eval()
    x, y = ctx.x_test[:SCATTER_POINTS], ctx.y_test[:SCATTER_POINTS]
    panels = {
        name: (principal_plane(codes.float()).cpu().numpy(), codes.shape[1])
        for name, codes in model.latent_codes(x, y).items()
    }
    return scatter_picture(
        panels, y.cpu().numpy(), n_classes=dataset.n_classes, class_names=dataset.class_names
    )


def principal_plane(codes: torch.Tensor) -> torch.Tensor:
    """The codes themselves when 2-D (or 1-D, padded with zeros), else their projection on
    the two leading principal axes."""
    if codes.shape[1] <= 2:
        return torch.nn.functional.pad(codes, (0, 2 - codes.shape[1]))
    centred = codes - codes.mean(dim=0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:2].T


RECONSTRUCTIONS = Grid("reconstructions", reconstruction_grid)
LATENT_SCATTER = Grid("latent_scatter", latent_scatter, kind="picture")
