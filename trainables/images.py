"""Image grids (rows x cols x H x W tensors in [0, 1]) saved as PNG files."""

from __future__ import annotations

from pathlib import Path

import torch


def save_grid(grid: torch.Tensor, path: str | Path, scale: int = 2) -> Path:
    """Tile a (rows, cols, H, W) grid with a 1-pixel gap and save it as a greyscale PNG."""
    from PIL import Image

    rows, cols, height, width = grid.shape
    canvas = torch.ones(rows * (height + 1) - 1, cols * (width + 1) - 1)
    for r in range(rows):
        for c in range(cols):
            top, left = r * (height + 1), c * (width + 1)
            canvas[top : top + height, left : left + width] = grid[r, c]
    pixels = (canvas.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    image = Image.fromarray(pixels, mode="L")
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    path = Path(path)
    image.save(path)
    return path


def save_grids(grids: dict[str, torch.Tensor], directory: str | Path) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    scale = 4 if any(g.shape[-1] <= 8 for g in grids.values()) else 2
    return [save_grid(grid, directory / f"{name}.png", scale) for name, grid in grids.items()]
