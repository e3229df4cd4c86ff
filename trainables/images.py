"""Images saved as PNG files: grids (rows x cols x C x H x W tensors in [0, 1]) and
pictures (H x W x 3 tensors of uint8, such as the latent scatter)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

# Class names longer than this are cut on the scatter's colourbar, which is narrow.
TICK_NAME_CHARS = 12


def save_grid(grid: torch.Tensor, path: str | Path, scale: int = 2) -> Path:
    """Tile a (rows, cols, C, H, W) grid with a 1-pixel white gap and save it as a PNG:
    greyscale for C = 1, RGB for C = 3. A (rows, cols, H, W) grid is greyscale."""
    from PIL import Image

    if grid.dim() == 4:
        grid = grid.unsqueeze(2)
    rows, cols, channels, height, width = grid.shape
    if channels not in (1, 3):
        raise ValueError(f"a grid has 1 or 3 channels, not {channels} (shape {tuple(grid.shape)})")
    # Pad each image with a white row and column, lay them out as (C, rows*(H+1),
    # cols*(W+1)) and drop the last gap.
    padded = torch.nn.functional.pad(grid.detach().float().cpu(), (0, 1, 0, 1), value=1.0)
    canvas = padded.permute(2, 0, 3, 1, 4).reshape(channels, rows * (height + 1), -1)
    canvas = canvas[:, :-1, :-1]
    pixels = (canvas.clamp(0, 1) * 255).round().to(torch.uint8)
    if channels == 1:
        image = Image.fromarray(pixels[0].numpy())  # a 2-D uint8 array is mode "L"
    else:
        image = Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())  # "RGB"
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


def scatter_picture(
    panels: dict[str, tuple],
    labels,
    size: float = 3.2,
    n_classes: int | None = None,
    class_names: Sequence[str] = (),
) -> torch.Tensor:
    """One scatter panel per code: `panels[name] = (points (n, 2), original dimension)`,
    points coloured by `labels` in 0..n_classes-1 (by default, up to the largest label).
    Rendered off-screen with matplotlib's Agg canvas."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if n_classes is None:
        n_classes = int(np.max(labels)) + 1 if len(labels) else 1
    cmap, norm, ticks = class_colours(n_classes)
    figure = Figure(figsize=(size * len(panels), size), dpi=80)
    canvas = FigureCanvasAgg(figure)
    for i, (name, (points, dim)) in enumerate(panels.items()):
        axes = figure.add_subplot(1, len(panels), i + 1)
        drawn = axes.scatter(points[:, 0], points[:, 1], c=labels, cmap=cmap, norm=norm, s=4)
        axes.set_title(name if dim <= 2 else f"{name} ({dim}-D, PCA)", fontsize=9)
        axes.tick_params(labelsize=7)
    colourbar = figure.colorbar(drawn, ax=figure.axes, ticks=ticks, fraction=0.03)
    colourbar.ax.tick_params(labelsize=7 if n_classes <= 10 else 5)
    if class_names and isinstance(ticks, list):
        colourbar.set_ticklabels([name[:TICK_NAME_CHARS] for name in class_names])
    canvas.draw()
    return torch.from_numpy(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def class_colours(n_classes: int):
    """(colormap, norm, colourbar ticks) for labels 0..n_classes-1: a distinct colour per
    class from tab10 or tab20, one band per class centred on its label so the colourbar
    reads as a legend; beyond 20 classes distinct colours run out, so a continuous map
    with a few integer ticks."""
    import matplotlib
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.ticker import MaxNLocator

    if n_classes <= 20:
        palette = matplotlib.colormaps["tab10" if n_classes <= 10 else "tab20"]
        cmap = ListedColormap(palette.colors[:n_classes])
        return cmap, Normalize(-0.5, n_classes - 0.5), list(range(n_classes))
    return (
        matplotlib.colormaps["viridis"],
        Normalize(0, n_classes - 1),
        MaxNLocator(8, integer=True),
    )
