"""Images saved as PNG files: grids (rows x cols x H x W tensors in [0, 1]) and pictures
(H x W x 3 tensors of uint8, such as the latent scatter)."""

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


def save_picture(picture: torch.Tensor, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    Image.fromarray(picture.numpy(), mode="RGB").save(path)
    return path


def is_picture(image: torch.Tensor) -> bool:
    return image.dim() == 3 and image.dtype == torch.uint8


def save_images(images: dict[str, torch.Tensor], directory: str | Path) -> list[Path]:
    """Save grids and pictures as `<name>.png`; grids of small images are scaled up more."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    grids = {name: image for name, image in images.items() if not is_picture(image)}
    scale = 4 if any(g.shape[-1] <= 8 for g in grids.values()) else 2
    return [
        save_grid(image, directory / f"{name}.png", scale)
        if name in grids
        else save_picture(image, directory / f"{name}.png")
        for name, image in images.items()
    ]


def scatter_picture(panels: dict[str, tuple], labels, size: float = 3.2) -> torch.Tensor:
    """One scatter panel per code: `panels[name] = (points (n, 2), original dimension)`,
    points coloured by `labels`. Rendered off-screen with matplotlib's Agg canvas."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size * len(panels), size), dpi=80)
    canvas = FigureCanvasAgg(figure)
    for i, (name, (points, dim)) in enumerate(panels.items()):
        axes = figure.add_subplot(1, len(panels), i + 1)
        drawn = axes.scatter(
            points[:, 0], points[:, 1], c=labels, cmap="tab10", s=4, vmin=0, vmax=9
        )
        axes.set_title(name if dim <= 2 else f"{name} ({dim}-D, PCA)", fontsize=9)
        axes.tick_params(labelsize=7)
    figure.colorbar(drawn, ax=figure.axes, ticks=range(10), fraction=0.03)
    canvas.draw()
    return torch.from_numpy(np.asarray(canvas.buffer_rgba())[..., :3].copy())
